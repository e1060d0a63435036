"""Test-time adaptation: learn the scene prompt on unlabeled target images.

Everything is frozen (VAE, UNet, text encoder, category tokens, head) except the input
token embeddings of the scene prompt's words (:class:`diffprompt.prompts.
LearnableScenePrompt`), initialised from the scene prompt the head was trained with. They
are optimised on unlabeled images of the target domain with

- ``denoise``: the diffusion noise-prediction loss of the target images' latents under
  the context [category tokens ; learned scene prompt], as textual inversion learns a
  word (the target of the UNet's own prediction type: noise, or v for v-prediction);
- ``entropy``: the mean entropy of the head's per-pixel predictions
  (:func:`diffprompt.dg.losses.mean_entropy`);
- ``both``: their sum (``entropy_weight`` scales the entropy term).

Then the target is segmented with the learned prompt. Two settings (``SETTINGS``):
``offline`` fits on a set of target images (the target's unlabeled split) and evaluates
on its labeled split; ``online`` adapts as the evaluation batches stream in (one update
per batch, then its prediction).

With ``start`` (:class:`CaptionStart`), TTA starts from each target image's own caption
instead of the training scene prompt: every image keeps its caption, whose condition words
(e.g. "at night") become one learned span shared by the target (:class:`diffprompt.prompts.
LearnedSpan`), initialised from the condition phrase the fit images' captions use most.

:class:`TargetScorer` reads and scores the target images for every method (the latents from
the DG run's feature cache; the maps of a fixed prompt kept by it, :meth:`diffprompt.cache.
FeatureCache.batch`). Baselines: a hand-written target prompt (zero-shot prompting,
:func:`with_scene_text`) and TENT (:mod:`diffprompt.tent`).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diffprompt.backbones.diffusion import DiffusionBackbone
from diffprompt.benchmarks import GROUPS, TARGETS, eval_classes
from diffprompt.captions import CaptionBook, CaptionPrompt, condition_phrase
from diffprompt.data import UNLABELED_SPLITS, SegDataset, available_splits, build_dataset
from diffprompt.dg.losses import mean_entropy
from diffprompt.evaluate import ConfusionMatrix, predicted_classes
from diffprompt.io import did_you_mean
from diffprompt.labels import CLASSES
from diffprompt.model import SegModel
from diffprompt.preflight import check_values
from diffprompt.prompts import OWN_PROMPT, LearnedSpan, Prompt, Prompts, assemble_conditioning
from diffprompt.settings import as_declared, setting

OBJECTIVES = ("denoise", "entropy", "both")
#: offline: fit on the target's unlabeled images, then evaluate; online: adapt on each
#: evaluation batch as it streams in, then predict it.
SETTINGS = ("offline", "online")


#: TENT's normalisation layers: those of the head and the UNet, or of the head only.
TENT_SCOPES = ("all", "head")


@dataclass
class TTAConfig:
    """How the scene prompt is learned on the target (all ours)."""

    target: str = setting("acdc_night", "the target adapted to")
    source: str = setting("cityscapes", "the DG model's source (decides the classes mIoU averages)")
    steps: int = setting(
        6, "optimisation steps (offline) or updates per batch x batches (online)", range=">= 1"
    )
    lr: float = setting(
        1e-3,
        "Adam on the word embeddings (1e-2 moved them 2-3x their norm in 10 steps on the "
        "embedded model; 1e-3 about 0.4x)",
        range="> 0",
    )
    fit_images: int = setting(
        12, "unlabeled target images the prompt is fitted on (0 = all)", range=">= 0"
    )
    batch_size: int = setting(2, "target images per step", range=">= 1")
    eval_images: int = setting(16, "labeled target images evaluated (0 = all)", range=">= 0")
    entropy_weight: float = setting(1.0, 'weight of the entropy term in "both"', range=">= 0")
    denoise_t: tuple[int, int] = setting(
        (0, 1000), "timesteps of the denoising loss, [low, high)", range="[0, 1000]"
    )
    eval_every: int = setting(
        0, "mIoU every N steps for the curve (0 = only before and after)", range=">= 0"
    )
    online_steps: int = setting(1, "updates per streamed batch (online setting)", range=">= 1")
    tent_scope: str = setting("all", "TENT's normalisation layers", choices=TENT_SCOPES)
    gradient_checkpointing: bool = setting(
        False, "trade compute for memory in the UNet (full size)"
    )
    caption_span: str = setting(
        "",
        'TTA from the caption: the learned span\'s init ("": the condition phrase most of the '
        "fit captions hold, CAPTION_SPAN when none)",
    )
    seed: int = setting(0, "the batches and the noise", range=">= 0")

    def __post_init__(self):
        as_declared(self)


def check_tta(cfg: TTAConfig, objectives: Sequence[str], settings: Sequence[str]) -> None:
    """Raise a ValueError naming the problem for a bad TTA configuration, before any work:
    every field's type, range and choices first (declared with the fields)."""
    check_values(cfg)
    if cfg.target not in TARGETS:
        raise ValueError(
            f"unknown target {cfg.target!r}; valid targets: {list(TARGETS)}, 'all' or "
            f"{sorted(GROUPS)}.{did_you_mean(cfg.target, TARGETS)}"
        )
    for objective in objectives:
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown TTA objective {objective!r}; choose from {OBJECTIVES}")
    for name in settings:
        if name not in SETTINGS:
            raise ValueError(f"unknown TTA setting {name!r}; choose from {SETTINGS}")
    low, high = cfg.denoise_t
    if not 0 <= low < high:
        raise ValueError(f"denoise_t must be [low, high) with 0 <= low < high, got {cfg.denoise_t}")


