"""Bootstrap confidence intervals over evaluation images, on data with a known answer."""

import numpy as np
import pytest
import torch
from scipy import stats

from diffprompt import bootstrap
from diffprompt.bootstrap import miou_ci, miou_of_resamples, paired_difference_ci
from diffprompt.evaluate import (
    ConfusionMatrix,
    confusion_matrix,
    evaluate_predictions,
    mean_iou,
)


def random_cms(rng, n=30, c=5, seeds=None, absent=()):
    """Random per-image matrices (mostly correct); classes in ``absent`` never appear."""
    shape = (n, c, c) if seeds is None else (seeds, n, c, c)
    cms = rng.integers(0, 20, shape)
    cms[..., np.arange(c), np.arange(c)] += rng.integers(0, 200, (*shape[:-2], c))
    for k in absent:
        cms[..., k, :] = 0
        cms[..., :, k] = 0
    return cms


def mean_structured(per_image_iou: np.ndarray, union: int = 100) -> np.ndarray:
    """Per-image matrices (N, K + 1, K + 1) whose class k has union ``union`` in every image
    and TP ``per_image_iou[i, k] * union``; misses go to an extra class K, never evaluated.
    Then the dataset-level mIoU over classes 0..K-1 of any set of images is the mean of the
    images' own mIoU: the bootstrap statistic reduces to a sample mean."""
    n, k = per_image_iou.shape
    tp = np.round(per_image_iou * union).astype(np.int64)
    cms = np.zeros((n, k + 1, k + 1), dtype=np.int64)
    cms[:, np.arange(k), np.arange(k)] = tp
    cms[:, np.arange(k), k] = union - tp
    return cms


# ------------------------------------------------------------------ per-image matrices


class FakeSet:
    """Seven labeled 6x9 images of 4 classes, a few pixels ignored."""

    def __init__(self, n=7, c=4):
        g = torch.Generator().manual_seed(0)
        self.masks = torch.randint(0, c, (n, 6, 9), generator=g)
        self.masks[:, 0, :2] = 255
        self.c = c

    def __len__(self):
        return len(self.masks)

    def __getitem__(self, i):
        return {"image": torch.zeros(3, 6, 9), "mask": self.masks[i]}


def fake_predict(images, indices):
    g = torch.Generator().manual_seed(sum(indices) + 1)
    return torch.randint(0, 4, (len(indices), 6, 9), generator=g)


def test_per_image_matrices_from_one_pass_sum_to_the_dataset_matrix():
    ds = FakeSet()
    order = [6, 0, 3, 1, 5, 2, 4]
    cm = evaluate_predictions(fake_predict, ds, order, batch_size=3, num_classes=4, per_image=True)
    mats = cm.per_image_matrices()
    assert mats.shape == (7, 4, 4) and mats.dtype == np.int64
    np.testing.assert_array_equal(mats.sum(0), cm.mat.numpy())
    plain = evaluate_predictions(fake_predict, ds, order, batch_size=3, num_classes=4)
    np.testing.assert_array_equal(plain.mat.numpy(), cm.mat.numpy())
    # row j is the image order[j], as a confusion matrix of that image alone
    preds = torch.cat([fake_predict(None, order[s : s + 3]) for s in range(0, 7, 3)])
    for j, i in enumerate(order):
        np.testing.assert_array_equal(mats[j], confusion_matrix(preds[j], ds.masks[i], 4).numpy())
    with pytest.raises(ValueError, match="per_image=True"):
        plain.per_image_matrices()
    assert ConfusionMatrix(4, per_image=True).per_image_matrices().shape == (0, 4, 4)


# ------------------------------------------------------------------ the statistic


