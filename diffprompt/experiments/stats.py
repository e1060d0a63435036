"""Statistics over seeds and evaluation images for tables: "mean ± std" over seeds, and
bootstrap confidence intervals of mIoU and of its difference against a baseline row
(:mod:`diffprompt.bootstrap`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from diffprompt.bootstrap import (
    N_RESAMPLES,
    Difference,
    Interval,
    miou_ci,
    paired_difference_ci,
)
from diffprompt.evaluate import mean_iou
from diffprompt.results import format_mean_std


def mean_std(rows: Sequence[dict] | pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Return "mean ± std" over seeds of every numeric column (the "seed" column left out),
    grouped by ``by`` in order of first appearance, with the number of seeds."""
    df = pd.DataFrame(rows)
    numeric = [
        c for c in df.columns if c not in (*by, "seed") and pd.api.types.is_numeric_dtype(df[c])
    ]
    groups = df.groupby(list(by), sort=False)[numeric]
    means, stds = groups.mean(), groups.std(ddof=1)
    out = pd.DataFrame(index=means.index)
    for c in numeric:
        out[c] = [format_mean_std(m, s) for m, s in zip(means[c], stds[c], strict=True)]
    out["seeds"] = groups.size()
    return out


Classes = Sequence[int] | None | Callable[[dict[str, Any]], Sequence[int] | None]


#: The interval of a group with a single image.
NO_INTERVAL = Interval(math.nan, math.nan, math.nan)


def _groups(rows: Sequence[Mapping[str, Any]], by: Sequence[str], cms: str) -> dict[tuple, dict]:
    """Return {group key values: {"seeds": [...], "cms": (S, N, C, C)}} in order of first
    appearance."""
    out: dict[tuple, dict] = {}
    for i, row in enumerate(rows):
        missing = [k for k in (*by, "seed", cms) if k not in row]
        if missing:
            raise ValueError(f"row {i} lacks {missing}: each row needs {[*by, 'seed', cms]}")
        key = tuple(row[k] for k in by)
        g = out.setdefault(key, {"seeds": [], "cms": []})
        if row["seed"] in g["seeds"]:
            where = dict(zip(by, key, strict=True))
            raise ValueError(f"seed {row['seed']} appears twice in group {where}")
        g["seeds"].append(row["seed"])
        g["cms"].append(np.asarray(row[cms]))
    for key, g in out.items():
        shapes = {m.shape for m in g["cms"]}
        if len(shapes) > 1:
            raise ValueError(
                f"group {dict(zip(by, key, strict=True))}: its seeds were evaluated on "
                f"different images (per-image matrices of shapes {sorted(shapes)}); evaluate "
                "every seed on the same images"
            )
        g["cms"] = np.stack(g["cms"])
    return out


