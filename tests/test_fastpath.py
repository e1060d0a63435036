"""The fast feature path equals the naive reference path; the benchmark follows the
notebooks' defaults."""

import ast
import re

import pytest
import torch

from diffprompt import bench
from diffprompt.build import build_model
from diffprompt.cache import MEMORY, FeatureCache
from diffprompt.data import build_dataset
from diffprompt.dg.config import TrainConfig
from diffprompt.experiments.dg import dg_config
from diffprompt.experiments.tta import tta_configs, tta_dg_config
from diffprompt.fastpath import (
    attention_backends,
    autocast,
    fast_features,
    naive_context,
    naive_features,
    to_channels_last,
)
from diffprompt.parameters import notebook_defaults
from diffprompt.paths import NOTEBOOKS


@pytest.fixture()
def model(tiny_sd):
    torch.manual_seed(0)
    return build_model(TrainConfig(model=str(tiny_sd), prompt_mode="fixed")).eval()


def _rel(a, b) -> float:
    """Relative L2 difference of two maps."""
    return float((a.float() - b.float()).norm() / b.float().norm())


def _calls(module, counter, key):
    return module.register_forward_hook(lambda *a: counter.__setitem__(key, counter[key] + 1))


def test_fast_and_naive_paths_give_the_same_maps(model, mini_root):

    ds = build_dataset("gta5", "train", mini_root)
    idx = [0, 1, 2]
    x = torch.stack([ds[i]["image"] for i in idx])
    bb = model.backbone
    calls = dict.fromkeys(("text", "vae", "conv_out"), 0)
    hooks = [
        _calls(bb.text_encoder, calls, "text"),
        _calls(bb.vae.encoder, calls, "vae"),
        _calls(bb.unet.conv_out, calls, "conv_out"),
    ]
    naive = naive_features(model, x)
    assert calls["text"] > 0 and calls["vae"] == 1 and calls["conv_out"] == 1  # everything ran
    assert bb.truncate  # restored
    MEMORY.clear()
    cache = FeatureCache(model, None)
    fast = fast_features(cache, ds, idx)
    assert set(fast) == set(naive)
    for k in naive:
        assert _rel(fast[k], naive[k]) < 1e-5, k  # fp32 rounding only
    calls.update(dict.fromkeys(calls, 0))
    again = fast_features(cache, ds, idx)  # images repeat: latents and context are cached
    assert calls == {"text": 0, "vae": 0, "conv_out": 0}  # and the UNet stops early
    for k in naive:
        assert torch.equal(again[k], fast[k])
    to_channels_last(bb)
    MEMORY.clear()
    cl = fast_features(FeatureCache(model, None), ds, idx)
    for k in naive:
        assert _rel(cl[k], naive[k]) < 5e-4, k  # other convolution kernels, fp32
    for h in hooks:
        h.remove()


def test_naive_context_recomputes_what_the_prompts_cache(model):

    ref = model.context(2)
    got = naive_context(model, 2)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    texts = ["a photo at night", "a painting of a city"]
    torch.testing.assert_close(
        naive_context(model, 2, texts), model.context(2, texts), atol=1e-5, rtol=1e-5
    )


def test_bf16_autocast_stays_close_and_sdpa_is_used(model, mini_root):

    assert "AttnProcessor2_0" in attention_backends(model.backbone.unet)
    x = build_dataset("gta5", "train", mini_root)[0]["image"][None]
    with torch.no_grad():
        ref = model.features(x)
        with autocast("cpu", "bf16"):
            low = model.features(x)
    for k in ref:
        rel = (low[k].float() - ref[k]).norm() / ref[k].norm()
        assert rel < 0.05, (k, float(rel))


def test_gemm_peak_counts_two_flops_per_multiply_add(monkeypatch):

    monkeypatch.setattr(bench, "_timed", lambda fn, reps: 0.5)
    assert bench.gemm_peak(sizes=(64, 128), reps=1) == pytest.approx(2 * 128**3 / 0.5)


def test_notebook_defaults_are_read_from_the_parameters_cell(tmp_path):
    """The benchmark builds its configurations from the notebooks' own defaults (no copy):
    what papermill infers and what notebook_defaults reads agree, and a changed default
    reaches the configuration."""
    import papermill as pm

    for name in ("02_dg_training", "03_tta"):
        inferred = pm.inspect_notebook(str(NOTEBOOKS / f"{name}.ipynb"))
        read = notebook_defaults(name)
        assert set(read) == set(inferred)
        for key, value in read.items():
            assert ast.literal_eval(inferred[key]["default"]) == value, (name, key)
    nb03 = notebook_defaults("03_tta")
    assert tta_dg_config(nb03)[0].max_train_images == nb03["dg_max_train_images"]
    assert tta_configs(nb03)["acdc_night"].steps == nb03["steps"]
    source = (NOTEBOOKS / "02_dg_training.py").read_text()
    text, n = re.subn(r"^steps: int = \d+", "steps: int = 7", source, flags=re.M)
    assert n == 1
    (tmp_path / "02_dg_training.py").write_text(text)
    assert dg_config(notebook_defaults("02_dg_training", tmp_path))[0].steps == 7


def test_the_benchmarks_tta_step_runs_on_the_embedded_model():
    out = bench.child_tta_fullsize(checkpointing=False, steps=1, miniature=True)
    assert out["denoise_step_s"] > 0 and out["entropy_step_s"] > 0
    assert out["peak_rss_gb"] >= out["rss_after_load_gb"] > 0
