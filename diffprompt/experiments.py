"""The experiments the notebooks run: DG training runs, their tables and figures, and the
prompt-ablation grid. Each function does one thing a notebook cell needs.

Run folders live under ``results/runs/dg/<source>-<mode>-<config hash>/`` (checkpoint and
config); a run whose checkpoint has reached its last step is reused, not retrained (test-
time adaptation finds the DG model of a configuration there). Frozen features are cached
under ``results/runs/cache/``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from diffprompt.labels import CLASSES, SYNTHIA_EVAL_CLASSES
from diffprompt.paths import results_root
from diffprompt.train import TrainConfig, Trainer, config_dict, config_hash


def runs_root(results_dir: str | os.PathLike | None = None) -> Path:
    """Return the folder of run scratch space (checkpoints, caches): ``<results>/runs``."""
    return (Path(results_dir) if results_dir else results_root()) / "runs"


def dg_run_dir(cfg: TrainConfig, results_dir: str | os.PathLike | None = None) -> Path:
    """Return the run folder of a DG configuration (named by its configuration hash)."""
    return runs_root(results_dir) / "dg" / f"{cfg.source}-{cfg.prompt_mode}-{config_hash(cfg)}"


def cache_dir(results_dir: str | os.PathLike | None = None) -> Path:
    """Return the feature-cache folder."""
    return runs_root(results_dir) / "cache"


def train_dg(cfg: TrainConfig, results_dir: str | os.PathLike | None = None,
             log: Callable[[str], None] = print, backbone=None, retrain: bool = False,
             cache: bool = True) -> Trainer:  # fmt: skip
    """Return a Trainer whose model is trained as ``cfg`` says.

    A finished checkpoint of the same configuration in :func:`dg_run_dir` is loaded instead
    of training; an unfinished one is resumed; ``retrain=True`` starts over. ``cache``
    keeps frozen features on disk under :func:`cache_dir` (else in memory only).
    """
    from diffprompt.preflight import check_writable
    from diffprompt.io import atomic_write_text

    out = dg_run_dir(cfg, results_dir)
    check_writable(out, "run folder")
    trainer = Trainer(cfg, out, log=log, backbone=backbone,
                      cache_dir=cache_dir(results_dir) if cache else None)  # fmt: skip
    if retrain and (out / "checkpoint.pt").is_file():
        (out / "checkpoint.pt").unlink()
    trainer.load_checkpoint()  # an unreadable or mismatched checkpoint stops here
    atomic_write_text(out / "config.json", json.dumps(config_dict(cfg), indent=1) + "\n")
    state = trainer.fit()
    if state.step >= cfg.steps and state.log and trainer.acc.is_main_process:
        last = state.log[-1]
        log(f"trained {cfg.prompt_mode} to step {state.step}: loss {last['loss']:.4f} "
            f"({state.seconds:.0f}s of training)")  # fmt: skip
    return trainer


def _train_in_process(cfg: TrainConfig, results_dir, cache: bool) -> None:
    train_dg(cfg, results_dir, cache=cache)


def launch(cfg: TrainConfig, num_processes: int, results_dir: str | os.PathLike | None = None,
           retrain: bool = False, cache: bool = True) -> Path:  # fmt: skip
    """Train ``cfg`` on ``num_processes`` processes with accelerate's notebook launcher (from
    a notebook or a script; GPUs when present, else gloo on the CPU) and return the run
    folder; :func:`train_dg` then loads the finished run. From a terminal, ``accelerate
    launch -m diffprompt.train ...`` does the same."""
    from accelerate import notebook_launcher

    out = dg_run_dir(cfg, results_dir)
    if retrain and (out / "checkpoint.pt").is_file():
        (out / "checkpoint.pt").unlink()
    notebook_launcher(_train_in_process, args=(cfg, results_dir, cache),
                      num_processes=num_processes, mixed_precision=cfg.mixed_precision)  # fmt: skip
    return out


def eval_classes(cfg: TrainConfig, dataset) -> tuple[int, ...] | None:
    """Return the classes mIoU averages over: SYNTHIA's 16 when SYNTHIA is the source (the
    SYNTHIA -> Cityscapes protocol), else the data set's own."""
    if cfg.source == "synthia":
        return SYNTHIA_EVAL_CLASSES
    return getattr(dataset, "eval_classes", None)


