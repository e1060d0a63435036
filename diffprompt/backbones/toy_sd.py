"""The embedded model: a tiny Stable-Diffusion-style model pretrained on the miniature.

Real Stable Diffusion cannot run on a laptop CPU, and nothing may be downloaded, so the
project ships a model of the same kind, in diffusers format, small enough to run anywhere:
``AutoencoderKL`` + ``UNet2DConditionModel`` + ``CLIPTextModel`` + a ``CLIPTokenizer``
whose vocabulary is built from the miniature's caption words + a DDPM scheduler. It is
pretrained by :func:`pretrain` on the *training* splits of every miniature data set with
their captions (never on an evaluation split):

1. the VAE on reconstruction (L1 + MSE + a small KL term);
2. its latent scale is measured (``scaling_factor = 1 / std``, as SD's 0.18215 was);
3. the UNet on the standard noise-prediction loss, conditioned on the caption through the
   text encoder, which is trained jointly (a randomly initialised text encoder has no
   meaning to freeze; SD's CLIP got its meaning from contrastive pretraining that the
   miniature cannot provide). Captions are dropped to "" with a small probability, as SD
   does, so the empty prompt is a meaningful unconditional context.

``python -m diffprompt.backbones.toy_sd`` regenerates it (deterministically on a given
device: same seed, same device type -> the same weights, bitwise on CPU); stages
checkpoint and resume. The result is written to ``diffprompt/assets/toy-sd`` with its
training log and model card.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from diffprompt.backbones.hub import BUNDLED
from diffprompt.labels import CLASSES
from diffprompt.runtime import resolve_device

#: Data sets and splits the model is pretrained on (training splits only; SYNTHIA has one
#: split, "all", and is only ever a source domain).
PRETRAIN_SPLITS: dict[str, str] = {
    "gta5": "train", "synthia": "all", "cityscapes": "train", "bdd100k": "train",
    "mapillary": "train", "acdc_fog": "train", "acdc_night": "train", "acdc_rain": "train",
    "acdc_snow": "train", "darkzurich": "train",
}  # fmt: skip

#: Weights are stored in half precision (7.8M parameters: 16 MB instead of 31 MB).
SAVE_DTYPE = torch.float16

#: Captions used to show what the model learned (sampled-conditions figure).
DEMO_CAPTIONS = (
    "a photo of a street scene in daylight showing road, building, vegetation and sky, with two cars",
    "a photo of a street scene at night showing road, building and sky, with two cars",
    "a photo of a street scene in fog showing road, building, vegetation and sky, with a bus",
    "a photo of a street scene in snow showing road, building, vegetation and sky, with a car",
    "a photo of a street scene in the rain showing road, building and sky, with trees",
    "a rendered street scene in daylight showing road, building, vegetation and sky, with many cars",
)  # fmt: skip


@dataclass
class ToySDConfig:
    """Architecture and pretraining recipe of the embedded model (a comment per default)."""

    data_root: str = "miniature"  # where the training images come from
    height: int = 128  # training resolution (the miniature's native size)
    width: int = 256
    # --- VAE
    vae_channels: tuple[int, ...] = (32, 64, 64)  # one entry per level: 3 levels = 4x down
    latent_channels: int = 4  # as SD
    vae_steps: int = 2000  # optimisation steps of the VAE
    vae_batch: int = 32
    vae_lr: float = 1e-3  # AdamW, cosine decay after warm-up
    kl_weight: float = 1e-6  # weight of the KL term (SD's VAE: 1e-6)
    # --- UNet
    unet_channels: tuple[int, ...] = (64, 128, 128)  # per level (latent 32x64 -> 8x16)
    attention_heads: tuple[int, ...] = (2, 4, 4)  # heads per level (head width 32)
    only_cross_attention: tuple[bool, ...] = (True, False, False)  # no self-attention at
    #                                   the finest level (2048 tokens): cross-attention only
    layers_per_block: int = 1
    # --- text encoder
    text_width: int = 128  # width of tokens = the UNet's cross_attention_dim
    text_layers: int = 4
    text_heads: int = 4
    max_length: int = 64  # tokenizer model_max_length (captions are <= ~45 tokens)
    train_text_encoder: bool = True  # jointly with the UNet (see the module docstring)
    # --- cross-attention sharpness (the bundled model's attention stayed nearly uniform;
    #     these knobs are for the next recipe, 1.0 = stock diffusers)
    qk_init_scale: float = 1.0  # multiplies the initial cross-attention query/key weights
    qk_lr_mult: float = 1.0  # learning-rate multiplier of the cross-attention query/key
    # --- UNet training
    unet_steps: int = 9000  # the learning-rate schedule is laid out for this many steps
    unet_stop: int = 8000  # end the UNet stage after this many steps (0 = unet_steps); the
    #                        bundled model stopped at 8000 when its GPU lease ran out
    unet_batch: int = 256
    unet_lr: float = 4e-4
    text_lr: float = 2e-4
    warmup: int = 300  # linear warm-up steps of each stage
    caption_dropout: float = 0.1  # probability of training on the empty caption
    timesteps: int = 1000  # DDPM steps, SD's scaled-linear betas
    # --- bookkeeping
    seed: int = 0
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU), "fp32", "bf16"
    log_every: int = 50  # log a loss line every this many steps
    eval_every: int = 500  # caption-vs-empty loss on held-out images every this many steps
    ckpt_every: int = 1000  # checkpoint (resumable) every this many steps
    max_images: int = 0  # cap on training images per data set (0 = all; tests use a few)

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae_channels) - 1)


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------


def training_images(
    root, cfg: ToySDConfig, splits: dict[str, str] | None = None
) -> tuple[torch.Tensor, list[str], list[str]]:
    """Return (images (N, 3, H, W) uint8, captions, domain names) of the pretraining set."""
    from diffprompt.data import build_dataset

    imgs, caps, doms = [], [], []
    for name, split in (splits or PRETRAIN_SPLITS).items():
        ds = build_dataset(name, split, root)
        n = len(ds) if not cfg.max_images else min(cfg.max_images, len(ds))
        for i in range(n):
            s = ds[i]
            x = s["image"]
            if tuple(x.shape[-2:]) != (cfg.height, cfg.width):
                x = F.interpolate(x[None], size=(cfg.height, cfg.width), mode="bilinear",
                                  antialias=True)[0]  # fmt: skip
            imgs.append((x * 255).round().clamp(0, 255).to(torch.uint8))
            caps.append(s["meta"]["caption"])
            doms.append(name)
    if not imgs:
        raise ValueError(f"no training images found under {root}")
    return torch.stack(imgs), caps, doms


def vocabulary_words(captions: Sequence[str]) -> list[str]:
    """Return the tokenizer's whole words: caption words + every word prompts can use."""
    from diffprompt.backbones.tokenizer import caption_words
    from diffprompt.prompts import prompt_corpus

    return caption_words(list(captions) + prompt_corpus(CLASSES))


