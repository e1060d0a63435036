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
from dataclasses import asdict, dataclass
from typing import Any

from diffprompt.benchmarks import TARGETS
from diffprompt.captions import CAPTION_SOURCES, CAPTION_VARIANTS
from diffprompt.data import DATASETS, DEFAULT_SPLIT, SPLITS
from diffprompt.io import did_you_mean
from diffprompt.preflight import check_values, parse_assignments
from diffprompt.prompts import DEFAULT_SCENE_TEXT
from diffprompt.runtime import DTYPES, resolve_device
from diffprompt.settings import IF_SET, as_declared, hashed_names, setting, unhashed_names

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
CONSISTENCY_KINDS = ("js", "sym_kl")
#: Where the DG cross-entropy is computed (see diffprompt.dg.losses.cross_entropy).
LOSS_RESOLUTIONS = ("labels", "area", "nearest")
#: How a trained model predicts an image: whole (padded to the backbone's multiple) or by
#: sliding window (mmseg's "slide").
INFERENCE = ("whole", "slide")


#: How a class's category embedding pools its template's tokens (:mod:`diffprompt.text`).
POOLING = ("eos", "word")
#: Precisions accelerate takes (fp16 on CUDA only).
MIXED_PRECISION = ("no", "bf16", "fp16")
#: How training reports its progress: "auto" (a bar in a terminal, log lines under
#: papermill), "bar" (tqdm) or "log" (:func:`diffprompt.runtime.progress_mode`).
PROGRESS = ("auto", "bar", "log")


