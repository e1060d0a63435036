"""Three variants of the embedded UNet for the backbone study on the miniature.

The paper compares diffusion features with supervised and self-supervised backbones. On
real data that is SD against ResNet, ConvNeXt, Swin, DINOv2 and CLIP
(``diffprompt.backbones.comparators``). On the miniature there are no such pretrained
networks, so the study compares three variants of the *same* architecture, which isolates
what the pretraining objective contributes:

- ``"pretrained"``: the embedded model's UNet, pretrained by denoising (``toy-sd``);
- ``"supervised"``: the same UNet architecture trained from random weights with a linear
  head on the source's labels (:func:`diffprompt.supervised.train_supervised`);
- ``"random"``: the same UNet architecture with random weights.

All three share the pretrained VAE and text encoder and return the same feature maps.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from diffprompt.backbones.diffusion import DiffusionBackbone

VARIANTS = ("pretrained", "supervised", "random")


def _with_unet(bb: DiffusionBackbone, unet: nn.Module, how: str) -> DiffusionBackbone:
    """Return a backbone with ``bb``'s VAE, text encoder, tokenizer, scheduler and a copy of
    its feature config around another ``unet``; its origin is ``bb``'s followed by ``how``."""
    cfg = copy.deepcopy(bb.cfg)
    origin = f"{bb.origin} ({how})"
    return DiffusionBackbone(
        bb.vae, unet, bb.text_encoder, bb.tokenizer, bb.scheduler, cfg, origin=origin
    )


def random_unet(bb: DiffusionBackbone, seed: int = 0) -> DiffusionBackbone:
    """Return a backbone sharing ``bb``'s VAE and text encoder whose UNet has the same
    architecture but freshly initialised (random) weights."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(bb.unet.config).to(bb.unet.device, bb.unet.dtype)
    return _with_unet(bb, unet, "random UNet")


def save_unet(bb: DiffusionBackbone, folder: str | Path) -> Path:
    """Write the backbone's UNet in diffusers format (to rebuild a variant later); return the
    folder."""
    bb.unet.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def load_variant(
    bb: DiffusionBackbone, name: str, unet_folder: str | Path | None = None, seed: int = 0
) -> DiffusionBackbone:
    """Return the ``name`` variant of the pretrained backbone ``bb`` (see module docstring).

    ``"supervised"`` needs ``unet_folder``, written by :func:`save_unet` after
    :func:`diffprompt.supervised.train_supervised`.
    """
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose one of {VARIANTS}")
    if name == "pretrained":
        return bb
    if name == "random":
        return random_unet(bb, seed)
    if unet_folder is None or not (Path(unet_folder) / "config.json").is_file():
        raise FileNotFoundError(
            f"the supervised variant needs a UNet folder written by save_unet after "
            f"train_supervised; none at {unet_folder!r}"
        )
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(
        unet_folder, local_files_only=True, use_safetensors=True
    )
    unet.to(bb.unet.device, bb.unet.dtype)
    return _with_unet(bb, unet, "UNet supervised")
