"""Test-time adaptation of the scene prompt, on a tiny random-weight SD model."""

import pytest
import torch

from diffprompt.build import build_model
from diffprompt.captions import CaptionBook, CaptionPrompt
from diffprompt.data import build_dataset
from diffprompt.dg.checkpoint import (
    CHECKPOINT,
    load_dg_model,
)
from diffprompt.dg.config import TrainConfig
from diffprompt.dg.runs import dg_run_dir
from diffprompt.tta import (
    CAPTION_SPAN,
    PromptTTA,
    TargetScorer,
    TTAConfig,
    caption_start,
    check_tta,
    denoising_loss,
    fit_split,
    prompted,
    with_scene_text,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def quiet(_):
    pass


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def adapter(dg, cfg, cache=None, **kw):
    """A PromptTTA of the DG model ``dg`` (a SegModel) with its scorer."""
    return PromptTTA(dg, cfg, TargetScorer(dg.backbone, cfg, cache), log=quiet, **kw)


def test_a_tta_step_changes_only_the_prompt_words(tiny_dg):
    tta = adapter(tiny_dg.model, TTAConfig(target="acdc_night"), tiny_dg.cache)
    assert tta.trainable() == [tta.words]
    ds = build_dataset("acdc_night", "test", tiny_dg.root)
    bb = tiny_dg.model.backbone
    mods = {
        "head": tta.tta_model.head,
        "unet": bb.unet,
        "vae": bb.vae,
        "text": bb.text_encoder,
        "dg head": tiny_dg.model.head,
    }
    before = {n: _snapshot(m) for n, m in mods.items()}
    words = tta.words.detach().clone()
    opt = torch.optim.Adam([tta.words], lr=1e-2)
    for objective in ("denoise", "entropy", "both"):
        tta.step(opt, objective, ds, [0, 1], torch.Generator().manual_seed(0))
    assert not torch.equal(tta.words, words)
    for n, m in mods.items():
        after = _snapshot(m)
        assert all(torch.equal(before[n][k], after[k]) for k in after), n
        assert all(p.grad is None for p in m.parameters()), n


def test_denoise_lowers_the_diffusion_loss_on_the_target(tiny_dg):
    cfg = TTAConfig(target="acdc_night", steps=15, lr=5e-2, batch_size=2, fit_images=2)
    tta = adapter(tiny_dg.model, cfg)  # no cache: latents encoded each time
    fit = build_dataset("acdc_night", "test", tiny_dg.root)
    idx = [0, 1]
    z = tta.scorer.latents(fit, idx)

    def loss():
        ctx = tta.tta_model.context(2)
        with torch.no_grad():
            draws = [torch.Generator().manual_seed(s) for s in range(4)]
            return sum(denoising_loss(tiny_dg.model.backbone, z, ctx, g).item() for g in draws)

    start = loss()
    ev = build_dataset("acdc_night", "val", tiny_dg.root)
    cm, curve = tta.fit_offline("denoise", fit, idx, ev, [0])
    assert loss() < start
    assert [c["step"] for c in curve] == [0, 15] and 0 <= cm.miou() <= 100


def test_the_tta_model_starts_as_the_dg_model(tiny_dg):
    tta = adapter(tiny_dg.model, TTAConfig(target="acdc_night"), tiny_dg.cache)
    ds = build_dataset("acdc_night", "val", tiny_dg.root)
    assert torch.equal(tta.predict(ds, [0, 1]), tta.scorer.predict(tta.dg, ds, [0, 1]))
    text = "a photo of an urban street scene at night"
    zero_shot = with_scene_text(tiny_dg.model, text)
    assert zero_shot.prompts.cfg.scene_text == text
    torch.testing.assert_close(zero_shot.context(1)[:, :19], tiny_dg.model.context(1)[:, :19])
    assert not torch.allclose(zero_shot.context(1), tiny_dg.model.context(1))


def test_fixed_prompt_maps_are_shared_across_seeds_and_equal_the_direct_ones(tiny_dg, dg_results):
    """No adaptation and the hand-written prompt read their maps from the feature cache's
    session memory: another seed's DG model (the same frozen backbone, another head)
    computes no UNet pass and gets exactly the matrices of the direct path."""
    from diffprompt.cache import MEMORY, FeatureCache

    MEMORY.clear()
    cfg = TTAConfig(target="acdc_night", batch_size=1)
    ds = build_dataset("acdc_night", "val", tiny_dg.root)
    idx = [0, 1]
    scorer = TargetScorer(tiny_dg.model.backbone, cfg, tiny_dg.cache)
    direct = scorer.evaluate(tiny_dg.model, ds, idx)
    assert torch.equal(scorer.evaluate(tiny_dg.model, ds, idx, fixed=True).mat, direct.mat)
    path = dg_run_dir(tiny_dg.cfg, dg_results) / CHECKPOINT
    other = load_dg_model(tiny_dg.cfg, path, "cpu")  # as seed 1: its own objects, same backbone
    with torch.no_grad():
        for p in other.head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    calls = []
    other.backbone.register_forward_hook(lambda *a: calls.append(1))
    scorer1 = TargetScorer(other.backbone, cfg, FeatureCache(other, tiny_dg.cache.folder))
    shared = scorer1.evaluate(other, ds, idx, fixed=True)
    assert not calls  # read from memory
    assert torch.equal(shared.mat, scorer1.evaluate(other, ds, idx).mat)
    assert calls  # the direct path runs the UNet
    assert not torch.equal(shared.mat, direct.mat)  # another head, other predictions
    zero_shot = with_scene_text(other, "a photo of an urban street scene at night")
    z_shared = scorer1.evaluate(zero_shot, ds, idx, fixed=True)
    assert torch.equal(z_shared.mat, scorer1.evaluate(zero_shot, ds, idx).mat)


def test_tta_from_the_caption_starts_at_each_images_caption_and_learns_one_span(tiny_dg):
    book = CaptionBook("dataset")
    fit = build_dataset("acdc_night", "test", tiny_dg.root)
    ev = build_dataset("acdc_night", "val", tiny_dg.root)
    start = caption_start(book, fit, range(len(fit)))
    assert start.phrase == "at night"  # what the night captions say
    assert caption_start(book, fit, [0], "in the dark").phrase == "in the dark"
    fog = build_dataset("acdc_fog", "test", tiny_dg.root)
    assert caption_start(book, fog, [0]).phrase == "in fog"
    tta = adapter(tiny_dg.model, TTAConfig(target="acdc_night"), tiny_dg.cache, start=start)
    assert tta.trainable() == [tta.words] and tta.span is not None
    assert [r["init word"] for r in tta.nearest_words()] == ["at", "night"]
    # before fitting it is the DG model prompted with each image's own caption
    own = CaptionPrompt(book, "caption")
    idx = [0, 1]
    assert start.texts(ev, idx) == own.texts(ev, idx)
    ctx = tta.context(ev, idx)
    torch.testing.assert_close(ctx, tiny_dg.model.context(2, own.texts(ev, idx)))
    assert ctx.shape == tiny_dg.model.context(2).shape
    caption = prompted(tiny_dg.model, own)
    same = tta.predict(ev, idx) == tta.scorer.predict(tta.dg, ev, idx, caption, fixed=True)
    assert same.float().mean() > 0.999
    # a step moves the span's words only; each image keeps its own caption around them
    dg_before, words = _snapshot(tiny_dg.model), tta.words.detach().clone()
    opt = torch.optim.Adam([tta.words], lr=1e-2)
    tta.step(opt, "both", fit, idx, torch.Generator().manual_seed(0))
    assert not torch.equal(tta.words, words)
    moved = tta.context(ev, idx)
    assert not torch.allclose(moved, ctx)
    n_cat = tiny_dg.model.prompts.num_category_tokens
    torch.testing.assert_close(moved[:, :n_cat], ctx[:, :n_cat])  # the category tokens
    assert all(torch.equal(dg_before[k], v) for k, v in tiny_dg.model.state_dict().items())
    tta.reset()
    torch.testing.assert_close(tta.context(ev, idx), ctx)
    assert CAPTION_SPAN == "in daylight"


def test_splits_and_errors(tiny_dg, mini_root, tiny_sd):
    assert fit_split("darkzurich", mini_root)[0] == "train"  # unlabeled in reality
    assert fit_split("cityscapes", mini_root)[1].startswith("train (labels unused")
    with pytest.raises(ValueError, match="valid targets.*Did you mean 'acdc_night'"):
        check_tta(TTAConfig(target="acdc_nite"), ["denoise"], ["offline"])
    with pytest.raises(ValueError, match="unknown TTA objective"):
        check_tta(TTAConfig(), ["denoising"], ["offline"])
    with pytest.raises(ValueError, match="unknown TTA setting"):
        check_tta(TTAConfig(), ["denoise"], ["streaming"])
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        check_tta(TTAConfig(steps=0), ["denoise"], ["offline"])
    null = build_model(TrainConfig(model=str(tiny_sd), prompt_mode="null", fpn_width=8))
    with pytest.raises(ValueError, match="no scene prompt|has none"):
        adapter(null, TTAConfig())
