"""What a domain-generalization run depends on: :class:`TrainConfig`, its presets, its hash,
its checks, and the command line's ``KEY=VALUE`` overrides.

The prompt modes give the method and its baselines (``PROMPT_MODES``):

=====================  ==========================================================  =======
prompt_mode            context while training                                      K, lam
=====================  ==========================================================  =======
null                   the empty prompt's encoding                                 1, 0
category               the category tokens only                                    1, 0
fixed                  [category ; the scene prompt ``scene_text``]                1, 0
random                 [category ; K prompts drawn from the descriptor vocabulary]  K, 0
random_consistency     the same, plus the consistency term (the method)            K, lam
caption                [category ; each image's own caption] (TADP)                1, 0
caption_only           each image's own caption alone                              1, 0
caption_random         [category ; K variants of the caption: its condition words  K, 0
                       replaced or dropped, ``caption_randomization``]
caption_consistency    the same, plus the consistency term                         K, lam
=====================  ==========================================================  =======

At test time every scene mode uses ``scene_text`` (or ``test_scene_text``); the caption
modes use each test image's own caption (``test_caption="caption"``, TADP's setting) or
that caption without its condition words (``"stripped"``). Captions come from the data set,
a captions file or a captioner (:mod:`diffprompt.captions`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from diffprompt.benchmarks import TARGETS
from diffprompt.captions import CAPTION_SOURCES, CAPTION_VARIANTS
from diffprompt.data import DATASETS, DEFAULT_SPLIT, SPLITS
from diffprompt.io import did_you_mean
from diffprompt.preflight import check_values, parse_assignments
from diffprompt.prompts import DEFAULT_SCENE_TEXT
from diffprompt.runtime import resolve_device

#: The modes conditioned on each image's own caption.
CAPTION_MODES = ("caption", "caption_only", "caption_random", "caption_consistency")
PROMPT_MODES = ("null", "category", "fixed", "random", "random_consistency", *CAPTION_MODES)
#: The modes that randomize the scene prompt over K prompts per step.
RANDOM_MODES = ("random", "random_consistency")
#: The caption modes that randomize the caption's condition words over K variants per step.
CAPTION_RANDOM_MODES = ("caption_random", "caption_consistency")
#: How a caption is randomized: its condition words replaced by phrases of a pool
#: (:data:`diffprompt.captions.REPLACEMENTS`), or the caption with and without them.
CAPTION_RANDOMIZATION = ("replace", "drop")
#: The caption fields, hashed only where they differ from their defaults (so that adding
#: them kept the hash, and the results, of every run without captions).
CAPTION_FIELDS = ("caption_source", "captions_file", "captioner", "caption_randomization")
CONSISTENCY_KINDS = ("js", "sym_kl")
#: Where the DG cross-entropy is computed (see diffprompt.dg.losses.cross_entropy).
LOSS_RESOLUTIONS = ("labels", "area", "nearest")
#: How a trained model predicts an image: whole (padded to the backbone's multiple) or by
#: sliding window (mmseg's "slide").
INFERENCE = ("whole", "slide")


@dataclass
class TrainConfig:
    """Everything a DG training run depends on (a comment per default; (ours) marks a
    reconstructed choice, see docs/METHOD.md)."""

    # --- data
    source: str = "gta5"  # registry name of the source domain
    source_split: str = "train"  # "train" reads "all" where a data set has no splits (SYNTHIA)
    targets: tuple[str, ...] = TARGETS  # evaluated after training
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
    scene_text: str = DEFAULT_SCENE_TEXT  # fixed/test scene prompt (ours)
    test_scene_text: str = ""  # scene prompt at test time ("" = scene_text)
    num_prompts: int = 2  # K, scene prompts per step in the random modes (ours)
    consistency_weight: float = 1.0  # lambda (ours)
    consistency: str = "js"  # "js" | "sym_kl" (ours)
    vocabulary_size: int = 0  # descriptors per vocabulary key (0 = all; ours)
    prompt_pool: int = 4  # prompts drawn once to randomize over (0 = fresh each step; ours)
    pool_seed: int = 0  # seed of the pool's draw (kept apart from ``seed``, so seeds of an
    #                     ablation share one pool and its cached features)
    caption_source: str = "auto"  # caption modes: "auto" (data set, file, captioner), "dataset",
    #                               "file" or "captioner" (diffprompt.captions; ours)
    captions_file: str = ""  # JSON {image name: caption} or CSV name,caption (real data)
    captioner: str = ""  # hub id or folder of a BLIP / BLIP-2 captioner ("": none)
    caption_randomization: str = "replace"  # "replace" the condition words or "drop" them
    test_caption: str = "caption"  # caption modes at test time: "caption" (TADP) or "stripped"
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
    loss_resolution: str = "area"  # cross-entropy at the head's resolution against class
    #   fractions ("area"), at the centre labels ("nearest"), or on logits upsampled to the
    #   labels ("labels": VPD, the paper preset); see diffprompt.dg.losses (ours)
    mixed_precision: str = "no"  # accelerate: "no" | "bf16" | "fp16" (fp16: CUDA only)
    cache_features: bool = True  # cache frozen features (see diffprompt.dg.trainer)
    # --- evaluation
    inference: str = "whole"  # "whole" | "slide" (INFERENCE)
    eval_crop: tuple[int, int] = (512, 512)  # sliding window (VPD: 512)
    eval_stride: tuple[int, int] = (341, 341)  # VPD: 341
    eval_batch: int = 8
    eval_every: int = 0  # the training curve: mIoU of the source's val split (or of held-out
    #   source images, see diffprompt.dg.data.curve_set) every N steps (0 = none)
    curve_images: int = 0  # images of that curve set (0 = all)
    # --- bookkeeping
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "mps"
    log_every: int = 25  # one log line every N steps (headless)
    ckpt_every: int = 100  # checkpoint every N steps (0 = only at the end)
    progress: str = "auto"  # "auto" | "bar" (tqdm) | "log"

    #: The documented range of every numeric field (of each value of a tuple), checked by
    #: :func:`check_config` (:func:`diffprompt.preflight.check_values`); a new numeric field
    #: needs its line here (a test walks every field).
    RANGES: ClassVar[dict[str, str]] = {
        "train_size": ">= 1",
        "crop": ">= 1",
        "scale_range": "> 0",
        "max_train_images": ">= 0",
        "max_eval_images": ">= 0",
        "blocks": ">= 0",
        "timesteps": "[0, 1000)",
        "unet_lr_mult": ">= 0",
        "num_prompts": ">= 1",
        "consistency_weight": ">= 0",
        "vocabulary_size": ">= 0",
        "prompt_pool": ">= 0",
        "pool_seed": ">= 0",
        "num_templates": ">= 1",
        "fpn_width": ">= 1",
        "head_width": ">= 1",
        "dropout": "[0, 1)",
        "steps": ">= 1",
        "batch_size": ">= 1",
        "grad_accum": ">= 1",
        "lr": "> 0",
        "weight_decay": ">= 0",
        "warmup": ">= 0",
        "poly_power": ">= 0",
        "eval_crop": ">= 1",
        "eval_stride": ">= 1",
        "eval_batch": ">= 1",
        "seed": ">= 0",
        "log_every": ">= 0",
        "ckpt_every": ">= 0",
        "eval_every": ">= 0",
        "curve_images": ">= 0",
    }

    def __post_init__(self):
        tuple_fields = (
            "targets",
            "train_size",
            "crop",
            "scale_range",
            "blocks",
            "timesteps",
            "eval_crop",
            "eval_stride",
        )
        for name in tuple_fields:
            value = getattr(self, name)
            if isinstance(value, list):
                setattr(self, name, tuple(value))
        if isinstance(self.targets, str):
            self.targets = (self.targets,)


#: Fields that do not change the trained model (excluded from its configuration hash).
NOT_HASHED = (
    "targets",
    "target_split",
    "eval_source",
    "max_eval_images",
    "inference",
    "eval_crop",
    "eval_stride",
    "eval_batch",
    "eval_every",
    "curve_images",
    "test_scene_text",
    "test_caption",
    "device",
    "log_every",
    "ckpt_every",
    "progress",
)

#: The paper protocol for GPU users (reconstructed from VPD, see docs/METHOD.md): SD 1.5,
#: 512 crops, batch 16, AdamW 8e-5 / wd 1e-3, poly schedule with 1500 warm-up steps over
#: 80k, sliding-window test with crop 512 and stride 341.
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
        loss_resolution="labels",
        attention_maps=True,
        adapter=True,
        cache_features=False,
        prompt_pool=0,
        mixed_precision="bf16",
        inference="slide",
        eval_crop=(512, 512),
        eval_stride=(341, 341),
        eval_batch=1,
        ckpt_every=2000,
        log_every=50,
    ),
}


@dataclass
class PresetChoice:
    """What a preset did to a configuration: the preset's fields it set (``kept``) and those
    an explicit value overrode (``overridden``: field -> {"preset": its value, "user": the
    value given}). ``str()`` is the log line; :meth:`record` the manifest's entry."""

    preset: str = ""
    kept: list[str] = dataclasses.field(default_factory=list)
    overridden: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """Return {"preset", "kept", "overridden"} as JSON-able data."""
        return json.loads(json.dumps(asdict(self)))

    def __str__(self) -> str:
        if not self.preset:
            return "no preset: every field as given"
        over = ", ".join(
            f"{k}={v['user']!r} (preset: {v['preset']!r})" for k, v in self.overridden.items()
        )
        return (
            f"preset {self.preset!r} sets {', '.join(self.kept) or 'nothing'}; "
            f"explicit settings override {over or 'none of its fields'}"
        )


