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

What is trained (the configuration, data, components and objective) is in
:mod:`diffprompt.toysd.recipe`; this module runs it: the two stages, their checkpoints and
resume, the whole run, the saved model and the command line.

``python -m diffprompt.toysd.pretrain`` regenerates it (deterministically on a given
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from diffprompt.backbones.hub import BUNDLED, resolve_model_folder
from diffprompt.backbones.tokenizer import build_clip_tokenizer
from diffprompt.data.roots import resolve_data_root
from diffprompt.io import atomic_path, atomic_write_text, digest
from diffprompt.preflight import parse_assignments
from diffprompt.runtime import resolve_device
from diffprompt.text import tokenize
from diffprompt.toysd.config import ToySDConfig, recorded_recipe
from diffprompt.toysd.options import (
    crop_batch,
    load_components,
    padding_mask,
    select_parts,
)
from diffprompt.toysd.recipe import (
    build_components,
    count_parameters,
    denoising_loss,
    heldout_set,
    param_groups,
    text_usage,
    training_images,
    training_shares,
    vocabulary_words,
)

if TYPE_CHECKING:  # annotations only: diffusers is imported where the model is saved
    from diffusers import AutoencoderKL
    from transformers import PreTrainedTokenizerBase

#: Weights are stored in half precision (7.8M parameters: 16 MB instead of 31 MB).
SAVE_DTYPE = torch.float16

#: A callback that receives each progress line (``print`` by default).
Progress = Callable[[str], None]


# ---------------------------------------------------------------------------------------
# Training state and checkpoints
# ---------------------------------------------------------------------------------------


@dataclass
class TrainState:
    """Where pretraining stands; saved with every checkpoint."""

    stage: str = "vae"  # "vae" -> "unet" -> "done"
    step: int = 0  # steps done in the current stage
    log: list[dict] = field(default_factory=list)  # the training record's entries so far
    seconds: float = 0.0  # time spent in the current stage
    scaling_factor: float = 1.0  # the VAE's latent scale, measured after its stage


def _jsonable(cfg: ToySDConfig) -> dict[str, Any]:
    return recorded_recipe(cfg)


def recipe_hash(cfg: ToySDConfig) -> str:
    """Return a hex hash of a recipe (recorded in every pretraining checkpoint)."""
    return digest(_jsonable(cfg), size=8)


def _save(obj: Any, path: Path) -> None:
    """torch.save ``obj`` to ``path`` atomically (a temporary file, then a rename)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _load(path: Path, cfg: ToySDConfig | None = None) -> Any:
    """Return what :func:`_save` wrote (``weights_only=True``: tensors and plain data only).
    With ``cfg``, a checkpoint of another recipe raises a ValueError."""
    d = torch.load(path, map_location="cpu", weights_only=True)
    if cfg is not None and d.get("recipe_hash") != recipe_hash(cfg):
        raise ValueError(
            f"checkpoint {path} was written by another configuration (recipe hash "
            f"{d.get('recipe_hash')}, this recipe {recipe_hash(cfg)}); use another "
            "work_dir or delete it to start over"
        )
    return d


def _save_ckpt(
    path: Path,
    state: TrainState,
    modules: dict[str, torch.nn.Module],
    opt: torch.optim.Optimizer,
    lr_schedule: torch.optim.lr_scheduler.LRScheduler,
    g: torch.Generator,
    cfg: ToySDConfig,
) -> None:
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    ckpt = {
        "state": asdict(state),
        "modules": {k: m.state_dict() for k, m in modules.items()},
        "opt": opt.state_dict(),
        "sched": lr_schedule.state_dict(),
        "gen": g.get_state(),
        "torch_rng": torch.get_rng_state(),
        "recipe_hash": recipe_hash(cfg),
        "cuda_rng": cuda_rng,
    }
    _save(ckpt, path)


def _save_stage_end(
    path: Path, state: TrainState, modules: dict[str, torch.nn.Module], cfg: ToySDConfig
) -> None:
    """Checkpoint a finished stage: its modules and state. Nothing is left to resume, so an
    optimizer, schedule and generator that hold nothing stand in for the stage's own."""
    no_opt = torch.optim.SGD([torch.zeros(1)])
    no_schedule = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([torch.zeros(1)]), lambda s: 1)
    _save_ckpt(path, state, modules, no_opt, no_schedule, torch.Generator(), cfg)


