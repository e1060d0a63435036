"""Comparator backbones: tiny random-weight checkpoints saved like the hub ones, offline."""

import json
import math
import shutil
import time

import pytest
import torch
import torch.nn.functional as F
import transformers as T

from diffprompt.backbones.comparators import (
    CLIP_MEAN,
    CLIP_STD,
    COMPARATORS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    KINDS,
    CLIPVisionBackbone,
    FeatureBackbone,
    TransformersBackbone,
    build_comparator,
)
from diffprompt.backbones.hub import ModelNotFoundError

# Custom normalisation written to some folders' preprocessor_config.json.
CUSTOM_MEAN, CUSTOM_STD = (0.1, 0.2, 0.3), (0.4, 0.5, 0.6)


pytestmark = pytest.mark.usefixtures("one_thread")


def _clip_vision_config():
    return T.CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        patch_size=8,
        image_size=64,
    )


def _make(kind: str):
    """Return a tiny model of ``kind``, of the class its hub checkpoints are saved with."""
    torch.manual_seed(0)
    if kind == "resnet":
        cfg = T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1])
        return T.ResNetForImageClassification(cfg)
    if kind == "convnext":
        cfg = T.ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1])
        return T.ConvNextForImageClassification(cfg)
    if kind == "swin":
        cfg = T.SwinConfig(
            embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], image_size=64, window_size=4
        )
        return T.SwinForImageClassification(cfg)
    if kind == "dinov2":
        cfg = T.Dinov2Config(
            hidden_size=16,
            num_hidden_layers=4,
            num_attention_heads=2,
            mlp_ratio=2,
            patch_size=8,
            image_size=64,
        )
        return T.Dinov2Model(cfg)
    if kind == "clip":  # a full CLIP checkpoint, like openai/clip-vit-base-patch16
        text = T.CLIPTextConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
        vision = _clip_vision_config()
        cfg = T.CLIPConfig(
            text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=8
        )
        return T.CLIPModel(cfg)
    if kind == "clip_vision_model":
        return T.CLIPVisionModel(_clip_vision_config())
    raise AssertionError(kind)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``saved(kind) -> (folder, model)``: each tiny model saved once, on first use."""
    cache = {}

    def get(kind):
        if kind not in cache:
            folder = tmp_path_factory.mktemp(kind)
            model = _make(kind).eval()
            model.save_pretrained(folder)
            if kind in ("resnet", "clip"):  # the others use the default mean/std
                pre = {"image_mean": list(CUSTOM_MEAN), "image_std": list(CUSTOM_STD)}
                (folder / "preprocessor_config.json").write_text(json.dumps(pre))
            cache[kind] = folder, model
        return cache[kind]

    return get


def _mean_std(kind):
    if kind in ("resnet", "clip"):
        return CUSTOM_MEAN, CUSTOM_STD
    if kind == "clip_vision_model":
        return CLIP_MEAN, CLIP_STD
    return IMAGENET_MEAN, IMAGENET_STD


def _normalised(images, kind):
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in _mean_std(kind))
    return (images - mean) / std


def _channel_norm(h, eps):
    return F.layer_norm(h.permute(0, 2, 3, 1), h.shape[1:2], eps=eps).permute(0, 3, 1, 2)


def _tokens_to_map(h, grid):
    h = h[:, 1:]
    return h.reshape(h.shape[0], *grid, h.shape[-1]).permute(0, 3, 1, 2)


@torch.no_grad()
def _reference(kind, model, x, layers):
    """Maps from a plain forward of the saved transformers model (the documented recipe)."""
    if kind == "resnet":
        hs = model.resnet(x, output_hidden_states=True).hidden_states
        return [hs[i] for i in layers]
    if kind == "convnext":
        hs = model.convnext(x, output_hidden_states=True).hidden_states
        return [_channel_norm(hs[i], 1e-6) for i in layers]
    if kind == "swin":
        out = model.swin(
            x,
            output_hidden_states=True,
            always_partition=True,
            output_hidden_states_before_downsampling=True,
        )
        return [_channel_norm(out.reshaped_hidden_states[i], 1e-5) for i in layers]
    grid = (x.shape[2] // 8, x.shape[3] // 8)
    if kind == "dinov2":
        hs = model(x, output_hidden_states=True).hidden_states
        return [_tokens_to_map(model.layernorm(hs[k]), grid) for k in layers]
    vision = model.vision_model if kind == "clip" else model
    hs = vision(x, interpolate_pos_encoding=True, output_hidden_states=True).hidden_states
    return [_tokens_to_map(hs[k], grid) for k in layers]


ALL = (*KINDS, "clip_vision_model")


@pytest.mark.parametrize("kind", ALL)
def test_shapes_match_declared_channels_and_strides(saved, kind):
    folder, _ = saved(kind)
    bb = build_comparator(folder)  # kind read from config.json
    assert isinstance(bb, FeatureBackbone)
    assert list(bb.feature_channels) == list(bb.feature_strides)
    assert len(bb.feature_channels) == 4
    strides = list(bb.feature_strides.values())
    assert strides == sorted(strides)
    expected = [8] * 4 if kind in ("dinov2", "clip", "clip_vision_model") else [4, 8, 16, 32]
    assert strides == expected
    for h, w in ((64, 96), (50, 70)):
        with torch.no_grad():
            out = bb(torch.rand(2, 3, h, w))
        assert list(out) == list(bb.feature_channels)
        for k, f in out.items():
            s = bb.feature_strides[k]
            assert f.shape == (2, bb.feature_channels[k], math.ceil(h / s), math.ceil(w / s)), k
            assert f.dtype == torch.float32


@pytest.mark.parametrize("kind", ALL)
def test_maps_equal_a_plain_forward_of_the_model(saved, kind):
    folder, model = saved(kind)
    bb = build_comparator(folder)
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = bb(images)
    ref = _reference(kind, model, _normalised(images, kind), bb.layers)
    assert len(ref) == len(out)
    for (k, f), r in zip(out.items(), ref, strict=True):
        torch.testing.assert_close(f, r, msg=f"{kind} {k}")


@pytest.mark.parametrize("kind", ALL)
def test_frozen_and_deterministic(saved, kind):
    folder, _ = saved(kind)
    bb = build_comparator(folder)
    assert bb.frozen and not bb.training
    assert not any(p.requires_grad for p in bb.parameters())
    bb.train()  # a parent's train() must not wake BatchNorm / dropout of a frozen backbone
    assert not any(m.training for m in bb.modules())
    x = torch.rand(1, 3, 40, 56)
    a, b = bb(x), bb(x)
    for k in a:
        assert torch.equal(a[k], b[k])
        assert not a[k].requires_grad


def test_unfrozen_backbone_trains(saved):
    folder, _ = saved("resnet")
    bb = build_comparator(folder, frozen=False)
    assert bb.training and all(p.requires_grad for p in bb.parameters())
    out = bb(torch.rand(2, 3, 32, 32))
    sum(f.mean() for f in out.values()).backward()
    assert bb.model.embedder.embedder.convolution.weight.grad is not None
    bb.freeze()
    assert not bb.training and not any(p.requires_grad for p in bb.parameters())


def test_default_and_custom_layers(saved):
    folder, model = saved("dinov2")
    assert build_comparator(folder).layers == [1, 2, 3, 4]
    bb = build_comparator(folder, layers=[2, 4])
    assert list(bb.feature_channels) == ["stage2", "stage4"]
    folder, model = saved("clip")
    bb = build_comparator(folder, kind="clip", layers=[0, 3])
    assert list(bb.feature_strides) == ["stem", "stage3"]
    images = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        out = bb(images)
    ref = _reference("clip", model, _normalised(images, "clip"), [0, 3])
    torch.testing.assert_close(list(out.values()), ref)
    for bad in ([5], [3, 1], [2, 2], []):
        with pytest.raises(ValueError, match="layers"):
            build_comparator(folder, layers=bad)
    folder, _ = saved("swin")
    assert list(build_comparator(folder, layers=[2, 3]).feature_strides.values()) == [8, 16]


def test_normalisation_from_preprocessor_config_or_defaults(saved):
    for kind in ("resnet", "convnext", "clip", "clip_vision_model"):
        bb = build_comparator(saved(kind)[0])
        mean, std = _mean_std(kind)
        torch.testing.assert_close(bb.mean.flatten(), torch.tensor(mean))
        torch.testing.assert_close(bb.std.flatten(), torch.tensor(std))


def test_full_clip_checkpoint_loads_only_the_vision_tower(saved):
    full, _ = saved("clip")
    bb = build_comparator(full)
    assert isinstance(bb, CLIPVisionBackbone)
    assert isinstance(bb.model, T.CLIPVisionModel)
    assert not any("text" in n for n, _ in bb.named_parameters())


def test_padding_keeps_the_maps_of_a_model_that_needs_none(saved):
    """ResNet: a 60x92 image padded to 64x96 gives the top-left crop of the padded image's maps."""
    bb = build_comparator(saved("resnet")[0])
    images = torch.rand(1, 3, 60, 92)
    padded = F.pad(bb.normalize(images), (0, 4, 0, 4))
    with torch.no_grad():
        out, ref = bb(images), bb.extract(padded)
    for k, f in out.items():
        torch.testing.assert_close(f, ref[k][..., : f.shape[2], : f.shape[3]])