# ---------------------------------------------------------------------------------------
# Components
# ---------------------------------------------------------------------------------------


def build_components(cfg: ToySDConfig, tokenizer) -> dict:
    """Return freshly initialised {vae, unet, text_encoder, scheduler} for ``cfg``."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(cfg.seed)
    n = len(cfg.vae_channels)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.vae_channels),
        layers_per_block=1,
        latent_channels=cfg.latent_channels,
        norm_num_groups=16,
        sample_size=cfg.height,
        scaling_factor=1.0,  # measured after the VAE is trained
    )
    m = len(cfg.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=(cfg.height // cfg.vae_factor, cfg.width // cfg.vae_factor),
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        block_out_channels=tuple(cfg.unet_channels),
        down_block_types=("CrossAttnDownBlock2D",) * (m - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (m - 1),
        layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cfg.text_width,
        attention_head_dim=tuple(cfg.attention_heads),  # diffusers' legacy name: head count
        only_cross_attention=tuple(cfg.only_cross_attention),
        norm_num_groups=32,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.text_width,
            intermediate_size=4 * cfg.text_width,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=cfg.text_heads,
            max_position_embeddings=cfg.max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    if cfg.qk_init_scale != 1.0:
        with torch.no_grad():
            for p in cross_attention_qk(unet):
                p.mul_(cfg.qk_init_scale)
    sched = DDPMScheduler(num_train_timesteps=cfg.timesteps, beta_start=0.00085,
                          beta_end=0.012, beta_schedule="scaled_linear",
                          prediction_type="epsilon", clip_sample=False,
                          steps_offset=1)  # fmt: skip
    return {"vae": vae, "unet": unet, "text_encoder": text, "scheduler": sched}


def cross_attention_qk(unet) -> list[torch.nn.Parameter]:
    """Return the query and key weights of the UNet's cross-attention layers."""
    return [p for m in unet.modules() if getattr(m, "is_cross_attention", False)
            for p in (m.to_q.weight, m.to_k.weight)]  # fmt: skip


