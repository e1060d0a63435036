"""The DG loop: exact resume, seeds, gradient accumulation, the schedule, the one mIoU rule
in its log, and a trained model loaded back without a Trainer."""

import dataclasses
import math

import pytest
import torch

from diffprompt.dg.checkpoint import ConfigMismatchError, load_dg_model
from diffprompt.dg.config import PROMPT_MODES, TrainConfig
from diffprompt.dg.runs import dg_run_dir, train_dg
from diffprompt.dg.trainer import Trainer, poly_lambda
from diffprompt.labels import SYNTHIA_EVAL_CLASSES

pytestmark = pytest.mark.usefixtures("one_thread")


def quiet(_):
    pass


def _cfg(tiny_sd, mini_root, **over):
    base = dict(
        model=str(tiny_sd),
        data_root=str(mini_root),
        steps=4,
        batch_size=2,
        max_train_images=4,
        max_eval_images=2,
        targets=("cityscapes",),
        fpn_width=8,
        head_width=8,
        warmup=1,
        ckpt_every=2,
        log_every=1,
        progress="log",
        prompt_pool=3,
    )
    return TrainConfig(**{**base, **over})


def test_poly_schedule_warms_up_then_decays_to_zero():
    f = poly_lambda(warmup=4, total=12, power=1.0)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(8) == pytest.approx(0.5) and f(12) == 0.0
    assert poly_lambda(0, 10, 2.0)(5) == pytest.approx(0.25)


@pytest.mark.parametrize("cache", [True, False])
def test_resumed_run_continues_exactly(tiny_sd, mini_root, tmp_path, cache):
    cfg = _cfg(tiny_sd, mini_root, cache_features=cache, dropout=0.1)
    full = Trainer(cfg, tmp_path / "full", log=quiet)
    full.fit()
    part = Trainer(cfg, tmp_path / "part", log=quiet)
    part.fit(stop_at=2)
    assert part.state.step == 2
    resumed = Trainer(cfg, tmp_path / "part", log=quiet)
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
    t = Trainer(_cfg(tiny_sd, mini_root, train_size=(32, 64)), None, log=quiet)
    x = t.data.source[0]["image"]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 64) and 0 <= x.min() <= x.max() <= 1
    with pytest.raises(ValueError, match="floats in"):
        t.model.backbone.encode((x * 255).to(torch.uint8)[None])
    with pytest.raises(ValueError, match="not a multiple of 8"):
        Trainer(_cfg(tiny_sd, mini_root, train_size=(30, 64)), None)


def test_same_seed_same_metrics_and_modes_run(tiny_sd, mini_root):
    results = {}
    for mode in PROMPT_MODES:
        t = Trainer(_cfg(tiny_sd, mini_root, prompt_mode=mode, steps=2), None, log=quiet)
        t.fit()
        results[mode] = t.evaluate()["cityscapes"].mat.clone()
    again = Trainer(_cfg(tiny_sd, mini_root, steps=2), None, log=quiet)
    again.fit()
    assert torch.equal(again.evaluate()["cityscapes"].mat, results["random_consistency"])


def _recorded_gradients(trainer: Trainer) -> list[list[torch.Tensor]]:
    """The gradients the optimizer steps with, one list per optimizer step."""
    inner = trainer.opt.optimizer  # accelerate's wrapper steps it once per optimizer step
    seen, step = [], inner.step

    def recording(*args, **kwargs):
        params = [p for g in inner.param_groups for p in g["params"] if p.grad is not None]
        seen.append([p.grad.detach().clone() for p in params])
        return step(*args, **kwargs)

    inner.step = recording
    return seen


def test_gradient_accumulation_matches_one_big_batch(tiny_sd, mini_root):
    """Two micro-batches of 4 step with the gradient of one batch of 8 (the parameters
    after Adam are no test of it: Adam's first steps turn a rounding-sized gradient into a
    step of the learning rate's size)."""
    a = Trainer(_cfg(tiny_sd, mini_root, steps=2, dropout=0.0), None, log=quiet)
    b = Trainer(_cfg(tiny_sd, mini_root, steps=2, dropout=0.0, grad_accum=2), None, log=quiet)
    grads_a, grads_b = _recorded_gradients(a), _recorded_gradients(b)
    a.fit()
    b.fit()
    assert len(grads_a) == len(grads_b) == 2  # one optimizer step per step, accumulated or not
    for ga, gb in zip(grads_a[0], grads_b[0], strict=True):
        torch.testing.assert_close(gb, ga, atol=1e-6, rtol=1e-4)
    for ea, eb in zip(a.state.log, b.state.log, strict=True):
        assert eb["ce"] == pytest.approx(ea["ce"], rel=1e-4)


def test_a_synthia_run_logs_the_mIoU_its_table_reports(tiny_sd, mini_root):
    lines = []
    cfg = _cfg(tiny_sd, mini_root, source="synthia", steps=1, eval_source=False)
    t = Trainer(cfg, None, log=lines.append)
    t.fit()
    sets = t.eval_sets()
    cms = t.evaluate(sets)
    (row,) = t.miou_rows(cms, sets)
    assert row["classes"] == len(SYNTHIA_EVAL_CLASSES) == 16
    assert row["mIoU"] == cms["cityscapes"].miou(SYNTHIA_EVAL_CLASSES)
    assert f"cityscapes: mIoU {row['mIoU']:.2f} (2 images)" in lines


def test_a_finished_run_is_reused_and_loads_without_a_trainer(tiny_sd, mini_root, tmp_path):
    cfg = _cfg(tiny_sd, mini_root, steps=2)
    lines = []
    first = train_dg(cfg, tmp_path, log=lines.append)
    assert any(line.startswith("training random_consistency from step 0") for line in lines)
    lines.clear()
    second = train_dg(cfg, tmp_path, log=lines.append)
    assert any(line.startswith("finished run") for line in lines)
    assert not any(line.startswith("training") for line in lines)  # nothing trained again
    assert second.state.step == 2 and second.state.log == first.state.log
    path = dg_run_dir(cfg, tmp_path) / "checkpoint.pt"
    model = load_dg_model(cfg, path)
    assert not model.training
    sets = first.eval_sets()
    x = sets["cityscapes"][0]["image"][None]
    with torch.no_grad():
        torch.testing.assert_close(model(x), first.model.eval()(x))
