"""Stable Diffusion features: the UNet decoder read through forward hooks, as VPD does.

``DiffusionBackbone.from_pretrained(name)`` loads the five components a feature extractor
needs (VAE, UNet, text encoder, tokenizer, scheduler) from any diffusers Stable Diffusion
checkpoint: a hub id (``"stable-diffusion-v1-5/stable-diffusion-v1-5"``, an SD 2.1
mirror), a local folder, or ``"toy-sd"``, the embedded model shipped with the package.

The features of an image batch ``x`` (B, 3, H, W) in [0, 1]:

1. ``x -> 2x - 1`` (the VAE's input range [-1, 1]);
2. latent = VAE encoder mode, optionally multiplied by the VAE's ``scaling_factor``
   (VPD does not scale; TADP reports that scaling helps slightly);
3. optionally noised to each timestep ``t`` with noise from a seeded ``torch.Generator``
   (VPD: one pass at t = 1 without noise); several timesteps are averaged or concatenated;
4. the UNet runs with ``encoder_hidden_states = context`` (B, N, D), the prompt tokens;
5. forward hooks capture the decoder features of the chosen ``up_blocks`` at the
   resolution each block works at (before its upsampler: VPD's scales 1/64 .. 1/8 of the
   image for SD), and, optionally, the cross-attention maps of the category tokens in those
   blocks, averaged over heads and layers. The UNet stops after the last block needed.

No diffusers ``forward`` is copied: features come from hooks on the stock modules, and the
attention maps from a processor that wraps the stock one (its output is the stock
processor's output; the maps are computed beside it from the same projections).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from diffprompt.backbones.hub import ModelNotFoundError, resolve_model_folder
from diffprompt.runtime import resolve_device, resolve_dtype

if TYPE_CHECKING:  # annotations only: diffusers is imported where a model is loaded
    from diffusers import AutoencoderKL, SchedulerMixin, UNet2DConditionModel
    from transformers import CLIPTextModel, PreTrainedTokenizerBase

#: The sub-folders of a diffusers Stable Diffusion checkpoint that the backbone reads.
COMPONENTS = ("vae", "unet", "text_encoder", "tokenizer", "scheduler")
#: Files worth downloading for those components (weights as safetensors only).
DOWNLOAD_PATTERNS = ["model_index.json"] + [
    f"{c}/{p}" for c in COMPONENTS for p in ("*.json", "*.txt", "*.safetensors", "*.model")
]
#: Pickled weight files, which are never read (unpickling can run code); named in the error.
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt")


@dataclass
class FeatureConfig:
    """How features are taken from the UNet (defaults follow VPD)."""

    blocks: tuple[int, ...] | None = None  # up_blocks to read, 0 = coarsest; None = all (VPD)
    timesteps: tuple[int, ...] = (1,)  # UNet timestep(s); VPD: a single pass at t = 1
    noise: bool = False  # add noise at each timestep (seeded) before the UNet; VPD: no
    combine: str = "mean"  # several timesteps: "mean" or "concat" along channels
    scale_latents: bool = False  # multiply latents by the VAE's scaling_factor; VPD: no
    attention_tokens: int = 0  # >0: also return the cross-attention maps of this many
    #                            category tokens (the first of the context) per block
    seed: int = 0  # seeds the noise when no generator is passed

    def __post_init__(self):
        self.blocks = None if self.blocks is None else tuple(int(b) for b in self.blocks)
        self.timesteps = tuple(int(t) for t in self.timesteps)
        if self.combine not in ("mean", "concat"):
            raise ValueError(f"combine must be 'mean' or 'concat', got {self.combine!r}")
        if self.blocks == () or not self.timesteps:
            raise ValueError("FeatureConfig needs at least one block and one timestep")


class _StopUNet(Exception):
    """Raised by the hook of the last block needed, to skip the rest of the UNet."""


@dataclass
class _Capture:
    feats: dict[int, torch.Tensor] = field(default_factory=dict)
    attn: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    tokens: slice | None = None
    stop_after: int | None = None
    active: bool = False  # hooks act only inside the backbone's own forward


class _AttentionRecorder:
    """Wraps an attention processor; records softmax(QK^T) of the chosen context tokens.

    The wrapped (stock) processor computes the layer's output unchanged; the recorder only
    recomputes queries and keys with the layer's own projections to get the probabilities.
    """

    def __init__(self, inner, capture: _Capture, block: int):
        self.inner, self.capture, self.block = inner, capture, block

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Return the stock processor's output; record the maps of ``capture.tokens``."""
        cap = self.capture
        if cap.tokens is not None and encoder_hidden_states is not None:
            h = hidden_states
            if h.ndim == 4:
                b, c, hh, ww = h.shape
                h = h.view(b, c, hh * ww).transpose(1, 2)
            if attn.group_norm is not None:
                h = attn.group_norm(h.transpose(1, 2)).transpose(1, 2)
            ctx = encoder_hidden_states
            if attn.norm_cross:
                ctx = attn.norm_encoder_hidden_states(ctx)
            q = attn.head_to_batch_dim(attn.to_q(h))  # (B*heads, HW, d)
            k = attn.head_to_batch_dim(attn.to_k(ctx))  # (B*heads, N, d)
            probs = attn.get_attention_scores(q, k, None)  # (B*heads, HW, N)
            probs = probs.unflatten(0, (-1, attn.heads)).mean(1)  # (B, HW, N)
            cap.attn.setdefault(self.block, []).append(probs[..., cap.tokens])
        return self.inner(
            attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs
        )