def param_groups(unet, text, cfg: ToySDConfig) -> list[dict]:
    """Return the optimizer's parameter groups: the UNet (cross-attention query/key at
    ``qk_lr_mult`` times the UNet's rate) and, when trained, the text encoder."""
    qk = {id(p) for p in cross_attention_qk(unet)}
    groups = [{"params": [p for p in unet.parameters() if id(p) not in qk], "lr": cfg.unet_lr}]
    if qk:
        groups.append({"params": [p for p in unet.parameters() if id(p) in qk],
                       "lr": cfg.unet_lr * cfg.qk_lr_mult})  # fmt: skip
    if cfg.train_text_encoder:
        groups.append({"params": list(text.parameters()), "lr": cfg.text_lr})
    return groups


def count_parameters(components: dict) -> dict[str, int]:
    """Return the parameter count of each model component."""
    return {k: sum(p.numel() for p in v.parameters()) for k, v in components.items()
            if isinstance(v, torch.nn.Module)}  # fmt: skip


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------


def _autocast(device: torch.device, precision: str):
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)


def _lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return f


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=g) < 0.5
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)


@dataclass
class TrainState:
    """Where pretraining stands; saved with every checkpoint."""

    stage: str = "vae"  # "vae" -> "unet" -> "done"
    step: int = 0
    log: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    scaling_factor: float = 1.0


def recipe_hash(cfg: ToySDConfig) -> str:
    """Return a hex hash of a recipe (recorded in every pretraining checkpoint)."""
    import hashlib

    text = json.dumps(_jsonable(cfg), sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _save(obj: Any, path: Path) -> None:
    """torch.save ``obj`` to ``path`` atomically (a temporary file, then a rename)."""
    from diffprompt.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _load(path: Path, cfg: ToySDConfig | None = None) -> Any:
    """Return what :func:`_save` wrote (``weights_only=True``: tensors and plain data only).
    With ``cfg``, a checkpoint of another recipe raises a ValueError."""
    d = torch.load(path, map_location="cpu", weights_only=True)
    if cfg is not None and d.get("recipe_hash") != recipe_hash(cfg):
        raise ValueError(f"checkpoint {path} was written by another configuration (recipe hash "
                         f"{d.get('recipe_hash')}, this recipe {recipe_hash(cfg)}); use another "
                         "work_dir or delete it to start over")  # fmt: skip
    return d


def _save_ckpt(path: Path, state: TrainState, modules: dict, opt, sched, g: torch.Generator,
               cfg: ToySDConfig):  # fmt: skip
    _save({"state": asdict(state), "modules": {k: m.state_dict() for k, m in modules.items()},
           "opt": opt.state_dict(), "sched": sched.state_dict(), "gen": g.get_state(),
           "torch_rng": torch.get_rng_state(), "recipe_hash": recipe_hash(cfg),
           "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
          path)  # fmt: skip


def _batch_indices(n: int, batch: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, n, (batch,), generator=g)


def train_vae(vae, images: torch.Tensor, cfg: ToySDConfig, state: TrainState, device,
              ckpt: Path | None, log: Callable[[str], None]) -> None:  # fmt: skip
    """Train the VAE on reconstruction in place, resuming from ``ckpt`` when present."""
    vae.to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup, cfg.vae_steps))
    g = torch.Generator().manual_seed(cfg.seed + 1)
    if ckpt and ckpt.is_file() and state.stage == "vae" and state.step:
        _load_opt(ckpt, opt, sched, g, cfg)
    t0 = time.time() - state.seconds
    while state.step < cfg.vae_steps:
        idx = _batch_indices(len(images), cfg.vae_batch, g)
        x = _augment(images[idx].to(device).float() / 127.5 - 1, g)
        with _autocast(device, cfg.precision):
            post = vae.encode(x).latent_dist
            z = post.sample(generator=None)
            rec = vae.decode(z).sample
        rec = rec.float()
        l1 = (rec - x).abs().mean()
        mse = F.mse_loss(rec, x)
        kl = post.kl().float().mean()  # per image, summed over latent elements
        loss = l1 + mse + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        state.step += 1
        if state.step % cfg.log_every == 0 or state.step == cfg.vae_steps:
            psnr = -10 * math.log10(max(mse.item() / 4, 1e-10))  # images span [-1, 1]: range 2
            state.log.append({"stage": "vae", "step": state.step, "loss": loss.item(),
                              "l1": l1.item(), "psnr": psnr, "kl": kl.item(),
                              "seconds": time.time() - t0})  # fmt: skip
            log(f"vae step {state.step}/{cfg.vae_steps} loss {loss.item():.4f} psnr {psnr:.2f}")
        if ckpt and state.step % cfg.ckpt_every == 0:
            state.seconds = time.time() - t0
            _save_ckpt(ckpt, state, {"vae": vae}, opt, sched, g, cfg)
    state.seconds = time.time() - t0
    vae.eval()


