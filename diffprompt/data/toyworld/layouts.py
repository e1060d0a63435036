"""The miniature's files in the real data sets' layouts, derived from the data set classes.

Where a sample goes (data set folder, split folders, subfolder depth, file suffixes,
which splits are unlabeled, GTA5's split file, Mapillary's class-name file) is read from
the class behind each registry name (``diffprompt.data.datasets``), so the loaders and
the generator share one description. What only the generator knows stays here: the
sample names and subfolders it invents (Cityscapes cities, ACDC and Dark Zurich
sequences, BDD100K and Mapillary hashes) and the raw label ids it writes for each trainId
(the inverse of the classes' id -> trainId tables).
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np
from PIL import Image

from diffprompt import labels as L
from diffprompt.data.base import SegDataset
from diffprompt.data.datasets import (
    ACDC,
    BDD100K,
    GTA5,
    SYNTHIA,
    Cityscapes,
    DarkZurich,
    Mapillary,
)
from diffprompt.data.files import CAPTIONS_FILE
from diffprompt.data.registry import dataset_class, dataset_options
from diffprompt.data.toyworld.world import (
    BIKE,
    M_HOOD,
    PERSON,
    TERRAIN,
    TRAIN,
    TRUCK,
    VOID,
    Layout,
)
from diffprompt.paths import DATASET_DIRS

# ---------------------------------------------------------------- sample names
#: The Cityscapes cities of the miniature's splits (real city names of each split).
CITIES = {
    "train": ("aachen", "bochum", "bremen", "cologne", "darmstadt", "dusseldorf"),
    "val": ("frankfurt", "lindau", "munster"),
}
#: The first ACDC sequence number of each condition.
ACDC_SEQ = {"fog": 475, "night": 1030, "rain": 1090, "snow": 122}
#: Sequence numbers added per split (ACDC, Dark Zurich).
ACDC_SPLIT_SEQ = {"train": 0, "val": 300, "test": 600}
DARKZURICH_SPLIT_SEQ = {"train": 0, "val": 100, "test": 200}
HEX = list("0123456789abcdef")
MAPILLARY_CHARS = list(string.ascii_letters + string.digits + "-_")

#: A sample namer: (split, index, seed, class options) -> (subfolder, sample name).
Namer = Callable[[str, int, int, dict[str, Any]], tuple[str, str]]


def _name_rng(split: str, i: int, seed: int) -> np.random.Generator:
    """Return the generator of the random part of sample ``i``'s name."""
    return np.random.default_rng([seed, 99, i, len(split)])


def _gta5_name(split: str, i: int, seed: int, options: dict[str, Any]) -> tuple[str, str]:
    return "", GTA5.name_of_number(i + 1)


def _synthia_name(split: str, i: int, seed: int, options: dict[str, Any]) -> tuple[str, str]:
    return "", f"{i:07d}"


def _cityscapes_name(split: str, i: int, seed: int, options: dict[str, Any]) -> tuple[str, str]:
    cities = CITIES[split]
    city = cities[i % len(cities)]
    return city, f"{city}_{i // len(cities):06d}_000019"


def _bdd100k_name(split: str, i: int, seed: int, options: dict[str, Any]) -> tuple[str, str]:
    rng = _name_rng(split, i, seed)
    first = "".join(rng.choice(HEX, 8))
    second = "".join(rng.choice(HEX, 8))
    return "", f"{first}-{second}" + f"{i:03x}"[-3:]


def _mapillary_name(split: str, i: int, seed: int, options: dict[str, Any]) -> tuple[str, str]:
    rng = _name_rng(split, i, seed)
    return "", "".join(rng.choice(MAPILLARY_CHARS, 19)) + f"{i:03d}"


def _acdc_name(split: str, i: int, seed: int, options: dict[str, Any]) -> tuple[str, str]:
    [condition] = options["conditions"]  # a miniature registry entry reads one condition
    seq = f"GOPR{ACDC_SEQ[condition] + ACDC_SPLIT_SEQ[split] + i // 20:04d}"
    return seq, f"{seq}_frame_{(i % 20) * 37:06d}"


