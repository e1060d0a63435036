"""The embedded model's configuration: :class:`ToySDConfig`, the architecture and every
hyper-parameter of its recipe, with what its fields may hold (:data:`PARTS`) and how a
recipe is recorded (:data:`OPTIONS`, :func:`recorded_recipe`).

:mod:`diffprompt.toysd.recipe` (what is trained) and :mod:`diffprompt.toysd.options` (what
the options of the next recipes are made of) both read it and it imports neither, so
neither of those two needs the other's configuration (no import circle, type hints
included).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

#: What the UNet stage can train alone (``ToySDConfig.train_parts``): the added pooled-text
#: path, the cross-attention layers' projections (query, key, value, output), their query
#: and key only, the whole UNet, the text encoder.
PARTS = ("text_embedding", "cross_attention", "cross_attention_qk", "unet", "text_encoder")


#: Recipe fields added after the shipped model was trained, with their neutral values: a
#: recipe records them only when it sets them otherwise (:func:`recorded_recipe`).
OPTIONS: dict[str, Any] = {
    "mask_padding": False,
    "text_embedding": False,
    "text_embedding_heads": 4,
    "crop_size": 0,
    "crop_share": 0.5,
    "crop_min_share": 0.02,
    "qk_init_scale": 1.0,
    "qk_lr_mult": 1.0,
    "init_from": "",
    "train_parts": [],
    "parts_steps": 0,
    "time_limit_min": 0.0,
    "ckpt_minutes": 0.0,
}


@dataclass
class ToySDConfig:
    """Architecture and pretraining recipe of the embedded model (a comment per default)."""

    data_root: str = "miniature"  # where the training images come from
    height: int = 128  # training resolution (the miniature's native size)
    width: int = 256
    # --- VAE
    vae_channels: tuple[int, ...] = (32, 64, 64)  # one entry per level: 3 levels = 4x down
    latent_channels: int = 4  # as SD
    vae_steps: int = 2000  # optimisation steps of the VAE
    vae_batch: int = 32
    vae_lr: float = 1e-3  # AdamW, cosine decay after warm-up
    kl_weight: float = 1e-6  # weight of the KL term (SD's VAE: 1e-6)
    # --- UNet
    unet_channels: tuple[int, ...] = (64, 128, 128)  # per level (latent 32x64 -> 8x16)
    attention_heads: tuple[int, ...] = (2, 4, 4)  # heads per level (head width 32)
    only_cross_attention: tuple[bool, ...] = (True, False, False)  # no self-attention at
    #                                   the finest level (2048 tokens): cross-attention only
    layers_per_block: int = 1
    # --- text encoder
    text_width: int = 128  # width of tokens = the UNet's cross_attention_dim
    text_layers: int = 4
    text_heads: int = 4
    max_length: int = 64  # tokenizer model_max_length (captions are <= ~45 tokens)
    train_text_encoder: bool = True  # jointly with the UNet (see diffprompt.toysd.pretrain)
    # --- UNet training
    unet_steps: int = 9000  # the learning-rate schedule is laid out for this many steps
    unet_stop: int = 8000  # end the UNet stage after this many steps (0 = unet_steps); the
    #                        bundled model stopped at 8000 when its GPU lease ran out
    unet_batch: int = 256
    unet_lr: float = 4e-4
    text_lr: float = 2e-4
    warmup: int = 300  # linear warm-up steps of each stage
    caption_dropout: float = 0.1  # probability of training on the empty caption
    timesteps: int = 1000  # DDPM steps, SD's scaled-linear betas
    # --- bookkeeping
    seed: int = 0
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU), "fp32", "bf16"
    log_every: int = 50  # log a loss line every this many steps
    eval_every: int = 500  # caption-vs-empty loss on held-out images every this many steps
    ckpt_every: int = 1000  # checkpoint (resumable) every this many steps
    max_images: int = 0  # cap on training images per data set (0 = all; tests use a few)
    # --- options of the next recipes (OPTIONS: recorded only when not neutral, so the
    #     shipped model's recipe and hash stay what they were; see docs/METHOD.md)
    mask_padding: bool = False  # cross-attention ignores the padding after EOS (training
    #                 and measures; a masked model is read with trimmed prompts, trim_scene)
    text_embedding: bool = False  # the pooled text (diffusers' "text" addition embedding:
    #                 attention pooling of the context) added to the timestep embedding, so
    #                 the scene description modulates every block; zero at init
    text_embedding_heads: int = 4  # heads of its attention pooling
    crop_size: int = 0  # >0: some batches are random crops (crop_size x 2*crop_size pixels)
    #                 captioned with the classes present in the crop (from the labels)
    crop_share: float = 0.5  # share of the UNet steps that train on such crops
    crop_min_share: float = 0.02  # a class is named in a crop's caption from this share on
    qk_init_scale: float = 1.0  # multiplies the cross-attention query/key weights at the
    #                 start (fresh or loaded); 1.0 = stock diffusers
    qk_lr_mult: float = 1.0  # learning-rate multiplier of the cross-attention query/key
    init_from: str = ""  # a toy model ("toy-sd" or a folder) to fine-tune: its VAE,
    #                 tokenizer and weights are the start; the VAE stage is skipped
    train_parts: tuple[str, ...] = ()  # what the UNet stage trains (PARTS); () = everything
    parts_steps: int = 0  # train only train_parts for this many steps, then everything
    #                 (0 = train_parts for the whole stage)
    time_limit_min: float = 0.0  # end the UNet stage after this many minutes (0 = none)
    ckpt_minutes: float = 0.0  # also checkpoint (with a usable model) this often (0 = never)

    def __post_init__(self):
        self.train_parts = tuple(self.train_parts)
        bad = [p for p in self.train_parts if p not in PARTS]
        if bad:
            raise ValueError(f"train_parts {bad} unknown; choose from {', '.join(PARTS)}")
        f = self.vae_factor * 2 ** (len(self.unet_channels) - 1)  # latent halvings
        if self.crop_size < 0 or self.crop_size % f or self.crop_size > self.height:
            raise ValueError(
                f"crop_size={self.crop_size} must be 0 or a multiple of {f} (the VAE factor x "
                f"the UNet's downsampling) up to the height {self.height}"
            )
        if not 0.0 <= self.crop_share <= 1.0 or not 0.0 <= self.caption_dropout <= 1.0:
            raise ValueError("crop_share and caption_dropout are probabilities, in [0, 1]")
        if self.time_limit_min < 0 or self.ckpt_minutes < 0 or self.parts_steps < 0:
            raise ValueError("time_limit_min, ckpt_minutes and parts_steps must be >= 0")
        if self.parts_steps and not self.train_parts:
            raise ValueError("parts_steps needs train_parts (what to train first)")

    @property
    def vae_factor(self) -> int:
        """Downsampling factor of the VAE (2 per level after the first)."""
        return 2 ** (len(self.vae_channels) - 1)


def recorded_recipe(cfg: ToySDConfig) -> dict[str, Any]:
    """Return the recipe as JSON data, without the :data:`OPTIONS` at their neutral values
    (so a recipe that uses none of them records what the shipped model's did)."""
    d = json.loads(json.dumps(asdict(cfg)))
    return {k: v for k, v in d.items() if not (k in OPTIONS and v == OPTIONS[k])}
