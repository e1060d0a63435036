"""SegModel = backbone + prompts + head, with the components passed in.

>>> bb = DiffusionBackbone.from_pretrained("toy-sd")
>>> prompts = Prompts(bb.text_encoder, bb.tokenizer, CLASSES, PromptConfig(tokens="scene"))
>>> head = SemanticFPN(bb.feature_channels, bb.feature_strides)
>>> model = SegModel(bb, head, prompts)
>>> logits = model(images)                       # (B, 19, H, W), default scene prompt
>>> logits = model(images, scene_texts=texts)    # one scene prompt per image

The backbone is frozen by default: its parameters get no gradient and it stays in eval
mode when the model is put in training mode. ``finetune_backbone=True`` trains the UNet
(VPD fine-tunes it at 0.1x the head's learning rate; this paper keeps it frozen), see
:meth:`SegModel.param_groups`. A backbone without prompts (the comparators of
``diffprompt.backbones.comparators``) is called as ``backbone(images)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SegModel(nn.Module):
    """A semantic segmentation model on a (frozen) feature backbone.

    ``backbone(images, context)`` (diffusion) or ``backbone(images)`` (no ``prompts``)
    returns a dict of maps; ``prompts(batch_size, scene_texts)`` the cross-attention
    context; ``head(maps)`` logits at the head's stride, upsampled here to the image.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        prompts: nn.Module | None = None,
        finetune_backbone: bool = False,
    ) -> None:
        super().__init__()
        self.backbone, self.head, self.prompts = backbone, head, prompts
        self.finetune_backbone = finetune_backbone
        self.backbone.requires_grad_(False)
        if finetune_backbone:
            self._tunable_backbone().requires_grad_(True)
        self.train(False)

    def _tunable_backbone(self) -> nn.Module:
        """The part of the backbone that fine-tuning trains: the UNet of a diffusion
        backbone (VAE and text encoder stay frozen, as in VPD), else the whole backbone."""
        unet = getattr(self.backbone, "unet", None)
        if hasattr(self.backbone, "frozen"):  # a comparator: its train() honours this flag
            self.backbone.frozen = False
        return unet if unet is not None else self.backbone

    def train(self, mode: bool = True) -> SegModel:
        """Set training mode; a frozen backbone stays in eval mode (and a fine-tuned
        diffusion backbone trains its UNet only)."""
        super().train(mode)
        self.backbone.eval()
        if mode and self.finetune_backbone:
            self._tunable_backbone().train()
        return self

    # ------------------------------------------------------------------ parameters
    def param_groups(self, lr: float, backbone_lr_mult: float = 0.1) -> list[dict]:
        """Return AdamW parameter groups: head and prompts at ``lr``, a fine-tuned backbone
        at ``lr * backbone_lr_mult`` (VPD: 0.1). Only parameters that require grad."""
        head = [p for p in self.head.parameters() if p.requires_grad]
        if self.prompts is not None:
            head += [p for p in self.prompts.parameters() if p.requires_grad]
        groups = [{"params": head, "lr": lr, "name": "head"}]
        bb = [p for p in self.backbone.parameters() if p.requires_grad]
        if bb:
            groups.append({"params": bb, "lr": lr * backbone_lr_mult, "name": "backbone"})
        return groups

    @property
    def needs_backbone_grad(self) -> bool:
        """Whether a gradient must flow through the backbone: it is fine-tuned, or a prompt
        part before it (TextAdapter, learnable scene prompt) is trained."""
        if self.finetune_backbone:
            return True
        return self.prompts is not None and any(p.requires_grad for p in self.prompts.parameters())

    # ------------------------------------------------------------------ forward
    def context(self, batch_size: int, scene_texts: Sequence[str] | None = None) -> Tensor | None:
        """Return the cross-attention context (B, N, D), None without prompts."""
        if self.prompts is None:
            return None
        return self.prompts(batch_size, scene_texts)

    def features(
        self,
        images: Tensor,
        scene_texts: Sequence[str] | None = None,
        latents: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Return the backbone's maps of ``images`` (B, 3, H, W) in [0, 1] (without autograd
        unless :attr:`needs_backbone_grad`). ``latents`` skips a diffusion backbone's VAE."""
        grad = torch.is_grad_enabled() and self.needs_backbone_grad
        with torch.set_grad_enabled(grad):
            if self.prompts is None:
                return self.backbone(images)
            ctx = self.context(images.shape[0], scene_texts)
            return self.backbone(images, ctx, generator=generator, latents=latents)

    def decode(self, feats: dict[str, Tensor], size: tuple[int, int] | None = None) -> Tensor:
        """Return logits (B, C, *size) from backbone maps: the head, then bilinear upsampling
        (``size=None``: the head's own resolution, its finest input stride)."""
        logits = self.head(feats)
        if size is not None and tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
        return logits

    def forward(
        self,
        images: Tensor | None = None,
        scene_texts: Sequence[str] | None = None,
        feats: dict[str, Tensor] | None = None,
        size: tuple[int, int] | None = None,
        latents: Tensor | None = None,
        generator: torch.Generator | None = None,
        native: bool = False,
    ) -> Tensor:
        """Return logits (B, num_classes, H, W).

        Either ``images`` (B, 3, H, W) in [0, 1], or precomputed backbone maps ``feats`` with
        the output ``size`` (e.g. from a feature cache). ``scene_texts``: one scene prompt
        per image (default: the prompts' own scene prompt). ``native=True`` returns the
        logits at the head's resolution instead (training upsamples them for the loss).
        """
        if feats is None:
            if images is None:
                raise ValueError("SegModel needs images or precomputed feats")
            feats = self.features(images, scene_texts, latents, generator)
            size = size or tuple(images.shape[-2:])
        elif size is None and not native:
            raise ValueError("with precomputed feats, pass the output size (H, W) or native=True")
        return self.decode(feats, None if native else size)
