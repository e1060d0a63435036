"""Notebook 02: DG runs from a notebook's parameters, and their tables."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from diffprompt.benchmarks import eval_classes
from diffprompt.dg.config import PresetChoice, TrainConfig, preset_config
from diffprompt.dg.trainer import Trainer
from diffprompt.evaluate import ConfusionMatrix
from diffprompt.experiments import explicit_parameters
from diffprompt.labels import CLASSES


def dg_config(
    params: Mapping[str, Any], explicit: Iterable[str] | None = None
) -> tuple[TrainConfig, PresetChoice]:
    """Return the TrainConfig of notebook 02's parameters and what its preset did: every
    parameter named like a TrainConfig field sets it (others are ignored), then the
    ``preset`` (if any) applies to every field but the explicit ones, those the user passed
    (``explicit``; None: the parameters whose values differ from the notebook's defaults)."""
    if explicit is None:
        explicit = explicit_parameters(params, "02_dg_training")
    return preset_config(params, params.get("preset", ""), explicit)


def miou_table(trainer: Trainer, cms: Mapping[str, ConfusionMatrix], sets) -> pd.DataFrame:
    """Return mIoU (%) per evaluated set with the image and class counts (index: target)."""
    return pd.DataFrame(trainer.miou_rows(cms, sets)).set_index("target")


def per_class_table(trainer: Trainer, cms: Mapping[str, ConfusionMatrix], sets) -> pd.DataFrame:
    """Return the IoU (%) of each class (columns) per evaluated set (rows); classes outside
    the protocol's set (:func:`diffprompt.benchmarks.eval_classes`), or absent from both
    prediction and labels, are NaN."""
    rows = {}
    for name, cm in cms.items():
        iou = cm.iou() * 100
        classes = eval_classes(trainer.cfg.source, sets[name])
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