#: The learned span's init when no fit caption holds a condition phrase (ours).
CAPTION_SPAN = "in daylight"


@dataclass(frozen=True)
class CaptionStart:
    """Where TTA from the caption starts: each image's caption (``book``) with its condition
    words replaced by ``phrase``, the learned span's init (:func:`caption_start`); a
    :class:`diffprompt.prompts.Prompt`."""

    book: CaptionBook
    phrase: str

    def texts(self, dataset, indices: Sequence[int]) -> list[str]:
        """Each image's caption with the span in place of its condition words."""
        return CaptionPrompt(self.book, f"replace:{self.phrase}").texts(dataset, indices)


def caption_start(
    book: CaptionBook, dataset, indices: Sequence[int], phrase: str = ""
) -> CaptionStart:
    """Return the start of TTA from the caption on ``indices`` of the fit set: ``phrase``, or
    when it is "" the condition phrase most of these images' captions hold (the first in
    caption order on a tie; :data:`CAPTION_SPAN` when none holds one)."""
    if not phrase:
        found = (condition_phrase(book.caption(dataset, int(i))) for i in indices)
        common = Counter(p for p in found if p is not None).most_common(1)  # ties: first seen
        phrase = common[0][0] if common else CAPTION_SPAN
    return CaptionStart(book, phrase)


def fit_split(target: str, root: str | os.PathLike) -> tuple[str, str]:
    """Return (split, note) of the images TTA may fit on for a target: its unlabeled split
    when it has one on disk (Dark Zurich train, ACDC test, Cityscapes/BDD100K/Mapillary
    test), else its train split with the labels unused."""
    on_disk = available_splits(target, root)
    for split in ("train", "test"):
        if split in UNLABELED_SPLITS[target] and split in on_disk:
            return split, f"{split} (unlabeled)"
    return "train", "train (labels unused: no unlabeled split on disk)"


@dataclass
class TargetSets:
    """The images of one target TTA uses: ``fit`` (its fit split, :func:`fit_split`) and
    ``evaluation`` (its labeled split), the first ``n_fit`` / ``n_eval`` of each."""

    fit: SegDataset
    evaluation: SegDataset
    n_fit: int
    n_eval: int
    note: str  # which split is fitted on, and whether its labels exist


def target_sets(cfg: TTAConfig, root, eval_split: str, transform=None) -> TargetSets:
    """Return the :class:`TargetSets` of ``cfg.target`` under ``root``: the fit split of
    :func:`fit_split` and ``eval_split``, opened with ``transform``, with the image limits of
    ``cfg`` (0 = all)."""
    split, note = fit_split(cfg.target, root)
    fit_set = build_dataset(cfg.target, split, root, transform=transform)
    eval_set = build_dataset(cfg.target, eval_split, root, transform=transform)
    n_fit = min(cfg.fit_images, len(fit_set)) if cfg.fit_images else len(fit_set)
    n_eval = min(cfg.eval_images, len(eval_set)) if cfg.eval_images else len(eval_set)
    return TargetSets(fit_set, eval_set, n_fit, n_eval, note)