def _darkzurich_name(split: str, i: int, seed: int, options: dict[str, Any]) -> tuple[str, str]:
    seq = f"GOPR{356 + DARKZURICH_SPLIT_SEQ[split] + i // 25:04d}"
    return seq, f"{seq}_frame_{(i % 25) * 12:06d}"


#: How the miniature names the samples of each data set class.
NAMERS: dict[type[SegDataset], Namer] = {
    GTA5: _gta5_name,
    SYNTHIA: _synthia_name,
    Cityscapes: _cityscapes_name,
    BDD100K: _bdd100k_name,
    Mapillary: _mapillary_name,
    ACDC: _acdc_name,
    DarkZurich: _darkzurich_name,
}


@dataclass(frozen=True)
class SampleFiles:
    """Where one miniature sample is written."""

    folder: str  # the data set folder below the data root, e.g. "acdc"
    name: str  # the sample name (the key of its caption)
    image: str  # image file, relative to ``folder``
    label: str | None  # label file, relative to ``folder``; None in an unlabeled split


def dataset_folder(dataset: str) -> str:
    """Return the folder below the data root of registry name ``dataset`` ("dark_zurich")."""
    return DATASET_DIRS[dataset_class(dataset).domain]


def sample_files(dataset: str, split: str, i: int, seed: int) -> SampleFiles:
    """Return where sample ``i`` of ``dataset`` / ``split`` goes, as its class lays it out."""
    cls, options = dataset_class(dataset), dataset_options(dataset)
    [(image_dir, label_dir)] = cls.split_folders(split, **options)
    subfolder, name = NAMERS[cls](split, i, seed, options)
    image_file, label_file = cls.file_names(split, name)
    image = str(PurePosixPath(image_dir, subfolder, image_file))
    label = None
    if split not in cls.unlabeled_splits:
        label = str(PurePosixPath(label_dir, subfolder, label_file))
    return SampleFiles(dataset_folder(dataset), name, image, label)


# ---------------------------------------------------------------- label encodings
def _synthia_ids() -> np.ndarray:
    """Return trainId -> SYNTHIA class id (void -> 0). Terrain, truck and train get
    SYNTHIA's own terrain (16), truck (18) and train (20) ids, which its loader reads as
    void (the 16-class protocol)."""
    ids = np.full(256, 0, np.uint16)
    for sid, _, tid in L.SYNTHIA_LABELS:
        if tid != VOID and sid != 22:
            ids[tid] = sid
    ids[TERRAIN], ids[TRUCK], ids[TRAIN] = 16, 18, 20
    return ids


def _cityscapes_ids() -> np.ndarray:
    """Return trainId -> Cityscapes label id (void -> 0, "unlabeled")."""
    ids = np.zeros(256, np.uint8)
    ids[: L.NUM_CLASSES] = L.TRAINID_TO_CITYSCAPES_ID
    return ids


#: The Mapillary v1.2 class written for each trainId 0..18.
MAPILLARY_CLASS_OF_TRAINID = (
    "construction--flat--road",
    "construction--flat--sidewalk",
    "construction--structure--building",
    "construction--barrier--wall",
    "construction--barrier--fence",
    "object--support--pole",
    "object--traffic-light",
    "object--traffic-sign--front",
    "nature--vegetation",
    "nature--terrain",
    "nature--sky",
    "human--person",
    "human--rider--bicyclist",
    "object--vehicle--car",
    "object--vehicle--truck",
    "object--vehicle--bus",
    "object--vehicle--on-rails",
    "object--vehicle--motorcycle",
    "object--vehicle--bicycle",
)


def _mapillary_ids() -> np.ndarray:
    """Return trainId -> Mapillary v1.2 label id (void -> "void--unlabeled")."""
    ids = np.full(256, L.MAPILLARY_V12_NAMES.index("void--unlabeled"), np.uint8)
    for tid, name in enumerate(MAPILLARY_CLASS_OF_TRAINID):
        ids[tid] = L.MAPILLARY_V12_NAMES.index(name)
    return ids


