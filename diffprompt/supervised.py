"""The supervised variant of the embedded UNet, for notebook 01's backbone study.

:func:`train_supervised` trains the embedded UNet's architecture from random weights on the
source's labels, end to end, with a linear head on its feature maps that is then discarded
(:class:`SupervisedConfig` is its recipe). The result is the ``"supervised"`` variant of
:mod:`diffprompt.backbones.variants` (stored with :func:`~diffprompt.backbones.variants.
save_unet`, read back with :func:`~diffprompt.backbones.variants.load_variant`);
:func:`diffprompt.experiments.probing.embedded_backbones` builds it, without and with
photometric augmentation, and the probes of :mod:`diffprompt.probing` then read it frozen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from diffprompt.backbones.diffusion import DiffusionBackbone
from diffprompt.backbones.variants import random_unet
from diffprompt.data.transforms import PhotometricAugment
from diffprompt.labels import IGNORE_INDEX, NUM_CLASSES
from diffprompt.text import encode_texts


@dataclass
class SupervisedConfig:
    """Recipe of the supervised variant (a comment per default)."""

    steps: int = 600  # optimisation steps
    batch_size: int = 8
    photometric: bool = False  # colour jitter, blur and noise on the inputs (PhotometricAugment)
    crop: tuple[int, int] | None = None  # train on random (h, w) crops (None: whole images)
    lr: float = 5e-4  # AdamW, cosine decay
    weight_decay: float = 1e-2
    seed: int = 0


class _LinearHead(nn.Module):
    """BatchNorm + 1x1 conv over the concatenated maps (resized to the finest one)."""

    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(nn.BatchNorm2d(channels), nn.Conv2d(channels, NUM_CLASSES, 1))

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        keys = sorted(k for k in feats if k.startswith("s"))
        size = max((feats[k].shape[-2:] for k in keys), key=lambda s: s[0] * s[1])
        x = torch.cat(
            [F.interpolate(feats[k].float(), size=size, mode="bilinear") for k in keys], 1
        )
        return self.net(x)


def train_supervised(
    bb: DiffusionBackbone,
    train_set: Dataset,
    cfg: SupervisedConfig | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[DiffusionBackbone, dict]:
    """Return (backbone with a UNet trained from random weights on ``train_set``'s labels,
    training record). The UNet sees the pretrained VAE's latents and the empty prompt; a
    linear head on its feature maps is trained jointly with cross-entropy and discarded.
    ``cfg.photometric`` augments the inputs photometrically (so that a comparison with the
    diffusion UNet, which saw every domain's images, is not won by exposure alone)."""
    cfg = cfg or SupervisedConfig()
    out = random_unet(bb, cfg.seed)
    how = "UNet supervised, photometric augmentation" if cfg.photometric else "UNet supervised"
    out.origin = f"{bb.origin} ({how})"
    unet = out.unet
    unet.requires_grad_(True).train()
    head = _LinearHead(sum(c for k, c in out.feature_channels.items() if k.startswith("s")))
    head.to(unet.device)
    params = list(unet.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    ctx = encode_texts(bb.text_encoder, bb.tokenizer, [""]).last_hidden_state  # (1, L, D)
    g = torch.Generator().manual_seed(cfg.seed)
    aug = PhotometricAugment() if cfg.photometric else None
    losses, t0 = [], time.time()
    for step in range(1, cfg.steps + 1):
        idx = torch.randint(0, len(train_set), (cfg.batch_size,), generator=g).tolist()
        samples = [train_set[i] for i in idx]
        x = torch.stack([s["image"] for s in samples])
        y = torch.stack([s["mask"] for s in samples]).to(unet.device)
        if torch.rand((), generator=g) < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        if cfg.crop is not None:  # one window for the batch (the UNet is convolutional)
            ch, cw = cfg.crop
            top = int(torch.randint(0, x.shape[-2] - ch + 1, (1,), generator=g))
            left = int(torch.randint(0, x.shape[-1] - cw + 1, (1,), generator=g))
            x = x[..., top : top + ch, left : left + cw]
            y = y[..., top : top + ch, left : left + cw]
        if aug is not None:
            x = aug(x, g)
        logits = F.interpolate(head(out(x, ctx)), size=y.shape[-2:], mode="bilinear")
        loss = F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_schedule.step()
        losses.append(loss.item())
        if log and (step % 50 == 0 or step == cfg.steps):
            log(f"supervised UNet step {step}/{cfg.steps} loss {loss.item():.3f}")
    unet.requires_grad_(False).eval()
    return out, {"recipe": asdict(cfg), "losses": losses, "seconds": time.time() - t0}
