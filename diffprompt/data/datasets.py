"""One dataset class per real data set, all reading the official on-disk layouts.

Every data set returns the same sample (a dict that the default DataLoader collate
handles):

    image  float32 (3, H, W) in [0, 1] with ``transform=None``, else the transform's output
    mask   int64 (H, W) of trainIds in {0..18, 255}; absent for unlabeled splits
    name   str, the file stem without the data set's suffix ("aachen_000000_000019")
    meta   dict of str/bool: dataset, domain, condition, split, caption, labeled

Problems are found as early as possible. Opening a data set (the constructor) checks the
folder, the layout, the split and that every image of a labeled split has its label
file; reading a sample checks that file (readable, same size as its image, label values
known). ``check()`` reads every file and reports all problems at once.

Errors: ``DatasetNotFoundError`` (also a FileNotFoundError) for anything missing on disk,
``DatasetError`` (a ValueError) for everything else: unknown names, unreadable files,
wrong sizes, unknown label values. Both name the path and what was expected.
"""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from diffprompt import labels
from diffprompt.data.roots import resolve_data_root
from diffprompt.data.transforms import ToFloat
from diffprompt.io import did_you_mean
from diffprompt.paths import DATASET_DIRS, MINIATURE

README = "data/README.md"
#: The four ACDC adverse conditions.
ACDC_CONDITIONS: tuple[str, ...] = ("fog", "night", "rain", "snow")


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


def _find_dirs(top: Path, rel: str, max_depth: int = 3, max_visits: int = 2000) -> list[Path]:
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


def _peek(folder: Path, n: int = 3) -> list[str]:
    """Return up to ``n`` file paths below ``folder`` (relative), to show what is there."""
    files = (p for p in folder.rglob("*") if p.is_file())
    return [str(p.relative_to(folder)) for p in itertools.islice(files, n)]


@dataclass
class CheckSummary:
    """What ``SegDataset.check()`` found on a data set that passed."""

    dataset: str
    split: str
    root: Path
    num_images: int
    num_labeled: int
    image_sizes: Counter = field(default_factory=Counter)  # (H, W) -> count
    class_pixels: list[int] = field(default_factory=list)  # (19,) pixels per trainId
    ignore_pixels: int = 0

    def __str__(self) -> str:
        sizes = ", ".join(f"{h}x{w} (HxW): {n}" for (h, w), n in self.image_sizes.most_common())
        lines = [
            f"{self.dataset} / {self.split} at {self.root}: OK",
            f"  images: {self.num_images} ({self.num_labeled} labeled)",
            f"  sizes:  {sizes}",
        ]
        total = sum(self.class_pixels) + self.ignore_pixels
        if total:
            present = [labels.CLASSES[i] for i, n in enumerate(self.class_pixels) if n]
            lines.append(f"  classes present ({len(present)}/19): {', '.join(present)}")
            lines.append(f"  ignored pixels: {100.0 * self.ignore_pixels / total:.1f}%")
        return "\n".join(lines)


