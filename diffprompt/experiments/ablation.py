"""Notebook 04: the prompt-ablation grid (every cell a real DG run, over seeds) and how much
the prompt moves the backbone's features."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from diffprompt.benchmarks import eval_classes
from diffprompt.build import build_backbone, build_model
from diffprompt.cache import FeatureCache
from diffprompt.captions import CaptionBook, CaptionError, CaptionPrompt
from diffprompt.data import build_dataset
from diffprompt.data.roots import resolve_data_root
from diffprompt.dg.config import TrainConfig, check_config, config_dict, source_split
from diffprompt.dg.data import image_transform
from diffprompt.dg.runs import train_dg
from diffprompt.dg.sampling import caption_pool, prompt_pool
from diffprompt.experiments.stats import ci_rows
from diffprompt.parameters import config_of
from diffprompt.paths import cache_dir
from diffprompt.prompts import SceneText
from diffprompt.results import format_mean_std
from diffprompt.runtime import resolve_device

#: A cell of the grid: (group, setting, TrainConfig overrides).
Cell = tuple[str, str, dict]


def ablation_base(params: Mapping[str, Any]) -> TrainConfig:
    """Return the grid's base configuration from notebook 04's parameters: every parameter
    named like a TrainConfig field, the first of ``ks``, ``lambdas`` and ``vocab_sizes``, no
    source evaluation and no intermediate checkpoints."""
    return config_of(
        TrainConfig,
        params,
        train_size=tuple(params["train_size"]) or None,
        num_prompts=params["ks"][0],
        consistency_weight=params["lambdas"][0],
        vocabulary_size=params["vocab_sizes"][0],
        eval_source=False,
        log_every=50,
        ckpt_every=0,
    )


def ablation_cells(
    modes: Sequence[str],
    ks: Sequence[int],
    lambdas: Sequence[float],
    vocab_sizes: Sequence[int],
    base: TrainConfig,
) -> list[Cell]:
    """Return the grid as (group, setting, overrides): every prompt mode at the base K,
    lambda and vocabulary, then the method (``random_consistency``) at each K, lambda and
    vocabulary size. A cell equal to an earlier one (the method at the base values) is
    listed once, under "mode"."""
    cells: list[Cell] = []
    seen: set[str] = set()

    def add(group: str, setting: str, over: dict) -> None:
        key = json.dumps(config_dict(dataclasses.replace(base, **over)), sort_keys=True)
        if key not in seen:
            seen.add(key)
            cells.append((group, setting, over))

    for m in modes:
        add("mode", m, {"prompt_mode": m})
    method = {"prompt_mode": "random_consistency"}
    for k in ks:
        add("K", str(k), {**method, "num_prompts": int(k)})
    for lam in lambdas:
        add("lambda", f"{lam:g}", {**method, "consistency_weight": float(lam)})
    for v in vocab_sizes:
        add("vocabulary", "all" if v == 0 else str(v), {**method, "vocabulary_size": int(v)})
    return cells


def run_ablation(
    base: TrainConfig,
    cells: Sequence[Cell],
    seeds: Sequence[int],
    results_dir: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Train and evaluate every cell with every seed (a real run each; a finished run of the
    same configuration is reused). Returns (one row per (group, setting, seed) with the
    mIoU of each evaluated set, one row per (group, setting, target, seed) with the
    per-image confusion matrices "cms" for :func:`ablation_statistics`)."""
    for _, _, over in cells:  # every cell's configuration before the backbone loads
        check_config(dataclasses.replace(base, **over))
    backbone = build_backbone(base, resolve_device(base.device))
    rows, cm_rows = [], []
    for group, setting, over in cells:
        for seed in seeds:
            cfg = dataclasses.replace(base, **over, seed=int(seed))
            log(f"--- {group} = {setting}, seed {seed}")
            trainer = train_dg(cfg, results_dir, log=log, backbone=backbone)
            sets = trainer.eval_sets()
            cms = trainer.evaluate(sets)
            mious = {r["target"]: r["mIoU"] for r in trainer.miou_rows(cms, sets)}
            rows.append({"group": group, "setting": setting, "seed": int(seed), **mious})
            for target, cm in cms.items():
                cm_rows.append(
                    {
                        "group": group,
                        "setting": setting,
                        "target": target,
                        "seed": int(seed),
                        "cms": cm.per_image_matrices(),
                    }
                )
    return pd.DataFrame(rows), cm_rows