def test_the_statistic_equals_mean_iou_of_the_summed_matrices():
    rng = np.random.default_rng(1)
    cms = random_cms(rng, n=12, c=6, seeds=2, absent=(4,))
    idx = rng.integers(0, 12, (40, 12))
    for classes in (None, [0, 1, 2, 4, 5], [4]):
        got = miou_of_resamples(cms, idx, classes)
        want = [np.mean([mean_iou(cms[s][i].sum(0), classes) for s in range(2)]) for i in idx]
        np.testing.assert_allclose(got, want, rtol=1e-12)  # NaN (class 4 alone) included
    point = miou_ci(cms[0], classes=[0, 1, 2, 4, 5]).point
    assert point == pytest.approx(mean_iou(cms[0].sum(0), [0, 1, 2, 4, 5]), rel=1e-12)


@pytest.mark.parametrize("method", ["BCa", "percentile"])
def test_equals_a_brute_force_loop_bootstrap_over_the_same_resamples(method):
    # scipy's non-vectorized path calls the reference once per resample, on the same draws
    rng = np.random.default_rng(2)
    a = random_cms(rng, n=25, c=5, seeds=3, absent=(3,))
    b = random_cms(rng, n=25, c=5, seeds=2)
    classes = [0, 1, 3, 4]

    def ref(cms, idx):
        return np.mean([mean_iou(run[idx].sum(0), classes) for run in cms])

    def loop(statistic):
        res = stats.bootstrap(
            (np.arange(25),),
            statistic,
            n_resamples=300,
            vectorized=False,
            batch=bootstrap.BATCH,
            method=method,
            rng=np.random.default_rng(7),
        )
        return res.confidence_interval

    got = miou_ci(a, classes, n_resamples=300, seed=7, method=method)
    low, high = loop(lambda idx: ref(a, idx))
    assert (got.low, got.high) == pytest.approx((low, high), rel=1e-10)
    assert got.point == pytest.approx(ref(a, np.arange(25)), rel=1e-12)

    got = paired_difference_ci(a, b, classes, n_resamples=300, seed=7, method=method)
    low, high = loop(lambda idx: ref(a, idx) - ref(b, idx))
    assert (got.low, got.high) == pytest.approx((low, high), rel=1e-10)


@pytest.mark.parametrize("method", ["BCa", "percentile"])
def test_reduces_to_scipys_bootstrap_of_a_mean(method):
    rng = np.random.default_rng(3)
    per_image = rng.integers(20, 90, (40, 3)) / 100
    cms = mean_structured(per_image)
    ci = miou_ci(cms, classes=range(3), n_resamples=1000, seed=5, method=method)
    m = per_image.mean(1) * 100
    ref = stats.bootstrap(
        (m,), np.mean, n_resamples=1000, batch=bootstrap.BATCH, method=method, rng=5
    )
    assert ci.point == pytest.approx(m.mean(), rel=1e-12)
    assert (ci.low, ci.high) == pytest.approx(tuple(ref.confidence_interval), rel=1e-9)


# ------------------------------------------------------------------ known answers


def test_identical_images_collapse_the_interval_to_the_point():
    one = random_cms(np.random.default_rng(4), n=1, c=5)
    ci = miou_ci(np.repeat(one, 30, axis=0))
    assert ci.low == ci.high == ci.point == pytest.approx(mean_iou(one[0]))


def test_a_method_against_itself_differs_by_exactly_zero():
    cms = random_cms(np.random.default_rng(5), n=30, c=5, seeds=3)
    d = paired_difference_ci(cms, cms.copy())
    assert d == (0.0, 0.0, 0.0, False)


def test_better_on_every_image_excludes_zero_within_the_per_image_range():
    rng = np.random.default_rng(6)
    base = rng.uniform(0.2, 0.6, (50, 4))
    gain = rng.uniform(0.01, 0.2, (50, 1))
    a, b = mean_structured(base + gain), mean_structured(base)
    per_image = np.array(
        [mean_iou(x, range(4)) - mean_iou(y, range(4)) for x, y in zip(a, b, strict=True)]
    )
    assert per_image.min() > 0
    d = paired_difference_ci(a, b, classes=range(4))
    assert d.excludes_zero and d.low > 0
    assert per_image.min() <= d.low < d.difference < d.high <= per_image.max()
    assert d.difference == pytest.approx(per_image.mean())
    worse = paired_difference_ci(b, a, classes=range(4))
    assert worse.excludes_zero and worse.high < 0


