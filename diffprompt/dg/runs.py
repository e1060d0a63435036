"""DG runs on disk: one folder per configuration, trained once and reused.

Run folders live under ``<results>/runs/dg/<source>-<prompt mode>-<config hash>/``
(checkpoint and config.json); a run whose checkpoint has reached its last step is loaded,
not retrained (test-time adaptation finds the DG model of a configuration there). Frozen
features are cached under ``<results>/runs/cache/``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from accelerate import notebook_launcher

from diffprompt.dg.checkpoint import CHECKPOINT
from diffprompt.dg.config import TrainConfig, config_dict, config_hash
from diffprompt.dg.trainer import Trainer
from diffprompt.io import atomic_write_text
from diffprompt.paths import cache_dir, runs_root
from diffprompt.preflight import check_writable


def dg_run_dir(cfg: TrainConfig, results_dir: str | os.PathLike | None = None) -> Path:
    """Return the run folder of a DG configuration (named by its configuration hash)."""
    return runs_root(results_dir) / "dg" / f"{cfg.source}-{cfg.prompt_mode}-{config_hash(cfg)}"


def train_dg(
    cfg: TrainConfig,
    results_dir: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
    backbone=None,
    retrain: bool = False,
    cache: bool = True,
) -> Trainer:
    """Return a Trainer whose model is trained as ``cfg`` says.

    A finished checkpoint of the same configuration in :func:`dg_run_dir` is loaded instead
    of training; an unfinished one is resumed; ``retrain=True`` starts over. ``cache``
    keeps frozen features on disk under :func:`diffprompt.paths.cache_dir` (else in memory
    only).
    """
    out = dg_run_dir(cfg, results_dir)
    check_writable(out, "run folder")
    features = cache_dir(results_dir) if cache else None
    trainer = Trainer(cfg, out, log=log, backbone=backbone, cache_dir=features)
    if retrain and (out / CHECKPOINT).is_file():
        (out / CHECKPOINT).unlink()
    trainer.load_checkpoint()  # an unreadable or mismatched checkpoint stops here
    atomic_write_text(out / "config.json", json.dumps(config_dict(cfg), indent=1) + "\n")
    state = trainer.fit()
    if state.step >= cfg.steps and state.log and trainer.acc.is_main_process:
        last = state.log[-1]
        log(
            f"trained {cfg.prompt_mode} to step {state.step}: loss {last['loss']:.4f} "
            f"({state.seconds:.0f}s of training)"
        )
    return trainer


def _train_in_process(cfg: TrainConfig, results_dir, cache: bool) -> None:
    train_dg(cfg, results_dir, cache=cache)


def launch(
    cfg: TrainConfig,
    num_processes: int,
    results_dir: str | os.PathLike | None = None,
    retrain: bool = False,
    cache: bool = True,
) -> Path:
    """Train ``cfg`` on ``num_processes`` processes with accelerate's notebook launcher (from
    a notebook or a script; GPUs when present, else gloo on the CPU) and return the run
    folder; :func:`train_dg` then loads the finished run. From a terminal, ``accelerate
    launch -m diffprompt.dg ...`` does the same."""
    out = dg_run_dir(cfg, results_dir)
    if retrain and (out / CHECKPOINT).is_file():
        (out / CHECKPOINT).unlink()
    notebook_launcher(
        _train_in_process,
        args=(cfg, results_dir, cache),
        num_processes=num_processes,
        mixed_precision=cfg.mixed_precision,
    )
    return out