def test_clip_without_interpolate_pos_encoding_resizes(saved):
    bb = build_comparator(saved("clip_vision_model")[0])
    x = torch.rand(1, 3, 64, 64)  # the model's image_size: both paths agree
    with torch.no_grad():
        a = bb(x)
        bb.interpolate_pos_encoding = False
        b = bb(x)
        c = bb(torch.rand(2, 3, 40, 96))
    for k in a:
        torch.testing.assert_close(a[k], b[k])
        assert c[k].shape == (2, 16, 5, 12)


def test_swin_and_convnext_added_norms_are_identity_affine(saved):
    for kind in ("convnext", "swin"):
        bb = build_comparator(saved(kind)[0])
        for name, p in bb.model.hidden_states_norms.named_parameters():
            assert torch.all(p == (1.0 if name.endswith("weight") else 0.0)), (kind, name)


def test_resnet_downsample_in_first_stage_strides(tmp_path):
    cfg = T.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], downsample_in_first_stage=True
    )
    T.ResNetModel(cfg).save_pretrained(tmp_path)
    bb = build_comparator(tmp_path)
    assert bb.feature_strides == {"stage1": 8, "stage2": 16}
    with torch.no_grad():
        out = bb(torch.rand(1, 3, 48, 80))
    assert [tuple(f.shape[2:]) for f in out.values()] == [(6, 10), (3, 5)]


