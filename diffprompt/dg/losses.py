"""The losses of DG training, and the entropy test-time adaptation minimises.

DG training: for K predictions of one batch (one per scene prompt),

    mean over the K prompts of cross-entropy  +  lambda * consistency(the K predictions)

with consistency the Jensen-Shannon divergence of the K predicted distributions (or their
mean pairwise symmetric KL), so the head learns to rely on what does not change when the
described scene does.

Where the cross-entropy is computed (``TrainConfig.loss_resolution``, ``LOSS_RESOLUTIONS``):

- ``"labels"``: the logits upsampled (bilinear) to the labels' resolution, as VPD and mmseg
  do (the paper preset); on the CPU the backward through that upsampling dominates a step;
- ``"area"``: at the head's resolution, against each cell's class counts (the labels'
  one-hot summed over the cell; ignored pixels left out): exactly the cross-entropy the
  labels give with the logits upsampled by nearest neighbour;
- ``"nearest"``: at the head's resolution, against the label at each cell's centre.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from diffprompt.dg.config import CONSISTENCY_KINDS, LOSS_RESOLUTIONS
from diffprompt.labels import IGNORE_INDEX


def entropy(p: Tensor, dim: int, logp: Tensor | None = None) -> Tensor:
    """Return the Shannon entropy (nats) of the distributions ``p`` along ``dim``:
    ``-sum p log p``. ``logp``: their logarithms when known exactly (a log-softmax), else
    ``log(max(p, 1e-12))``."""
    if logp is None:
        logp = p.clamp_min(1e-12).log()
    return -(p * logp).sum(dim)


def mean_entropy(logits: Tensor) -> Tensor:
    """Return the mean per-pixel entropy (nats) of softmax(logits), logits (B, C, H, W):
    test-time adaptation's "entropy" objective and TENT's loss."""
    logp = logits.float().log_softmax(1)
    return entropy(logp.exp(), 1, logp).mean()


def consistency_loss(logits: Tensor, kind: str = "js", valid: Tensor | None = None) -> Tensor:
    """Return the disagreement of K predictions, averaged over pixels.

    ``logits`` (K, B, C, H, W); ``kind``: ``"js"``, the generalized Jensen-Shannon
    divergence H(mean_k p_k) - mean_k H(p_k), or ``"sym_kl"``, the mean over pairs i < j of
    KL(p_i || p_j) + KL(p_j || p_i). ``valid`` (B, H, W) bool restricts the average to some
    pixels (all by default). Zero when the K predictions are identical, positive otherwise;
    zero for K = 1.
    """
    if kind not in CONSISTENCY_KINDS:
        raise ValueError(f"unknown consistency {kind!r}; choose one of {CONSISTENCY_KINDS}")
    k = logits.shape[0]
    if k < 2:
        return logits.sum() * 0.0
    logp = logits.float().log_softmax(2)  # (K, B, C, H, W)
    p = logp.exp()
    if kind == "js":
        per_pixel = entropy(p.mean(0), 1) - entropy(p, 2).mean(0)  # (B, H, W)
    else:
        terms = []
        for i in range(k):
            for j in range(i + 1, k):
                log_ratio = logp[i] - logp[j]
                terms.append(((p[i] - p[j]) * log_ratio).sum(1))  # KL(i||j) + KL(j||i)
        per_pixel = torch.stack(terms).mean(0)
    if valid is not None:
        v = valid.to(per_pixel.dtype)
        return (per_pixel * v).sum() / v.sum().clamp_min(1.0)
    return per_pixel.mean()


def _cell(size: tuple[int, int], out: tuple[int, int]) -> tuple[int, int]:
    """Return the (integer) cell size that maps labels of ``size`` to logits of ``out``."""
    (h, w), (oh, ow) = size, out
    if h % oh or w % ow:
        raise ValueError(
            f"labels {h}x{w} are not a whole multiple of the logits {oh}x{ow}: use "
            "loss_resolution='labels' or image sizes that the head's stride divides"
        )
    return h // oh, w // ow


def class_counts(target: Tensor, out: tuple[int, int], num_classes: int) -> Tensor:
    """Return (B, C, h, w) float counts of each class's labeled pixels in each cell of a
    (h, w) grid over ``target`` (B, H, W) trainIds (ignored pixels counted nowhere)."""
    ch, cw = _cell(tuple(target.shape[-2:]), out)
    b, h, w = target.shape
    oh, ow = out
    rows = torch.arange(h, device=target.device) // ch
    cols = torch.arange(w, device=target.device) // cw
    cell = (rows[:, None] * ow + cols[None, :]).expand(b, h, w)  # (B, H, W) cell id
    image = torch.arange(b, device=target.device)[:, None, None] * (num_classes * oh * ow)
    valid = target != IGNORE_INDEX
    index = image + target.long().clamp(0, num_classes - 1) * (oh * ow) + cell
    counts = torch.bincount(index[valid], minlength=b * num_classes * oh * ow)
    return counts.view(b, num_classes, oh, ow).to(torch.float32)


def nearest_labels(target: Tensor, out: tuple[int, int]) -> Tensor:
    """Return (B, h, w) labels: the label at the centre of each cell of a (h, w) grid."""
    ch, cw = _cell(tuple(target.shape[-2:]), out)
    return target[:, ch // 2 :: ch, cw // 2 :: cw]


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    resolution: str = "labels",
    class_weight: Tensor | None = None,
    denominator: Tensor | float | None = None,
    counts: Tensor | None = None,
) -> Tensor:
    """Return the cross-entropy of ``logits`` (B, C, h, w) against ``target`` (B, H, W) at
    ``resolution`` (:data:`LOSS_RESOLUTIONS`): the mean over labeled pixels (in "area",
    each label pixel counts once, so it is the labels-resolution loss of nearest-upsampled
    logits), or with ``denominator`` the sum divided by it."""
    if resolution not in LOSS_RESOLUTIONS:
        raise ValueError(
            f"unknown loss_resolution {resolution!r}; choose one of {LOSS_RESOLUTIONS}"
        )
    logits = logits.float()
    size = tuple(target.shape[-2:])
    same = tuple(logits.shape[-2:]) == size
    if resolution == "area" and not same:
        if counts is None:
            counts = class_counts(target, tuple(logits.shape[-2:]), logits.shape[1])
        if class_weight is not None:
            counts = counts * class_weight.view(1, -1, 1, 1)
        total = -(counts * logits.log_softmax(1)).sum()
        if denominator is not None:
            return total / denominator
        return total / counts.sum().clamp_min(1e-12)
    if resolution == "nearest" and not same:
        target = nearest_labels(target, tuple(logits.shape[-2:]))
    elif not same:
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    reduction = "mean" if denominator is None else "sum"
    ce = F.cross_entropy(
        logits, target, weight=class_weight, ignore_index=IGNORE_INDEX, reduction=reduction
    )
    return ce if denominator is None else ce / denominator


def dg_loss(
    logits: Tensor,
    target: Tensor,
    weight: float = 0.0,
    kind: str = "js",
    class_weight: Tensor | None = None,
    ce_denominator: Tensor | float | None = None,
    resolution: str = "labels",
) -> dict[str, Tensor]:
    """Return {"loss", "ce", "consistency"} of K predictions of one batch.

    ``logits`` (K, B, C, h, w), at the head's resolution or the labels'; ``target`` (B, H, W)
    trainIds. The cross-entropy of each prediction at ``resolution`` (:func:`cross_entropy`:
    "labels" upsamples the logits to the labels, as VPD), averaged over the K prompts, plus
    ``weight`` times :func:`consistency_loss` of the K predictions at their own resolution
    (reported also when ``weight`` is 0). K = 1 and weight 0 is plain cross-entropy. The
    cross-entropy is a mean over the batch's labeled pixels, or, with ``ce_denominator``,
    their sum divided by it (several processes divide by the global count over the number
    of processes, so that averaging their gradients gives the gradient of one process
    holding the whole batch).
    """
    k = logits.shape[0]
    counts = None  # the K predictions share one target: its cell counts are computed once
    if resolution == "area" and tuple(logits.shape[-2:]) != tuple(target.shape[-2:]):
        counts = class_counts(target, tuple(logits.shape[-2:]), logits.shape[2])
    ce = torch.stack(
        [
            cross_entropy(logits[i], target, resolution, class_weight, ce_denominator, counts)
            for i in range(k)
        ]
    ).mean()
    # measured whenever K > 1 (also with weight 0: how much the K predictions disagree)
    cons = consistency_loss(logits, kind) if k > 1 else ce.new_zeros(())
    return {"loss": ce + weight * cons, "ce": ce, "consistency": cons}