def _load_opt(ckpt: Path, opt, sched, g: torch.Generator, cfg: ToySDConfig) -> None:
    d = _load(ckpt, cfg)
    opt.load_state_dict(d["opt"])
    sched.load_state_dict(d["sched"])
    g.set_state(d["gen"])
    torch.set_rng_state(d["torch_rng"])
    if d.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(d["cuda_rng"])


@torch.no_grad()
def encode_latents(
    vae, images: torch.Tensor, device, batch: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (mean, std) of the VAE posterior for images and their mirror images.

    Shapes (2N, C, h, w): the first N for the images, the next N for their mirrors.
    """
    means, stds = [], []
    for flip in (False, True):
        for i in range(0, len(images), batch):
            x = images[i : i + batch].to(device).float() / 127.5 - 1
            post = vae.encode(x.flip(-1) if flip else x).latent_dist
            means.append(post.mean.float().cpu())
            stds.append(post.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


def tokenize(tokenizer, texts: Sequence[str], device) -> torch.Tensor:
    """Return input ids (N, L) padded to the tokenizer's max length, on ``device``."""
    from diffprompt.text import tokenize as _tokenize

    return _tokenize(tokenizer, texts).to(device)


def denoising_loss(unet, text_encoder, scheduler, latents: torch.Tensor, ids: torch.Tensor,
                   g: torch.Generator, t: torch.Tensor | None = None,
                   noise: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Return the per-sample noise-prediction MSE (B,) of latents under caption ids."""
    b = latents.shape[0]
    dev = latents.device
    if t is None:
        t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=g)
    if noise is None:
        noise = torch.randn(latents.shape, generator=g)
    t, noise = t.to(dev), noise.to(dev)
    noisy = scheduler.add_noise(latents, noise, t)
    ctx = text_encoder(ids).last_hidden_state
    pred = unet(noisy, t, ctx).sample
    return F.mse_loss(pred.float(), noise.float(), reduction="none").mean((1, 2, 3))


@torch.no_grad()
def paired_losses(unet, text_encoder, scheduler, tokenizer, latents: torch.Tensor,
                  captions: Sequence[str], g: torch.Generator, repeats: int = 4,
                  timesteps: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Return per-sample denoising losses (repeats * N,) of latents with their caption and
    with "", under the same noise and timesteps (drawn from ``g`` unless ``timesteps``)."""
    dev = latents.device
    cap_ids = tokenize(tokenizer, captions, dev)
    empty_ids = tokenize(tokenizer, [""] * len(captions), dev)
    cap_l, emp_l = [], []
    for _ in range(repeats):
        n = scheduler.config.num_train_timesteps
        t = (torch.tensor(list(timesteps)).repeat(len(captions))[: len(captions)]
             if timesteps else torch.randint(0, n, (len(captions),), generator=g))  # fmt: skip
        noise = torch.randn(latents.shape, generator=g)
        cap_l.append(denoising_loss(unet, text_encoder, scheduler, latents, cap_ids, g, t, noise))
        emp_l.append(denoising_loss(unet, text_encoder, scheduler, latents, empty_ids, g, t, noise))
    return torch.cat(cap_l), torch.cat(emp_l)


def text_usage(unet, text_encoder, scheduler, tokenizer, latents: torch.Tensor,
               captions: Sequence[str], seed: int = 0, repeats: int = 4,
               timesteps: Sequence[int] | None = None) -> dict[str, float]:  # fmt: skip
    """Return the mean denoising loss of held-out latents with their caption and with "".

    The same noise and timesteps are used for both, so the difference measures how much
    the caption helps the UNet predict the noise.
    """
    g = torch.Generator().manual_seed(seed)
    c, e = paired_losses(unet, text_encoder, scheduler, tokenizer, latents, captions, g,
                         repeats, timesteps)  # fmt: skip
    c, e = c.mean().item(), e.mean().item()
    return {"caption_loss": c, "empty_loss": e, "gap": e - c, "relative_gap": (e - c) / e}


def train_unet(components: dict, tokenizer, mean: torch.Tensor, std: torch.Tensor,
               captions: Sequence[str], heldout: tuple[torch.Tensor, list[str]],
               cfg: ToySDConfig, state: TrainState, device, ckpt: Path | None,
               log: Callable[[str], None]) -> None:  # fmt: skip
    """Train UNet (and text encoder) on noise prediction in place, resumable."""
    unet, text, sched_ = components["unet"], components["text_encoder"], components["scheduler"]
    unet.to(device).train()
    text.to(device).train(cfg.train_text_encoder)
    text.requires_grad_(cfg.train_text_encoder)
    opt = torch.optim.AdamW(param_groups(unet, text, cfg), weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup, cfg.unet_steps))
    g = torch.Generator().manual_seed(cfg.seed + 2)
    if ckpt and ckpt.is_file() and state.stage == "unet" and state.step:
        _load_opt(ckpt, opt, sched, g, cfg)
    sf = state.scaling_factor
    all_ids = tokenize(tokenizer, list(captions) * 2, "cpu")  # images, then their mirrors
    empty = tokenize(tokenizer, [""], "cpu")[0]
    mean, std = mean.to(device), std.to(device)
    ho_lat = heldout[0].to(device)
    t0 = time.time() - state.seconds
    end = min(cfg.unet_stop, cfg.unet_steps) if cfg.unet_stop else cfg.unet_steps
    while state.step < end:
        idx = _batch_indices(len(mean), cfg.unet_batch, g)
        eps = torch.randn((len(idx),) + tuple(mean.shape[1:]), generator=g).to(device)
        z = (mean[idx] + std[idx] * eps) * sf
        ids = all_ids[idx].clone()
        drop = torch.rand(len(idx), generator=g) < cfg.caption_dropout
        ids[drop] = empty
        with _autocast(device, cfg.precision):
            loss = denoising_loss(unet, text, sched_, z, ids.to(device), g).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(text.parameters()), 1.0)
        opt.step()
        sched.step()
        state.step += 1
        entry = None
        if state.step % cfg.log_every == 0 or state.step == end:
            entry = {"stage": "unet", "step": state.step, "loss": loss.item(),
                     "lr": sched.get_last_lr()[0], "seconds": time.time() - t0}  # fmt: skip
        if state.step % cfg.eval_every == 0 or state.step == end:
            unet.eval(), text.eval()
            with _autocast(device, cfg.precision):
                use = text_usage(unet, text, sched_, tokenizer, ho_lat, heldout[1], seed=cfg.seed)
            unet.train(), text.train(cfg.train_text_encoder)
            entry = (entry or {"stage": "unet", "step": state.step}) | use
        if entry:
            state.log.append(entry)
            msg = f"unet step {state.step}/{cfg.unet_steps} loss {loss.item():.4f}"
            if "gap" in entry:
                msg += f" | held-out caption {entry['caption_loss']:.4f} empty {entry['empty_loss']:.4f}"
            log(msg)
        if ckpt and state.step % cfg.ckpt_every == 0:
            state.seconds = time.time() - t0
            _save_ckpt(ckpt, state, {"unet": unet, "text_encoder": text}, opt, sched, g, cfg)
            # a small weights-only copy (fp16), e.g. to carry off a machine that is lent
            _save({"step": state.step, "log": state.log,
                        "unet": {k: v.half().cpu() for k, v in unet.state_dict().items()},
                        "text_encoder": {k: v.half().cpu() for k, v in text.state_dict().items()}},
                       ckpt.with_name("weights.pt"))  # fmt: skip
    state.seconds = time.time() - t0
    unet.eval(), text.eval()