def ablation_statistics(
    cm_rows: Sequence[Mapping[str, Any]], source: str, baseline: str = "null"
) -> pd.DataFrame:
    """Return per (group, setting, target): mIoU mean and std over seeds, its 95% bootstrap
    CI (images resampled, seeds pooled) and the paired difference against the prompt mode
    ``baseline`` (T3's: the null prompt; a grid without it: its first mode), with whether
    its CI excludes 0
    (:func:`diffprompt.experiments.stats.ci_rows`)."""
    cells = list(dict.fromkeys((r["group"], r["setting"]) for r in cm_rows))
    if ("mode", baseline) not in cells:  # a grid without that mode: its first cell
        baseline = cells[0][1] if cells and cells[0][0] == "mode" else baseline
    out = ci_rows(
        cm_rows,
        ["group", "setting", "target"],
        {"group": "mode", "setting": baseline},
        classes=lambda keys: eval_classes(source, keys["target"]),
    )
    return pd.DataFrame(out).set_index(["group", "setting", "target"])


def ablation_summary(runs: pd.DataFrame, targets: Sequence[str]) -> pd.DataFrame:
    """Return mean, std over seeds of each set's mIoU and of their mean over ``targets``,
    per (group, setting), in the grid's order."""
    df = runs.copy()
    df["target mean"] = df[list(targets)].mean(axis=1)
    cols = [c for c in df.columns if c not in ("group", "setting", "seed")]
    order = list(dict.fromkeys(zip(df["group"], df["setting"], strict=True)))
    g = df.groupby(["group", "setting"], sort=False)[cols]
    out = g.mean().add_suffix(" mean").join(g.std(ddof=1).add_suffix(" std"))
    out["seeds"] = g.size()
    out = out.loc[order]
    return out[[f"{c} {s}" for c in cols for s in ("mean", "std")] + ["seeds"]]


def ablation_display(summary: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Return the summary as "mean ± std" strings for ``columns`` (for the Markdown table),
    one row per cell with its group and setting as columns."""
    out = pd.DataFrame(index=summary.index)
    for c in columns:
        pairs = zip(summary[f"{c} mean"], summary[f"{c} std"], strict=True)
        out[c] = [format_mean_std(m, s) for m, s in pairs]
    out["seeds"] = summary["seeds"]
    return out.reset_index().set_index("group")


def prompt_sensitivity(
    base: TrainConfig,
    indices: Sequence[int] = range(16),
    results_dir: str | os.PathLike | None = None,
    backbone=None,
) -> pd.DataFrame:
    """Return how much the backbone's maps of source images change with the prompt: per map,
    the mean over images of ||f(context) - f(fixed)|| / ||f(fixed)||, where "fixed" is
    [category ; the fixed scene prompt] and the context is another scene prompt of the
    pool, the category tokens alone, the empty prompt, [category ; each image's own
    caption] (the caption modes; where the data set has captions) or that caption with its
    condition words replaced (a phrase of the caption pool). Near 0: the prompt hardly
    matters to the features, so randomizing it has little to regularize."""
    bb = backbone if backbone is not None else build_backbone(base, resolve_device(base.device))
    folder = cache_dir(results_dir)
    caches = {}
    for mode in ("fixed", "category", "null", "caption"):
        model = build_model(dataclasses.replace(base, prompt_mode=mode), bb.unet.device, bb)
        caches[mode] = FeatureCache(model, folder)
    root = resolve_data_root(base.data_root)
    ds = build_dataset(base.source, source_split(base), root, transform=image_transform(base))
    idx = [i for i in indices if i < len(ds)]
    ref = caches["fixed"].get(ds, idx)
    pool = prompt_pool(dataclasses.replace(base, prompt_mode="random_consistency"))
    others = {
        f"scene prompt {i + 1} of the pool": caches["fixed"].get(ds, idx, SceneText(p))
        for i, p in enumerate(pool[:4])
    }
    others["category tokens only"] = caches["category"].get(ds, idx)
    others["empty prompt"] = caches["null"].get(ds, idx)
    book = CaptionBook(base.caption_source, base.captions_file, base.captioner, folder)
    try:
        book.check(ds, idx)
    except CaptionError:  # real data without captions: no caption rows
        book = None
    if book is not None:
        caption = caches["caption"]
        others["own caption"] = caption.get(ds, idx, CaptionPrompt(book, "caption"))
        replaced = caption_pool(dataclasses.replace(base, prompt_mode="caption_consistency"))[0]
        others[f"own caption, {replaced.split(':', 1)[1]!r} for its condition"] = caption.get(
            ds, idx, CaptionPrompt(book, replaced)
        )
    rows = {}
    for name, feats in others.items():
        rows[name] = {}
        for k in sorted(ref):
            change = (feats[k] - ref[k]).flatten(1).norm(dim=1)
            rows[name][k] = float((change / ref[k].flatten(1).norm(dim=1)).mean())
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("context vs the fixed prompt")
