"""Notebook 07: the TTA budget study, mIoU against TTA steps, learning rates and objectives,
with how far the learned prompt moves."""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from diffprompt.dg.config import TrainConfig
from diffprompt.dg.runs import DGModel
from diffprompt.experiments.tta import check_targets
from diffprompt.parameters import config_of
from diffprompt.tta import PromptTTA, TargetScorer, TTAConfig, target_sets


def budget_configs(params: Mapping[str, Any]) -> dict[str, TTAConfig]:
    """Return {target: TTAConfig} of notebook 07's ``targets`` (its other parameters named
    like TTAConfig fields set them; the learning rate and seed are set per curve)."""
    return {t: config_of(TTAConfig, params, target=t) for t in params["targets"]}


def check_budget(
    name: str,
    cfgs: Mapping[str, TTAConfig],
    objectives: Sequence[str],
    dg_cfg: TrainConfig,
    results_dir=None,
) -> None:
    """Check the budget study before any work: its targets as :func:`check_targets` does,
    and ``name``, which names its files (letters, digits and underscores only)."""
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise ValueError(
            f"name {name!r} names the study's files: use letters, digits and underscores "
            "only (e.g. 'tta_budget_short')"
        )
    check_targets(cfgs, objectives, ("offline",), dg_cfg, results_dir=results_dir)


# ---------------------------------------------------------------------------------------
# The TTA budget: mIoU against steps, learning rates and objectives
# ---------------------------------------------------------------------------------------


def budget_study(
    dgs: Mapping[int, DGModel],
    cfgs: Mapping[str, TTAConfig],
    objectives: Sequence[str],
    lrs: Sequence[float],
    points: Sequence[int] = (),
    log: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Return the curves of offline prompt TTA, each run ``cfg.steps`` steps and evaluated
    every ``cfg.eval_every`` steps and at the steps of ``points`` (e.g. the short budgets
    below ``eval_every``) on ``cfg.eval_images`` labeled images: one row per (target,
    objective, lr, seed, step) with the mIoU, its change from step 0 (the DG model), the
    losses and the prompt's movement (relative change, nearest words). ``dgs``: {seed: the
    DG model of that seed}; TTA's own seed (batches, noise) is the same seed."""
    rows = []
    for target, base in cfgs.items():
        for seed, dg in dgs.items():
            sets = target_sets(base, dg.root, dg.cfg.target_split, dg.transform)
            scorer = TargetScorer(dg.model.backbone, base, dg.cache)
            fit_idx, eval_idx = list(range(sets.n_fit)), list(range(sets.n_eval))
            ev = sets.evaluation
            start = scorer.miou(scorer.evaluate(dg.model, ev, eval_idx, fixed=True), ev)
            for lr in lrs:
                cfg = dataclasses.replace(base, lr=float(lr), seed=int(seed))
                tta = PromptTTA(dg.model, cfg, scorer, log=lambda m: None)
                for objective in objectives:
                    t0 = time.time()
                    fit = (objective, sets.fit, fit_idx, ev, eval_idx)
                    _, curve = tta.fit_offline(*fit, start, points)
                    for c in curve:
                        rows.append(
                            {
                                "target": target,
                                "objective": objective,
                                "lr": float(lr),
                                "seed": int(seed),
                                **c,
                                "change": c["mIoU"] - start,
                                "images": len(eval_idx),
                            }
                        )
                    log(
                        f"budget {target} {objective} lr {lr:g} seed {seed}: "
                        f"{start:.2f} -> {curve[-1]['mIoU']:.2f} mIoU in {cfg.steps} steps "
                        f"({time.time() - t0:.0f}s)"
                    )
    return pd.DataFrame(rows)


def budget_table(curves: pd.DataFrame) -> pd.DataFrame:
    """Return the budget study per (target, objective, lr, step): the change of mIoU from
    no adaptation and the prompt's relative change, mean and std over seeds, the seeds'
    count, and the nearest words of the first seed."""
    keys = ["target", "objective", "lr", "step"]
    g = curves.groupby(keys, sort=False)
    out = pd.DataFrame(
        {
            "mIoU": g["mIoU"].mean(),
            "change mean": g["change"].mean(),
            "change std": g["change"].std(ddof=1),
            "relative change": g["relative change"].mean(),
            "seeds": g.size(),
            "nearest (first seed)": g["nearest"].first(),
        }
    )
    return out


def best_budget(curves: pd.DataFrame, max_steps: int | None = None) -> dict[str, Any] | None:
    """Return the (objective, lr, steps) whose mean change of mIoU over targets and seeds is
    largest among budgets of at most ``max_steps`` steps (None: any), with that change:
    {"objective", "lr", "steps", "change"}; None when no evaluated budget is that short."""
    df = curves[curves["step"] > 0]
    if max_steps is not None:
        df = df[df["step"] <= max_steps]
    if df.empty and max_steps is not None:
        return None  # no evaluated budget that short (e.g. the table's 6 steps, curves every 50)
    if df.empty:
        raise ValueError("no TTA budget to choose from: run the study with steps >= its every")
    means = df.groupby(["objective", "lr", "step"])["change"].mean()
    objective, lr, step = means.idxmax()
    return {
        "objective": objective,
        "lr": float(lr),
        "steps": int(step),
        "change": float(means.max()),
    }
