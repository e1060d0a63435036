"""Test-time adaptation of the scene prompt, on a tiny random-weight SD model."""

import dataclasses

import pytest
import torch

from diffprompt.build import build_model
from diffprompt.captions import CaptionBook, CaptionPrompt
from diffprompt.data import build_dataset
from diffprompt.dg.checkpoint import (
    CHECKPOINT,
    ConfigMismatchError,
    load_dg_model,
    save_checkpoint,
)
from diffprompt.dg.config import TrainConfig, config_hash
from diffprompt.dg.runs import dg_model, dg_run_dir, train_dg
from diffprompt.experiments.tta import (
    METHODS,
    Row,
    TargetResult,
    TargetRows,
    paper_setting,
    run_target,
    summary_table,
    target_table,
)
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
    target_sets,
    with_scene_text,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def quiet(_):
    pass


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return tmp_path_factory.mktemp("results")


@pytest.fixture(scope="module")
def trained(tiny_sd, mini_root, results):
    cfg = TrainConfig(
        model=str(tiny_sd),
        data_root=str(mini_root),
        steps=2,
        batch_size=2,
        max_train_images=4,
        targets=(),
        fpn_width=8,
        head_width=8,
        prompt_pool=3,
        progress="log",
        prompt_mode="fixed",
    )
    train_dg(cfg, results, log=quiet)
    return dg_model(cfg, results, missing="error")


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def adapter(dg, cfg, cache=None, **kw):
    """A PromptTTA of the DG model ``dg`` (a SegModel) with its scorer."""
    return PromptTTA(dg, cfg, TargetScorer(dg.backbone, cfg, cache), log=quiet, **kw)


