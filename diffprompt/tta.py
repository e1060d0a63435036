"""Test-time adaptation: learn the scene prompt on unlabeled target images.

Everything is frozen (VAE, UNet, text encoder, category tokens, head) except the input
token embeddings of the scene prompt's words (:class:`diffprompt.prompts.
LearnableScenePrompt`), initialised from the scene prompt the head was trained with. They
are optimised on unlabeled images of the target domain with

- ``denoise``: the diffusion noise-prediction loss of the target images' latents under
  the context [category tokens ; learned scene prompt], as textual inversion learns a
  word (the target of the UNet's own prediction type: noise, or v for v-prediction);
- ``entropy``: the mean entropy of the head's per-pixel predictions;
- ``both``: their sum (``entropy_weight`` scales the entropy term).

Then the target is segmented with the learned prompt. ``offline`` fits on a set of target
images (the target's unlabeled split) and evaluates on its labeled split; ``online``
adapts as the evaluation batches stream in (one update per batch, then its prediction).

Baselines in the same table: no adaptation; TENT (entropy minimisation of the affine
parameters of the normalisation layers, Wang et al., ICLR 2021); a hand-written target
prompt (zero-shot prompting, no optimisation).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diffprompt.evaluate import ConfusionMatrix
from diffprompt.train import TrainConfig, Trainer

OBJECTIVES = ("denoise", "entropy", "both")
MODES = ("offline", "online")
#: Every registered target of the benchmarks.
TARGETS = ("acdc_fog", "acdc_night", "acdc_rain", "acdc_snow", "darkzurich", "cityscapes",
           "bdd100k", "mapillary")  # fmt: skip
#: Hand-written descriptions of each target (the zero-shot prompting baseline; ours).
TARGET_PROMPTS = {
    "acdc_fog": "a photo of an urban street scene in fog",
    "acdc_night": "a photo of an urban street scene at night",
    "acdc_rain": "a photo of an urban street scene in the rain",
    "acdc_snow": "a photo of an urban street scene in snow",
    "darkzurich": "a dashcam photo of an urban street scene at night",
    "cityscapes": "a photo of a city street in daylight under an overcast sky",
    "bdd100k": "a dashcam photo of a street taken from a car",
    "mapillary": "a photo of a street seen from the sidewalk",
}


@dataclass
class TTAConfig:
    """How the scene prompt is learned on the target (a comment per default; all ours)."""

    target: str = "acdc_night"
    steps: int = 6  # optimisation steps (offline) or updates per batch x batches (online)
    lr: float = 1e-3  # Adam on the word embeddings (1e-2 moved them 2-3x their norm in 10
    #                   steps on the embedded model; 1e-3 about 0.4x)
    fit_images: int = 12  # unlabeled target images the prompt is fitted on (0 = all)
    batch_size: int = 2
    eval_images: int = 16  # labeled target images evaluated (0 = all)
    entropy_weight: float = 1.0  # weight of the entropy term in "both"
    denoise_t: tuple[int, int] = (0, 1000)  # timesteps of the denoising loss, [low, high)
    eval_every: int = 0  # mIoU every N steps for the curve (0 = only before and after)
    online_steps: int = 1  # updates per streamed batch (online mode)
    tent_scope: str = "all"  # TENT's normalisation layers: "all" (head and UNet) or "head"
    gradient_checkpointing: bool = False  # trade compute for memory in the UNet (full size)
    seed: int = 0

    def __post_init__(self):
        self.denoise_t = tuple(self.denoise_t)


def fit_split(dataset_cls, root) -> tuple[str, str]:
    """Return (split, note) of the images TTA may fit on for a target: its unlabeled split
    when it has one on disk (Dark Zurich train, ACDC test, Cityscapes/BDD100K/Mapillary
    test), else its train split with the labels unused."""
    ds = dataset_cls(split=None, root=root)
    on_disk = ds.splits_on_disk()
    for split in ("train", "test"):
        if split in ds.unlabeled_splits and split in on_disk:
            return split, f"{split} (unlabeled)"
    return "train", "train (labels unused: no unlabeled split on disk)"


def check_tta(cfg: TTAConfig, objectives: Sequence[str], modes: Sequence[str]) -> None:
    """Raise a ValueError naming the problem for a bad TTA configuration, before any work."""
    from diffprompt.io import did_you_mean

    if cfg.target not in TARGETS:
        raise ValueError(f"unknown target {cfg.target!r}; valid targets: {list(TARGETS)}, 'all' "
                         f"or {sorted(TARGET_GROUPS)}.{did_you_mean(cfg.target, TARGETS)}")  # fmt: skip
    for o in objectives:
        if o not in OBJECTIVES:
            raise ValueError(f"unknown TTA objective {o!r}; choose from {OBJECTIVES}")
    for m in modes:
        if m not in MODES:
            raise ValueError(f"unknown TTA mode {m!r}; choose from {MODES}")
    from diffprompt.preflight import check_fields

    check_fields(cfg, positive_int=("steps", "batch_size", "online_steps"),
                 nonneg_int=("fit_images", "eval_images", "eval_every"), positive=("lr",),
                 nonneg=("entropy_weight",))  # fmt: skip
    lo, hi = cfg.denoise_t
    if not 0 <= lo < hi:
        raise ValueError(f"denoise_t must be [low, high) with 0 <= low < high, got {cfg.denoise_t}")
    if cfg.tent_scope not in ("all", "head"):
        raise ValueError(f"tent_scope must be 'all' or 'head', got {cfg.tent_scope!r}")


def check_targets(cfgs: Mapping[str, TTAConfig], objectives: Sequence[str],
                  modes: Sequence[str], dg_cfg: TrainConfig, missing: str = "train",
                  checkpoint: str = "", results_dir=None) -> None:  # fmt: skip
    """Check a TTA run before any work (before its DG model is trained or loaded): every
    TTA configuration, the DG configuration, and each target's fit and evaluation splits
    (present, labeled where evaluated, their files readable; see
    :func:`diffprompt.preflight.check_files`) and that ``results_dir`` (None: results/) can
    be written. Raises an error that says what to do."""
    from diffprompt.data.roots import resolve_data_root
    from diffprompt.paths import results_root
    from diffprompt.preflight import check_files, check_writable
    from diffprompt.train import check_config

    check_writable(results_dir or results_root())
    check_config(dg_cfg)
    if missing not in ("train", "error"):
        raise ValueError(f"dg_missing must be 'train' or 'error', got {missing!r}")
    if checkpoint and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"no DG checkpoint at {checkpoint}: pass the checkpoint.pt of a "
                                "finished DG run (results/runs/dg/<run>/), or '' to use results/")  # fmt: skip
    root = resolve_data_root(dg_cfg.data_root)
    for cfg in cfgs.values():
        check_tta(cfg, objectives, modes)
        fit_set, eval_set, n_fit, n_eval, _ = target_sets(cfg, root, dg_cfg.target_split)
        if not eval_set.labeled:
            raise ValueError(f"{cfg.target}: split {dg_cfg.target_split!r} has no labels to "
                             "evaluate on")  # fmt: skip
        check_files(fit_set, range(n_fit))
        check_files(eval_set, range(n_eval))


def target_sets(cfg: TTAConfig, root, eval_split: str, transform=None) -> tuple:
    """Return (fit set, evaluation set, images fitted on, images evaluated, fit-split note)
    of a target: the fit split of :func:`fit_split` and ``eval_split``, with the image
    limits of ``cfg`` (0 = all)."""
    from diffprompt.data import DATASETS, build_dataset

    split, note = fit_split(DATASETS[cfg.target], root)
    fit_set = build_dataset(cfg.target, split, root, transform=transform)
    eval_set = build_dataset(cfg.target, eval_split, root, transform=transform)
    n_fit = len(fit_set) if not cfg.fit_images else min(cfg.fit_images, len(fit_set))
    n_eval = len(eval_set) if not cfg.eval_images else min(cfg.eval_images, len(eval_set))
    return fit_set, eval_set, n_fit, n_eval, note


#: Named groups of targets: ``adverse`` is the paper's clear-to-adverse benchmark.
TARGET_GROUPS = {"adverse": ("acdc_fog", "acdc_night", "acdc_rain", "acdc_snow", "darkzurich")}


def resolve_targets(target: str | Sequence[str]) -> list[str]:
    """Return the targets of a run: ``"all"`` is every registered target, ``"adverse"`` ACDC
    fog/night/rain/snow and Dark Zurich; an unknown name is an error listing the choices."""
    names = [target] if isinstance(target, str) else list(target)
    out: list[str] = []
    for name in names:
        if name == "all":
            out += list(TARGETS)
        elif name in TARGET_GROUPS:
            out += list(TARGET_GROUPS[name])
        elif name in TARGETS:
            out.append(name)
        else:
            from diffprompt.io import did_you_mean

            raise ValueError(f"unknown target {name!r}; valid targets: {list(TARGETS)}, 'all' "
                             f"or {sorted(TARGET_GROUPS)}.{did_you_mean(name, TARGETS)}")  # fmt: skip
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Return the mean per-pixel entropy (nats) of softmax(logits) (B, C, H, W)."""
    logp = logits.float().log_softmax(1)
    return -(logp.exp() * logp).sum(1).mean()


