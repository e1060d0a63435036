"""Data sets, the registry and paired transforms.

>>> from diffprompt.data import build_dataset
>>> ds = build_dataset("acdc_night", split="val", root="miniature")
>>> sample = ds[0]  # {"image": (3, H, W) float, "mask": (H, W) int64, "name", "meta"}

``DATASETS`` is a plain dict from registry name to a constructor with the signature
``(split=None, root=None, transform=None, strict_labels=True)``. ``root`` is the data
root (a folder holding gta5/, cityscapes/, ...; None -> ``$DIFFPROMPT_DATA`` or the
embedded miniature; ``"miniature"`` -> the miniature); ``$DIFFPROMPT_<NAME>_ROOT``
points straight at one data set's folder. See data/README.md.

The miniature generator (``diffprompt.data.toyworld``) is imported only when the
miniature is asked for.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from diffprompt.data.datasets import (
    ACDC,
    ACDC_CONDITIONS,
    BDD100K,
    GTA5,
    SYNTHIA,
    CheckSummary,
    Cityscapes,
    DarkZurich,
    DatasetError,
    DatasetNotFoundError,
    Mapillary,
    SegDataset,
    env_var,
)
from diffprompt.paths import MINIATURE

#: Registry name -> constructor(split=None, root=None, transform=None, strict_labels=True).
DATASETS: dict[str, Callable[..., SegDataset]] = {
    "gta5": GTA5,
    "synthia": SYNTHIA,
    "cityscapes": Cityscapes,
    "bdd100k": BDD100K,
    "mapillary": Mapillary,
    "acdc_fog": partial(ACDC, conditions=("fog",)),
    "acdc_night": partial(ACDC, conditions=("night",)),
    "acdc_rain": partial(ACDC, conditions=("rain",)),
    "acdc_snow": partial(ACDC, conditions=("snow",)),
    "acdc": partial(ACDC, conditions=ACDC_CONDITIONS),
    "darkzurich": DarkZurich,
}


def _cls(name: str) -> type[SegDataset]:
    factory = DATASETS[name]
    return factory.func if isinstance(factory, partial) else factory  # type: ignore[return-value]


#: Registry name -> its split names (the first ones are the usual ones).
SPLITS: dict[str, tuple[str, ...]] = {name: _cls(name).splits for name in DATASETS}
#: Registry name -> its unlabeled splits.
UNLABELED_SPLITS: dict[str, frozenset[str]] = {name: _cls(name).unlabeled_splits for name in DATASETS}
#: Registry name -> the split used when none is given.
DEFAULT_SPLIT: dict[str, str] = {name: _cls(name).default_split for name in DATASETS}


def check_name(name: str) -> str:
    """Return ``name`` if it is a registry name; else raise DatasetError with the valid ones."""
    if name not in DATASETS:
        raise DatasetError(
            f"unknown data set '{name}'; valid names: {list(DATASETS)}."
            f"{did_you_mean(name, DATASETS)}"
        )
    return name


def build_dataset(
    name: str,
    split: str | None = None,
    root: str | os.PathLike | None = None,
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    strict_labels: bool = True,
) -> SegDataset:
    """Return the opened data set ``name`` / ``split`` (None -> ``DEFAULT_SPLIT[name]``).

    Raises DatasetError for an unknown name or split, DatasetNotFoundError (also a
    FileNotFoundError) for anything missing on disk.
    """
    return DATASETS[check_name(name)](
        split=split, root=root, transform=transform, strict_labels=strict_labels
    )


def available_splits(name: str, root: str | os.PathLike | None = None) -> tuple[str, ...]:
    """Return the splits of ``name`` whose image folders exist under ``root``.

    Returns () when the data set folder is missing; raises DatasetNotFoundError when the
    data root itself is missing.
    """
    factory = DATASETS[check_name(name)]
    if root is not None and str(root) != MINIATURE and not Path(root).expanduser().is_dir():
        raise DatasetNotFoundError(f"data root {root} does not exist or is not a folder")
    cls = _cls(name)
    probe = cls.__new__(cls)  # an unopened instance: only the folder is located
    if isinstance(factory, partial):
        probe.conditions = factory.keywords["conditions"]
    probe.name = name
    try:
        probe.root = probe.locate(root)
    except DatasetNotFoundError:
        return ()
    return probe.splits_on_disk()


__all__ = [
    "ACDC",
    "ACDC_CONDITIONS",
    "BDD100K",
    "DATASETS",
    "DEFAULT_SPLIT",
    "GTA5",
    "SPLITS",
    "UNLABELED_SPLITS",
    "SYNTHIA",
    "CheckSummary",
    "Cityscapes",
    "DarkZurich",
    "DatasetError",
    "DatasetNotFoundError",
    "Mapillary",
    "SegDataset",
    "available_splits",
    "build_dataset",
    "check_name",
    "env_var",
]
