"""Checks that run before any work starts, so that bad input fails in seconds, not hours.

Every entry point (the notebooks, ``python -m diffprompt.dg``, :func:`~diffprompt.dg.
train_dg`, the TTA, probing and domain-gap runs) calls these before it loads
weights onto a device, computes a feature or writes a file:

- :func:`check_values`: one rule for every field of a configuration (TrainConfig, TTAConfig,
  ProbeConfig, GapConfig): it has its declared type (an int is no bool, a float takes an
  int, tuples element-wise, None where Optional), no number is NaN or infinite, every
  number lies in the range its field declares (:func:`diffprompt.settings.setting`:
  ``range="> 0"``) and a choice is one of those it declares;
- :func:`check_namespace`: the same rule for a notebook's parameters (their declared types,
  the ranges of :data:`diffprompt.parameters.PARAMETER_RANGES`), and no unknown name was
  passed (papermill's ``-p steps abc`` or a misspelt ``-p stepz 5``);
- :func:`parse_assignments`: ``KEY=VALUE`` command lines, each value as its field's type;
- :func:`check_files`: the images and labels a run reads decode, match in size and hold
  known label values (all of them for splits up to ``ALL_FILES`` images, an evenly spread
  sample of ``SAMPLE_FILES`` beyond; ``python -m diffprompt.data check`` reads every file);
- :func:`check_crop`: a training crop fits the images;
- :func:`check_writable`: the results folder can be written.

docs/ERRORS.md lists every bad input the project recognises and the message it gives.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import operator
import os
import re
import tempfile
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from diffprompt import settings
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
# Types
# ---------------------------------------------------------------------------------------

_TYPE_NAMES = {
    int: "an integer",
    float: "a number",
    bool: "True or False",
    str: "a string",
    list: "a list",
    dict: "a mapping",
}


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


# ---------------------------------------------------------------------------------------
# Ranges and the one rule for values
# ---------------------------------------------------------------------------------------

_RANGE = re.compile(
    r"^\s*(?:(int|float)\s+)?(?:(>=|>|<=|<)\s*(\S+)|([\[(])\s*([^,\s]+)\s*,\s*([^\])\s]+)\s*([\])]))\s*$"
)


@dataclasses.dataclass(frozen=True)
class Range:
    """A documented range of a number, written as ``spec``: ``"> 0"``, ``">= 1"``, ``"<= 1"``,
    ``"[0, 1)"`` (closed ``[ ]``, open ``( )``); for a list parameter optionally led by the
    type of its items, ``"int >= 0"``. Parse one with :func:`parse_range`."""

    spec: str
    lo: float = -math.inf
    lo_closed: bool = False
    hi: float = math.inf
    hi_closed: bool = False
    kind: type | None = None  # the items' type (list parameters), None: from the annotation

    def __contains__(self, v: float) -> bool:
        above = v >= self.lo if self.lo_closed else v > self.lo
        below = v <= self.hi if self.hi_closed else v < self.hi
        return above and below

    @property
    def bounds(self) -> str:
        """The range without the items' type: ``"> 0"``, ``"[0, 1)"``."""
        return re.sub(r"^\s*(int|float)\s+", "", self.spec).strip()

    def phrase(self, integer: bool) -> str:
        """Return e.g. "a positive integer", "a non-negative number", "a number in [0, 1)"."""
        noun = "integer" if integer else "number"
        if self.hi == math.inf and (self.lo, self.lo_closed) in ((0, False), (1, integer)):
            return f"a positive {noun}"
        if self.hi == math.inf and (self.lo, self.lo_closed) == (0, True):
            return f"a non-negative {noun}"
        b = self.bounds
        return f"{'an' if integer else 'a'} {noun} {'in ' if b[0] in '[(' else ''}{b}"


