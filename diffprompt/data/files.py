"""Errors, file readers and the data root lookup shared by the data set classes.

Nothing here generates data: ``find_data_root`` names the folder of the data root (for
``"miniature"``, where the miniature is or will be generated) without creating it;
``diffprompt.data.roots.resolve_data_root`` and ``diffprompt.data.build_dataset``
generate the miniature on demand.
"""

from __future__ import annotations

import itertools
import json
import os
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from diffprompt.paths import DATASET_DIRS, MINIATURE, miniature_root

#: Where error messages send the reader for how to get and unpack the data sets.
README = "data/README.md"
#: The optional captions sidecar in a data set folder: {name: {caption, condition}}.
CAPTIONS_FILE = "captions.json"


class DatasetError(ValueError):
    """A data set cannot be used as asked: unknown name/split, unreadable or invalid file."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A data root, data set folder, split, image or label file is missing on disk."""


def env_var(domain: str) -> str:
    """Return the env var that points straight at a data set folder, e.g. DIFFPROMPT_ACDC_ROOT."""
    return f"DIFFPROMPT_{domain.upper()}_ROOT"


def read_image(path: Path) -> np.ndarray:
    """Return the RGB image at ``path`` as an (H, W, 3) uint8 array; DatasetError if unreadable."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, zlib errors...
        raise DatasetError(f"cannot read image {path}: {type(e).__name__}: {e}") from e


def read_label_8bit(path: Path) -> np.ndarray:
    """Return the (H, W) uint8 values of an 8-bit single-channel (L or P) label PNG.

    A palette ("P") PNG gives its indices, not colours. Raises DatasetError if the file is
    unreadable or holds another kind of image (e.g. an RGB colour visualisation).
    """
    try:
        with Image.open(path) as im:
            mode = im.mode
            arr = np.array(im) if mode in ("L", "P") else None
    except Exception as e:
        raise DatasetError(f"cannot read label {path}: {type(e).__name__}: {e}") from e
    if arr is None:
        raise DatasetError(
            f"label {path} is a mode-{mode} image; expected an 8-bit single-channel PNG "
            "(mode L or P) of label ids. A colour visualisation (e.g. *_color.png) is not a label."
        )
    return arr


def read_label_synthia(path: Path) -> np.ndarray:
    """Return the (H, W) class ids of a SYNTHIA GT/LABELS PNG (16-bit, 3 channels).

    The class id is in the red channel (cv2 reads BGR, so channel 2); the green channel
    holds instance ids and is ignored. PIL cannot be used: it down-converts 16-bit RGB.
    """
    try:
        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    except Exception as e:
        raise DatasetError(f"cannot read label {path}: {type(e).__name__}: {e}") from e
    if arr is None:
        raise DatasetError(f"cannot read label {path}: cv2.imread could not decode it")
    if arr.ndim != 3 or arr.shape[2] < 3:
        raise DatasetError(
            f"label {path} has shape {arr.shape} ({arr.dtype}); expected a 3-channel "
            "(16-bit) SYNTHIA GT/LABELS PNG with the class id in the red channel"
        )
    return arr[..., 2]  # (H, W) red channel = class id


def read_captions(path: Path) -> dict[str, dict[str, str]]:
    """Return the captions sidecar ``{name: {"caption": str, "condition": str}}`` or {}.

    A plain string value is taken as the caption. Raises DatasetError if the file exists
    but is not such a JSON object.
    """
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"cannot read captions sidecar {path}: {e}") from e
    if not isinstance(raw, dict):
        raise DatasetError(
            f"captions sidecar {path} must be a JSON object {{name: {{caption, condition}}}}"
        )
    out: dict[str, dict[str, str]] = {}
    for name, entry in raw.items():
        if isinstance(entry, str):
            entry = {"caption": entry}
        if not isinstance(entry, dict):
            raise DatasetError(f"captions sidecar {path}: entry {name!r} is not an object")
        out[str(name)] = {
            "caption": str(entry.get("caption") or ""),
            "condition": str(entry.get("condition") or ""),
        }
    return out


def find_dirs(top: Path, rel: str, max_depth: int = 3, max_visits: int = 2000) -> list[Path]:
    """Return folders ``d`` below ``top`` (depth 1..max_depth) such that ``d / rel`` exists."""
    found, frontier, visits = [], [top], 0
    for _ in range(max_depth):
        nxt = []
        for d in frontier:
            try:
                children = [c for c in d.iterdir() if c.is_dir()]
            except OSError:
                continue
            for c in sorted(children):
                visits += 1
                if visits > max_visits:
                    return found
                if (c / rel).is_dir():
                    found.append(c)
                nxt.append(c)
        frontier = nxt
    return found


def peek_files(folder: Path, n: int = 3) -> list[str]:
    """Return up to ``n`` file paths below ``folder`` (relative), to show what is there."""
    files = (p for p in folder.rglob("*") if p.is_file())
    return [str(p.relative_to(folder)) for p in itertools.islice(files, n)]


def _named(data_root: str | os.PathLike | None) -> str | os.PathLike:
    """Return what ``data_root`` names: None or "" stand for ``$DIFFPROMPT_DATA`` or the
    miniature."""
    if data_root is None or str(data_root) == "":
        return os.environ.get("DIFFPROMPT_DATA") or MINIATURE
    return data_root


def names_miniature(data_root: str | os.PathLike | None) -> bool:
    """Return whether ``data_root`` means the embedded miniature: ``"miniature"``, or None/""
    with ``$DIFFPROMPT_DATA`` unset."""
    return str(_named(data_root)) == MINIATURE


def find_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """Return the data root ``data_root`` names, generating nothing.

    ``None`` or "" means ``$DIFFPROMPT_DATA`` if set, else the miniature; ``"miniature"``
    gives the miniature's folder (which may not exist yet). Any other value is a folder
    that must exist, else a FileNotFoundError says what to pass.
    """
    if names_miniature(data_root):
        return miniature_root()
    root = Path(_named(data_root)).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"Data root {root} does not exist or is not a folder. Pass the folder that holds "
            f"the data sets (subfolders {sorted(set(DATASET_DIRS.values()))}), set "
            f"DIFFPROMPT_DATA to it, or use data_root='{MINIATURE}' for the embedded miniature."
        )
    return root


def label_file_key(path: Path | None, transform: object) -> tuple | None:
    """Return the label file's path, size and mtime and the transform's repr, what a label
    read under a deterministic transform depends on; None when the file cannot be stat'ed
    (it is read and its problem reported) or the transform has only Python's default repr,
    which does not say what it does."""
    described = repr(transform)
    if " object at 0x" in described:
        return None
    try:
        st = os.stat(path)
    except (OSError, TypeError):
        return None
    return (str(path), st.st_size, st.st_mtime_ns, described)


class MaskMemo:
    """Labels read in this process under a deterministic transform, as (H, W) uint8
    trainIds, keyed by ``SegDataset._mask_key`` (data set class and name,
    ``strict_labels``, the label file's path, size and mtime, and the transform's repr), so
    that the runs of a notebook (seeds, grid cells), each with its own data set objects,
    read and decode each label once. Least recently used labels go first beyond
    $DIFFPROMPT_MASK_MB megabytes (default 512)."""

    def __init__(self, budget_bytes: int):
        self.budget, self.used = budget_bytes, 0
        self.items: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def get(self, key: tuple) -> torch.Tensor | None:
        mask = self.items.get(key)
        if mask is not None:
            self.items.move_to_end(key)
        return mask

    def put(self, key: tuple, mask: torch.Tensor) -> None:
        if key in self.items:
            self.used -= self.items.pop(key).numel()
        self.items[key] = mask
        self.used += mask.numel()
        while self.used > self.budget and len(self.items) > 1:
            self.used -= self.items.popitem(last=False)[1].numel()

    def clear(self) -> None:
        self.items.clear()
        self.used = 0


#: The process's labels (:class:`MaskMemo`), shared by every data set object.
MASKS = MaskMemo(int(float(os.environ.get("DIFFPROMPT_MASK_MB", "512")) * 2**20))
