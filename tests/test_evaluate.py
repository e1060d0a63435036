"""Dataset-level confusion matrix and mIoU, checked against hand-computed cases."""

import math

import numpy as np
import pytest
import torch

from diffprompt.evaluate import (
    ConfusionMatrix,
    confusion_matrix,
    evaluate_predictions,
    mean_iou,
    miou_rows,
    per_class_iou,
    predict_slide,
    predict_whole,
    predicted_classes,
    window_starts,
)
from diffprompt.labels import SYNTHIA_EVAL_CLASSES


def test_hand_computed_three_classes():
    # target: 0 0 1 1 2 255 ; pred: 0 1 1 1 0 2
    target = torch.tensor([0, 0, 1, 1, 2, 255])
    pred = torch.tensor([0, 1, 1, 1, 0, 2])
    cm = confusion_matrix(pred, target, num_classes=3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    iou = per_class_iou(cm)
    # class 0: TP 1, FP 1 (the 2 predicted as 0), FN 1 -> 1/3
    # class 1: TP 2, FP 1, FN 0 -> 2/3 ; class 2: TP 0, FN 1 -> 0
    assert iou == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert mean_iou(cm) == pytest.approx(100 / 3)


def test_class_absent_everywhere_is_left_out():
    target = torch.tensor([0, 0, 1])
    pred = torch.tensor([0, 0, 1])
    cm = confusion_matrix(pred, target, num_classes=4)
    iou = per_class_iou(cm)
    assert iou[:2].tolist() == [1.0, 1.0] and math.isnan(iou[2]) and math.isnan(iou[3])
    assert mean_iou(cm) == 100.0


def test_predicted_but_absent_class_counts_as_zero():
    cm = confusion_matrix(torch.tensor([0, 2]), torch.tensor([0, 0]), num_classes=3)
    assert mean_iou(cm) == pytest.approx(100 * (0.5 + 0.0) / 2)


def test_dataset_level_not_mean_of_images():
    # image A: 1 pixel of class 0 right; image B: 99 pixels of class 0, 1 predicted wrong
    acc = ConfusionMatrix(num_classes=2)
    acc.update(torch.tensor([0]), torch.tensor([0]))
    acc.update(torch.tensor([0] * 98 + [1]), torch.tensor([0] * 99))
    # class 0: TP = 1 + 98, FN = 1, FP = 0 -> 99/100 ; class 1: TP 0, FP 1 -> 0
    iou0 = 99 / 100
    assert acc.iou() == pytest.approx([iou0, 0.0])
    assert acc.miou() == pytest.approx(100 * iou0 / 2)


def test_synthia_sixteen_class_mean():
    conf = np.eye(19, dtype=np.int64) * 10
    conf[9, 0] = 10  # terrain, not evaluated on SYNTHIA, all wrong
    conf[9, 9] = 0
    assert mean_iou(conf, SYNTHIA_EVAL_CLASSES) > mean_iou(conf)
    # the 16 classes are otherwise perfect except road, which got 10 false positives
    iou = per_class_iou(conf)
    expected = (15 + iou[0]) / 16 * 100
    assert mean_iou(conf, SYNTHIA_EVAL_CLASSES) == pytest.approx(expected)


def test_bad_values_raise():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(torch.tensor([0]), torch.tensor([19]))
    with pytest.raises(ValueError, match="differ in size"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0]))


def test_sliding_window_equals_whole_image_for_a_pointwise_model():
    conv = torch.nn.Conv2d(3, 5, 1)
    x = torch.rand(2, 3, 40, 70)
    with torch.no_grad():
        whole = predict_whole(conv, x, multiple=8)
        slide = predict_slide(conv, x, crop=(16, 32), stride=(10, 21), num_classes=5, multiple=8)
    torch.testing.assert_close(slide, whole)
    assert window_starts(70, 32, 21) == [0, 21, 38] and window_starts(10, 16, 8) == [0]
    with pytest.raises(ValueError, match="stride must be positive"):
        predict_slide(conv, x, crop=(16, 32), stride=(0, 21), num_classes=5)


def test_miou_rows_average_over_the_source_protocol_classes():
    class Set:
        eval_classes = tuple(range(19))

    cm = ConfusionMatrix()
    pred = torch.tensor([[0, 9, 13]])  # terrain (9) predicted where the label is car (13)
    cm.update(pred, torch.tensor([[0, 13, 13]]))
    sets = {"cityscapes": Set()}
    (gta,) = miou_rows({"cityscapes": cm}, sets, "gta5", {"cityscapes": 1})
    (syn,) = miou_rows({"cityscapes": cm}, sets, "synthia", {"cityscapes": 1})
    assert gta == {"target": "cityscapes", "mIoU": cm.miou(range(19)), "images": 1, "classes": 19}
    assert syn["classes"] == 16 and syn["mIoU"] == cm.miou(SYNTHIA_EVAL_CLASSES)
    assert syn["mIoU"] != gta["mIoU"]  # terrain counts only outside the SYNTHIA protocol


def test_predicted_classes_is_argmax_with_its_ties():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 19, 16, 32, generator=g)
    logits[:, 4] = logits[:, 11] = logits.max(1).values + 1  # tied maxima: the first wins
    logits[0, :, 0, 0] = 0.0  # every class tied
    up = torch.nn.functional.interpolate(logits, size=(64, 128), mode="bilinear")
    for x in (logits, up):
        assert torch.equal(predicted_classes(x), x.argmax(1))
    assert (predicted_classes(logits)[1:] == 4).all() and predicted_classes(logits)[0, 0, 0] == 0


def test_evaluation_from_cached_maps_reads_only_the_labels(mini_root):
    """A predictor that reads maps by index (needs_images false) gets the masks' size and
    no images; its matrices equal the path that loads every sample."""
    from diffprompt.data import build_dataset

    class Counting:
        def __init__(self, ds):
            self.ds, self.calls = ds, 0
            self.labeled = ds.labeled

        def __len__(self):
            return len(self.ds)

        def __getitem__(self, i):
            self.calls += 1
            return self.ds[i]

        def masks(self, idx):
            return self.ds.masks(idx)

    def by_index(images, idx, size=None):
        h, w = size if size is not None else images.shape[-2:]
        return torch.stack([torch.full((h, w), i % 5) for i in idx])

    ds = Counting(build_dataset("cityscapes", "val", mini_root))
    loaded = evaluate_predictions(by_index, ds, batch_size=2, per_image=True)
    assert ds.calls == len(ds)
    by_index.needs_images = False
    ds.calls = 0
    labels = evaluate_predictions(by_index, ds, batch_size=2, per_image=True)
    assert ds.calls == 0
    assert torch.equal(labels.mat, loaded.mat)
    assert np.array_equal(labels.per_image_matrices(), loaded.per_image_matrices())
    unlabeled = Counting(build_dataset("acdc_night", "test", mini_root))
    with pytest.raises(ValueError, match="no labels"):
        evaluate_predictions(by_index, unlabeled)
