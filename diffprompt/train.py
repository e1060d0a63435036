"""Domain-generalization training with scene prompts and prompt randomization.

A segmentation head (Semantic FPN) is trained on the source domain only, on the features
of a frozen diffusion UNet conditioned on ``[category tokens ; scene tokens]``. Each step
the scene prompt takes K values; the loss is

    mean over the K prompts of cross-entropy  +  lambda * consistency(the K predictions)

with consistency the Jensen-Shannon divergence of the K predicted distributions (or their
mean pairwise symmetric KL), so the head learns to rely on what does not change when the
described scene does. The prompt modes give the baselines (``PROMPT_MODES``):

=====================  ==========================================================  =======
mode                   context while training                                      K, lam
=====================  ==========================================================  =======
null                   the empty prompt's encoding                                 1, 0
category               the category tokens only                                    1, 0
fixed                  [category ; the scene prompt ``scene_text``]                1, 0
random                 [category ; K prompts drawn from the descriptor vocabulary]  K, 0
random_consistency     the same, plus the consistency term (the method)            K, lam
=====================  ==========================================================  =======

At test time every scene mode uses ``scene_text`` (or ``test_scene_text``).

Two feature paths share everything else (loss, head, optimizer, schedule, checkpoints):

- ``cache_features=True`` (the embedded default): features of the source images (at
  ``train_size``, no random crops) are computed once per prompt and cached on disk
  (:class:`diffprompt.cache.FeatureCache`); randomization draws K prompts per step from a
  pool of ``prompt_pool`` prompts sampled once from the vocabulary. Horizontal flips are
  applied to features and labels together.
- ``cache_features=False`` (the paper protocol): every step loads images with random
  scale, crop and flip, encodes them with the VAE once and runs the UNet under each of the
  K prompts, drawn fresh from the vocabulary (``prompt_pool=0``) or from the pool.

Training runs on accelerate (mixed precision, gradient accumulation, multi-GPU with
``accelerate launch`` or :func:`launch` from a notebook). Batches, crops, flips and prompts
are functions of (seed, step), so a resumed run continues exactly and N processes see the
same global batch as one (each takes its share).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from diffprompt.labels import CLASSES, IGNORE_INDEX, NUM_CLASSES
from diffprompt.prompts import SCENE_TEMPLATE, SCENE_VOCABULARY, PromptConfig, sample_scene_prompts

PROMPT_MODES = ("null", "category", "fixed", "random", "random_consistency")
CONSISTENCY_KINDS = ("js", "sym_kl")
#: Targets of the single-source benchmarks on the miniature (GTA5 source).
DEFAULT_TARGETS = ("cityscapes", "bdd100k", "mapillary", "acdc_fog", "acdc_night", "acdc_rain",
                   "acdc_snow", "darkzurich")  # fmt: skip


# ---------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------


def _entropy(p: torch.Tensor, dim: int) -> torch.Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(dim)


def consistency_loss(logits: torch.Tensor, kind: str = "js",
                     valid: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Return the disagreement of K predictions, averaged over pixels.

    ``logits`` (K, B, C, H, W); ``kind``: ``"js"``, the generalized Jensen-Shannon
    divergence H(mean_k p_k) - mean_k H(p_k), or ``"sym_kl"``, the mean over pairs i < j of
    KL(p_i || p_j) + KL(p_j || p_i). ``valid`` (B, H, W) bool restricts the average to some
    pixels (all by default). Zero when the K predictions are identical, positive otherwise;
    zero for K = 1.
    """
    if kind not in CONSISTENCY_KINDS:
        raise ValueError(f"unknown consistency {kind!r}; choose one of {CONSISTENCY_KINDS}")
    k = logits.shape[0]
    if k < 2:
        return logits.sum() * 0.0
    logp = logits.float().log_softmax(2)  # (K, B, C, H, W)
    p = logp.exp()
    if kind == "js":
        per_pixel = _entropy(p.mean(0), 1) - _entropy(p, 2).mean(0)  # (B, H, W)
    else:
        terms = []
        for i in range(k):
            for j in range(i + 1, k):
                d = logp[i] - logp[j]
                terms.append(((p[i] - p[j]) * d).sum(1))  # KL(i||j) + KL(j||i)
        per_pixel = torch.stack(terms).mean(0)
    if valid is not None:
        v = valid.to(per_pixel.dtype)
        return (per_pixel * v).sum() / v.sum().clamp_min(1.0)
    return per_pixel.mean()


