"""What each training step sees, as pure functions of (seed, step): its images, their
flips and crops, and its scene prompts.

Nothing here keeps state between steps, so a resumed run draws exactly what an
uninterrupted one would, and N processes (or N accumulation steps) see the same global
batch as one process: sample position p is the p-th image the run draws, and every random
choice about it (which image, flipped or not, its crop) is seeded by (seed, p).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from diffprompt.captions import REPLACEMENTS, CaptionBook, CaptionPrompt
from diffprompt.data.transforms import Compose, RandomCrop, RandomScale
from diffprompt.dg.config import CAPTION_RANDOM_MODES, RANDOM_MODES, TrainConfig
from diffprompt.labels import IGNORE_INDEX
from diffprompt.prompts import (
    OWN_PROMPT,
    SCENE_TEMPLATE,
    Prompt,
    SceneText,
    sample_scene_prompts,
    vocabulary,
)

#: The streams of randomness, one key each, so that they never share draws.
PERMUTATION, PROMPTS, FLIPS, CROPS = 1, 2, 3, 4


def step_generator(seed: int, *keys: int) -> torch.Generator:
    """Return a torch.Generator seeded by a hash of ``(seed, *keys)``."""
    h = hashlib.blake2b(json.dumps([seed, *keys]).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(h, "little") & ((1 << 63) - 1))


@dataclass(frozen=True)
class BatchShare:
    """How one optimizer step's global batch of ``batch_size`` images is cut: into
    ``grad_accum`` micro-batches, each split over ``num_processes`` processes; this process
    is number ``process_index``."""

    batch_size: int
    grad_accum: int = 1
    num_processes: int = 1
    process_index: int = 0

    @property
    def images_per_process(self) -> int:
        """Images this process takes of each micro-batch."""
        return self.batch_size // (self.num_processes * self.grad_accum)

    def positions(self, step: int, micro_batch: int) -> range:
        """Return the global sample positions of this process's share of micro-batch
        ``micro_batch`` of ``step``."""
        micro_batch_size = self.batch_size // self.grad_accum
        start = (
            step * self.batch_size
            + micro_batch * micro_batch_size
            + self.process_index * self.images_per_process
        )
        return range(start, start + self.images_per_process)


@lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> Tensor:
    return torch.randperm(n, generator=step_generator(seed, PERMUTATION, epoch))


def sample_indices(seed: int, positions: range, indices: list[int]) -> list[int]:
    """Return the image of each sample position: position p is item ``p mod n`` of the
    permutation of ``indices`` (n of them) drawn for epoch ``p // n``."""
    n = len(indices)
    out = []
    for p in positions:
        epoch, offset = divmod(p, n)
        out.append(indices[int(_permutation(seed, epoch, n)[offset])])
    return out


def sample_flips(seed: int, positions: range, enabled: bool = True) -> Tensor:
    """Return whether each sample position is flipped horizontally, bool (b,) (p = 0.5)."""
    if not enabled:
        return torch.zeros(len(positions), dtype=torch.bool)
    draws = [torch.rand(1, generator=step_generator(seed, FLIPS, p)) for p in positions]
    return torch.tensor([bool(d < 0.5) for d in draws])


def prompt_pool(cfg: TrainConfig) -> list[str]:
    """Return the pool of scene prompts the random modes draw from ([] in the other modes or
    with ``prompt_pool=0``): ``prompt_pool`` distinct prompts sampled with ``pool_seed``
    (fewer when the vocabulary cannot make that many). The caption random modes draw from
    :func:`caption_pool`."""
    if cfg.prompt_mode in CAPTION_RANDOM_MODES:
        return caption_pool(cfg)
    if cfg.prompt_mode not in RANDOM_MODES or not cfg.prompt_pool:
        return []
    vocab = vocabulary(cfg.vocabulary_size)
    possible = math.prod(len(v) for v in vocab.values())
    wanted = min(cfg.prompt_pool, possible)
    g = torch.Generator().manual_seed(cfg.pool_seed)
    pool: list[str] = []
    tries = 0
    while len(pool) < wanted and tries < 100 * cfg.prompt_pool:
        prompt = sample_scene_prompts(1, g, vocab, SCENE_TEMPLATE)[0]
        tries += 1
        if prompt not in pool:
            pool.append(prompt)
    return pool