class SegDataset(Dataset):
    """Base class: an image folder tree with an optional parallel label tree.

    A subclass says where a split's images and labels are (``_split_dirs``), the file
    suffixes, how deep the images are below a split folder, how labels are read and mapped.

    Attributes (after opening):
        name, split, root (the data set folder), labeled, num_classes (19),
        eval_classes (trainIds mIoU is averaged over), files [(image, label or None)].
    """

    name: str = ""  # registry name
    domain: ClassVar[str] = ""  # key of DATASET_DIRS; meta["domain"]
    layout: ClassVar[str] = ""  # the expected tree, shown in error messages
    splits: ClassVar[tuple[str, ...]] = ("train", "val")
    unlabeled_splits: ClassVar[frozenset[str]] = frozenset()
    split_aliases: ClassVar[dict[str, str]] = {}
    default_split: ClassVar[str] = "train"
    default_condition: ClassVar[str] = "mixed"
    image_suffix: ClassVar[str] = ".png"  # stripped from the file name to give the name
    label_suffix: ClassVar[str] = ".png"  # appended to the name to give the label file
    wrong_label_suffixes: ClassVar[tuple[str, ...]] = ()  # common wrong variants (hints)
    depth: ClassVar[int] = 0  # subfolder levels between a split folder and its images
    markers: ClassVar[tuple[str, ...]] = ()  # subfolders any valid layout has
    label_space: str = "trainIds {0..18, 255}"  # for messages; Mapillary sets its own
    num_classes: int = labels.NUM_CLASSES
    eval_classes: tuple[int, ...] = tuple(range(labels.NUM_CLASSES))

    def __init__(
        self,
        split: str | None = None,
        root: str | os.PathLike | None = None,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        strict_labels: bool = True,
    ):
        self.name = self.name or self.domain
        self.split = self.canonical_split(split)
        self.root = self.locate(root)
        self.transform = transform
        self.strict_labels = strict_labels
        self.labeled = self.split not in self.unlabeled_splits
        self._check_layout()
        self.files: list[tuple[Path, Path | None]] = self._collect_files()
        self._lut, self._valid = self._label_table()  # (N,) uint8 id->trainId, (N,) bool
        self._sidecar = read_captions(self.root / "captions.json")

    # ---------------------------------------------------------------- opening
    def canonical_split(self, split: str | None) -> str:
        """Return the registry split name for ``split`` (None -> the default split)."""
        if split is None:
            return self.default_split
        split = self.split_aliases.get(split, split)
        if split not in self.splits:
            valid = list(self.splits) + list(self.split_aliases)
            raise DatasetError(
                f"unknown split '{split}' for data set '{self.name}'; valid splits: "
                f"{list(self.splits)}.{did_you_mean(split, valid)}"
            )
        return split

    def locate(self, root: str | os.PathLike | None) -> Path:
        """Return this data set's folder: ``$DIFFPROMPT_<NAME>_ROOT`` or ``<data root>/<dir>``.

        The per-set env var is used for every root except an explicit ``"miniature"``.
        Raises DatasetNotFoundError naming the folder and how to point at it.
        """
        dirname, env = DATASET_DIRS[self.domain], env_var(self.domain)
        howto = (
            f"Point diffprompt at it by passing root=/data/root (data_root= in notebooks), "
            f"setting DIFFPROMPT_DATA=/data/root (the folder that holds {dirname}/), or "
            f"setting {env}=/path/to/{dirname} (the data set folder itself). "
            f"{README} tells how to get it."
        )
        if os.environ.get(env) and str(root) != MINIATURE:
            folder = Path(os.environ[env]).expanduser()
            if not folder.is_dir():
                raise DatasetNotFoundError(
                    f"{env}={folder} is not a folder; it must point at the {self.name} data "
                    f"set folder, laid out as\n{self.layout}\n{howto}"
                )
            return folder
        try:
            data_root = resolve_data_root(root)
        except FileNotFoundError as e:
            raise DatasetNotFoundError(
                f"{e}\nData set '{self.name}' is expected in <data root>/{dirname}/.\n{howto}"
            ) from e
        folder = data_root / dirname
        if not folder.is_dir():
            hint = ""
            if self.markers and all((data_root / m).is_dir() for m in self.markers):
                hint = (
                    f"\nHint: {data_root} itself looks like the {dirname} folder; pass its "
                    f"parent as the root or set {env}={data_root}."
                )
            raise DatasetNotFoundError(
                f"data set folder {folder} for '{self.name}' does not exist. Expected layout:"
                f"\n{self.layout}\n{howto}{hint}"
            )
        return folder

    def _layout_hints(self) -> list[str]:
        """Return hints about common wrong layouts found in ``self.root``."""
        hints = []
        env = env_var(self.domain)
        for marker in self.markers:
            for d in _find_dirs(self.root, marker):
                hints.append(
                    f"found {d / marker}: the data set seems to be unpacked one level too "
                    f"deep; move the contents of {d} up into {self.root} or set {env}={d}"
                )
            last = Path(marker).parts[-1]
            split_dirs = set(self.splits) | set(self.split_aliases)
            if self.root.name == last or any((self.root / s).is_dir() for s in split_dirs):
                hints.append(
                    f"{self.root} looks like the '{marker}' folder itself; point at the "
                    f"data set folder that contains {marker}/"
                )
        return hints

    def _check_layout(self) -> None:
        """Raise DatasetNotFoundError (with hints) if a marker subfolder is missing."""
        missing = [m for m in self.markers if not (self.root / m).is_dir()]
        if missing:
            hints = "".join(f"\nHint: {h}" for h in self._layout_hints())
            found = sorted(p.name for p in self.root.iterdir())[:10]
            raise DatasetNotFoundError(
                f"{self.root} does not have the {self.name} layout: missing "
                f"{', '.join(m + '/' for m in missing)} (found {found}). Expected layout:\n"
                f"{self.layout}{hints}\n{README} tells how to unpack the official archives."
            )

    def _split_dirs(self, split: str) -> list[tuple[Path, Path]]:
        """Return the (image folder, label folder) pairs of ``split``."""
        raise NotImplementedError

    def _split_exists(self, split: str) -> bool:
        """Return whether the image folders of ``split`` exist."""
        return all(img_dir.is_dir() for img_dir, _ in self._split_dirs(split))

    def splits_on_disk(self) -> tuple[str, ...]:
        """Return the splits whose image folders exist in ``self.root``."""
        return tuple(s for s in self.splits if self._split_exists(s))

    def _suffix(self) -> str:
        """Return the image file suffix of the opened split."""
        return self.image_suffix

    def _list_images(self, img_dir: Path) -> list[Path]:
        """Return the sorted image files of one split folder."""
        return sorted(img_dir.glob("*/" * self.depth + "*" + self._suffix()))

    def _label_path(self, image: Path, img_dir: Path, lbl_dir: Path) -> Path:
        """Return the label file of ``image``: same relative folder, label suffix."""
        rel = image.relative_to(img_dir).parent
        return lbl_dir / rel / (self.name_of(image) + self.label_suffix)

    def _label_dir_hints(self, lbl_dir: Path) -> list[str]:
        """Return hints when the label folder of a labeled split is missing."""
        return []

    def _collect_files(self) -> list[tuple[Path, Path | None]]:
        """Return [(image, label or None)] of the split; raise if anything is missing."""
        files: list[tuple[Path, Path | None]] = []
        for img_dir, lbl_dir in self._split_dirs(self.split):
            if not img_dir.is_dir():
                raise DatasetNotFoundError(
                    f"split '{self.split}' of {self.name} not found: expected the folder "
                    f"{img_dir}. Splits on disk in {self.root}: {list(self.splits_on_disk())}."
                )
            images = self._list_images(img_dir)
            if not images:
                pattern = "*/" * self.depth + "*" + self._suffix()
                other = _peek(img_dir)
                seen = f"; found other files, e.g. {other}" if other else " (it is empty)"
                raise DatasetNotFoundError(
                    f"split '{self.split}' of {self.name} is empty: no images matching "
                    f"{img_dir}/{pattern}{seen}. Expected layout:\n{self.layout}"
                )
            if self.labeled and not lbl_dir.is_dir():
                hints = "".join(f"\nHint: {h}" for h in self._label_dir_hints(lbl_dir))
                raise DatasetNotFoundError(
                    f"label folder {lbl_dir} of the labeled split '{self.split}' of "
                    f"{self.name} not found. Expected layout:\n{self.layout}{hints}"
                )
            for image in images:
                label = self._label_path(image, img_dir, lbl_dir) if self.labeled else None
                files.append((image, label))
        if self.labeled:
            self._check_labels_exist(files)
        return files

    def _check_labels_exist(self, files: list[tuple[Path, Path | None]]) -> None:
        """Raise DatasetNotFoundError listing images of a labeled split without a label."""
        missing = [(i, lbl) for i, lbl in files if lbl is not None and not lbl.is_file()]
        if not missing:
            return
        examples = "".join(f"\n  image {i}\n  -> expected label {lbl}" for i, lbl in missing[:5])
        hint = ""
        lbl0 = missing[0][1]
        for wrong in self.wrong_label_suffixes:
            other = lbl0.with_name(lbl0.name[: -len(self.label_suffix)] + wrong)
            if other.is_file():
                hint = (
                    f"\nHint: found {other.name}; {self.name} reads *{self.label_suffix} "
                    f"files (see {README} for the supported variant)."
                )
                break
        raise DatasetNotFoundError(
            f"{len(missing)} of {len(files)} images of the labeled split '{self.split}' of "
            f"{self.name} have no label file, e.g.:{examples}{hint}"
        )

    # ---------------------------------------------------------------- labels
    def _label_table(self) -> tuple[np.ndarray, np.ndarray]:
        """Return (lut, valid): id -> trainId table and which ids are known (trainId data)."""
        lut = np.full(256, labels.IGNORE_INDEX, dtype=np.uint8)
        lut[: labels.NUM_CLASSES] = np.arange(labels.NUM_CLASSES)
        valid = np.zeros(256, dtype=bool)
        valid[: labels.NUM_CLASSES] = True
        valid[labels.IGNORE_INDEX] = True
        return lut, valid

    def _read_ids(self, path: Path) -> np.ndarray:
        """Return the raw (H, W) label ids stored in ``path``."""
        return read_label_8bit(path)

    def _to_trainids(self, ids: np.ndarray, path: Path) -> tuple[np.ndarray, str | None]:
        """Return ((H, W) uint8 trainIds, problem or None) for the raw ids of ``path``.

        Ids outside the label space are a problem when ``strict_labels`` (they map to 255
        either way).
        """
        problem = None
        if self.strict_labels:
            bad = np.unique(ids[~self._valid[ids]])
            if bad.size:
                problem = (
                    f"label {path} holds values {bad[:10].tolist()} outside {self.label_space}; "
                    "pass strict_labels=False to map them to 255 (ignore)"
                )
        return self._lut[ids], problem

    def name_of(self, image: Path) -> str:
        """Return the sample name of an image file: its file name without the suffix."""
        return image.name[: -len(self._suffix())]

    def _condition_of(self, image: Path) -> str:
        """Return the condition of an image (before the sidecar)."""
        return self.default_condition

    # ---------------------------------------------------------------- reading
    def __len__(self) -> int:
        return len(self.files)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Return ((H, W, 3) uint8 image, (H, W) uint8 trainIds or None); raise on problems."""
        image_path, label_path = self.files[index]
        image = read_image(image_path)  # (H, W, 3)
        if label_path is None:
            return image, None
        ids = self._read_ids(label_path)  # (H, W)
        if ids.shape != image.shape[:2]:
            raise DatasetError(
                f"label {label_path} is {ids.shape[1]}x{ids.shape[0]} (WxH) but its image "
                f"{image_path} is {image.shape[1]}x{image.shape[0]}; they must be the same size"
            )
        trainids, problem = self._to_trainids(ids, label_path)
        if problem:
            raise DatasetError(problem)
        return image, trainids

    def meta(self, index: int) -> dict[str, str | bool]:
        """Return the meta dict of sample ``index`` (no tensors, no None values)."""
        image_path = self.files[index][0]
        name = self.name_of(image_path)
        side = self._sidecar.get(name, {})
        return {
            "dataset": self.name,
            "domain": self.domain,
            "condition": side.get("condition") or self._condition_of(image_path),
            "split": self.split,
            "caption": side.get("caption", ""),
            "labeled": self.labeled,
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Return {"image", "mask" (labeled splits only), "name", "meta"} of sample ``index``.

        image: float32 (3, H, W) in [0, 1] without a transform; mask: int64 (H, W).
        """
        image, trainids = self._load(index)
        sample: dict[str, Any] = {
            "image": torch.from_numpy(image).permute(2, 0, 1).contiguous(),  # (3, H, W) uint8
            "name": self.name_of(self.files[index][0]),
            "meta": self.meta(index),
        }
        if trainids is not None:
            sample["mask"] = torch.from_numpy(trainids.astype(np.int64))  # (H, W)
        return (self.transform or ToFloat())(sample)

    def masks(self, indices: Iterable[int]) -> torch.Tensor:
        """Return the trainIds (B, H, W) int64 of images ``indices``, each label read once
        per data set object (kept as uint8)."""
        cache = self.__dict__.setdefault("_mask_cache", {})
        for i in indices:
            if i not in cache:
                cache[i] = self[i]["mask"].to(torch.uint8)
        return torch.stack([cache[i] for i in indices]).long()

    def check(self, progress: bool = False, indices: Iterable[int] | None = None) -> CheckSummary:
        """Read every file (or those of ``indices``); return a CheckSummary, or raise one
        DatasetError listing all problems.

        Problems: unreadable images or labels, a label of another size than its image,
        label values outside the label space (only with ``strict_labels``).
        """
        chosen = self.files if indices is None else [self.files[i] for i in indices]
        checked = len(chosen)
        files: Iterable[tuple[Path, Path | None]] = chosen
        if progress:
            from tqdm import tqdm

            files = tqdm(files, desc=f"check {self.name}/{self.split}", unit="img")
        problems: list[str] = []
        sizes: Counter = Counter()
        pixels = np.zeros(256, dtype=np.int64)
        for image_path, label_path in files:
            image = ids = None
            try:
                image = read_image(image_path)
                sizes[image.shape[:2]] += 1
            except DatasetError as e:
                problems.append(str(e))
            if label_path is None:
                continue
            try:
                ids = self._read_ids(label_path)
            except DatasetError as e:
                problems.append(str(e))
                continue
            if image is not None and ids.shape != image.shape[:2]:
                problems.append(
                    f"label {label_path} is {ids.shape[1]}x{ids.shape[0]} (WxH) but its image "
                    f"{image_path} is {image.shape[1]}x{image.shape[0]}"
                )
            trainids, problem = self._to_trainids(ids, label_path)
            if problem:
                problems.append(problem)
            pixels += np.bincount(trainids.ravel(), minlength=256)
        if problems:
            listing = "".join(f"\n  - {p}" for p in problems)
            of = f"{checked} images" if checked == len(self.files) else (
                f"{checked} of its {len(self.files)} images")  # fmt: skip
            raise DatasetError(
                f"{self.name} / {self.split} at {self.root}: {len(problems)} problem(s) in "
                f"{of}:{listing}\nReplace these files from the official archive (or remove "
                f"the image with its label); `python -m diffprompt.data check {self.name} "
                f"--split {self.split} --root ROOT` reads every file."
            )
        return CheckSummary(
            dataset=self.name,
            split=self.split,
            root=self.root,
            num_images=checked,
            num_labeled=sum(lbl is not None for _, lbl in chosen),
            image_sizes=sizes,
            class_pixels=pixels[: labels.NUM_CLASSES].tolist(),
            ignore_pixels=int(pixels[labels.NUM_CLASSES :].sum()),
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name='{self.name}', split='{self.split}', "
            f"root='{self.root}', images={len(self.files)}, labeled={self.labeled})"
        )


