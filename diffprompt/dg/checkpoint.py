"""DG checkpoints: what a run saves, how it is read back, and a trained model from one.

A checkpoint (``<run folder>/checkpoint.pt``, written atomically) holds the configuration
and its hash, the run's state (step, log, seconds), the state dicts of what training
changes (head, prompts, a fine-tuned UNet), the optimizer and scheduler states and the
torch RNG state, so that a resumed run continues exactly. Files are read with
``weights_only=True``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffprompt.build import build_model
from diffprompt.dg.config import TrainConfig, changed_fields, config_hash
from diffprompt.io import atomic_path
from diffprompt.model import SegModel

CHECKPOINT = "checkpoint.pt"


class ConfigMismatchError(ValueError):
    """A checkpoint was written by a run with another configuration."""


class CheckpointError(ValueError):
    """A checkpoint file cannot be read or is not a DG checkpoint."""


def trainable_state(model: SegModel, finetune_unet: bool = False) -> dict[str, dict]:
    """Return the state dicts of what DG training changes: head, prompts (adapter, learnable
    scene prompt) and, when fine-tuned, the UNet."""
    out = {"head": model.head.state_dict(), "prompts": model.prompts.state_dict()}
    if finetune_unet:
        out["unet"] = model.backbone.unet.state_dict()
    return out


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically and remove temporary files that a killed
    save left beside it. Returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    return path


def read_checkpoint(path: str | os.PathLike, cfg: TrainConfig | None = None) -> dict:
    """Return a checkpoint's contents (read with ``weights_only=True``). With ``cfg``, a
    checkpoint written under another configuration raises :class:`ConfigMismatchError`
    naming the fields that differ; a file that is not a readable DG checkpoint raises
    :class:`CheckpointError`."""
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or pickled objects beyond tensors
        first_line = str(e).splitlines()[0]
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {first_line}); "
            "it is truncated or not a diffprompt DG checkpoint: delete it (the run then starts "
            "over) or pass another file"
        ) from None
    if not isinstance(d, dict) or not {"config_hash", "model", "state"} <= set(d):
        raise CheckpointError(
            f"{path} is not a diffprompt DG checkpoint (it lacks config_hash, model and "
            "state); pass a checkpoint.pt written by a DG run"
        )
    if cfg is not None and d.get("config_hash") != config_hash(cfg):
        diff = changed_fields(cfg, json.loads(d.get("config", "{}")))
        raise ConfigMismatchError(
            f"checkpoint {path} was written by a run with another configuration (fields "
            f"{diff or 'unknown'} differ); delete it or use another output folder to start over"
        )
    return d


def load_trainable(model: SegModel, state: dict[str, dict], path, cfg: TrainConfig) -> None:
    """Load a checkpoint's trainable state (:func:`trainable_state`) into ``model``; a state
    of other shapes (the model folder changed under the same name) raises
    :class:`ConfigMismatchError` naming the first size mismatch."""
    try:
        model.head.load_state_dict(state["head"])
        model.prompts.load_state_dict(state["prompts"])
        if "unet" in state:
            model.backbone.unet.load_state_dict(state["unet"])
    except RuntimeError as e:
        lines = str(e).splitlines()
        first = next((ln.strip() for ln in lines if "size mismatch" in ln), lines[0])
        raise ConfigMismatchError(
            f"checkpoint {path} does not fit this model ({first}); it was written for a "
            f"model of other shapes (did the folder of model={cfg.model!r} change?): "
            "delete it or use another output folder to start over"
        ) from None


def checkpoint_step(d: dict) -> int:
    """Return the step a checkpoint's run had reached."""
    return int(json.loads(d["state"])["step"])


def load_dg_model(
    cfg: TrainConfig,
    path: str | os.PathLike,
    device: torch.device | str = "cpu",
    backbone: nn.Module | None = None,
) -> SegModel:
    """Return the trained SegModel of a finished DG run (in eval mode) from its checkpoint,
    without a Trainer: the model of ``cfg`` is built (:func:`diffprompt.build.build_model`,
    reusing ``backbone`` when given) and the checkpoint's head and prompts loaded into it.

    The checkpoint must have been written under ``cfg`` (else ConfigMismatchError names the
    fields that differ), fit the model's shapes (else ConfigMismatchError names the first
    mismatch) and have reached ``cfg.steps`` (else a ValueError says to finish the run
    first)."""
    d = read_checkpoint(path, cfg)
    model = build_model(cfg, device, backbone)
    load_trainable(model, d["model"], path, cfg)
    step = checkpoint_step(d)
    if step < cfg.steps:
        raise ValueError(
            f"checkpoint {path} stopped at step {step} of {cfg.steps}: finish the run first "
            "(notebook 02)"
        )
    return model.eval()
