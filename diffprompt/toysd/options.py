"""Options of the embedded model's next recipes: what may make its text matter.

The shipped toy-sd hardly listens to its prompt (its card: class words do not bind, scene
prompts move the features by a few percent). :class:`~diffprompt.toysd.config.ToySDConfig`
holds a field per option (neutral by default, so the shipped recipe is unchanged); this
module holds what the options are made of:

- the pooled-text path (``text_embedding``): diffusers' "text" addition embedding, an
  attention pooling of the cross-attention context added to the timestep embedding, so the
  scene description modulates every block (:func:`unet_options`); its output norm starts at
  zero (:func:`zero_text_embedding`), so a model fine-tuned with it starts as it was;
- padding masking (``mask_padding``): cross-attention reads BOS..EOS only
  (:func:`padding_mask`, :func:`padding_masked`);
- crop captions (``crop_size``): random crops captioned with the classes present in them,
  from the labels' class shares (:func:`~diffprompt.toysd.recipe.training_shares`,
  :func:`crop_caption`, :func:`random_crops`);
- sharper query/key (``qk_init_scale``; ``qk_lr_mult`` in the optimizer's groups,
  :func:`scale_qk`, :func:`cross_attention_qk`);
- fine-tuning from a saved toy model (``init_from``, :func:`load_components`), training only
  some parts first (``train_parts``, ``parts_steps``; :data:`~diffprompt.toysd.config.PARTS`,
  :func:`select_parts`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import torch

from diffprompt.labels import CLASSES
from diffprompt.text import tokenize

if TYPE_CHECKING:  # annotations only
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, PreTrainedTokenizerBase

    from diffprompt.toysd.config import ToySDConfig


def crop_caption(caption: str, shares: torch.Tensor, min_share: float) -> str:
    """Return a crop's caption: the image caption's style and condition (the words before
    "showing") and the classes covering at least ``min_share`` of the crop, largest first,
    by class name, e.g. "a photo of a street scene at night showing road, car and sky".

    ``shares`` (19, h, w) are the crop's class shares (:func:`training_shares`).
    """
    head = caption.split(" showing", 1)[0].split(",", 1)[0]
    share = shares.float().mean((1, 2)) / 255
    order = [int(c) for c in torch.argsort(share, descending=True, stable=True)]
    names = [CLASSES[c] for c in order if share[c] >= min_share]
    if not names:
        return head
    words = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"{head} showing {words}"


def random_crops(
    n: int, cfg: ToySDConfig, g: torch.Generator
) -> tuple[int, int, torch.Tensor, torch.Tensor]:
    """Return (h, w, top, left) of ``n`` random crops in latent cells: one size per batch
    (``cfg.crop_size`` x twice that, in pixels), a position per crop."""
    f = cfg.vae_factor
    h, w = cfg.crop_size // f, 2 * cfg.crop_size // f
    hh, ww = cfg.height // f, cfg.width // f
    w = min(w, ww)
    top = torch.randint(0, hh - h + 1, (n,), generator=g)
    left = torch.randint(0, ww - w + 1, (n,), generator=g)
    return h, w, top, left


class _PaddingMasked:
    """Wraps a cross-attention processor: the padding tokens get a bias of -10000 (the
    masked share is exp(-10000) = 0), whatever block the layer is in."""

    def __init__(self, inner: Any, mask: torch.Tensor) -> None:
        self.inner, self.mask = inner, mask

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Return the wrapped processor's output with the padding masked."""
        if encoder_hidden_states is not None:
            bias = (1 - self.mask.to(hidden_states.dtype))[:, None, :] * -10000.0
            attention_mask = bias if attention_mask is None else attention_mask + bias
        return self.inner(
            attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs
        )


@contextmanager
def padding_masked(unet: UNet2DConditionModel, mask: torch.Tensor | None) -> Iterator[None]:
    """Within the block, every cross-attention layer of ``unet`` reads only the tokens that
    ``mask`` (B, L) bool keeps (None: all). Done with processors, not diffusers'
    ``encoder_attention_mask``, which the layers of ``only_cross_attention`` blocks ignore."""
    if mask is None:
        yield
        return
    layers = [m for m in unet.modules() if getattr(m, "is_cross_attention", False)]
    inner = [m.processor for m in layers]
    for m, p in zip(layers, inner, strict=True):
        m.set_processor(_PaddingMasked(p, mask))
    try:
        yield
    finally:
        for m, p in zip(layers, inner, strict=True):
            m.set_processor(p)


