"""The embedded model's recipe: its data, vocabulary, components and objective."""

from types import SimpleNamespace

import pytest
import torch

from diffprompt.backbones.tokenizer import build_clip_tokenizer, caption_words
from diffprompt.data import build_dataset
from diffprompt.labels import CLASSES
from diffprompt.toysd.recipe import (
    HELDOUT_SPLITS,
    PRETRAIN_SPLITS,
    ToySDConfig,
    build_components,
    count_parameters,
    cross_attention_qk,
    heldout_set,
    param_groups,
    text_usage,
    training_images,
    vocabulary_words,
)

H, W = 64, 128


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(root, **kw) -> ToySDConfig:
    """A ToySDConfig small enough to pretrain in seconds on a CPU."""
    base = dict(
        data_root=str(root),
        height=H,
        width=W,
        vae_channels=(16, 16, 16),
        unet_channels=(32, 32, 32),
        attention_heads=(1, 1, 1),
        text_width=32,
        text_layers=1,
        text_heads=2,
        max_length=48,
        vae_steps=3,
        unet_steps=4,
        vae_batch=2,
        unet_batch=2,
        log_every=1,
        eval_every=2,
        ckpt_every=2,
        max_images=2,
        warmup=1,
    )
    return ToySDConfig(**{**base, **kw})


def math_isfinite(x: float) -> bool:
    return torch.isfinite(torch.tensor(x)).item()


# ---------------------------------------------------------------------------------------
# Data and vocabulary
# ---------------------------------------------------------------------------------------


def test_pretraining_never_uses_an_evaluation_split():
    assert set(PRETRAIN_SPLITS.values()) <= {"train", "all"}
    assert not {"val", "test"} & set(PRETRAIN_SPLITS.values())
    assert PRETRAIN_SPLITS["synthia"] == "all"  # SYNTHIA's only split; never evaluated on


def test_training_images(mini_root):
    cfg = tiny(mini_root)
    imgs, caps, doms = training_images(mini_root, cfg)
    n = 2 * len(PRETRAIN_SPLITS)
    assert imgs.shape == (n, 3, H, W) and imgs.dtype == torch.uint8
    assert len(caps) == len(doms) == n
    assert all(isinstance(c, str) and c for c in caps)
    assert sorted(set(doms)) == sorted(PRETRAIN_SPLITS)
    assert imgs.float().std() > 0
    # other sizes are resized; a split subset is honoured
    small_cfg = tiny(mini_root, height=32, width=64)
    small, caps2, doms2 = training_images(mini_root, small_cfg, {"gta5": "train"})
    assert small.shape == (2, 3, 32, 64) and small.dtype == torch.uint8
    assert caps2 == caps[:2] and doms2 == ["gta5", "gta5"]
    one, _, _ = training_images(mini_root, tiny(mini_root, max_images=1))
    assert len(one) == len(PRETRAIN_SPLITS)


def test_heldout_images_are_the_first_of_evaluation_splits(mini_root):
    assert set(HELDOUT_SPLITS.values()) == {"val"}
    assert not set(HELDOUT_SPLITS.items()) & set(PRETRAIN_SPLITS.items())
    cfg = tiny(mini_root)
    imgs, caps = heldout_set(mini_root, cfg, per_domain=1)
    assert imgs.shape == (len(HELDOUT_SPLITS), 3, H, W) and len(caps) == len(HELDOUT_SPLITS)
    one_each = tiny(mini_root, max_images=1)
    first, first_caps, names = training_images(mini_root, one_each, HELDOUT_SPLITS)
    assert torch.equal(imgs, first) and caps == first_caps and names == list(HELDOUT_SPLITS)
    sizes = [len(build_dataset(name, split, mini_root)) for name, split in HELDOUT_SPLITS.items()]
    assert len(heldout_set(mini_root, cfg, per_domain=2)[0]) == sum(min(2, n) for n in sizes)