# ---------------------------------------------------------------------------------------
# The denoising loss
# ---------------------------------------------------------------------------------------


def denoising_loss(
    backbone: DiffusionBackbone,
    latents: torch.Tensor,
    context: torch.Tensor,
    generator: torch.Generator,
    t_range: tuple[int, int] = (0, 1000),
) -> torch.Tensor:
    """Return the diffusion loss of ``latents`` (B, c, h, w) (VAE latents as the backbone
    encodes them) under ``context`` (B, N, D): MSE between the UNet's prediction and its
    target (the noise, or v for v-prediction) at a random timestep in ``t_range``.

    The latents are scaled by the VAE's ``scaling_factor`` as in diffusion training; noise and
    timesteps come from ``generator``, so two calls with equal generators see the same draws.
    """
    sched = backbone.scheduler
    b = latents.shape[0]
    scale = 1.0 if backbone.cfg.scale_latents else float(backbone.vae.config.scaling_factor)
    z = latents.float() * scale
    high = min(t_range[1], sched.config.num_train_timesteps)
    t = torch.randint(t_range[0], high, (b,), generator=generator)
    noise = torch.randn(z.shape, generator=generator)
    dev, dt = backbone.unet.device, backbone.unet.dtype
    noisy = sched.add_noise(z, noise, t).to(dev, dt)
    pred = backbone.unet(noisy, t.to(dev), context.to(dev, dt)).sample.float()
    if sched.config.prediction_type == "v_prediction":
        target = sched.get_velocity(z, noise, t)
    else:
        target = noise
    return F.mse_loss(pred, target.to(pred.device))


def cycled_batches(order: Sequence[int], batch_size: int, steps: int, offset: int = 1):
    """Yield, for steps ``offset .. offset + steps - 1``, the step and its batch: the next
    ``batch_size`` items of ``order``, cycling."""
    for step in range(offset, offset + steps):
        start = ((step - offset) * batch_size) % len(order)
        yield step, [order[(start + j) % len(order)] for j in range(batch_size)]


# ---------------------------------------------------------------------------------------
# Reading and scoring the target
# ---------------------------------------------------------------------------------------

#: Evaluation batches hold this many fit batches: evaluation keeps no gradients, so twice a
#: fit batch fits the memory one adaptation step takes (ours).
EVAL_BATCH_SCALE = 2

#: A batch's context: (dataset, indices) -> (B, N, D).
ContextOf = Callable[[Any, Sequence[int]], torch.Tensor]


def prompted(model: SegModel, prompt: Prompt = OWN_PROMPT) -> ContextOf:
    """Return the context of a batch under ``model`` prompted with ``prompt``."""
    return lambda dataset, idx: model.context(len(idx), prompt.texts(dataset, idx))