def dg_loss(logits: torch.Tensor, target: torch.Tensor, weight: float = 0.0,
            kind: str = "js", class_weight: torch.Tensor | None = None,
            ce_denominator: torch.Tensor | float | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """Return {"loss", "ce", "consistency"} of K predictions of one batch.

    ``logits`` (K, B, C, h, w), at the head's resolution or the labels'; ``target`` (B, H, W)
    trainIds. The cross-entropy of each prediction, upsampled (bilinear) to the labels,
    averaged over the K prompts, plus ``weight`` times :func:`consistency_loss` of the K
    predictions at their own resolution (reported also when ``weight`` is 0). K = 1 and
    weight 0 is plain cross-entropy. The cross-entropy is a mean over the batch's labeled
    pixels, or, with ``ce_denominator``, their sum divided by it (several processes divide
    by the global count over the number of processes, so that averaging their gradients
    gives the gradient of one process holding the whole batch).
    """
    k = logits.shape[0]
    size = tuple(target.shape[-2:])
    ce = []
    for i in range(k):
        li = logits[i].float()
        if tuple(li.shape[-2:]) != size:
            li = F.interpolate(li, size=size, mode="bilinear", align_corners=False)
        if ce_denominator is None:
            ce.append(F.cross_entropy(li, target, weight=class_weight, ignore_index=IGNORE_INDEX))
        else:
            ce.append(F.cross_entropy(li, target, weight=class_weight, ignore_index=IGNORE_INDEX,
                                      reduction="sum") / ce_denominator)  # fmt: skip
    ce = torch.stack(ce).mean()
    # measured whenever K > 1 (also with weight 0: how much the K predictions disagree)
    cons = consistency_loss(logits, kind) if k > 1 else ce.new_zeros(())
    return {"loss": ce + weight * cons, "ce": ce, "consistency": cons}


# ---------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Everything a DG training run depends on (a comment per default; (ours) marks a
    reconstructed choice, see docs/METHOD.md)."""

    # --- data
    source: str = "gta5"  # registry name of the source domain
    source_split: str = "train"  # "train" reads "all" where a data set has no splits (SYNTHIA)
    targets: tuple[str, ...] = DEFAULT_TARGETS  # evaluated after training
    target_split: str = "val"
    eval_source: bool = True  # also evaluate the source's val split (in-domain reference)
    data_root: str = "miniature"  # "miniature" (embedded) or a folder with the data sets
    train_size: tuple[int, int] | None = None  # resize source images to (h, w); None: as is
    crop: tuple[int, int] | None = None  # random crop (h, w), online path; None: whole image
    scale_range: tuple[float, float] = (1.0, 1.0)  # random rescale before the crop (online)
    flip: bool = True  # random horizontal flips
    max_train_images: int = 0  # use the first N source images (0 = all)
    max_eval_images: int = 0  # evaluate on the first N images of each target (0 = all)
    # --- backbone
    model: str = "toy-sd"  # bundled name, diffusers folder or hub id
    dtype: str = "fp32"  # backbone weights: fp32 | bf16 | fp16
    blocks: tuple[int, ...] | None = None  # UNet up_blocks read (None = all, VPD)
    timesteps: tuple[int, ...] = (1,)  # VPD: one pass at t = 1
    noise: bool = False  # noise the latent at each timestep (VPD: no)
    attention_maps: bool = False  # also feed the class tokens' cross-attention maps (VPD: yes)
    scale_latents: bool = False  # VPD: no
    finetune_unet: bool = False  # this paper: frozen; VPD: fine-tuned
    unet_lr_mult: float = 0.1  # learning-rate multiplier of a fine-tuned UNet (VPD: 0.1)
    # --- prompts
    prompt_mode: str = "random_consistency"  # one of PROMPT_MODES
    scene_text: str = "a photo of an urban street scene"  # fixed/test scene prompt (ours)
    test_scene_text: str = ""  # scene prompt at test time ("" = scene_text)
    num_prompts: int = 2  # K, scene prompts per step in the random modes (ours)
    consistency_weight: float = 1.0  # lambda (ours)
    consistency: str = "js"  # "js" | "sym_kl" (ours)
    vocabulary_size: int = 0  # descriptors per vocabulary key (0 = all; ours)
    prompt_pool: int = 4  # prompts drawn once to randomize over (0 = fresh each step; ours)
    pool_seed: int = 0  # seed of the pool's draw (kept apart from ``seed``, so seeds of an
    #                     ablation share one pool and its cached features)
    adapter: bool = False  # train VPD's TextAdapter on the category tokens (needs backprop
    #                        through the UNet; no feature cache)
    pooling: str = "eos"  # category embedding: "eos" (VPD) or "word"
    num_templates: int | None = None  # templates averaged per class (None = all)
    # --- head
    fpn_width: int = 32  # Semantic FPN channels (mmseg: 256)
    head_width: int = 32  # semantic-branch channels (mmseg: 128)
    dropout: float = 0.1
    # --- optimisation
    steps: int = 120  # optimizer steps
    batch_size: int = 8  # images per optimizer step (all processes and accumulation)
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-2  # AdamW (VPD: 8e-5 at batch 16 with a fine-tuned UNet)
    weight_decay: float = 1e-3  # VPD: 1e-3
    warmup: int = 20  # linear warm-up steps (VPD: 1500)
    poly_power: float = 1.0  # poly decay to 0 after warm-up (mmseg: 1.0)
    mixed_precision: str = "no"  # accelerate: "no" | "bf16" | "fp16" (fp16: CUDA only)
    cache_features: bool = True  # cache frozen features (see the module docstring)
    # --- evaluation
    eval_mode: str = "whole"  # "whole" | "slide"
    eval_crop: tuple[int, int] = (512, 512)  # sliding window (VPD: 512)
    eval_stride: tuple[int, int] = (341, 341)  # VPD: 341
    eval_batch: int = 8
    # --- bookkeeping
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "mps"
    log_every: int = 25  # one log line every N steps (headless)
    ckpt_every: int = 100  # checkpoint every N steps (0 = only at the end)
    progress: str = "auto"  # "auto" | "bar" (tqdm) | "log"

    def __post_init__(self):
        for name in ("targets", "train_size", "crop", "scale_range", "blocks", "timesteps",
                     "eval_crop", "eval_stride"):  # fmt: skip
            v = getattr(self, name)
            if isinstance(v, list):
                setattr(self, name, tuple(v))
        if isinstance(self.targets, str):
            self.targets = (self.targets,)


#: Fields that do not change the trained model (excluded from its configuration hash).
NOT_HASHED = ("targets", "target_split", "eval_source", "max_eval_images", "eval_mode",
              "eval_crop", "eval_stride", "eval_batch", "test_scene_text", "device",
              "log_every", "ckpt_every", "progress")  # fmt: skip

#: The paper protocol for GPU users (reconstructed from VPD, see ../docs/METHOD.md):
#: SD 1.5, 512 crops, batch 16, AdamW 8e-5 / wd 1e-3, poly schedule with 1500 warm-up
#: steps over 80k, sliding-window test with crop 512 and stride 341.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(
        model="stable-diffusion-v1-5/stable-diffusion-v1-5",
        crop=(512, 512),
        scale_range=(0.5, 2.0),
        flip=True,
        train_size=None,
        batch_size=16,
        steps=80_000,
        lr=8e-5,
        weight_decay=1e-3,
        warmup=1500,
        poly_power=1.0,
        fpn_width=256,
        head_width=128,
        dropout=0.1,
        attention_maps=True,
        adapter=True,
        cache_features=False,
        prompt_pool=0,
        mixed_precision="bf16",
        eval_mode="slide",
        eval_crop=(512, 512),
        eval_stride=(341, 341),
        eval_batch=1,
        ckpt_every=2000,
        log_every=50,
    ),  # fmt: skip
}


def source_split(cfg: TrainConfig) -> str:
    """Return the split a run trains on: ``cfg.source_split``, except that "train" of a data
    set without a train split (SYNTHIA-RAND-CITYSCAPES has none: the DG literature trains on
    all of it) is its only split, "all"."""
    from diffprompt.data import DEFAULT_SPLIT, SPLITS

    if cfg.source_split == "train" and "train" not in SPLITS.get(cfg.source, ("train",)):
        return DEFAULT_SPLIT[cfg.source]
    return cfg.source_split


def apply_preset(cfg: TrainConfig, preset: str) -> TrainConfig:
    """Return ``cfg`` with the fields of ``PRESETS[preset]`` ("" = unchanged).

    The preset's ``model`` applies only while ``cfg.model`` is the embedded default
    ``"toy-sd"``, so a local SD folder passed with the preset is kept.
    """
    if not preset:
        return cfg
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)} or ''")
    over = dict(PRESETS[preset])
    if cfg.model != "toy-sd":
        over.pop("model")
    return dataclasses.replace(cfg, **over)


def config_from(params: Mapping[str, Any], preset: str = "") -> TrainConfig:
    """Return a TrainConfig from a dict that may hold other keys (e.g. notebook parameters);
    unknown keys are ignored, then the preset is applied."""
    names = {f.name for f in fields(TrainConfig)}
    return apply_preset(TrainConfig(**{k: v for k, v in params.items() if k in names}), preset)


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Return the config as JSON-able data."""
    return json.loads(json.dumps(asdict(cfg)))


