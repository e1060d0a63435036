"""The embedded model's card: its recipe, its training and the evidence of what it learned.

:func:`model_card` writes the card (markdown) from the training record the model is saved
with (:func:`diffprompt.toysd.pretrain.load_training_record`) and the evidence tables that
notebook ``06_embedded_model`` measures with :mod:`diffprompt.toysd.eval`; its
assessment weighs the evidence against what the project asks of the model
(:data:`MIN_ATTENTION_MIOU`, :data:`MIN_PROBE_GAIN`). :func:`write_card` stores it as the
model folder's ``README.md`` (``python -m diffprompt.toysd.eval``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from diffprompt.io import atomic_write_text
from diffprompt.paths import results_root
from diffprompt.toysd.pretrain import load_training_record

#: What the project asks of the embedded model (issue "backbone and embedded model").
MIN_ATTENTION_MIOU = 25.0  # class-word attention argmax, mIoU on the source (GTA5 val)
MIN_PROBE_GAIN = 5.0  # linear probe: pretrained minus random UNet, mIoU on the source
#: An optional evidence table: the text-use measures (``toy_sd_text_use``), quoted when
#: notebook 06 wrote it.
TEXT_USE_TABLE = "toy_sd_text_use"
#: Thin classes, which a VAE of a larger downsampling factor loses first.
THIN = ("pole", "traffic light", "traffic sign", "person", "rider", "bicycle")
#: The evidence tables the card quotes: its key -> the table's name in ``results/tables``.
CARD_TABLES = {
    "text_usage": "toy_sd_text_usage",
    "attention": "toy_sd_class_word_attention",
    "vae": "toy_sd_vae_reconstruction",
    "probe": "toy_sd_probe",
}


def _assessment(
    use: pd.DataFrame, att: pd.DataFrame, rec: pd.DataFrame, pr: pd.DataFrame
) -> list[str]:
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


def _text_use_lines(table: pd.DataFrame) -> list[str]:
    """Return the card's lines on how much the prompt reaches the features (the first row:
    this model; further rows: candidates) and where the next recipes are."""
    me = table.iloc[0]
    return [
        "How much the prompt reaches the features (`results/tables/toy_sd_text_use.md`; "
        "% relative L2 change of the UNet's maps): between scene prompts "
        + ", ".join(
            f"t={c.rsplit('=', 1)[1]}: {me[c]:.1f}%" for c in table.filter(like="scene vs scene")
        )
        + "; against the empty prompt "
        + ", ".join(
            f"t={c.rsplit('=', 1)[1]}: {me[c]:.1f}%" for c in table.filter(like="scene vs empty")
        )
        + f"; the caption lowers the loss by {me['caption gap % (t<=600)']:.2f}% at t <= 600.",
        "",
        "Next recipes (pooled text in the timestep embedding, padding masking, crop captions "
        "naming the classes present, sharper query/key, fine-tuning from this model): "
        "`make embedded-candidate CANDIDATE=gpu10` (about 10 min on one H100/H200; docs/METHOD.md); "
        f"{len(table) - 1} candidate(s) measured beside it in that table.",
    ]


def model_card(
    record: dict[str, Any],
    tables: dict[str, pd.DataFrame],
    manifest: dict[str, Any] | None = None,
) -> str:
    """Return the model card (markdown) from the training record, the evidence tables (keys
    of :data:`CARD_TABLES`) and, when given, the manifest of the run that measured them."""
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
        "CLIPTextModel, CLIPTokenizer, DDPMScheduler), pretrained by `diffprompt.toysd.pretrain`",
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
        "- Regenerate: `python -m diffprompt.toysd.pretrain --set "
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
    if "text_use" in tables:
        lines += ["", *_text_use_lines(tables["text_use"])]
    lines += ["", "## Assessment", ""] + _assessment(use, att, rec, pr)
    if manifest:
        sha = manifest["git"]["sha"][:10]
        device = manifest["device"].get("device", "cpu")
        lines += ["", f"Measured by run `{manifest['name']}` at git {sha} on {device}."]
    return "\n".join(lines) + "\n"


def write_card(folder: str | Path, results: str | Path | None = None) -> Path:
    """Write ``folder/README.md`` from the training record and the evidence tables stored
    under ``results`` (default: the results root); return the card's path."""
    root = Path(results) if results else results_root()
    t = root / "tables"
    tables = {k: pd.read_csv(t / f"{name}.csv", index_col=0) for k, name in CARD_TABLES.items()}
    if (t / f"{TEXT_USE_TABLE}.csv").is_file():
        tables["text_use"] = pd.read_csv(t / f"{TEXT_USE_TABLE}.csv", index_col=0)
    record = load_training_record(folder)
    mf = root / "manifests" / "06_embedded_model.json"
    manifest = json.loads(mf.read_text()) if mf.is_file() else None
    return atomic_write_text(Path(folder) / "README.md", model_card(record, tables, manifest))
