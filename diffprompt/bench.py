"""Benchmark: what the pipeline costs, measured (``python -m diffprompt.bench``).

Each measurement runs in a child process of its own (``--child NAME``), so that its peak
resident memory is its own; the parent collects the children's JSON, writes
``results/bench/<name>.csv`` and prints a table. Numbers carry the machine they were
measured on (CPU model, threads, GPU name).

Measurements (``--only`` picks some):

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
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

GB = 1024**3


# ---------------------------------------------------------------------------------------
# The full-size SD 1.5 architecture, random weights, no download
# ---------------------------------------------------------------------------------------

#: Stable Diffusion 1.5's component configurations (the values of its published
#: ``config.json`` files), so the architecture can be built offline with random weights.
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280),
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                 cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)  # fmt: skip
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, sample_size=512,
                scaling_factor=0.18215)  # fmt: skip
SD15_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")  # fmt: skip


def sd15_backbone(folder: str | os.PathLike, cfg=None, seed: int = 0):
    """Return a DiffusionBackbone with SD 1.5's architecture and random weights. The
    tokenizer is the project's BPE over the prompt words (SD's CLIP vocabulary is not
    available offline), padded to 77 tokens as SD's; ids index SD's 49408-row table."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffprompt.backbones.diffusion import DiffusionBackbone
    from diffprompt.backbones.tokenizer import build_clip_tokenizer, caption_words
    from diffprompt.labels import CLASSES
    from diffprompt.prompts import prompt_corpus

    torch.manual_seed(seed)
    tok = build_clip_tokenizer(caption_words(prompt_corpus(CLASSES)), Path(folder) / "tok", 77)
    text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT, bos_token_id=tok.bos_token_id,
                                        eos_token_id=tok.eos_token_id,
                                        pad_token_id=tok.pad_token_id))  # fmt: skip
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                          beta_schedule="scaled_linear", clip_sample=False, steps_offset=1)  # fmt: skip
    return DiffusionBackbone(AutoencoderKL(**SD15_VAE), UNet2DConditionModel(**SD15_UNET), text,
                             tok, sched, cfg, source="sd15-architecture (random weights)")  # fmt: skip


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GiB (Linux: ru_maxrss is in KiB)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (GB if sys.platform == "darwin" else 1024**2)


def machine() -> dict:
    """The machine a number was measured on."""
    out = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "torch": torch.__version__}  # fmt: skip
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                out["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


# ---------------------------------------------------------------------------------------
# Measurements (each runs in its own process)
# ---------------------------------------------------------------------------------------


def child_tta_fullsize(checkpointing: bool = True, steps: int = 2) -> dict:
    """One full-size TTA step per objective at 512x512, batch 1, on the CPU (or the GPU)."""
    from diffprompt.backbones.diffusion import FeatureConfig
    from diffprompt.heads import SemanticFPN
    from diffprompt.labels import CLASSES
    from diffprompt.model import SegModel
    from diffprompt.prompts import PromptConfig, Prompts
    from diffprompt.runtime import resolve_device
    from diffprompt.tta import denoising_loss, entropy

    dev = resolve_device("auto")
    with tempfile.TemporaryDirectory() as tmp:
        bb = sd15_backbone(tmp, FeatureConfig()).to(dev)
    prompts = Prompts(bb.text_encoder, bb.tokenizer, CLASSES,
                      PromptConfig(mode="scene", learnable_scene=True, adapter=False,
                                   num_templates=1))  # fmt: skip
    head = SemanticFPN(bb.feature_channels, bb.feature_strides, 19, 256, 128)
    model = SegModel(bb, head, prompts).to(dev).eval()
    words = prompts.scene_prompt.words
    words.requires_grad_(True)
    if checkpointing:
        bb.unet.enable_gradient_checkpointing()
        bb.unet.train()
    opt = torch.optim.Adam([words], lr=1e-3)
    x = torch.rand(1, 3, 512, 512)
    z = bb.encode(x.to(dev))
    after_load = peak_rss_gb()
    out = {"weights_gb": sum(p.numel() * p.element_size() for p in model.parameters()) / GB,
           "rss_after_load_gb": after_load}  # fmt: skip
    for objective in ("denoise", "entropy"):
        times = []
        for s in range(steps):
            t0 = time.perf_counter()
            ctx = model.context(1)
            if objective == "denoise":
                loss = denoising_loss(bb, z, ctx, torch.Generator().manual_seed(s))
            else:
                feats = bb(x, ctx, latents=z)
                loss = entropy(model.decode(feats, None))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        out[f"{objective}_step_s"] = min(times)
    out["peak_rss_gb"] = peak_rss_gb()
    out["gradient_checkpointing"] = checkpointing
    out["device"] = str(dev)
    return out


def child_tta_miniature(target: str = "acdc_night") -> dict:
    """TTA of one miniature target with notebook 03's defaults (wall time of run_target)."""
    from diffprompt.train import TrainConfig
    from diffprompt.tta import TTAConfig, dg_trainer, run_target

    t0 = time.perf_counter()
    trainer = dg_trainer(TrainConfig(targets=()), log=lambda s: None)
    dg_s = time.perf_counter() - t0
    res = run_target(trainer, TTAConfig(target=target), log=lambda s: None)
    rows = {r["method"]: round(r["mIoU"], 2) for r in res["table"]}
    return {"target": target, "tta_s": res["seconds"], "dg_load_or_train_s": dg_s,
            "peak_rss_gb": peak_rss_gb(), **{f"mIoU {k}": v for k, v in rows.items()}}  # fmt: skip


CHILDREN: dict[str, Callable[[], dict]] = {
    "tta_miniature": child_tta_miniature,
    "tta_fullsize": child_tta_fullsize,
    "tta_fullsize_no_ckpt": lambda: child_tta_fullsize(checkpointing=False, steps=1),
}

#: Targets checked in the benchmark (name, row key, limit, "max" = at most).
TARGETS = [
    ("tta_miniature", "tta_s", 60.0, "TTA of one miniature target (s, 2 CPU cores)"),
    ("tta_fullsize", "peak_rss_gb", 8.0, "full-size SD 1.5 TTA step, 512x512, checkpointing: peak RSS (GB)"),
]  # fmt: skip


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
    import pandas as pd

    from diffprompt.paths import results_root
    from diffprompt.results import atomic_write_text

    names = a.only or list(CHILDREN)
    unknown = [n for n in names if n not in CHILDREN]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {list(CHILDREN)}")
    out = Path(a.out) if a.out else results_root() / "bench"
    info = machine()
    results = {}
    for n in names:
        print(f"measuring {n} ...", flush=True)
        results[n] = {**run_child(n), **info}
        df = pd.DataFrame([results[n]])
        atomic_write_text(out / f"{n}.csv", df.to_csv(index=False))
    rows = []
    for name, key, limit, what in TARGETS:
        if name in results:
            v = float(results[name][key])
            rows.append({"target": what, "measured": round(v, 2), "limit": limit,
                         "ratio to limit": round(v / limit, 3), "met": v <= limit})  # fmt: skip
    table = pd.DataFrame(rows)
    if len(table):
        atomic_write_text(out / "targets.csv", table.to_csv(index=False))
        print(table.to_markdown(index=False))
    for n, r in results.items():
        print(f"\n{n}: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in r.items()))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