def config_hash(cfg: TrainConfig) -> str:
    """Return a hex hash of the fields that determine the trained model."""
    d = {k: v for k, v in config_dict(cfg).items() if k not in NOT_HASHED}
    return hashlib.blake2b(json.dumps(d, sort_keys=True).encode(), digest_size=8).hexdigest()


def check_config(cfg: TrainConfig) -> None:
    """Raise a ValueError naming the problem and the fix for an invalid config, before
    any work starts."""
    from diffprompt.data import DATASETS
    from diffprompt.io import did_you_mean

    def bad(msg: str) -> None:
        raise ValueError(msg)

    for name in (cfg.source, *cfg.targets):
        if name not in DATASETS:
            bad(f"unknown data set {name!r}; valid names: {sorted(DATASETS)}."
                f"{did_you_mean(name, DATASETS)}")  # fmt: skip
    if cfg.prompt_mode not in PROMPT_MODES:
        bad(f"unknown prompt_mode {cfg.prompt_mode!r}; choose one of {PROMPT_MODES}")
    if cfg.consistency not in CONSISTENCY_KINDS:
        bad(f"unknown consistency {cfg.consistency!r}; choose one of {CONSISTENCY_KINDS}")
    from diffprompt.preflight import check_fields

    check_fields(cfg, positive_int=("steps", "batch_size", "grad_accum", "num_prompts",
                                    "eval_batch"),
                 nonneg_int=("max_train_images", "max_eval_images", "vocabulary_size",
                             "prompt_pool", "warmup", "log_every", "ckpt_every"))  # fmt: skip
    if cfg.batch_size % cfg.grad_accum:
        bad(f"batch_size {cfg.batch_size} is not a multiple of grad_accum {cfg.grad_accum}: "
            "use a batch_size that grad_accum divides (each micro-batch is batch_size / "
            "grad_accum images)")  # fmt: skip
    if not cfg.lr > 0 or cfg.weight_decay < 0 or cfg.consistency_weight < 0:
        bad("lr must be > 0, weight_decay and consistency_weight >= 0")
    if cfg.eval_mode not in ("whole", "slide"):
        bad(f"eval_mode must be 'whole' or 'slide', got {cfg.eval_mode!r}")
    if cfg.mixed_precision not in ("no", "bf16", "fp16"):
        bad(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {cfg.mixed_precision!r}")
    from diffprompt.runtime import resolve_device

    if cfg.mixed_precision == "fp16" and resolve_device(cfg.device).type != "cuda":
        bad("mixed_precision='fp16' needs a CUDA GPU; use 'bf16' or 'no'")
    if cfg.progress not in ("auto", "bar", "log"):
        bad(f"progress must be 'auto', 'bar' or 'log', got {cfg.progress!r}")
    if cfg.cache_features and (cfg.adapter or cfg.finetune_unet):
        bad("cache_features=True needs a frozen backbone and fixed prompts: set "
            "cache_features=False to train the TextAdapter or fine-tune the UNet")  # fmt: skip
    if cfg.prompt_mode in ("random", "random_consistency") and cfg.prompt_pool == 1:
        bad("prompt_pool=1 leaves nothing to randomize: use >= 2, 0 (fresh prompts), or "
            "prompt_mode='fixed'")  # fmt: skip
    if cfg.prompt_mode == "random_consistency" and cfg.num_prompts < 2:
        bad("the consistency loss compares K >= 2 predictions: set num_prompts >= 2")
    if cfg.crop is not None and min(cfg.crop) < 1:
        bad(f"crop must be positive, got {cfg.crop}")
    lo, hi = cfg.scale_range
    if not 0 < lo <= hi:
        bad(f"scale_range must satisfy 0 < low <= high, got {cfg.scale_range}")


def effective_prompts(cfg: TrainConfig) -> tuple[int, float]:
    """Return (K, lambda) as the prompt mode uses them (1, 0 for the single-prompt modes)."""
    if cfg.prompt_mode == "random":
        return cfg.num_prompts, 0.0
    if cfg.prompt_mode == "random_consistency":
        return cfg.num_prompts, float(cfg.consistency_weight)
    return 1, 0.0


def vocabulary(size: int = 0) -> dict[str, tuple[str, ...]]:
    """Return the scene vocabulary with the first ``size`` descriptors of each key (0 = all)."""
    if size < 0:
        raise ValueError(f"vocabulary size must be >= 0, got {size}")
    return {k: v[:size] if size else v for k, v in SCENE_VOCABULARY.items()}


def prompt_pool(cfg: TrainConfig) -> list[str]:
    """Return the pool of scene prompts the random modes draw from ([] in the other modes or
    with ``prompt_pool=0``): ``prompt_pool`` distinct prompts sampled with ``pool_seed``
    (fewer when the vocabulary cannot make that many)."""
    if cfg.prompt_mode not in ("random", "random_consistency") or not cfg.prompt_pool:
        return []
    vocab = vocabulary(cfg.vocabulary_size)
    possible = math.prod(len(v) for v in vocab.values())
    g = torch.Generator().manual_seed(cfg.pool_seed)
    pool: list[str] = []
    tries = 0
    while len(pool) < min(cfg.prompt_pool, possible) and tries < 100 * cfg.prompt_pool:
        p = sample_scene_prompts(1, g, vocab, SCENE_TEMPLATE)[0]
        tries += 1
        if p not in pool:
            pool.append(p)
    return pool


def prompt_config(cfg: TrainConfig, learnable_scene: bool = False) -> PromptConfig:
    """Return the PromptConfig of a run's prompt mode."""
    mode = {"null": "null", "category": "category"}.get(cfg.prompt_mode, "scene")
    return PromptConfig(mode=mode, scene_text=cfg.scene_text, num_templates=cfg.num_templates,
                        pooling=cfg.pooling, adapter=cfg.adapter,
                        learnable_scene=learnable_scene)  # fmt: skip


def poly_lambda(warmup: int, total: int, power: float = 1.0) -> Callable[[int], float]:
    """Return the learning-rate factor of step s: linear warm-up over ``warmup`` steps, then
    poly decay (1 - progress) ** power to 0 at ``total``."""

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 1.0 - progress) ** power

    return f


