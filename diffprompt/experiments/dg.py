"""Notebook 02: DG runs from a notebook's parameters, and their tables."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from diffprompt.benchmarks import eval_classes
from diffprompt.dg.config import PresetChoice, TrainConfig, with_preset
from diffprompt.dg.runs import train_dg
from diffprompt.dg.trainer import Trainer
from diffprompt.evaluate import ConfusionMatrix, mean_iou
from diffprompt.experiments.stats import ci_rows, format_ci
from diffprompt.labels import CLASSES
from diffprompt.parameters import config_of, explicit_parameters


def dg_config(
    params: Mapping[str, Any], explicit: Iterable[str] | None = None
) -> tuple[TrainConfig, PresetChoice]:
    """Return the TrainConfig of notebook 02's parameters and what its preset did: every
    parameter named like a TrainConfig field sets it (others are ignored), then the
    ``preset`` (if any) applies to every field but the explicit ones, those the user passed
    (``explicit``; None: the parameters whose values differ from the notebook's defaults)."""
    if explicit is None:
        explicit = explicit_parameters(params, "02_dg_training")
    return with_preset(config_of(TrainConfig, params), params.get("preset", ""), explicit)


def miou_table(trainer: Trainer, cms: Mapping[str, ConfusionMatrix], sets) -> pd.DataFrame:
    """Return mIoU (%) per evaluated set with the image and class counts (index: target)."""
    return pd.DataFrame(trainer.miou_rows(cms, sets)).set_index("target")


def per_class_table(trainer: Trainer, cms: Mapping[str, ConfusionMatrix], sets) -> pd.DataFrame:
    """Return the IoU (%) of each class (columns) per evaluated set (rows); classes outside
    the protocol's set (:func:`diffprompt.benchmarks.eval_classes`), or absent from both
    prediction and labels, are NaN."""
    return _per_class(cms, trainer.cfg.source, sets)


def _per_class(cms: Mapping[str, ConfusionMatrix], source: str, sets) -> pd.DataFrame:
    rows = {}
    for name, cm in cms.items():
        iou = cm.iou() * 100
        classes = eval_classes(source, sets[name])
        if classes is not None:
            keep = np.zeros(len(CLASSES), bool)
            keep[list(classes)] = True
            iou = np.where(keep, iou, np.nan)
        rows[name] = iou
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(CLASSES))


