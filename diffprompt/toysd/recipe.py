"""The embedded model's recipe: what is trained, on what, towards what objective.

:mod:`diffprompt.toysd.pretrain` pretrains the embedded model in two stages; this module
holds the pieces those stages are made of, so that a reader finds the model itself in one
place and the training machinery (stages, checkpoints, resume, command line) in the other:

- :class:`~diffprompt.toysd.config.ToySDConfig`: the architecture and every
  hyper-parameter of the recipe (in :mod:`diffprompt.toysd.config`, which
  :mod:`diffprompt.toysd.options` reads too);
- the data: the *training* splits of every miniature data set with their captions
  (:func:`training_images`), a few held-out images (:func:`heldout_set`) and the
  tokenizer's words (:func:`vocabulary_words`);
- the components, freshly initialised (:func:`build_components`): ``AutoencoderKL`` +
  ``UNet2DConditionModel`` + ``CLIPTextModel`` + a DDPM scheduler, and the optimizer's
  parameter groups (:func:`param_groups`);
- the objective: the standard noise-prediction loss (:func:`denoising_loss`), and the
  same loss with the caption and with "" under the same noise (:func:`paired_losses`,
  :func:`text_usage`), which measures whether the model uses its text.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from diffprompt.backbones.tokenizer import caption_words
from diffprompt.data import build_dataset
from diffprompt.labels import CLASSES, NUM_CLASSES
from diffprompt.prompts import prompt_corpus
from diffprompt.text import tokenize
from diffprompt.toysd.config import ToySDConfig
from diffprompt.toysd.options import (
    cross_attention_qk,
    padding_mask,
    padding_masked,
    scale_qk,
    unet_options,
    zero_text_embedding,
)

if TYPE_CHECKING:  # annotations only: diffusers is imported where the components are built
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, PreTrainedTokenizerBase

#: Data sets and splits the model is pretrained on (training splits only; SYNTHIA has one
#: split, "all", and is only ever a source domain).
PRETRAIN_SPLITS: dict[str, str] = {
    "gta5": "train",
    "synthia": "all",
    "cityscapes": "train",
    "bdd100k": "train",
    "mapillary": "train",
    "acdc_fog": "train",
    "acdc_night": "train",
    "acdc_rain": "train",
    "acdc_snow": "train",
    "darkzurich": "train",
}

#: Held-out images the UNet stage measures text usage on: the first images of these
#: evaluation splits (never trained on).
HELDOUT_SPLITS: dict[str, str] = {
    "gta5": "val",
    "cityscapes": "val",
    "acdc_night": "val",
    "acdc_fog": "val",
}


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------


def training_images(
    root: str | os.PathLike, cfg: ToySDConfig, splits: dict[str, str] | None = None
) -> tuple[torch.Tensor, list[str], list[str]]:
    """Return (images (N, 3, H, W) uint8, captions, data set names) of the pretraining set.

    ``splits`` (default :data:`PRETRAIN_SPLITS`) maps data set names to splits; at most
    ``cfg.max_images`` per data set (0: all); images are resized to ``cfg.height x
    cfg.width`` when they differ.
    """
    size = (cfg.height, cfg.width)
    imgs, caps, names = [], [], []
    for name, split in (splits or PRETRAIN_SPLITS).items():
        ds = build_dataset(name, split, root)
        n = len(ds) if not cfg.max_images else min(cfg.max_images, len(ds))
        for i in range(n):
            s = ds[i]
            x = s["image"]
            if tuple(x.shape[-2:]) != size:
                x = F.interpolate(x[None], size=size, mode="bilinear", antialias=True)[0]
            imgs.append((x * 255).round().clamp(0, 255).to(torch.uint8))
            caps.append(s["meta"]["caption"])
            names.append(name)
    if not imgs:
        raise ValueError(f"no training images found under {root}")
    return torch.stack(imgs), caps, names


def heldout_set(
    root: str | os.PathLike, cfg: ToySDConfig, per_domain: int = 4
) -> tuple[torch.Tensor, list[str]]:
    """Return (images (N, 3, H, W) uint8, captions) of held-out images: the first
    ``per_domain`` images of each split of :data:`HELDOUT_SPLITS`."""
    c = ToySDConfig(**{**asdict(cfg), "max_images": per_domain})
    imgs, caps, _ = training_images(root, c, HELDOUT_SPLITS)
    return imgs, caps


def vocabulary_words(captions: Sequence[str]) -> list[str]:
    """Return the tokenizer's whole words, sorted: caption words + every word prompts can
    use."""
    return caption_words(list(captions) + prompt_corpus(CLASSES))


def training_shares(root: str | os.PathLike, cfg: ToySDConfig) -> torch.Tensor:
    """Return each class's share of every latent cell, (N, 19, H/f, W/f) uint8 (255 = the
    whole cell), of the images :func:`training_images` returns, in the same order (f: the
    VAE factor; ignored pixels count for no class, and an unlabeled image's shares are all
    zero). Crop captions are read from them."""
    size = (cfg.height // cfg.vae_factor, cfg.width // cfg.vae_factor)
    out = []
    for name, split in PRETRAIN_SPLITS.items():
        ds = build_dataset(name, split, root)
        n = len(ds) if not cfg.max_images else min(cfg.max_images, len(ds))
        for i in range(n):
            s = ds[i]
            if "mask" not in s:  # unlabeled (Dark Zurich train): no class is named
                out.append(torch.zeros((NUM_CLASSES, *size)))
                continue
            y = s["mask"]
            hot = F.one_hot(y.clamp(0, NUM_CLASSES), NUM_CLASSES + 1)[..., :NUM_CLASSES]
            hot = hot.permute(2, 0, 1).float()[None]
            out.append(F.interpolate(hot, size=size, mode="area")[0])
    return (torch.stack(out) * 255).round().to(torch.uint8)


# ---------------------------------------------------------------------------------------
# Components
# ---------------------------------------------------------------------------------------


def build_components(cfg: ToySDConfig, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """Return freshly initialised {vae, unet, text_encoder, scheduler} for ``cfg`` (seeded by
    ``cfg.seed``)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(cfg.seed)
    n = len(cfg.vae_channels)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.vae_channels),
        layers_per_block=1,
        latent_channels=cfg.latent_channels,
        norm_num_groups=16,
        sample_size=cfg.height,
        scaling_factor=1.0,  # measured after the VAE is trained
    )
    m = len(cfg.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=(cfg.height // cfg.vae_factor, cfg.width // cfg.vae_factor),
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        block_out_channels=tuple(cfg.unet_channels),
        down_block_types=("CrossAttnDownBlock2D",) * (m - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (m - 1),
        layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cfg.text_width,
        attention_head_dim=tuple(cfg.attention_heads),  # diffusers' legacy name: head count
        only_cross_attention=tuple(cfg.only_cross_attention),
        norm_num_groups=32,
        **unet_options(cfg),
    )
    zero_text_embedding(unet)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.text_width,
            intermediate_size=4 * cfg.text_width,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=cfg.text_heads,
            max_position_embeddings=cfg.max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scale_qk(unet, cfg)
    scheduler = DDPMScheduler(
        num_train_timesteps=cfg.timesteps,
        beta_start=0.00085,  # SD's scaled-linear betas
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        steps_offset=1,
    )
    return {"vae": vae, "unet": unet, "text_encoder": text, "scheduler": scheduler}


def param_groups(
    unet: UNet2DConditionModel, text: CLIPTextModel, cfg: ToySDConfig
) -> list[dict[str, Any]]:
    """Return the optimizer's parameter groups: the UNet (cross-attention query/key at
    ``qk_lr_mult`` times the UNet's rate) and, when trained, the text encoder."""
    qk = {id(p) for p in cross_attention_qk(unet)}
    unet_params = list(unet.parameters())
    others = [p for p in unet_params if id(p) not in qk]
    groups = [{"params": others, "lr": cfg.unet_lr}]
    if qk:
        qk_params = [p for p in unet_params if id(p) in qk]
        groups.append({"params": qk_params, "lr": cfg.unet_lr * cfg.qk_lr_mult})
    if cfg.train_text_encoder:
        groups.append({"params": list(text.parameters()), "lr": cfg.text_lr})
    return groups


def count_parameters(components: dict[str, Any]) -> dict[str, int]:
    """Return the parameter count of each model component (the scheduler has none)."""
    modules = {k: v for k, v in components.items() if isinstance(v, torch.nn.Module)}
    return {k: sum(p.numel() for p in m.parameters()) for k, m in modules.items()}


# ---------------------------------------------------------------------------------------
# Objective
# ---------------------------------------------------------------------------------------


def denoising_loss(
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    scheduler: DDPMScheduler,
    latents: torch.Tensor,
    ids: torch.Tensor,
    g: torch.Generator,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return the per-sample noise-prediction MSE (B,) of latents (B, C, h, w) under caption
    ids (B, L); timesteps ``t`` (B,) and ``noise`` (B, C, h, w) are drawn from ``g`` when not
    given; ``mask`` (B, L) bool: the tokens cross-attention reads (None: all)."""
    b = latents.shape[0]
    dev = latents.device
    if t is None:
        t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=g)
    if noise is None:
        noise = torch.randn(latents.shape, generator=g)
    t, noise = t.to(dev), noise.to(dev)
    noisy = scheduler.add_noise(latents, noise, t)
    ctx = text_encoder(ids).last_hidden_state
    with padding_masked(unet, None if mask is None else mask.to(dev)):
        pred = unet(noisy, t, ctx).sample
    return F.mse_loss(pred.float(), noise.float(), reduction="none").mean((1, 2, 3))


@torch.no_grad()
def paired_losses(
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    scheduler: DDPMScheduler,
    tokenizer: PreTrainedTokenizerBase,
    latents: torch.Tensor,
    captions: Sequence[str],
    g: torch.Generator,
    repeats: int = 4,
    timesteps: Sequence[int] | None = None,
    mask_padding: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return per-sample denoising losses (repeats * N,) of latents (N, C, h, w) with their
    caption and with "", under the same noise and timesteps (drawn from ``g`` unless
    ``timesteps``, which are cycled over the N latents); ``mask_padding``: cross-attention
    reads BOS..EOS only (:func:`padding_mask`), as a model trained so does."""
    dev = latents.device
    n = len(captions)
    caption_ids = tokenize(tokenizer, captions).to(dev)
    empty_ids = tokenize(tokenizer, [""] * n).to(dev)
    models = (unet, text_encoder, scheduler)
    eos = tokenizer.eos_token_id
    caption_mask = padding_mask(caption_ids, eos) if mask_padding else None
    empty_mask = padding_mask(empty_ids, eos) if mask_padding else None
    caption_losses, empty_losses = [], []
    for _ in range(repeats):
        if timesteps:
            t = torch.tensor(list(timesteps)).repeat(n)[:n]
        else:
            t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=g)
        noise = torch.randn(latents.shape, generator=g)
        caption_losses.append(
            denoising_loss(*models, latents, caption_ids, g, t, noise, caption_mask)
        )
        empty_losses.append(denoising_loss(*models, latents, empty_ids, g, t, noise, empty_mask))
    return torch.cat(caption_losses), torch.cat(empty_losses)


def text_usage(
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    scheduler: DDPMScheduler,
    tokenizer: PreTrainedTokenizerBase,
    latents: torch.Tensor,
    captions: Sequence[str],
    seed: int = 0,
    repeats: int = 4,
    timesteps: Sequence[int] | None = None,
    mask_padding: bool = False,
) -> dict[str, float]:
    """Return the mean denoising loss of held-out latents with their caption and with "":
    {caption_loss, empty_loss, gap = empty - caption, relative_gap = gap / empty}.

    The same noise and timesteps are used for both, so the difference measures how much
    the caption helps the UNet predict the noise.
    """
    g = torch.Generator().manual_seed(seed)
    models = (unet, text_encoder, scheduler, tokenizer)
    with_caption, with_empty = paired_losses(
        *models, latents, captions, g, repeats, timesteps, mask_padding
    )
    caption_loss, empty_loss = with_caption.mean().item(), with_empty.mean().item()
    gap = empty_loss - caption_loss
    return {
        "caption_loss": caption_loss,
        "empty_loss": empty_loss,
        "gap": gap,
        "relative_gap": gap / empty_loss,
    }
