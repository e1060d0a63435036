"""Domain-generalization training with scene prompts and prompt randomization.

A segmentation head (Semantic FPN) is trained on the source domain only, on the features
of a frozen diffusion UNet conditioned on ``[category tokens ; scene tokens]``; each step
the scene prompt takes K values and the loss adds the disagreement of the K predictions.
One module per step, each readable top to bottom:

- :mod:`~diffprompt.dg.config`: TrainConfig, the prompt modes, presets, hash, checks and
  the command line's KEY=VALUE overrides;
- :mod:`~diffprompt.dg.data`: the source split, the evaluation sets, their transform and
  the checks before training;
- :mod:`~diffprompt.dg.sampling`: each step's images, flips, crops and scene prompts, as
  functions of (seed, step);
- :mod:`~diffprompt.dg.losses`: cross-entropy over K prompts + consistency; the entropy;
- :mod:`~diffprompt.dg.trainer`: the loop (:class:`Trainer`);
- :mod:`~diffprompt.dg.checkpoint`: save, read, and :func:`load_dg_model` (a trained model
  from a checkpoint, without a Trainer);
- :mod:`~diffprompt.dg.runs`: one run folder per configuration, trained once and reused
  (:func:`train_dg`);
- ``python -m diffprompt.dg``: the command line.
"""

from diffprompt.dg.checkpoint import (
    CheckpointError,
    ConfigMismatchError,
    load_dg_model,
    read_checkpoint,
)
from diffprompt.dg.config import (
    PRESETS,
    PROMPT_MODES,
    PresetChoice,
    TrainConfig,
    check_config,
    config_dict,
    config_hash,
    with_preset,
)
from diffprompt.dg.runs import dg_run_dir, launch, train_dg
from diffprompt.dg.trainer import Trainer

__all__ = [
    "PRESETS",
    "PROMPT_MODES",
    "CheckpointError",
    "ConfigMismatchError",
    "PresetChoice",
    "TrainConfig",
    "Trainer",
    "check_config",
    "config_dict",
    "config_hash",
    "dg_run_dir",
    "launch",
    "load_dg_model",
    "read_checkpoint",
    "train_dg",
    "with_preset",
]