def ci_rows(
    rows: Sequence[Mapping[str, Any]],
    by: Sequence[str],
    baseline: Mapping[str, Any],
    classes: Classes = None,
    cms: str = "cms",
    n_resamples: int = N_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Return one numeric row per group of ``rows`` (the ``by`` keys; the runs of a group are
    its seeds): the group keys, "mIoU" and "std" (over seeds, of the dataset-level mIoU),
    "seeds", "images", "low"/"high" (bootstrap CI of the mIoU, seeds pooled), "delta",
    "delta_low", "delta_high", "excludes_zero" (paired CI of the difference against the
    group's baseline; None on the baseline itself).

    ``rows``: {by keys..., "seed", ``cms``: per-image confusion matrices (N, C, C)}.
    ``baseline``: the values of some of the ``by`` keys naming the baseline, e.g.
    {"method": "no adaptation"}; each group is compared with the group that shares its
    other ``by`` keys (e.g. the same target) and has these values. ``classes``: the
    evaluated classes, or a function of the group keys (a dict) returning them (e.g. for
    :func:`diffprompt.benchmarks.eval_classes` of the group's target).
    """
    unknown = set(baseline) - set(by)
    if not baseline or unknown:
        raise ValueError(f"baseline must name values of some of the by keys {list(by)}")
    groups = _groups(rows, by, cms)
    out = []
    for key, g in groups.items():
        keys = dict(zip(by, key, strict=True))
        cls = classes(keys) if callable(classes) else classes
        base_keys = {**keys, **baseline}
        base_key = tuple(base_keys[k] for k in by)
        if base_key not in groups:
            raise ValueError(f"no baseline row {base_keys} for {keys}: add its runs to rows")
        mious = [mean_iou(m.sum(0), cls) for m in g["cms"]]
        few = g["cms"].shape[1] < 2  # one image: no bootstrap, the intervals are NaN
        ci = NO_INTERVAL if few else miou_ci(g["cms"], cls, n_resamples, confidence, seed)
        row = {
            **keys,
            "mIoU": float(np.mean(mious)),
            "std": float(np.std(mious, ddof=1)) if len(mious) > 1 else math.nan,
            "seeds": len(mious),
            "images": g["cms"].shape[1],
            "low": ci.low,
            "high": ci.high,
        }
        if base_key == key:
            row.update(delta=math.nan, delta_low=math.nan, delta_high=math.nan, excludes_zero=None)
        elif few:
            base = np.mean([mean_iou(m.sum(0), cls) for m in groups[base_key]["cms"]])
            d = Difference(float(np.mean(mious) - base), math.nan, math.nan, False)
        else:
            d = paired_difference_ci(
                g["cms"], groups[base_key]["cms"], cls, n_resamples, confidence, seed
            )
            row.update(
                delta=d.difference,
                delta_low=d.low,
                delta_high=d.high,
                excludes_zero=d.excludes_zero,
            )
        out.append(row)
    return out


def _interval(low: float, high: float) -> str:
    return "--" if math.isnan(low) or math.isnan(high) else f"[{low:.2f}, {high:.2f}]"


def ci_table(
    rows: Sequence[Mapping[str, Any]],
    by: Sequence[str],
    baseline: Mapping[str, Any],
    baseline_name: str | None = None,
    confidence: float = 0.95,
    **kwargs,
) -> pd.DataFrame:
    """Return the table of :func:`ci_rows`, indexed by ``by``, as text (:func:`format_ci`).
    ``baseline_name``: default the baseline's values joined by " / ". ``kwargs``: those of
    :func:`ci_rows` (``classes``, ``cms``, ``n_resamples``, ``seed``)."""
    name = baseline_name or " / ".join(str(v) for v in baseline.values())
    numeric = ci_rows(rows, by, baseline, confidence=confidence, **kwargs)
    return format_ci(numeric, by, name, confidence)


def format_ci(
    numeric: Sequence[Mapping[str, Any]] | pd.DataFrame,
    by: Sequence[str],
    baseline_name: str,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Return rows of :func:`ci_rows` (or a DataFrame of them, ``by`` in the index or the
    columns) as text, indexed by ``by``: "mIoU" ("mean ± std" over seeds), "95% CI"
    ("[low, high]"), "Δ vs <baseline_name>" (mIoU points, signed), "Δ 95% CI", "excludes 0"
    ("yes"/"no"; "--" on the baseline rows), "seeds" and "images". Rows without difference
    columns (no baseline) get only the first two and the counts."""
    if isinstance(numeric, pd.DataFrame):
        numeric = numeric.reset_index().to_dict("records")
    level = f"{100 * confidence:g}% CI"
    table = []
    for r in numeric:
        row = {
            **{k: r[k] for k in by},
            "mIoU": format_mean_std(r["mIoU"], r["std"]),
            level: _interval(r["low"], r["high"]),
        }
        if "delta" in r:
            ez = r["excludes_zero"]
            base = ez is None or (isinstance(ez, float) and math.isnan(ez))
            delta = r["delta"]
            row[f"Δ vs {baseline_name}"] = "--" if base or math.isnan(delta) else f"{delta:+.2f}"
            row[f"Δ {level}"] = "--" if base else _interval(r["delta_low"], r["delta_high"])
            row["excludes 0"] = "--" if base else ("yes" if ez else "no")
        row["seeds"] = r["seeds"]
        row["images"] = r["images"]
        table.append(row)
    return pd.DataFrame(table).set_index(list(by))
