"""Evidence of what the embedded model learned (and what it did not).

Each function measures one claim of the model card on held-out data (evaluation splits are
never used for training, so they are fair here):

- :func:`text_usage_by_timestep`: does the caption lower the denoising loss?
- :func:`class_word_attention`: do class words' cross-attention maps find their classes?
- :func:`reconstruction_by_class`: what does the VAE keep of each class?
- :func:`probe`: do the UNet's features beat the same UNet with random weights?
- :func:`sample_figure`: images sampled from captions.

Notebook ``06_embedded_model`` runs them all and writes tables, figures and a manifest to
``results/``; ``python -m diffprompt.backbones.toy_sd_eval`` then writes the model card
(``README.md`` of the model folder) from them.
"""

from __future__ import annotations

import argparse
import copy
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from diffprompt.backbones.diffusion import DiffusionBackbone, FeatureConfig
from diffprompt.backbones.toy_sd_recipe import paired_losses
from diffprompt.backbones.variants import random_unet
from diffprompt.evaluate import ConfusionMatrix
from diffprompt.labels import CLASSES, IGNORE_INDEX, NUM_CLASSES

#: How each class is named inside a prompt that lists all 19 (as the captions name them).
CLASS_WORDS = CLASSES

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


def _stack(dataset, n: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor | None, list[str]]:
    idx = range(start, min(len(dataset), start + n))
    samples = [dataset[i] for i in idx]
    x = torch.stack([s["image"] for s in samples])
    y = torch.stack([s["mask"] for s in samples]) if "mask" in samples[0] else None
    return x, y, [s["meta"]["caption"] for s in samples]


@torch.no_grad()
def text_usage_by_timestep(
    bb: DiffusionBackbone, images: torch.Tensor, captions: Sequence[str],
    timesteps: Sequence[int] = (50, 200, 400, 600, 800, 950), seed: int = 0, repeats: int = 2,
) -> pd.DataFrame:  # fmt: skip
    """Return, per timestep, the denoising loss with the true caption and with "".

    Same images, noise and timestep for both; ``caption wins`` is the share of (image, noise)
    pairs where the caption gives the lower loss (0.5 = the text is ignored).
    """
    z = bb.encode(images) * (1.0 if bb.cfg.scale_latents else bb.vae.config.scaling_factor)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for t in timesteps:
        c, e = paired_losses(bb.unet, bb.text_encoder, bb.scheduler, bb.tokenizer, z, captions,
                             g, repeats, [int(t)])  # fmt: skip
        c, e = c.cpu(), e.cpu()
        rows.append({"timestep": int(t), "caption loss": c.mean().item(), "empty loss": e.mean().item(),
                     "relative gap %": 100 * (e.mean() - c.mean()).item() / e.mean().item(),
                     "caption wins": (c < e).float().mean().item()})  # fmt: skip
    return pd.DataFrame(rows).set_index("timestep")


def class_prompt(style: str = "a rendered street scene in daylight") -> str:
    """Return a caption-style prompt that names all 19 classes (as the captions do)."""
    return f"{style} showing " + ", ".join(CLASS_WORDS[:-1]) + " and " + CLASS_WORDS[-1]


@torch.no_grad()
def class_word_maps(bb: DiffusionBackbone, images: torch.Tensor, prompt: str | None = None,
                    timestep: int = 1, noise: bool = False, seed: int = 0) -> torch.Tensor:  # fmt: skip
    """Return the cross-attention maps of the 19 class words (B, 19, H, W), image resolution.

    The context is one prompt naming every class (:func:`class_prompt`); a class's map is the
    mean over its word's tokens, summed over the UNet blocks that have cross-attention,
    each resized to the image.
    """
    from diffprompt.prompts import encode_texts, word_positions

    prompt = prompt or class_prompt()
    n_ctx = bb.tokenizer.model_max_length
    probe = copy.copy(bb.cfg)
    cfg = FeatureConfig(blocks=bb.blocks, timesteps=(timestep,), noise=noise, seed=seed,
                        attention_tokens=n_ctx, scale_latents=probe.scale_latents)  # fmt: skip
    old, bb.cfg = bb.cfg, cfg
    try:
        ctx = encode_texts(bb.text_encoder, bb.tokenizer, [prompt]).last_hidden_state
        f = bb(images, ctx)
    finally:
        bb.cfg = old
    pos = word_positions(bb.tokenizer, prompt, CLASS_WORDS)
    maps = 0
    for k in [k for k in f if k.startswith("a")]:
        a = torch.stack([f[k][:, p].mean(1) for p in pos], 1)  # (B, 19, h, w)
        maps = maps + F.interpolate(a.float(), size=images.shape[-2:], mode="bilinear")
    return maps