def test_every_caption_word_is_one_token(mini_root, tmp_path):
    cfg = tiny(mini_root)
    _, caps, _ = training_images(mini_root, cfg)
    _, ho_caps = heldout_set(mini_root, cfg)
    tok = build_clip_tokenizer(vocabulary_words(caps), tmp_path / "tok", cfg.max_length)
    backend = tok.backend_tokenizer
    for c in caps + ho_caps + list(CLASSES):  # held-out captions: no new words either
        pieces = backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(c))
        words = caption_words([c])
        ids = tok(c).input_ids
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert len(ids) - 2 == len(pieces), c  # one id per word
        tokens = tok.convert_ids_to_tokens(ids[1:-1])
        assert all(t.endswith("</w>") for t in tokens), (c, tokens)
        assert sorted({t[: -len("</w>")] for t in tokens}) == words, c
        assert tok.tokenize(c) == tokens
        assert len(ids) <= cfg.max_length, f"caption of {len(ids)} tokens: raise max_length"


# ---------------------------------------------------------------------------------------
# Components and objective
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def untrained(mini_root, tmp_path_factory):
    cfg = tiny(mini_root)
    _, caps, _ = training_images(mini_root, cfg)
    tok = build_clip_tokenizer(
        vocabulary_words(caps), tmp_path_factory.mktemp("tok"), cfg.max_length
    )
    comps = build_components(cfg, tok)
    for m in ("unet", "text_encoder"):
        comps[m].eval()
    lat = torch.randn(
        3, cfg.latent_channels, H // 4, W // 4, generator=torch.Generator().manual_seed(1)
    )
    return SimpleNamespace(comps=comps, tok=tok, caps=caps[:3], lat=lat)


def test_text_usage_is_consistent_and_deterministic(untrained):
    c, tok, lat = untrained.comps, untrained.tok, untrained.lat
    args = (c["unet"], c["text_encoder"], c["scheduler"], tok, lat, untrained.caps)
    use = text_usage(*args, seed=0, repeats=2)
    assert set(use) == {"caption_loss", "empty_loss", "gap", "relative_gap"}
    assert all(isinstance(v, float) and math_isfinite(v) for v in use.values())
    assert use["caption_loss"] > 0 and use["empty_loss"] > 0
    assert use["gap"] == use["empty_loss"] - use["caption_loss"]
    assert use["relative_gap"] == pytest.approx(use["gap"] / use["empty_loss"])
    assert use["gap"] != 0  # the captions change the prediction
    assert text_usage(*args, seed=0, repeats=2) == use  # deterministic for a seed
    assert text_usage(*args, seed=1, repeats=2) != use
    fixed = text_usage(*args, seed=0, repeats=2, timesteps=[10, 500])
    assert fixed != use and fixed["gap"] == fixed["empty_loss"] - fixed["caption_loss"]
    # with the empty prompt as the caption, the same noise gives exactly no gap
    blank = text_usage(*args[:-1], [""] * len(untrained.caps), seed=0, repeats=2)
    assert blank["caption_loss"] == blank["empty_loss"] and blank["gap"] == 0.0


def test_count_parameters_counts_the_modules_only(untrained):
    counts = count_parameters(untrained.comps)
    assert set(counts) == {"vae", "unet", "text_encoder"}  # the scheduler has no parameters
    for name, n in counts.items():
        assert n == sum(p.numel() for p in untrained.comps[name].parameters()) > 0, name


def test_cross_attention_sharpness_knobs(mini_root, tmp_path):
    words = ["a", "street", "road", "car"]
    tok = build_clip_tokenizer(words, tmp_path / "tok", model_max_length=48)
    base = build_components(tiny(mini_root), tok)
    sharp = build_components(tiny(mini_root, qk_init_scale=3.0), tok)
    qk = {id(p) for p in cross_attention_qk(base["unet"])}
    assert qk  # the tiny UNet has cross-attention
    for (n, p), q in zip(base["unet"].named_parameters(), sharp["unet"].parameters(), strict=True):
        torch.testing.assert_close(q, p * 3.0 if id(p) in qk else p, msg=n)
    cfg = tiny(mini_root, qk_lr_mult=10.0)
    groups = param_groups(base["unet"], base["text_encoder"], cfg)
    assert [g["lr"] for g in groups] == [cfg.unet_lr, cfg.unet_lr * 10.0, cfg.text_lr]
    assert {id(p) for p in groups[1]["params"]} == qk
    covered = [id(p) for g in groups[:2] for p in g["params"]]
    assert sorted(covered) == sorted(id(p) for p in base["unet"].parameters())
