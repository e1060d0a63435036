"""The fast feature path equals the naive reference path; the benchmark follows the
notebooks' defaults."""

import pytest
import torch

from diffprompt.train import TrainConfig


@pytest.fixture()
def model(tiny_sd):
    from diffprompt.train import build_model

    torch.manual_seed(0)
    return build_model(TrainConfig(model=str(tiny_sd), prompt_mode="fixed")).eval()


def _rel(a, b) -> float:
    """Relative L2 difference of two maps."""
    return float((a.float() - b.float()).norm() / b.float().norm())


def _calls(module, counter, key):
    return module.register_forward_hook(lambda *a: counter.__setitem__(key, counter[key] + 1))


def test_fast_and_naive_paths_give_the_same_maps(model, mini_root):
    from diffprompt.cache import MEMORY, FeatureCache
    from diffprompt.data import build_dataset
    from diffprompt.fastpath import fast_features, naive_features, to_channels_last

    ds = build_dataset("gta5", "train", mini_root)
    idx = [0, 1, 2]
    x = torch.stack([ds[i]["image"] for i in idx])
    bb = model.backbone
    calls = dict.fromkeys(("text", "vae", "conv_out"), 0)
    hooks = [_calls(bb.text_encoder, calls, "text"), _calls(bb.vae.encoder, calls, "vae"),
             _calls(bb.unet.conv_out, calls, "conv_out")]  # fmt: skip
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
    from diffprompt.fastpath import naive_context

    ref = model.context(2)
    got = naive_context(model, 2)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    texts = ["a photo at night", "a painting of a city"]
    torch.testing.assert_close(naive_context(model, 2, texts), model.context(2, texts),
                               atol=1e-5, rtol=1e-5)  # fmt: skip


def test_bf16_autocast_stays_close_and_sdpa_is_used(model, mini_root):
    from diffprompt.data import build_dataset
    from diffprompt.fastpath import attention_backends, autocast

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
    from diffprompt import bench

    monkeypatch.setattr(bench, "_timed", lambda fn, reps: 0.5)
    assert bench.gemm_peak(sizes=(64, 128), reps=1) == pytest.approx(2 * 128**3 / 0.5)


def test_benchmark_follows_the_notebooks_defaults():
    from pathlib import Path

    import papermill as pm

    from diffprompt import bench
    from diffprompt.tta import TTAConfig

    nb = Path(__file__).resolve().parent.parent / "notebooks"
    p03 = {k: v["default"] for k, v in pm.inspect_notebook(str(nb / "03_tta.ipynb")).items()}
    tta = TTAConfig()
    for name in ("steps", "lr", "fit_images", "batch_size", "eval_images", "eval_every",
                 "entropy_weight", "seed"):  # fmt: skip
        assert float(p03[name]) == float(getattr(tta, name)), name
    assert p03["source"].strip("\"'") == bench.NB03["source"]
    assert int(p03["dg_max_train_images"]) == bench.NB03["dg_max_train_images"]
    assert eval(p03["objectives"]) == list(bench.NB03["objectives"])
    p02 = {k: v["default"] for k, v in
           pm.inspect_notebook(str(nb / "02_dg_training.ipynb")).items()}  # fmt: skip
    cfg = TrainConfig()
    assert int(p02["max_train_images"]) == bench.NB02_TRAIN_IMAGES
    for name in ("steps", "batch_size", "lr", "prompt_pool", "num_prompts",
                 "consistency_weight", "vocabulary_size", "seed"):  # fmt: skip
        assert float(p02[name]) == float(getattr(cfg, name)), name
    assert int(p03["dg_steps"]) == cfg.steps and int(p03["dg_batch_size"]) == cfg.batch_size