# ---------------------------------------------------------------------------------------
# Building the model
# ---------------------------------------------------------------------------------------


def build_backbone(cfg: TrainConfig, device: torch.device | str = "cpu"):
    """Return the DiffusionBackbone of a config (frozen)."""
    from diffprompt.backbones.diffusion import DiffusionBackbone, FeatureConfig

    fc = FeatureConfig(blocks=cfg.blocks, timesteps=cfg.timesteps, noise=cfg.noise,
                       scale_latents=cfg.scale_latents,
                       attention_tokens=NUM_CLASSES if cfg.attention_maps else 0,
                       seed=cfg.seed)  # fmt: skip
    return DiffusionBackbone.from_pretrained(cfg.model, fc, dtype=cfg.dtype, device=device)


def build_model(cfg: TrainConfig, device: torch.device | str = "cpu", backbone=None,
                learnable_scene: bool = False):  # fmt: skip
    """Return the SegModel (backbone + prompts + head) of a config on ``device``.

    Pass ``backbone`` to reuse a loaded one (its feature config must match ``cfg``).
    """
    from diffprompt.heads import SemanticFPN
    from diffprompt.model import SegModel
    from diffprompt.prompts import Prompts

    bb = backbone if backbone is not None else build_backbone(cfg, device)
    torch.manual_seed(cfg.seed)  # the adapter's and the head's initial weights
    prompts = Prompts(bb.text_encoder, bb.tokenizer, CLASSES,
                      prompt_config(cfg, learnable_scene))  # fmt: skip
    if cfg.attention_maps and prompts.num_category_tokens == 0:
        raise ValueError(
            "attention_maps needs category tokens: use a prompt_mode other than 'null'"
        )
    head = SemanticFPN(bb.feature_channels, bb.feature_strides, NUM_CLASSES, cfg.fpn_width,
                       cfg.head_width, cfg.dropout)  # fmt: skip
    model = SegModel(bb, head, prompts, finetune_backbone=cfg.finetune_unet)
    return model.to(device)


# ---------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------