# ==================================================================== synthetic sources
class GTA5(SegDataset):
    """GTA5 (Richter et al. 2016): 24,966 game frames, labels as Cityscapes ids.

    Splits: "all" (every image, the usual DG protocol) and, when ``gta5/split.mat`` is
    present, its "train"/"val"/"test" (1-based image numbers).
    """

    domain = "gta5"
    layout = (
        "gta5/\n  images/00001.png ...\n  labels/00001.png ...   (palette PNG of Cityscapes "
        "label ids)\n  split.mat               (optional: train/val/test)"
    )
    splits = ("all", "train", "val", "test")
    default_split = "all"
    markers = ("images",)
    label_space = "Cityscapes label ids 0..33"
    _mat_keys: ClassVar[dict[str, str]] = {"train": "trainIds", "val": "valIds", "test": "testIds"}

    def _split_dirs(self, split: str) -> list[tuple[Path, Path]]:
        return [(self.root / "images", self.root / "labels")]

    def _split_exists(self, split: str) -> bool:
        ok = (self.root / "images").is_dir()
        return ok and (split == "all" or (self.root / "split.mat").is_file())

    def _layout_hints(self) -> list[str]:
        hints = super()._layout_hints()
        if any(self.root.glob("*.png")):
            hints.append(
                f"{self.root} holds PNG files directly; images go to images/ and labels to labels/"
            )
        return hints

    def _list_images(self, img_dir: Path) -> list[Path]:
        if self.split == "all":
            return super()._list_images(img_dir)
        mat = self.root / "split.mat"
        if not mat.is_file():
            raise DatasetNotFoundError(
                f"split '{self.split}' of gta5 is defined by {mat}, which does not exist "
                f"(download split.mat from the GTA5 site). Splits on disk: "
                f"{list(self.splits_on_disk())}; 'all' is the usual DG protocol."
            )
        import scipy.io  # only needed for the optional split file

        try:
            numbers = scipy.io.loadmat(str(mat))[self._mat_keys[self.split]].ravel()
        except Exception as e:
            raise DatasetError(
                f"cannot read {mat} (expected keys trainIds, valIds, testIds): {e}"
            ) from e
        images = [img_dir / f"{int(n):05d}.png" for n in numbers]
        missing = [p for p in images if not p.is_file()]
        if missing:
            raise DatasetNotFoundError(
                f"{len(missing)} of {len(images)} images listed for split '{self.split}' in "
                f"{mat} are missing, e.g. {[str(p) for p in missing[:3]]}"
            )
        return images

    def _label_table(self) -> tuple[np.ndarray, np.ndarray]:
        return labels.GTA5_ID_TO_TRAINID, np.arange(256) <= 33


