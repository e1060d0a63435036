"""Dataset-level evaluation: confusion matrix, per-class IoU and mIoU.

mIoU is accumulated over a whole data set (one confusion matrix, not a mean of per-image
scores). Pixels labelled ``IGNORE_INDEX`` are skipped. A class whose union is empty (never
in the ground truth and never predicted) has IoU NaN and is left out of the mean; a class
predicted but absent from the ground truth has IoU 0 and counts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from diffprompt.labels import IGNORE_INDEX, NUM_CLASSES


def confusion_matrix(
    pred: torch.Tensor | np.ndarray,
    target: torch.Tensor | np.ndarray,
    num_classes: int = NUM_CLASSES,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Return the (num_classes, num_classes) int64 confusion matrix, rows = ground truth.

    ``pred`` and ``target`` hold class indices of the same shape (any number of dims).
    Target pixels equal to ``ignore_index`` are skipped; other target values outside
    ``[0, num_classes)`` raise a ValueError.
    """
    pred = torch.as_tensor(pred).reshape(-1).long()
    target = torch.as_tensor(target).reshape(-1).long()
    if pred.shape != target.shape:
        raise ValueError(f"pred and target differ in size: {pred.numel()} vs {target.numel()}")
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    if target.numel() and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(
            f"target holds values outside [0, {num_classes}) other than {ignore_index}: "
            f"{sorted(set(target.unique().tolist()) - set(range(num_classes)))}"
        )
    if pred.numel() and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"pred holds values outside [0, {num_classes})")
    idx = target * num_classes + pred
    return torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


class ConfusionMatrix:
    """Accumulates a dataset-level confusion matrix over batches.

    >>> cm = ConfusionMatrix(); cm.update(pred, mask); cm.miou()
    """

    def __init__(self, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Add one batch of predictions (class indices) and targets (trainIds)."""
        self.mat += confusion_matrix(pred, target, self.num_classes, self.ignore_index).cpu()

    def iou(self) -> np.ndarray:
        """Return per-class IoU as a (num_classes,) float array (NaN where the union is 0)."""
        return per_class_iou(self.mat)

    def miou(self, classes: Sequence[int] | None = None) -> float:
        """Return mIoU in percent over ``classes`` (default: all), NaN classes left out."""
        return mean_iou(self.mat, classes)


def per_class_iou(conf: torch.Tensor | np.ndarray) -> np.ndarray:
    """Return the (C,) IoU = TP / (TP + FP + FN) of a confusion matrix; NaN where union is 0."""
    conf = np.asarray(torch.as_tensor(conf).cpu(), dtype=np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def mean_iou(conf: torch.Tensor | np.ndarray, classes: Sequence[int] | None = None) -> float:
    """Return the mean IoU in percent over ``classes`` (all by default), ignoring NaN.

    For the SYNTHIA 16-class protocol pass ``classes=labels.SYNTHIA_EVAL_CLASSES``.
    Returns NaN if no class in ``classes`` has a non-empty union.
    """
    iou = per_class_iou(conf)
    if classes is not None:
        iou = iou[list(classes)]
    if np.all(np.isnan(iou)):
        return float("nan")
    return float(np.nanmean(iou) * 100.0)
