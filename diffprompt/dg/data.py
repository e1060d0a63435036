"""The data of a DG run (:class:`RunData`): the source split it trains on, the sets it is
evaluated on, its training curve's set and its captions, opened and checked by
:func:`open_run_data` before the model is built."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffprompt.captions import CaptionBook
from diffprompt.data import SegDataset, available_splits, build_dataset
from diffprompt.data.roots import resolve_data_root
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


@dataclass
class CurveSet:
    """The images the training curve is scored on."""

    name: str  # "<source> val" or "<source> held-out"
    dataset: SegDataset
    indices: list[int]


@dataclass
class RunData:
    """Everything a DG run reads, opened and checked before any model is built."""

    root: Path  # the data root
    source: SegDataset  # the split trained on
    train_indices: list[int]  # its images drawn from (the first max_train_images)
    eval_sets: dict[str, SegDataset]  # {name: labeled set}, the source's val split first
    max_eval_images: int  # images scored per evaluation set (0 = all)
    curve: CurveSet | None = None  # the training curve's set (eval_every)
    captions: CaptionBook | None = None  # the caption modes' captions (else None)

    def eval_count(self, dataset: SegDataset) -> int:
        """How many images of ``dataset`` are scored: the first ``max_eval_images`` (0 = all)."""
        m = self.max_eval_images
        return min(len(dataset), m) if m else len(dataset)


def open_run_data(cfg: TrainConfig, folder=None, device="cpu") -> RunData:
    """Return the :class:`RunData` of ``cfg``: the source split (the first
    ``max_train_images`` drawn from), the source's val split where it exists on disk (named
    "<source> (source val)", with ``eval_source``) and every target's ``target_split``; the
    training curve's set (with ``eval_every``: the source's val split, else the source
    images after those trained on, SYNTHIA having no val split; its first ``curve_images``);
    in a caption mode its captions (``folder``: where a captioner's are kept; ``device``:
    where it runs).

    Before returning, the files a run will use are read (see :mod:`diffprompt.preflight`),
    its crop checked against the source images, every evaluation set checked to be labeled,
    and in a caption mode every image it trains on, is scored on or draws its curve from
    checked to have a caption: a bad file, split or caption stops the run before it trains.
    """
    root = resolve_data_root(cfg.data_root)
    train_tf, eval_tf = image_transform(cfg), image_transform(cfg, for_eval=True)
    split = source_split(cfg)
    source = build_dataset(cfg.source, split, root, transform=train_tf)
    if not source.labeled:
        raise ValueError(f"the source split {cfg.source}/{split} has no labels")
    n = min(cfg.max_train_images, len(source)) if cfg.max_train_images else len(source)
    if n == 0:
        raise ValueError(f"the source split {cfg.source}/{split} is empty")
    has_val = "val" in available_splits(cfg.source, Path(root))
    source_val = build_dataset(cfg.source, "val", root, transform=train_tf) if has_val else None
    eval_sets = {}
    if cfg.eval_source and source_val is not None:
        eval_sets[f"{cfg.source} (source val)"] = source_val
    for target in cfg.targets:
        eval_sets[target] = build_dataset(target, cfg.target_split, root, transform=eval_tf)
    data = RunData(root, source, list(range(n)), eval_sets, cfg.max_eval_images)
    _check_files(data, cfg.crop, cfg.train_size)
    if cfg.eval_every:
        data.curve = _curve_set(data, source_val, cfg.source, cfg.curve_images)
    if cfg.prompt_mode in CAPTION_MODES:
        book = CaptionBook(cfg.caption_source, cfg.captions_file, cfg.captioner, folder, device)
        data.captions = _checked_captions(book, data)
    return data


def _check_files(data: RunData, crop, train_size) -> None:
    """Read the source images a run trains on and the images it evaluates; check that the
    crop fits the source images and that every evaluation set is labeled."""
    summary = check_files(data.source, data.train_indices)
    check_crop(crop, summary.image_sizes, train_size)
    for name, ds in data.eval_sets.items():
        if not ds.labeled:
            raise ValueError(
                f"{name}: split {ds.split!r} has no labels to evaluate on; set target_split "
                "to a labeled split (e.g. 'val')"
            )
        check_files(ds, range(data.eval_count(ds)))


def _curve_set(
    data: RunData, source_val: SegDataset | None, source: str, limit: int
) -> CurveSet | None:
    """The training curve's set: the source's val split, else the held-out source images
    (None when none is held out); its first ``limit`` images (0 = all)."""
    if source_val is not None:
        curve = CurveSet(f"{source} val", source_val, list(range(len(source_val))))
    else:
        held_out = list(range(len(data.train_indices), len(data.source)))
        curve = CurveSet(f"{source} held-out", data.source, held_out)
    if not curve.indices:
        return None
    curve.indices = curve.indices[:limit] if limit else curve.indices
    return curve


def _checked_captions(book: CaptionBook, data: RunData) -> CaptionBook:
    """``book``, after checking that every image the run trains on, is scored on or draws
    its training curve from has a caption (a CaptionError names the first that has none)."""
    book.check(data.source, data.train_indices)
    for ds in data.eval_sets.values():
        book.check(ds, range(data.eval_count(ds)))
    if data.curve is not None:
        book.check(data.curve.dataset, data.curve.indices)
    return book


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
