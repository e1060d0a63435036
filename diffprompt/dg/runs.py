"""DG runs on disk: one folder per configuration, trained once and reused.

Run folders live under ``<results>/runs/dg/<source>-<prompt mode>-<config hash>/``
(checkpoint and config.json); a run whose checkpoint has reached its last step is loaded,
not retrained: :func:`dg_model` returns the trained model of a configuration (what
test-time adaptation starts from). Frozen features are cached under
``<results>/runs/cache/``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import notebook_launcher

from diffprompt.cache import FeatureCache
from diffprompt.data.roots import resolve_data_root
from diffprompt.dg.checkpoint import CHECKPOINT, load_dg_model, read_checkpoint
from diffprompt.dg.config import TrainConfig, config_dict, config_hash
from diffprompt.dg.data import image_transform
from diffprompt.dg.trainer import Trainer
from diffprompt.io import atomic_write_text
from diffprompt.model import SegModel
from diffprompt.paths import cache_dir, runs_root
from diffprompt.preflight import check_writable
from diffprompt.runtime import resolve_device


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


@dataclass
class DGModel:
    """A trained DG model and what TTA needs of its run."""

    model: SegModel
    cfg: TrainConfig
    root: Path  # the data root
    cache: FeatureCache | None  # the run's feature cache (its VAE latents are reused)
    transform: Any  # what the run's evaluation images get
    step: int  # the step its checkpoint reached
    log: list = dataclasses.field(default_factory=list)  # its training log (the curve)

    @property
    def hash(self) -> str:
        return config_hash(self.cfg)


def dg_model(
    cfg: TrainConfig,
    results_dir=None,
    missing: str = "train",
    checkpoint: str = "",
    log: Callable[[str], None] = print,
) -> DGModel:
    """Return the trained DG model TTA starts from.

    ``checkpoint``: a checkpoint file to load (its configuration must equal ``cfg``, else a
    ConfigMismatchError names the fields that differ). Otherwise the finished run of
    ``cfg`` in results/runs/dg is loaded; when there is none, ``missing="train"`` trains it
    first (notebook 02's recipe) and ``missing="error"`` raises FileNotFoundError.
    """
    if missing not in ("train", "error"):
        raise ValueError(f"missing must be 'train' or 'error', got {missing!r}")
    root = resolve_data_root(cfg.data_root)
    transform = image_transform(cfg, for_eval=True)
    path = Path(checkpoint) if checkpoint else dg_run_dir(cfg, results_dir) / CHECKPOINT
    if not path.is_file() and (checkpoint or missing == "error"):
        raise FileNotFoundError(
            f"no trained DG model for this configuration at {path}: run notebook 02 with the "
            "same parameters, or pass missing='train'"
        )
    if not path.is_file():
        trainer = train_dg(cfg, results_dir, log=log)
        state = trainer.state
        return DGModel(trainer.model, cfg, root, trainer.cache, transform, state.step, state.log)
    model = load_dg_model(cfg, path, resolve_device(cfg.device))
    state = json.loads(read_checkpoint(path)["state"])
    cache = None
    if cfg.cache_features:
        cache = FeatureCache(model, cache_dir(results_dir))
    return DGModel(model, cfg, root, cache, transform, state["step"], state["log"])


def dg_models(
    cfg: TrainConfig,
    seeds: Sequence[int],
    results_dir=None,
    missing: str = "train",
    checkpoint: str = "",
    log: Callable[[str], None] = print,
) -> dict[int, DGModel]:
    """Return {seed: :func:`dg_model` of ``cfg`` at that seed} (``checkpoint``: one file,
    only with a single seed)."""
    if checkpoint and len(seeds) != 1:
        raise ValueError(
            "dg_checkpoint is one DG model: pass it with a single seed (-y 'seeds: [0]')"
        )
    return {
        int(s): dg_model(
            dataclasses.replace(cfg, seed=int(s)), results_dir, missing, checkpoint, log
        )
        for s in seeds
    }
