"""Per-image captions as prompts (TADP's idea: condition the UNet on each image's own
caption instead of one scene prompt for all).

- Where a caption comes from (:class:`CaptionBook`), per image and in this order unless
  ``caption_source`` names one: the data set itself (the miniature writes a caption for every
  image, its ``captions.json`` sidecar), a captions file for real data
  (:func:`read_captions_file`: JSON ``{image name: caption}`` or a CSV with the columns
  ``name,caption``), or a captioner given by hub id or folder (BLIP or BLIP-2 through
  transformers, :class:`Captioner`; offline, a missing model is the same clear error as a
  missing Stable Diffusion model, and nothing is downloaded unless a hub id was asked for).
  A captioner's captions are computed once per image and kept on disk beside the feature
  cache.
- Its condition words (:data:`CONDITION_PHRASES`: time of day and weather) can be removed
  (:func:`strip_conditions`) or replaced (:func:`replace_conditions`), which is how a caption
  is randomized in training, as the paper randomizes its scene prompts.
- :class:`CaptionPrompt` is what a prompt mode passes where a scene text would go: one text
  per image, the caption of that image under a variant ("caption", "stripped",
  "replace:<phrase>").

Every image a run will caption is checked before any work (:meth:`CaptionBook.check`): a
missing caption is an error naming the image and the ways to provide one.
"""

from __future__ import annotations

import csv
import json
import re
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from diffprompt.backbones.hub import resolve_model_folder
from diffprompt.cache import image_identity
from diffprompt.data.files import DatasetError
from diffprompt.io import atomic_write_text, digest, module_checksum
from diffprompt.prompts import SCENE_VOCABULARY

#: Where a caption may come from: "auto" tries the data set, the captions file and the
#: captioner in that order for each image; the others use only the one named.
CAPTION_SOURCES = ("auto", "dataset", "file", "captioner")

#: The caption variants of :class:`CaptionPrompt` (besides "replace:<phrase>").
CAPTION_VARIANTS = ("caption", "stripped")

#: Condition phrases replacement draws from: the time of day and weather descriptors of the
#: scene vocabulary (which hold the miniature's "in daylight", "at night", "in fog", "in the
#: rain" and "in snow").
REPLACEMENTS: tuple[str, ...] = (*SCENE_VOCABULARY["time"], *SCENE_VOCABULARY["weather"])

#: Condition phrases found (and removed or replaced) in a caption, longest first: the
#: replacements and single words a captioner writes for them (ours).
CONDITION_PHRASES: tuple[str, ...] = tuple(
    sorted(
        {
            *REPLACEMENTS,
            "at nighttime",
            "during the day",
            "during the night",
            "on a rainy day",
            "on a snowy day",
            "on a foggy day",
            "nighttime",
            "foggy",
            "rainy",
            "snowy",
            "misty",
            "sunny",
            "overcast",
        },
        key=lambda p: (-len(p), p),
    )
)
_CONDITIONS = re.compile(
    r"\b(" + "|".join(re.escape(p) for p in CONDITION_PHRASES) + r")\b", re.IGNORECASE
)


class CaptionError(DatasetError):
    """An image has no caption where the run looks for one, or a captions file is invalid."""


def strip_conditions(caption: str) -> str:
    """Return ``caption`` without its condition phrases (:data:`CONDITION_PHRASES`), spaces
    and commas tidied: "a photo of a street scene at night showing road" -> "a photo of a
    street scene showing road"."""
    text = _CONDITIONS.sub(" ", caption)
    text = re.sub(r"\s+,", ",", re.sub(r"\s+", " ", text)).strip(" ,")
    return re.sub(r",\s*,", ",", text)


def replace_conditions(caption: str, phrase: str) -> str:
    """Return ``caption`` with its condition phrases replaced by ``phrase``: in place of the
    first one when that is a phrase of :data:`REPLACEMENTS` ("at night" -> "in fog"), the
    others removed; appended after a comma when the caption has none, or only adjectives
    ("foggy") that a phrase cannot stand in for."""
    match = _CONDITIONS.search(caption)
    lowered = {r.lower() for r in REPLACEMENTS}
    if match is None or match.group(0).lower() not in lowered:
        return f"{strip_conditions(caption).rstrip(' ,.')}, {phrase}"
    marker = "\0"
    text = strip_conditions(f"{caption[: match.start()]}{marker}{caption[match.end() :]}")
    return text.replace(marker, phrase)


def condition_phrase(caption: str) -> str | None:
    """Return the caption's first condition phrase when it is one of :data:`REPLACEMENTS`
    (the phrases :func:`replace_conditions` puts in its place), lower-cased; else None."""
    match = _CONDITIONS.search(caption)
    if match is None or match.group(0).lower() not in {r.lower() for r in REPLACEMENTS}:
        return None
    return match.group(0).lower()


