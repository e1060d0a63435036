"""Supervised and self-supervised comparator backbones, through transformers.

The backbone study compares diffusion features with ImageNet-supervised CNNs and
transformers (ResNet, ConvNeXt, Swin), a self-supervised ViT (DINOv2) and a
language-supervised ViT (CLIP). This module wraps them behind the interface that every
backbone of the project follows (see :class:`FeatureBackbone`):

- ``forward(images)`` takes a float tensor ``(B, 3, H, W)`` with values in ``[0, 1]`` and
  returns a dict ``{name: (B, C, ceil(H / s), ceil(W / s))}`` of feature maps;
- ``feature_channels`` (``{name: C}``) and ``feature_strides`` (``{name: s}``) hold the same
  keys, ordered from fine to coarse (for plain ViTs, where every stride is the patch size,
  from shallow to deep).

Images are normalised inside with the checkpoint's own mean and std (its
``preprocessor_config.json``; ImageNet's, or CLIP's for CLIP, when the folder has none).
Images of any size are accepted: they are zero-padded (after normalisation, i.e. with the
mean colour) at the bottom and right to a multiple of the coarsest stride, and the maps
are cropped back to ``ceil(H / s) x ceil(W / s)``. Nothing is resized. For the ViTs the
padded tokens take part in attention, so sizes that are multiples of the patch size
(14 for DINOv2, 16 for CLIP ViT-B/16) give features untouched by padding.

:func:`build_comparator` loads one from a local folder or a hub id (through
:func:`diffprompt.backbones.hub.resolve_model_folder`, so offline machines get a clear
error instead of a network wait); :data:`COMPARATORS` suggests the hub ids of the real
study. Nothing is downloaded at import.

The embedded (miniature) study uses other variants instead: the pretrained toy diffusion
UNet, the same UNet trained supervised, and the UNet with random weights. They live in
:mod:`diffprompt.backbones.variants`, not here.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffprompt.backbones.hub import BUNDLED, ModelNotFoundError, resolve_model_folder
from diffprompt.runtime import resolve_device, resolve_dtype

if TYPE_CHECKING:  # annotations only: transformers' model classes are imported where loaded
    from transformers import PretrainedConfig

#: Suggested hub ids of the real study (nothing is downloaded until one is built).
COMPARATORS: dict[str, str] = {
    "resnet50": "microsoft/resnet-50",
    "convnext_base": "facebook/convnext-base-224-22k",
    "swin_base": "microsoft/swin-base-patch4-window7-224",
    "dinov2_base": "facebook/dinov2-base",
    "clip_vit_b16": "openai/clip-vit-base-patch16",
}

#: Supported kinds, and the config.json ``model_type`` each one is read from.
KINDS = ("resnet", "convnext", "swin", "dinov2", "clip")
MODEL_TYPES = {
    "resnet": "resnet",
    "convnext": "convnext",
    "swin": "swin",
    "dinov2": "dinov2",
    "clip": "clip",
    "clip_vision_model": "clip",
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Files a comparator needs; weights as safetensors first, PyTorch pickles as a fallback.
_PATTERNS = ["config.json", "preprocessor_config.json", "*.safetensors", "*.safetensors.index.json"]
_PATTERNS_BIN = [
    "config.json",
    "preprocessor_config.json",
    "pytorch_model*.bin",
    "*.bin.index.json",
]
# Parameters the *Backbone classes add on top of classification checkpoints (ConvNeXt, Swin).
_ADDED_NORMS = "hidden_states_norms."


class FeatureBackbone(nn.Module):
    """Base of the project's backbones: normalise, pad, extract, crop.

    Subclasses set ``feature_channels`` and ``feature_strides`` (same keys, fine to coarse)
    and implement :meth:`extract`, which maps normalised, padded pixels to the feature
    dict. ``forward(images)`` takes ``(B, 3, H, W)`` floats in ``[0, 1]`` (moved to the
    backbone's device; normalised in float32, then cast to the backbone's dtype) and returns
    ``{name: (B, C, ceil(H / s), ceil(W / s))}`` in the backbone's dtype.

    A frozen backbone (:meth:`freeze`) has no parameter requiring grad and stays in eval
    mode even when a parent module calls ``train()``, so BatchNorm statistics never move.
    """

    feature_channels: dict[str, int]
    feature_strides: dict[str, int]

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.frozen = False
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {mean!r} and {std!r}")
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )

    @property
    def pad_multiple(self) -> int:
        """Inputs are padded to a multiple of this (the coarsest output stride)."""
        return max(self.feature_strides.values())

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the parameters, and of the returned maps."""
        return next(self.parameters()).dtype

    def normalize(self, images: Tensor) -> Tensor:
        """Return ``(images - mean) / std`` on the backbone's device, in its dtype."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"expected images of shape (B, 3, H, W) with values in [0, 1], got {tuple(images.shape)}"
            )
        x = images.to(device=self.mean.device, dtype=torch.float32)
        return ((x - self.mean.float()) / self.std.float()).to(self.dtype)

    def extract(self, pixel_values: Tensor) -> dict[str, Tensor]:
        """Map normalised pixels, of a size that is a multiple of :attr:`pad_multiple`, to maps."""
        raise NotImplementedError

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Return ``{name: (B, C, ceil(H / s), ceil(W / s))}`` of images (B, 3, H, W) in
        [0, 1], in the backbone's dtype."""
        x = self.normalize(images)
        h, w = x.shape[-2:]
        m = self.pad_multiple
        x = F.pad(x, (0, -w % m, 0, -h % m))
        out = {}
        for k, f in self.extract(x).items():
            s = self.feature_strides[k]
            out[k] = f[..., : math.ceil(h / s), : math.ceil(w / s)]
        return out

    def freeze(self, frozen: bool = True) -> FeatureBackbone:
        """Freeze (eval mode, no grad) or unfreeze (grads on; mode left to ``train()``)."""
        self.frozen = frozen
        self.requires_grad_(not frozen)
        if frozen:
            self.eval()
        return self

    def train(self, mode: bool = True) -> FeatureBackbone:
        """Set training mode (never on a frozen backbone: it stays in eval mode); return self."""
        return super().train(mode and not self.frozen)