def caption_pool(cfg: TrainConfig) -> list[str]:
    """Return the caption variants (:class:`diffprompt.captions.CaptionPrompt`) the caption
    random modes draw K of per step: with ``caption_randomization="drop"`` the caption with
    and without its condition words; with "replace" the caption with them replaced by each
    of ``prompt_pool`` distinct phrases of :data:`diffprompt.captions.REPLACEMENTS` drawn
    with ``pool_seed`` (0: every phrase)."""
    if cfg.caption_randomization == "drop":
        return ["caption", "stripped"]
    phrases = list(REPLACEMENTS)
    if cfg.prompt_pool:
        g = torch.Generator().manual_seed(cfg.pool_seed)
        order = torch.randperm(len(phrases), generator=g)[: cfg.prompt_pool]
        phrases = [phrases[int(i)] for i in order]
    return [f"replace:{p}" for p in phrases]


def step_prompts(
    seed: int,
    step: int,
    k: int,
    pool: Sequence[Prompt],
    vocab: dict[str, tuple[str, ...]],
    single: Prompt = OWN_PROMPT,
) -> list[Prompt]:
    """Return the K prompts of ``step`` ([``single``] for K = 1: the model's own prompt, or
    each image's caption): K of the pool without repeats, or K fresh scene prompts from
    ``vocab`` when the pool is empty."""
    if k == 1:
        return [single]
    g = step_generator(seed, PROMPTS, step)
    if pool:
        order = torch.randperm(len(pool), generator=g)[: min(k, len(pool))]
        return [pool[int(i)] for i in order]
    return [SceneText(t) for t in sample_scene_prompts(k, g, vocab, SCENE_TEMPLATE)]


def run_prompts(cfg: TrainConfig, captions: CaptionBook | None = None) -> tuple[list, Prompt]:
    """Return (the pool a step draws its K prompts from, the prompt of a single-prompt step)
    of a run: scene texts (:func:`prompt_pool`) and the model's own prompt; in the caption
    modes (``captions`` given) each image's caption under the variants of
    :func:`caption_pool`, and the caption as it is."""
    if captions is None:
        return [SceneText(t) for t in prompt_pool(cfg)], OWN_PROMPT
    return [CaptionPrompt(captions, v) for v in prompt_pool(cfg)], CaptionPrompt(captions)


def augmented_batch(
    source, indices: list[int], positions: range, cfg: TrainConfig, multiple: int = 1
) -> tuple[Tensor, Tensor]:
    """Return (images (b, 3, H, W), labels (b, H, W)) of source images ``indices``, each
    rescaled (``cfg.scale_range``) and cropped (``cfg.crop``) with randomness seeded by its
    sample position, then padded at the bottom/right to a multiple of ``multiple`` (padded
    label pixels are ignored). Flips are left to the caller (:func:`sample_flips`)."""
    images, masks = [], []
    for i, p in zip(indices, positions, strict=True):
        g = step_generator(cfg.seed, CROPS, p)
        transforms = []
        if cfg.scale_range != (1.0, 1.0):
            transforms.append(RandomScale(*cfg.scale_range, generator=g))
        if cfg.crop:
            transforms.append(RandomCrop(cfg.crop, generator=g))
        sample = source[i]
        sample = Compose(transforms)(sample) if transforms else sample
        x, y = sample["image"], sample["mask"]
        pad_h, pad_w = -x.shape[-2] % multiple, -x.shape[-1] % multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
            y = F.pad(y, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
        images.append(x)
        masks.append(y)
    if len({tuple(x.shape) for x in images}) > 1:
        raise ValueError(
            "source images of one batch differ in size: set a crop (or train_size) so that "
            "they can be batched"
        )
    return torch.stack(images), torch.stack(masks)