def parse_range(spec: str) -> Range:
    """Return the :class:`Range` of ``spec``; a ValueError for text that is none."""
    m = _RANGE.match(spec)
    if not m:
        raise ValueError(f"not a range: {spec!r} (write e.g. '> 0', '>= 1' or '[0, 1)')")
    kind = {"int": int, "float": float, None: None}[m.group(1)]
    if m.group(2):
        op, v = m.group(2), float(m.group(3))
        if op.startswith(">"):
            return Range(spec, lo=v, lo_closed=op == ">=", kind=kind)
        return Range(spec, hi=v, hi_closed=op == "<=", kind=kind)
    lo, hi = float(m.group(5)), float(m.group(6))
    return Range(spec, lo, m.group(4) == "[", hi, m.group(7) == "]", kind)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _unoptional(hint: Any) -> tuple[Any, bool]:
    """Return (the annotation without None, whether None is allowed)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return (args[0] if len(args) == 1 else functools.reduce(operator.or_, args)), True
    return hint, False


def _items(hint: Any, value: Any) -> list[tuple[Any, Any]] | None:
    """Return [(item annotation, item)] of a tuple annotation, None when ``value`` has not
    its shape (not a tuple, or another length)."""
    args = typing.get_args(hint)
    if not isinstance(value, tuple):
        return None
    if len(args) == 2 and args[1] is Ellipsis:
        return [(args[0], v) for v in value]
    if args and len(args) != len(value):
        return None
    return list(zip(args or [Any] * len(value), value, strict=True))


def _fits_hint(value: Any, hint: Any) -> bool:
    hint, optional = _unoptional(hint)
    if value is None:
        return optional
    if typing.get_origin(hint) is tuple:
        items = _items(hint, value)
        return items is not None and all(_fits_hint(v, h) for h, v in items)
    if hint is Any:
        return True
    return _fits(value, hint) if hint in _TYPE_NAMES else isinstance(value, hint)


def _hint_phrase(hint: Any) -> str:
    hint, optional = _unoptional(hint)
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            text = f"a tuple of {_hint_phrase(args[0]).split(' ', 1)[1]}s"
        else:
            text = f"a tuple of {len(args)} {_hint_phrase(args[0]).split(' ', 1)[1]}s"
    else:
        text = _TYPE_NAMES.get(hint, getattr(hint, "__name__", str(hint)))
    return f"{text} or None" if optional else text


def _numbers(value: Any) -> list[Any]:
    """The numbers ``value`` holds: itself, or the items of a tuple or list."""
    if _is_number(value):
        return [value]
    if isinstance(value, list | tuple):
        return [v for v in value if _is_number(v)]
    return []


def wanted(hint: Any, spec: str | None) -> str:
    """Return what a field takes, for a message: "a value > 0", "values in [0, 1)" (a tuple
    or list), or the type ("True or False") when it has no range."""
    if not spec:
        return _hint_phrase(hint)
    bounds = parse_range(spec).bounds
    base, _ = _unoptional(hint)
    many = typing.get_origin(base) is tuple or base is list
    return f"{'values' if many else 'a value'} {'in ' if bounds[0] in '[(' else ''}{bounds}"


def value_problem(
    name: str, value: Any, hint: Any, spec: str | None, shown: str | None = None
) -> str | None:
    """Return what is wrong with the value of field ``name`` ("must be ..., got ..."), or
    None: its type against the annotation ``hint`` (bool, int, float, str, list, dict, a
    tuple of them, Optional), NaN or infinity in any number (also inside tuples and lists),
    and the range ``spec`` for each number. ``shown``: the annotation as written."""
    if not _fits_hint(value, hint):
        shown = shown or getattr(hint, "__name__", None) or str(hint)
        return (
            f"{name} must be {_hint_phrase(hint)} ({name}: {shown}), got "
            f"{type(value).__name__} {value!r}"
        )
    rng = parse_range(spec) if spec else None
    base, _ = _unoptional(hint)
    integer = base is int or (rng is not None and rng.kind is int)
    if typing.get_origin(base) is tuple:
        integer = all(h is int for h in typing.get_args(base) if h is not Ellipsis)
    many = not _is_number(value)
    if many and rng is not None and rng.kind is not None and isinstance(value, list):
        if not all(_is_number(v) and _fits(v, rng.kind) for v in value):
            return (
                f"{name} must be a list of {_TYPE_NAMES[rng.kind].split(' ', 1)[1]}s, got {value!r}"
            )
    nums = _numbers(value)
    each = " (each value)" if many else ""
    if any(not math.isfinite(v) for v in nums):
        want = rng.phrase(integer) if rng else "a finite number"
        return f"{name} must be {want}{each}, got {value!r} (not a finite number)"
    if rng is not None and any(v not in rng for v in nums):
        return f"{name} must be {rng.phrase(integer)}{each}, got {value!r}"
    return None


def check_values(obj: Any, what: str = "") -> None:
    """The one rule for a configuration: raise a ValueError listing every field of the
    dataclass ``obj`` whose value has not its declared type, is NaN or infinite, lies outside
    its declared range (:func:`diffprompt.settings.setting`, see :class:`Range`) or is not
    one of its declared choices; each names the field, the value and what to set."""
    cls = type(obj)
    ranges, allowed = settings.ranges(cls), settings.choices(cls)
    hints = typing.get_type_hints(cls)
    problems = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        spec, shown = ranges.get(f.name), f.type if isinstance(f.type, str) else None
        problem = value_problem(f.name, value, hints[f.name], spec, shown)
        if problem:
            default = f.default if f.default is not dataclasses.MISSING else None
            want = wanted(hints[f.name], spec)
            problems.append(f"{problem}: set {f.name} to {want} (default {default!r})")
        elif f.name in allowed:
            items = value if isinstance(value, tuple) else (value,)
            for item in items:
                if item not in allowed[f.name]:
                    hint = did_you_mean(item, allowed[f.name]) if isinstance(item, str) else ""
                    problems.append(
                        f"unknown {f.name} {item!r}; choose one of {allowed[f.name]}.{hint}"
                    )
    if problems:
        raise ValueError((f"{what}: " if what else "") + "; ".join(problems))


# ---------------------------------------------------------------------------------------
# Notebook parameters
# ---------------------------------------------------------------------------------------

_IPYTHON_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "open"})
_checked: set[int] = set()


def check_namespace(namespace: Mapping[str, Any], ranges: Mapping[str, str]) -> dict[str, Any]:
    """Check a notebook's parameters; return {name: value}.

    ``namespace`` is the notebook's ``globals()`` after its parameters cell (each parameter
    declared ``name: type = default``, recorded in ``__annotations__``) and papermill's
    injected cell. Raises :class:`ParameterError` when a value does not have its declared
    type (papermill passes ``-p steps abc`` as the string "abc"), is NaN or infinite, lies
    outside its range in ``ranges`` ({parameter: range}, each item of a list) or, on the
    first check of a namespace, when it holds a name that is no parameter (``-p stepz 5``:
    papermill only warns and runs the defaults). The notebooks call it through
    :func:`diffprompt.parameters.check_parameters`.
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
        elif problem := value_problem(name, value, kind, ranges.get(name)):
            want = wanted(kind, ranges.get(name))
            example = f"-p {name} VALUE" if kind in (int, float) else f"-y '{name}: [...]'"
            problems.append(f"parameter {problem}; pass {want} ({example})")
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

#: The words a boolean takes on a command line (any case); anything else is an error.
TRUE_WORDS = ("true", "1")
FALSE_WORDS = ("false", "0")
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
        raise ValueError(
            f"{name} must be true or false, got {text!r}: write {name}=true or {name}=false "
            "(also True/False, 1/0)"
        )
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
    parsed as its declared type: booleans from true/false (any case) or 1/0, numbers, strings, tuples as comma-separated items ("crop=512,512"), None or null
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