class SYNTHIA(SegDataset):
    """SYNTHIA-RAND-CITYSCAPES: 9,400 rendered frames; 16 classes are evaluated."""

    domain = "synthia"
    layout = (
        "synthia/              (the contents of RAND_CITYSCAPES/)\n  RGB/0000000.png ...\n"
        "  GT/LABELS/0000000.png ...   (16-bit, 3 channels; red = class id)"
    )
    splits = ("all",)
    default_split = "all"
    markers = ("RGB",)
    label_space = "SYNTHIA class ids 0..22"
    eval_classes = labels.SYNTHIA_EVAL_CLASSES

    def _split_dirs(self, split: str) -> list[tuple[Path, Path]]:
        return [(self.root / "RGB", self.root / "GT" / "LABELS")]

    def _label_dir_hints(self, lbl_dir: Path) -> list[str]:
        if (self.root / "GT" / "COLOR").is_dir():
            return ["found GT/COLOR (colour images) only; the class ids are in GT/LABELS"]
        return []

    def _read_ids(self, path: Path) -> np.ndarray:
        return read_label_synthia(path)

    def _label_table(self) -> tuple[np.ndarray, np.ndarray]:
        return labels.SYNTHIA_ID_TO_TRAINID, np.arange(65536) <= 22


# ==================================================================== real sources / targets
class Cityscapes(SegDataset):
    """Cityscapes (gtFine): 2,975 train / 500 val / 1,525 test (test labels are withheld)."""

    domain = "cityscapes"
    layout = (
        "cityscapes/\n  leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png\n"
        "  gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png"
    )
    splits = ("train", "val", "test")
    unlabeled_splits = frozenset({"test"})
    default_condition = "clear"
    image_suffix = "_leftImg8bit.png"
    label_suffix = "_gtFine_labelIds.png"
    wrong_label_suffixes = ("_gtFine_labelTrainIds.png", "_gtFine_color.png")
    depth = 1
    markers = ("leftImg8bit",)
    label_space = "Cityscapes label ids 0..33"

    def _split_dirs(self, split: str) -> list[tuple[Path, Path]]:
        return [(self.root / "leftImg8bit" / split, self.root / "gtFine" / split)]

    def _label_dir_hints(self, lbl_dir: Path) -> list[str]:
        if (self.root / "gtCoarse").is_dir():
            return ["found gtCoarse/ only; diffprompt evaluates on gtFine_trainvaltest.zip"]
        return ["unpack gtFine_trainvaltest.zip into the cityscapes folder"]

    def _label_table(self) -> tuple[np.ndarray, np.ndarray]:
        return labels.CITYSCAPES_ID_TO_TRAINID, np.arange(256) <= 33


