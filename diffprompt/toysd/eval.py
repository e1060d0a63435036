"""Evidence of what the embedded model learned (and what it did not).

Each function measures one claim of the model card on held-out data (evaluation splits are
never used for training, so they are fair here):

- :func:`text_usage_by_timestep`: does the caption lower the denoising loss?
- :func:`class_word_attention`: do class words' cross-attention maps find their classes?
- :func:`reconstruction_by_class`: what does the VAE keep of each class?
- :func:`probe`: do the UNet's features beat the same UNet with random weights?
- :func:`sample_figure`: images sampled from captions.

How much the text reaches the features (prompt sensitivity, with binding, the loss gap and
the probe gathered per model, as candidate recipes are judged) is
:mod:`diffprompt.toysd.text_use`.

Every mIoU averages over :func:`diffprompt.benchmarks.eval_classes` of the data set the
model is scored on, :data:`SOURCE` (all 19 classes for GTA5).

Notebook ``06_embedded_model`` runs them all (the ``evidence_*`` functions) and writes
tables, figures and a manifest to ``results/``; ``python -m diffprompt.toysd.eval`` then
writes the model card (``README.md`` of the model folder, :mod:`diffprompt.toysd.card`) from
them.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from diffprompt.backbones.diffusion import DiffusionBackbone, FeatureConfig
from diffprompt.backbones.hub import ModelNotFoundError, resolve_model_folder
from diffprompt.backbones.variants import random_unet
from diffprompt.benchmarks import TARGETS, eval_classes
from diffprompt.data import DEFAULT_SPLIT, build_dataset
from diffprompt.evaluate import ConfusionMatrix, predicted_classes
from diffprompt.labels import CLASSES, IGNORE_INDEX, NUM_CLASSES, colorize
from diffprompt.text import encode_scene, encode_texts, word_positions
from diffprompt.toysd.card import write_card
from diffprompt.toysd.pretrain import load_training_record
from diffprompt.toysd.recipe import paired_losses

if TYPE_CHECKING:  # annotations only: diffusers and matplotlib are imported where used
    from diffusers import AutoencoderKL
    from matplotlib.figure import Figure

#: How each class is named inside a prompt that lists all 19 (as the captions name them).
CLASS_WORDS = CLASSES

#: The data set class-word attention, the VAE and the probe are measured on (val split; the
#: probe is trained on its train split), a source of the benchmarks.
SOURCE = "gta5"

#: Data sets whose first image shows the class-word maps (every miniature data set).
DOMAINS = ("gta5", "synthia", *TARGETS)

#: Captions used to show what the model learned (sampled-conditions figure).
DEMO_CAPTIONS = (
    "a photo of a street scene in daylight showing road, building, vegetation and sky, "
    "with two cars",
    "a photo of a street scene at night showing road, building and sky, with two cars",
    "a photo of a street scene in fog showing road, building, vegetation and sky, with a bus",
    "a photo of a street scene in snow showing road, building, vegetation and sky, with a car",
    "a photo of a street scene in the rain showing road, building and sky, with trees",
    "a rendered street scene in daylight showing road, building, vegetation and sky, "
    "with many cars",
)

#: Evidence tables: name -> (float format, caption).
TABLES = {
    "toy_sd_text_usage": (
        "%.4f",
        "Denoising loss of held-out Cityscapes-val latents with their caption and with the "
        "empty prompt (same noise and timestep).",
    ),
    "toy_sd_class_word_attention": (
        "%.1f",
        "mIoU (%) of the argmax over the 19 class words' cross-attention maps, GTA5 val, no head.",
    ),
    "toy_sd_vae_reconstruction": ("%.1f", "VAE reconstruction PSNR (dB) per class, GTA5 val."),
    "toy_sd_text_use": (
        "%.2f",
        "Text use: % relative L2 change of the UNet features between scene prompts and against "
        "the empty prompt (GTA5 val), class-word binding mIoU (GTA5 val), the caption's "
        "relative loss gap at t<=600 (Cityscapes val), probe mIoU; candidates as measured by "
        "their toy_sd_candidate runs.",
    ),
    "toy_sd_probe": (
        "%.2f",
        "Linear probe on UNet features (empty prompt, t=1), trained on GTA5 train, mIoU (%) on "
        "GTA5 val.",
    ),
}


def _stack(
    dataset: Dataset, n: int, start: int = 0
) -> tuple[torch.Tensor, torch.Tensor | None, list[str]]:
    idx = range(start, min(len(dataset), start + n))
    samples = [dataset[i] for i in idx]
    x = torch.stack([s["image"] for s in samples])
    y = torch.stack([s["mask"] for s in samples]) if "mask" in samples[0] else None
    return x, y, [s["meta"]["caption"] for s in samples]


# ---------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------


def masks_padding(bb: DiffusionBackbone) -> bool:
    """Return whether ``bb``'s model was trained with padding masked in cross-attention (its
    training record says so; a model without one, e.g. real SD, was not)."""
    try:
        folder = resolve_model_folder(bb.origin)
        return bool(load_training_record(folder)["recipe"].get("mask_padding", False))
    except (ModelNotFoundError, OSError, KeyError, ValueError):
        return False


@torch.no_grad()
def text_usage_by_timestep(
    bb: DiffusionBackbone,
    images: torch.Tensor,
    captions: Sequence[str],
    timesteps: Sequence[int] = (50, 200, 400, 600, 800, 950),
    seed: int = 0,
    repeats: int = 2,
) -> pd.DataFrame:
    """Return, per timestep, the denoising loss of images (N, 3, H, W) with the true caption
    and with "" (columns: caption loss, empty loss, relative gap %, caption wins).

    Same images, noise and timestep for both; ``caption wins`` is the share of (image, noise)
    pairs where the caption gives the lower loss (0.5 = the text is ignored).
    """
    scale = 1.0 if bb.cfg.scale_latents else bb.vae.config.scaling_factor
    z = bb.encode(images) * scale
    g = torch.Generator().manual_seed(seed)
    models = (bb.unet, bb.text_encoder, bb.scheduler, bb.tokenizer)
    rows = []
    for t in timesteps:
        c, e = paired_losses(*models, z, captions, g, repeats, [int(t)], masks_padding(bb))
        c, e = c.cpu(), e.cpu()
        caption_loss, empty_loss = c.mean(), e.mean()
        rows.append(
            {
                "timestep": int(t),
                "caption loss": caption_loss.item(),
                "empty loss": empty_loss.item(),
                "relative gap %": 100 * (empty_loss - caption_loss).item() / empty_loss.item(),
                "caption wins": (c < e).float().mean().item(),
            }
        )
    return pd.DataFrame(rows).set_index("timestep")


def class_prompt(style: str = "a rendered street scene in daylight") -> str:
    """Return a caption-style prompt that names all 19 classes (as the captions do)."""
    return f"{style} showing " + ", ".join(CLASS_WORDS[:-1]) + " and " + CLASS_WORDS[-1]


@torch.no_grad()
def class_word_maps(
    bb: DiffusionBackbone,
    images: torch.Tensor,
    prompt: str | None = None,
    timestep: int = 1,
    noise: bool = False,
    seed: int = 0,
) -> torch.Tensor:
    """Return the cross-attention maps of the 19 class words (B, 19, H, W), image resolution.

    The context is one prompt naming every class (:func:`class_prompt`); a class's map is the
    mean over its word's tokens, summed over the UNet blocks that have cross-attention,
    each resized to the image. ``bb`` reads the maps with a feature config of its own blocks
    for this call only.
    """
    prompt = prompt or class_prompt()
    cfg = FeatureConfig(
        blocks=bb.blocks,
        timesteps=(timestep,),
        noise=noise,
        seed=seed,
        attention_tokens=bb.tokenizer.model_max_length,  # every token of the prompt
        scale_latents=bb.cfg.scale_latents,
    )
    old, bb.cfg = bb.cfg, cfg
    try:
        ctx = encode_scene(bb.text_encoder, bb.tokenizer, prompt, trim=masks_padding(bb))[None]
        f = bb(images, ctx)
    finally:
        bb.cfg = old
    pos = word_positions(bb.tokenizer, prompt, CLASS_WORDS)
    maps = 0
    for k in [k for k in f if k.startswith("a")]:
        a = torch.stack([f[k][:, p].mean(1) for p in pos], 1)  # (B, 19, h, w)
        maps = maps + F.interpolate(a.float(), size=images.shape[-2:], mode="bilinear")
    return maps


def class_word_attention(
    bb: DiffusionBackbone,
    dataset: Dataset,
    source: str,
    n_images: int = 32,
    batch: int = 8,
    timesteps: Sequence[int] = (1, 200),
    seed: int = 0,
) -> pd.DataFrame:
    """Return, per timestep, the mIoU of the argmax over class-word attention maps (no head)
    and the per-class IoU, on the first ``n_images`` of a labeled data set of ``source``
    (the mIoU averages over ``eval_classes(source, dataset)``)."""
    classes = eval_classes(source, dataset)
    rows = []
    for t in timesteps:
        cm = ConfusionMatrix()
        for s in range(0, min(n_images, len(dataset)), batch):
            x, y, _ = _stack(dataset, min(batch, n_images - s), s)
            m = class_word_maps(bb, x, timestep=t, noise=t > 1, seed=seed)
            cm.update(predicted_classes(m), y)
        iou = cm.iou() * 100
        per_class = {c: iou[i] for i, c in enumerate(CLASSES)}
        rows.append({"timestep": t, "mIoU": cm.miou(classes), **per_class})
    return pd.DataFrame(rows).set_index("timestep")


@torch.no_grad()
def reconstruction_by_class(
    vae: AutoencoderKL, dataset: Dataset, n_images: int = 32, batch: int = 8
) -> pd.Series:
    """Return the VAE's reconstruction PSNR (dB) over each class's pixels and over all pixels
    (index: the 19 classes, then "all pixels"; NaN for a class absent from the images)."""
    se = torch.zeros(NUM_CLASSES + 1, dtype=torch.float64)
    cnt = torch.zeros(NUM_CLASSES + 1, dtype=torch.float64)
    dev = vae.device
    for s in range(0, min(n_images, len(dataset)), batch):
        x, y, _ = _stack(dataset, min(batch, n_images - s), s)
        xi = x.to(dev, vae.dtype) * 2 - 1
        rec = vae.decode(vae.encode(xi).latent_dist.mode()).sample.float().cpu().clamp(-1, 1)
        err = ((rec - (x * 2 - 1)) ** 2).mean(1).double()  # (B, H, W)
        se[-1] += err.sum()
        cnt[-1] += err.numel()
        valid = y != IGNORE_INDEX
        se[:-1] += torch.bincount(y[valid], err[valid], minlength=NUM_CLASSES)[:NUM_CLASSES]
        cnt[:-1] += torch.bincount(y[valid], minlength=NUM_CLASSES)[:NUM_CLASSES].double()
    psnr = 10 * torch.log10(4 / (se / cnt.clamp(min=1)))  # images span [-1, 1]: peak 2
    psnr[cnt == 0] = float("nan")
    return pd.Series(psnr.numpy(), index=[*CLASSES, "all pixels"])


@torch.no_grad()
def _features(
    bb: DiffusionBackbone,
    dataset: Dataset,
    n: int,
    context: torch.Tensor,
    stride: int,
    batch: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    feats, masks = [], []
    for s in range(0, min(n, len(dataset)), batch):
        x, y, _ = _stack(dataset, min(batch, n - s), s)
        f = bb(x, context)
        size = (x.shape[-2] // stride, x.shape[-1] // stride)
        keys = [k for k in sorted(f) if k.startswith("s")]
        maps = [F.interpolate(f[k].float(), size=size, mode="bilinear") for k in keys]
        feats.append(torch.cat(maps, 1).cpu())
        masks.append(y)
    return torch.cat(feats), torch.cat(masks)


def probe(
    bb: DiffusionBackbone,
    train_set: Dataset,
    eval_set: Dataset,
    context: torch.Tensor,
    source: str,
    n_train: int = 120,
    n_eval: int = 64,
    steps: int = 300,
    lr: float = 1e-2,
    stride: int = 4,
    seed: int = 0,
) -> float:
    """Return the mIoU (%) of a linear probe (1x1 conv + batch norm) on frozen features.

    Features of ``n_train`` images of ``train_set`` (a data set of ``source``) are computed
    once (maps resized to 1/``stride``), the probe is trained with AdamW on random batches
    of them, and its upsampled logits are scored on ``eval_set``, averaging over
    ``eval_classes(source, eval_set)``.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    ft, mt = _features(bb, train_set, n_train, context, stride)
    fe, me = _features(bb, eval_set, n_eval, context, stride)
    head = nn.Sequential(nn.BatchNorm2d(ft.shape[1]), nn.Conv2d(ft.shape[1], NUM_CLASSES, 1))
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        idx = torch.randint(0, len(ft), (8,), generator=g)
        logits = F.interpolate(head(ft[idx]), size=mt.shape[-2:], mode="bilinear")
        loss = F.cross_entropy(logits, mt[idx], ignore_index=IGNORE_INDEX)
        opt.zero_grad()
        loss.backward()
        opt.step()
        lr_schedule.step()
    head.eval()
    cm = ConfusionMatrix()
    with torch.no_grad():
        for s in range(0, len(fe), 16):
            logits = F.interpolate(head(fe[s : s + 16]), size=me.shape[-2:], mode="bilinear")
            cm.update(predicted_classes(logits), me[s : s + 16])
    return cm.miou(eval_classes(source, eval_set))


