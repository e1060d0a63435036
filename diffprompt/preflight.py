"""Checks that run before any work starts, so that bad input fails in seconds, not hours.

Every entry point (the notebooks, ``python -m diffprompt.dg``, :func:`~diffprompt.dg.
train_dg`, the TTA, probing and domain-gap runs) calls these before it loads
weights onto a device, computes a feature or writes a file:

- :func:`check_parameters`: a notebook's parameters have their declared types and no
  unknown name was passed (papermill's ``-p steps abc`` or a misspelt ``-p stepz 5``);
- :func:`check_fields`: numbers that must be positive or non-negative are;
- :func:`check_files`: the images and labels a run reads decode, match in size and hold
  known label values (all of them for splits up to ``ALL_FILES`` images, an evenly spread
  sample of ``SAMPLE_FILES`` beyond; ``python -m diffprompt.data check`` reads every file);
- :func:`check_crop`: a training crop fits the images;
- :func:`check_writable`: the results folder can be written.

docs/ERRORS.md lists every bad input the project recognises and the message it gives.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from diffprompt.data import DatasetError
from diffprompt.io import did_you_mean

#: Splits (as used by a run) up to this many images are read whole before a run.
ALL_FILES = 256
#: Larger ones: this many images, evenly spread from the first to the last, are read.
SAMPLE_FILES = 32


class ParameterError(ValueError):
    """A notebook parameter has the wrong type, or a parameter that does not exist was passed."""


class NotWritableError(PermissionError):
    """The results folder (or a folder a run writes to) cannot be written."""


# ---------------------------------------------------------------------------------------
# Notebook parameters
# ---------------------------------------------------------------------------------------

_TYPE_NAMES = {
    int: "an integer",
    float: "a number",
    bool: "True or False",
    str: "a string",
    list: "a list",
    dict: "a mapping",
}
_IPYTHON_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "open"})
_checked: set[int] = set()


def _example(name: str, kind: type) -> str:
    if kind in (list, dict):
        return f"-y '{name}: {'[]' if kind is list else '{}'}'"
    return {
        int: f"-p {name} 10",
        float: f"-p {name} 0.5",
        bool: f"-p {name} True",
        str: f"-p {name} NAME",
    }[kind]


def _fits(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is list:
        return isinstance(value, list | tuple)
    return isinstance(value, kind)


def check_parameters(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """Check a notebook's parameters; return {name: value}.

    ``namespace`` is the notebook's ``globals()`` after its parameters cell (each parameter
    declared ``name: type = default``, recorded in ``__annotations__``) and papermill's
    injected cell. Raises :class:`ParameterError` when a value does not have its declared
    type (papermill passes ``-p steps abc`` as the string "abc") or, on the first check of a
    namespace, when it holds a name that is no parameter (``-p stepz 5``: papermill only
    warns and runs the defaults).
    """
    ann = dict(namespace.get("__annotations__", {}))
    problems: list[str] = []
    values: dict[str, Any] = {}
    for name, kind in ann.items():
        if name not in namespace or kind not in _TYPE_NAMES:
            continue
        value = namespace[name]
        if not _fits(value, kind):
            problems.append(
                f"parameter {name!r} must be {_TYPE_NAMES[kind]} ({name}: "
                f"{kind.__name__}), got {type(value).__name__} {value!r}; pass e.g. "
                f"{_example(name, kind)}"
            )
        values[name] = float(value) if kind is float and _fits(value, float) else value
    if id(namespace) not in _checked:
        unknown = [
            k
            for k, v in namespace.items()
            if k not in ann
            and not k.startswith("_")
            and k not in _IPYTHON_NAMES
            and not callable(v)
            and type(v).__name__ != "module"
        ]
        if ann and unknown:
            for k in unknown:
                problems.append(
                    f"unknown parameter {k!r}: the notebook has no such parameter."
                    f"{did_you_mean(k, ann)} Its parameters: {', '.join(ann)}"
                )
    if problems:
        raise ParameterError("; ".join(problems))
    _checked.add(id(namespace))
    return values


# ---------------------------------------------------------------------------------------
# KEY=VALUE assignments of a configuration (the command lines)
# ---------------------------------------------------------------------------------------

TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")
_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _typed(text: str, kind: Any, name: str) -> Any:
    """Return ``text`` as a value of the annotation ``kind`` (bool, int, float, str, a
    tuple of them, optionally None); a ValueError names the field and what it takes."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        if text in ("None", "null") and type(None) in args:
            return None
        (kind,) = [a for a in args if a is not type(None)]
        args = typing.get_args(kind)
    if typing.get_origin(kind) is tuple:
        items = [t for t in text.split(",") if t]
        kinds = [args[0]] * len(items) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(kinds) != len(items):
            raise ValueError(f"{name} takes {len(kinds)} comma-separated values, got {text!r}")
        return tuple(_typed(t, k, name) for t, k in zip(items, kinds, strict=True))
    if kind is bool:
        if text.lower() in TRUE_WORDS + FALSE_WORDS:
            return text.lower() in TRUE_WORDS
    elif kind in (int, float, str):
        try:
            return kind(text)
        except ValueError:
            pass
    else:
        return json.loads(text)
    raise ValueError(f"{name} must be {_KIND_NAMES[kind]}, got {text!r}")