class BDD100K(SegDataset):
    """BDD100K semantic segmentation (10k images): 7,000 train / 1,000 val, trainId masks."""

    domain = "bdd100k"
    layout = (
        "bdd100k/\n  images/10k/<split>/<stem>.jpg\n"
        "  labels/sem_seg/masks/<split>/<stem>.png   (8-bit trainIds)"
    )
    splits = ("train", "val", "test")
    unlabeled_splits = frozenset({"test"})
    image_suffix = ".jpg"
    markers = ("images/10k",)

    def _split_dirs(self, split: str) -> list[tuple[Path, Path]]:
        return [(self.root / "images" / "10k" / split, self.root / "labels/sem_seg/masks" / split)]

    def _layout_hints(self) -> list[str]:
        hints = super()._layout_hints()
        if (self.root / "seg").is_dir():
            hints.append(
                "found seg/ (the 2018 release, labels *_train_id.png); use the current "
                "10k images + sem_seg labels archives (see the README)"
            )
        return hints

    def _label_dir_hints(self, lbl_dir: Path) -> list[str]:
        if (self.root / "labels/sem_seg/colormaps").is_dir():
            return ["found labels/sem_seg/colormaps (colour images) only; masks/ holds the ids"]
        return []


class Mapillary(SegDataset):
    """Mapillary Vistas v1.2: 18,000 training / 2,000 validation; 66 classes mapped by name.

    The id -> trainId table is built from the class names of ``config_v1.2.json`` or
    ``config.json`` when present (so it follows that file's order), else the v1.2 names.
    Labels are read from ``<split>/v1.2/labels`` (v2.0 download) or ``<split>/labels``
    (v1.2 download).
    """

    domain = "mapillary"
    layout = (
        "mapillary/\n  config_v1.2.json or config.json   (optional: class names)\n"
        "  training/images/<stem>.jpg\n  training/v1.2/labels/<stem>.png   "
        "(or training/labels/ of the v1.2 download)\n  validation/...  testing/images/..."
    )
    splits = ("train", "val", "test")
    unlabeled_splits = frozenset({"test"})
    split_aliases = {"training": "train", "validation": "val", "testing": "test"}
    image_suffix = ".jpg"
    _folders: ClassVar[dict[str, str]] = {
        "train": "training",
        "val": "validation",
        "test": "testing",
    }

    def _split_dirs(self, split: str) -> list[tuple[Path, Path]]:
        top = self.root / self._folders[split]
        label_dir = top / "v1.2" / "labels"
        if not label_dir.is_dir() and (top / "labels").is_dir():
            label_dir = top / "labels"  # the v1.2 download
        return [(top / "images", label_dir)]

    def _check_layout(self) -> None:
        if not any((self.root / f).is_dir() for f in self._folders.values()):
            hints = [
                f"found {d}/training: move its contents up or set {env_var(self.domain)}={d}"
                for d in _find_dirs(self.root, "training")
            ]
            if (self.root / "images").is_dir():
                hints.append(f"{self.root} looks like a split folder (it holds images/)")
            text = "".join(f"\nHint: {h}" for h in hints)
            raise DatasetNotFoundError(
                f"{self.root} does not have the mapillary layout: none of training/, "
                f"validation/, testing/ found. Expected layout:\n{self.layout}{text}"
            )

    def _label_dir_hints(self, lbl_dir: Path) -> list[str]:
        v2 = lbl_dir.parent.parent / "v2.0" / "labels"
        if v2.is_dir():
            return [
                f"found only Mapillary v2.0 labels ({v2}); diffprompt maps the v1.2 labels "
                "(66 classes). The v2.0 download also holds v1.2/labels: unpack it completely."
            ]
        return []

    def _label_table(self) -> tuple[np.ndarray, np.ndarray]:
        names = list(labels.MAPILLARY_V12_NAMES)
        for cfg in (self.root / "config_v1.2.json", self.root / "config.json"):
            if cfg.is_file():
                try:
                    names = [e["name"] for e in json.loads(cfg.read_text())["labels"]]
                except Exception as e:
                    raise DatasetError(
                        f"cannot read class names from {cfg} (expected "
                        f'{{"labels": [{{"name": ...}}, ...]}}): {e}'
                    ) from e
                break
        if len(names) > 256:
            raise DatasetError(f"{len(names)} Mapillary classes do not fit 8-bit label PNGs")
        self.label_space = f"Mapillary ids 0..{len(names) - 1} ({len(names)} class names)"
        return labels.mapillary_lut(names), np.arange(256) < len(names)