def miou_table(trainer: Trainer, cms: Mapping[str, Any], sets: Mapping[str, Any]) -> pd.DataFrame:
    """Return mIoU (%) per evaluated set with the image and class counts."""
    cfg = trainer.cfg
    rows = []
    for name, cm in cms.items():
        classes = eval_classes(cfg, sets[name])
        n = trainer.eval_count(sets[name])
        rows.append({"target": name, "mIoU": cm.miou(classes), "images": n,
                     "classes": len(classes) if classes is not None else len(CLASSES)})  # fmt: skip
    return pd.DataFrame(rows).set_index("target")


def per_class_table(
    trainer: Trainer, cms: Mapping[str, Any], sets: Mapping[str, Any]
) -> pd.DataFrame:
    """Return the IoU (%) of each class (columns) per evaluated set (rows); classes outside
    the protocol's set, or absent from both prediction and labels, are NaN."""
    rows = {}
    for name, cm in cms.items():
        iou = cm.iou() * 100
        classes = eval_classes(trainer.cfg, sets[name])
        if classes is not None:
            keep = np.zeros(len(CLASSES), bool)
            keep[list(classes)] = True
            iou = np.where(keep, iou, np.nan)
        rows[name] = iou
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(CLASSES))


def prediction_figure(trainer: Trainer, sets: Mapping[str, Any], index: int = 0):
    """Return a figure: per evaluated set, image ``index``, its labels and the prediction."""
    from diffprompt.viz import overlay, panel_grid, to_uint8_image

    rows = {}
    for name, ds in sets.items():
        s = ds[index]
        pred = trainer.predictor(ds)(s["image"][None], [index])[0].cpu()
        rows[name] = [to_uint8_image(s["image"]), overlay(s["image"], s["mask"]),
                      overlay(s["image"], pred)]  # fmt: skip
    return panel_grid(rows, ["image", "ground truth", f"prediction ({trainer.cfg.prompt_mode})"])


def loss_figure(trainer: Trainer):
    """Return a figure of the training loss (cross-entropy and consistency) per step."""
    import matplotlib.pyplot as plt

    log = pd.DataFrame(trainer.state.log)
    fig, ax = plt.subplots(1, 2, figsize=(9, 3))
    ax[0].plot(log["step"], log["ce"], lw=1)
    ax[0].set(xlabel="step", ylabel="cross-entropy", title="source cross-entropy")
    ax[1].plot(log["step"], log["consistency"], lw=1, color="C1")
    ax[1].set(xlabel="step", ylabel="consistency", title=f"consistency ({trainer.cfg.consistency})")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------
# The prompt-ablation grid
# ---------------------------------------------------------------------------------------


def ablation_cells(modes: Sequence[str], ks: Sequence[int], lambdas: Sequence[float],
                   vocab_sizes: Sequence[int], base: TrainConfig) -> list[tuple[str, str, dict]]:  # fmt: skip
    """Return the grid as (group, setting, overrides): every prompt mode at the base K,
    lambda and vocabulary, then the method (``random_consistency``) at each K, lambda and
    vocabulary size. A cell equal to an earlier one (the method at the base values) is
    listed once, under "mode"."""
    cells: list[tuple[str, str, dict]] = []
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


def run_ablation(base: TrainConfig, cells: Sequence[tuple[str, str, dict]], seeds: Sequence[int],
                 results_dir: str | os.PathLike | None = None,
                 log: Callable[[str], None] = print) -> pd.DataFrame:  # fmt: skip
    """Train and evaluate every cell with every seed (a real run each; a finished run of the
    same configuration is reused). Returns one row per (group, setting, seed) with the
    mIoU of each evaluated set."""
    from diffprompt.train import build_backbone, check_config

    for _, _, over in cells:  # every cell's configuration before the backbone loads
        check_config(dataclasses.replace(base, **over))
    backbone = build_backbone(base, "cpu" if base.device == "cpu" else _device(base))
    rows = []
    for group, setting, over in cells:
        for seed in seeds:
            cfg = dataclasses.replace(base, **over, seed=int(seed))
            log(f"--- {group} = {setting}, seed {seed}")
            trainer = train_dg(cfg, results_dir, log=log, backbone=backbone)
            sets = trainer.eval_sets()
            cms = trainer.evaluate(sets)
            table = miou_table(trainer, cms, sets)
            rows.append({"group": group, "setting": setting, "seed": int(seed),
                         **table["mIoU"].to_dict()})  # fmt: skip
    return pd.DataFrame(rows)


