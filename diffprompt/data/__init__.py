"""Data sets, the registry and paired transforms.

>>> from diffprompt.data import build_dataset
>>> ds = build_dataset("acdc_night", split="val", root="miniature")
>>> sample = ds[0]  # {"image": (3, H, W) float, "mask": (H, W) int64, "name", "meta"}

``DATASETS`` is a plain dict from registry name to a constructor with the signature
``(split=None, root=None, transform=None, strict_labels=True)``; ``SPLITS``,
``DEFAULT_SPLIT`` and ``UNLABELED_SPLITS`` say what each name's splits are, and
``available_splits(name, root)`` which of them are on disk. ``root`` is the data root (a
folder holding gta5/, cityscapes/, ...; None -> ``$DIFFPROMPT_DATA`` or the embedded
miniature; ``"miniature"`` -> the miniature); ``$DIFFPROMPT_<NAME>_ROOT`` points straight
at one data set's folder. See data/README.md.

``build_dataset`` and ``available_splits`` generate the miniature (with
``diffprompt.data.toyworld``) when the root names it and it is missing or stale; importing
this package, or calling a ``DATASETS`` constructor directly, generates nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from diffprompt.data.base import CheckSummary, SegDataset, Transform
from diffprompt.data.datasets import (
    ACDC,
    ACDC_CONDITIONS,
    BDD100K,
    GTA5,
    SYNTHIA,
    Cityscapes,
    DarkZurich,
    Mapillary,
)
from diffprompt.data.files import DatasetError, DatasetNotFoundError, env_var
from diffprompt.data.registry import (
    DATASETS,
    DEFAULT_SPLIT,
    SPLITS,
    UNLABELED_SPLITS,
    check_name,
    dataset_class,
    dataset_options,
)
from diffprompt.data.roots import resolve_data_root
from diffprompt.paths import MINIATURE


def _ensure_miniature_for(name: str, root: str | os.PathLike | None) -> None:
    """Generate the miniature when data set ``name`` opened with ``root`` reads it and it
    is missing or stale."""
    if dataset_class(name).reads_miniature(root):
        resolve_data_root(MINIATURE)


def build_dataset(
    name: str,
    split: str | None = None,
    root: str | os.PathLike | None = None,
    transform: Transform | None = None,
    strict_labels: bool = True,
) -> SegDataset:
    """Return the opened data set ``name`` / ``split`` (None -> ``DEFAULT_SPLIT[name]``).

    Generates the embedded miniature first when ``root`` names it. Raises DatasetError for
    an unknown name or split, DatasetNotFoundError (also a FileNotFoundError) for anything
    missing on disk.
    """
    _ensure_miniature_for(check_name(name), root)
    return DATASETS[name](split=split, root=root, transform=transform, strict_labels=strict_labels)


def available_splits(name: str, root: str | os.PathLike | None = None) -> tuple[str, ...]:
    """Return the splits of ``name`` whose image folders exist under ``root``, in the order
    of ``SPLITS[name]``: the one way to ask which splits are on disk.

    Generates the embedded miniature first when ``root`` names it. Returns () when the data
    set folder is missing; raises DatasetNotFoundError when the data root itself is missing.
    """
    check_name(name)
    if root is not None and str(root) != MINIATURE and not Path(root).expanduser().is_dir():
        raise DatasetNotFoundError(f"data root {root} does not exist or is not a folder")
    _ensure_miniature_for(name, root)
    return dataset_class(name)._splits_at(root, **dataset_options(name))


__all__ = [
    "ACDC",
    "ACDC_CONDITIONS",
    "BDD100K",
    "DATASETS",
    "DEFAULT_SPLIT",
    "GTA5",
    "SPLITS",
    "SYNTHIA",
    "UNLABELED_SPLITS",
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
