"""Statistics over seeds: mean and sample standard deviation, as "mean ± std" text."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

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
