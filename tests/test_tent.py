"""TENT: the entropy of a DG model's predictions minimised over the affine parameters of its
normalisation layers, on a copy (tiny random-weight SD model)."""

import pytest
import torch
from torch import nn

from diffprompt.data import build_dataset
from diffprompt.dg.losses import mean_entropy
from diffprompt.tent import NORMS, tent
from diffprompt.tta import TargetScorer, TTAConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _entropy(model, scorer, ds, idx):
    with torch.no_grad():
        z = scorer.latents(ds, idx)
        return float(mean_entropy(model.decode(scorer.maps(model, z, model.context(len(idx))))))


@pytest.mark.parametrize("scope", ["all", "head"])
def test_tent_moves_only_the_normalisation_affines_of_a_copy(tiny_dg, scope):
    cfg = TTAConfig(target="acdc_night", steps=8, lr=0.5, batch_size=2, tent_scope=scope)
    scorer = TargetScorer(tiny_dg.model.backbone, cfg, tiny_dg.cache)
    fit = build_dataset("acdc_night", "test", tiny_dg.root)
    dg_before = _state(tiny_dg.model)
    before = _entropy(tiny_dg.model, scorer, fit, [0, 1])
    adapted = tent(tiny_dg.model, cfg, scorer, fit, [0, 1])
    assert all(torch.equal(v, tiny_dg.model.state_dict()[k]) for k, v in dg_before.items())
    assert _entropy(adapted, scorer, fit, [0, 1]) < before  # what TENT minimises
    norm_names = {
        f"{name}.{p}"
        for name, m in adapted.named_modules()
        if isinstance(m, NORMS)
        for p, _ in m.named_parameters(recurse=False)
    }
    after = adapted.state_dict()
    changed = {k for k, v in dg_before.items() if k in after and not torch.equal(v, after[k])}
    assert changed and changed <= norm_names
    unet_changed = any(k.startswith("backbone.unet.") for k in changed)
    assert unet_changed == (scope == "all")
    assert adapted.backbone.unet is not tiny_dg.model.backbone.unet or scope == "head"
    assert all(not p.requires_grad for p in adapted.parameters())
    assert isinstance(adapted.head, nn.Module) and adapted.head is not tiny_dg.model.head