def _square(size, what: str) -> int:
    if isinstance(size, int):
        return size
    a, b = size
    if a != b:
        raise ValueError(f"non-square {what} {tuple(size)} is not supported")
    return int(a)


def stage_strides(config: PretrainedConfig) -> list[int]:
    """Return the stride of each of ``config.stage_names`` (``stem`` first) from the config."""
    kind = MODEL_TYPES.get(config.model_type)
    n = len(config.stage_names)
    if kind == "resnet":  # conv 7x7/2 + max-pool /2, then stage 1 keeps the resolution
        s = [4]
        for i in range(1, n):
            s.append(s[-1] * (2 if i > 1 or config.downsample_in_first_stage else 1))
        return s
    if kind == "convnext":  # patchify, then every stage but the first halves the resolution
        p = _square(config.patch_size, "patch size")
        return [p] + [p * 2 ** (i - 1) for i in range(1, n)]
    if kind == "swin":  # stage i is read before its patch merging
        p = _square(config.patch_size, "patch size")
        return [p] + [p * 2 ** (i - 1) for i in range(1, n)]
    if kind in ("dinov2", "clip"):
        return [_square(config.patch_size, "patch size")] * n
    raise ValueError(f"no stride rule for model_type {config.model_type!r}")


def default_layers(num_stages: int, vit: bool) -> list[int]:
    """Return the four default outputs, as indices into the stage names (0 is the stem).

    Hierarchical models: the last four stages (``[1, 2, 3, 4]`` for four stages). ViTs with
    ``L`` blocks: four evenly spaced blocks (``[3, 6, 9, 12]`` for ``L = 12``).
    """
    if vit:
        return sorted({max(1, round(num_stages * (i + 1) / 4)) for i in range(4)})
    return list(range(max(1, num_stages - 3), num_stages + 1))