def crop_batch(
    z: torch.Tensor,
    idx: torch.Tensor,
    captions: Sequence[str],
    shares: torch.Tensor | None,
    cfg: ToySDConfig,
    g: torch.Generator,
    tokenizer: PreTrainedTokenizerBase,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (latent crops, their caption ids) of a batch ``z`` of training latents: one
    random crop each, captioned with the classes present in it (:func:`crop_caption`);
    ``idx`` are the latents' rows (N.. 2N-1: the mirror images)."""
    if shares is None:
        raise ValueError("crop_size needs the class shares of the training images")
    n = len(captions)
    h, w, top, left = random_crops(len(idx), cfg, g)
    crops, texts = [], []
    for k, i in enumerate(idx.tolist()):
        t, lft = int(top[k]), int(left[k])
        share = shares[i % n].flip(-1) if i >= n else shares[i % n]
        crops.append(z[k, :, t : t + h, lft : lft + w])
        region = share[:, t : t + h, lft : lft + w]
        texts.append(crop_caption(captions[i % n], region, cfg.crop_min_share))
    return torch.stack(crops), tokenize(tokenizer, texts)


def padding_mask(ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Return which tokens of ids (B, L) a masked cross-attention reads: BOS to the first EOS
    inclusive (True), not the padding after it (the pad token may be EOS)."""
    is_eos = ids == eos_token_id
    first = torch.where(is_eos.any(1), is_eos.int().argmax(1), ids.shape[1] - 1)
    return torch.arange(ids.shape[1], device=ids.device)[None] <= first[:, None]


def unet_options(cfg: ToySDConfig) -> dict[str, Any]:
    """Return the UNet2DConditionModel arguments the recipe's options add (the pooled-text
    path: diffusers' "text" addition embedding over the cross-attention context)."""
    if not cfg.text_embedding:
        return {}
    return {
        "addition_embed_type": "text",
        "addition_embed_type_num_heads": cfg.text_embedding_heads,
    }


def zero_text_embedding(unet: UNet2DConditionModel) -> None:
    """Zero the output norm of the pooled-text path (when there is one): at the start it adds
    nothing, so the UNet computes what it did without it."""
    emb = getattr(unet, "add_embedding", None)
    if emb is not None:
        with torch.no_grad():
            emb.norm2.weight.zero_()
            emb.norm2.bias.zero_()


def scale_qk(unet: UNet2DConditionModel, cfg: ToySDConfig) -> None:
    """Multiply the cross-attention query and key weights by ``cfg.qk_init_scale``."""
    if cfg.qk_init_scale != 1.0:
        with torch.no_grad():
            for p in cross_attention_qk(unet):
                p.mul_(cfg.qk_init_scale)


def load_components(cfg: ToySDConfig, folder: str | os.PathLike) -> dict[str, Any]:
    """Return {vae, unet, text_encoder, scheduler, tokenizer} of a saved toy model (fp32),
    its UNet rebuilt with the recipe's options (the new parts fresh, the pooled-text path
    zero) and its query/key scaled by ``cfg.qk_init_scale``: the start of a fine-tuning.

    Raises a ValueError when the folder's architecture is not the recipe's.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    fp32 = torch.float32
    vae = AutoencoderKL.from_pretrained(
        folder, subfolder="vae", torch_dtype=fp32, local_files_only=True, use_safetensors=True
    )
    old = UNet2DConditionModel.from_pretrained(
        folder, subfolder="unet", torch_dtype=fp32, local_files_only=True, use_safetensors=True
    )
    text = CLIPTextModel.from_pretrained(
        folder, subfolder="text_encoder", dtype=fp32, local_files_only=True, use_safetensors=True
    )
    tok = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True)
    found = {
        "unet_channels": tuple(old.config.block_out_channels),
        "text_width": text.config.hidden_size,
        "vae_channels": tuple(vae.config.block_out_channels),
    }
    wanted = {k: tuple(v) if isinstance(v, list | tuple) else v for k, v in asdict(cfg).items()}
    wrong = {k: v for k, v in found.items() if wanted[k] != v}
    if wrong:
        raise ValueError(
            f"init_from={cfg.init_from!r} has {wrong}, the recipe { ({k: wanted[k] for k in wrong}) }; "
            "set the recipe's architecture to the model's to fine-tune it"
        )
    config = {**dict(old.config), **unet_options(cfg)}
    unet = UNet2DConditionModel.from_config(config)
    missing, unexpected = unet.load_state_dict(old.state_dict(), strict=False)
    if unexpected or any(not k.startswith("add_embedding.") for k in missing):
        raise ValueError(f"cannot fine-tune {folder}: weights {unexpected or missing} do not fit")
    zero_text_embedding(unet)
    scale_qk(unet, cfg)
    scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    return {
        "vae": vae,
        "unet": unet,
        "text_encoder": text,
        "scheduler": scheduler,
        "tokenizer": tok,
    }


def part_parameters(
    unet: UNet2DConditionModel, text: CLIPTextModel, part: str
) -> list[torch.nn.Parameter]:
    """Return the parameters of one of :data:`~diffprompt.toysd.config.PARTS`."""
    if part == "unet":
        return list(unet.parameters())
    if part == "text_encoder":
        return list(text.parameters())
    if part == "text_embedding":
        emb = getattr(unet, "add_embedding", None)
        return list(emb.parameters()) if emb is not None else []
    layers = [m for m in unet.modules() if getattr(m, "is_cross_attention", False)]
    if part == "cross_attention_qk":
        return cross_attention_qk(unet)
    return [p for m in layers for p in m.parameters()]


def select_parts(
    unet: UNet2DConditionModel, text: CLIPTextModel, cfg: ToySDConfig, step: int
) -> None:
    """Make trainable what the UNet stage trains at ``step``: ``cfg.train_parts`` (for the
    first ``cfg.parts_steps`` steps when that is set), else everything (the whole UNet, and
    the text encoder when ``cfg.train_text_encoder``); the rest is frozen (no gradient, no
    update)."""
    parts = cfg.train_parts if not cfg.parts_steps or step < cfg.parts_steps else ()
    if not parts:
        unet.requires_grad_(True)
        text.requires_grad_(cfg.train_text_encoder)
        return
    unet.requires_grad_(False)
    text.requires_grad_(False)
    for part in parts:
        for p in part_parameters(unet, text, part):
            p.requires_grad_(part != "text_encoder" or cfg.train_text_encoder)


def cross_attention_qk(unet: UNet2DConditionModel) -> list[torch.nn.Parameter]:
    """Return the query and key weights of the UNet's cross-attention layers (query, key of
    each layer in module order)."""
    layers = [m for m in unet.modules() if getattr(m, "is_cross_attention", False)]
    return [p for m in layers for p in (m.to_q.weight, m.to_k.weight)]
