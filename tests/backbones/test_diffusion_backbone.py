"""DiffusionBackbone on tiny random-weight SD-style models built here (no network)."""

from dataclasses import asdict

import pytest
import torch
from conftest import random_context as _context
from conftest import random_images as _images
from conftest import save_pipeline as _save
from conftest import tiny_sd_parts as _parts

from diffprompt.backbones.diffusion import DiffusionBackbone, FeatureConfig
from diffprompt.backbones.hub import ModelNotFoundError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return _parts(tmp_path_factory.mktemp("sd"))


def _reference(unet, vae, images, context, t, blocks, scale=False):
    """Features from a plain diffusers forward, captured by simple hooks of the test."""
    got, hooks = {}, []
    for i in blocks:
        b = unet.up_blocks[i]
        if b.upsamplers:  # the input of the block's upsampler
            hook = b.upsamplers[0].register_forward_pre_hook(
                lambda m, a, i=i: got.__setitem__(i, a[0])
            )
        else:  # the block's output
            hook = b.register_forward_hook(lambda m, a, o, i=i: got.__setitem__(i, o))
        hooks.append(hook)
    with torch.no_grad():
        z = vae.encode(images * 2 - 1).latent_dist.mode()
        if scale:
            z = z * vae.config.scaling_factor
        out = unet(z, torch.full((z.shape[0],), t), context).sample
    for h in hooks:
        h.remove()
    return got, out


def test_features_equal_a_plain_diffusers_forward(parts):
    vae, unet, text, tok, sched = parts
    x, ctx = _images(), _context()
    ref, ref_out = _reference(unet, vae, x, ctx, 1, [0, 1, 2])
    for blocks in [(0, 1, 2), (0, 1), (1,)]:  # (0, 1) and (1,) stop the UNet early
        bb = DiffusionBackbone(vae, unet, text, tok, sched, FeatureConfig(blocks=blocks))
        with torch.no_grad():
            f = bb(x, ctx)
        assert list(f) == [f"s{i}" for i in blocks]
        for i in blocks:
            torch.testing.assert_close(f[f"s{i}"], ref[i], rtol=0, atol=0)
            assert f[f"s{i}"].shape[1] == bb.feature_channels[f"s{i}"]
            assert x.shape[-1] // f[f"s{i}"].shape[-1] == bb.feature_strides[f"s{i}"]
        bb.remove_hooks()
    # after remove_hooks the UNet is a plain diffusers UNet again
    with torch.no_grad():
        z = vae.encode(x * 2 - 1).latent_dist.mode()
        torch.testing.assert_close(unet(z, torch.full((2,), 1), ctx).sample, ref_out)


def test_truncation_skips_the_rest_of_the_unet(parts):
    vae, unet, text, tok, sched = parts
    calls = []
    h = unet.conv_out.register_forward_hook(lambda *a: calls.append(1))
    bb = DiffusionBackbone(vae, unet, text, tok, sched, FeatureConfig(blocks=(0, 1)))
    with torch.no_grad():
        bb(_images(), _context())
    h.remove()
    bb.remove_hooks()
    assert not calls  # the last up block and conv_out never ran


def test_attention_maps_are_probabilities_and_leave_outputs_unchanged(parts):
    vae, unet, text, tok, sched = parts
    x, ctx = _images(), _context()
    ref, ref_out = _reference(unet, vae, x, ctx, 1, [0, 1, 2])
    cfg = FeatureConfig(blocks=(0, 1, 2), attention_tokens=7)
    bb = DiffusionBackbone(vae, unet, text, tok, sched, cfg)
    with torch.no_grad():
        f = bb(x, ctx)
    assert bb.attention_blocks == (1, 2)  # block 0 is an UpBlock2D without attention
    for i in (1, 2):
        a = f[f"a{i}"]
        assert a.shape == (2, 7, *f[f"s{i}"].shape[-2:])
        torch.testing.assert_close(a.sum(1), torch.ones_like(a[:, 0]))  # all tokens: sums to 1
        torch.testing.assert_close(f[f"s{i}"], ref[i], rtol=0, atol=0)  # recorder is passive
    assert bb.feature_channels["a1"] == 7
    bb.cfg.attention_tokens = 3  # only the first 3 (category) tokens
    with torch.no_grad():
        g = bb(x, ctx)
    torch.testing.assert_close(g["a2"], f["a2"][:, :3])
    bb.remove_hooks()