def _check_layers(layers: Sequence[int], num_stages: int, what: str) -> list[int]:
    layers = [int(i) for i in layers]
    if not layers or any(i < 0 or i > num_stages for i in layers):
        raise ValueError(
            f"layers must be indices in 0..{num_stages} (0 = stem/embeddings, k = output of "
            f"{what} k), got {layers}"
        )
    if layers != sorted(set(layers)):
        raise ValueError(f"layers must be increasing and without duplicates, got {layers}")
    return layers


class TransformersBackbone(FeatureBackbone):
    """A transformers ``*Backbone`` (ResNet, ConvNeXt, Swin, DINOv2) as a :class:`FeatureBackbone`.

    ``model`` is a loaded ``ResNetBackbone``, ``ConvNextBackbone``, ``SwinBackbone`` or
    ``Dinov2Backbone``; its ``out_features`` (e.g. ``stage1``...``stage4``) become the keys.
    The maps are the model's ``feature_maps``, i.e.

    - ResNet: the raw stage outputs (strides 4, 8, 16, 32);
    - ConvNeXt, Swin: the stage outputs followed by a per-position LayerNorm over channels
      that the ``*Backbone`` classes add (``hidden_states_norms``). Classification
      checkpoints do not hold it; :func:`build_comparator` sets it to weight 1, bias 0,
      i.e. a parameter-free normalisation (eps 1e-6 for ConvNeXt, 1e-5 for Swin). Swin
      stages are read before their patch merging (strides 4, 8, 16, 32);
    - DINOv2: the chosen blocks' outputs through the final LayerNorm, CLS token dropped,
      reshaped to ``(B, D, H / 14, W / 14)``; positional embeddings are interpolated to
      any grid.
    """

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__(mean, std)
        self.model = model
        self.kind = MODEL_TYPES.get(model.config.model_type, model.config.model_type)
        names = list(model.stage_names)
        strides = stage_strides(model.config)
        self.layers = [names.index(f) for f in model.out_features]
        self.feature_channels = dict(zip(model.out_features, model.channels, strict=True))
        self.feature_strides = {f: strides[names.index(f)] for f in model.out_features}

    def extract(self, pixel_values: Tensor) -> dict[str, Tensor]:
        """Return the model's ``feature_maps`` keyed by its ``out_features``."""
        out = self.model(pixel_values)
        return dict(zip(self.feature_channels, out.feature_maps, strict=True))

    def extra_repr(self) -> str:
        """Return the kind, layers and strides (shown in the module's repr)."""
        return f"kind={self.kind!r}, layers={self.layers}, strides={self.feature_strides}"