def test_a_tta_step_changes_only_the_prompt_words(trained):
    tta = adapter(trained.model, TTAConfig(target="acdc_night"), trained.cache)
    assert tta.trainable() == [tta.words]
    ds = build_dataset("acdc_night", "test", trained.root)
    bb = trained.model.backbone
    mods = {
        "head": tta.tta_model.head,
        "unet": bb.unet,
        "vae": bb.vae,
        "text": bb.text_encoder,
        "dg head": trained.model.head,
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


def test_denoise_lowers_the_diffusion_loss_on_the_target(trained):
    cfg = TTAConfig(target="acdc_night", steps=15, lr=5e-2, batch_size=2, fit_images=2)
    tta = adapter(trained.model, cfg)  # no cache: latents encoded each time
    fit = build_dataset("acdc_night", "test", trained.root)
    idx = [0, 1]
    z = tta.scorer.latents(fit, idx)

    def loss():
        ctx = tta.tta_model.context(2)
        with torch.no_grad():
            draws = [torch.Generator().manual_seed(s) for s in range(4)]
            return sum(denoising_loss(trained.model.backbone, z, ctx, g).item() for g in draws)

    start = loss()
    ev = build_dataset("acdc_night", "val", trained.root)
    cm, curve = tta.fit_offline("denoise", fit, idx, ev, [0])
    assert loss() < start
    assert [c["step"] for c in curve] == [0, 15] and 0 <= cm.miou() <= 100


def test_the_tta_model_starts_as_the_dg_model(trained):
    tta = adapter(trained.model, TTAConfig(target="acdc_night"), trained.cache)
    ds = build_dataset("acdc_night", "val", trained.root)
    assert torch.equal(tta.predict(ds, [0, 1]), tta.scorer.predict(tta.dg, ds, [0, 1]))
    text = "a photo of an urban street scene at night"
    zero_shot = with_scene_text(trained.model, text)
    assert zero_shot.prompts.cfg.scene_text == text
    torch.testing.assert_close(zero_shot.context(1)[:, :19], trained.model.context(1)[:, :19])
    assert not torch.allclose(zero_shot.context(1), trained.model.context(1))


def test_fixed_prompt_maps_are_shared_across_seeds_and_equal_the_direct_ones(trained, results):
    """No adaptation and the hand-written prompt read their maps from the feature cache's
    session memory: another seed's DG model (the same frozen backbone, another head)
    computes no UNet pass and gets exactly the matrices of the direct path."""
    from diffprompt.cache import MEMORY, FeatureCache

    MEMORY.clear()
    cfg = TTAConfig(target="acdc_night", batch_size=1)
    ds = build_dataset("acdc_night", "val", trained.root)
    idx = [0, 1]
    scorer = TargetScorer(trained.model.backbone, cfg, trained.cache)
    direct = scorer.evaluate(trained.model, ds, idx)
    assert torch.equal(scorer.evaluate(trained.model, ds, idx, fixed=True).mat, direct.mat)
    path = dg_run_dir(trained.cfg, results) / CHECKPOINT
    other = load_dg_model(trained.cfg, path, "cpu")  # as seed 1: its own objects, same backbone
    with torch.no_grad():
        for p in other.head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    calls = []
    other.backbone.register_forward_hook(lambda *a: calls.append(1))
    scorer1 = TargetScorer(other.backbone, cfg, FeatureCache(other, trained.cache.folder))
    shared = scorer1.evaluate(other, ds, idx, fixed=True)
    assert not calls  # read from memory
    assert torch.equal(shared.mat, scorer1.evaluate(other, ds, idx).mat)
    assert calls  # the direct path runs the UNet
    assert not torch.equal(shared.mat, direct.mat)  # another head, other predictions
    zero_shot = with_scene_text(other, "a photo of an urban street scene at night")
    z_shared = scorer1.evaluate(zero_shot, ds, idx, fixed=True)
    assert torch.equal(z_shared.mat, scorer1.evaluate(zero_shot, ds, idx).mat)


def test_run_target_writes_every_row(trained):
    cfg = TTAConfig(
        target="acdc_night", steps=2, batch_size=2, fit_images=2, eval_images=2, eval_every=1
    )
    before = _snapshot(trained.model)
    res = run_target(trained, cfg, TargetRows(settings=("offline", "online")), log=quiet)
    rows = [(r.id, r.setting) for r in res.rows]
    assert rows[:3] == [("none", "-"), ("target_prompt", "-"), ("tent", "offline")]
    assert len(rows) == 3 + 3 * 2 and {m for m, _ in rows} <= set(METHODS)
    assert (
        res.rows[1].table_row()["method"]
        == 'hand-written prompt "a photo of an urban street scene at night"'
    )
    assert res.fit_split == "test (unlabeled)"
    assert [r.fit_images for r in res.rows[:4]] == [0, 0, 2, 2]
    assert {r["objective"] for r in res.curves} == {"denoise", "entropy", "both"}
    near = res.nearest["denoise"]
    assert [r["init word"] for r in near] == ["a", "photo", "of", "an", "urban", "street", "scene"]
    assert all(r.example is not None and r.example.shape == (64, 128) for r in res.rows)
    assert all(r.matrices.shape == (2, 19, 19) for r in res.rows)
    quiet_rows = run_target(trained, cfg, TargetRows(("denoise",), tent=False), quiet, False)
    assert all(r.example is None for r in quiet_rows.rows)
    # the rows that fit nothing are the same bytes at another call (maps shared)
    assert quiet_rows.rows[0].miou == res.rows[0].miou
    table = target_table(res)
    assert list(table.columns) == ["setting", "mIoU", "fit images", "fit split"]
    assert table["fit split"].tolist()[:3] == ["-", "-", "test (unlabeled)"]
    # TENT and the prompt adapted copies: the DG model is untouched
    after = _snapshot(trained.model)
    assert all(torch.equal(before[k], after[k]) for k in after)


def test_tta_from_the_caption_starts_at_each_images_caption_and_learns_one_span(trained):
    book = CaptionBook("dataset")
    fit = build_dataset("acdc_night", "test", trained.root)
    ev = build_dataset("acdc_night", "val", trained.root)
    start = caption_start(book, fit, range(len(fit)))
    assert start.phrase == "at night"  # what the night captions say
    assert caption_start(book, fit, [0], "in the dark").phrase == "in the dark"
    fog = build_dataset("acdc_fog", "test", trained.root)
    assert caption_start(book, fog, [0]).phrase == "in fog"
    tta = adapter(trained.model, TTAConfig(target="acdc_night"), trained.cache, start=start)
    assert tta.trainable() == [tta.words] and tta.span is not None
    assert [r["init word"] for r in tta.nearest_words()] == ["at", "night"]
    # before fitting it is the DG model prompted with each image's own caption
    own = CaptionPrompt(book, "caption")
    idx = [0, 1]
    assert start.texts(ev, idx) == own.texts(ev, idx)
    ctx = tta.context(ev, idx)
    torch.testing.assert_close(ctx, trained.model.context(2, own.texts(ev, idx)))
    assert ctx.shape == trained.model.context(2).shape
    caption = prompted(trained.model, own)
    same = tta.predict(ev, idx) == tta.scorer.predict(tta.dg, ev, idx, caption, fixed=True)
    assert same.float().mean() > 0.999
    # a step moves the span's words only; each image keeps its own caption around them
    dg_before, words = _snapshot(trained.model), tta.words.detach().clone()
    opt = torch.optim.Adam([tta.words], lr=1e-2)
    tta.step(opt, "both", fit, idx, torch.Generator().manual_seed(0))
    assert not torch.equal(tta.words, words)
    moved = tta.context(ev, idx)
    assert not torch.allclose(moved, ctx)
    n_cat = trained.model.prompts.num_category_tokens
    torch.testing.assert_close(moved[:, :n_cat], ctx[:, :n_cat])  # the category tokens
    assert all(torch.equal(dg_before[k], v) for k, v in trained.model.state_dict().items())
    tta.reset()
    torch.testing.assert_close(tta.context(ev, idx), ctx)
    # the rows of a target's table, its curve and the span's nearest words
    cfg = TTAConfig(target="acdc_night", steps=2, batch_size=2, fit_images=2, eval_images=2)
    rows = TargetRows(("denoise",), tent=False, zero_shot=False, captions=book)
    res = run_target(trained, cfg, dataclasses.replace(rows, caption_objectives=("entropy",)))
    ids = [r.id for r in res.rows]
    assert ids == [
        "none",
        "target_caption",
        "target_caption_stripped",
        "prompt_denoise",
        "caption_entropy",
    ]
    assert paper_setting("caption_entropy") == "TTA"
    assert {r["objective"] for r in res.curves} == {"denoise", "caption entropy"}
    assert [r["init word"] for r in res.nearest["caption entropy"]] == ["at", "night"]
    own_row = res.rows[1]
    step0 = [c for c in res.curves if c["objective"] == "caption entropy"][0]
    assert step0["step"] == 0 and abs(step0["mIoU"] - own_row.miou) < 0.5
    assert CAPTION_SPAN == "in daylight"


def test_splits_and_errors(trained, mini_root, tiny_sd):
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


def test_dg_models_from_results_or_a_checkpoint(trained, results, tmp_path):
    cfg = dataclasses.replace(trained.cfg, steps=3)
    with pytest.raises(FileNotFoundError, match="run notebook 02"):
        dg_model(cfg, tmp_path, missing="error")
    path = dg_run_dir(trained.cfg, results) / "checkpoint.pt"
    with pytest.raises(ConfigMismatchError, match="steps"):
        dg_model(cfg, tmp_path, checkpoint=str(path))
    relabelled = _relabelled_checkpoint(path, cfg, tmp_path)
    with pytest.raises(ValueError, match="stopped at step 2 of 3"):
        load_dg_model(cfg, relabelled)
    loaded = dg_model(trained.cfg, tmp_path, checkpoint=str(path))
    assert loaded.step == 2 and loaded.hash == trained.hash
    for k, v in trained.model.head.state_dict().items():
        assert torch.equal(v, loaded.model.head.state_dict()[k]), k


def _relabelled_checkpoint(path, cfg, tmp_path):
    """The checkpoint of a 2-step run re-labelled with the hash of ``cfg`` (3 steps)."""
    d = torch.load(path, weights_only=True)
    d["config_hash"] = config_hash(cfg)
    return save_checkpoint(tmp_path / "relabelled.pt", d)


def test_summary_table_keeps_the_row_order_and_joins_the_hand_written_prompts():
    def result(text, values):
        ids = ["none", "target_prompt", "prompt_denoise", "prompt_denoise"]
        settings = ["-", "-", "offline", "online"]
        labels = ["", f'hand-written prompt "{text}"', "", ""]
        rows = [
            Row(i, s, v, 0, None, label)
            for i, s, v, label in zip(ids, settings, values, labels, strict=True)
        ]
        return TargetResult(rows, "test", (None, None))

    out = summary_table(
        {
            "acdc_fog": result("in fog", [1.0, 2.0, 3.0, 4.0]),
            "acdc_night": result("at night", [4.0, 5.0, 7.0, 8.0]),
        }
    )
    assert list(out.index) == [
        "no adaptation",
        "hand-written target prompt",
        "TTA prompt: denoise",
        "TTA prompt: denoise (online)",
    ]
    assert list(out.columns) == ["id", "acdc_fog", "acdc_night", "mean"]
    assert out.loc["hand-written target prompt"].tolist() == ["target_prompt", 2.0, 5.0, 3.5]
    assert [paper_setting(i) for i in out["id"]] == ["DG", "DG", "TTA", "TTA"]


def test_budget_study_curves_points_and_the_best_budget(trained):
    """The budget study evaluates at its points and every ``every`` steps, without changing
    the fit (evaluating draws nothing); its table and best budget follow the curves."""
    import pandas as pd

    from diffprompt.experiments.tta_budget import best_budget, budget_study, budget_table

    cfg = TTAConfig(
        target="acdc_night", batch_size=2, fit_images=2, steps=4, eval_every=2, eval_images=2
    )
    dgs = {0: trained, 1: trained}
    curves = budget_study(dgs, {"acdc_night": cfg}, ["denoise"], [1e-2], (1,), quiet)
    assert list(curves["step"].unique()) == [0, 1, 2, 4] and len(curves) == 2 * 4
    assert (curves[curves["step"] == 0]["change"] == 0).all()
    assert (curves["images"] == 2).all() and curves["relative change"].iloc[-1] > 0
    # the same fit without the extra points: its words and final mIoU are the same
    tta = adapter(trained.model, dataclasses.replace(cfg, lr=1e-2), trained.cache)
    sets = target_sets(cfg, trained.root, "val")
    _, plain = tta.fit_offline("denoise", sets.fit, [0, 1], sets.evaluation, [0, 1])
    last = curves[(curves["seed"] == 0) & (curves["step"] == 4)].iloc[0]
    assert plain[-1]["mIoU"] == last["mIoU"]
    assert plain[-1]["relative change"] == pytest.approx(last["relative change"], abs=0)
    table = budget_table(curves)
    assert table.loc[("acdc_night", "denoise", 0.01, 4), "seeds"] == 2
    made = pd.DataFrame(
        {
            "objective": ["denoise"] * 3 + ["entropy"] * 3,
            "lr": [1e-3] * 6,
            "step": [0, 5, 50] * 2,
            "change": [0.0, 0.3, 0.1, 0.0, -1.0, 0.5],
        }
    )
    assert best_budget(made) == {"objective": "entropy", "lr": 1e-3, "steps": 50, "change": 0.5}
    assert best_budget(made, max_steps=10)["objective"] == "denoise"
    assert best_budget(made, max_steps=4) is None