def _load_opt(
    ckpt: Path,
    opt: torch.optim.Optimizer,
    lr_schedule: torch.optim.lr_scheduler.LRScheduler,
    g: torch.Generator,
    cfg: ToySDConfig,
) -> None:
    d = _load(ckpt, cfg)
    opt.load_state_dict(d["opt"])
    lr_schedule.load_state_dict(d["sched"])
    g.set_state(d["gen"])
    torch.set_rng_state(d["torch_rng"])
    if d.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(d["cuda_rng"])


# ---------------------------------------------------------------------------------------
# The two stages
# ---------------------------------------------------------------------------------------


def _autocast(device: torch.device, precision: str) -> torch.autocast:
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


def _batch_indices(n: int, batch: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, n, (batch,), generator=g)


def _half(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.half().cpu() for k, v in module.state_dict().items()}


def train_vae(
    vae: AutoencoderKL,
    images: torch.Tensor,
    cfg: ToySDConfig,
    state: TrainState,
    device: torch.device,
    ckpt: Path | None,
    progress: Progress,
) -> None:
    """Train the VAE on reconstruction of images (N, 3, H, W) uint8 in place, resuming from
    ``ckpt`` when present; returns nothing (``state`` holds the step, log and time)."""
    vae.to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=1e-4)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup, cfg.vae_steps))
    g = torch.Generator().manual_seed(cfg.seed + 1)
    if ckpt and ckpt.is_file() and state.stage == "vae" and state.step:
        _load_opt(ckpt, opt, lr_schedule, g, cfg)
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
        lr_schedule.step()
        state.step += 1
        if state.step % cfg.log_every == 0 or state.step == cfg.vae_steps:
            psnr = -10 * math.log10(max(mse.item() / 4, 1e-10))  # images span [-1, 1]: range 2
            entry = {
                "stage": "vae",
                "step": state.step,
                "loss": loss.item(),
                "l1": l1.item(),
                "psnr": psnr,
                "kl": kl.item(),
                "seconds": time.time() - t0,
            }
            state.log.append(entry)
            progress(
                f"vae step {state.step}/{cfg.vae_steps} loss {loss.item():.4f} psnr {psnr:.2f}"
            )
        if ckpt and state.step % cfg.ckpt_every == 0:
            state.seconds = time.time() - t0
            _save_ckpt(ckpt, state, {"vae": vae}, opt, lr_schedule, g, cfg)
    state.seconds = time.time() - t0
    vae.eval()