class ACDC(SegDataset):
    """ACDC: adverse conditions (fog, night, rain, snow), labels as trainIds.

    ``conditions`` picks which of the four to read (the registry has one entry per
    condition and "acdc" for all four). Splits: train, val (labeled), test (labels are
    withheld) and train_ref/val_ref/test_ref (daytime reference images, unlabeled).
    """

    domain = "acdc"
    layout = (
        "acdc/\n  rgb_anon/<condition>/<split>/<seq>/<seq>_frame_<n>_rgb_anon.png\n"
        "  rgb_anon/<condition>/<split>_ref/<seq>/<seq>_frame_<n>_rgb_ref_anon.png (optional)\n"
        "  gt/<condition>/<split>/<seq>/<seq>_frame_<n>_gt_labelTrainIds.png"
    )
    splits = ("train", "val", "test", "train_ref", "val_ref", "test_ref")
    unlabeled_splits = frozenset({"test", "train_ref", "val_ref", "test_ref"})
    image_suffix = "_rgb_anon.png"
    label_suffix = "_gt_labelTrainIds.png"
    wrong_label_suffixes = ("_gt_labelIds.png", "_gt_labelColor.png")
    depth = 1
    markers = ("rgb_anon",)

    def __init__(
        self,
        split: str | None = None,
        root: str | os.PathLike | None = None,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        strict_labels: bool = True,
        conditions: tuple[str, ...] = ACDC_CONDITIONS,
    ):
        conditions = (conditions,) if isinstance(conditions, str) else tuple(conditions)
        for c in conditions:
            if c not in ACDC_CONDITIONS:
                raise DatasetError(
                    f"unknown ACDC condition '{c}'; valid: {list(ACDC_CONDITIONS)}."
                    f"{did_you_mean(c, ACDC_CONDITIONS)}"
                )
        self.conditions = conditions
        if set(conditions) == set(ACDC_CONDITIONS):
            self.name = "acdc"
        else:
            self.name = "acdc_" + "_".join(conditions)
        super().__init__(split, root, transform, strict_labels)

    def _check_layout(self) -> None:
        super()._check_layout()
        missing = [c for c in self.conditions if not (self.root / "rgb_anon" / c).is_dir()]
        if missing:
            found = [c for c in ACDC_CONDITIONS if (self.root / "rgb_anon" / c).is_dir()]
            raise DatasetNotFoundError(
                f"ACDC condition folder(s) {[str(self.root / 'rgb_anon' / c) for c in missing]} "
                f"not found (conditions on disk: {found}). '{self.name}' reads "
                f"{list(self.conditions)}; use acdc_<condition> for a single one."
            )

    def _suffix(self) -> str:
        return "_rgb_ref_anon.png" if self.split.endswith("_ref") else self.image_suffix

    def _split_dirs(self, split: str) -> list[tuple[Path, Path]]:
        return [
            (self.root / "rgb_anon" / c / split, self.root / "gt" / c / split)
            for c in self.conditions
        ]

    def _condition_of(self, image: Path) -> str:
        return image.relative_to(self.root / "rgb_anon").parts[0]


class DarkZurich(SegDataset):
    """Dark Zurich: night driving; train (night images, unlabeled), val (50 labeled), test."""

    domain = "darkzurich"
    layout = (
        "dark_zurich/\n  rgb_anon/<split>/night/<seq>/<seq>_frame_<n>_rgb_anon.png\n"
        "  gt/<split>/night/<seq>/<seq>_frame_<n>_gt_labelTrainIds.png   (val only)"
    )
    splits = ("train", "val", "test")
    unlabeled_splits = frozenset({"train", "test"})
    default_condition = "night"
    image_suffix = "_rgb_anon.png"
    label_suffix = "_gt_labelTrainIds.png"
    wrong_label_suffixes = ("_gt_labelIds.png", "_gt_labelColor.png")
    depth = 1
    markers = ("rgb_anon",)

    def _split_dirs(self, split: str) -> list[tuple[Path, Path]]:
        return [(self.root / "rgb_anon" / split / "night", self.root / "gt" / split / "night")]