def with_preset(
    cfg: TrainConfig, preset: str, explicit: Iterable[str] = ()
) -> tuple[TrainConfig, PresetChoice]:
    """Return ``cfg`` with the fields of ``PRESETS[preset]`` ("" = unchanged) except those in
    ``explicit`` (the fields the user set: a KEY=VALUE on the command line, a notebook
    parameter that differs from its default), which keep their values: explicit settings win
    over the preset. Also returns the :class:`PresetChoice` (kept and overridden fields).

    The preset's ``model`` applies only while ``cfg.model`` is the embedded default
    ``"toy-sd"``, so a local SD folder passed with the preset is kept (explicit or not).
    """
    if not preset:
        return cfg, PresetChoice()
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)} or ''")
    values = PRESETS[preset]
    explicit = set(explicit) | ({"model"} if cfg.model != "toy-sd" else set())
    kept = {k: v for k, v in values.items() if k not in explicit}
    overridden = {
        k: {"preset": v, "user": getattr(cfg, k)} for k, v in values.items() if k in explicit
    }
    return dataclasses.replace(cfg, **kept), PresetChoice(preset, list(kept), overridden)


def apply_preset(cfg: TrainConfig, preset: str, explicit: Iterable[str] = ()) -> TrainConfig:
    """Return ``cfg`` with the preset's fields but the ``explicit`` ones (:func:`with_preset`)."""
    return with_preset(cfg, preset, explicit)[0]


