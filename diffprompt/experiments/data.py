"""Notebook 00: samples of every domain, class frequencies, and the domain gap of a small
CNN as a table (reused when a stored run has the same code, recipe and data)."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from diffprompt.data import SPLITS, build_dataset
from diffprompt.domain_gap import GapConfig, experiment_key, run_domain_gap
from diffprompt.io import atomic_write_text, git_info
from diffprompt.labels import CLASSES, IGNORE_INDEX, NUM_CLASSES


def gap_config(params: dict) -> GapConfig:
    """Return the small CNN's recipe of notebook 00's parameters (``gap_steps``,
    ``gap_batch_size``, ``gap_input_scale``, ``seed``, ``device``)."""
    return GapConfig(
        steps=params["gap_steps"],
        batch_size=params["gap_batch_size"],
        input_scale=params["gap_input_scale"],
        seed=params["seed"],
        device=params["device"],
    )


def _evaluation_split(name: str) -> str | None:
    return "val" if "val" in SPLITS[name] else None


def pick_samples(
    root, names: Sequence[str], n: int, seed: int = 0, split: str | None = None
) -> dict[str, list[dict]]:
    """Return {name: n samples} drawn reproducibly from each data set's evaluation split."""
    out = {}
    g = torch.Generator().manual_seed(seed)
    for name in names:
        ds = build_dataset(name, split or _evaluation_split(name), root)
        idx = torch.randperm(len(ds), generator=g)[:n].tolist()
        out[name] = [ds[i] for i in idx]
    return out


def class_frequencies(root, names: Sequence[str], max_images: int = 0) -> pd.DataFrame:
    """Return a (data sets x 19 classes) DataFrame of each class's share of labeled pixels."""
    rows = {}
    for name in names:
        ds = build_dataset(name, _evaluation_split(name), root)
        counts = np.zeros(NUM_CLASSES, np.int64)
        for i in range(len(ds) if not max_images else min(max_images, len(ds))):
            m = ds[i]["mask"].numpy().ravel()
            counts += np.bincount(m[m != IGNORE_INDEX], minlength=NUM_CLASSES)[:NUM_CLASSES]
        rows[name] = counts / max(counts.sum(), 1)
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(CLASSES))


def load_or_run_domain_gap(
    root,
    source: str,
    targets: Sequence[str],
    cfg: GapConfig,
    results_dir,
    max_images: int = 0,
    reuse: bool = True,
    log: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Return the domain-gap table (rows: targets), reusing a stored run when its key
    matches exactly.

    A run's table is stored as ``tables/domain_gap.csv`` with ``tables/domain_gap.json``
    holding its key, checks and provenance (git sha, time). With ``reuse`` and a matching
    key the stored table is returned (``df.attrs["reused"]`` says from when); otherwise the
    CNNs are trained (minutes per CNN on a CPU) and the caller writes the new table.
    ``df.attrs`` holds "checks" and "source_in_domain" either way.
    """
    key = experiment_key(root, source, targets, cfg, max_images)
    side = Path(results_dir) / "tables" / "domain_gap.json"
    if reuse and side.is_file():
        stored = json.loads(side.read_text())
        csv = side.with_suffix(".csv")
        if stored.get("key") == json.loads(json.dumps(key)) and csv.is_file():
            df = pd.read_csv(csv, index_col=0)
            df.attrs.update(
                checks=stored["checks"],
                source_in_domain=stored["source_in_domain"],
                reused=stored["provenance"],
            )
            if log:
                log(
                    f"reusing the domain-gap run of {stored['provenance']['finished_utc']} "
                    "(same code, recipe and data); pass reuse=False to rerun"
                )
            return df
    result = run_domain_gap(root, source, targets, cfg, max_images=max_images, log=log)
    df = pd.DataFrame(result["rows"]).set_index("target")
    df.attrs.update(source_in_domain=result["source_in_domain"], checks=result["checks"], key=key)
    return df


def store_domain_gap_key(df: pd.DataFrame, results_dir) -> Path:
    """Write ``tables/domain_gap.json`` (key, checks, provenance) beside a fresh table."""
    provenance = {
        "finished_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "git": git_info(),
    }
    blob = {
        "key": df.attrs["key"],
        "checks": df.attrs["checks"],
        "source_in_domain": df.attrs["source_in_domain"],
        "provenance": provenance,
    }
    path = Path(results_dir) / "tables" / "domain_gap.json"
    return atomic_write_text(path, json.dumps(blob, indent=1, default=str) + "\n")


def record_domain_gap(run, df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Write a fresh domain-gap table (CSV/Markdown/LaTeX + key) through ``run``.

    A reused table is left as it is and listed among the run's outputs. Returns ``df``.
    """
    checks = ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in df.attrs["checks"].items())
    caption = (
        f"mIoU (%) of a small CNN trained on {source} (source-trained, "
        f"{df.attrs['source_in_domain']:.1f} on {source}'s held-out val split) or on the "
        f"target's own labels (target-trained). Checks: {checks}."
    )
    if "reused" in df.attrs:
        run.outputs += [f"tables/domain_gap.{s}" for s in ("csv", "md", "tex", "json")]
    else:
        run.table(df, "domain_gap", caption=caption)
        store_domain_gap_key(df, run.root)
        run.outputs.append("tables/domain_gap.json")
    run.extra.update(
        domain_gap_checks=df.attrs["checks"], domain_gap_reused_from=df.attrs.get("reused")
    )
    return df
