"""DG training: losses, configuration, head, model, inference, feature cache and exact resume."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from diffprompt.train import (
    PROMPT_MODES,
    ConfigMismatchError,
    TrainConfig,
    Trainer,
    apply_preset,
    check_config,
    config_hash,
    consistency_loss,
    dg_loss,
    effective_prompts,
    parse_overrides,
    poly_lambda,
    prompt_pool,
    vocabulary,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _logits(k=3, b=2, c=5, h=4, w=6, seed=0):
    return torch.randn(k, b, c, h, w, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------
# losses


@pytest.mark.parametrize("kind", ["js", "sym_kl"])
def test_consistency_is_zero_for_identical_predictions_and_positive_otherwise(kind):
    one = _logits(k=1)
    same = one.expand(3, -1, -1, -1, -1)
    assert consistency_loss(same, kind).item() == pytest.approx(0.0, abs=1e-6)
    assert consistency_loss(one, kind).item() == 0.0  # K = 1: nothing to compare
    assert consistency_loss(_logits(), kind).item() > 1e-3
    # shifting all logits of a pixel by a constant does not change the distribution
    assert consistency_loss(same + torch.randn(3, 2, 1, 4, 6), kind).item() == pytest.approx(
        0.0, abs=1e-5
    )


def test_consistency_matches_a_hand_computation():
    p, q = torch.tensor([0.9, 0.1]), torch.tensor([0.5, 0.5])
    logits = torch.stack([p.log(), q.log()]).view(2, 1, 2, 1, 1)

    def h(x):
        return -(x * x.log()).sum().item()

    js = h((p + q) / 2) - (h(p) + h(q)) / 2
    kl = (p * (p / q).log()).sum() + (q * (q / p).log()).sum()
    assert consistency_loss(logits, "js").item() == pytest.approx(js, rel=1e-5)
    assert consistency_loss(logits, "sym_kl").item() == pytest.approx(kl.item(), rel=1e-5)
    with pytest.raises(ValueError, match="unknown consistency"):
        consistency_loss(logits, "l2")


def test_k1_without_consistency_is_plain_cross_entropy():
    logits = _logits(k=1, c=19, h=8, w=8)
    y = torch.randint(0, 19, (2, 16, 16), generator=torch.Generator().manual_seed(1))
    y[0, :3] = 255  # ignored pixels
    out = dg_loss(logits, y, weight=0.0)
    up = F.interpolate(logits[0], size=(16, 16), mode="bilinear", align_corners=False)
    ref = F.cross_entropy(up, y, ignore_index=255)
    torch.testing.assert_close(out["loss"], ref)
    assert out["consistency"].item() == 0.0


def test_loss_is_mean_ce_over_prompts_plus_weighted_consistency():
    logits = _logits(k=2, c=19, h=8, w=8)
    y = torch.randint(0, 19, (2, 8, 8), generator=torch.Generator().manual_seed(2))
    out = dg_loss(logits, y, weight=0.5)
    ce = (F.cross_entropy(logits[0], y) + F.cross_entropy(logits[1], y)) / 2
    torch.testing.assert_close(out["ce"], ce)
    torch.testing.assert_close(out["loss"], ce + 0.5 * consistency_loss(logits))


def test_poly_schedule_warms_up_then_decays_to_zero():
    f = poly_lambda(warmup=4, total=12, power=1.0)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(8) == pytest.approx(0.5) and f(12) == 0.0
    assert poly_lambda(0, 10, 2.0)(5) == pytest.approx(0.25)


# ---------------------------------------------------------------------------------------
# configuration


def test_synthia_trains_on_its_only_split():
    from diffprompt.train import source_split

    assert source_split(TrainConfig(source="synthia")) == "all"  # no official split
    assert source_split(TrainConfig(source="gta5")) == "train"
    assert source_split(TrainConfig(source="cityscapes", source_split="val")) == "val"


def test_modes_set_k_and_lambda():
    base = TrainConfig(num_prompts=3, consistency_weight=2.0)
    got = {m: effective_prompts(dataclasses.replace(base, prompt_mode=m)) for m in PROMPT_MODES}
    assert got == {"null": (1, 0.0), "category": (1, 0.0), "fixed": (1, 0.0),
                   "random": (3, 0.0), "random_consistency": (3, 2.0)}  # fmt: skip


def test_vocabulary_size_and_prompt_pool():
    assert all(len(v) == 1 for v in vocabulary(1).values())
    one = TrainConfig(vocabulary_size=1, prompt_pool=8)
    assert len(prompt_pool(one)) == 1  # one descriptor per key: one possible prompt
    pool = prompt_pool(TrainConfig(prompt_pool=8))
    assert len(pool) == len(set(pool)) == 8
    assert pool == prompt_pool(TrainConfig(prompt_pool=8, seed=5))  # pool_seed, not seed
    assert pool != prompt_pool(TrainConfig(prompt_pool=8, pool_seed=1))
    assert prompt_pool(TrainConfig(prompt_mode="fixed")) == []


@pytest.mark.parametrize(
    "over, match",
    [
        ({"source": "gta6"}, "unknown data set 'gta6'"),
        ({"targets": ("citiscapes",)}, "Did you mean 'cityscapes'"),
        ({"prompt_mode": "randomised"}, "unknown prompt_mode"),
        ({"steps": 0}, "steps must be a positive integer"),
        ({"steps": -5}, "steps must be a positive integer"),
        ({"batch_size": 6, "grad_accum": 4}, "not a multiple of grad_accum"),
        ({"num_prompts": 1}, "K >= 2"),
        ({"adapter": True}, "cache_features=False"),
        ({"eval_mode": "tiles"}, "eval_mode"),
        ({"lr": 0.0}, "lr must be > 0"),
    ],
)
def test_bad_configs_are_clear_errors(over, match):
    with pytest.raises(ValueError, match=match):
        check_config(TrainConfig(**over))


def test_config_hash_ignores_evaluation_fields_only():
    base = TrainConfig()
    assert config_hash(base) == config_hash(dataclasses.replace(base, targets=("cityscapes",),
                                                                max_eval_images=3))  # fmt: skip
    assert config_hash(base) != config_hash(dataclasses.replace(base, consistency_weight=0.5))


def test_paper_preset_and_overrides():
    cfg = apply_preset(TrainConfig(), "paper")
    assert (cfg.crop, cfg.batch_size, cfg.eval_mode, cfg.eval_stride) == ((512, 512), 16, "slide",
                                                                         (341, 341))  # fmt: skip
    assert cfg.model == "stable-diffusion-v1-5/stable-diffusion-v1-5" and not cfg.cache_features
    local = apply_preset(TrainConfig(model="/models/sd15"), "paper")
    assert local.model == "/models/sd15"  # a given model is kept
    with pytest.raises(ValueError, match="unknown preset"):
        apply_preset(TrainConfig(), "papers")
    over = parse_overrides(["targets=cityscapes,acdc_night", "crop=64,64", "steps=10",
                            "flip=false", "scene_text=a photo"])  # fmt: skip
    assert over == {"targets": ("cityscapes", "acdc_night"), "crop": (64, 64), "steps": 10,
                    "flip": False, "scene_text": "a photo"}  # fmt: skip
    with pytest.raises(ValueError, match="unknown TrainConfig field 'step'"):
        parse_overrides(["step=3"])


# ---------------------------------------------------------------------------------------
# head, model and inference


def test_semantic_fpn_shapes_and_attention_maps_concatenated():
    from diffprompt.heads import SemanticFPN

    ch = {"s0": 32, "s1": 16, "a1": 19, "s2": 8}
    st = {"s0": 16, "s1": 8, "a1": 8, "s2": 4}
    head = SemanticFPN(ch, st, num_classes=19, fpn_width=16, head_width=8)
    feats = {k: torch.randn(2, c, 64 // st[k], 128 // st[k]) for k, c in ch.items()}
    assert head(feats).shape == (2, 19, 16, 32)  # the finest stride
    assert head.lateral[1].in_channels == 16 + 19  # a1 joined s1
    with pytest.raises(KeyError, match="a1"):
        head({k: v for k, v in feats.items() if k != "a1"})
    with pytest.raises(ValueError, match="power-of-two"):
        SemanticFPN({"s0": 4, "s1": 4}, {"s0": 4, "s1": 12})


def test_segmodel_keeps_a_frozen_backbone_frozen(tiny_sd):
    from diffprompt.train import build_model

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


def test_sliding_window_equals_whole_image_for_a_pointwise_model():
    from diffprompt.evaluate import predict_slide, predict_whole, window_starts

    conv = torch.nn.Conv2d(3, 5, 1)
    x = torch.rand(2, 3, 40, 70)
    with torch.no_grad():
        whole = predict_whole(conv, x, multiple=8)
        slide = predict_slide(conv, x, crop=(16, 32), stride=(10, 21), num_classes=5, multiple=8)
    torch.testing.assert_close(slide, whole)
    assert window_starts(70, 32, 21) == [0, 21, 38] and window_starts(10, 16, 8) == [0]


# ---------------------------------------------------------------------------------------
# feature cache


def test_feature_cache_equals_direct_features_and_reads_disk(tiny_sd, mini_root, tmp_path):
    from diffprompt import cache as C
    from diffprompt.data import build_dataset
    from diffprompt.train import build_model

    m = build_model(TrainConfig(model=str(tiny_sd), prompt_mode="fixed"))
    ds = build_dataset("gta5", "train", mini_root)
    C.FeatureCache(m).get(ds, [0])  # in memory only: a later cache with a folder persists it
    fc = C.FeatureCache(m, tmp_path / "cache", batch_size=2)
    got = fc.get(ds, [0, 1, 2])
    with torch.no_grad():
        ref = m.features(torch.stack([ds[i]["image"] for i in (0, 1, 2)]))
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=2e-3, rtol=2e-3)  # stored in fp16
    other = fc.get(ds, [0], "a photo at night")
    assert not torch.equal(other["s0"], got["s0"][:1])  # another prompt, another key
    C.MEMORY.clear()
    calls = []
    m.backbone.register_forward_hook(lambda *a: calls.append(1))
    again = C.FeatureCache(m, tmp_path / "cache").get(ds, [0, 1, 2])
    assert not calls  # read from disk
    for k in got:
        assert torch.equal(again[k], got[k])
    with pytest.raises(ValueError, match="cannot be cached"):
        C.FeatureCache(build_model(TrainConfig(model=str(tiny_sd), adapter=True,
                                               cache_features=False)))  # fmt: skip


# ---------------------------------------------------------------------------------------
# training runs


def _cfg(tiny_sd, mini_root, **over):
    base = dict(model=str(tiny_sd), data_root=str(mini_root), steps=4, batch_size=2,
                max_train_images=4, max_eval_images=2, targets=("cityscapes",), fpn_width=8,
                head_width=8, warmup=1, ckpt_every=2, log_every=1, progress="log",
                prompt_pool=3)  # fmt: skip
    return TrainConfig(**{**base, **over})


@pytest.mark.parametrize("cache", [True, False])
def test_resumed_run_continues_exactly(tiny_sd, mini_root, tmp_path, cache):
    cfg = _cfg(tiny_sd, mini_root, cache_features=cache, dropout=0.1)
    full = Trainer(cfg, tmp_path / "full", log=lambda s: None)
    full.fit()
    part = Trainer(cfg, tmp_path / "part", log=lambda s: None)
    part.fit(stop_at=2)
    assert part.state.step == 2
    resumed = Trainer(cfg, tmp_path / "part", log=lambda s: None)
    resumed.fit()
    assert [e["loss"] for e in resumed.state.log] == [e["loss"] for e in full.state.log]
    for k, v in full.model.head.state_dict().items():
        assert torch.equal(v, resumed.model.head.state_dict()[k]), k
    assert math.isfinite(full.state.log[-1]["loss"])
    # a checkpoint of another configuration is refused
    other = Trainer(dataclasses.replace(cfg, consistency_weight=3.0), tmp_path / "full")
    with pytest.raises(ConfigMismatchError, match="consistency_weight"):
        other.load_checkpoint()


def test_resized_sources_reach_the_backbone_as_floats(tiny_sd, mini_root):
    t = Trainer(_cfg(tiny_sd, mini_root, train_size=(32, 64)), None, log=lambda s: None)
    x = t.source[0]["image"]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 64) and 0 <= x.min() <= x.max() <= 1
    with pytest.raises(ValueError, match="floats in"):
        t.model.backbone.encode((x * 255).to(torch.uint8)[None])
    with pytest.raises(ValueError, match="not a multiple of 8"):
        Trainer(_cfg(tiny_sd, mini_root, train_size=(30, 64)), None)


def test_same_seed_same_metrics_and_modes_run(tiny_sd, mini_root, tmp_path):
    results = {}
    for mode in PROMPT_MODES:
        cfg = _cfg(tiny_sd, mini_root, prompt_mode=mode, steps=2)
        t = Trainer(cfg, None, log=lambda s: None)
        t.fit()
        results[mode] = t.evaluate()["cityscapes"].mat.clone()
    again = Trainer(_cfg(tiny_sd, mini_root, steps=2), None, log=lambda s: None)
    again.fit()
    assert torch.equal(again.evaluate()["cityscapes"].mat, results["random_consistency"])


def test_gradient_accumulation_matches_one_big_batch(tiny_sd, mini_root):
    a = Trainer(_cfg(tiny_sd, mini_root, steps=2, dropout=0.0), None, log=lambda s: None)
    b = Trainer(_cfg(tiny_sd, mini_root, steps=2, dropout=0.0, grad_accum=2), None,
                log=lambda s: None)  # fmt: skip
    a.fit()
    b.fit()
    for k, v in a.model.head.state_dict().items():
        torch.testing.assert_close(b.model.head.state_dict()[k], v, atol=1e-5, rtol=1e-4)