def sample_images(
    folder: str | Path,
    captions: Sequence[str] = DEMO_CAPTIONS,
    steps: int = 30,
    guidance: float = 4.0,
    seed: int = 0,
    height: int = 128,
    width: int = 256,
) -> np.ndarray:
    """Return images (N, H, W, 3) in [0, 1] sampled from captions with DDIM and guidance."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        folder,
        safety_checker=None,
        requires_safety_checker=False,
        torch_dtype=torch.float32,
        local_files_only=True,
        use_safetensors=True,
    )
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(seed)
    out = pipe(
        list(captions),
        height=height,
        width=width,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=g,
        output_type="np",
    )
    return out.images


# ---------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------


def sample_figure(images: np.ndarray, captions: Sequence[str]) -> Figure:
    """Return a matplotlib figure: one sampled image per caption, the caption as title."""
    import matplotlib.pyplot as plt

    n = len(images)
    cols = 2
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 4.2, rows * 2.5), squeeze=False)
    for ax, img, cap in zip(axes.flat, images, captions, strict=False):
        ax.imshow(img)
        ax.set_title(cap.replace(" showing", "\nshowing"), fontsize=6.5)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return fig


def attention_figure(
    bb: DiffusionBackbone,
    samples: dict[str, dict[str, Any]],
    words: Sequence[str] = ("road", "building", "vegetation", "sky", "car"),
) -> Figure:
    """Return a figure: per data set (a row per sample), the image, maps of a few class words
    and their argmax."""
    import matplotlib.pyplot as plt

    idx = [CLASSES.index(w) for w in words]
    cols = len(words) + 2  # the image, a map per word, the argmax over all 19
    size = (1.6 * cols, 0.9 * len(samples))
    fig, axes = plt.subplots(len(samples), cols, figsize=size, squeeze=False)
    for r, (name, s) in enumerate(samples.items()):
        m = class_word_maps(bb, s["image"][None])[0]  # (19, H, W)
        axes[r, 0].imshow(s["image"].permute(1, 2, 0).numpy())
        axes[r, 0].set_ylabel(name, fontsize=6)
        for c, i in enumerate(idx):
            axes[r, c + 1].imshow(m[i].numpy(), cmap="magma")
            if r == 0:
                axes[r, c + 1].set_title(CLASSES[i], fontsize=7)
        axes[r, -1].imshow(colorize(m.argmax(0).numpy()))
        if r == 0:
            axes[r, 0].set_title("image", fontsize=7)
            axes[r, -1].set_title("argmax of 19", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout(pad=0.2)
    return fig


def training_figure(record: dict[str, Any]) -> Figure:
    """Return a figure of the pretraining curves: VAE loss, UNet loss (smoothed) and the
    held-out loss with the caption and with the empty prompt."""
    import matplotlib.pyplot as plt

    log = pd.DataFrame(record["log"])
    fig, axes = plt.subplots(1, 3, figsize=(11, 2.8))
    vae = log[log.stage == "vae"]
    axes[0].plot(vae.step, vae.loss, lw=0.8)
    axes[0].set(title="VAE: L1 + MSE + KL", xlabel="step", yscale="log")
    unet = log[(log.stage == "unet") & log.loss.notna()]
    axes[1].plot(unet.step, unet.loss, lw=0.5, alpha=0.5, label="batch")
    axes[1].plot(unet.step, unet.loss.rolling(10, min_periods=1).mean(), lw=1.2, label="mean of 10")
    axes[1].set(title="UNet: noise-prediction MSE", xlabel="step")
    axes[1].legend(fontsize=7)
    ev = (
        log[log.get("caption_loss", pd.Series(dtype=float)).notna()]
        if "caption_loss" in log
        else log[:0]
    )
    axes[2].plot(ev.step, ev.caption_loss, marker=".", label="with caption")
    axes[2].plot(ev.step, ev.empty_loss, marker=".", label='with ""')
    axes[2].set(title="held-out loss (same noise)", xlabel="step")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------
# The evidence of notebook 06, table by table
# ---------------------------------------------------------------------------------------


class TableWriter(Protocol):
    """What :func:`write_table` writes through: a results ``Run``."""

    def table(
        self, df: pd.DataFrame, name: str, float_format: str = ..., caption: str | None = ...
    ) -> Path: ...


def write_table(run: TableWriter, name: str, df: pd.DataFrame) -> pd.DataFrame:
    """Write the evidence table ``name`` (a key of :data:`TABLES`) with its float format and
    caption through ``run``; return ``df``."""
    fmt, caption = TABLES[name]
    run.table(df, name, float_format=fmt, caption=caption)
    return df


def evidence_text(
    bb: DiffusionBackbone, root: str | os.PathLike, n_images: int = 32, seed: int = 0
) -> pd.DataFrame:
    """Return text usage per timestep on the first ``n_images`` of Cityscapes val (see
    :func:`text_usage_by_timestep`)."""
    x, _, caps = _stack(build_dataset("cityscapes", "val", root), n_images)
    return text_usage_by_timestep(bb, x, caps, seed=seed)


def evidence_attention(
    bb: DiffusionBackbone, root: str | os.PathLike, n_images: int = 32, seed: int = 0
) -> tuple[pd.DataFrame, Figure]:
    """Return (class-word attention table on the source's val split, figure of the maps for
    one image of every data set of :data:`DOMAINS`)."""
    val = build_dataset(SOURCE, "val", root)
    att = class_word_attention(bb, val, SOURCE, n_images, seed=seed)
    samples = {n: build_dataset(n, DEFAULT_SPLIT.get(n, "val"), root)[0] for n in DOMAINS}
    return att, attention_figure(bb, samples)


def evidence_vae(
    bb: DiffusionBackbone,
    root: str | os.PathLike,
    n_images: int = 32,
    others: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Return the per-class reconstruction PSNR on the source's val split of the model's VAE
    (column "bundled") and of ``others`` (name -> diffusers VAE folder)."""
    from diffusers import AutoencoderKL

    vaes = {"bundled": bb.vae}
    for name, folder in (others or {}).items():
        vaes[name] = AutoencoderKL.from_pretrained(
            folder, local_files_only=True, use_safetensors=True
        )
    ds = build_dataset(SOURCE, "val", root)
    return pd.DataFrame({k: reconstruction_by_class(v, ds, n_images) for k, v in vaes.items()})