@torch.no_grad()
def encode_latents(
    vae: AutoencoderKL, images: torch.Tensor, device: torch.device, batch: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (mean, std) of the VAE posterior for images (N, 3, H, W) uint8 and their
    mirror images.

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


def train_unet(
    components: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    mean: torch.Tensor,
    std: torch.Tensor,
    captions: Sequence[str],
    heldout: tuple[torch.Tensor, list[str]],
    cfg: ToySDConfig,
    state: TrainState,
    device: torch.device,
    ckpt: Path | None,
    progress: Progress,
    shares: torch.Tensor | None = None,
    on_checkpoint: Callable[[], None] | None = None,
) -> None:
    """Train UNet (and text encoder) on noise prediction in place, resumable; returns
    nothing (``state`` holds the step, log and time).

    ``mean`` and ``std`` (2N, C, h, w) are the VAE posterior of the N training images and
    their mirrors (:func:`encode_latents`), ``captions`` the N captions, ``heldout`` the
    scaled latents and captions that text usage is measured on every ``eval_every`` steps.
    ``shares`` (N, 19, h, w): the class shares of the training images' latent cells, which
    crop captions are read from (``cfg.crop_size``); ``on_checkpoint`` is called after each
    checkpoint (e.g. to write a usable model). The stage ends after ``cfg.unet_stop`` steps
    or ``cfg.time_limit_min`` minutes.
    """
    unet, text = components["unet"], components["text_encoder"]
    scheduler = components["scheduler"]
    unet.to(device).train()
    text.to(device).train(cfg.train_text_encoder)
    select_parts(unet, text, cfg, state.step)
    opt = torch.optim.AdamW(param_groups(unet, text, cfg), weight_decay=1e-2)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup, cfg.unet_steps))
    g = torch.Generator().manual_seed(cfg.seed + 2)
    if ckpt and ckpt.is_file() and state.stage == "unet" and state.step:
        _load_opt(ckpt, opt, lr_schedule, g, cfg)
    sf = state.scaling_factor
    all_ids = tokenize(tokenizer, list(captions) * 2)  # images, then their mirrors
    empty = tokenize(tokenizer, [""])[0]
    mean, std = mean.to(device), std.to(device)
    heldout_latents, heldout_captions = heldout[0].to(device), heldout[1]
    t0 = time.time() - state.seconds
    end = min(cfg.unet_stop, cfg.unet_steps) if cfg.unet_stop else cfg.unet_steps
    next_save = time.time() + 60 * cfg.ckpt_minutes
    timed_out = False
    while state.step < end and not timed_out:
        if cfg.parts_steps and state.step == cfg.parts_steps:
            select_parts(unet, text, cfg, state.step)  # after the parts: everything
        idx = _batch_indices(len(mean), cfg.unet_batch, g)
        eps = torch.randn((len(idx),) + tuple(mean.shape[1:]), generator=g).to(device)
        z = (mean[idx] + std[idx] * eps) * sf
        ids = all_ids[idx].clone()
        if cfg.crop_size and torch.rand(1, generator=g).item() < cfg.crop_share:
            z, ids = crop_batch(z, idx, captions, shares, cfg, g, tokenizer)
        drop = torch.rand(len(idx), generator=g) < cfg.caption_dropout
        ids[drop] = empty
        mask = padding_mask(ids, tokenizer.eos_token_id).to(device) if cfg.mask_padding else None
        with _autocast(device, cfg.precision):
            loss = denoising_loss(unet, text, scheduler, z, ids.to(device), g, mask=mask).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(text.parameters()), 1.0)
        opt.step()
        lr_schedule.step()
        state.step += 1
        timed_out = bool(cfg.time_limit_min) and time.time() - t0 >= 60 * cfg.time_limit_min
        last = state.step == end or timed_out
        entry = None
        if state.step % cfg.log_every == 0 or last:
            entry = {
                "stage": "unet",
                "step": state.step,
                "loss": loss.item(),
                "lr": lr_schedule.get_last_lr()[0],
                "seconds": time.time() - t0,
            }
        if state.step % cfg.eval_every == 0 or last:
            unet.eval()
            text.eval()
            with _autocast(device, cfg.precision):
                models = (unet, text, scheduler, tokenizer)
                use = text_usage(
                    *models,
                    heldout_latents,
                    heldout_captions,
                    seed=cfg.seed,
                    mask_padding=cfg.mask_padding,
                )
            unet.train()
            text.train(cfg.train_text_encoder)
            entry = (entry or {"stage": "unet", "step": state.step}) | use
        if entry:
            state.log.append(entry)
            msg = f"unet step {state.step}/{cfg.unet_steps} loss {loss.item():.4f}"
            if "gap" in entry:
                caption_loss, empty_loss = entry["caption_loss"], entry["empty_loss"]
                msg += f" | held-out caption {caption_loss:.4f} empty {empty_loss:.4f}"
            progress(msg)
        timed_save = bool(cfg.ckpt_minutes) and time.time() >= next_save
        if ckpt and (state.step % cfg.ckpt_every == 0 or timed_save):
            next_save = time.time() + 60 * cfg.ckpt_minutes
            state.seconds = time.time() - t0
            _save_ckpt(ckpt, state, {"unet": unet, "text_encoder": text}, opt, lr_schedule, g, cfg)
            # a small weights-only copy (fp16), e.g. to carry off a machine that is lent
            weights = {
                "step": state.step,
                "log": state.log,
                "unet": _half(unet),
                "text_encoder": _half(text),
            }
            _save(weights, ckpt.with_name("weights.pt"))
            if on_checkpoint is not None:
                on_checkpoint()
    if timed_out:
        progress(f"unet: time limit of {cfg.time_limit_min} min reached at step {state.step}")
    state.seconds = time.time() - t0
    unet.eval()
    text.eval()