def describe_run(trainer: Trainer) -> dict[str, Any]:
    """Return a JSON-able summary of a run: backbone, prompts and trainable parameters."""
    model = trainer.model
    n_train = sum(p.numel() for g in trainer.opt.param_groups for p in g["params"])
    return {
        "backbone": model.backbone.describe(),
        "prompt_mode": trainer.cfg.prompt_mode,
        "context_tokens": model.prompts.num_tokens,
        "prompt_pool": trainer.pool,
        "trainable_parameters": int(n_train),
        "config_hash": trainer.hash,
        "device": str(trainer.device),
        "processes": trainer.acc.num_processes,
        "torch_threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------------------------------
# Seeds, a baseline mode, and their statistics
# ---------------------------------------------------------------------------------------


def seed_configs(
    cfg: TrainConfig, seeds: Sequence[int], baseline_mode: str = ""
) -> dict[tuple[str, int], TrainConfig]:
    """Return {(prompt mode, seed): config}: ``cfg`` at every seed, and the same with
    ``baseline_mode`` ("" = none, e.g. "fixed": T2's difference column) at every seed."""
    modes = [cfg.prompt_mode] + ([baseline_mode] if baseline_mode else [])
    return {
        (mode, int(s)): dataclasses.replace(cfg, prompt_mode=mode, seed=int(s))
        for mode in modes
        for s in seeds
    }


def train_seeds(
    cfgs: Mapping[tuple[str, int], TrainConfig], results_dir=None, retrain: bool = False
) -> dict[tuple[str, int], Trainer]:
    """Return {(mode, seed): trained Trainer} (finished runs of a configuration reused)."""
    return {key: train_dg(c, results_dir, retrain=retrain) for key, c in cfgs.items()}


def evaluate_seeds(
    trainers: Mapping[tuple[str, int], Trainer],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Return (rows, sets): one row per (mode, seed, evaluated set) with its mIoU and
    per-image confusion matrices ("cms", for :func:`diffprompt.experiments.stats.ci_rows`)
    and the dataset-level matrix ("cm"); ``sets``: {name: data set} (of the first run)."""
    rows, sets = [], {}
    for (mode, seed), trainer in trainers.items():
        run_sets = trainer.eval_sets()
        sets = sets or run_sets
        cms = trainer.evaluate(run_sets)
        for r in trainer.miou_rows(cms, run_sets):
            cm = cms[r["target"]]
            rows.append(
                {"method": mode, "seed": seed, **r, "cm": cm, "cms": cm.per_image_matrices()}
            )
    return rows, sets


def dg_statistics(
    rows: Sequence[Mapping[str, Any]], source: str, sets: Mapping[str, Any], baseline: str = ""
) -> pd.DataFrame:
    """Return the numeric statistics per (method, target): mIoU mean and std over seeds, its
    95% bootstrap CI (seeds pooled) and, with a ``baseline`` mode among the rows, the paired
    difference against it (:func:`diffprompt.experiments.stats.ci_rows`)."""
    modes = list(dict.fromkeys(r["method"] for r in rows))
    ref = baseline if baseline in modes else modes[0]
    out = ci_rows(
        rows,
        ["method", "target"],
        {"method": ref},
        classes=lambda keys: eval_classes(source, sets[keys["target"]]),
    )
    df = pd.DataFrame(out).set_index(["method", "target"])
    if baseline not in modes:
        df = df.drop(
            columns=[c for c in df.columns if c.startswith("delta") or c == "excludes_zero"]
        )
    return df


def dg_display(stats: pd.DataFrame, baseline: str = "") -> pd.DataFrame:
    """Return :func:`dg_statistics` as text (:func:`diffprompt.experiments.stats.format_ci`):
    "mean ± std", the CI, and the difference against the baseline mode with its CI and
    whether that excludes 0."""
    return format_ci(stats, ["method", "target"], baseline)


def runs_table(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Return every run's mIoU (%): one row per (method, seed, target)."""
    keep = ("method", "seed", "target", "mIoU", "images", "classes")
    return pd.DataFrame([{k: r[k] for k in keep} for r in rows]).set_index(
        ["method", "seed", "target"]
    )


def per_class_mean(
    rows: Sequence[Mapping[str, Any]], source: str, sets: Mapping[str, Any], method: str
) -> pd.DataFrame:
    """Return the IoU (%) of each class per evaluated set, mean over the seeds of
    ``method`` (classes outside the protocol's set, or absent, NaN)."""
    tables = []
    for seed in dict.fromkeys(r["seed"] for r in rows if r["method"] == method):
        cms = {r["target"]: r["cm"] for r in rows if r["method"] == method and r["seed"] == seed}
        tables.append(_per_class(cms, source, sets))
    return sum(tables[1:], tables[0]) / len(tables)


def curve_table(trainers: Mapping[tuple[str, int], Trainer]) -> pd.DataFrame:
    """Return the training curves: mIoU (%) of the curve set (source val or held-out source
    images) every ``eval_every`` steps, one row per (method, seed, step)."""
    rows = []
    for (mode, seed), trainer in trainers.items():
        name = trainer.data.curve.name if trainer.data.curve is not None else ""
        for e in trainer.state.log:
            if "curve_mIoU" in e:
                rows.append(
                    {
                        "method": mode,
                        "seed": seed,
                        "step": e["step"],
                        "set": name,
                        "mIoU": e["curve_mIoU"],
                        "loss": e["loss"],
                    }
                )
    return pd.DataFrame(rows, columns=["method", "seed", "step", "set", "mIoU", "loss"])


def miou_on_first(
    rows: Sequence[Mapping[str, Any]], method: str, target: str, n: int, source: str, sets
) -> dict[str, float]:
    """Return the mIoU (%) of ``method``'s runs on the first ``n`` images of ``target`` only
    (from the per-image matrices): mean and std over seeds. For comparisons on the images
    another table used (T1's probe scores the first ``n_eval`` images of each set)."""
    classes = eval_classes(source, sets[target])
    values = [
        mean_iou(r["cms"][:n].sum(0), classes)
        for r in rows
        if r["method"] == method and r["target"] == target
    ]
    return {"images": n, "mIoU": float(np.mean(values)), "std": float(np.std(values, ddof=1))}