def _parent_cmdline() -> str:
    try:
        return Path(f"/proc/{os.getppid()}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def progress_mode(spec: str = "auto") -> str:
    """Return "bar" (tqdm) or "log" (a line every N steps) for ``spec``.

    "auto": ``$DIFFPROMPT_PROGRESS`` when set; "log" under papermill (the kernel's parent
    process is papermill) or with no terminal; "bar" in a terminal or an interactive
    Jupyter kernel.
    """
    if spec in ("bar", "log"):
        return spec
    env = os.environ.get("DIFFPROMPT_PROGRESS", "")
    if env in ("bar", "log"):
        return env
    if "ipykernel" in sys.modules:
        return "log" if "papermill" in _parent_cmdline() else "bar"
    return "bar" if sys.stderr.isatty() else "log"


# ---------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------


class ConfigMismatchError(ValueError):
    """A checkpoint was written by a run with another configuration."""


class CheckpointError(ValueError):
    """A checkpoint file cannot be read or is not a DG checkpoint."""


def _step_generator(seed: int, *keys: int) -> torch.Generator:
    h = hashlib.blake2b(json.dumps([seed, *keys]).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(h, "little") & ((1 << 63) - 1))


@dataclass
class TrainState:
    """Where a run stands (saved with every checkpoint)."""

    step: int = 0
    log: list[dict] = field(default_factory=list)
    seconds: float = 0.0


class Trainer:
    """Trains a SegModel's head on the source domain as a :class:`TrainConfig` says.

    >>> t = Trainer(cfg, out_dir="results/runs/dg/<hash>")
    >>> t.fit()            # resumes from out_dir/checkpoint.pt when present
    >>> t.evaluate()       # {target: ConfusionMatrix}

    ``out_dir=None`` keeps nothing on disk (no checkpoints; features cached in memory).
    """

    def __init__(self, cfg: TrainConfig, out_dir: str | os.PathLike | None = None,
                 log: Callable[[str], None] = print, backbone=None,
                 cache_dir: str | os.PathLike | None = None, accelerator=None):  # fmt: skip
        check_config(cfg)
        from accelerate import Accelerator

        from diffprompt.data import build_dataset
        from diffprompt.data.roots import resolve_data_root
        from diffprompt.runtime import resolve_device

        self.cfg, self.log = cfg, log
        self.out_dir = Path(out_dir) if out_dir is not None else None
        dev = resolve_device(cfg.device)
        self.acc = accelerator or Accelerator(
            cpu=dev.type == "cpu", mixed_precision=cfg.mixed_precision,
            gradient_accumulation_steps=cfg.grad_accum)  # fmt: skip
        if cfg.batch_size % (self.acc.num_processes * cfg.grad_accum):
            raise ValueError(f"batch_size {cfg.batch_size} must split evenly over "
                             f"{self.acc.num_processes} process(es) x {cfg.grad_accum} "
                             "accumulation step(s)")  # fmt: skip
        self.micro = cfg.batch_size // (self.acc.num_processes * cfg.grad_accum)
        self.device = self.acc.device
        self.root = resolve_data_root(cfg.data_root)
        split = source_split(cfg)
        self.source = build_dataset(cfg.source, split, self.root,
                                    transform=self._base_transform())  # fmt: skip
        if not self.source.labeled:
            raise ValueError(f"the source split {cfg.source}/{split} has no labels")
        n = len(self.source) if not cfg.max_train_images else min(cfg.max_train_images,
                                                                  len(self.source))  # fmt: skip
        if n == 0:
            raise ValueError(f"the source split {cfg.source}/{split} is empty")
        self.train_indices = list(range(n))
        self._preflight()
        self.model = build_model(cfg, self.device, backbone)
        self.multiple = getattr(self.model.backbone, "multiple", 1)
        self._check_sizes()
        self.k, self.lam = effective_prompts(cfg)
        self.pool = prompt_pool(cfg)
        self.vocab = vocabulary(cfg.vocabulary_size)
        self.cache = None
        if cfg.cache_features:
            from diffprompt.cache import FeatureCache

            self.cache = FeatureCache(self.model, cache_dir, batch_size=cfg.eval_batch)
        groups = self.model.param_groups(cfg.lr, cfg.unet_lr_mult)
        self.opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, poly_lambda(cfg.warmup, cfg.steps, cfg.poly_power)
        )
        self.ddp_model, self.opt = self.acc.prepare(self.model, self.opt)
        self.state = TrainState()
        self.hash = config_hash(cfg)
        self._mask_cache: dict[int, torch.Tensor] = {}
        self._loaded = False  # a checkpoint's state is loaded (fit continues from it)

    # ------------------------------------------------------------------ data
    def _preflight(self) -> None:
        """Open every evaluation set and read the files the run will use (source images it
        trains on, the images it evaluates), so that a missing split, an unreadable file, a
        label of the wrong size or with unknown values, or a crop larger than the images
        stops the run before it trains (see :mod:`diffprompt.preflight`)."""
        from diffprompt.preflight import check_crop, check_files

        self._eval_sets = self._open_eval_sets()
        summary = check_files(self.source, self.train_indices)
        check_crop(self.cfg.crop, summary.image_sizes, self.cfg.train_size)
        for name, ds in self._eval_sets.items():
            if not ds.labeled:
                raise ValueError(f"{name}: split {ds.split!r} has no labels to evaluate on; set "
                                 "target_split to a labeled split (e.g. 'val')")  # fmt: skip
            check_files(ds, range(self.eval_count(ds)))

    def _check_sizes(self) -> None:
        """Fail early on sizes the backbone cannot take: a train_size or crop that is not a
        multiple of the backbone's size unit, or (feature cache) source images of another
        size without a train_size."""
        m, cfg = self.multiple, self.cfg
        for name in ("train_size", "crop"):
            v = getattr(cfg, name)
            if v is not None and (v[0] % m or v[1] % m):
                raise ValueError(f"{name}={tuple(v)} is not a multiple of {m} (the backbone's "
                                 f"VAE factor x UNet downsampling); use e.g. "
                                 f"{(v[0] // m * m or m, v[1] // m * m or m)}")  # fmt: skip
        if not cfg.cache_features:
            return
        if cfg.train_size is None:
            h, w = self.source[0]["image"].shape[-2:]
            if h % m or w % m:
                raise ValueError(f"source images are {h}x{w} (HxW), not a multiple of {m}: set "
                                 "train_size=(h, w) (a multiple) to cache features, or "
                                 "cache_features=False with a crop")  # fmt: skip

    def _base_transform(self):
        """Resize to ``train_size`` (then to float in [0, 1]), or None (the data set's own
        float conversion)."""
        from diffprompt.data.transforms import Compose, Resize, ToFloat

        return Compose([Resize(self.cfg.train_size), ToFloat()]) if self.cfg.train_size else None

    def _positions(self, step: int, micro: int) -> range:
        """Return the global sample positions of this process's share of micro-batch
        ``micro`` of ``step`` (position p = the p-th image the run has drawn)."""
        b = self.cfg.batch_size
        start = step * b + micro * (b // self.cfg.grad_accum) + self.acc.process_index * self.micro
        return range(start, start + self.micro)

    def batch_indices(self, step: int, micro: int) -> list[int]:
        """Return this process's source indices of micro-batch ``micro`` of ``step``: the
        global batch is a slice of a per-epoch permutation, a function of (seed, step), so
        any split over processes and accumulation steps draws the same images."""
        n = len(self.train_indices)
        out = []
        for p in self._positions(step, micro):
            epoch, pos = divmod(p, n)
            if getattr(self, "_perm_epoch", None) != epoch:
                self._perm = torch.randperm(n, generator=_step_generator(self.cfg.seed, 1, epoch))
                self._perm_epoch = epoch
            out.append(self.train_indices[int(self._perm[pos])])
        return out

    def step_prompts(self, step: int) -> list[str | None]:
        """Return the K scene prompts of ``step`` (None = the model's own prompt)."""
        if self.k == 1:
            return [None]
        g = _step_generator(self.cfg.seed, 2, step)
        if self.pool:
            k = min(self.k, len(self.pool))
            return [self.pool[int(i)] for i in torch.randperm(len(self.pool), generator=g)[:k]]
        return sample_scene_prompts(self.k, g, self.vocab, SCENE_TEMPLATE)

    def _flips(self, step: int, micro: int) -> torch.Tensor:
        """Return the horizontal flip of each sample (bool (b,)), a function of its position."""
        pos = self._positions(step, micro)
        if not self.cfg.flip:
            return torch.zeros(len(pos), dtype=torch.bool)
        return torch.tensor([bool(torch.rand(1, generator=_step_generator(self.cfg.seed, 3, p)) < 0.5)
                             for p in pos])  # fmt: skip

    def _online_batch(self, idx: list[int], step: int, micro: int):
        """Load, rescale and crop source images, each seeded by its sample position."""
        from diffprompt.data.transforms import Compose, RandomCrop, RandomScale

        xs, ys = [], []
        for i, p in zip(idx, self._positions(step, micro), strict=True):
            g = _step_generator(self.cfg.seed, 4, p)
            ts = []
            if self.cfg.scale_range != (1.0, 1.0):
                ts.append(RandomScale(*self.cfg.scale_range, generator=g))
            if self.cfg.crop:
                ts.append(RandomCrop(self.cfg.crop, generator=g))
            s = self.source[i]
            s = Compose(ts)(s) if ts else s
            x, y = s["image"], s["mask"]
            ph, pw = -x.shape[-2] % self.multiple, -x.shape[-1] % self.multiple
            if ph or pw:  # pad to the backbone's size unit; padded pixels are ignored
                x = F.pad(x, (0, pw, 0, ph))
                y = F.pad(y, (0, pw, 0, ph), value=IGNORE_INDEX)
            xs.append(x)
            ys.append(y)
        if len({tuple(x.shape) for x in xs}) > 1:
            raise ValueError("source images of one batch differ in size: set a crop (or "
                             "train_size) so that they can be batched")  # fmt: skip
        return torch.stack(xs), torch.stack(ys)

    def _masks(self, idx: list[int]) -> torch.Tensor:
        """Return the source labels (b, H, W) of ``idx``, read once (trainIds fit uint8)."""
        for i in idx:
            if i not in self._mask_cache:
                self._mask_cache[i] = self.source[i]["mask"].to(torch.uint8)
        return torch.stack([self._mask_cache[i] for i in idx]).long()

    def micro_logits(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (logits (K, b, C, h, w) at the head's resolution, target (b, H, W)) of one
        micro-batch."""
        idx = self.batch_indices(step, micro)
        prompts = self.step_prompts(step)
        flips = self._flips(step, micro)
        b = len(idx)
        if self.cache is not None:  # maps of each prompt from the cache, flipped with labels
            y = self._masks(idx)
            per_prompt = [self.cache.get(self.source, idx, p, self.device) for p in prompts]
            f = {k: torch.cat([m[k] for m in per_prompt]) for k in per_prompt[0]}  # (K*b, ...)
            flip = flips.repeat(len(prompts)).to(self.device)[:, None, None, None]
            f = {k: torch.where(flip, v.flip(-1), v) for k, v in f.items()}
            logits = self.ddp_model(feats=f, native=True)  # one head pass for the K prompts
        else:  # augmented images, VAE once, the UNet under the K prompts in one batch
            x, y = self._online_batch(idx, step, micro)
            x = torch.where(flips[:, None, None, None], x.flip(-1), x).to(self.device)
            model = self.acc.unwrap_model(self.ddp_model)
            z = model.backbone.encode(x)
            texts = None if prompts == [None] else [p for p in prompts for _ in range(b)]
            xk, zk = x.repeat(len(prompts), 1, 1, 1), z.repeat(len(prompts), 1, 1, 1)
            logits = self.ddp_model(xk, scene_texts=texts, latents=zk, native=True)
        y = torch.where(flips[:, None, None], y.flip(-1), y)
        return logits.unflatten(0, (len(prompts), b)), y.to(self.device)

    # ------------------------------------------------------------------ checkpoints
    @property
    def ckpt_path(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / "checkpoint.pt"

    def trainable_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Return the state dicts of what training changes: head, prompts (adapter,
        learnable scene prompt) and, when fine-tuned, the UNet."""
        m = self.acc.unwrap_model(self.ddp_model)
        out = {"head": m.head.state_dict(), "prompts": m.prompts.state_dict()}
        if self.cfg.finetune_unet:
            out["unet"] = m.backbone.unet.state_dict()
        return out

    def save_checkpoint(self) -> Path | None:
        """Write out_dir/checkpoint.pt atomically (main process only)."""
        path = self.ckpt_path
        if path is None:
            return None
        if self.acc.is_main_process:
            from diffprompt.io import atomic_path

            payload = {"config": json.dumps(config_dict(self.cfg)), "config_hash": self.hash,
                       "state": json.dumps(asdict(self.state)), "model": self.trainable_state(),
                       "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                       "torch_rng": torch.get_rng_state()}  # fmt: skip
            with atomic_path(path) as tmp:
                torch.save(payload, tmp)
            for stale in path.parent.glob(f".{path.name}.*.tmp"):  # writes a kill cut short
                stale.unlink(missing_ok=True)
        self.acc.wait_for_everyone()
        return path

    def load_checkpoint(self, path: str | os.PathLike | None = None) -> bool:
        """Resume from a checkpoint (default: out_dir/checkpoint.pt); return whether one was
        read. A checkpoint of another configuration raises :class:`ConfigMismatchError`."""
        path = Path(path) if path is not None else self.ckpt_path
        if path is None or not path.is_file():
            return False
        d = load_checkpoint_file(path, self.cfg)
        m = self.acc.unwrap_model(self.ddp_model)
        try:
            m.head.load_state_dict(d["model"]["head"])
            m.prompts.load_state_dict(d["model"]["prompts"])
            if "unet" in d["model"]:
                m.backbone.unet.load_state_dict(d["model"]["unet"])
        except RuntimeError as e:  # same configuration, other shapes: the model changed
            first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln),
                         str(e).splitlines()[0])  # fmt: skip
            raise ConfigMismatchError(
                f"checkpoint {path} does not fit this model ({first}); it was written for a "
                f"model of other shapes (did the folder of model={self.cfg.model!r} change?): "
                "delete it or use another output folder to start over"
            ) from None
        self.opt.load_state_dict(d["optimizer"])
        self.sched.load_state_dict(d["scheduler"])
        torch.set_rng_state(d["torch_rng"])
        self.state = TrainState(**json.loads(d["state"]))
        self._loaded = True
        return True

    # ------------------------------------------------------------------ training
    def _ce_denominator(self, y: torch.Tensor) -> torch.Tensor | None:
        """With several processes: the labeled pixels of the micro-batch over all processes,
        divided by their number (None with one process: a plain mean). Processes whose
        shares hold different numbers of ignored pixels then still average their gradients
        to the one-process gradient."""
        if self.acc.num_processes == 1:
            return None
        n = (y != IGNORE_INDEX).sum().to(torch.float64)
        total = self.acc.reduce(n, reduction="sum")
        return (total / self.acc.num_processes).clamp_min(1.0).to(torch.float32)

    def fit(self, resume: bool = True, stop_at: int | None = None) -> TrainState:
        """Train to ``cfg.steps`` (resuming from the checkpoint in out_dir when ``resume``);
        checkpoint every ``ckpt_every`` steps and at the end. ``stop_at`` ends early after
        that step, with a checkpoint (as an interrupted run would leave). Returns the state."""
        cfg = self.cfg
        if resume and (self._loaded or self.load_checkpoint()):
            done = "finished run" if self.state.step >= cfg.steps else "resumed"
            self.log(f"{done}: {self.ckpt_path} at step {self.state.step}")
        else:
            torch.manual_seed(cfg.seed + self.acc.process_index)
        if self.state.step >= cfg.steps:
            return self.state
        if self.acc.is_main_process:
            self.log(f"training {cfg.prompt_mode} from step {self.state.step} on "
                     f"{self.acc.num_processes} process(es) ({self.device}), {self.micro} "
                     f"image(s) per process per micro-batch")  # fmt: skip
        mode = progress_mode(cfg.progress)
        bar = None
        if mode == "bar" and self.acc.is_main_process:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=self.state.step, desc=f"DG {cfg.prompt_mode}")
        self.ddp_model.train()
        t0 = time.time() - self.state.seconds
        end = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
        # accelerate keeps the accumulation count in a process-wide singleton, which another
        # Trainer of this process may have changed: set ours (and restart its micro count)
        self.acc.gradient_accumulation_steps = cfg.grad_accum
        self.acc.step = 0
        while self.state.step < end:
            step = self.state.step
            sums = {"loss": 0.0, "ce": 0.0, "consistency": 0.0}
            for micro in range(cfg.grad_accum):
                with self.acc.accumulate(self.ddp_model):
                    logits, y = self.micro_logits(step, micro)
                    out = dg_loss(logits, y, self.lam, cfg.consistency,
                                  ce_denominator=self._ce_denominator(y))  # fmt: skip
                    self.acc.backward(out["loss"])
                    self.opt.step()
                    self.opt.zero_grad(set_to_none=True)
                for k in sums:
                    sums[k] += out[k].item() / cfg.grad_accum
            self.sched.step()
            self.state.step += 1
            if self.acc.num_processes > 1:  # log the global batch's mean, as one process would
                t = self.acc.reduce(torch.tensor([sums[k] for k in sums], device=self.device),
                                    reduction="mean")  # fmt: skip
                sums = dict(zip(sums, t.tolist(), strict=True))
            s = self.state.step
            entry = {"step": s, **sums, "lr": self.sched.get_last_lr()[0],
                     "seconds": round(time.time() - t0, 2)}  # fmt: skip
            self.state.log.append(entry)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{sums['loss']:.3f}")
            elif self.acc.is_main_process and (s % cfg.log_every == 0 or s == cfg.steps
                                               or s == 1):  # fmt: skip
                self.log(f"step {s}/{cfg.steps} loss {sums['loss']:.4f} ce {sums['ce']:.4f} "
                         f"consistency {sums['consistency']:.4f} lr {entry['lr']:.2e} "
                         f"{entry['seconds']:.0f}s")  # fmt: skip
            self.state.seconds = time.time() - t0
            if cfg.ckpt_every and s % cfg.ckpt_every == 0 and s < cfg.steps:
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        self.ddp_model.eval()
        self.save_checkpoint()
        return self.state

    # ------------------------------------------------------------------ evaluation
    def test_scene(self) -> str | None:
        """The scene prompt used at test time (None: the model's own)."""
        t = self.cfg.test_scene_text
        return t if t and t != self.cfg.scene_text else None

    def predictor(self, dataset):
        """Return predict(images, indices) -> class indices (B, H, W) for ``dataset``."""
        return predictor(self.acc.unwrap_model(self.ddp_model), self.cfg, dataset, self.cache,
                         self.test_scene(), self.device)  # fmt: skip

    def eval_sets(self) -> dict[str, Any]:
        """Return {name: dataset} of what :meth:`evaluate` scores (source val first)."""
        return dict(self._eval_sets)

    def eval_count(self, dataset) -> int:
        """Return how many images of ``dataset`` are evaluated (the first ``max_eval_images``,
        0 = all)."""
        m = self.cfg.max_eval_images
        return min(len(dataset), m) if m else len(dataset)

    def _open_eval_sets(self) -> dict[str, Any]:
        from diffprompt.data import build_dataset

        out = {}
        if self.cfg.eval_source:
            from diffprompt.data import DATASETS

            ds = DATASETS[self.cfg.source](split=None, root=self.root)
            if "val" in ds.splits_on_disk():
                out[f"{self.cfg.source} (source val)"] = build_dataset(
                    self.cfg.source, "val", self.root, transform=self._base_transform()
                )
        for t in self.cfg.targets:
            out[t] = build_dataset(t, self.cfg.target_split, self.root,
                                   transform=self._eval_transform())  # fmt: skip
        return out

    def _eval_transform(self):
        # the feature cache reads images at train_size; the online path evaluates them as is
        return self._base_transform() if self.cfg.cache_features else None

    @torch.no_grad()
    def evaluate(self, sets: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Return {name: ConfusionMatrix} over the eval sets (dataset level)."""
        from diffprompt.evaluate import evaluate_predictions

        sets = self.eval_sets() if sets is None else sets
        self.ddp_model.eval()
        out = {}
        for name, ds in sets.items():
            n = self.eval_count(ds)
            out[name] = evaluate_predictions(self.predictor(ds), ds, range(n), self.cfg.eval_batch)
            if self.acc.is_main_process:
                eval_classes = getattr(ds, "eval_classes", None)
                self.log(f"{name}: mIoU {out[name].miou(eval_classes):.2f} ({n} images)")
        return out


def predictor(model, cfg: TrainConfig, dataset, cache=None, scene_text: str | None = None,
              device: torch.device | str = "cpu"):  # fmt: skip
    """Return predict(images (B, 3, H, W), indices) -> class indices (B, H, W).

    With a feature cache the images' maps are read from (or written to) it; else the model
    runs on the images, whole (padded to the backbone's multiple) or by sliding window.
    """
    from diffprompt.evaluate import predict_slide, predict_whole

    multiple = getattr(model.backbone, "multiple", 1)
    texts = None if scene_text is None else [scene_text]

    def logits_fn(x: torch.Tensor) -> torch.Tensor:
        return model(x.to(device), scene_texts=None if texts is None else texts * len(x))

    def predict(images: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
        if cache is not None:
            f = cache.get(dataset, indices, scene_text, device)
            return model(feats=f, size=tuple(images.shape[-2:])).argmax(1)
        if cfg.eval_mode == "slide":
            return predict_slide(logits_fn, images, cfg.eval_crop, cfg.eval_stride,
                                 NUM_CLASSES, multiple).argmax(1)  # fmt: skip
        return predict_whole(logits_fn, images, multiple).argmax(1)

    return predict


def load_checkpoint_file(path: str | os.PathLike, cfg: TrainConfig | None = None) -> dict:
    """Return a checkpoint's contents (read with ``weights_only=True``). With ``cfg``, a
    checkpoint written under another configuration raises :class:`ConfigMismatchError`
    naming the fields that differ."""
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or pickled objects beyond tensors
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0]}); "
            "it is truncated or not a diffprompt DG checkpoint: delete it (the run then starts "
            "over) or pass another file"
        ) from None
    if not isinstance(d, dict) or not {"config_hash", "model", "state"} <= set(d):
        raise CheckpointError(f"{path} is not a diffprompt DG checkpoint (it lacks config_hash, "
                              "model and state); pass a checkpoint.pt written by a DG run")  # fmt: skip
    if cfg is not None and d.get("config_hash") != config_hash(cfg):
        theirs = json.loads(d.get("config", "{}"))
        mine = config_dict(cfg)
        diff = sorted(k for k in mine if k not in NOT_HASHED and theirs.get(k) != mine[k])
        raise ConfigMismatchError(
            f"checkpoint {path} was written by a run with another configuration (fields "
            f"{diff or 'unknown'} differ); delete it or use another output folder to start over"
        )
    return d


# ---------------------------------------------------------------------------------------
# Command line: python -m diffprompt.train (or accelerate launch -m diffprompt.train)
# ---------------------------------------------------------------------------------------


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """Return TrainConfig overrides from ``KEY=VALUE`` strings. Values are JSON when they
    parse as JSON (numbers, true/false, null, lists), else strings; tuple fields take
    comma-separated items ("targets=cityscapes,acdc_night", "crop=512,512")."""
    names = {f.name: f for f in fields(TrainConfig)}
    out: dict[str, Any] = {}
    for kv in items:
        key, eq, value = kv.partition("=")
        if not eq:
            raise ValueError(f"expected KEY=VALUE, got {kv!r}")
        if key not in names:
            from diffprompt.io import did_you_mean

            raise ValueError(f"unknown TrainConfig field {key!r}.{did_you_mean(key, names)}")

        def one(v: str) -> Any:
            try:
                return json.loads(v)
            except json.JSONDecodeError:
                return v

        tuple_field = "tuple" in str(names[key].type)
        if tuple_field and value not in ("null", "None"):
            out[key] = tuple(one(v) for v in value.split(",") if v)
        else:
            out[key] = None if value == "None" else one(value)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(
        description="Train a DG segmentation head on the source and evaluate on the targets "
        "(one process, or several under `accelerate launch`).")  # fmt: skip
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="TrainConfig fields")
    p.add_argument("--preset", default="", help="'' or 'paper'")
    p.add_argument("--results", default="", help="results folder (default: results/)")
    p.add_argument("--retrain", action="store_true", help="start over even if finished")
    a = p.parse_args(argv)
    try:
        cfg = apply_preset(TrainConfig(**parse_overrides(a.overrides)), a.preset)
        check_config(cfg)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    from diffprompt.experiments import miou_table, train_dg

    try:
        trainer = train_dg(cfg, a.results or None, retrain=a.retrain)
        sets = trainer.eval_sets()
        cms = trainer.evaluate(sets)
    except (ValueError, FileNotFoundError, PermissionError) as e:  # bad input: says what to do
        raise SystemExit(f"error: {e}") from None
    if trainer.acc.is_main_process:
        print(miou_table(trainer, cms, sets).to_markdown(floatfmt=".2f"))


if __name__ == "__main__":
    main()