def test_dtype_and_device(saved):
    bb = build_comparator(saved("convnext")[0], dtype="bf16", device="cpu")
    assert bb.dtype == torch.bfloat16
    with torch.no_grad():
        out = bb(torch.rand(1, 3, 32, 32))
    assert all(f.dtype == torch.bfloat16 for f in out.values())
    with pytest.raises(ValueError, match="dtype"):
        build_comparator(saved("convnext")[0], dtype="int3")


def test_unknown_model_type_and_kind(saved, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="'bert'.*supported model_types: resnet, convnext"):
        build_comparator(tmp_path)
    with pytest.raises(ValueError, match="unknown comparator kind 'vit'.*resnet, convnext"):
        build_comparator(saved("resnet")[0], kind="vit")
    with pytest.raises(ValueError, match="kind='swin'.*model_type 'resnet'"):
        build_comparator(saved("resnet")[0], kind="swin")
    with pytest.raises(ValueError, match="bundled diffusion model"):
        build_comparator("toy-sd")


def test_folder_without_weights_or_with_the_wrong_ones(saved, tmp_path):
    src, _ = saved("resnet")
    shutil.copy(src / "config.json", tmp_path / "config.json")
    with pytest.raises(ModelNotFoundError, match="holds no weights.*save_pretrained"):
        build_comparator(tmp_path)
    shutil.copy(saved("convnext")[0] / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="does not hold the weights of a ResNetBackbone"):
        build_comparator(tmp_path)


def test_missing_folder_or_hub_id_offline_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE.*hf download diffprompt-test/"):
        build_comparator("diffprompt-test/no-such-comparator")
    with pytest.raises(ModelNotFoundError, match="no comparator backbone folder"):
        build_comparator(str(tmp_path / "missing" / "folder"))
    with pytest.raises(ModelNotFoundError, match="lacks config.json"):
        build_comparator(tmp_path)
    assert time.monotonic() - t0 < 2.0


def test_comparators_are_hub_ids():
    study = {"resnet50", "convnext_base", "swin_base", "dinov2_base", "clip_vit_b16"}
    assert set(COMPARATORS) >= study
    assert all(v.count("/") == 1 for v in COMPARATORS.values())


def test_wrappers_accept_loaded_models():
    cfg = T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], out_indices=[1, 2])
    bb = TransformersBackbone(T.ResNetBackbone(cfg).eval())
    assert bb.feature_channels == {"stage1": 8, "stage2": 16}
    assert bb.feature_strides == {"stage1": 4, "stage2": 8}
    clip = CLIPVisionBackbone(T.CLIPVisionModel(_clip_vision_config()).eval())
    assert clip.layers == [1, 2, 3, 4] and set(clip.feature_strides.values()) == {8}
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        bb(torch.rand(3, 32, 32))