def read_captions_file(path: str | Path) -> dict[str, str]:
    """Return ``{image name: caption}`` from a captions file: JSON ``{name: caption}`` (or
    ``{name: {"caption": ...}}``, the miniature's sidecar format) or CSV with a header row
    holding the columns ``name`` and ``caption``. The name is the image's file name without
    its extension, as the data set names it (``sample["name"]``). Raises CaptionError on a
    missing file, another format or an empty caption."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CaptionError(
            f"captions file {path} does not exist; pass a JSON file {{image name: caption}} or "
            "a CSV file with the columns name,caption"
        )
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"name", "caption"} <= set(reader.fieldnames):
                raise CaptionError(
                    f"captions file {path} needs a header row with the columns name and "
                    f"caption, got {reader.fieldnames}"
                )
            rows = [(r["name"], r["caption"]) for r in reader]
    else:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise CaptionError(f"cannot read captions file {path} as JSON: {e}") from e
        if not isinstance(data, dict):
            raise CaptionError(f"captions file {path} must hold a JSON object {{name: caption}}")
        rows = [(name, v.get("caption") if isinstance(v, dict) else v) for name, v in data.items()]
    out = {}
    for name, caption in rows:
        if not isinstance(caption, str) or not caption.strip():
            raise CaptionError(
                f"captions file {path}: the caption of {name!r} is empty or not text; give "
                "every image a caption or leave the image out"
            )
        out[str(name)] = caption.strip()
    return out


class Captioner:
    """An image captioner through transformers (BLIP or BLIP-2: a model that
    ``AutoModelForImageTextToText`` loads, with its processor), from a hub id or folder
    (:func:`diffprompt.backbones.hub.resolve_model_folder`: offline-safe); greedy decoding of
    at most ``max_new_tokens`` tokens, after ``prompt`` when one is given."""

    def __init__(
        self,
        name_or_path: str,
        device: torch.device | str = "cpu",
        max_new_tokens: int = 30,
        prompt: str = "",
    ) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        folder = resolve_model_folder(name_or_path, what="captioner", required=("config.json",))
        self.name, self.folder = str(name_or_path), folder
        self.processor = AutoProcessor.from_pretrained(folder)
        model = AutoModelForImageTextToText.from_pretrained(folder, use_safetensors=True)
        self.model = model.to(device).eval()
        self.device, self.max_new_tokens, self.prompt = device, max_new_tokens, prompt

    def identity(self) -> dict[str, Any]:
        """What decides its captions: the model's checksum and the decoding settings."""
        return {
            "captioner": module_checksum(self.model),
            "max_new_tokens": self.max_new_tokens,
            "prompt": self.prompt,
        }

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> list[str]:
        """Return one caption per image of ``images`` (B, 3, H, W) float in [0, 1]."""
        pixels = [img.permute(1, 2, 0).mul(255).round().byte().numpy() for img in images]
        kwargs: dict[str, Any] = {"images": pixels, "return_tensors": "pt"}
        if self.prompt:
            kwargs["text"] = [self.prompt] * len(pixels)
        inputs = self.processor(**kwargs).to(self.device)
        ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        texts = self.processor.batch_decode(ids, skip_special_tokens=True)
        return [t.strip() or "a photo" for t in texts]