class CLIPVisionBackbone(FeatureBackbone):
    """The vision tower of CLIP (``transformers.CLIPVisionModel``) as a :class:`FeatureBackbone`.

    The maps are the hidden states after the chosen encoder blocks (``layers``, 0 being
    the embeddings after CLIP's pre-LayerNorm), CLS token dropped, reshaped to
    ``(B, D, H / p, W / p)``; keys are ``stage{k}`` like the transformers backbones. They
    are the raw residual stream: no post-LayerNorm, no projection.

    CLIP learns a fixed grid of positions; ``interpolate_pos_encoding=True`` (supported by
    the forward of the installed transformers) resizes them to any grid. With an older
    transformers that lacks it (``self.interpolate_pos_encoding`` False), images are
    resized to the model's ``image_size`` square instead and the maps resized back
    (bilinear) to ``ceil(H / p) x ceil(W / p)``.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[int] | None = None,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        super().__init__(mean, std)
        self.model = model
        self.kind = "clip"
        cfg = model.config
        n = cfg.num_hidden_layers
        self.layers = _check_layers(
            default_layers(n, vit=True) if layers is None else layers, n, "encoder block"
        )
        self.patch_size = _square(cfg.patch_size, "patch size")
        self.image_size = _square(cfg.image_size, "image size")
        self.feature_channels = {self._name(k): cfg.hidden_size for k in self.layers}
        self.feature_strides = {self._name(k): self.patch_size for k in self.layers}
        self.interpolate_pos_encoding = (
            "interpolate_pos_encoding" in inspect.signature(model.forward).parameters
        )

    @staticmethod
    def _name(k: int) -> str:
        return "stem" if k == 0 else f"stage{k}"

    def extract(self, pixel_values: Tensor) -> dict[str, Tensor]:
        """Return the chosen blocks' patch tokens as maps ``{stage{k}: (B, D, H / p, W / p)}``."""
        b, _, h, w = pixel_values.shape
        p = self.patch_size
        if self.interpolate_pos_encoding:
            out = self.model(
                pixel_values=pixel_values, interpolate_pos_encoding=True, output_hidden_states=True
            )
            grid = (h // p, w // p)
        else:
            size = (self.image_size, self.image_size)
            x = F.interpolate(pixel_values, size=size, mode="bilinear", align_corners=False)
            out = self.model(pixel_values=x, output_hidden_states=True)
            grid = (self.image_size // p, self.image_size // p)
        feats = {}
        for k in self.layers:
            hs = out.hidden_states[k][:, 1:]
            f = hs.reshape(b, *grid, hs.shape[-1]).permute(0, 3, 1, 2).contiguous()
            if grid != (h // p, w // p):
                f = F.interpolate(f, size=(h // p, w // p), mode="bilinear", align_corners=False)
            feats[self._name(k)] = f
        return feats

    def extra_repr(self) -> str:
        """Return the kind, layers and patch size (shown in the module's repr)."""
        return f"kind='clip', layers={self.layers}, patch_size={self.patch_size}"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e


def normalization_of(folder: str | os.PathLike, kind: str) -> tuple[tuple, tuple]:
    """Return the ``(mean, std)`` of a checkpoint folder.

    Read from its ``preprocessor_config.json`` (``image_mean``, ``image_std``) when it has
    one; else CLIP's for ``kind == "clip"`` and ImageNet's for the others.
    """
    path = Path(folder) / "preprocessor_config.json"
    if path.is_file():
        cfg = _read_json(path)
        mean, std = cfg.get("image_mean"), cfg.get("image_std")
        if isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3:
            return tuple(float(v) for v in mean), tuple(float(v) for v in std)
    return (CLIP_MEAN, CLIP_STD) if kind == "clip" else (IMAGENET_MEAN, IMAGENET_STD)


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin"))


def _resolve(name_or_path: str) -> Path:
    what = "comparator backbone"
    folder = resolve_model_folder(
        name_or_path, allow_patterns=_PATTERNS, what=what, required=("config.json",)
    )
    if not _has_weights(folder) and not Path(name_or_path).expanduser().is_dir():
        # a hub repository without safetensors: fall back to its PyTorch weights
        folder = resolve_model_folder(
            name_or_path, allow_patterns=_PATTERNS_BIN, what=what, required=("config.json",)
        )
    if not _has_weights(folder):
        raise ModelNotFoundError(
            f"the {what} folder {folder} holds no weights (*.safetensors or pytorch_model.bin); "
            "save a complete checkpoint with `save_pretrained`, or download the full repository"
        )
    return folder


def _not_a_load_report(record: logging.LogRecord) -> bool:
    return "LOAD REPORT" not in str(record.msg)


@contextmanager
def _quiet_load_report():
    """Drop transformers' load report; :func:`_load` checks the missing keys itself.

    A filter rather than a logger level: transformers runs extra checks (and warns) when
    the level of its ``modeling_utils`` logger is WARNING or above.
    """
    logger = logging.getLogger("transformers.modeling_utils")
    logger.addFilter(_not_a_load_report)
    try:
        yield
    finally:
        logger.removeFilter(_not_a_load_report)


def _load(cls, folder: Path, dtype: torch.dtype, **config_kwargs) -> nn.Module:
    with _quiet_load_report():
        model, info = cls.from_pretrained(
            folder,
            local_files_only=True,
            dtype=dtype,
            output_loading_info=True,
            use_safetensors=True,
            **config_kwargs,
        )
    missing = sorted(k for k in info["missing_keys"] if not k.startswith(_ADDED_NORMS))
    if missing or info["mismatched_keys"]:
        bad = missing or sorted(str(k) for k in info["mismatched_keys"])
        raise ValueError(
            f"{folder} does not hold the weights of a {cls.__name__}: "
            f"{len(bad)} missing or mismatched, e.g. {', '.join(bad[:3])}"
        )
    norms = [k for k in info["missing_keys"] if k.startswith(_ADDED_NORMS)]
    if norms:  # the per-stage LayerNorms of ConvNeXt / Swin backbones: make them identity-affine
        params = dict(model.named_parameters())
        with torch.no_grad():
            for k in norms:
                params[k].fill_(1.0 if k.endswith("weight") else 0.0)
    return model


def _kind_of(folder: Path, kind: str | None) -> str:
    model_type = _read_json(folder / "config.json").get("model_type")
    found = MODEL_TYPES.get(model_type)
    if found is None:
        raise ValueError(
            f"{folder}/config.json has model_type {model_type!r}, which is not a supported "
            f"comparator; supported model_types: {', '.join(MODEL_TYPES)} "
            f"(kinds {', '.join(KINDS)})"
        )
    if kind is not None and kind != found:
        raise ValueError(
            f"kind={kind!r} was asked for, but {folder}/config.json has model_type "
            f"{model_type!r} (kind {found!r}); pass kind={found!r} or None"
        )
    return found


def build_comparator(
    name_or_path: str | os.PathLike,
    kind: str | None = None,
    layers: Sequence[int] | None = None,
    dtype: str | torch.dtype = "fp32",
    device: str | torch.device | None = "cpu",
    frozen: bool = True,
) -> FeatureBackbone:
    """Load a comparator backbone from a folder or hub id (see :data:`COMPARATORS`); return
    it as a :class:`FeatureBackbone` on ``device``.

    ``kind`` is one of ``resnet``, ``convnext``, ``swin``, ``dinov2``, ``clip``; None reads
    it from ``config.json``'s ``model_type`` (a given kind is checked against it).
    ``layers`` indexes the stages (0 = stem or embeddings, k = stage or transformer block
    k); the default is the last four stages of hierarchical models and four evenly spaced
    blocks of ViTs (3, 6, 9, 12 for 12 blocks). Only the needed files are fetched and only
    the vision tower of a full CLIP checkpoint is loaded. ``frozen`` puts the backbone in
    eval mode for good and turns its gradients off.

    Raises :class:`~diffprompt.backbones.hub.ModelNotFoundError` when the model is not
    available locally and cannot be downloaded, and ValueError for an unsupported model.
    """
    name = str(name_or_path)
    if name in BUNDLED:
        raise ValueError(
            f"{name!r} is the bundled diffusion model, not a comparator: load it with "
            "diffprompt.backbones.diffusion, or pass a ResNet/ConvNeXt/Swin/DINOv2/CLIP "
            "folder or hub id"
        )
    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    if kind is not None and kind not in KINDS:  # before any download
        raise ValueError(f"unknown comparator kind {kind!r}: use one of {', '.join(KINDS)}")
    folder = _resolve(name)
    kind = _kind_of(folder, kind)
    mean, std = normalization_of(folder, kind)

    import transformers

    if kind == "clip":
        model = _load(transformers.CLIPVisionModel, folder, torch_dtype)
        backbone: FeatureBackbone = CLIPVisionBackbone(model, layers, mean=mean, std=std)
    else:
        cls = {
            "resnet": transformers.ResNetBackbone,
            "convnext": transformers.ConvNextBackbone,
            "swin": transformers.SwinBackbone,
            "dinov2": transformers.Dinov2Backbone,
        }[kind]
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        n = len(config.stage_names) - 1
        vit = kind == "dinov2"
        what = "transformer block" if vit else "stage"
        idx = _check_layers(default_layers(n, vit) if layers is None else layers, n, what)
        extra = {"reshape_hidden_states": True} if vit else {}
        # AutoBackbone.from_pretrained asks the hub whether the name is a repository (even
        # for a local folder), so the concrete class is used instead.
        model = _load(cls, folder, torch_dtype, out_indices=idx, **extra)
        backbone = TransformersBackbone(model, mean=mean, std=std)
    backbone.to(dev)
    backbone.freeze(frozen)
    if not frozen:
        backbone.train()
    return backbone
