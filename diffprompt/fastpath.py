"""The fast feature path, and the naive reference path it is measured against.

The **naive** path is what a straightforward implementation does at every step: encode the
prompts with the text encoder (every class through every template, the scene prompt), encode
the images with the VAE, and run the full diffusers UNet, every block and the output layers,
reading the decoder maps through the hooks.

The **fast** path is what diffprompt does:

- the UNet stops after the last block it reads (:attr:`DiffusionBackbone.truncate`);
- the context is encoded once per prompt text and reused until the prompt changes or is
  learned (:meth:`FeatureCache.context`, the prompts' own caches);
- VAE latents are computed once per image where images repeat (TTA epochs, probing,
  evaluating several heads: :meth:`FeatureCache.latents`);
- attention runs through PyTorch's scaled-dot-product attention (diffusers' default
  processor in torch 2; :func:`attention_backends` reports it);
- optional: channels_last memory format (:func:`to_channels_last`), bf16 autocast
  (:func:`autocast`; its effect on mIoU is measured by the benchmark), ``torch.compile``
  (:func:`compile_unet`) and, for TTA at full size, gradient checkpointing.

Both paths give the same maps up to floating-point rounding (tests/test_fastpath.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from diffprompt.prompts import OWN_PROMPT, Prompt, Prompts
from diffprompt.text import clear_category_cache


def naive_context(
    model: nn.Module, batch_size: int, scene_texts: Sequence[str] | None = None
) -> Tensor | None:
    """Return ``model``'s context recomputed from scratch: every category embedding and the
    scene prompt go through the text encoder again (no cache), with the model's prompt
    weights (TextAdapter, learned scene embeddings) copied in."""
    p = getattr(model, "prompts", None)
    if p is None:
        return None
    encoder, tokenizer = p._frozen
    clear_category_cache()
    fresh = Prompts(encoder, tokenizer, p.class_names, p.cfg)
    fresh.load_state_dict(p.state_dict(), strict=False)
    fresh.to(next(encoder.parameters()).device)
    with torch.no_grad():
        return fresh(batch_size, scene_texts)


@torch.no_grad()
def naive_features(
    model: nn.Module, images: Tensor, scene_texts: Sequence[str] | None = None
) -> dict[str, Tensor]:
    """Return the maps of ``images`` (B, 3, H, W) in [0, 1] by the naive path: the text
    encoder, the VAE and the whole UNet, every call."""
    bb = model.backbone
    ctx = naive_context(model, images.shape[0], scene_texts)
    was = bb.truncate
    bb.truncate = False
    try:
        return bb(images, ctx)
    finally:
        bb.truncate = was


@torch.no_grad()
def fast_features(
    cache, dataset, indices: Sequence[int], prompt: Prompt = OWN_PROMPT
) -> dict[str, Tensor]:
    """Return the maps of images ``indices`` of ``dataset`` by the fast path: the context of
    ``prompt`` and the images' latents from ``cache`` (a :class:`FeatureCache`; computed on
    first use), then the truncated UNet. The maps themselves are not cached."""
    ctx = cache.model.context(len(indices), prompt.texts(dataset, indices))
    z = cache.latents(dataset, indices)
    bb = cache.model.backbone
    return bb(None, ctx, latents=z.to(bb.unet.device, bb.unet.dtype))


def to_channels_last(backbone: nn.Module) -> nn.Module:
    """Put the VAE's and the UNet's convolution weights in channels_last memory format
    (values unchanged; faster convolutions on many CPUs and GPUs)."""
    for m in (backbone.vae, backbone.unet):
        m.to(memory_format=torch.channels_last)
    return backbone


@contextlib.contextmanager
def autocast(device: torch.device | str, dtype: str = "bf16") -> Iterator[None]:
    """Autocast to ``dtype`` ("bf16", "fp16" or "no") on ``device``'s type."""
    dev = torch.device(device)
    if dtype == "no":
        yield
        return
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    with torch.autocast(device_type=dev.type, dtype=dt):
        yield


def compile_unet(backbone: nn.Module, **kw) -> nn.Module:
    """Compile the backbone's UNet with ``torch.compile`` (optional; the hooks that read and
    truncate the UNet split its graph)."""
    backbone.unet = torch.compile(backbone.unet, **kw)
    return backbone


def attention_backends(unet: nn.Module) -> dict[str, int]:
    """Return how many attention layers use each processor class (SDPA: AttnProcessor2_0)."""
    out: dict[str, int] = {}
    for proc in unet.attn_processors.values():
        name = type(getattr(proc, "inner", proc)).__name__
        out[name] = out.get(name, 0) + 1
    return out


class ImageList(torch.utils.data.Dataset):
    """A data set of given images (for the benchmark): ``{"image": (3, H, W)}`` items, named
    by ``name`` so a :class:`FeatureCache` can key their latents."""

    def __init__(self, images: Tensor, name: str) -> None:
        self.images, self.name = images, name

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": self.images[i]}

    def __repr__(self) -> str:
        return f"ImageList({self.name!r}, {tuple(self.images.shape)})"
