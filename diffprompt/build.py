"""Builders: a configuration in, a frozen backbone or a whole SegModel out (SAM-style).

>>> model = build_model(TrainConfig(prompt_mode="fixed"), "cpu")   # backbone + prompts + head

``cfg`` is a :class:`diffprompt.dg.config.TrainConfig` (any object with its fields works).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from diffprompt.backbones.diffusion import DiffusionBackbone, FeatureConfig
from diffprompt.heads import SemanticFPN
from diffprompt.labels import CLASSES, NUM_CLASSES
from diffprompt.model import SegModel
from diffprompt.prompts import PromptConfig, Prompts

if TYPE_CHECKING:  # dg.config sits above this module (the trainer imports the builders)
    from diffprompt.dg.config import TrainConfig


def prompt_config(cfg: TrainConfig, learnable_scene: bool = False) -> PromptConfig:
    """Return the PromptConfig of a run's prompt mode: the empty prompt ("null"), the
    category tokens alone ("category"), a caption alone ("caption_only": tokens "text"), or
    category tokens and a scene prompt or caption (every other mode); ``learnable_scene``
    makes the scene prompt's words learnable (TTA)."""
    tokens = {"null": "null", "category": "category", "caption_only": "text"}.get(
        cfg.prompt_mode, "scene"
    )
    return PromptConfig(
        tokens=tokens,
        scene_text=cfg.scene_text,
        num_templates=cfg.num_templates,
        pooling=cfg.pooling,
        adapter=cfg.adapter,
        learnable_scene=learnable_scene,
    )


def build_backbone(cfg: TrainConfig, device: torch.device | str = "cpu") -> DiffusionBackbone:
    """Return the frozen DiffusionBackbone of a config on ``device``."""
    features = FeatureConfig(
        blocks=cfg.blocks,
        timesteps=cfg.timesteps,
        noise=cfg.noise,
        scale_latents=cfg.scale_latents,
        attention_tokens=NUM_CLASSES if cfg.attention_maps else 0,
        seed=cfg.seed,
    )
    return DiffusionBackbone.from_pretrained(cfg.model, features, dtype=cfg.dtype, device=device)


def build_model(
    cfg: TrainConfig,
    device: torch.device | str = "cpu",
    backbone: DiffusionBackbone | None = None,
    learnable_scene: bool = False,
) -> SegModel:
    """Return the SegModel (backbone + prompts + head) of a config on ``device``; the head's
    and the adapter's initial weights are seeded by ``cfg.seed``.

    Pass ``backbone`` to reuse a loaded one (its feature config must match ``cfg``).
    """
    bb = backbone if backbone is not None else build_backbone(cfg, device)
    torch.manual_seed(cfg.seed)  # the adapter's and the head's initial weights
    prompts = Prompts(bb.text_encoder, bb.tokenizer, CLASSES, prompt_config(cfg, learnable_scene))
    if cfg.attention_maps and prompts.num_category_tokens == 0:
        raise ValueError(
            "attention_maps needs category tokens: use a prompt_mode other than 'null'"
        )
    head = SemanticFPN(
        bb.feature_channels,
        bb.feature_strides,
        NUM_CLASSES,
        cfg.fpn_width,
        cfg.head_width,
        cfg.dropout,
    )
    model = SegModel(bb, head, prompts, finetune_backbone=cfg.finetune_unet)
    return model.to(device)