def class_word_attention(bb: DiffusionBackbone, dataset, n_images: int = 32, batch: int = 8,
                         timesteps: Sequence[int] = (1, 200), seed: int = 0) -> pd.DataFrame:  # fmt: skip
    """Return, per timestep, the mIoU of the argmax over class-word attention maps (no head)
    and the per-class IoU, on the first ``n_images`` of a labeled data set."""
    rows = []
    for t in timesteps:
        cm = ConfusionMatrix()
        for s in range(0, min(n_images, len(dataset)), batch):
            x, y, _ = _stack(dataset, min(batch, n_images - s), s)
            m = class_word_maps(bb, x, timestep=t, noise=t > 1, seed=seed)
            cm.update(m.argmax(1), y)
        iou = cm.iou() * 100
        rows.append({"timestep": t, "mIoU": cm.miou(getattr(dataset, "eval_classes", None)),
                     **{c: iou[i] for i, c in enumerate(CLASSES)}})  # fmt: skip
    return pd.DataFrame(rows).set_index("timestep")


@torch.no_grad()
def reconstruction_by_class(vae, dataset, n_images: int = 32, batch: int = 8) -> pd.Series:
    """Return the VAE's reconstruction PSNR (dB) over all pixels and over each class's pixels."""
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
def _features(bb: DiffusionBackbone, dataset, n: int, context: torch.Tensor, stride: int,
              batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    feats, masks = [], []
    for s in range(0, min(n, len(dataset)), batch):
        x, y, _ = _stack(dataset, min(batch, n - s), s)
        f = bb(x, context)
        size = (x.shape[-2] // stride, x.shape[-1] // stride)
        feats.append(torch.cat([F.interpolate(f[k].float(), size=size, mode="bilinear")
                                for k in sorted(f) if k.startswith("s")], 1).cpu())  # fmt: skip
        masks.append(y)
    return torch.cat(feats), torch.cat(masks)


def probe(bb: DiffusionBackbone, train_set, eval_set, context: torch.Tensor, n_train: int = 120,
          n_eval: int = 64, steps: int = 300, lr: float = 1e-2, stride: int = 4,
          seed: int = 0) -> float:  # fmt: skip
    """Return the mIoU (%) of a linear probe (1x1 conv + batch norm) on frozen features.

    Features of ``n_train`` images are computed once (maps resized to 1/``stride``), the
    probe is trained with AdamW on random batches of them, and its upsampled logits are
    scored on ``eval_set``.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    ft, mt = _features(bb, train_set, n_train, context, stride)
    fe, me = _features(bb, eval_set, n_eval, context, stride)
    head = nn.Sequential(nn.BatchNorm2d(ft.shape[1]), nn.Conv2d(ft.shape[1], NUM_CLASSES, 1))
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        idx = torch.randint(0, len(ft), (8,), generator=g)
        logits = F.interpolate(head(ft[idx]), size=mt.shape[-2:], mode="bilinear")
        loss = F.cross_entropy(logits, mt[idx], ignore_index=IGNORE_INDEX)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    head.eval()
    cm = ConfusionMatrix()
    with torch.no_grad():
        for s in range(0, len(fe), 16):
            logits = F.interpolate(head(fe[s : s + 16]), size=me.shape[-2:], mode="bilinear")
            cm.update(logits.argmax(1), me[s : s + 16])
    return cm.miou(getattr(eval_set, "eval_classes", None))


def sample_images(folder: str | Path, captions: Sequence[str] = DEMO_CAPTIONS, steps: int = 30,
                  guidance: float = 4.0, seed: int = 0, height: int = 128,
                  width: int = 256) -> np.ndarray:  # fmt: skip
    """Return images (N, H, W, 3) in [0, 1] sampled from captions with DDIM and guidance."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None,
                                                   requires_safety_checker=False,
                                                   torch_dtype=torch.float32,
                                                   local_files_only=True,
                                                   use_safetensors=True)  # fmt: skip
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(seed)
    out = pipe(list(captions), height=height, width=width, num_inference_steps=steps,
               guidance_scale=guidance, generator=g, output_type="np")  # fmt: skip
    return out.images


def sample_figure(images: np.ndarray, captions: Sequence[str]):
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


def attention_figure(bb: DiffusionBackbone, samples: dict[str, dict],
                     words: Sequence[str] = ("road", "building", "vegetation", "sky", "car")):  # fmt: skip
    """Return a figure: per domain, the image, maps of a few class words and their argmax."""
    import matplotlib.pyplot as plt

    from diffprompt.labels import colorize

    idx = [CLASSES.index(w) for w in words]
    fig, axes = plt.subplots(len(samples), len(words) + 2,
                             figsize=(1.6 * (len(words) + 2), 0.9 * len(samples)), squeeze=False)  # fmt: skip
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


def training_figure(record: dict):
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


#: What the project asks of the embedded model (issue "backbone and embedded model").
MIN_ATTENTION_MIOU = 25.0  # class-word attention argmax, mIoU on the source
MIN_PROBE_GAIN = 5.0  # linear probe: pretrained minus random UNet, mIoU on the source
THIN = ("pole", "traffic light", "traffic sign", "person", "rider", "bicycle")


def _assessment(use: pd.DataFrame, att: pd.DataFrame, rec: pd.DataFrame,
                pr: pd.DataFrame) -> list[str]:  # fmt: skip
    wins = use["caption wins"]
    best_att = att["mIoU"].max()
    gain = pr["mIoU"].iloc[0] - pr["mIoU"].iloc[1]
    out = [
        f"- Uses its text: the caption gives the lower loss in {100 * wins.min():.0f}-"
        f"{100 * wins.max():.0f}% of (image, noise) pairs per timestep (50% would mean it is "
        f"ignored), but by little: {use['relative gap %'].min():.1f}-"
        f"{use['relative gap %'].max():.1f}% of the loss. Images sampled from captions: "
        "`results/figures/toy_sd_samples.png`.",
        f"- Class words {'bind' if best_att >= MIN_ATTENTION_MIOU else 'do NOT bind'} to their "
        f"regions: {best_att:.1f} mIoU from the class words' cross-attention argmax "
        f"(asked: >= {MIN_ATTENTION_MIOU:.0f}). "
        + (
            ""
            if best_att >= MIN_ATTENTION_MIOU
            else "The maps follow image structure (edges, the road) rather than classes; prompts "
            "still change the features, but not through class-specific attention."
        ),
        f"- Its features {'beat' if gain >= MIN_PROBE_GAIN else 'do not beat'} the same UNet "
        f"with random weights by {gain:.1f} mIoU (asked: >= {MIN_PROBE_GAIN:.0f}).",
    ]
    others = [c for c in rec.columns if c != "bundled"]
    x4 = next((c for c in others if "x4" in c), None)
    x8 = next((c for c in others if "x8" in c), None)
    if x4 and x8:
        thin = rec.loc[list(THIN)]
        better = int((thin[x4] > thin[x8]).sum())
        out.append(
            f"- VAE factor: trained alike, the 4x VAE reconstructs {better} of {len(THIN)} thin "
            f"classes better than an 8x one (mean {thin[x4].mean():.1f} against "
            f"{thin[x8].mean():.1f} dB; all pixels {rec.loc['all pixels', x4]:.1f} against "
            f"{rec.loc['all pixels', x8]:.1f}), so the model uses 4x."
        )
    return out


def model_card(record: dict, tables: dict[str, pd.DataFrame], manifest: dict | None = None) -> str:
    """Return the model card (markdown) from the training record and the evidence tables."""
    r = record["recipe"]
    log = pd.DataFrame(record["log"])
    vae_done = log[log.stage == "vae_done"].iloc[0]
    unet = log[log.stage == "unet"]
    last = unet.iloc[-1]
    steps = min(r.get("unet_stop") or r["unet_steps"], r["unet_steps"])
    params = record["parameters"]
    use, att, rec, pr = (tables[k] for k in ("text_usage", "attention", "vae", "probe"))
    lines = [
        "# toy-sd: the embedded Stable-Diffusion-style model",
        "",
        "A tiny latent diffusion model in diffusers format (AutoencoderKL, UNet2DConditionModel,",
        "CLIPTextModel, CLIPTokenizer, DDPMScheduler), pretrained by `diffprompt.backbones.toy_sd`",
        "on the embedded miniature so that every notebook runs on a laptop CPU. It stands in",
        "for Stable Diffusion; it is not a replica of it.",
        "",
        "## Data",
        f"- {record['training_images']} images ({r['height']}x{r['width']}) of the *training* splits "
        "of the ten miniature data sets (GTA5 train, SYNTHIA, Cityscapes/BDD100K/Mapillary train, "
        "ACDC fog/night/rain/snow train, Dark Zurich train) with their captions; no evaluation "
        "split is used. Horizontal flips.",
        "",
        "## Architecture",
        f"- VAE: {len(r['vae_channels']) - 1} downsamplings ({2 ** (len(r['vae_channels']) - 1)}x), "
        f"channels {tuple(r['vae_channels'])}, {r['latent_channels']} latent channels, "
        f"{params['vae'] / 1e6:.2f}M parameters; latent scaling factor "
        f"{record['scaling_factor']:.4f} (1 / std of the training latents).",
        f"- UNet: channels {tuple(r['unet_channels'])}, heads {tuple(r['attention_heads'])}, "
        "cross-attention in every level but the coarsest (only cross-attention at the finest), "
        f"{params['unet'] / 1e6:.2f}M parameters.",
        f"- Text encoder: CLIP text transformer, width {r['text_width']}, {r['text_layers']} layers, "
        f"{params['text_encoder'] / 1e6:.2f}M parameters; tokenizer: CLIP BPE over the caption and "
        "prompt words (each one token) plus byte symbols, max length "
        f"{r['max_length']}.",
        "- Weights stored in fp16 (loaded as fp32 by default).",
        "- Features (`DiffusionBackbone`, all up_blocks): s0 (B, 128, H/16, W/16), s1 (B, 128, "
        "H/8, W/8), s2 (B, 64, H/4, W/4); with `attention_tokens=C`, class-token maps a1, a2 "
        "(B, C, ...) at the strides of s1, s2.",
        "",
        "## Training" + (f" (on {record['device']})" if record.get("device") else ""),
        f"- VAE: {r['vae_steps']} steps, batch {r['vae_batch']}, AdamW lr {r['vae_lr']}, "
        f"L1 + MSE + {r['kl_weight']} KL; {vae_done.seconds / 60:.1f} min.",
        f"- UNet + text encoder (trained jointly: a random text encoder has no meaning to "
        f"freeze): {steps} steps"
        + (
            f" of a cosine schedule laid out for {r['unet_steps']}"
            if steps != r["unet_steps"]
            else ""
        )
        + f", batch {r['unet_batch']}, AdamW lr {r['unet_lr']} (text {r['text_lr']}), caption "
        f"dropout {r['caption_dropout']}; last logged batch loss {last.loss:.4f}; "
        f"{last.seconds / 60:.1f} min.",
        "- Regenerate: `python -m diffprompt.backbones.toy_sd --set "
        + " ".join(
            f"{k}={v}"
            for k, v in (
                ("vae_steps", r["vae_steps"]),
                ("unet_steps", r["unet_steps"]),
                ("unet_stop", steps),
                ("unet_batch", r["unet_batch"]),
            )
        )
        + "`"
        " (deterministic for a device type).",
        "",
        "## Evidence (held-out data; `results/tables/toy_sd_*`)",
        "",
        "Denoising loss with the true caption and with the empty prompt (Cityscapes val):",
        "",
        use.to_markdown(floatfmt=".4f"),
        "",
        "Argmax over the 19 class words' cross-attention maps, no head (GTA5 val): "
        + ", ".join(f"t={t}: {v:.1f} mIoU" for t, v in att["mIoU"].items())
        + ".",
        "",
        "VAE reconstruction PSNR (dB), GTA5 val: "
        + ", ".join(f"{c} {rec.loc['all pixels', c]:.1f}" for c in rec.columns)
        + "; per class in `results/tables/toy_sd_vae_reconstruction.md`.",
        "",
        "Linear probe on the UNet's features, GTA5 train -> val: "
        + ", ".join(f"{i} {v:.1f}" for i, v in pr["mIoU"].items())
        + " mIoU.",
    ]
    lines += ["", "## Assessment", ""] + _assessment(use, att, rec, pr)
    if manifest:
        lines += ["", f"Measured by run `{manifest['name']}` at git {manifest['git']['sha'][:10]} "
                  f"on {manifest['device'].get('device', 'cpu')}."]  # fmt: skip
    return "\n".join(lines) + "\n"


#: Evidence tables: name -> (float format, caption).
TABLES = {
    "toy_sd_text_usage": ("%.4f", "Denoising loss of held-out Cityscapes-val latents with their "
                          "caption and with the empty prompt (same noise and timestep)."),
    "toy_sd_class_word_attention": ("%.1f", "mIoU (%) of the argmax over the 19 class words' "
                                    "cross-attention maps, GTA5 val, no head."),
    "toy_sd_vae_reconstruction": ("%.1f", "VAE reconstruction PSNR (dB) per class, GTA5 val."),
    "toy_sd_probe": ("%.2f", "Linear probe on UNet features (empty prompt, t=1), trained on "
                     "GTA5 train, mIoU (%) on GTA5 val."),
}  # fmt: skip
DOMAINS = ("gta5", "synthia", "cityscapes", "bdd100k", "mapillary", "acdc_fog", "acdc_night",
           "acdc_rain", "acdc_snow", "darkzurich")  # fmt: skip


def record(run, name: str, df: pd.DataFrame) -> pd.DataFrame:
    """Write an evidence table with its format and caption through a results ``Run``."""
    fmt, caption = TABLES[name]
    run.table(df, name, float_format=fmt, caption=caption)
    return df


def evidence_text(bb: DiffusionBackbone, root, images: int = 32, seed: int = 0) -> pd.DataFrame:
    """Text usage on the first ``images`` of Cityscapes val (see text_usage_by_timestep)."""
    from diffprompt.data import build_dataset

    x, _, caps = _stack(build_dataset("cityscapes", "val", root), images)
    return text_usage_by_timestep(bb, x, caps, seed=seed)


def evidence_attention(bb: DiffusionBackbone, root, images: int = 32, seed: int = 0):
    """Return (class-word attention table on GTA5 val, figure of maps for every domain)."""
    from diffprompt.data import DEFAULT_SPLIT, build_dataset

    att = class_word_attention(bb, build_dataset("gta5", "val", root), images, seed=seed)
    samples = {n: build_dataset(n, DEFAULT_SPLIT.get(n, "val"), root)[0] for n in DOMAINS}
    return att, attention_figure(bb, samples)


def evidence_vae(bb: DiffusionBackbone, root, images: int = 32,
                 others: dict[str, str] | None = None) -> pd.DataFrame:  # fmt: skip
    """Per-class reconstruction PSNR of the model's VAE and of ``others`` (name -> folder)."""
    from diffusers import AutoencoderKL

    from diffprompt.data import build_dataset

    vaes = {"bundled": bb.vae}
    for name, folder in (others or {}).items():
        vaes[name] = AutoencoderKL.from_pretrained(
            folder, local_files_only=True, use_safetensors=True
        )
    ds = build_dataset("gta5", "val", root)
    return pd.DataFrame({k: reconstruction_by_class(v, ds, images) for k, v in vaes.items()})


def evidence_probe(bb: DiffusionBackbone, root, steps: int = 300, n_train: int = 120,
                   n_eval: int = 64, seed: int = 0) -> pd.DataFrame:  # fmt: skip
    """Linear-probe mIoU of the pretrained UNet and of the same UNet with random weights."""
    from diffprompt.data import build_dataset
    from diffprompt.prompts import encode_texts

    train, val = build_dataset("gta5", "train", root), build_dataset("gta5", "val", root)
    ctx = encode_texts(bb.text_encoder, bb.tokenizer, [""]).last_hidden_state
    kw = dict(n_train=n_train, n_eval=n_eval, steps=steps, seed=seed)
    pre = probe(bb, train, val, ctx, **kw)
    rnd = probe(random_unet(bb, seed), train, val, ctx, **kw)
    return pd.DataFrame({"mIoU": [pre, rnd]}, index=["pretrained UNet", "random UNet"])


def main(argv: Sequence[str] | None = None) -> None:
    from diffprompt.backbones.hub import resolve_model_folder

    p = argparse.ArgumentParser(
        description="Write the embedded model's card from its training record and the evidence "
        "tables of notebook 06_embedded_model."
    )
    p.add_argument("--model", default="toy-sd", help="toy-sd (bundled) or a model folder")
    p.add_argument("--results", default=None, help="results folder (default: results/)")
    a = p.parse_args(argv)
    print(
        "wrote", write_card(resolve_model_folder(a.model), Path(a.results) if a.results else None)
    )


def write_card(folder: Path, results: Path | None = None) -> Path:
    """Write ``folder/README.md`` from the training record and the stored evidence tables."""
    import json

    from diffprompt.backbones.toy_sd import load_training_record
    from diffprompt.paths import results_root
    from diffprompt.io import atomic_write_text

    root = Path(results) if results else results_root()
    t = root / "tables"
    tables = {
        k: pd.read_csv(t / f"toy_sd_{f}.csv", index_col=0)
        for k, f in (
            ("text_usage", "text_usage"),
            ("attention", "class_word_attention"),
            ("vae", "vae_reconstruction"),
            ("probe", "probe"),
        )
    }
    record = load_training_record(folder)
    mf = root / "manifests" / "06_embedded_model.json"
    manifest = json.loads(mf.read_text()) if mf.is_file() else None
    return atomic_write_text(Path(folder) / "README.md", model_card(record, tables, manifest))


if __name__ == "__main__":
    main()
