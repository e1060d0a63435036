"""Benchmark: what the pipeline costs, measured (``python -m diffprompt.bench``).

Each measurement runs in a child process of its own (``--child NAME``), so that its peak
resident memory is its own; the parent collects the children's JSON, writes
``results/bench/<name>.csv`` and prints a table. Numbers carry the machine they were
measured on (CPU model, threads, GPU name).

Measurements (``--only`` picks some); each compares the fast path with the naive reference
path of :mod:`diffprompt.fastpath` where it has one:

- ``features_miniature`` / ``features_fullsize``: feature extraction (images/s), naive
  (text encoder, VAE and the whole UNet every call) against fast (first pass: latents
  computed; then images repeating: latents and context cached), with the largest difference
  of their maps; at full size also the UNet forward's FLOPs (torch's FLOP counter), its
  achieved FLOP/s and the measured fp32 GEMM peak. Targets: fast >= 2x naive at full size;
  UNet forward >= 50% of the GEMM peak.
- ``loss_resolution_miniature``: the DG step at each loss resolution (notebook 02's
  defaults): seconds per step and the source-val mIoU reached at equal steps;
- ``dg_step_miniature``: a DG training step of notebook 02's defaults, on cached features
  (fast) against recomputing the features of the batch under each prompt (naive).
- ``bf16_miniature``: the change in mIoU (and speed) when the backbone runs under bf16
  autocast, notebook 02's model on ACDC night.

- ``tta_miniature``: test-time adaptation of one miniature target with the defaults of
  notebook 03 (the DG model of notebook 02's defaults is trained first when missing; its
  time is reported apart). Target: at most 60 s on 2 CPU cores.
- ``tta_fullsize``: one TTA step (denoise, and entropy through a Semantic FPN head) of the
  full-size Stable Diffusion 1.5 architecture at 512x512, batch 1, built from its
  configuration with random weights (nothing is downloaded), with gradient checkpointing.
  Target: peak resident memory at most 8 GB on the CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from diffprompt.backbones.diffusion import DiffusionBackbone, FeatureConfig
from diffprompt.backbones.tokenizer import build_clip_tokenizer, caption_words
from diffprompt.build import build_model
from diffprompt.cache import MEMORY, FeatureCache
from diffprompt.data import build_dataset
from diffprompt.data.roots import resolve_data_root
from diffprompt.dg.config import LOSS_RESOLUTIONS, TrainConfig
from diffprompt.dg.losses import mean_entropy
from diffprompt.dg.runs import dg_model, train_dg
from diffprompt.evaluate import ConfusionMatrix
from diffprompt.experiments.dg import dg_config
from diffprompt.experiments.tta import TargetRows, run_target, tta_configs, tta_dg_config
from diffprompt.fastpath import (
    ImageList,
    attention_backends,
    autocast,
    fast_features,
    naive_features,
    to_channels_last,
)
from diffprompt.heads import SemanticFPN
from diffprompt.io import atomic_write_text, machine_info
from diffprompt.labels import CLASSES, NUM_CLASSES
from diffprompt.model import SegModel
from diffprompt.parameters import notebook_defaults
from diffprompt.paths import results_root
from diffprompt.prompts import PromptConfig, Prompts, prompt_corpus
from diffprompt.runtime import resolve_device
from diffprompt.tta import denoising_loss

GB = 1024**3


# ---------------------------------------------------------------------------------------
# The full-size SD 1.5 architecture, random weights, no download
# ---------------------------------------------------------------------------------------

#: Stable Diffusion 1.5's component configurations (the values of its published
#: ``config.json`` files), so the architecture can be built offline with random weights.
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
SD15_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)
SD15_TEXT = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
)


def sd15_backbone(folder: str | os.PathLike, cfg=None, seed: int = 0):
    """Return a DiffusionBackbone with SD 1.5's architecture and random weights. The
    tokenizer is the project's BPE over the prompt words (SD's CLIP vocabulary is not
    available offline), padded to 77 tokens as SD's; ids index SD's 49408-row table."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tok = build_clip_tokenizer(caption_words(prompt_corpus(CLASSES)), Path(folder) / "tok", 77)
    text = CLIPTextModel(
        CLIPTextConfig(
            **SD15_TEXT,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )
    sched = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
    )
    return DiffusionBackbone(
        AutoencoderKL(**SD15_VAE),
        UNet2DConditionModel(**SD15_UNET),
        text,
        tok,
        sched,
        cfg,
        origin="sd15-architecture (random weights)",
    )


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GiB (Linux: ru_maxrss is in KiB)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (GB if sys.platform == "darwin" else 1024**2)