# ---------------------------------------------------------------------------------------
# The whole recipe
# ---------------------------------------------------------------------------------------


def heldout_set(root, cfg: ToySDConfig, per_domain: int = 4) -> tuple[torch.Tensor, list[str]]:
    """Return (images uint8, captions) of held-out images: the val splits' first images."""
    splits = {"gta5": "val", "cityscapes": "val", "acdc_night": "val", "acdc_fog": "val"}
    c = ToySDConfig(**{**asdict(cfg), "max_images": per_domain})
    imgs, caps, _ = training_images(root, c, splits)
    return imgs, caps


def pretrain(cfg: ToySDConfig, out_dir: str | Path, work_dir: str | Path,
             device: str = "auto", log: Callable[[str], None] = print,
             stop_after: str | None = None) -> Path | None:  # fmt: skip
    """Pretrain the embedded model; write it in diffusers format to ``out_dir``.

    Checkpoints go to ``work_dir`` and a rerun resumes from them. ``stop_after="vae"`` ends
    after the VAE stage (to split a long run). Returns ``out_dir`` when done, else None.
    """
    from diffprompt.backbones.tokenizer import build_clip_tokenizer
    from diffprompt.data.roots import resolve_data_root

    dev = resolve_device(device)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    cfg_file = work / "config.json"
    if cfg_file.is_file() and json.loads(cfg_file.read_text()) != _jsonable(cfg):
        raise ValueError(f"{work} holds a run with another configuration; use another "
                         "work_dir or delete it to start over")  # fmt: skip
    from diffprompt.io import atomic_write_text

    atomic_write_text(cfg_file, json.dumps(_jsonable(cfg), indent=1))
    torch.manual_seed(cfg.seed)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    root = resolve_data_root(cfg.data_root)
    images, captions, domains = training_images(root, cfg)
    log(f"{len(images)} training images from {len(set(domains))} data sets on {dev}")
    tok = build_clip_tokenizer(vocabulary_words(captions), work / "tokenizer", cfg.max_length)
    comps = build_components(cfg, tok)
    log(
        "parameters: "
        + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in count_parameters(comps).items())
    )
    ckpt = work / "checkpoint.pt"
    state = TrainState()
    if ckpt.is_file():
        d = _load(ckpt, cfg)
        state = TrainState(**d["state"])
        for k, sd in d["modules"].items():
            comps[k].load_state_dict(sd)
        if state.stage != "vae":
            comps["vae"].load_state_dict(_load(work / "vae.pt"))
        log(f"resumed: stage {state.stage}, step {state.step}")
    if state.stage == "vae":
        train_vae(comps["vae"], images, cfg, state, dev, ckpt, log)
        _save(comps["vae"].state_dict(), work / "vae.pt")
        mean, std = encode_latents(comps["vae"], images, dev)
        state.scaling_factor = float(1.0 / mean.std())
        state.log.append({"stage": "vae_done", "step": state.step, "seconds": state.seconds,
                          "scaling_factor": state.scaling_factor})  # fmt: skip
        log(f"latent std {mean.std():.3f}: scaling_factor {state.scaling_factor:.4f}")
        state.stage, state.step, state.seconds = "unet", 0, 0.0
        _save({"mean": mean, "std": std}, work / "latents.pt")
        _save_ckpt(ckpt, state, {}, torch.optim.SGD([torch.zeros(1)]),
                   torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([torch.zeros(1)]), lambda s: 1),
                   torch.Generator(), cfg)  # fmt: skip
        if stop_after == "vae":
            return None
    comps["vae"].to(dev).eval()
    comps["vae"].register_to_config(scaling_factor=state.scaling_factor)
    lat = _load(work / "latents.pt")
    ho_imgs, ho_caps = heldout_set(root, cfg)
    ho_mean, _ = encode_latents(comps["vae"], ho_imgs, dev)
    ho_lat = ho_mean[: len(ho_imgs)] * state.scaling_factor
    if state.stage == "unet":
        train_unet(comps, tok, lat["mean"], lat["std"], captions, (ho_lat, ho_caps), cfg, state,
                   dev, ckpt, log)  # fmt: skip
        state.stage = "done"
        _save_ckpt(ckpt, state, {"unet": comps["unet"], "text_encoder": comps["text_encoder"]},
                   torch.optim.SGD([torch.zeros(1)]),
                   torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([torch.zeros(1)]), lambda s: 1),
                   torch.Generator(), cfg)  # fmt: skip
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev)
    return save_model(comps, tok, out_dir, cfg, state, n_images=len(images), device=name)