def denoising_loss(backbone, latents: torch.Tensor, context: torch.Tensor,
                   generator: torch.Generator, t_range: tuple[int, int] = (0, 1000)) -> torch.Tensor:  # fmt: skip
    """Return the diffusion loss of ``latents`` (B, c, h, w) (VAE latents as the backbone
    encodes them) under ``context`` (B, N, D): MSE between the UNet's prediction and its
    target (the noise, or v for v-prediction) at a random timestep in ``t_range``.

    The latents are scaled by the VAE's ``scaling_factor`` as in diffusion training; noise and
    timesteps come from ``generator``, so two calls with equal generators see the same draws.
    """
    sched = backbone.scheduler
    b = latents.shape[0]
    sf = 1.0 if backbone.cfg.scale_latents else float(backbone.vae.config.scaling_factor)
    z = latents.float() * sf
    hi = min(t_range[1], sched.config.num_train_timesteps)
    t = torch.randint(t_range[0], hi, (b,), generator=generator)
    noise = torch.randn(z.shape, generator=generator)
    dev, dt = backbone.unet.device, backbone.unet.dtype
    noisy = sched.add_noise(z, noise, t).to(dev, dt)
    pred = backbone.unet(noisy, t.to(dev), context.to(dev, dt)).sample.float()
    if sched.config.prediction_type == "v_prediction":
        target = sched.get_velocity(z, noise, t)
    else:
        target = noise
    return F.mse_loss(pred, target.to(pred.device))