def evidence_probe(
    bb: DiffusionBackbone,
    root: str | os.PathLike,
    steps: int = 300,
    n_train: int = 120,
    n_eval: int = 64,
    seed: int = 0,
) -> pd.DataFrame:
    """Return the linear-probe mIoU (source train -> val) of the pretrained UNet and of the
    same UNet with random weights (index: "pretrained UNet", "random UNet")."""
    train, val = build_dataset(SOURCE, "train", root), build_dataset(SOURCE, "val", root)
    ctx = encode_texts(bb.text_encoder, bb.tokenizer, [""]).last_hidden_state
    kw = dict(source=SOURCE, n_train=n_train, n_eval=n_eval, steps=steps, seed=seed)
    pre = probe(bb, train, val, ctx, **kw)
    rnd = probe(random_unet(bb, seed), train, val, ctx, **kw)
    return pd.DataFrame({"mIoU": [pre, rnd]}, index=["pretrained UNet", "random UNet"])


def main(argv: Sequence[str] | None = None) -> None:
    """Write the model card of ``--model`` from its training record and the evidence tables
    under ``--results``; print its path."""
    p = argparse.ArgumentParser(
        description="Write the embedded model's card from its training record and the evidence "
        "tables of notebook 06_embedded_model."
    )
    p.add_argument("--model", default="toy-sd", help="toy-sd (bundled) or a model folder")
    p.add_argument("--results", default=None, help="results folder (default: results/)")
    a = p.parse_args(argv)
    folder = resolve_model_folder(a.model)
    print("wrote", write_card(folder, Path(a.results) if a.results else None))


if __name__ == "__main__":
    main()
