"""One class per real data set, each reading its official on-disk layout.

GTA5 and SYNTHIA (synthetic sources); Cityscapes, BDD100K and Mapillary Vistas (real
sources and targets); ACDC (fog, night, rain, snow) and Dark Zurich (night targets). Each
class says, as data, where a split's images and labels are (``split_folders``), their
suffixes, which splits are unlabeled and how raw label ids map to trainIds; the shared
opening, reading and checking is ``diffprompt.data.base.SegDataset``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import ClassVar

import numpy as np

from diffprompt import labels
from diffprompt.data.base import SegDataset, Transform
from diffprompt.data.files import (
    DatasetError,
    DatasetNotFoundError,
    env_var,
    find_dirs,
    read_label_synthia,
)
from diffprompt.io import did_you_mean

#: The four ACDC adverse conditions.
ACDC_CONDITIONS: tuple[str, ...] = ("fog", "night", "rain", "snow")


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
    #: The optional split file and its key (1-based image numbers) of each split.
    split_file: ClassVar[str] = "split.mat"
    split_keys: ClassVar[dict[str, str]] = {"train": "trainIds", "val": "valIds", "test": "testIds"}

    @classmethod
    def split_folders(cls, split: str) -> list[tuple[str, str]]:
        """Return [("images", "labels")]: every split lists its images in the same folders."""
        return [("images", "labels")]

    @classmethod
    def name_of_number(cls, number: int) -> str:
        """Return the sample name of image number ``number`` (1-based), e.g. "00001"."""
        return f"{int(number):05d}"

    def _split_exists(self, split: str) -> bool:
        ok = (self.root / "images").is_dir()
        return ok and (split == "all" or (self.root / self.split_file).is_file())

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
        mat = self.root / self.split_file
        if not mat.is_file():
            raise DatasetNotFoundError(
                f"split '{self.split}' of gta5 is defined by {mat}, which does not exist "
                f"(download split.mat from the GTA5 site). Splits on disk: "
                f"{list(self._splits_on_disk())}; 'all' is the usual DG protocol."
            )
        import scipy.io  # only needed for the optional split file

        try:
            numbers = scipy.io.loadmat(str(mat))[self.split_keys[self.split]].ravel()
        except Exception as e:
            raise DatasetError(
                f"cannot read {mat} (expected keys trainIds, valIds, testIds): {e}"
            ) from e
        names = [self.name_of_number(n) for n in numbers]
        images = [img_dir / self.file_names(self.split, name)[0] for name in names]
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

    @classmethod
    def split_folders(cls, split: str) -> list[tuple[str, str]]:
        """Return [("RGB", "GT/LABELS")] (SYNTHIA has one split)."""
        return [("RGB", "GT/LABELS")]

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

    @classmethod
    def split_folders(cls, split: str) -> list[tuple[str, str]]:
        """Return [("leftImg8bit/<split>", "gtFine/<split>")]; images lie in city folders."""
        return [(f"leftImg8bit/{split}", f"gtFine/{split}")]

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

    @classmethod
    def split_folders(cls, split: str) -> list[tuple[str, str]]:
        """Return [("images/10k/<split>", "labels/sem_seg/masks/<split>")]."""
        return [(f"images/10k/{split}", f"labels/sem_seg/masks/{split}")]

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
    #: The folder of each split.
    split_dirnames: ClassVar[dict[str, str]] = {
        "train": "training",
        "val": "validation",
        "test": "testing",
    }
    #: Class-name files, the first one found wins (v2.0 download, v1.2 download).
    config_files: ClassVar[tuple[str, ...]] = ("config_v1.2.json", "config.json")

    @classmethod
    def split_folders(cls, split: str) -> list[tuple[str, str]]:
        """Return [("<folder>/images", "<folder>/v1.2/labels")], e.g. folder "training"
        for "train" (the v2.0 download; ``_split_dirs`` also finds the v1.2 download)."""
        top = cls.split_dirnames[split]
        return [(f"{top}/images", f"{top}/v1.2/labels")]

    def _split_dirs(self, split: str) -> list[tuple[Path, Path]]:
        [(img_dir, label_dir)] = super()._split_dirs(split)
        v12_download = img_dir.parent / "labels"  # the v1.2 download: no v1.2/ level
        if not label_dir.is_dir() and v12_download.is_dir():
            label_dir = v12_download
        return [(img_dir, label_dir)]

    def _check_layout(self) -> None:
        if not any((self.root / f).is_dir() for f in self.split_dirnames.values()):
            hints = [
                f"found {d}/training: move its contents up or set {env_var(self.domain)}={d}"
                for d in find_dirs(self.root, "training")
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
        for cfg in (self.root / f for f in self.config_files):
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
    ref_image_suffix: ClassVar[str] = "_rgb_ref_anon.png"  # the *_ref splits
    label_suffix = "_gt_labelTrainIds.png"
    wrong_label_suffixes = ("_gt_labelIds.png", "_gt_labelColor.png")
    depth = 1
    markers = ("rgb_anon",)

    def __init__(
        self,
        split: str | None = None,
        root: str | os.PathLike | None = None,
        transform: Transform | None = None,
        strict_labels: bool = True,
        conditions: tuple[str, ...] = ACDC_CONDITIONS,
    ):
        super().__init__(split, root, transform, strict_labels, conditions=conditions)

    def _configure(self, conditions: tuple[str, ...] | str = ACDC_CONDITIONS) -> None:
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

    @classmethod
    def split_folders(
        cls, split: str, conditions: tuple[str, ...] = ACDC_CONDITIONS
    ) -> list[tuple[str, str]]:
        """Return [("rgb_anon/<condition>/<split>", "gt/<condition>/<split>")], one pair
        per condition; images lie in sequence folders."""
        return [(f"rgb_anon/{c}/{split}", f"gt/{c}/{split}") for c in conditions]

    @classmethod
    def image_suffix_of(cls, split: str) -> str:
        """Return "_rgb_ref_anon.png" for the reference splits, else "_rgb_anon.png"."""
        return cls.ref_image_suffix if split.endswith("_ref") else cls.image_suffix

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

    def _split_dirs(self, split: str) -> list[tuple[Path, Path]]:
        folders = self.split_folders(split, self.conditions)
        return [(self.root / img, self.root / lbl) for img, lbl in folders]

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

    @classmethod
    def split_folders(cls, split: str) -> list[tuple[str, str]]:
        """Return [("rgb_anon/<split>/night", "gt/<split>/night")] (night images only)."""
        return [(f"rgb_anon/{split}/night", f"gt/{split}/night")]