@dataclass
class TrainConfig:
    """Everything a DG training run depends on, each setting declared once with its help,
    range or choices and whether it changes the trained model (:mod:`diffprompt.settings`);
    (ours) marks a reconstructed choice, see docs/METHOD.md."""

    # --- data
    source: str = setting("gta5", "registry name of the source domain")
    source_split: str = setting(
        "train", 'its split ("train" reads "all" where a data set has no splits: SYNTHIA)'
    )
    targets: tuple[str, ...] = setting(TARGETS, "evaluated after training", hashed=False)
    target_split: str = setting("val", "the targets' split", hashed=False)
    eval_source: bool = setting(
        True, "also evaluate the source's val split (in-domain reference)", hashed=False
    )
    data_root: str = setting("miniature", '"miniature" (embedded) or a folder with the data sets')
    train_size: tuple[int, int] | None = setting(
        None, "resize source images to (h, w); None: as is", range=">= 1"
    )
    crop: tuple[int, int] | None = setting(
        None, "random crop (h, w), online path; None: whole image", range=">= 1"
    )
    scale_range: tuple[float, float] = setting(
        (1.0, 1.0), "random rescale before the crop (online)", range="> 0"
    )
    flip: bool = setting(True, "random horizontal flips")
    max_train_images: int = setting(0, "use the first N source images (0 = all)", range=">= 0")
    max_eval_images: int = setting(
        0, "evaluate on the first N images of each target (0 = all)", range=">= 0", hashed=False
    )
    # --- backbone
    model: str = setting("toy-sd", "bundled name, diffusers folder or hub id")
    dtype: str = setting("fp32", "the backbone's weights", choices=DTYPES)
    blocks: tuple[int, ...] | None = setting(
        None, "UNet up_blocks read (None = all, VPD)", range=">= 0"
    )
    timesteps: tuple[int, ...] = setting((1,), "VPD: one pass at t = 1", range="[0, 1000)")
    noise: bool = setting(False, "noise the latent at each timestep (VPD: no)")
    attention_maps: bool = setting(
        False, "also feed the class tokens' cross-attention maps (VPD: yes)"
    )
    scale_latents: bool = setting(False, "VPD: no")
    finetune_unet: bool = setting(False, "this paper: frozen; VPD: fine-tuned")
    unet_lr_mult: float = setting(
        0.1, "learning-rate multiplier of a fine-tuned UNet (VPD: 0.1)", range=">= 0"
    )
    # --- prompts
    prompt_mode: str = setting("random_consistency", "see PROMPT_MODES", choices=PROMPT_MODES)
    scene_text: str = setting(DEFAULT_SCENE_TEXT, "fixed/test scene prompt (ours)")
    test_scene_text: str = setting("", 'scene prompt at test time ("" = scene_text)', hashed=False)
    num_prompts: int = setting(
        2, "K, scene prompts per step in the random modes (ours)", range=">= 1"
    )
    consistency_weight: float = setting(1.0, "lambda (ours)", range=">= 0")
    consistency: str = setting("js", "the consistency term (ours)", choices=CONSISTENCY_KINDS)
    vocabulary_size: int = setting(
        0, "descriptors per vocabulary key (0 = all; ours)", range=">= 0"
    )
    prompt_pool: int = setting(
        4, "prompts drawn once to randomize over (0 = fresh each step; ours)", range=">= 0"
    )
    pool_seed: int = setting(
        0,
        "seed of the pool's draw (apart from seed, so the seeds of an ablation share one pool "
        "and its cached features)",
        range=">= 0",
    )
    caption_source: str = setting(
        "auto",
        'caption modes: "auto" (data set, file, captioner), "dataset", "file" or "captioner" '
        "(diffprompt.captions; ours)",
        choices=CAPTION_SOURCES,
        hashed=IF_SET,
    )
    captions_file: str = setting(
        "", "JSON {image name: caption} or CSV name,caption (real data)", hashed=IF_SET
    )
    captioner: str = setting(
        "", 'hub id or folder of a BLIP / BLIP-2 captioner ("": none)', hashed=IF_SET
    )
    caption_randomization: str = setting(
        "replace",
        '"replace" the condition words or "drop" them',
        choices=CAPTION_RANDOMIZATION,
        hashed=IF_SET,
    )
    test_caption: str = setting(
        "caption",
        'caption modes at test time: "caption" (TADP) or "stripped"',
        choices=CAPTION_VARIANTS,
        hashed=False,
    )
    adapter: bool = setting(
        False,
        "train VPD's TextAdapter on the category tokens (backprop through the UNet; no cache)",
    )
    pooling: str = setting("eos", 'category embedding: "eos" (VPD) or "word"', choices=POOLING)
    num_templates: int | None = setting(
        None, "templates averaged per class (None = all)", range=">= 1"
    )
    # --- head
    fpn_width: int = setting(32, "Semantic FPN channels (mmseg: 256)", range=">= 1")
    head_width: int = setting(32, "semantic-branch channels (mmseg: 128)", range=">= 1")
    dropout: float = setting(0.1, "before the classifier", range="[0, 1)")
    # --- optimisation
    steps: int = setting(120, "optimizer steps", range=">= 1")
    batch_size: int = setting(
        8, "images per optimizer step (all processes and accumulation)", range=">= 1"
    )
    grad_accum: int = setting(1, "micro-batches per optimizer step", range=">= 1")
    lr: float = setting(1e-2, "AdamW (VPD: 8e-5 at batch 16 with a fine-tuned UNet)", range="> 0")
    weight_decay: float = setting(1e-3, "VPD: 1e-3", range=">= 0")
    warmup: int = setting(20, "linear warm-up steps (VPD: 1500)", range=">= 0")
    poly_power: float = setting(1.0, "poly decay to 0 after warm-up (mmseg: 1.0)", range=">= 0")
    loss_resolution: str = setting(
        "area",
        'cross-entropy at the head\'s resolution against class fractions ("area"), at the '
        'centre labels ("nearest"), or on logits upsampled to the labels ("labels": VPD, the '
        "paper preset); see diffprompt.dg.losses (ours)",
        choices=LOSS_RESOLUTIONS,
    )
    mixed_precision: str = setting("no", "accelerate's precision", choices=MIXED_PRECISION)
    cache_features: bool = setting(True, "cache frozen features (see diffprompt.dg.trainer)")
    # --- evaluation
    inference: str = setting(
        "whole", "whole image or sliding window", choices=INFERENCE, hashed=False
    )
    eval_crop: tuple[int, int] = setting(
        (512, 512), "sliding window (VPD: 512)", range=">= 1", hashed=False
    )
    eval_stride: tuple[int, int] = setting(
        (341, 341), "sliding-window stride (VPD: 341)", range=">= 1", hashed=False
    )
    eval_batch: int = setting(8, "images per evaluation batch", range=">= 1", hashed=False)
    eval_every: int = setting(
        0,
        "the training curve: mIoU of the source's val split (or of held-out source images, "
        "see diffprompt.dg.data.curve_set) every N steps (0 = none)",
        range=">= 0",
        hashed=False,
    )
    curve_images: int = setting(0, "images of that curve set (0 = all)", range=">= 0", hashed=False)
    # --- bookkeeping
    seed: int = setting(0, "the head's init, the batch order, flips and prompts", range=">= 0")
    device: str = setting("auto", '"auto" | "cpu" | "cuda" | "mps"', hashed=False)
    log_every: int = setting(
        25, "one log line every N steps (headless)", range=">= 0", hashed=False
    )
    ckpt_every: int = setting(
        100, "checkpoint every N steps (0 = only at the end)", range=">= 0", hashed=False
    )
    progress: str = setting("auto", "see PROGRESS", choices=PROGRESS, hashed=False)

    def __post_init__(self):
        if isinstance(self.targets, str):
            self.targets = (self.targets,)
        as_declared(self)


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


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Return the config as JSON-able data."""
    return json.loads(json.dumps(asdict(cfg)))


def config_hash(cfg: TrainConfig) -> str:
    """Return a hex hash of the fields that determine the trained model (those declared
    hashed, :func:`diffprompt.settings.hashed_names`)."""
    values = config_dict(cfg)
    hashed = {k: values[k] for k in hashed_names(cfg)}
    text = json.dumps(hashed, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def changed_fields(cfg: TrainConfig, other: Mapping[str, Any]) -> list[str]:
    """Return the fields that can change the trained model whose values differ between
    ``cfg`` and ``other`` (a :func:`config_dict` of another run), sorted."""
    mine, unhashed = config_dict(cfg), set(unhashed_names(type(cfg)))
    return sorted(k for k in mine if k not in unhashed and other.get(k) != mine[k])


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
    any work starts: first every field's type, range and choices (declared with the field,
    :func:`diffprompt.preflight.check_values`), then the data set names and the fields that
    depend on each other."""
    check_values(cfg)
    for name in (cfg.source, *cfg.targets):
        if name not in DATASETS:
            raise ValueError(
                f"unknown data set {name!r}; valid names: {sorted(DATASETS)}."
                f"{did_you_mean(name, DATASETS)}"
            )
    if cfg.batch_size % cfg.grad_accum:
        raise ValueError(
            f"batch_size {cfg.batch_size} is not a multiple of grad_accum {cfg.grad_accum}: "
            "use a batch_size that grad_accum divides (each micro-batch is batch_size / "
            "grad_accum images)"
        )
    if cfg.mixed_precision == "fp16" and resolve_device(cfg.device).type != "cuda":
        raise ValueError("mixed_precision='fp16' needs a CUDA GPU; use 'bf16' or 'no'")
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


def parse_overrides(items: Sequence[str], cls: type = TrainConfig) -> dict[str, Any]:
    """Return TrainConfig (or ``cls``) overrides from ``KEY=VALUE`` strings, each value
    parsed as its field's declared type (:func:`diffprompt.preflight.parse_assignments`:
    "flip=False", "steps=10", "targets=cityscapes,acdc_night", "crop=512,512",
    "train_size=None")."""
    return parse_assignments(cls, items)
