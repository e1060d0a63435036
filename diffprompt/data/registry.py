"""The registry: a plain dict from registry name to data set constructor, and what each
name's class says about its splits, as plain dicts. Nothing here touches the disk.

    DATASETS["acdc_night"](split="val", root="/data/seg")  # ACDC(..., conditions=("night",))
    SPLITS["darkzurich"]            # ("train", "val", "test")
    UNLABELED_SPLITS["darkzurich"]  # frozenset({"train", "test"})

Calling a constructor directly opens a folder that exists; ``diffprompt.data.build_dataset``
also generates the embedded miniature when the root names it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from diffprompt.data.base import SegDataset
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
from diffprompt.data.files import DatasetError
from diffprompt.io import did_you_mean

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


def check_name(name: str) -> str:
    """Return ``name`` if it is a registry name; else raise DatasetError with the valid ones."""
    if name not in DATASETS:
        raise DatasetError(
            f"unknown data set '{name}'; valid names: {list(DATASETS)}."
            f"{did_you_mean(name, DATASETS)}"
        )
    return name


def dataset_class(name: str) -> type[SegDataset]:
    """Return the class behind registry name ``name`` (ACDC for "acdc_fog")."""
    factory = DATASETS[check_name(name)]
    return factory.func if isinstance(factory, partial) else factory  # type: ignore[return-value]


def dataset_options(name: str) -> dict[str, Any]:
    """Return the class options registry name ``name`` fixes, e.g. {"conditions": ("fog",)}
    for "acdc_fog" and {} for "cityscapes"."""
    factory = DATASETS[check_name(name)]
    return dict(factory.keywords) if isinstance(factory, partial) else {}


#: Registry name -> its split names (the first ones are the usual ones).
SPLITS: dict[str, tuple[str, ...]] = {name: dataset_class(name).splits for name in DATASETS}
#: Registry name -> the split used when none is given.
DEFAULT_SPLIT: dict[str, str] = {name: dataset_class(name).default_split for name in DATASETS}
#: Registry name -> its splits without labels (withheld test labels, unlabeled night images).
UNLABELED_SPLITS: dict[str, frozenset[str]] = {
    name: dataset_class(name).unlabeled_splits for name in DATASETS
}
