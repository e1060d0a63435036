"""TENT (Wang et al., "Tent: Fully Test-Time Adaptation by Entropy Minimization", ICLR 2021),
the baseline of the TTA table: the prediction entropy on unlabeled target images is
minimised over the affine parameters (scale and shift) of the normalisation layers,
everything else frozen.

On a DG model the layers are those of the head and, with ``tent_scope="all"``, of the UNet
(GroupNorm and LayerNorm: Stable Diffusion has no BatchNorm); a copy of the model is adapted.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from diffprompt.backbones.diffusion import DiffusionBackbone
from diffprompt.dg.losses import mean_entropy
from diffprompt.model import SegModel
from diffprompt.tta import TargetScorer, TTAConfig, cycled_batches

#: TENT's Adam learning rate is ``TTAConfig.lr`` (the prompt's) divided by this: the
#: normalisation layers' scales and shifts act on every activation they touch, so they take
#: a smaller step than the prompt's word embeddings (ours, not tuned).
TENT_LR_DIVISOR = 10

#: The normalisation layers whose affine parameters TENT adapts.
NORMS = (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm2d)


def _own_unet(bb: DiffusionBackbone) -> DiffusionBackbone:
    """Return a backbone with a copy of ``bb``'s UNet (the rest shared), so that adapting it
    leaves the DG model's UNet untouched."""
    unet = type(bb.unet).from_config(bb.unet.config).to(bb.unet.device, bb.unet.dtype)
    unet.load_state_dict(bb.unet.state_dict())
    return DiffusionBackbone(
        bb.vae,
        unet,
        bb.text_encoder,
        bb.tokenizer,
        bb.scheduler,
        copy.deepcopy(bb.cfg),
        origin=bb.origin,
    )


def tent(
    model: SegModel,
    cfg: TTAConfig,
    scorer: TargetScorer,
    fit_set,
    fit_idx: Sequence[int],
) -> SegModel:
    """Return a copy of the DG ``model`` adapted by TENT on ``fit_idx`` of the unlabeled
    ``fit_set`` for ``cfg.steps`` steps of ``cfg.batch_size`` images (Adam at
    ``cfg.lr`` / :data:`TENT_LR_DIVISOR`; batches in the order ``cfg.seed`` draws)."""
    bb = _own_unet(model.backbone) if cfg.tent_scope == "all" else model.backbone
    adapted = SegModel(bb, copy.deepcopy(model.head), model.prompts)
    scopes = [adapted.head] + ([bb.unet] if cfg.tent_scope == "all" else [])
    adapted.requires_grad_(False)
    layers = [m for scope in scopes for m in scope.modules() if isinstance(m, NORMS)]
    params = [p for m in layers for p in m.parameters(recurse=False)]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=cfg.lr / TENT_LR_DIVISOR)
    g = torch.Generator().manual_seed(cfg.seed)
    order = [fit_idx[i] for i in torch.randperm(len(fit_idx), generator=g).tolist()]
    adapted.eval()
    for _, idx in cycled_batches(order, cfg.batch_size, cfg.steps):
        with torch.enable_grad():
            z = scorer.latents(fit_set, idx)
            feats = scorer.maps(adapted, z, adapted.context(len(idx)))
            loss = mean_entropy(adapted.decode(feats, None))
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
    adapted.requires_grad_(False)
    return adapted