# ---------------------------------------------------------------------------------------
# The whole run
# ---------------------------------------------------------------------------------------


def pretrain(
    cfg: ToySDConfig,
    out_dir: str | Path,
    work_dir: str | Path,
    device: str = "auto",
    progress: Progress = print,
    stop_after: str | None = None,
) -> Path | None:
    """Pretrain the embedded model; write it in diffusers format to ``out_dir``.

    Checkpoints go to ``work_dir`` and a rerun resumes from them. ``stop_after="vae"`` ends
    after the VAE stage (to split a long run). Returns ``out_dir`` when done, else None.
    """
    dev = resolve_device(device)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    cfg_file = work / "config.json"
    recipe = _jsonable(cfg)
    if cfg_file.is_file() and json.loads(cfg_file.read_text()) != recipe:
        raise ValueError(
            f"{work} holds a run with another configuration; use another "
            "work_dir or delete it to start over"
        )
    atomic_write_text(cfg_file, json.dumps(recipe, indent=1))
    torch.manual_seed(cfg.seed)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    root = resolve_data_root(cfg.data_root)
    images, captions, names = training_images(root, cfg)
    progress(f"{len(images)} training images from {len(set(names))} data sets on {dev}")
    if cfg.init_from:  # fine-tuning: the model's own VAE, tokenizer and weights
        comps = load_components(cfg, resolve_model_folder(cfg.init_from))
        tok = comps.pop("tokenizer")
        tok.save_pretrained(work / "tokenizer")
    else:
        tok = build_clip_tokenizer(vocabulary_words(captions), work / "tokenizer", cfg.max_length)
        comps = build_components(cfg, tok)
    counts = count_parameters(comps)
    progress("parameters: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items()))
    ckpt = work / "checkpoint.pt"
    state = TrainState()
    if ckpt.is_file():
        d = _load(ckpt, cfg)
        state = TrainState(**d["state"])
        for k, sd in d["modules"].items():
            comps[k].load_state_dict(sd)
        if state.stage != "vae":
            comps["vae"].load_state_dict(_load(work / "vae.pt"))
        progress(f"resumed: stage {state.stage}, step {state.step}")
    elif cfg.init_from:  # nothing to train in the VAE stage: its latents are measured
        factor = float(comps["vae"].config.scaling_factor)
        state = TrainState(stage="unet", scaling_factor=factor)
        state.log.append({"stage": "init", "from": str(cfg.init_from), "scaling_factor": factor})
        mean, std = encode_latents(comps["vae"].to(dev), images, dev)
        _save({"mean": mean, "std": std}, work / "latents.pt")
        _save_stage_end(ckpt, state, {}, cfg)
    if state.stage == "vae":
        train_vae(comps["vae"], images, cfg, state, dev, ckpt, progress)
        _save(comps["vae"].state_dict(), work / "vae.pt")
        mean, std = encode_latents(comps["vae"], images, dev)
        state.scaling_factor = float(1.0 / mean.std())
        vae_done = {
            "stage": "vae_done",
            "step": state.step,
            "seconds": state.seconds,
            "scaling_factor": state.scaling_factor,
        }
        state.log.append(vae_done)
        progress(f"latent std {mean.std():.3f}: scaling_factor {state.scaling_factor:.4f}")
        state.stage, state.step, state.seconds = "unet", 0, 0.0
        _save({"mean": mean, "std": std}, work / "latents.pt")
        _save_stage_end(ckpt, state, {}, cfg)
        if stop_after == "vae":
            return None
    comps["vae"].to(dev).eval()
    comps["vae"].register_to_config(scaling_factor=state.scaling_factor)
    lat = _load(work / "latents.pt")
    ho_imgs, ho_caps = heldout_set(root, cfg)
    ho_mean, _ = encode_latents(comps["vae"], ho_imgs, dev)
    ho_lat = ho_mean[: len(ho_imgs)] * state.scaling_factor
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev)
    n = len(images)
    if state.stage == "unet":
        heldout = (ho_lat, ho_caps)
        shares = training_shares(root, cfg) if cfg.crop_size else None

        def usable_model() -> None:  # a run cut short leaves this model in work_dir/model
            save_model(comps, tok, work / "model", cfg, state, n_images=n, device=device_name)

        train_unet(
            comps,
            tok,
            lat["mean"],
            lat["std"],
            captions,
            heldout,
            cfg,
            state,
            dev,
            ckpt,
            progress,
            shares=shares,
            on_checkpoint=usable_model if cfg.ckpt_minutes else None,
        )
        state.stage = "done"
        trained = {"unet": comps["unet"], "text_encoder": comps["text_encoder"]}
        _save_stage_end(ckpt, state, trained, cfg)
    return save_model(comps, tok, out_dir, cfg, state, n_images=n, device=device_name)


