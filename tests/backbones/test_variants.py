"""The embedded study's UNet variants, and the bundled model's documented features (the
supervised variant's training: tests/test_supervised.py)."""

import pytest
import torch
from conftest import random_context as _context
from conftest import random_images as _images
from conftest import tiny_sd_parts as _parts

from diffprompt.backbones.diffusion import DiffusionBackbone, FeatureConfig
from diffprompt.backbones.variants import random_unet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bb(tmp_path_factory):
    vae, unet, text, tok, sched = _parts(tmp_path_factory.mktemp("v"))
    cfg = FeatureConfig(blocks=(1, 2))
    return DiffusionBackbone(vae, unet, text, tok, sched, cfg, origin="tiny")


def test_random_variant_shares_all_but_the_unet(bb):
    r = random_unet(bb, seed=1)
    assert r.vae is bb.vae and r.text_encoder is bb.text_encoder
    assert r.origin == "tiny (random UNet)" and bb.origin == "tiny"
    assert r.cfg == bb.cfg and r.cfg is not bb.cfg  # a copy: changing one leaves the other
    assert r.unet.config == bb.unet.config
    a = dict(bb.unet.named_parameters())
    assert any(not torch.equal(p, a[n]) for n, p in r.unet.named_parameters())
    with torch.no_grad():
        f, g = bb(_images(), _context()), r(_images(), _context())
    assert {k: v.shape for k, v in f.items()} == {k: v.shape for k, v in g.items()}
    r2 = random_unet(bb, seed=1)
    assert all(
        torch.equal(p, q) for p, q in zip(r.unet.parameters(), r2.unet.parameters(), strict=True)
    )


def test_bundled_model_loads_offline_with_documented_features(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bb = DiffusionBackbone.from_pretrained("toy-sd", FeatureConfig(attention_tokens=19))
    assert bb.vae_factor == 4 and bb.context_dim == 128
    assert bb.tokenizer.model_max_length == 64
    # documented in the model card: s0 (B, 128, H/16, W/16), s1 (B, 128, H/8, W/8),
    # s2 (B, 64, H/4, W/4); class-token maps a1, a2 (B, 19, ...) at the strides of s1, s2
    assert bb.feature_channels == {"s0": 128, "s1": 128, "s2": 64, "a1": 19, "a2": 19}
    assert bb.feature_strides == {"s0": 16, "s1": 8, "s2": 4, "a1": 8, "a2": 4}
    x = torch.rand(1, 3, 64, 128, generator=torch.Generator().manual_seed(0))
    ctx = torch.randn(1, 30, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        f = bb(x, ctx)
    for k, c in bb.feature_channels.items():
        s = bb.feature_strides[k]
        assert f[k].shape == (1, c, 64 // s, 128 // s)
        assert torch.isfinite(f[k]).all()