class DiffusionBackbone(nn.Module):
    """A Stable Diffusion UNet as a multi-scale feature extractor.

    Components are passed in (diffusers ``AutoencoderKL``, ``UNet2DConditionModel``, a
    transformers CLIP text encoder and tokenizer, a diffusers scheduler); see
    :meth:`from_pretrained`. The text encoder and tokenizer are held for prompt building
    (``diffprompt.prompts``); the backbone itself takes a ready context.

    ``forward(images, context)`` returns ``{"s{i}": (B, C_i, H/s_i, W/s_i)}`` for each block
    ``i`` of ``cfg.blocks`` and, with ``cfg.attention_tokens = C > 0``, ``{"a{i}": (B, C,
    H/s_i, W/s_i)}`` for the blocks that have cross-attention. Channel counts and strides
    are in ``feature_channels`` and ``feature_strides``.
    """

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet2DConditionModel,
        text_encoder: CLIPTextModel,
        tokenizer: PreTrainedTokenizerBase,
        scheduler: SchedulerMixin,
        cfg: FeatureConfig | None = None,
        origin: str = "",
        frozen: bool = True,
    ):
        super().__init__()
        self.vae, self.unet, self.text_encoder = vae, unet, text_encoder
        self.tokenizer, self.scheduler = tokenizer, scheduler
        self.cfg = cfg or FeatureConfig()
        #: where the weights come from (a model id or folder, and how a variant was made)
        self.origin = origin
        n_up = len(unet.up_blocks)
        blocks = range(n_up) if self.cfg.blocks is None else self.cfg.blocks
        bad = [b for b in blocks if not 0 <= b < n_up]
        if bad:
            raise ValueError(f"blocks {bad} do not exist: this UNet has up_blocks 0..{n_up - 1}")
        self.blocks = tuple(sorted(set(blocks)))
        self._capture = _Capture()
        #: stop the UNet after the last block read (the fast path); False runs every block
        #: and the output layers, as a plain diffusers forward (the naive reference path)
        self.truncate = True
        self._hooks: list = []
        self._install_hooks()
        if frozen:
            self.requires_grad_(False)
            self.eval()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path = "toy-sd",
        cfg: FeatureConfig | None = None,
        dtype: str | torch.dtype = "fp32",
        device: str | torch.device = "cpu",
        frozen: bool = True,
    ) -> DiffusionBackbone:
        """Load VAE, UNet, text encoder, tokenizer and scheduler; return the backbone.

        ``name_or_path``: ``"toy-sd"`` (bundled), a local diffusers folder, or a hub id
        (downloaded only when not cached, online and not ``HF_HUB_OFFLINE``). Raises
        :class:`ModelNotFoundError` that says how to provide a local folder otherwise.
        """
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        what = "Stable Diffusion model"
        folder = resolve_model_folder(name_or_path, DOWNLOAD_PATTERNS, what, required=COMPONENTS)
        for comp in ("vae", "unet", "text_encoder"):  # weights are read from safetensors only
            sub = folder / comp
            if not any(sub.glob("*.safetensors")):
                pickles = sorted(p.name for ext in PICKLE_PATTERNS for p in sub.glob(ext))
                found = f"holds {', '.join(pickles)} (pickled)" if pickles else "holds no weights"
                raise ModelNotFoundError(
                    f"{sub} {found} but no .safetensors file; diffprompt reads weights from "
                    "safetensors only (unpickling a file can run code). Convert it once where you "
                    "trust it: load the model with diffusers and `save_pretrained(folder, "
                    "safe_serialization=True)`, or download the repository's safetensors files."
                )
        torch_dtype, dev = resolve_dtype(dtype), resolve_device(device)
        diffusers_kw = dict(torch_dtype=torch_dtype, local_files_only=True)
        transformers_kw = dict(dtype=torch_dtype, local_files_only=True)  # its name for the dtype
        try:
            vae = AutoencoderKL.from_pretrained(
                folder, subfolder="vae", use_safetensors=True, **diffusers_kw
            )
            unet = UNet2DConditionModel.from_pretrained(
                folder, subfolder="unet", use_safetensors=True, **diffusers_kw
            )
            text = CLIPTextModel.from_pretrained(
                folder, subfolder="text_encoder", use_safetensors=True, **transformers_kw
            )
            tok = CLIPTokenizer.from_pretrained(
                folder, subfolder="tokenizer", local_files_only=True
            )
            scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
        except (OSError, ValueError) as e:
            raise ModelNotFoundError(
                f"could not load the Stable Diffusion components from {folder}: {e}. The folder "
                f"must be a diffusers checkpoint with {', '.join(COMPONENTS)} (weights as "
                "safetensors), as written by `StableDiffusionPipeline.save_pretrained`."
            ) from e
        backbone = cls(
            vae, unet, text, tok, scheduler, cfg, origin=str(name_or_path), frozen=frozen
        )
        return backbone.to(dev)

    # ------------------------------------------------------------------ geometry
    @property
    def vae_factor(self) -> int:
        """Downsampling factor of the VAE (8 for SD)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def _block_channels(self, i: int) -> int:
        return self.unet.up_blocks[i].resnets[-1].out_channels

    def _block_stride(self, i: int) -> int:
        n = len(self.unet.up_blocks)
        return self.vae_factor * 2 ** (n - 1 - i)

    def _has_cross_attention(self, i: int) -> bool:
        return any(
            getattr(m, "is_cross_attention", False) for m in self.unet.up_blocks[i].modules()
        )

    @property
    def attention_blocks(self) -> tuple[int, ...]:
        """The chosen blocks that have cross-attention (where maps ``a{i}`` come from)."""
        if not self.cfg.attention_tokens:
            return ()
        return tuple(b for b in self.blocks if self._has_cross_attention(b))

    @property
    def feature_channels(self) -> dict[str, int]:
        """Channels of each returned map, fine to coarse order not guaranteed: by key."""
        k = len(self.cfg.timesteps) if self.cfg.combine == "concat" else 1
        out = {f"s{i}": self._block_channels(i) * k for i in self.blocks}
        out.update({f"a{i}": self.cfg.attention_tokens * k for i in self.attention_blocks})
        return out

    @property
    def feature_strides(self) -> dict[str, int]:
        """Stride (image pixels per feature pixel) of each returned map."""
        out = {f"s{i}": self._block_stride(i) for i in self.blocks}
        out.update({f"a{i}": self._block_stride(i) for i in self.attention_blocks})
        return out

    @property
    def context_dim(self) -> int:
        """Width D of the context tokens the UNet's cross-attention reads."""
        return int(self.unet.config.cross_attention_dim)

    @property
    def multiple(self) -> int:
        """Image sides must be multiples of this (VAE factor x UNet downsampling)."""
        return self._block_stride(0)

    # ------------------------------------------------------------------ hooks
    def _install_hooks(self) -> None:
        cap = self._capture
        last = max(self.blocks)
        for i in self.blocks:
            block = self.unet.up_blocks[i]
            ups = getattr(block, "upsamplers", None)

            def grab(x: torch.Tensor, i=i) -> None:
                if not cap.active:  # the UNet used directly (e.g. a denoising loss)
                    return
                cap.feats[i] = x
                if cap.stop_after == i and self.truncate:
                    raise _StopUNet

            if ups:  # the block's features before its upsampler
                hook = ups[0].register_forward_pre_hook(lambda m, args, grab=grab: grab(args[0]))
            else:  # no upsampler: the block's output
                hook = block.register_forward_hook(lambda m, args, out, grab=grab: grab(out))
            self._hooks.append(hook)
            if i == last:
                cap.stop_after = i
            if self._has_cross_attention(i):
                for m in block.modules():
                    if getattr(m, "is_cross_attention", False):
                        m.set_processor(_AttentionRecorder(m.processor, cap, i))

    def _processors_restored(self) -> None:
        for m in self.unet.modules():
            if isinstance(getattr(m, "processor", None), _AttentionRecorder):
                m.set_processor(m.processor.inner)

    def remove_hooks(self) -> None:
        """Detach every hook and recorder (the UNet is then a plain diffusers UNet)."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self._processors_restored()

    # ------------------------------------------------------------------ features
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Return VAE latents (B, 4, H/f, W/f) of images (B, 3, H, W) in [0, 1]."""
        if not images.is_floating_point():
            raise ValueError(
                f"images must be floats in [0, 1], got dtype {images.dtype}: end "
                "the transform with ToFloat() (diffprompt.data.transforms)"
            )
        m = self.multiple
        if images.shape[-2] % m or images.shape[-1] % m:
            raise ValueError(
                f"image size {tuple(images.shape[-2:])} is not a multiple of {m} (the VAE "
                "factor times the UNet's downsampling); resize or crop the images first"
            )
        x = images.to(self.vae.device, self.vae.dtype) * 2 - 1
        z = self.vae.encode(x).latent_dist.mode()
        if self.cfg.scale_latents:
            z = z * self.vae.config.scaling_factor
        return z

    def forward(
        self,
        images: torch.Tensor,
        context: torch.Tensor,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Return the feature maps of ``images`` (B, 3, H, W) in [0, 1] under ``context``.

        ``context`` (B, N, D) or (N, D) is the cross-attention context; with
        ``cfg.attention_tokens = C`` its first C tokens are the category tokens whose maps
        are returned. Gradients flow to ``context`` (for learnable prompts). Pass ``latents``
        to skip the VAE. ``generator`` seeds the noise (default: ``cfg.seed``).
        """
        z = self.encode(images) if latents is None else latents
        b = z.shape[0]
        dev, dt = z.device, self.unet.dtype
        if context.ndim == 2:
            context = context.unsqueeze(0)
        if context.shape[0] == 1 and b > 1:
            context = context.expand(b, -1, -1)
        if context.shape[0] != b or context.shape[-1] != self.context_dim:
            raise ValueError(
                f"context of shape {tuple(context.shape)} does not fit a batch of {b} and a "
                f"UNet with cross_attention_dim {self.context_dim}"
            )
        n_att = self.cfg.attention_tokens
        if n_att > context.shape[1]:
            raise ValueError(f"attention_tokens={n_att} but the context has {context.shape[1]}")
        if self.cfg.noise and generator is None:
            generator = torch.Generator(device="cpu").manual_seed(self.cfg.seed)
        per_t: list[dict[str, torch.Tensor]] = []
        for t in self.cfg.timesteps:
            zt = z
            if self.cfg.noise:
                eps = torch.randn(z.shape, generator=generator, dtype=torch.float32).to(dev)
                zt = self.scheduler.add_noise(z.float(), eps, torch.tensor([t])).to(z.dtype)
            per_t.append(self._run_unet(zt.to(dt), t, context.to(dev, dt), n_att))
        if len(per_t) == 1:
            return per_t[0]
        if self.cfg.combine == "mean":
            return {k: torch.stack([f[k] for f in per_t]).mean(0) for k in per_t[0]}
        return {k: torch.cat([f[k] for f in per_t], 1) for k in per_t[0]}

    def _run_unet(self, z: torch.Tensor, t: int, context: torch.Tensor, n_att: int) -> dict:
        cap = self._capture
        cap.feats.clear()
        cap.attn.clear()
        cap.tokens = slice(0, n_att) if n_att else None
        cap.active = True
        try:
            self.unet(z, torch.full((z.shape[0],), t, device=z.device), context)
        except _StopUNet:
            pass
        finally:
            cap.tokens, cap.active = None, False
        missing = [i for i in self.blocks if i not in cap.feats]
        if missing:  # a hook did not fire: a UNet layout this backbone does not know
            raise RuntimeError(f"no features were captured for up_blocks {missing}")
        out = {f"s{i}": cap.feats[i] for i in self.blocks}
        for i in self.attention_blocks:
            h, w = out[f"s{i}"].shape[-2:]
            maps = torch.stack(cap.attn[i]).mean(0)  # (B, HW, C): mean over layers
            out[f"a{i}"] = maps.transpose(1, 2).reshape(z.shape[0], n_att, h, w)
        cap.feats.clear()
        cap.attn.clear()
        return out

    def describe(self) -> dict[str, Any]:
        """Return a JSON-able summary: origin, feature config, channels, strides, VAE factor
        and context width."""
        return {
            "origin": self.origin,
            "features": asdict(self.cfg),
            "channels": self.feature_channels,
            "strides": self.feature_strides,
            "vae_factor": self.vae_factor,
            "context_dim": self.context_dim,
        }
