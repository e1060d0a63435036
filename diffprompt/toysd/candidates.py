"""A candidate embedded model in one command: train it within a short GPU window, then
measure how much its text reaches its features against the shipped toy-sd.

``python -m diffprompt.toysd.candidates --recipe gpu10`` (``make embedded-candidate``)
fine-tunes the shipped model with one of :data:`CANDIDATES` (a
:class:`~diffprompt.toysd.config.ToySDConfig` with options set; ``--set`` overrides
fields), checkpointing every few minutes with a usable model in ``<work>/model`` (a run cut
short still leaves one, and a rerun resumes), and ends by measuring the candidate and the
shipped model alike (:func:`~diffprompt.toysd.text_use.text_use`): table
``results/tables/toy_sd_text_use_<name>`` and manifest ``toy_sd_candidate_<name>``, whose
``verdict`` says whether the candidate may replace toy-sd
(:func:`~diffprompt.toysd.text_use.meets_the_bar`). The same command runs on a CPU at a
tiny size (the test suite does: ``--set`` shrinks it).

Nothing here replaces the shipped model: that stays a deliberate step (``--out
diffprompt/assets/toy-sd`` after a candidate met the bar, then ``make paper evidence``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from diffprompt.backbones.diffusion import DiffusionBackbone, FeatureConfig
from diffprompt.backbones.hub import resolve_model_folder
from diffprompt.data.roots import resolve_data_root
from diffprompt.preflight import parse_assignments
from diffprompt.results import Run
from diffprompt.runtime import resolve_device
from diffprompt.toysd.config import ToySDConfig, recorded_recipe
from diffprompt.toysd.pretrain import load_training_record, pretrain
from diffprompt.toysd.text_use import meets_the_bar, text_use, text_use_table

#: The features' blocks the measures read (all three up_blocks of toy-sd).
BLOCKS = (0, 1, 2)

# what every candidate shares: fine-tuned from toy-sd with the pooled-text path added and
# crop captions half the steps, the new path and the cross-attention trained (first)
_TEXT_PATH: dict[str, Any] = dict(
    init_from="toy-sd",
    text_embedding=True,
    crop_size=64,
    crop_share=0.5,
    train_parts=("text_embedding", "cross_attention"),
)

# ~10 min on one H100/H200: 7 min of fine-tuning from toy-sd (the new pooled-text path and
# the cross-attention first, then everything), checkpoints every 2 min, crop captions
# naming the classes present, sharper query/key; then the measures. A drop-in model: it
# reads prompts as the shipped one does (no padding mask).
_GPU10: dict[str, Any] = dict(
    **_TEXT_PATH,
    qk_init_scale=2.0,
    qk_lr_mult=2.0,
    parts_steps=500,
    unet_batch=256,
    unet_lr=2e-4,
    unet_steps=2800,
    warmup=100,
    log_every=50,
    eval_every=250,
    ckpt_every=500,
    ckpt_minutes=2.0,
    time_limit_min=7.0,
)

# what fits in under an hour on a 2-core CPU: only the pooled-text path and the
# cross-attention projections trained, from toy-sd, with crop captions
_CPU_TEXTPATH: dict[str, Any] = dict(
    **_TEXT_PATH,
    unet_batch=32,
    unet_lr=1e-3,
    unet_steps=300,
    warmup=20,
    log_every=10,
    eval_every=50,
    ckpt_every=50,
    ckpt_minutes=10.0,
    time_limit_min=35.0,
)

#: Candidate recipes: name -> ToySDConfig fields over the shipped recipe.
CANDIDATES: dict[str, dict[str, Any]] = {
    "gpu10": _GPU10,
    # gpu10 with padding masked in cross-attention (class words then share attention only
    # with the prompt's own tokens); read with trimmed prompts (PromptConfig.trim_scene)
    "gpu10-masked": {**_GPU10, "mask_padding": True},
    "cpu-textpath": _CPU_TEXTPATH,
    # cpu-textpath with a sharper query/key (attention logits x4 at the start, twice the
    # learning rate) and a 40-min window on 2 CPU cores
    "cpu-textpath-qk": {
        **_CPU_TEXTPATH,
        "qk_init_scale": 2.0,
        "qk_lr_mult": 2.0,
        "unet_steps": 320,
        "time_limit_min": 40.0,
    },
}


def candidate_config(name: str, overrides: Sequence[str] = ()) -> ToySDConfig:
    """Return the ToySDConfig of candidate ``name`` with ``KEY=VALUE`` overrides."""
    if name not in CANDIDATES:
        raise ValueError(f"unknown candidate recipe {name!r}; choose from {', '.join(CANDIDATES)}")
    return ToySDConfig(**{**CANDIDATES[name], **parse_assignments(ToySDConfig, overrides)})


def measure(folder: str | Path, root: Path, device: torch.device, **kw: Any) -> dict[str, float]:
    """Return :func:`text_use` of the toy model in ``folder`` (features of all its blocks)."""
    bb = DiffusionBackbone.from_pretrained(folder, FeatureConfig(blocks=BLOCKS), device=device)
    return text_use(bb, root, **kw)


def run_candidate(
    name: str,
    cfg: ToySDConfig,
    out: str | Path,
    work: str | Path,
    device: str = "auto",
    baseline: str = "toy-sd",
    results_dir: str | Path | None = None,
    images: int = 16,
    probe_steps: int = 300,
    probe_images: tuple[int, int] = (120, 64),
    train: bool = True,
) -> dict[str, Any]:
    """Train candidate ``name`` (unless ``train`` is False: ``out`` is measured as it is),
    measure it and ``baseline`` alike, write the table and manifest; return {measures,
    verdict, why, train_seconds (this command's), unet_steps_trained, unet_seconds (the
    model's UNet stage, from its training record)}."""
    # before any work: the data, the model to fine-tune, the baseline, the folder to measure
    root = resolve_data_root(cfg.data_root)
    what = "toy model to fine-tune (init_from)"
    if train and cfg.init_from:
        resolve_model_folder(cfg.init_from, what=what, required=("unet", "vae", "tokenizer"))
    base_folder = resolve_model_folder(baseline, what="baseline model") if baseline else None
    if not train:
        resolve_model_folder(out, what="candidate model (--measure-only)", required=("unet",))
    dev = resolve_device(device)
    params = {
        "recipe": name,
        "config": recorded_recipe(cfg),
        "baseline": baseline,
        "images": images,
        "probe_steps": probe_steps,
        "probe_images": list(probe_images),
        "device": str(dev),
    }
    run = Run(f"toy_sd_candidate_{name}", params, seed=cfg.seed, root=results_dir)
    t0 = time.time()
    if train:
        folder = pretrain(cfg, out, work, device=str(dev))
    else:
        folder = Path(out)
    spent = time.time() - t0  # this command's training (0 with train=False)
    unet_log = [e for e in load_training_record(folder)["log"] if e.get("stage") == "unet"]
    trained = {"unet_steps_trained": unet_log[-1]["step"] if unet_log else 0}
    trained["unet_seconds"] = round(unet_log[-1]["seconds"], 1) if unet_log else 0.0
    kw = dict(images=images, probe_steps=probe_steps, seed=cfg.seed, probe_images=probe_images)
    measures = {name: measure(folder, root, dev, **kw)}
    if base_folder is not None:
        measures = {baseline: measure(base_folder, root, dev, **kw), **measures}
    table = text_use_table(measures)
    run.table(table, f"toy_sd_text_use_{name}", float_format="%.2f", caption=CAPTION)
    verdict, why = (None, "no baseline measured")
    if base_folder is not None:
        verdict, why = meets_the_bar(measures[name], measures[baseline])
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev)
    run.finish(
        model=str(folder),
        verdict=verdict,
        why=why,
        train_seconds=round(spent, 1),
        accelerator=gpu,
        **trained,
        measures=measures,
    )
    return {"measures": measures, "verdict": verdict, "why": why, "train_seconds": spent, **trained}


#: Caption of the candidate tables.
CAPTION = (
    "Text use of the shipped toy-sd and a candidate, measured alike: % relative L2 change of "
    "the UNet features between scene prompts and against the empty prompt (GTA5 val), "
    "class-word attention argmax mIoU (GTA5 val), the caption's relative loss gap at t<=600 "
    "(Cityscapes val), linear-probe mIoU (GTA5 train -> val)."
)


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line, train and measure a candidate, print its table and verdict."""
    p = argparse.ArgumentParser(description="Train and measure a candidate embedded model.")
    p.add_argument("--recipe", default="gpu10", help=f"one of {', '.join(CANDIDATES)}")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="ToySDConfig fields")
    p.add_argument("--out", default="", help="model folder (default results/runs/candidates/NAME)")
    p.add_argument("--work", default="", help="checkpoints (default: OUT.work; resumable)")
    p.add_argument("--device", default="auto")
    p.add_argument("--baseline", default="toy-sd", help='model to compare with ("": none)')
    p.add_argument("--results", default=None, help="results folder (default: results/)")
    p.add_argument("--images", type=int, default=16, help="held-out images per measure")
    p.add_argument("--probe-steps", type=int, default=300)
    p.add_argument("--probe-images", default="120,64", help="train,eval images of the probe")
    p.add_argument("--measure-only", action="store_true", help="measure OUT as it is")
    a = p.parse_args(argv)
    try:
        cfg = candidate_config(a.recipe, a.set)
        probe_images = tuple(int(v) for v in a.probe_images.split(","))
        if len(probe_images) != 2 or min(probe_images) < 1 or a.images < 1:
            raise ValueError("--images and both --probe-images counts must be >= 1")
    except ValueError as e:
        raise SystemExit(f"toysd.candidates: {e}") from None
    out = a.out or f"results/runs/candidates/{a.recipe}"
    result = run_candidate(
        a.recipe,
        cfg,
        out,
        a.work or out + ".work",
        a.device,
        a.baseline,
        a.results,
        a.images,
        a.probe_steps,
        probe_images,  # type: ignore[arg-type]
        train=not a.measure_only,
    )
    print(text_use_table(result["measures"]).round(2).to_string())
    print("verdict:", result["verdict"], "-", result["why"])


if __name__ == "__main__":
    main()