# ---------------------------------------------------------------------------------------
# Measurements (each runs in its own process)
# ---------------------------------------------------------------------------------------


def child_tta_fullsize(checkpointing: bool = True, steps: int = 2, miniature: bool = False) -> dict:
    """One full-size TTA step per objective at 512x512, batch 1, on the CPU (or the GPU);
    ``miniature``: the same step of the bundled model at the miniature's 128x256."""

    dev = resolve_device("auto")
    if miniature:
        bb = DiffusionBackbone.from_pretrained("toy-sd", FeatureConfig()).to(dev)
        size, widths = (128, 256), (32, 32)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            bb = sd15_backbone(tmp, FeatureConfig()).to(dev)
        size, widths = (512, 512), (256, 128)
    bb.requires_grad_(False)
    prompts = Prompts(
        bb.text_encoder,
        bb.tokenizer,
        CLASSES,
        PromptConfig(tokens="scene", learnable_scene=True, adapter=False, num_templates=1),
    )
    head = SemanticFPN(bb.feature_channels, bb.feature_strides, 19, *widths)
    model = SegModel(bb, head, prompts).to(dev).eval()
    words = prompts.scene_prompt.words
    words.requires_grad_(True)
    if checkpointing:
        bb.unet.enable_gradient_checkpointing()
        bb.unet.train()
    opt = torch.optim.Adam([words], lr=1e-3)
    x = torch.rand(1, 3, *size)
    z = bb.encode(x.to(dev))
    after_load = peak_rss_gb()
    out = {
        "weights_gb": sum(p.numel() * p.element_size() for p in model.parameters()) / GB,
        "rss_after_load_gb": after_load,
    }
    for objective in ("denoise", "entropy"):
        times = []
        for s in range(steps):
            t0 = time.perf_counter()
            ctx = model.context(1)
            if objective == "denoise":
                loss = denoising_loss(bb, z, ctx, torch.Generator().manual_seed(s))
            else:
                feats = bb(x, ctx, latents=z)
                loss = mean_entropy(model.decode(feats, None))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        out[f"{objective}_step_s"] = min(times)
    out["peak_rss_gb"] = peak_rss_gb()
    out["gradient_checkpointing"] = checkpointing
    out["device"] = str(dev)
    return out


def quiet(_: str) -> None:
    """A log function that prints nothing."""


def child_tta_miniature(target: str = "acdc_night") -> dict:
    """TTA of one miniature target with notebook 03's defaults (wall time of run_target; the
    DG model, from Cityscapes, is trained first when missing and timed apart)."""
    params = {**notebook_defaults("03_tta"), "target": target}
    t0 = time.perf_counter()
    dg = dg_model(tta_dg_config(params)[0], log=quiet)
    dg_s = time.perf_counter() - t0
    rows = TargetRows(tuple(params["objectives"]))
    res = run_target(dg, tta_configs(params)[target], rows, log=quiet)
    mious = {r.table_row()["method"]: round(r.miou, 2) for r in res.rows}
    return {
        "target": target,
        "tta_s": res.seconds,
        "dg_load_or_train_s": dg_s,
        "peak_rss_gb": peak_rss_gb(),
        **{f"mIoU {k}": v for k, v in mious.items()},
    }


def _timed(fn, reps: int) -> float:
    """Best wall time of ``reps`` calls of ``fn`` (s)."""
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def gemm_peak(
    sizes: Sequence[int] = (1024, 2048, 3072), reps: int = 3, device: str | torch.device = "cpu"
) -> float:
    """Return torch's measured fp32 GEMM peak (FLOP/s): the best of square matmuls."""
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device)
        b = torch.randn(n, n, device=device)
        a @ b  # warm-up
        sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

        def mm(a=a, b=b, sync=sync):
            a @ b
            sync()

        best = max(best, 2 * n**3 / _timed(mm, reps))
    return best