def _jsonable(cfg: ToySDConfig) -> dict:
    return json.loads(json.dumps(asdict(cfg)))


def save_model(comps: dict, tokenizer, out_dir: str | Path, cfg: ToySDConfig,
               state: TrainState, n_images: int, device: str = "") -> Path:  # fmt: skip
    """Write the model in diffusers format (atomically) with its config and training log."""
    from diffusers import StableDiffusionPipeline

    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    c = {k: copy.deepcopy(v) for k, v in comps.items()}  # saving in fp16 must not round comps
    pipe = StableDiffusionPipeline(vae=c["vae"], text_encoder=c["text_encoder"],
                                   tokenizer=tokenizer, unet=c["unet"],
                                   scheduler=c["scheduler"], safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)  # fmt: skip
    pipe.to("cpu", SAVE_DTYPE)  # fp16 on disk keeps the package small; loads as fp32
    pipe.save_pretrained(tmp, safe_serialization=True)
    meta = {"recipe": _jsonable(cfg), "training_images": n_images, "device": device,
            "scaling_factor": state.scaling_factor,
            "parameters": count_parameters(comps), "log": state.log}  # fmt: skip
    (tmp / "training.json").write_text(json.dumps(meta, indent=1))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def load_training_record(folder: str | Path = BUNDLED["toy-sd"]) -> dict:
    """Return the recipe, parameter counts and training log stored with a toy model."""
    return json.loads((Path(folder) / "training.json").read_text())