def preset_config(
    params: Mapping[str, Any], preset: str = "", explicit: Iterable[str] = ()
) -> tuple[TrainConfig, PresetChoice]:
    """Return a TrainConfig from a dict that may hold other keys (e.g. notebook parameters;
    unknown keys are ignored), the preset applied under the ``explicit`` fields
    (:func:`with_preset`), and the :class:`PresetChoice`."""
    names = {f.name for f in fields(TrainConfig)}
    known = {k: v for k, v in params.items() if k in names}
    return with_preset(TrainConfig(**known), preset, explicit)


def config_from(
    params: Mapping[str, Any], preset: str = "", explicit: Iterable[str] = ()
) -> TrainConfig:
    """Return the TrainConfig of :func:`preset_config`."""
    return preset_config(params, preset, explicit)[0]


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Return the config as JSON-able data."""
    return json.loads(json.dumps(asdict(cfg)))


def config_hash(cfg: TrainConfig) -> str:
    """Return a hex hash of the fields that determine the trained model."""
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.name in CAPTION_FIELDS}
    hashed = {
        k: v
        for k, v in config_dict(cfg).items()
        if k not in NOT_HASHED and not (k in defaults and v == defaults[k])
    }
    text = json.dumps(hashed, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def changed_fields(cfg: TrainConfig, other: Mapping[str, Any]) -> list[str]:
    """Return the hashed fields whose values differ between ``cfg`` and ``other`` (a
    :func:`config_dict` of another run), sorted."""
    mine = config_dict(cfg)
    return sorted(k for k in mine if k not in NOT_HASHED and other.get(k) != mine[k])


def source_split(cfg: TrainConfig) -> str:
    """Return the split a run trains on: ``cfg.source_split``, except that "train" of a data
    set without a train split (SYNTHIA-RAND-CITYSCAPES has none: the DG literature trains on
    all of it) is its only split, "all"."""
    if cfg.source_split == "train" and "train" not in SPLITS.get(cfg.source, ("train",)):
        return DEFAULT_SPLIT[cfg.source]
    return cfg.source_split


def effective_prompts(cfg: TrainConfig) -> tuple[int, float]:
    """Return (K, lambda) as the prompt mode uses them (1, 0 for the single-prompt modes)."""
    if cfg.prompt_mode == "random":
        return cfg.num_prompts, 0.0
    if cfg.prompt_mode == "random_consistency":
        return cfg.num_prompts, float(cfg.consistency_weight)
    if cfg.prompt_mode == "caption_random":
        return cfg.num_prompts, 0.0
    if cfg.prompt_mode == "caption_consistency":
        return cfg.num_prompts, float(cfg.consistency_weight)
    return 1, 0.0


def check_config(cfg: TrainConfig) -> None:
    """Raise a ValueError naming the problem and the fix for an invalid config, before
    any work starts: first every field's type and range (:data:`TrainConfig.RANGES`), then
    the names and the fields that depend on each other."""
    check_values(cfg)
    for name in (cfg.source, *cfg.targets):
        if name not in DATASETS:
            raise ValueError(
                f"unknown data set {name!r}; valid names: {sorted(DATASETS)}."
                f"{did_you_mean(name, DATASETS)}"
            )
    choices = {
        "prompt_mode": PROMPT_MODES,
        "consistency": CONSISTENCY_KINDS,
        "loss_resolution": LOSS_RESOLUTIONS,
        "caption_source": CAPTION_SOURCES,
        "caption_randomization": CAPTION_RANDOMIZATION,
        "test_caption": CAPTION_VARIANTS,
    }
    for name, allowed in choices.items():
        value = getattr(cfg, name)
        if value not in allowed:
            raise ValueError(f"unknown {name} {value!r}; choose one of {allowed}")
    if cfg.batch_size % cfg.grad_accum:
        raise ValueError(
            f"batch_size {cfg.batch_size} is not a multiple of grad_accum {cfg.grad_accum}: "
            "use a batch_size that grad_accum divides (each micro-batch is batch_size / "
            "grad_accum images)"
        )
    if cfg.inference not in INFERENCE:
        raise ValueError(f"inference must be 'whole' or 'slide', got {cfg.inference!r}")
    if cfg.mixed_precision not in ("no", "bf16", "fp16"):
        raise ValueError(
            f"mixed_precision must be 'no', 'bf16' or 'fp16', got {cfg.mixed_precision!r}"
        )
    if cfg.mixed_precision == "fp16" and resolve_device(cfg.device).type != "cuda":
        raise ValueError("mixed_precision='fp16' needs a CUDA GPU; use 'bf16' or 'no'")
    if cfg.progress not in ("auto", "bar", "log"):
        raise ValueError(f"progress must be 'auto', 'bar' or 'log', got {cfg.progress!r}")
    if cfg.cache_features and (cfg.adapter or cfg.finetune_unet):
        raise ValueError(
            "cache_features=True needs a frozen backbone and fixed prompts: set "
            "cache_features=False to train the TextAdapter or fine-tune the UNet"
        )
    if cfg.prompt_mode in RANDOM_MODES and cfg.prompt_pool == 1:
        raise ValueError(
            "prompt_pool=1 leaves nothing to randomize: use >= 2, 0 (fresh prompts), or "
            "prompt_mode='fixed'"
        )
    if cfg.prompt_mode in ("random_consistency", "caption_consistency") and cfg.num_prompts < 2:
        raise ValueError("the consistency loss compares K >= 2 predictions: set num_prompts >= 2")
    if cfg.prompt_mode in CAPTION_RANDOM_MODES:
        if cfg.caption_randomization == "drop" and cfg.num_prompts > 2:
            raise ValueError(
                "caption_randomization='drop' has two variants (the caption with and without "
                "its condition words): set num_prompts <= 2, or use 'replace'"
            )
        if cfg.caption_randomization == "replace" and cfg.prompt_pool == 1:
            raise ValueError(
                "prompt_pool=1 leaves one replacement, nothing to randomize: use >= 2 or 0 "
                "(every phrase of diffprompt.captions.REPLACEMENTS)"
            )
    if cfg.caption_source == "file" and not cfg.captions_file:
        raise ValueError("caption_source='file' needs captions_file=PATH (JSON or CSV)")
    if cfg.caption_source == "captioner" and not cfg.captioner:
        raise ValueError("caption_source='captioner' needs captioner=HUB_ID_OR_FOLDER")
    low, high = cfg.scale_range
    if not low <= high:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {cfg.scale_range}")


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """Return TrainConfig overrides from ``KEY=VALUE`` strings, each value parsed as its
    field's declared type (:func:`diffprompt.preflight.parse_assignments`: "flip=False",
    "steps=10", "targets=cityscapes,acdc_night", "crop=512,512", "train_size=None")."""
    return parse_assignments(TrainConfig, items)
