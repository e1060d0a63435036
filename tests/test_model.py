"""SegModel and its builders: a frozen backbone stays frozen; builds are seeded."""

import dataclasses

import pytest
import torch

from diffprompt.build import build_model, prompt_config
from diffprompt.dg.config import PROMPT_MODES, TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def test_segmodel_keeps_a_frozen_backbone_frozen(tiny_sd):
    cfg = TrainConfig(model=str(tiny_sd), prompt_mode="fixed")
    m = build_model(cfg).train()
    assert not m.backbone.training and m.head.training
    assert not any(p.requires_grad for p in m.backbone.parameters())
    groups = m.param_groups(1e-3)
    assert [g["name"] for g in groups] == ["head"] and not m.needs_backbone_grad
    ft = build_model(dataclasses.replace(cfg, finetune_unet=True, cache_features=False)).train()
    assert ft.backbone.unet.training and not ft.backbone.vae.training
    g = {g["name"]: g for g in ft.param_groups(1e-3, 0.1)}
    assert g["backbone"]["lr"] == pytest.approx(1e-4)
    assert len(g["backbone"]["params"]) == len(list(ft.backbone.unet.parameters()))
    x = torch.rand(2, 3, 32, 64)
    logits = m.eval()(x)
    assert logits.shape == (2, 19, 32, 64)
    assert m(feats=m.features(x), native=True).shape[-2:] == (16, 32)  # head stride 2
    with pytest.raises(ValueError, match="output size"):
        m(feats=m.features(x))


def test_the_same_seed_builds_the_same_head_and_the_backbone_can_be_shared(tiny_sd):
    cfg = TrainConfig(model=str(tiny_sd), prompt_mode="fixed", seed=3)
    a = build_model(cfg)
    b = build_model(cfg, backbone=a.backbone)
    c = build_model(dataclasses.replace(cfg, seed=4), backbone=a.backbone)
    assert b.backbone is a.backbone
    for k, v in a.head.state_dict().items():
        assert torch.equal(v, b.head.state_dict()[k]), k
    assert any(not torch.equal(v, c.head.state_dict()[k]) for k, v in a.head.state_dict().items())


def test_each_prompt_mode_gives_its_context_tokens():
    tokens = {m: prompt_config(TrainConfig(prompt_mode=m)).tokens for m in PROMPT_MODES}
    assert tokens == {
        "null": "null",
        "category": "category",
        "fixed": "scene",
        "random": "scene",
        "random_consistency": "scene",
        "caption": "scene",
        "caption_only": "text",
        "caption_random": "scene",
        "caption_consistency": "scene",
    }
    assert prompt_config(TrainConfig(), learnable_scene=True).learnable_scene


def test_attention_maps_need_category_tokens(tiny_sd):
    cfg = TrainConfig(model=str(tiny_sd), prompt_mode="null", attention_maps=True)
    with pytest.raises(ValueError, match="category tokens"):
        build_model(cfg)