def test_seeds_are_pooled_on_the_same_resampled_images():
    rng = np.random.default_rng(7)
    cms = random_cms(rng, n=20, c=4, seeds=3)
    ci = miou_ci(cms, n_resamples=200)
    assert ci.point == pytest.approx(np.mean([mean_iou(run.sum(0)) for run in cms]))
    # three copies of one run: the same resampled images for every seed give that run's CI
    same = miou_ci(np.stack([cms[0]] * 3), n_resamples=200)
    assert same == pytest.approx(miou_ci(cms[0], n_resamples=200), rel=1e-12)


@pytest.mark.parametrize("method", ["BCa", "percentile"])
def test_coverage_on_a_known_distribution(method):
    # per image and class: a union of 20-200 pixels, TP ~ Binomial(union, p), p ~ Beta(4, 4)
    # around class means; the population mIoU (ratio of expected sums) is 100 * mean(means)
    rng = np.random.default_rng(8)
    means = np.array([0.3, 0.5, 0.7])
    truth = 100 * means.mean()
    hits, reps, n = 0, 200, 40
    for rep in range(reps):
        union = rng.integers(20, 201, (n, 3))
        p = np.clip(means + rng.beta(4, 4, (n, 3)) - 0.5, 0, 1)
        tp = rng.binomial(union, p)
        cms = np.zeros((n, 4, 4), dtype=np.int64)
        cms[:, np.arange(3), np.arange(3)] = tp
        cms[:, np.arange(3), 3] = union - tp
        ci = miou_ci(cms, classes=range(3), n_resamples=500, seed=rep, method=method)
        hits += ci.low <= truth <= ci.high
    assert 0.89 <= hits / reps <= 0.99, hits / reps


def test_the_same_seed_gives_the_same_interval():
    cms = random_cms(np.random.default_rng(9), n=30, c=5, seeds=2)
    assert miou_ci(cms, seed=3) == miou_ci(cms, seed=3)
    assert miou_ci(cms, seed=3) != miou_ci(cms, seed=4)
    other = random_cms(np.random.default_rng(10), n=30, c=5)
    assert paired_difference_ci(cms, other, seed=1) == paired_difference_ci(cms, other, seed=1)


def test_a_class_subset_without_pixels_gives_nan():
    cms = random_cms(np.random.default_rng(11), n=10, c=4, absent=(2,))
    assert all(np.isnan(v) for v in miou_ci(cms, classes=[2]))


# ------------------------------------------------------------------ bad input

GOOD = np.ones((10, 3, 3), dtype=np.int64)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(per_image_cms=np.zeros((0, 3, 3))), "empty"),
        (dict(per_image_cms=np.ones((1, 3, 3))), "at least 2"),
        (dict(per_image_cms=np.ones((10, 3, 4))), r"\(N, C, C\)"),
        (dict(per_image_cms=np.ones((10, 9))), r"\(S, N, C, C\)"),
        (dict(per_image_cms=-GOOD), "integers >= 0"),
        (dict(per_image_cms=GOOD * 0.5), "integers >= 0"),
        (dict(per_image_cms=GOOD, confidence=95), r"in \(0, 1\)"),
        (dict(per_image_cms=GOOD, confidence=1.0), r"in \(0, 1\)"),
        (dict(per_image_cms=GOOD, n_resamples=50), ">= 100"),
        (dict(per_image_cms=GOOD, method="bca"), "method"),
        (dict(per_image_cms=GOOD, classes=[]), "classes is empty"),
        (dict(per_image_cms=GOOD, classes=[3]), r"\[0, 3\)"),
    ],
)
def test_bad_input_names_the_problem(kwargs, match):
    with pytest.raises(ValueError, match=match):
        miou_ci(**kwargs)


def test_a_paired_difference_needs_the_same_images():
    with pytest.raises(ValueError, match="same images"):
        paired_difference_ci(GOOD, np.ones((9, 3, 3)))
    with pytest.raises(ValueError, match="cms_b"):
        paired_difference_ci(GOOD, np.ones((10, 3)))