def _parse_value(like, text: str):
    """Return ``text`` as a value of the type of ``like`` (bools: 1/0, true/false, yes/no, on/off)."""
    if isinstance(like, bool):
        t = text.strip().lower()
        if t not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ValueError("not a boolean")
        return t in ("1", "true", "yes", "on")
    return type(like)(text)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Pretrain the embedded tiny SD model on the miniature.")
    p.add_argument("--out", default=str(BUNDLED["toy-sd"]), help="model folder to write")
    p.add_argument("--work", default="results/runs/toy_sd", help="checkpoints (resumable)")
    p.add_argument("--device", default="auto")
    p.add_argument("--stop-after", choices=["vae"], default=None)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override ToySDConfig fields, e.g. unet_steps=2000")  # fmt: skip
    a = p.parse_args(argv)
    cfg = ToySDConfig()
    names = {f.name for f in fields(ToySDConfig)}
    over = {}
    for kv in a.set:
        k, eq, v = kv.partition("=")
        if not eq:
            raise SystemExit(f"--set takes KEY=VALUE, got {kv!r}")
        if k not in names:
            raise SystemExit(f"unknown ToySDConfig field {k!r}")
        cur = getattr(cfg, k)
        try:
            over[k] = (tuple(_parse_value(cur[0], x) for x in v.split(","))
                       if isinstance(cur, tuple) else _parse_value(cur, v))  # fmt: skip
        except ValueError as e:
            raise SystemExit(f"bad value for {k}: {v!r} ({e})") from e
    cfg = ToySDConfig(**{**asdict(cfg), **over})
    out = pretrain(cfg, a.out, a.work, a.device, stop_after=a.stop_after)
    print("wrote", out if out else f"checkpoints in {a.work} (stopped after {a.stop_after})")


if __name__ == "__main__":
    main()