def test_same_seed_same_features_and_noise_changes_them(parts):
    vae, unet, text, tok, sched = parts
    x, ctx = _images(), _context()
    cfg = FeatureConfig(blocks=(1, 2), timesteps=(50, 300), noise=True, seed=3)
    bb = DiffusionBackbone(vae, unet, text, tok, sched, cfg)
    with torch.no_grad():
        a = bb(x, ctx)
        b = bb(x, ctx)
        c = bb(x, ctx, generator=torch.Generator().manual_seed(4))
    for k in a:
        assert torch.equal(a[k], b[k])
    assert not torch.allclose(a["s2"], c["s2"])
    bb.cfg.combine = "concat"
    with torch.no_grad():
        d = bb(x, ctx)
    assert d["s2"].shape[1] == 2 * a["s2"].shape[1] == bb.feature_channels["s2"]
    bb.remove_hooks()


def test_gradient_reaches_the_context_but_not_the_frozen_models(parts):
    vae, unet, text, tok, sched = parts
    bb = DiffusionBackbone(vae, unet, text, tok, sched, FeatureConfig(blocks=(1, 2)))
    ctx = _context().requires_grad_(True)
    f = bb(_images(), ctx)
    (f["s2"].square().mean() + f["s1"].mean()).backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in bb.parameters())
    assert not any(p.requires_grad for p in bb.parameters())
    bb.remove_hooks()


def test_describe_names_the_origin_and_the_features(parts):
    vae, unet, text, tok, sched = parts
    cfg = FeatureConfig(blocks=(1, 2), attention_tokens=3)
    bb = DiffusionBackbone(vae, unet, text, tok, sched, cfg, origin="tiny")
    d = bb.describe()
    assert d["origin"] == bb.origin == "tiny"
    assert d["features"] == asdict(cfg) and d["features"]["attention_tokens"] == 3
    assert d["channels"] == bb.feature_channels and d["strides"] == bb.feature_strides
    assert (d["vae_factor"], d["context_dim"]) == (2, 24)
    bb.remove_hooks()


def test_bad_inputs_are_clear_errors(parts):
    vae, unet, text, tok, sched = parts
    with pytest.raises(ValueError, match="up_blocks 0..2"):
        DiffusionBackbone(vae, unet, text, tok, sched, FeatureConfig(blocks=(5,)))
    bb = DiffusionBackbone(vae, unet, text, tok, sched, FeatureConfig(blocks=(2,)))
    with pytest.raises(ValueError, match="multiple of 8"):
        bb(_images(h=30), _context())
    with pytest.raises(ValueError, match="cross_attention_dim 24"):
        bb(_images(), _context(d=16))
    bb.remove_hooks()


def test_from_pretrained_sd2_style_folder_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    parts = _parts(tmp_path, sd2=True)
    _save(parts, tmp_path / "sd2")
    bb = DiffusionBackbone.from_pretrained(tmp_path / "sd2", FeatureConfig(blocks=(0, 1, 2)))
    assert bb.scheduler.config.prediction_type == "v_prediction"
    assert bb.unet.config.use_linear_projection
    with torch.no_grad():
        f = bb(_images(), _context())
    assert {k: v.shape[1] for k, v in f.items()} == bb.feature_channels
    ref, _ = _reference(parts[1], parts[0], _images(), _context(), 1, [0, 1, 2])
    for i in range(3):
        torch.testing.assert_close(f[f"s{i}"], ref[i])


def test_missing_component_and_offline_hub_id_are_clear_errors(tmp_path, monkeypatch):
    import shutil
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _save(_parts(tmp_path), tmp_path / "sd")
    shutil.rmtree(tmp_path / "sd" / "unet")
    with pytest.raises(ModelNotFoundError, match="lacks unet"):
        DiffusionBackbone.from_pretrained(tmp_path / "sd")
    t = time.time()
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        DiffusionBackbone.from_pretrained("nobody-here/no-such-model")
    assert time.time() - t < 5
    with pytest.raises(ModelNotFoundError, match="no Stable Diffusion model folder"):
        DiffusionBackbone.from_pretrained(tmp_path / "nowhere")