class CaptionBook:
    """The captions of the images a run uses, each resolved once: from the data set (its
    sample's ``meta["caption"]``), a captions file (``captions_file``) or a captioner
    (``captioner``: hub id or folder), tried in that order with ``source="auto"``, or only
    the one ``source`` names. A captioner's captions are kept in ``folder`` (one JSON file
    per captioner and image, keyed as the feature cache keys images) and in memory."""

    def __init__(
        self,
        source: str = "auto",
        captions_file: str = "",
        captioner: str = "",
        folder: str | Path | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        if source not in CAPTION_SOURCES:
            raise CaptionError(f"caption_source must be one of {CAPTION_SOURCES}, got {source!r}")
        if source == "file" and not captions_file:
            raise CaptionError("caption_source='file' needs captions_file=PATH (JSON or CSV)")
        if source == "captioner" and not captioner:
            raise CaptionError("caption_source='captioner' needs captioner=HUB_ID_OR_FOLDER")
        self.source, self.captions_file, self.captioner_name = source, captions_file, captioner
        self.file = read_captions_file(captions_file) if captions_file else {}
        self.folder = Path(folder) if folder is not None else None
        self.device = device
        self._captioner: Captioner | None = None
        self._memo: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # data set -> {i: text}

    def identity(self) -> dict[str, Any]:
        """What decides the captions (recorded with a run)."""
        return {
            "source": self.source,
            "captions_file": self.captions_file,
            "captioner": self.captioner_name,
        }

    @property
    def captioner(self) -> Captioner:
        """The captioner, loaded on first use (a missing model raises ModelNotFoundError)."""
        if self._captioner is None:
            self._captioner = Captioner(self.captioner_name, self.device)
        return self._captioner

    def _from_dataset(self, dataset, index: int) -> str:
        return str(dataset.meta(index).get("caption") or "") if hasattr(dataset, "meta") else ""

    def _from_file(self, dataset, index: int) -> str:
        return self.file.get(dataset.name_of(dataset.files[index][0]), "") if self.file else ""

    def _order(self) -> tuple[str, ...]:
        return ("dataset", "file", "captioner") if self.source == "auto" else (self.source,)

    def _missing(self, dataset, index: int) -> CaptionError:
        name = dataset.name_of(dataset.files[index][0])
        given = {"dataset": True, "file": bool(self.file), "captioner": bool(self.captioner_name)}
        tried = ", ".join(s for s in self._order() if given[s]) or "nothing"
        return CaptionError(
            f"image {name!r} of {dataset.name} / {dataset.split} has no caption (looked in: "
            f"{tried}); give it one in a captions file (captions_file=PATH: JSON {{name: "
            "caption} or CSV name,caption) or pass a captioner (captioner=HUB_ID_OR_FOLDER, "
            "e.g. a BLIP checkpoint)"
        )

    def check(self, dataset, indices: Sequence[int]) -> None:
        """Raise CaptionError before any work if an image of ``indices`` has no caption the
        run could use (with a captioner in the order, load it: a missing model fails here)."""
        order = self._order()
        if "captioner" in order and self.captioner_name:
            self.captioner  # noqa: B018 (loads it, or raises ModelNotFoundError)
            return
        for i in indices:
            if not any(
                (self._from_dataset if s == "dataset" else self._from_file)(dataset, int(i))
                for s in order
                if s != "captioner"
            ):
                raise self._missing(dataset, int(i))

    def caption(self, dataset, index: int) -> str:
        """Return the caption of image ``index`` of ``dataset``."""
        known = self._memo.setdefault(dataset, {})
        if int(index) not in known:
            known[int(index)] = self._resolve(dataset, int(index))
        return known[int(index)]

    def _resolve(self, dataset, index: int) -> str:
        for source in self._order():
            if source == "dataset":
                text = self._from_dataset(dataset, index)
            elif source == "file":
                text = self._from_file(dataset, index)
            elif self.captioner_name:
                text = self._captioned(dataset, index)
            else:
                text = ""
            if text:
                return text
        raise self._missing(dataset, index)

    def _captioned(self, dataset, index: int) -> str:
        """The captioner's caption of one image, from disk when it was computed before."""
        cap = self.captioner
        path = None
        if self.folder is not None:
            sub = digest(cap.identity())
            path = self.folder / "captions" / sub / f"{digest(image_identity(dataset, index))}.json"
            if path.is_file():
                return json.loads(path.read_text())["caption"]
        text = cap(dataset[index]["image"][None])[0]
        if path is not None:
            atomic_write_text(path, json.dumps({"caption": text}))
        return text


class CaptionPrompt:
    """Per-image prompts: the caption of each image (:class:`CaptionBook`) under a
    ``variant``: "caption" (as it is), "stripped" (condition words removed) or
    "replace:<phrase>" (condition words replaced by the phrase). Passed where a scene text
    goes (the feature cache, the predictor, the trainer), it gives one text per image."""

    def __init__(self, book: CaptionBook, variant: str = "caption") -> None:
        if variant not in CAPTION_VARIANTS and not variant.startswith("replace:"):
            raise CaptionError(
                f"unknown caption variant {variant!r}; use one of {CAPTION_VARIANTS} or "
                "'replace:<phrase>'"
            )
        self.book, self.variant = book, variant

    def __repr__(self) -> str:
        return f"CaptionPrompt({self.variant!r})"

    def transform(self, caption: str) -> str:
        """Return ``caption`` under this variant."""
        if self.variant == "stripped":
            return strip_conditions(caption)
        if self.variant.startswith("replace:"):
            return replace_conditions(caption, self.variant.split(":", 1)[1])
        return caption

    def text(self, dataset, index: int) -> str:
        """The prompt of image ``index`` of ``dataset``."""
        return self.transform(self.book.caption(dataset, index))

    def texts(self, dataset, indices: Sequence[int]) -> list[str]:
        """The prompts of images ``indices`` of ``dataset``, in order."""
        return [self.text(dataset, int(i)) for i in indices]