def save_model(
    comps: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    cfg: ToySDConfig,
    state: TrainState,
    n_images: int,
    device: str = "",
) -> Path:
    """Write the model in diffusers format (fp16, into a temporary folder renamed into
    place) with its training record ``training.json``; return the folder."""
    from diffusers import StableDiffusionPipeline

    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    copies = {k: copy.deepcopy(v) for k, v in comps.items()}  # fp16 on disk must not round comps
    pipe = StableDiffusionPipeline(
        vae=copies["vae"],
        text_encoder=copies["text_encoder"],
        tokenizer=tokenizer,
        unet=copies["unet"],
        scheduler=copies["scheduler"],
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.to("cpu", SAVE_DTYPE)  # fp16 on disk keeps the package small; loads as fp32
    pipe.save_pretrained(tmp, safe_serialization=True)
    meta = {
        "recipe": _jsonable(cfg),
        "training_images": n_images,
        "device": device,
        "scaling_factor": state.scaling_factor,
        "parameters": count_parameters(comps),
        "log": state.log,
    }
    (tmp / "training.json").write_text(json.dumps(meta, indent=1))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def load_training_record(folder: str | Path = BUNDLED["toy-sd"]) -> dict[str, Any]:
    """Return the recipe, parameter counts and training log stored with a toy model."""
    return json.loads((Path(folder) / "training.json").read_text())


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line, pretrain (resuming from ``--work``) and print what was written."""
    p = argparse.ArgumentParser(description="Pretrain the embedded tiny SD model on the miniature.")
    p.add_argument("--out", default=str(BUNDLED["toy-sd"]), help="model folder to write")
    p.add_argument("--work", default="results/runs/toy_sd", help="checkpoints (resumable)")
    p.add_argument("--device", default="auto")
    p.add_argument("--stop-after", choices=["vae"], default=None)
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override ToySDConfig fields, e.g. unet_steps=2000",
    )
    a = p.parse_args(argv)
    try:
        cfg = ToySDConfig(**parse_assignments(ToySDConfig, a.set))
    except ValueError as e:  # an unknown field or a value of the wrong type
        raise SystemExit(f"--set: {e}") from None
    out = pretrain(cfg, a.out, a.work, a.device, stop_after=a.stop_after)
    print("wrote", out if out else f"checkpoints in {a.work} (stopped after {a.stop_after})")


if __name__ == "__main__":
    main()
