"""The data of a DG run: the source split it trains on, the sets it is evaluated on, the
transform their images get, and the checks that run before the model is built."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from diffprompt.captions import CaptionBook
from diffprompt.data import SegDataset, available_splits, build_dataset
from diffprompt.data.transforms import Compose, Resize, ToFloat
from diffprompt.dg.config import CAPTION_MODES, TrainConfig, source_split
from diffprompt.preflight import check_crop, check_files


def image_transform(cfg: TrainConfig, for_eval: bool = False) -> Compose | None:
    """Return the transform of a run's images: resize to ``train_size`` (then to float in
    [0, 1]), or None (the data set's own float conversion) without a ``train_size``.
    ``for_eval``: the evaluation sets' transform, which is that one with the feature cache
    (maps are cached at ``train_size``) and None on the online path (images as they are)."""
    if not cfg.train_size or (for_eval and not cfg.cache_features):
        return None
    return Compose([Resize(cfg.train_size), ToFloat()])


def open_source(cfg: TrainConfig, root: str | os.PathLike) -> tuple[SegDataset, list[int]]:
    """Return (the source split a run trains on, the indices it draws from: the first
    ``max_train_images``, 0 = all); a split without labels or images is a ValueError."""
    split = source_split(cfg)
    source = build_dataset(cfg.source, split, root, transform=image_transform(cfg))
    if not source.labeled:
        raise ValueError(f"the source split {cfg.source}/{split} has no labels")
    limit = cfg.max_train_images
    n = min(limit, len(source)) if limit else len(source)
    if n == 0:
        raise ValueError(f"the source split {cfg.source}/{split} is empty")
    return source, list(range(n))


def open_eval_sets(cfg: TrainConfig, root: str | os.PathLike) -> dict[str, SegDataset]:
    """Return {name: data set} a run is evaluated on: the source's val split when
    ``eval_source`` and it exists on disk (named "<source> (source val)"), then every
    target's ``target_split``."""
    out = {}
    if cfg.eval_source and "val" in available_splits(cfg.source, Path(root)):
        out[f"{cfg.source} (source val)"] = build_dataset(
            cfg.source, "val", root, transform=image_transform(cfg)
        )
    for target in cfg.targets:
        out[target] = build_dataset(
            target, cfg.target_split, root, transform=image_transform(cfg, for_eval=True)
        )
    return out


def curve_set(
    cfg: TrainConfig,
    root: str | os.PathLike,
    source: SegDataset,
    train_indices: list[int],
) -> tuple[str, SegDataset, list[int]] | None:
    """Return (name, data set, indices) of the training curve (``cfg.eval_every``): the
    source's val split where it exists, else the source images after the ``train_indices``
    (held out from training; SYNTHIA has no val split); the first ``curve_images`` of them
    (0 = all). None without ``eval_every`` or when no source image is held out."""
    if not cfg.eval_every:
        return None
    if "val" in available_splits(cfg.source, Path(root)):
        ds = build_dataset(cfg.source, "val", root, transform=image_transform(cfg))
        name, indices = f"{cfg.source} val", list(range(len(ds)))
    else:
        ds = source
        name, indices = f"{cfg.source} held-out", list(range(len(train_indices), len(ds)))
    if not indices:
        return None
    return name, ds, indices[: cfg.curve_images] if cfg.curve_images else indices


def check_run_data(
    cfg: TrainConfig,
    source: SegDataset,
    train_indices: list[int],
    eval_sets: dict[str, SegDataset],
    eval_count: Callable[[SegDataset], int],
) -> None:
    """Read the files a run will use (the source images it trains on, the images it
    evaluates) and check that its crop fits the source images and that every evaluation
    set is labeled, so that a bad file or split stops the run before it trains (see
    :mod:`diffprompt.preflight`)."""
    summary = check_files(source, train_indices)
    check_crop(cfg.crop, summary.image_sizes, cfg.train_size)
    for name, ds in eval_sets.items():
        if not ds.labeled:
            raise ValueError(
                f"{name}: split {ds.split!r} has no labels to evaluate on; set target_split "
                "to a labeled split (e.g. 'val')"
            )
        check_files(ds, range(eval_count(ds)))


def check_sizes(cfg: TrainConfig, source: SegDataset, multiple: int) -> None:
    """Raise a ValueError for sizes the backbone cannot take: a train_size or crop that is
    not a multiple of ``multiple`` (the backbone's VAE factor x UNet downsampling), or (with
    the feature cache) source images of another size without a train_size."""
    for name in ("train_size", "crop"):
        value = getattr(cfg, name)
        if value is not None and (value[0] % multiple or value[1] % multiple):
            suggestion = tuple(v // multiple * multiple or multiple for v in value[:2])
            raise ValueError(
                f"{name}={tuple(value)} is not a multiple of {multiple} (the backbone's VAE "
                f"factor x UNet downsampling); use e.g. {suggestion}"
            )
    if not cfg.cache_features or cfg.train_size is not None:
        return
    h, w = source[0]["image"].shape[-2:]
    if h % multiple or w % multiple:
        raise ValueError(
            f"source images are {h}x{w} (HxW), not a multiple of {multiple}: set "
            "train_size=(h, w) (a multiple) to cache features, or cache_features=False with "
            "a crop"
        )


def run_captions(
    cfg: TrainConfig, folder, device, source, train_indices, eval_sets, eval_count, curve
) -> CaptionBook | None:
    """Return the captions of a run in a caption mode (None in the others), after checking
    before any work that every image it trains on, is scored on or draws its training curve
    from has one (a CaptionError names the first that has none)."""
    if cfg.prompt_mode not in CAPTION_MODES:
        return None
    captions = CaptionBook(cfg.caption_source, cfg.captions_file, cfg.captioner, folder, device)
    captions.check(source, train_indices)
    for ds in eval_sets.values():
        captions.check(ds, range(eval_count(ds)))
    if curve is not None:
        _, ds, indices = curve
        captions.check(ds, indices)
    return captions