# ---------------------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------------------


class PromptTTA:
    """Learns the scene prompt of a trained DG model on unlabeled target images.

    ``trainer`` holds the trained model (its head, category tokens and scene prompt) and the
    feature cache. :meth:`model` builds a copy of the SegModel whose scene prompt is a
    :class:`LearnableScenePrompt` initialised from the training scene prompt, sharing the
    frozen backbone and the trained head.
    """

    def __init__(self, trainer: Trainer, cfg: TTAConfig, log: Callable[[str], None] = print):
        from diffprompt.train import build_model

        self.trainer, self.cfg, self.log = trainer, cfg, log
        dg = trainer.model
        if dg.prompts is None or dg.prompts.cfg.mode != "scene":
            raise ValueError(f"TTA learns the scene prompt, but the DG model was trained with "
                             f"prompt_mode={trainer.cfg.prompt_mode!r} (no scene prompt): use "
                             "fixed, random or random_consistency")  # fmt: skip
        self.dg = dg
        self.tta_model = build_model(trainer.cfg, trainer.device, dg.backbone, learnable_scene=True)
        self.tta_model.head.load_state_dict(dg.head.state_dict())
        missing, unexpected = self.tta_model.prompts.load_state_dict(dg.prompts.state_dict(),
                                                                     strict=False)  # fmt: skip
        assert not unexpected and all(k.startswith("scene_prompt.") for k in missing)
        self.tta_model.requires_grad_(False)
        self.words = self.tta_model.prompts.scene_prompt.words
        self.words.requires_grad_(True)
        self.tta_model.eval()

    # ------------------------------------------------------------------ pieces
    def reset(self) -> None:
        """Put the learned prompt back to the training scene prompt."""
        self.tta_model.prompts.scene_prompt.reset()

    def trainable(self) -> list[nn.Parameter]:
        """The parameters TTA changes: the scene prompt's word embeddings only."""
        return [p for p in self.tta_model.parameters() if p.requires_grad]

    def latents(self, dataset, idx: Sequence[int]) -> torch.Tensor:
        """VAE latents of target images (computed once, cached with the trainer's cache)."""
        cache = self.trainer.cache
        if cache is not None and cache.latent_key:
            return cache.latents(dataset, idx).to(self.trainer.device)
        x = torch.stack([dataset[i]["image"] for i in idx])
        return self.dg.backbone.encode(x)

    def loss(self, objective: str, dataset, idx: Sequence[int], g: torch.Generator) -> dict:
        """Return {"loss", "denoise", "entropy"} of one batch of target images."""
        model = self.tta_model
        z = self.latents(dataset, idx)
        out = {}
        if objective in ("denoise", "both"):
            ctx = model.context(len(idx))
            out["denoise"] = denoising_loss(model.backbone, z, ctx, g, self.cfg.denoise_t)
        if objective in ("entropy", "both"):  # at the head's resolution
            out["entropy"] = entropy(model.decode(self._features(model, z), None))
        total = out.get("denoise", 0.0) + self.cfg.entropy_weight * out.get("entropy", 0.0)
        return {"loss": total, **out}

    def step(self, opt: torch.optim.Optimizer, objective: str, dataset, idx: Sequence[int],
             g: torch.Generator) -> dict[str, float]:  # fmt: skip
        """One optimisation step of the scene prompt on ``idx``; returns the losses."""
        out = self.loss(objective, dataset, idx, g)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        return {k: float(v.detach()) for k, v in out.items()}

    @staticmethod
    def _features(model, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """The backbone's maps of latents ``z`` under the model's current context."""
        x = torch.zeros(len(z), 3, 1, 1)  # the latents stand for the images
        return model.backbone(x, model.context(len(z)), latents=z)

    @torch.no_grad()
    def predict(self, model, dataset, idx: Sequence[int]) -> torch.Tensor:
        """Return class indices (b, H, W) of target images under ``model`` (latents cached)."""
        z = self.latents(dataset, idx)
        f = model.backbone.vae_factor
        size = (z.shape[-2] * f, z.shape[-1] * f)
        return model.decode(self._features(model, z), size).argmax(1).cpu()

    def evaluate(self, model, dataset, indices: Sequence[int]) -> ConfusionMatrix:
        """Dataset-level confusion matrix of ``model`` over ``indices`` of a labeled set."""
        cm = ConfusionMatrix()
        b = self.cfg.batch_size * 2
        for s in range(0, len(indices), b):
            idx = list(indices[s : s + b])
            cm.update(self.predict(model, dataset, idx),
                      torch.stack([dataset[i]["mask"] for i in idx]))  # fmt: skip
        return cm

    def _enable_checkpointing(self) -> None:
        unet = self.tta_model.backbone.unet
        if self.cfg.gradient_checkpointing and hasattr(unet, "enable_gradient_checkpointing"):
            unet.enable_gradient_checkpointing()
            unet.train()  # diffusers checkpoints only in training mode; no dropout in SD

    # ------------------------------------------------------------------ fitting
    def fit_offline(self, objective: str, fit_set, fit_idx: Sequence[int], eval_set,
                    eval_idx: Sequence[int], start: ConfusionMatrix | None = None,
                    ) -> tuple[ConfusionMatrix, list[dict]]:  # fmt: skip
        """Learn the prompt on ``fit_idx`` of the unlabeled set for ``cfg.steps`` steps, then
        evaluate on ``eval_idx``. ``start``: the confusion matrix of the unadapted model (the
        curve's step 0; computed when not given). Returns (confusion matrix, curve rows:
        step, mIoU, losses)."""
        cfg = self.cfg
        self.reset()
        self._enable_checkpointing()
        opt = torch.optim.Adam([self.words], lr=cfg.lr)
        g = torch.Generator().manual_seed(cfg.seed)
        cm = start if start is not None else self.evaluate(self.tta_model, eval_set, eval_idx)
        curve = [{"step": 0, "mIoU": cm.miou()}]
        t0 = time.time()
        order = torch.randperm(len(fit_idx), generator=g).tolist()
        for step in range(1, cfg.steps + 1):
            start = ((step - 1) * cfg.batch_size) % len(order)
            batch = [fit_idx[order[(start + j) % len(order)]] for j in range(cfg.batch_size)]
            losses = self.step(opt, objective, fit_set, batch, g)
            if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
                cm = self.evaluate(self.tta_model, eval_set, eval_idx)
                miou = cm.miou()
                curve.append({"step": step, "mIoU": miou, **losses})
                self.log(f"TTA {objective} step {step}/{cfg.steps}: loss {losses['loss']:.4f}, "
                         f"mIoU {miou:.2f} ({time.time() - t0:.0f}s)")  # fmt: skip
        self.tta_model.eval()
        return cm, curve

    def fit_online(self, objective: str, eval_set, eval_idx: Sequence[int]) -> ConfusionMatrix:
        """Adapt while the labeled images stream in: each batch first updates the prompt
        (``online_steps`` steps on that batch, no labels), then is predicted."""
        cfg = self.cfg
        self.reset()
        self._enable_checkpointing()
        opt = torch.optim.Adam([self.words], lr=cfg.lr)
        g = torch.Generator().manual_seed(cfg.seed)
        cm = ConfusionMatrix()
        for s in range(0, len(eval_idx), cfg.batch_size):
            idx = list(eval_idx[s : s + cfg.batch_size])
            for _ in range(cfg.online_steps):
                self.step(opt, objective, eval_set, idx, g)
            self.tta_model.eval()
            cm.update(self.predict(self.tta_model, eval_set, idx),
                      torch.stack([eval_set[i]["mask"] for i in idx]))  # fmt: skip
        return cm

    def nearest_words(self, k: int = 3) -> list[dict[str, Any]]:
        """Per learned word position: the init word and the k nearest vocabulary tokens."""
        sp = self.tta_model.prompts.scene_prompt
        tok = self.dg.backbone.tokenizer
        init = [tok.decode([int(i)]) for i in sp.input_ids[1 : sp.eos_index]]
        near = sp.nearest_words(tok, k, whole_words=True)
        drift = ((sp.words - sp.init_words).norm(dim=-1) / sp.init_words.norm(dim=-1)).detach()
        return [{"position": i + 1, "init word": w, "nearest": ", ".join(n),
                 "relative change": float(d)} for i, (w, n, d) in enumerate(zip(init, near, drift,
                                                                                 strict=True))]  # fmt: skip

    # ------------------------------------------------------------------ baselines
    def tent(self, fit_set, fit_idx: Sequence[int], eval_set,
             eval_idx: Sequence[int]) -> tuple[ConfusionMatrix, nn.Module]:  # fmt: skip
        """TENT: minimise the prediction entropy on the fit images over the affine
        parameters of the normalisation layers (head, and UNet with ``tent_scope="all"``),
        everything else frozen, for ``cfg.steps`` steps; then evaluate. A copy of the DG
        model is adapted; returns (confusion matrix, the adapted copy)."""
        from diffprompt.backbones.diffusion import DiffusionBackbone
        from diffprompt.model import SegModel

        cfg, dg = self.cfg, self.dg
        bb = dg.backbone
        if cfg.tent_scope == "all":
            unet = type(bb.unet).from_config(bb.unet.config).to(bb.unet.device, bb.unet.dtype)
            unet.load_state_dict(bb.unet.state_dict())
            bb = DiffusionBackbone(bb.vae, unet, bb.text_encoder, bb.tokenizer, bb.scheduler,
                                   copy.deepcopy(bb.cfg), source=bb.source)  # fmt: skip
        model = SegModel(bb, copy.deepcopy(dg.head), dg.prompts)
        norms = (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm2d)
        scopes = [model.head] + ([bb.unet] if cfg.tent_scope == "all" else [])
        model.requires_grad_(False)
        params = [p for s in scopes for m in s.modules() if isinstance(m, norms)
                  for p in m.parameters(recurse=False)]  # fmt: skip
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=cfg.lr / 10)
        g = torch.Generator().manual_seed(cfg.seed)
        order = torch.randperm(len(fit_idx), generator=g).tolist()
        model.eval()
        for step in range(cfg.steps):
            start = (step * cfg.batch_size) % len(order)
            idx = [fit_idx[order[(start + j) % len(order)]] for j in range(cfg.batch_size)]
            with torch.enable_grad():
                loss = entropy(
                    model.decode(self._features(model, self.latents(fit_set, idx)), None)
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
        model.requires_grad_(False)
        return self.evaluate(model, eval_set, eval_idx), model

    def with_scene_text(self, text: str):
        """Return a copy of the DG model conditioned on another (fixed) scene prompt."""
        from diffprompt.train import build_model

        cfg = dataclasses.replace(self.trainer.cfg, scene_text=text)
        m = build_model(cfg, self.trainer.device, self.dg.backbone)
        m.head.load_state_dict(self.dg.head.state_dict())
        m.prompts.load_state_dict(self.dg.prompts.state_dict())
        return m.eval()


# ---------------------------------------------------------------------------------------
# One target, all rows of its table
# ---------------------------------------------------------------------------------------


def run_target(trainer: Trainer, cfg: TTAConfig, objectives: Sequence[str] = OBJECTIVES,
               modes: Sequence[str] = ("offline",), tent: bool = True, zero_shot: bool = True,
               log: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """Run every row of one target's TTA table. Returns {"table": rows, "curves": rows,
    "nearest": {objective: rows}, "fit_split": note, "examples": {row: prediction (H, W)},
    "example": (image, mask), "seconds": wall time}."""
    check_tta(cfg, objectives, modes)
    t0 = time.time()
    fit_set, eval_set, n_fit, n_eval, note = target_sets(
        cfg, trainer.root, trainer.cfg.target_split, trainer._eval_transform()
    )
    if n_fit == 0 or n_eval == 0:
        raise ValueError(f"{cfg.target}: no images to fit on ({note}) or to evaluate on")
    fit_idx, eval_idx = list(range(n_fit)), list(range(n_eval))
    tta = PromptTTA(trainer, cfg, log)
    rows, curves, nearest, examples = [], [], {}, {}
    ex = 0
    sample = eval_set[ex]

    def add(method: str, mode: str, cm: ConfusionMatrix, model) -> None:
        rows.append({"method": method, "mode": mode, "mIoU": cm.miou(),
                     "fit images": 0 if mode == "-" else (n_fit if mode == "offline" else n_eval)})  # fmt: skip
        examples[method if mode in ("-", "offline") else f"{method} ({mode})"] = tta.predict(
            model, eval_set, [ex])[0]  # fmt: skip

    base = tta.evaluate(tta.dg, eval_set, eval_idx)
    add("no adaptation", "-", base, tta.dg)
    log(f"{cfg.target}: no adaptation {rows[-1]['mIoU']:.2f} mIoU ({n_eval} images)")
    if zero_shot:
        text = TARGET_PROMPTS[cfg.target]
        zs = tta.with_scene_text(text)
        add(f'hand-written prompt "{text}"', "-", tta.evaluate(zs, eval_set, eval_idx), zs)
    if tent:
        add("TENT (normalisation affine)", "offline", *tta.tent(fit_set, fit_idx, eval_set,
                                                                eval_idx))  # fmt: skip
    for objective in objectives:
        for mode in modes:
            if mode == "offline":
                cm, curve = tta.fit_offline(objective, fit_set, fit_idx, eval_set, eval_idx, base)
                curves += [{"objective": objective, **c} for c in curve]
                nearest[objective] = tta.nearest_words()
            else:
                cm = tta.fit_online(objective, eval_set, eval_idx)
            add(f"TTA prompt: {objective}", mode, cm, tta.tta_model)
            log(f"{cfg.target}: TTA {objective} ({mode}) {rows[-1]['mIoU']:.2f} mIoU")
    return {"table": rows, "curves": curves, "nearest": nearest, "fit_split": note,
            "examples": examples, "example": (sample["image"], sample["mask"]),
            "seconds": time.time() - t0}  # fmt: skip


def curve_figure(curves: Sequence[dict], target: str):
    """Return a plot of mIoU against TTA steps, one line per objective."""
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.DataFrame(curves)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for obj, part in df.groupby("objective", sort=False):
        ax.plot(part["step"], part["mIoU"], marker="o", ms=3, label=obj)
    ax.set(xlabel="TTA step", ylabel="mIoU (%)", title=f"{target}: mIoU against TTA steps")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def prediction_figure(result: dict, target: str):
    """Return a figure of one target image: labels, and the prediction of every row."""
    from diffprompt.viz import overlay, panel_grid, to_uint8_image

    image, mask = result["example"]
    panels = {"image": to_uint8_image(image), "ground truth": overlay(image, mask)}
    for name, pred in result["examples"].items():
        short = (
            name.split(' "')[0]
            .replace("TTA prompt: ", "TTA ")
            .replace(" (normalisation affine)", "")
        )
        panels[short] = overlay(image, pred)
    names = list(panels)
    cols = min(4, len(names))
    rows = {}
    for r in range(math.ceil(len(names) / cols)):
        chunk = names[r * cols : (r + 1) * cols]
        chunk += [None] * (cols - len(chunk))
        blank = panels["image"] * 0 + 255
        rows[" " * r] = [panels[n] if n else blank for n in chunk]
    fig = panel_grid(rows, [""] * cols, width=3.2 * cols)
    for r, ax_row in enumerate(fig.axes[i : i + cols] for i in range(0, len(fig.axes), cols)):
        for c, ax in enumerate(ax_row):
            i = r * cols + c
            ax.set_title(names[i] if i < len(names) else "", fontsize=7)
    fig.suptitle(f"{target}: before and after test-time adaptation", fontsize=9, y=1.02)
    return fig


def dg_trainer(cfg: TrainConfig, results_dir=None, missing: str = "train", checkpoint: str = "",
               log: Callable[[str], None] = print) -> Trainer:  # fmt: skip
    """Return the trained DG model TTA starts from.

    ``checkpoint``: a checkpoint file to load (its configuration must equal ``cfg``, else a
    ConfigMismatchError names the fields that differ). Otherwise the finished run of
    ``cfg`` in results/runs/dg is used; when there is none, ``missing="train"`` trains it
    first (notebook 02's recipe) and ``missing="error"`` raises FileNotFoundError.
    """
    from diffprompt.experiments import cache_dir, dg_run_dir, train_dg

    if missing not in ("train", "error"):
        raise ValueError(f"missing must be 'train' or 'error', got {missing!r}")
    if checkpoint:
        t = Trainer(cfg, None, log=log, cache_dir=cache_dir(results_dir))
        if not t.load_checkpoint(checkpoint):
            raise FileNotFoundError(f"no DG checkpoint at {checkpoint}")
        if t.state.step < cfg.steps:
            raise ValueError(f"checkpoint {checkpoint} stopped at step {t.state.step} of "
                             f"{cfg.steps}: finish the run first (notebook 02)")  # fmt: skip
        return t
    done = dg_run_dir(cfg, results_dir) / "checkpoint.pt"
    if missing == "error" and not done.is_file():
        raise FileNotFoundError(f"no trained DG model for this configuration at {done}: run "
                                "notebook 02 with the same parameters, or pass missing='train'")  # fmt: skip
    return train_dg(cfg, results_dir, log=log)


def record_target(result: dict, target: str, run) -> Any:
    """Write one target's outputs through ``run`` (a :class:`diffprompt.results.Run`):
    tables tta_<target> (every row), tta_<target>_curve (mIoU against steps) and
    tta_<target>_nearest (nearest tokens of each learned word), figures tta_<target>_curve
    and tta_<target>_predictions. Returns the main table (a DataFrame)."""
    import pandas as pd

    table = pd.DataFrame(result["table"]).set_index("method")
    table["fit split"] = [result["fit_split"] if m != "-" else "-" for m in table["mode"]]
    run.table(table, f"tta_{target}",
              caption=f"{target}: mIoU (%) on its labeled split; fitted on {result['fit_split']}.")  # fmt: skip
    if result["curves"]:
        run.table(pd.DataFrame(result["curves"]).set_index(["objective", "step"]),
                  f"tta_{target}_curve", float_format="%.4f")  # fmt: skip
        run.figure(curve_figure(result["curves"], target), f"tta_{target}_curve", formats=("png",))
    near = [{"objective": o, **r} for o, rows in result["nearest"].items() for r in rows]
    if near:
        run.table(pd.DataFrame(near).set_index(["objective", "position"]),
                  f"tta_{target}_nearest", float_format="%.4f")  # fmt: skip
    run.figure(prediction_figure(result, target), f"tta_{target}_predictions", formats=("png",),
               dpi=90)  # fmt: skip
    return table


def summary_table(tables: dict[str, Any]) -> Any:
    """Return mIoU per method (rows, in the tables' order) and target (columns) from
    per-target tables; the hand-written prompts (one text per target) share a row."""
    import pandas as pd

    cols = {}
    for target, t in tables.items():
        key = []
        for m, mode in zip(t.index, t["mode"], strict=True):
            m = "hand-written target prompt" if m.startswith("hand-written prompt") else m
            key.append(f"{m} ({mode})" if mode == "online" else m)
        cols[target] = pd.Series(t["mIoU"].to_numpy(), index=key)
    order = list(dict.fromkeys(k for c in cols.values() for k in c.index))
    out = pd.DataFrame(cols).reindex(order)
    if len(out.columns) > 1:
        out["mean"] = out.mean(axis=1)
    return out
