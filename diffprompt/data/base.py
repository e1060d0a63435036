"""The base of every data set class: opening, reading, checking and the mask cache.

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

A class locates its folder below the data root and generates nothing: when the root is
the embedded miniature, ``diffprompt.data.build_dataset`` generates it first.

The file layout is data: ``split_folders`` (a split's image and label folders relative
to the data set folder), ``file_names`` (a sample's image and label file names),
``depth`` (subfolder levels below a split folder) and ``unlabeled_splits``. The
miniature generator writes its files from the same attributes.

Errors: ``DatasetNotFoundError`` (also a FileNotFoundError) for anything missing on disk,
``DatasetError`` (a ValueError) for everything else: unknown names, unreadable files,
wrong sizes, unknown label values. Both name the path and what was expected.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from diffprompt import labels
from diffprompt.data.files import (
    CAPTIONS_FILE,
    MASKS,
    README,
    DatasetError,
    DatasetNotFoundError,
    env_var,
    find_data_root,
    find_dirs,
    label_file_key,
    names_miniature,
    peek_files,
    read_captions,
    read_image,
    read_label_8bit,
)
from diffprompt.data.transforms import ToFloat, is_deterministic
from diffprompt.io import did_you_mean
from diffprompt.paths import DATASET_DIRS, MINIATURE

#: Pairs :meth:`SegDataset.check` found sound in this process, by
#: :meth:`SegDataset._check_key` (files, size, mtime): their image size and label counts.
_CHECKED: dict[tuple, tuple[Any, np.ndarray | None]] = {}

Transform = Callable[[dict[str, Any]], dict[str, Any]]


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

    A subclass says where a split's images and labels are (``split_folders``), the file
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
        transform: Transform | None = None,
        strict_labels: bool = True,
        **options: Any,
    ):
        self._configure(**options)
        self.split = self.canonical_split(split)
        self.root = self.locate(root)
        self.transform = transform
        self.strict_labels = strict_labels
        self.labeled = self.split not in self.unlabeled_splits
        self._check_layout()
        self.files: list[tuple[Path, Path | None]] = self._collect_files()
        self._lut, self._valid = self._label_table()  # (N,) uint8 id->trainId, (N,) bool
        self._sidecar = read_captions(self.root / CAPTIONS_FILE)

    def _configure(self, **options: Any) -> None:
        """Set ``name`` from the subclass's own constructor options (ACDC: ``conditions``)."""
        if options:
            raise TypeError(f"{type(self).__name__} takes no options {sorted(options)}")
        self.name = self.name or self.domain

    # ---------------------------------------------------------------- the layout as data
    @classmethod
    def split_folders(cls, split: str) -> list[tuple[str, str]]:
        """Return the (image folder, label folder) pairs of ``split``, relative to the data
        set folder, e.g. [("leftImg8bit/val", "gtFine/val")]."""
        raise NotImplementedError

    @classmethod
    def image_suffix_of(cls, split: str) -> str:
        """Return the image file suffix of ``split``."""
        return cls.image_suffix

    @classmethod
    def file_names(cls, split: str, name: str) -> tuple[str, str]:
        """Return the (image, label) file names of sample ``name`` in ``split``; both lie in
        the same subfolder below their split folders."""
        return name + cls.image_suffix_of(split), name + cls.label_suffix

    @classmethod
    def reads_miniature(cls, root: str | os.PathLike | None) -> bool:
        """Return whether opening this data set with ``root`` reads the embedded miniature
        (``root`` names it and no ``$DIFFPROMPT_<NAME>_ROOT`` overrides it)."""
        return names_miniature(root) and not cls._env_folder_applies(root)

    @classmethod
    def _env_folder_applies(cls, root: str | os.PathLike | None) -> bool:
        """Return whether ``$DIFFPROMPT_<NAME>_ROOT`` gives the folder (every root but an
        explicit ``"miniature"``)."""
        return bool(os.environ.get(env_var(cls.domain))) and str(root) != MINIATURE

    @classmethod
    def _splits_at(cls, root: str | os.PathLike | None = None, **options: Any) -> tuple[str, ...]:
        """Return the splits whose image folders exist in this data set's folder below the
        data root ``root``; () when that folder is missing. Opens no split and generates
        nothing; ``options`` as the constructor's (ACDC: ``conditions``). Callers use
        ``diffprompt.data.available_splits``, which serves registry names."""
        probe = cls.__new__(cls)  # located, not opened: no split, no files
        probe._configure(**options)
        try:
            probe.root = probe.locate(root)
        except DatasetNotFoundError:
            return ()
        return probe._splits_on_disk()

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
        if self._env_folder_applies(root):
            folder = Path(os.environ[env]).expanduser()
            if not folder.is_dir():
                raise DatasetNotFoundError(
                    f"{env}={folder} is not a folder; it must point at the {self.name} data "
                    f"set folder, laid out as\n{self.layout}\n{howto}"
                )
            return folder
        try:
            data_root = find_data_root(root)
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
            if names_miniature(root):
                hint += (
                    "\nHint: the embedded miniature is generated by diffprompt.data."
                    "build_dataset or `python -m diffprompt.data.toyworld`."
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
            for d in find_dirs(self.root, marker):
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
        """Return the (image folder, label folder) pairs of ``split`` below ``self.root``."""
        return [(self.root / img, self.root / lbl) for img, lbl in self.split_folders(split)]

    def _split_exists(self, split: str) -> bool:
        """Return whether the image folders of ``split`` exist."""
        return all(img_dir.is_dir() for img_dir, _ in self._split_dirs(split))

    def _splits_on_disk(self) -> tuple[str, ...]:
        """Return the splits whose image folders exist in ``self.root``."""
        return tuple(s for s in self.splits if self._split_exists(s))

    def _list_images(self, img_dir: Path) -> list[Path]:
        """Return the sorted image files of one split folder."""
        return sorted(img_dir.glob("*/" * self.depth + "*" + self.image_suffix_of(self.split)))

    def _label_path(self, image: Path, img_dir: Path, lbl_dir: Path) -> Path:
        """Return the label file of ``image``: same relative folder, label file name."""
        rel = image.relative_to(img_dir).parent
        return lbl_dir / rel / self.file_names(self.split, self.name_of(image))[1]

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
                    f"{img_dir}. Splits on disk in {self.root}: {list(self._splits_on_disk())}."
                )
            images = self._list_images(img_dir)
            if not images:
                pattern = "*/" * self.depth + "*" + self.image_suffix_of(self.split)
                other = peek_files(img_dir)
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
        return image.name[: -len(self.image_suffix_of(self.split))]

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

    def masks(self, indices: Sequence[int]) -> torch.Tensor:
        """Return the (B, H, W) int64 trainId masks of samples ``indices``: exactly
        ``torch.stack([self[i]["mask"] for i in indices])``.

        With a deterministic transform (None, or one whose ``deterministic`` attribute is
        true) each label is read once per process while its file keeps its size and mtime
        and the transform its repr (:data:`MASKS`, shared by every data set object, kept as
        uint8); with a random transform every call reads again. Raises DatasetError on an
        unlabeled split.
        """
        if not self.labeled:
            raise DatasetError(
                f"{self.name} / {self.split} is an unlabeled split: it has no masks; use a "
                f"labeled split of {self.name} (one of {self._labeled_splits()})"
            )
        if not is_deterministic(self.transform):
            return torch.stack([self[i]["mask"] for i in indices])  # (B, H, W)
        out = []
        for i in indices:
            key = self._mask_key(i)
            mask = MASKS.get(key) if key is not None else None
            if mask is None:
                mask = self[i]["mask"].to(torch.uint8)  # (H, W)
                if key is not None:
                    MASKS.put(key, mask)
            out.append(mask)
        return torch.stack(out).long()  # (B, H, W)

    def _mask_key(self, index: int) -> tuple | None:
        """Return what decides sample ``index``'s mask under a deterministic transform: the
        data set's class, name and ``strict_labels`` and :func:`label_file_key` (None: read
        every time)."""
        key = label_file_key(self.files[index][1], self.transform)
        ident = (type(self).__qualname__, self.name, self.strict_labels)
        return None if key is None else (*ident, *key)

    def _labeled_splits(self) -> list[str]:
        """Return the split names of this data set that have labels."""
        return [s for s in self.splits if s not in self.unlabeled_splits]

    def check(self, progress: bool = False, indices: Iterable[int] | None = None) -> CheckSummary:
        """Read every file (or those of ``indices``); return a CheckSummary, or raise one
        DatasetError listing all problems.

        Problems: unreadable images or labels, a label of another size than its image,
        label values outside the label space (only with ``strict_labels``). A pair found
        sound is not read again in this process while its files keep their size and
        modification time (:data:`_CHECKED`): runs of several seeds check the same files.
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
            key = self._check_key(image_path, label_path)
            hit = _CHECKED.get(key) if key is not None else None
            if hit is None:
                before = len(problems)
                size, trainids = self._check_pair(image_path, label_path, problems)
                counts = None
                if trainids is not None:
                    counts = np.bincount(trainids.ravel(), minlength=256)
                if key is not None and len(problems) == before:  # only a sound pair is kept
                    _CHECKED[key] = (size, counts)
            else:
                size, counts = hit
            if size is not None:
                sizes[size] += 1
            if counts is not None:
                pixels += counts
        if problems:
            listing = "".join(f"\n  - {p}" for p in problems)
            of = f"{checked} images"
            if checked != len(self.files):
                of = f"{checked} of its {len(self.files)} images"
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

    def _check_key(self, image_path: Path, label_path: Path | None) -> tuple | None:
        """Return what decides :meth:`_check_pair`'s outcome for a pair: the data set's class,
        name and ``strict_labels`` and each file's path, size and modification time (None
        when a file cannot be stat'ed: it is read, and its problem reported)."""
        try:
            stats = [
                (str(p), st.st_size, st.st_mtime_ns)
                for p in (image_path, label_path)
                if p is not None
                for st in (os.stat(p),)
            ]
        except OSError:
            return None
        return (type(self).__qualname__, self.name, self.strict_labels, label_path is None, *stats)

    def _check_pair(
        self, image_path: Path, label_path: Path | None, problems: list[str]
    ) -> tuple[tuple[int, int] | None, np.ndarray | None]:
        """Read one image and its label; append what is wrong to ``problems``. Return the
        image's (H, W) (None if unreadable) and its (H, W) trainIds (None if no label)."""
        image = None
        try:
            image = read_image(image_path)
        except DatasetError as e:
            problems.append(str(e))
        size = None if image is None else image.shape[:2]
        if label_path is None:
            return size, None
        try:
            ids = self._read_ids(label_path)
        except DatasetError as e:
            problems.append(str(e))
            return size, None
        if image is not None and ids.shape != image.shape[:2]:
            problems.append(
                f"label {label_path} is {ids.shape[1]}x{ids.shape[0]} (WxH) but its image "
                f"{image_path} is {image.shape[1]}x{image.shape[0]}"
            )
        trainids, problem = self._to_trainids(ids, label_path)
        if problem:
            problems.append(problem)
        return size, trainids

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name='{self.name}', split='{self.split}', "
            f"root='{self.root}', images={len(self.files)}, labeled={self.labeled})"
        )