def _feature_speed(model, images: torch.Tensor, name: str, batch: int, reps: int) -> dict:
    """Images/s of the naive path and of the fast path (first pass: latents computed;
    second pass: latents cached, as where images repeat) over ``images``; and the largest
    difference between their maps."""

    ds = ImageList(images, name)
    n = len(images)
    chunks = [list(range(s, min(n, s + batch))) for s in range(0, n, batch)]

    ref: list = []

    def naive():
        ref[:] = [naive_features(model, images[c]) for c in chunks]

    MEMORY.clear()
    cache = FeatureCache(model, None)
    t0 = time.perf_counter()
    first = [fast_features(cache, ds, c) for c in chunks]
    fast_first = time.perf_counter() - t0
    fast = _timed(lambda: [fast_features(cache, ds, c) for c in chunks], reps)
    t_naive = _timed(naive, reps)
    to_channels_last(model.backbone)  # the optional memory format, on the same cached inputs
    fast_cl = _timed(lambda: [fast_features(cache, ds, c) for c in chunks], reps)
    model.backbone.to(memory_format=torch.contiguous_format)
    diff = max(float((a[k] - b[k]).abs().max()) for a, b in zip(ref, first, strict=True) for k in a)
    return {
        "images": n,
        "batch": batch,
        "naive_img_s": n / t_naive,
        "fast_first_pass_img_s": n / fast_first,
        "fast_img_s": n / fast,
        "fast_over_naive": t_naive / fast,
        "fast_first_pass_over_naive": t_naive / fast_first,
        "max_abs_diff": diff,
        "fast_channels_last_img_s": n / fast_cl,
        "channels_last_over_fast": fast / fast_cl,
    }


def child_features_miniature() -> dict:
    """Feature extraction of the bundled model on miniature images (128x256), batch 8."""

    dev = resolve_device("auto")
    model = build_model(TrainConfig(prompt_mode="fixed"), dev).eval()
    ds = build_dataset("cityscapes", "val", resolve_data_root("miniature"))
    images = torch.stack([ds[i]["image"] for i in range(16)]).to(dev)
    out = _feature_speed(model, images, "bench-miniature", batch=8, reps=2)
    out["peak_rss_gb"] = peak_rss_gb()
    return out