def parse_assignments(cls: type, items: Sequence[str]) -> dict[str, Any]:
    """Return the fields of the dataclass ``cls`` that ``KEY=VALUE`` strings set, each
    parsed as its declared type: booleans from true/false (also 1/0, yes/no, on/off, any
    case), numbers, strings, tuples as comma-separated items ("crop=512,512"), None or null
    for an optional field. Raises a ValueError naming an unknown field (with the closest
    name), a missing "=", or a value of the wrong type."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        if key not in names:
            raise ValueError(f"unknown {cls.__name__} field {key!r}.{did_you_mean(key, names)}")
        out[key] = _typed(value, hints[key], key)
    return out


# ---------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------


def check_fields(
    obj: Any,
    positive_int: Iterable[str] = (),
    nonneg_int: Iterable[str] = (),
    positive: Iterable[str] = (),
    nonneg: Iterable[str] = (),
    what: str = "",
) -> None:
    """Raise a ValueError naming the first field of ``obj`` (a dataclass or any object) that
    is not a positive integer, a non-negative integer, a positive or a non-negative number
    as the lists say."""
    pre = f"{what}: " if what else ""

    def num(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

    for name in positive_int:
        v = getattr(obj, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{pre}{name} must be a positive integer, got {v!r}")
    for name in nonneg_int:
        v = getattr(obj, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{pre}{name} must be a non-negative integer, got {v!r}")
    for name in positive:
        v = getattr(obj, name)
        if not num(v) or v <= 0:
            raise ValueError(f"{pre}{name} must be a positive number, got {v!r}")
    for name in nonneg:
        v = getattr(obj, name)
        if not num(v) or v < 0:
            raise ValueError(f"{pre}{name} must be a non-negative number, got {v!r}")


# ---------------------------------------------------------------------------------------
# Files of a data set
# ---------------------------------------------------------------------------------------


def file_indices(n: int, used: Sequence[int] | None = None) -> list[int]:
    """Return the indices :func:`check_files` reads: every one of ``used`` (default
    ``range(n)``) when there are at most ``ALL_FILES``, else ``SAMPLE_FILES`` of them evenly
    spread, the first and the last included."""
    idx = list(range(n)) if used is None else list(used)
    if len(idx) <= ALL_FILES:
        return idx
    k = SAMPLE_FILES
    return sorted({idx[round(i * (len(idx) - 1) / (k - 1))] for i in range(k)})


def check_files(dataset, used: Sequence[int] | None = None):
    """Read the images and labels of ``dataset`` a run will use (see :func:`file_indices`);
    return the data set's CheckSummary over them, or raise one DatasetError that lists
    every problem (unreadable file, label of another size, label values outside the
    mapping) and says what to do. A ``torch.utils.data.Subset`` is checked on the images
    it selects."""
    while hasattr(dataset, "dataset") and hasattr(dataset, "indices"):  # a (nested) Subset
        sel = list(dataset.indices)
        used = [sel[i] for i in (range(len(sel)) if used is None else used)]
        dataset = dataset.dataset
    if len(dataset) == 0 or (used is not None and len(used) == 0):
        raise DatasetError(
            f"{dataset.name} / {dataset.split} at {dataset.root} has no images "
            "to use: check the split and the image limits (max_*_images, n_*)"
        )
    return dataset.check(indices=file_indices(len(dataset), used))


def check_crop(
    crop: Sequence[int] | None,
    sizes: Iterable[tuple[int, int]],
    train_size: Sequence[int] | None = None,
    what: str = "source images",
) -> None:
    """Raise a ValueError when a training ``crop`` (h, w) is larger than the images it is
    cut from: ``train_size`` when images are resized, else the smallest of ``sizes``."""
    if crop is None:
        return
    ch, cw = int(crop[0]), int(crop[1])
    if train_size is not None:
        h, w = int(train_size[0]), int(train_size[1])
        src = f"train_size {h}x{w}"
    else:
        sizes = list(sizes)
        if not sizes:
            return
        h, w = min(s[0] for s in sizes), min(s[1] for s in sizes)
        src = f"the {what} ({h}x{w} at the smallest)"
    if ch > h or cw > w:
        raise ValueError(
            f"crop {ch}x{cw} (HxW) is larger than {src}: use a crop of at most "
            f"{h}x{w}, e.g. crop=({min(ch, h)}, {min(cw, w)}), or crop=None for "
            "whole images (the embedded miniature's images are 128x256)"
        )


# ---------------------------------------------------------------------------------------
# Folders a run writes to
# ---------------------------------------------------------------------------------------


def check_writable(folder: str | os.PathLike, what: str = "results folder") -> Path:
    """Return ``folder`` as a Path if files can be created in it (or, when it does not exist
    yet, in its nearest existing parent folder); else raise :class:`NotWritableError` that
    says what to do. Probes with a temporary file that is removed at once; creates nothing."""
    folder = Path(folder).expanduser()
    probe_dir = folder
    while not probe_dir.exists():
        if probe_dir.parent == probe_dir:
            break
        probe_dir = probe_dir.parent
    how = (
        "make it writable (e.g. chmod u+w), or pass results_dir= (notebooks) / --results "
        "(command line) or set DIFFPROMPT_RESULTS to a folder you can write"
    )
    if not probe_dir.is_dir():
        raise NotWritableError(
            f"the {what} {folder} cannot be created: {probe_dir} is not a folder; {how}"
        )
    try:
        fd, tmp = tempfile.mkstemp(prefix=".diffprompt-write-probe-", dir=probe_dir)
    except OSError as e:
        where = (
            "" if probe_dir == folder else f" (its parent {probe_dir} does not let it be created)"
        )
        raise NotWritableError(
            f"the {what} {folder} is not writable{where}: {e.strerror or e}; {how}"
        ) from None
    os.close(fd)
    os.unlink(tmp)
    return folder