def _device(cfg: TrainConfig):
    from diffprompt.runtime import resolve_device

    return resolve_device(cfg.device)


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
        out[c] = [f"{m:.2f} ± {s:.2f}" if not math.isnan(s) else f"{m:.2f}"
                  for m, s in zip(summary[f"{c} mean"], summary[f"{c} std"], strict=True)]  # fmt: skip
    out["seeds"] = summary["seeds"]
    return out.reset_index().set_index("group")


def prompt_sensitivity(base: TrainConfig, indices: Sequence[int] = range(16),
                       results_dir: str | os.PathLike | None = None, backbone=None) -> pd.DataFrame:  # fmt: skip
    """Return how much the backbone's maps of source images change with the prompt: per map,
    the mean over images of ||f(context) - f(fixed)|| / ||f(fixed)||, where "fixed" is
    [category ; the fixed scene prompt] and the context is another scene prompt of the
    pool, the category tokens alone, or the empty prompt. Near 0: the prompt hardly
    matters to the features, so randomizing it has little to regularize."""
    from diffprompt.cache import FeatureCache
    from diffprompt.data import build_dataset
    from diffprompt.data.transforms import Compose, Resize, ToFloat
    from diffprompt.data.roots import resolve_data_root
    from diffprompt.train import build_backbone, build_model, prompt_pool, source_split

    bb = backbone if backbone is not None else build_backbone(base, _device(base))
    folder = cache_dir(results_dir)
    models = {m: build_model(dataclasses.replace(base, prompt_mode=m), bb.unet.device, bb)
              for m in ("fixed", "category", "null")}  # fmt: skip
    caches = {m: FeatureCache(mod, folder) for m, mod in models.items()}
    ds = build_dataset(base.source, source_split(base), resolve_data_root(base.data_root),
                       transform=Compose([Resize(base.train_size), ToFloat()]) if base.train_size else None)  # fmt: skip
    idx = [i for i in indices if i < len(ds)]
    ref = caches["fixed"].get(ds, idx)
    others = {f"scene prompt {i + 1} of the pool": caches["fixed"].get(ds, idx, p)
              for i, p in enumerate(prompt_pool(dataclasses.replace(
                  base, prompt_mode="random_consistency"))[:4])}  # fmt: skip
    others["category tokens only"] = caches["category"].get(ds, idx)
    others["empty prompt"] = caches["null"].get(ds, idx)
    rows = {}
    for name, f in others.items():
        rows[name] = {k: float(((f[k] - ref[k]).flatten(1).norm(dim=1)
                                / ref[k].flatten(1).norm(dim=1)).mean()) for k in sorted(ref)}  # fmt: skip
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("context vs the fixed prompt")


def ablation_plot(summary: pd.DataFrame, column: str = "target mean"):
    """Return a bar plot of ``column``'s mean ± std over seeds per grid cell."""
    import matplotlib.pyplot as plt

    labels = [f"{g}: {s}" for g, s in summary.index]
    m, s = summary[f"{column} mean"].to_numpy(), summary[f"{column} std"].fillna(0).to_numpy()
    groups = [g for g, _ in summary.index]
    colours = {g: f"C{i}" for i, g in enumerate(dict.fromkeys(groups))}
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(labels)), 3.6))
    ax.bar(range(len(m)), m, yerr=s, capsize=3, color=[colours[g] for g in groups])
    ax.set_xticks(range(len(m)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(f"mIoU (%), {column}")
    lo = max(0.0, float(np.nanmin(m - s)) - 2)
    ax.set_ylim(lo, float(np.nanmax(m + s)) + 1)
    ax.set_title("prompt ablation (mean ± std over seeds)")
    fig.tight_layout()
    return fig


def with_overrides(cfg: TrainConfig, **over: Any) -> TrainConfig:
    """Return a copy of ``cfg`` with fields replaced (a thin alias for notebooks)."""
    return dataclasses.replace(cfg, **over)


def describe_features(trainer: Trainer) -> dict:
    """Return a JSON-able summary of the run: backbone, prompts and trainable parameters."""
    m = trainer.model
    n_train = sum(p.numel() for g in trainer.opt.param_groups for p in g["params"])
    return {"backbone": m.backbone.describe(), "prompt_mode": trainer.cfg.prompt_mode,
            "context_tokens": m.prompts.num_tokens, "prompt_pool": trainer.pool,
            "trainable_parameters": int(n_train), "config_hash": trainer.hash,
            "device": str(trainer.device), "processes": trainer.acc.num_processes,
            "torch_threads": torch.get_num_threads()}  # fmt: skip
