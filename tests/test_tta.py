"""Test-time adaptation of the scene prompt, on a tiny random-weight SD model."""

import pytest
import torch

from diffprompt.train import TrainConfig, Trainer
from diffprompt.tta import (
    TARGETS,
    PromptTTA,
    TTAConfig,
    check_tta,
    denoising_loss,
    dg_trainer,
    fit_split,
    resolve_targets,
    run_target,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tiny_sd, mini_root, tmp_path_factory):
    cfg = TrainConfig(model=str(tiny_sd), data_root=str(mini_root), steps=2, batch_size=2,
                      max_train_images=4, targets=(), fpn_width=8, head_width=8, prompt_pool=3,
                      progress="log", prompt_mode="fixed")  # fmt: skip
    t = Trainer(cfg, tmp_path_factory.mktemp("dg") / "run", log=lambda s: None)
    t.fit()
    return t


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_a_tta_step_changes_only_the_prompt_words(trained):
    from diffprompt.data import build_dataset

    tta = PromptTTA(trained, TTAConfig(target="acdc_night"), log=lambda s: None)
    assert tta.trainable() == [tta.words]
    ds = build_dataset("acdc_night", "test", trained.root)
    mods = {"head": tta.tta_model.head, "unet": trained.model.backbone.unet,
            "vae": trained.model.backbone.vae, "text": trained.model.backbone.text_encoder,
            "dg head": trained.model.head}  # fmt: skip
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
    from diffprompt.data import build_dataset

    cfg = TTAConfig(target="acdc_night", steps=15, lr=5e-2, batch_size=2, fit_images=2,
                    eval_every=0)  # fmt: skip
    tta = PromptTTA(trained, cfg, log=lambda s: None)
    fit = build_dataset("acdc_night", "test", trained.root)
    idx = [0, 1]
    z = tta.latents(fit, idx)

    def loss():
        with torch.no_grad():
            return sum(denoising_loss(trained.model.backbone, z, tta.tta_model.context(2),
                                      torch.Generator().manual_seed(s)).item() for s in range(4))  # fmt: skip

    start = loss()
    ev = build_dataset("acdc_night", "val", trained.root)
    cm, curve = tta.fit_offline("denoise", fit, idx, ev, [0])
    assert loss() < start
    assert [c["step"] for c in curve] == [0, 15] and 0 <= cm.miou() <= 100


def test_run_target_writes_every_row(trained):
    cfg = TTAConfig(target="acdc_night", steps=2, batch_size=2, fit_images=2, eval_images=2,
                    eval_every=1)  # fmt: skip
    before = _snapshot(trained.model)
    res = run_target(trained, cfg, modes=("offline", "online"), log=lambda s: None)
    methods = [(r["method"], r["mode"]) for r in res["table"]]
    assert methods[:3] == [("no adaptation", "-"),
                           ('hand-written prompt "a photo of an urban street scene at night"', "-"),
                           ("TENT (normalisation affine)", "offline")]  # fmt: skip
    assert len(methods) == 3 + 3 * 2
    assert res["fit_split"] == "test (unlabeled)"
    assert {r["objective"] for r in res["curves"]} == {"denoise", "entropy", "both"}
    near = res["nearest"]["denoise"]
    assert [r["init word"] for r in near] == ["a", "photo", "of", "an", "urban", "street", "scene"]
    # TENT and the prompt adapted copies: the DG model is untouched
    after = _snapshot(trained.model)
    assert all(torch.equal(before[k], after[k]) for k in after)


def test_targets_splits_and_errors(trained, mini_root):
    from diffprompt.data import DATASETS

    assert resolve_targets("all") == list(TARGETS) and resolve_targets("acdc_fog") == ["acdc_fog"]
    assert resolve_targets("adverse") == ["acdc_fog", "acdc_night", "acdc_rain", "acdc_snow",
                                          "darkzurich"]  # fmt: skip
    assert resolve_targets(["adverse", "acdc_fog", "cityscapes"])[-1] == "cityscapes"  # no repeat
    with pytest.raises(ValueError, match="valid targets.*Did you mean 'acdc_night'"):
        resolve_targets("acdc_nite")
    assert fit_split(DATASETS["darkzurich"], mini_root)[0] == "train"  # unlabeled in reality
    assert fit_split(DATASETS["cityscapes"], mini_root)[1].startswith("train (labels unused")
    with pytest.raises(ValueError, match="valid targets.*Did you mean 'acdc_night'"):
        check_tta(TTAConfig(target="acdc_nite"), ["denoise"], ["offline"])
    with pytest.raises(ValueError, match="unknown TTA objective"):
        check_tta(TTAConfig(), ["denoising"], ["offline"])
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        check_tta(TTAConfig(steps=0), ["denoise"], ["offline"])
    null = Trainer(TrainConfig(model=trained.cfg.model, data_root=str(mini_root), targets=(),
                               prompt_mode="null", fpn_width=8, head_width=8), None)  # fmt: skip
    with pytest.raises(ValueError, match="no scene prompt"):
        PromptTTA(null, TTAConfig())


def test_dg_trainer_missing_and_mismatched_checkpoints(trained, tmp_path):
    import dataclasses

    from diffprompt.train import ConfigMismatchError

    cfg = dataclasses.replace(trained.cfg, steps=3)
    with pytest.raises(FileNotFoundError, match="run notebook 02"):
        dg_trainer(cfg, tmp_path, missing="error")
    with pytest.raises(ConfigMismatchError, match="steps"):
        dg_trainer(cfg, tmp_path, checkpoint=str(trained.ckpt_path))
    t = dg_trainer(trained.cfg, tmp_path, checkpoint=str(trained.ckpt_path))
    assert t.state.step == 2


def test_summary_table_keeps_the_row_order_and_joins_the_hand_written_prompts():
    import pandas as pd

    from diffprompt.tta import summary_table

    def table(text, values):
        idx = ["no adaptation", f'hand-written prompt "{text}"', "TTA prompt: denoise"]
        return pd.DataFrame({"mode": ["-", "-", "offline"], "mIoU": values}, index=idx)

    out = summary_table({"acdc_fog": table("in fog", [1.0, 2.0, 3.0]),
                         "acdc_night": table("at night", [4.0, 5.0, 7.0])})  # fmt: skip
    assert list(out.index) == ["no adaptation", "hand-written target prompt", "TTA prompt: denoise"]
    assert out.loc["hand-written target prompt"].tolist() == [2.0, 5.0, 3.5]