def child_features_fullsize() -> dict:
    """Feature extraction of the SD 1.5 architecture at 512x512, batch 1 (the paper's
    setting: all four decoder blocks at t = 1, class tokens + scene prompt); plus the
    measured GEMM peak and the full UNet forward's achieved FLOP/s as a fraction of it."""
    dev = resolve_device("auto")
    with tempfile.TemporaryDirectory() as tmp:
        bb = sd15_backbone(tmp, FeatureConfig()).to(dev)
    bb.requires_grad_(False)  # frozen, as in DG training and feature extraction
    prompts = Prompts(
        bb.text_encoder,
        bb.tokenizer,
        CLASSES,
        PromptConfig(tokens="scene", num_templates=4, adapter=False),
    )
    head = SemanticFPN(bb.feature_channels, bb.feature_strides, 19, 256, 128)
    model = SegModel(bb, head, prompts).to(dev).eval()
    images = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0)).to(dev)
    out = _feature_speed(model, images, "bench-fullsize", batch=1, reps=1)
    # the full UNet forward against the GEMM peak
    with torch.no_grad():
        z = bb.encode(images[:1])
        ctx = model.context(1)
        t = torch.full((1,), 1, device=dev)
        bb.unet(z, t, ctx)  # warm-up
        with FlopCounterMode(display=False) as fc:
            bb.unet(z, t, ctx)
        flops = fc.get_total_flops()
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        secs = _timed(lambda: (bb.unet(z, t, ctx), sync()), 2)
        feats = bb(None, ctx, latents=z)
    # a DG step of the paper preset (features online every step): the feature pass measured
    # above (VAE + truncated UNet, cached text; naive: everything) + the head's step, measured
    opt = torch.optim.AdamW(head.parameters(), lr=8e-5)
    labels = torch.randint(0, 19, (1, 512, 512), generator=torch.Generator().manual_seed(0))

    def head_step():
        loss = torch.nn.functional.cross_entropy(model.decode(feats, (512, 512)), labels.to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()

    head.train()
    head_s = _timed(head_step, 2)
    out.update(
        head_step_s=head_s,
        dg_step_fast_s=1 / out["fast_first_pass_img_s"] + head_s,
        dg_step_naive_s=1 / out["naive_img_s"] + head_s,
    )
    out["dg_step_fast_over_naive"] = out["dg_step_naive_s"] / out["dg_step_fast_s"]
    peak = gemm_peak(device=dev)
    out.update(
        unet_gflop=flops / 1e9,
        unet_forward_s=secs,
        unet_gflop_s=flops / secs / 1e9,
        gemm_peak_gflop_s=peak / 1e9,
        unet_fraction_of_gemm_peak=flops / secs / peak,
        attention=str(attention_backends(bb.unet)),
        peak_rss_gb=peak_rss_gb(),
        device=str(dev),
    )
    return out


def child_dg_step_miniature() -> dict:
    """A DG training step of the embedded default (notebook 02): the fast path trains on
    cached features; the naive one recomputes text encoder, VAE and full UNet every step."""

    steps = 20
    nb02 = dg_config(notebook_defaults("02_dg_training"))[0]
    cfg = dataclasses.replace(
        nb02, steps=steps, targets=(), eval_source=False, log_every=10**6, ckpt_every=0
    )
    with tempfile.TemporaryDirectory() as tmp:
        MEMORY.clear()
        t0 = time.perf_counter()
        tr = train_dg(cfg, tmp, log=quiet, retrain=True)  # features cached on the way
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        tr = train_dg(cfg, tmp, log=quiet, retrain=True)  # every feature cached
        fast = (time.perf_counter() - t0) / steps
    # the naive step: features recomputed for the batch under each of the K prompts
    model = tr.model
    x = torch.stack([tr.data.source[i]["image"] for i in range(cfg.batch_size)])
    texts = ["a photo of a street at night", "a painting of a city in fog"][: cfg.num_prompts]

    def naive_step():
        for text in texts:
            feats = naive_features(model, x, [text] * len(x))
            loss = model.decode(feats, tuple(x.shape[-2:])).logsumexp(1).mean()
            loss.backward()

    naive = _timed(naive_step, 2)
    return {
        "fast_step_s": fast,
        "first_run_step_s": first / steps,
        "naive_step_s": naive,
        "fast_over_naive": naive / fast,
        "batch": cfg.batch_size,
        "K": cfg.num_prompts,
        "peak_rss_gb": peak_rss_gb(),
    }


def child_loss_resolution_miniature() -> dict:
    """The DG step at each loss resolution (``TrainConfig.loss_resolution``) with notebook
    02's defaults on warm cached features, one seed: seconds per step (a second run, every
    feature cached) and the source-val mIoU reached at equal steps (the curve every
    ``eval_every`` steps and at the end)."""
    nb02 = dg_config(notebook_defaults("02_dg_training"))[0]
    out: dict[str, Any] = {"steps": nb02.steps, "batch": nb02.batch_size, "K": nb02.num_prompts}
    with tempfile.TemporaryDirectory() as tmp:
        MEMORY.clear()
        for res in LOSS_RESOLUTIONS:
            cfg = dataclasses.replace(
                nb02, loss_resolution=res, targets=(), log_every=10**6, ckpt_every=0
            )
            # the curve (its features cached on the way, kept in memory for the next run)
            curve = train_dg(cfg, Path(tmp) / "curve", log=quiet, retrain=True)
            plain = dataclasses.replace(cfg, eval_every=0)  # every feature cached, no curve
            timed = train_dg(plain, Path(tmp) / "timed", log=quiet, retrain=True)
            out[f"{res}_step_s"] = timed.state.seconds / cfg.steps
            points = [(e["step"], e["curve_mIoU"]) for e in curve.state.log if "curve_mIoU" in e]
            out[f"{res}_val_miou"] = points[-1][1]
            out[f"{res}_curve"] = " ".join(f"{s}:{m:.2f}" for s, m in points)
    for res in LOSS_RESOLUTIONS:
        out[f"labels_over_{res}_step"] = out["labels_step_s"] / out[f"{res}_step_s"]
        out[f"{res}_minus_labels_miou"] = out[f"{res}_val_miou"] - out["labels_val_miou"]
    out["peak_rss_gb"] = peak_rss_gb()
    return out


def child_bf16_miniature() -> dict:
    """The change in mIoU and speed when the backbone runs under bf16 autocast: notebook
    03's DG model (from Cityscapes; trained first when missing), on ACDC night, with fp32 and
    with bf16 features."""

    dg = dg_model(tta_dg_config(notebook_defaults("03_tta"))[0], log=quiet)
    ds = build_dataset("acdc_night", "val", dg.root)
    model = dg.model.eval()
    device = model.backbone.unet.device
    out = {}
    for dtype in ("no", "bf16"):
        MEMORY.clear()
        cm = ConfusionMatrix(NUM_CLASSES)
        t0 = time.perf_counter()
        for s in range(0, 8, 4):  # 8 images: bf16 is emulated (slow) on CPUs without it
            batch = [ds[i] for i in range(s, s + 4)]
            x = torch.stack([b["image"] for b in batch])
            with torch.no_grad(), autocast(device, dtype):
                feats = model.features(x)
            pred = model.decode({k: v.float() for k, v in feats.items()}, tuple(x.shape[-2:]))
            cm.update(pred.argmax(1), torch.stack([b["mask"] for b in batch]))
        out[f"{dtype}_s"] = time.perf_counter() - t0
        out[f"{dtype}_miou"] = cm.miou()
    out["miou_change_bf16"] = out["bf16_miou"] - out["no_miou"]
    out["bf16_speedup"] = out["no_s"] / out["bf16_s"]
    return out


CHILDREN: dict[str, Callable[[], dict]] = {
    "features_miniature": child_features_miniature,
    "features_fullsize": child_features_fullsize,
    "dg_step_miniature": child_dg_step_miniature,
    "loss_resolution_miniature": child_loss_resolution_miniature,
    "tta_miniature": child_tta_miniature,
    "bf16_miniature": child_bf16_miniature,  # after tta_miniature: reuses its DG model
    "tta_step_miniature": lambda: child_tta_fullsize(checkpointing=False, steps=3, miniature=True),
    "tta_fullsize": lambda: child_tta_fullsize(checkpointing=True, steps=1),
    "tta_fullsize_no_ckpt": lambda: child_tta_fullsize(checkpointing=False, steps=1),
}
#: What a plain run measures (``--only tta_fullsize_no_ckpt`` adds the memory without
#: gradient checkpointing), sized to finish within 10 minutes on 2 CPU cores.
DEFAULT = [n for n in CHILDREN if n != "tta_fullsize_no_ckpt"]

LOSS_STEP = "DG step, notebook 02: loss at the labels' resolution / at the head's, area (x)"
LOSS_MIOU = "DG, notebook 02, equal steps: source-val mIoU, area loss - labels loss (points)"
#: Limits checked in the benchmark: (measurement, its key, limit, "min" (at least) or "max"
#: (at most), what it is).
LIMITS = [
    (
        "features_fullsize",
        "fast_over_naive",
        2.0,
        "min",
        "feature extraction, SD 1.5 at 512x512, images repeating: fast path / naive path (x)",
    ),
    (
        "features_fullsize",
        "unet_fraction_of_gemm_peak",
        0.5,
        "min",
        "full-size UNet forward: achieved FLOP/s / measured GEMM peak",
    ),
    (
        "tta_fullsize",
        "peak_rss_gb",
        8.0,
        "max",
        "full-size SD 1.5 TTA step, 512x512, batch 1, checkpointing: peak RSS (GB)",
    ),
    ("tta_miniature", "tta_s", 60.0, "max", "TTA of one miniature target, notebook 03 (s)"),
    # the DG step at the labels' resolution / at the head's (area), notebook 02 (x)
    ("loss_resolution_miniature", "labels_over_area_step", 1.3, "min", LOSS_STEP),
    # equal steps: source-val mIoU with the area loss - with the labels' (points)
    ("loss_resolution_miniature", "area_minus_labels_miou", -1.0, "min", LOSS_MIOU),
]


def run_child(name: str, timeout: float = 1800) -> dict:
    """Run one measurement in a fresh process and return its JSON result."""
    cmd = [sys.executable, "-m", "diffprompt.bench", "--child", name]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode:
        raise RuntimeError(f"benchmark {name} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Measure diffprompt's costs; write results/bench.")
    p.add_argument("--only", nargs="*", default=None, help=f"some of {list(CHILDREN)}")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help="folder for the CSV files (default results/bench)")
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(CHILDREN[a.child]()))
        return 0
    names = a.only or DEFAULT
    unknown = [n for n in names if n not in CHILDREN]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {list(CHILDREN)}")
    out = Path(a.out) if a.out else results_root() / "bench"
    info = machine_info()
    results = {}
    for n in names:
        print(f"measuring {n} ...", flush=True)
        results[n] = {**run_child(n), **info}
        df = pd.DataFrame([results[n]])
        atomic_write_text(out / f"{n}.csv", df.to_csv(index=False))
    rows = []
    for name, key, limit, kind, what in LIMITS:
        if name in results:
            v = float(results[name][key])
            met = v >= limit if kind == "min" else v <= limit
            rows.append(
                {
                    "target": what,
                    "measured": round(v, 3),
                    "limit": f"{'>=' if kind == 'min' else '<='} {limit}",
                    "ratio to limit": round(v / limit, 3),
                    "met": met,
                }
            )
    table = pd.DataFrame(rows)
    if len(table):
        atomic_write_text(out / "targets.csv", table.to_csv(index=False))
        print(table.to_markdown(index=False))
    for n, r in results.items():
        print(
            f"\n{n}: "
            + ", ".join(
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