class TargetScorer:
    """Reads and scores target images for TTA and its baselines: their VAE latents (from the
    DG run's feature cache when there is one, else encoded by ``backbone``), a model's maps
    and class predictions under a batch's context, and the dataset-level confusion matrix
    over a labeled set. ``cfg``: its ``source`` decides the classes mIoU averages, its
    ``batch_size`` the evaluation batches (:data:`EVAL_BATCH_SCALE` fit batches)."""

    def __init__(self, backbone: DiffusionBackbone, cfg: TTAConfig, cache=None) -> None:
        self.backbone, self.cache, self.source = backbone, cache, cfg.source
        self.batch_size = cfg.batch_size * EVAL_BATCH_SCALE

    def latents(self, dataset, idx: Sequence[int]) -> torch.Tensor:
        """VAE latents (b, c, h, w) of target images."""
        if self.cache is not None and self.cache.latent_key:
            return self.cache.latents(dataset, idx).to(self.backbone.unet.device)
        x = torch.stack([dataset[i]["image"] for i in idx])
        return self.backbone.encode(x)

    @staticmethod
    def maps(model: SegModel, z: torch.Tensor, ctx: torch.Tensor) -> dict[str, torch.Tensor]:
        """The backbone's maps of latents ``z`` under the context ``ctx`` (B, N, D)."""
        x = torch.zeros(len(z), 3, 1, 1)  # the latents stand for the images
        return model.backbone(x, ctx, latents=z)

    def miou(self, cm: ConfusionMatrix, dataset) -> float:
        """The mIoU (%) of a confusion matrix on ``dataset``, over
        :func:`diffprompt.benchmarks.eval_classes` of the DG model's source."""
        return cm.miou(eval_classes(self.source, dataset))

    @torch.no_grad()
    def predict(
        self,
        model: SegModel,
        dataset,
        idx: Sequence[int],
        context_of: ContextOf | None = None,
        fixed: bool = False,
    ) -> torch.Tensor:
        """Return class indices (b, H, W) of target images under ``model`` and the context
        ``context_of`` gives (None: the model's own). ``fixed``: the context does not change
        while a session runs (no adaptation, a hand-written prompt, each image's caption), so
        the maps are kept by the feature cache and shared across seeds, whose DG models
        share the frozen backbone (:meth:`diffprompt.cache.FeatureCache.batch`)."""
        z = self.latents(dataset, idx)
        ctx = (context_of or prompted(model))(dataset, idx)
        f = model.backbone.vae_factor
        size = (z.shape[-2] * f, z.shape[-1] * f)
        if fixed and self.cache is not None and model.backbone is self.cache.model.backbone:
            feats = self.cache.batch(dataset, idx, ctx, z)
        else:
            feats = self.maps(model, z, ctx)
        return predicted_classes(model.decode(feats, size)).cpu()

    def evaluate(
        self,
        model: SegModel,
        dataset,
        indices: Sequence[int],
        context_of: ContextOf | None = None,
        fixed: bool = False,
    ) -> ConfusionMatrix:
        """Dataset-level confusion matrix of ``model`` over ``indices`` of a labeled set
        (each image's matrix kept, for the bootstrap); ``context_of`` and ``fixed`` as
        :meth:`predict`."""
        cm = ConfusionMatrix(per_image=True)
        b = self.batch_size
        for s in range(0, len(indices), b):
            idx = list(indices[s : s + b])
            cm.update(self.predict(model, dataset, idx, context_of, fixed), dataset.masks(idx))
        return cm


def prompted_copy(model: SegModel, **changes: Any) -> SegModel:
    """Return a SegModel on ``model``'s backbone with a copy of its head, whose prompts are
    its prompt configuration with ``changes``, holding its prompts' trained state."""
    bb = model.backbone
    device = bb.unet.device
    cfg = dataclasses.replace(model.prompts.cfg, **changes)
    prompts = Prompts(bb.text_encoder, bb.tokenizer, CLASSES, cfg).to(device)
    missing, unexpected = prompts.load_state_dict(model.prompts.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("scene_prompt.") for k in missing)
    return SegModel(bb, copy.deepcopy(model.head), prompts).to(device)


def with_scene_text(model: SegModel, text: str) -> SegModel:
    """Return a copy of a DG model conditioned on another fixed scene prompt (the
    hand-written target prompt: zero-shot prompting)."""
    return prompted_copy(model, scene_text=text, learnable_scene=False).eval()


# ---------------------------------------------------------------------------------------
# The learned prompt: how far it moved, its nearest words
# ---------------------------------------------------------------------------------------


def nearest_words(learned, tokenizer, k: int = 3) -> list[dict[str, Any]]:
    """Per word position of a learned prompt (:class:`diffprompt.prompts.
    LearnableScenePrompt` or :class:`~diffprompt.prompts.LearnedSpan`): its init word, the
    k nearest vocabulary tokens and how far its embedding moved (relative L2)."""
    init = [tokenizer.decode([int(i)]) for i in learned.init_ids]
    near = learned.nearest_words(tokenizer, k, whole_words=True)
    return [
        {"position": i + 1, "init word": w, "nearest": ", ".join(n), "relative change": float(d)}
        for i, (w, n, d) in enumerate(zip(init, near, learned.drift(), strict=True))
    ]


