"""Notebook 03's tables: every row of a target's table by family, the summary, and the TTA
budget study (notebook 07), on a tiny random-weight SD model's DG model (``tiny_dg``)."""

import dataclasses

import pandas as pd
import pytest
import torch

from diffprompt.captions import CaptionBook
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
from diffprompt.experiments.tta_budget import best_budget, budget_study, budget_table
from diffprompt.tta import PromptTTA, TargetScorer, TTAConfig, target_sets

pytestmark = pytest.mark.usefixtures("one_thread")


def quiet(_):
    pass


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_run_target_writes_every_row(tiny_dg):
    cfg = TTAConfig(
        target="acdc_night", steps=2, batch_size=2, fit_images=2, eval_images=2, eval_every=1
    )
    before = _snapshot(tiny_dg.model)
    res = run_target(tiny_dg, cfg, TargetRows(settings=("offline", "online")), log=quiet)
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
    quiet_rows = run_target(tiny_dg, cfg, TargetRows(("denoise",), tent=False), quiet, False)
    assert all(r.example is None for r in quiet_rows.rows)
    # the rows that fit nothing are the same bytes at another call (maps shared)
    assert quiet_rows.rows[0].miou == res.rows[0].miou
    table = target_table(res)
    assert list(table.columns) == ["setting", "mIoU", "fit images", "fit split"]
    assert table["fit split"].tolist()[:3] == ["-", "-", "test (unlabeled)"]
    # TENT and the prompt adapted copies: the DG model is untouched
    after = _snapshot(tiny_dg.model)
    assert all(torch.equal(before[k], after[k]) for k in after)


def test_caption_rows_and_tta_from_the_caption_in_a_targets_table(tiny_dg):
    book = CaptionBook("dataset")
    cfg = TTAConfig(target="acdc_night", steps=2, batch_size=2, fit_images=2, eval_images=2)
    rows = TargetRows(("denoise",), tent=False, zero_shot=False, captions=book)
    res = run_target(tiny_dg, cfg, dataclasses.replace(rows, caption_objectives=("entropy",)))
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


def test_budget_study_curves_points_and_the_best_budget(tiny_dg):
    """The budget study evaluates at its points and every ``every`` steps, without changing
    the fit (evaluating draws nothing); its table and best budget follow the curves."""
    cfg = TTAConfig(
        target="acdc_night", batch_size=2, fit_images=2, steps=4, eval_every=2, eval_images=2
    )
    dgs = {0: tiny_dg, 1: tiny_dg}
    curves = budget_study(dgs, {"acdc_night": cfg}, ["denoise"], [1e-2], (1,), quiet)
    assert list(curves["step"].unique()) == [0, 1, 2, 4] and len(curves) == 2 * 4
    assert (curves[curves["step"] == 0]["change"] == 0).all()
    assert (curves["images"] == 2).all() and curves["relative change"].iloc[-1] > 0
    # the same fit without the extra points: its words and final mIoU are the same
    tuned = dataclasses.replace(cfg, lr=1e-2)
    scorer = TargetScorer(tiny_dg.model.backbone, tuned, tiny_dg.cache)
    tta = PromptTTA(tiny_dg.model, tuned, scorer, log=quiet)
    sets = target_sets(cfg, tiny_dg.root, "val")
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