#: trainId -> the raw label id written, for the classes that store other ids (the others
#: store trainIds as they are).
LABEL_IDS: dict[type[SegDataset], np.ndarray] = {
    GTA5: _cityscapes_ids(),
    SYNTHIA: _synthia_ids(),
    Cityscapes: _cityscapes_ids(),
    Mapillary: _mapillary_ids(),
}
CITYSCAPES_EGO_VEHICLE = 1  # the Cityscapes label id of the ego vehicle (the hood)


def write_label(dataset: str, path: Path, trainids: np.ndarray, layout: Layout) -> None:
    """Write the (H, W) uint8 ``trainids`` of ``layout`` at ``path`` in the label format of
    ``dataset``'s class: GTA5 palette PNG, SYNTHIA 16-bit 3-channel PNG (class and instance
    ids), Cityscapes label ids (with the ego vehicle), Mapillary ids, else trainIds."""
    cls = dataset_class(dataset)
    if cls is GTA5:
        im = Image.fromarray(LABEL_IDS[GTA5][trainids], mode="P")
        im.putpalette(L.CITYSCAPES_ID_PALETTE)
        im.save(path)
    elif cls is SYNTHIA:
        ids = LABEL_IDS[SYNTHIA][trainids]
        inst = np.array([p.instance for p in layout.parts], np.uint16)[layout.part]
        bgr = np.zeros((*ids.shape, 3), np.uint16)
        bgr[..., 2] = ids  # red channel: class id (OpenCV writes BGR)
        bgr[..., 1] = np.where(np.isin(trainids, range(PERSON, BIKE + 1)), inst, 0)  # instance
        cv2.imwrite(str(path), bgr)
    elif cls is Cityscapes:
        ids = LABEL_IDS[Cityscapes][trainids]
        if layout.camera.hood > 0:
            hood = np.array([p.material == M_HOOD for p in layout.parts])[layout.part]
            ids = np.where(hood, CITYSCAPES_EGO_VEHICLE, ids).astype(np.uint8)
        Image.fromarray(ids, mode="L").save(path)
    elif cls is Mapillary:
        Image.fromarray(LABEL_IDS[Mapillary][trainids], mode="L").save(path)
    else:
        Image.fromarray(trainids.astype(np.uint8), mode="L").save(path)


def write_image(path: Path, image: np.ndarray, jpeg_quality: int) -> None:
    """Write the (H, W, 3) uint8 ``image`` as JPEG (``.jpg``) or fast-compressed PNG."""
    if path.suffix == ".jpg":
        Image.fromarray(image).save(path, quality=jpeg_quality)
    else:
        Image.fromarray(image).save(path, compress_level=1)


# ---------------------------------------------------------------- side files
def write_captions(out: Path, captions: dict[str, dict[str, dict[str, str]]]) -> None:
    """Write each data set folder's captions sidecar {name: {caption, condition}}."""
    for folder, caps in captions.items():
        (out / folder / CAPTIONS_FILE).write_text(json.dumps(caps, indent=0, sort_keys=True))


def write_gta5_split(out: Path, n: int) -> None:
    """Write GTA5's split file for ``n`` images: 70 % train, 15 % val, 15 % test."""
    from scipy.io import savemat  # heavy, and only needed here

    ids = np.arange(1, n + 1)  # 1-based image numbers
    end_train, end_val = int(0.7 * n), int(0.85 * n)
    ranges = {"train": ids[:end_train], "val": ids[end_train:end_val], "test": ids[end_val:]}
    numbers = {GTA5.split_keys[split]: r[:, None] for split, r in ranges.items()}  # (n_s, 1)
    savemat(out / dataset_folder("gta5") / GTA5.split_file, numbers)


def write_mapillary_config(out: Path) -> None:
    """Write Mapillary's class-name file (v1.2 names, random colours), as in the download."""
    entries = [
        {
            "name": name,
            "readable": name.split("--")[-1].replace("-", " ").title(),
            "color": [int(c) for c in np.random.default_rng(k).integers(0, 256, 3)],
            "instances": False,
            "evaluate": not name.startswith("void"),
        }
        for k, name in enumerate(L.MAPILLARY_V12_NAMES)
    ]
    path = out / dataset_folder("mapillary") / Mapillary.config_files[0]
    path.write_text(json.dumps({"labels": entries}))
