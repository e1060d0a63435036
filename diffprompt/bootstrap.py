"""Bootstrap confidence intervals of dataset-level mIoU over evaluation images.

What is resampled: the evaluation images. A bootstrap replicate draws N of the N images
with replacement, sums their per-image confusion matrices (from
``ConfusionMatrix(per_image=True)`` or ``evaluate_predictions(..., per_image=True)``) and
recomputes the dataset-level mIoU from that sum, exactly as
:func:`diffprompt.evaluate.mean_iou` does (IoU = TP / (TP + FP + FN) per class, classes with
an empty union left out, optionally over a subset of classes).

Seeds pooled: several runs (seeds) evaluated on the same images are given as one array
(S, N, C, C); a replicate uses the same image indices for every seed and its value is the
mean over seeds of their mIoU on those images. A paired difference of two methods uses the same
indices for both methods (and all their seeds) in each replicate, so the image-to-image
variation the two share cancels.

Method: bias-corrected and accelerated (BCa) intervals of :func:`scipy.stats.bootstrap`.
mIoU is a mean of ratio estimators (sums of TP over sums of unions), biased at small N and
bounded, so its bootstrap distribution can be skewed; BCa corrects for the median bias and
the skew (second-order accurate, where the percentile interval is first-order), at the
cost of N leave-one-out evaluations, which are cheap here. Where BCa is undefined (the point
estimate lies outside the bootstrap distribution) the percentile interval of the same
replicates is returned; where every replicate has the same value (e.g. identical images, or
a method compared with itself) the interval collapses to that value.

Speed: scipy resamples the array of image indices 0..N-1; the statistic turns a batch of R
index rows into image counts (R, N) and the resampled sums into one matrix product with the
per-image (TP, ground truth, predicted) class counts (N, S x 3 x K), so one interval over
200 images, 3 seeds and 19 classes with 2000 replicates takes a few tens of milliseconds.
The counts are integers held exactly in float64, so a fixed ``seed`` gives the same interval
byte for byte (with the same numpy and scipy versions: scipy draws the resamples).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats

#: Replicates per interval (Efron and Tibshirani recommend at least 1000-2000 for BCa).
N_RESAMPLES = 2000
#: Replicates computed at a time (bounds memory: BATCH x N image counts).
BATCH = 1000
METHODS = ("BCa", "percentile")


class Interval(NamedTuple):
    """A point estimate (mIoU in %, mean over seeds) and its confidence interval."""

    point: float
    low: float
    high: float


class Difference(NamedTuple):
    """A paired difference a - b (mIoU points), its confidence interval and whether the
    interval excludes 0."""

    difference: float
    low: float
    high: float
    excludes_zero: bool


def as_runs(cms, name: str = "per_image_cms") -> np.ndarray:
    """Return per-image confusion matrices as a float64 array (S, N, C, C), S seeds of N
    images; (N, C, C) is one seed. Raises a ValueError naming the problem otherwise."""
    try:
        arr = np.asarray(cms, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: expected a numeric array of confusion matrices ({err})") from err
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != arr.shape[-2]:
        raise ValueError(
            f"{name}: expected per-image confusion matrices (N, C, C), or (S, N, C, C) for S "
            f"seeds on the same images, got shape {arr.shape}; get them from "
            "ConfusionMatrix(per_image=True).per_image_matrices()"
        )
    s, n, c, _ = arr.shape
    if s == 0 or n == 0 or c == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}): evaluate at least 2 images")
    if n < 2:
        raise ValueError(f"{name} holds {n} image: a bootstrap over images needs at least 2")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0) or np.any(arr != np.round(arr)):
        raise ValueError(f"{name}: confusion matrices hold pixel counts (integers >= 0)")
    return arr


def _class_counts(runs: np.ndarray, classes: Sequence[int] | None) -> np.ndarray:
    """Return the (N, S * 3 * K) per-image TP, ground-truth and predicted pixel counts of
    the K evaluated classes (rows = ground truth, as :func:`evaluate.confusion_matrix`)."""
    s, n, c, _ = runs.shape
    if classes is None:
        cls = np.arange(c)
    else:
        cls = np.asarray(list(classes), dtype=np.int64)
        if cls.size == 0:
            raise ValueError("classes is empty: pass the evaluated class indices, or None")
        if cls.min() < 0 or cls.max() >= c:
            raise ValueError(f"classes must lie in [0, {c}) for {c}x{c} matrices, got {classes}")
    tp = np.diagonal(runs, axis1=-2, axis2=-1)[..., cls]
    gt = runs.sum(-1)[..., cls]
    pred = runs.sum(-2)[..., cls]
    per_image = np.stack([tp, gt, pred], axis=2)  # (S, N, 3, K)
    return np.ascontiguousarray(per_image.transpose(1, 0, 2, 3).reshape(n, -1))


def _miou(totals: np.ndarray, seeds: int) -> np.ndarray:
    """Return the mean over seeds of the mIoU (%) of (R, S * 3 * K) summed class counts, as
    :func:`diffprompt.evaluate.mean_iou` (classes with an empty union left out; NaN when
    none is left)."""
    t = totals.reshape(len(totals), seeds, 3, -1)
    tp, gt, pred = t[:, :, 0], t[:, :, 1], t[:, :, 2]
    union = gt + pred - tp
    present = union > 0
    iou = np.where(present, tp / np.where(present, union, 1.0), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        miou = iou.sum(-1) / present.sum(-1) * 100.0
    return miou.mean(-1)


class _Statistic:
    """The mIoU (mean over seeds) of each of several runs (S_p, N, C, C) on the same images,
    for each resample of image indices, vectorized over resamples: (..., M) indices give
    (..., P) values. One image-count matrix and one matrix product serve all runs."""

    def __init__(self, parts: Sequence[np.ndarray], classes: Sequence[int] | None):
        self.n = parts[0].shape[1]
        self.seeds = [p.shape[0] for p in parts]
        per_part = [_class_counts(p, classes) for p in parts]
        self.counts = np.concatenate(per_part, axis=1)
        self.splits = np.cumsum([c.shape[1] for c in per_part])[:-1]

    def __call__(self, idx: np.ndarray, axis: int = -1) -> np.ndarray:
        idx = np.moveaxis(np.asarray(idx), axis, -1)
        lead, m = idx.shape[:-1], idx.shape[-1]
        rows = idx.reshape(-1, m).astype(np.int64)
        r = len(rows)
        offset = (np.arange(r, dtype=np.int64) * self.n)[:, None]
        weights = np.bincount((rows + offset).ravel(), minlength=r * self.n)
        totals = weights.reshape(r, self.n).astype(np.float64) @ self.counts
        parts = np.split(totals, self.splits, axis=1)
        values = [_miou(t, s) for t, s in zip(parts, self.seeds, strict=True)]
        return np.stack(values, axis=-1).reshape(*lead, len(values))


def miou_of_resamples(cms, idx, classes: Sequence[int] | None = None) -> np.ndarray:
    """Return the dataset-level mIoU (%, mean over seeds) of each row of image indices
    ``idx`` (R, M): the statistic every bootstrap replicate computes."""
    return _Statistic([as_runs(cms)], classes)(np.atleast_2d(idx))[..., 0]


def _check(confidence: float, n_resamples: int, method: str) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), e.g. 0.95 for 95%, got {confidence}")
    if int(n_resamples) != n_resamples or n_resamples < 100:
        raise ValueError(
            f"n_resamples must be an integer >= 100 (default {N_RESAMPLES}), got {n_resamples}"
        )
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def _bootstrap(statistic, n: int, n_resamples: int, confidence: float, seed: int, method: str):
    """Return (point, low, high) of ``statistic`` over resamples of the indices 0..n-1."""
    point = float(statistic(np.arange(n)))
    if np.isnan(point):
        return point, float("nan"), float("nan")
    kwargs = dict(vectorized=True, confidence_level=confidence, batch=BATCH)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap(
            (np.arange(n),),
            statistic,
            n_resamples=int(n_resamples),
            method=method,
            rng=np.random.default_rng(seed),
            **kwargs,
        )
        dist = res.bootstrap_distribution
        if np.ptp(dist) == 0:
            return point, float(dist[0]), float(dist[0])
        low, high = res.confidence_interval
        if method == "BCa" and (np.isnan(low) or np.isnan(high)):
            res = stats.bootstrap(
                (np.arange(n),),
                statistic,
                n_resamples=0,
                method="percentile",
                bootstrap_result=res,
                **kwargs,
            )
            low, high = res.confidence_interval
    return point, float(low), float(high)


def miou_ci(
    per_image_cms,
    classes: Sequence[int] | None = None,
    n_resamples: int = N_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
    method: str = "BCa",
) -> Interval:
    """Return the dataset-level mIoU (%) of all images and its bootstrap confidence interval
    over images: Interval(point, low, high).

    ``per_image_cms``: (N, C, C) per-image confusion matrices, or (S, N, C, C) for S seeds
    evaluated on the same N images (then the point is the mean over seeds of their mIoU and
    each replicate resamples the same images for every seed). ``classes``: the evaluated
    classes (:func:`diffprompt.benchmarks.eval_classes`; None: all). ``seed`` fixes the
    resampling, so the same input gives the same interval.
    """
    _check(confidence, n_resamples, method)
    runs = as_runs(per_image_cms)
    one = _Statistic([runs], classes)

    def statistic(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        return one(idx, axis)[..., 0]

    return Interval(*_bootstrap(statistic, runs.shape[1], n_resamples, confidence, seed, method))


def paired_difference_ci(
    cms_a,
    cms_b,
    classes: Sequence[int] | None = None,
    n_resamples: int = N_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
    method: str = "BCa",
) -> Difference:
    """Return the mIoU difference a - b (points; each the mean over its seeds) and its paired
    bootstrap confidence interval: Difference(difference, low, high, excludes_zero).

    ``cms_a``, ``cms_b``: per-image confusion matrices (N, C, C) or (S, N, C, C) of the two
    methods on the same N images in the same order (their numbers of seeds may differ). Each
    replicate resamples one set of image indices and uses it for both methods and all seeds.
    """
    _check(confidence, n_resamples, method)
    runs_a, runs_b = as_runs(cms_a, "cms_a"), as_runs(cms_b, "cms_b")
    if runs_a.shape[1:] != runs_b.shape[1:]:
        raise ValueError(
            f"cms_a holds {runs_a.shape[1]} images of {runs_a.shape[2]} classes and cms_b "
            f"{runs_b.shape[1]} of {runs_b.shape[2]}: a paired difference needs both methods "
            "evaluated on the same images, in the same order"
        )
    both = _Statistic([runs_a, runs_b], classes)

    def statistic(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        values = both(idx, axis)
        return values[..., 0] - values[..., 1]

    point, low, high = _bootstrap(statistic, runs_a.shape[1], n_resamples, confidence, seed, method)
    return Difference(point, low, high, bool(low > 0 or high < 0))