def movement(learned, tokenizer) -> dict[str, Any]:
    """How far a learned prompt is from its init: "relative change" (the mean over word
    positions of the relative L2 change) and "nearest" (each position's nearest word)."""
    words = nearest_words(learned, tokenizer, 1)
    return {
        "relative change": sum(w["relative change"] for w in words) / max(1, len(words)),
        "nearest": " ".join(w["nearest"] for w in words),
    }


# ---------------------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------------------


class PromptTTA:
    """Learns the scene prompt of a trained DG model on unlabeled target images.

    ``model``: the trained DG SegModel (frozen backbone, trained head, category tokens and
    the scene prompt it was trained with); ``scorer``: reads and scores the target images
    (:class:`TargetScorer`). :attr:`tta_model` is a copy of the model whose scene prompt is
    a :class:`diffprompt.prompts.LearnableScenePrompt` initialised from the training scene
    prompt, sharing the frozen backbone. With ``start`` (:class:`CaptionStart`) the scene
    tokens of each image are its caption encoded with the learned span (:attr:`span`) in
    place of its condition words instead.
    """

    def __init__(
        self,
        model: SegModel,
        cfg: TTAConfig,
        scorer: TargetScorer,
        start: CaptionStart | None = None,
        log: Callable[[str], None] = print,
    ):
        if model.prompts is None or model.prompts.cfg.tokens != "scene":
            raise ValueError(
                "TTA learns the scene prompt, but the DG model has none (its context holds "
                "the empty prompt or the category tokens only): train it with prompt_mode "
                "fixed, random or random_consistency"
            )
        self.dg, self.cfg, self.scorer, self.log = model, cfg, scorer, log
        self.start, self.span = start, None
        self.tta_model = prompted_copy(model, learnable_scene=start is None)
        self.tta_model.requires_grad_(False)
        if start is None:
            self.learned = self.tta_model.prompts.scene_prompt
        else:
            bb = model.backbone
            self.span = self.learned = LearnedSpan(bb.text_encoder, bb.tokenizer, start.phrase)
        self.words = self.learned.words
        self.words.requires_grad_(True)
        self.tta_model.eval()

    def reset(self) -> None:
        """Put the learned prompt back to its init."""
        self.learned.reset()

    def trainable(self) -> list[nn.Parameter]:
        """The parameters TTA changes: the scene prompt's (or the span's) word embeddings."""
        params = [*self.tta_model.parameters(), *(self.span.parameters() if self.span else ())]
        return [p for p in params if p.requires_grad]

    def context(self, dataset, idx: Sequence[int]) -> torch.Tensor:
        """The adapted model's context (B, N, D) of a batch: [category tokens ; learned
        scene prompt], or with a caption start [category tokens ; each image's caption with
        the learned span]."""
        if self.span is None:
            return self.tta_model.context(len(idx))
        scene = self.span(self.start.texts(dataset, idx))
        category = self.tta_model.prompts.category_tokens()
        return assemble_conditioning(category, scene.to(category.device), len(idx))

    def predict(self, dataset, idx: Sequence[int]) -> torch.Tensor:
        """Class indices (b, H, W) of target images under the adapted model."""
        return self.scorer.predict(self.tta_model, dataset, idx, self.context)

    def evaluate(self, dataset, indices: Sequence[int]) -> ConfusionMatrix:
        """The adapted model's confusion matrix over ``indices`` of a labeled set."""
        return self.scorer.evaluate(self.tta_model, dataset, indices, self.context)

    def loss(self, objective: str, dataset, idx: Sequence[int], g: torch.Generator) -> dict:
        """Return {"loss", "denoise", "entropy"} of one batch of target images."""
        model = self.tta_model
        z = self.scorer.latents(dataset, idx)
        ctx = self.context(dataset, idx)
        out = {}
        if objective in ("denoise", "both"):
            out["denoise"] = denoising_loss(model.backbone, z, ctx, g, self.cfg.denoise_t)
        if objective in ("entropy", "both"):  # at the head's resolution
            out["entropy"] = mean_entropy(model.decode(self.scorer.maps(model, z, ctx), None))
        total = out.get("denoise", 0.0) + self.cfg.entropy_weight * out.get("entropy", 0.0)
        return {"loss": total, **out}

    def step(
        self,
        opt: torch.optim.Optimizer,
        objective: str,
        dataset,
        idx: Sequence[int],
        g: torch.Generator,
    ) -> dict[str, float]:
        """One optimisation step of the scene prompt on ``idx``; returns the losses."""
        out = self.loss(objective, dataset, idx, g)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        return {k: float(v.detach()) for k, v in out.items()}

    def _start(self) -> tuple[torch.optim.Optimizer, torch.Generator]:
        """Reset the prompt; return its optimizer and the run's generator."""
        self.reset()
        unet = self.tta_model.backbone.unet
        if self.cfg.gradient_checkpointing and hasattr(unet, "enable_gradient_checkpointing"):
            unet.enable_gradient_checkpointing()
            unet.train()  # diffusers checkpoints only in training mode; no dropout in SD
        opt = torch.optim.Adam([self.words], lr=self.cfg.lr)
        return opt, torch.Generator().manual_seed(self.cfg.seed)

    def fit_offline(
        self,
        objective: str,
        fit_set,
        fit_idx: Sequence[int],
        eval_set,
        eval_idx: Sequence[int],
        start_miou: float | None = None,
        eval_at: Collection[int] = (),
    ) -> tuple[ConfusionMatrix, list[dict]]:
        """Learn the prompt on ``fit_idx`` of the unlabeled set for ``cfg.steps`` steps, then
        evaluate on ``eval_idx``. ``start_miou``: the unadapted model's mIoU (the curve's
        step 0; evaluated when None). The curve is evaluated every
        ``cfg.eval_every`` steps, at the steps of ``eval_at`` and at the end (evaluating
        draws nothing from the generator: the fit is the same whatever is evaluated).
        Returns (confusion matrix, curve rows: step, mIoU, losses, the prompt's
        :func:`movement`)."""
        cfg = self.cfg
        opt, g = self._start()
        if start_miou is None:
            start_miou = self.scorer.miou(self.evaluate(eval_set, eval_idx), eval_set)
        curve = [{"step": 0, "mIoU": start_miou, **self.movement()}]
        t0 = time.time()
        order = [fit_idx[i] for i in torch.randperm(len(fit_idx), generator=g).tolist()]
        for step, batch in cycled_batches(order, cfg.batch_size, cfg.steps):
            losses = self.step(opt, objective, fit_set, batch, g)
            every = cfg.eval_every and step % cfg.eval_every == 0
            if every or step in eval_at or step == cfg.steps:
                cm = self.evaluate(eval_set, eval_idx)
                miou = self.scorer.miou(cm, eval_set)
                curve.append({"step": step, "mIoU": miou, **losses, **self.movement()})
                self.log(
                    f"TTA {objective} step {step}/{cfg.steps}: loss {losses['loss']:.4f}, "
                    f"mIoU {miou:.2f} ({time.time() - t0:.0f}s)"
                )
        self.tta_model.eval()
        return cm, curve

    def fit_online(self, objective: str, eval_set, eval_idx: Sequence[int]) -> ConfusionMatrix:
        """Adapt while the labeled images stream in: each batch first updates the prompt
        (``online_steps`` steps on that batch, no labels), then is predicted."""
        cfg = self.cfg
        opt, g = self._start()
        cm = ConfusionMatrix(per_image=True)
        for s in range(0, len(eval_idx), cfg.batch_size):
            idx = list(eval_idx[s : s + cfg.batch_size])
            for _ in range(cfg.online_steps):
                self.step(opt, objective, eval_set, idx, g)
            self.tta_model.eval()
            cm.update(self.predict(eval_set, idx), eval_set.masks(idx))
        return cm

    def movement(self) -> dict[str, Any]:
        """How far the learned prompt is from its init (:func:`movement`)."""
        return movement(self.learned, self.dg.backbone.tokenizer)

    def nearest_words(self, k: int = 3) -> list[dict[str, Any]]:
        """Per learned word position: its init, nearest words and drift (:func:`nearest_words`)."""
        return nearest_words(self.learned, self.dg.backbone.tokenizer, k)
