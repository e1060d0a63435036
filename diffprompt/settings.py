"""The settings of a configuration, each declared once.

A configuration (:class:`diffprompt.dg.TrainConfig`, :class:`diffprompt.tta.TTAConfig`, ...)
is a dataclass whose fields are declared with :func:`setting`: the default, one line of help,
the range of a number, the values a choice allows, and whether the field decides the trained
model. Everything else is read from those declarations:

- :func:`ranges` and :func:`choices`, which :func:`diffprompt.preflight.check_values` checks;
- :func:`hashed_names`, the fields a configuration hash covers;
- :func:`as_declared`, which turns the lists papermill and JSON give into declared tuples;
- :func:`describe`, one line per field for a command line's help.

>>> @dataclass
... class Recipe:
...     steps: int = setting(100, "optimizer steps", range=">= 1")
...     device: str = setting("auto", "where to run", hashed=False)
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Collection
from typing import Any

#: ``hashed=`` values: the field is hashed always (True), never (False), or only where its
#: value differs from its default (:data:`IF_SET`: a field added after runs existed, so
#: that their configurations keep their hashes).
IF_SET = "if set"


@dataclasses.dataclass(frozen=True)
class Setting:
    """What :func:`setting` declares of a field (kept in its metadata)."""

    help: str = ""
    range: str | None = None  # "> 0", ">= 1", "[0, 1)" (each item of a tuple)
    choices: Collection | None = None  # the values allowed (each item of a tuple)
    hashed: bool | str = True  # True, False or IF_SET


def setting(
    default: Any,
    help: str = "",
    *,
    range: str | None = None,
    choices: Collection | None = None,
    hashed: bool | str = True,
) -> Any:
    """Return a dataclass field with ``default`` that declares its help, the range of its
    numbers (:func:`diffprompt.preflight.parse_range`), the values it allows, and whether it
    decides the trained model (``hashed``: True, False or :data:`IF_SET`)."""
    if hashed not in (True, False, IF_SET):
        raise ValueError(f"hashed must be True, False or {IF_SET!r}, got {hashed!r}")
    meta = Setting(help, range, tuple(choices) if choices is not None else None, hashed)
    return dataclasses.field(default=default, metadata={"setting": meta})


def declared(field: dataclasses.Field) -> Setting:
    """Return the :class:`Setting` of a field (an empty one for a plain field)."""
    return field.metadata.get("setting", Setting())


def _settings(cls: type) -> dict[str, Setting]:
    return {f.name: declared(f) for f in dataclasses.fields(cls)}


def ranges(cls: type) -> dict[str, str]:
    """Return {field: range} of the fields of ``cls`` that declare a range."""
    return {name: s.range for name, s in _settings(cls).items() if s.range}


def choices(cls: type) -> dict[str, tuple]:
    """Return {field: allowed values} of the fields of ``cls`` that declare them."""
    return {name: s.choices for name, s in _settings(cls).items() if s.choices is not None}


def hashed_names(obj: Any) -> list[str]:
    """Return the fields of the configuration ``obj`` that its hash covers: those declared
    ``hashed=True``, and those declared :data:`IF_SET` whose value differs from the default."""
    out = []
    for f in dataclasses.fields(obj):
        rule = declared(f).hashed
        if rule is True or (rule == IF_SET and getattr(obj, f.name) != f.default):
            out.append(f.name)
    return out


def unhashed_names(cls: type) -> list[str]:
    """Return the fields of ``cls`` declared ``hashed=False`` (they never change a model)."""
    return [name for name, s in _settings(cls).items() if s.hashed is False]


@functools.cache
def _tuple_fields(cls: type) -> tuple[str, ...]:
    hints = typing.get_type_hints(cls)
    out = []
    for name, hint in hints.items():
        options = typing.get_args(hint) if _is_union(hint) else (hint,)
        if any(typing.get_origin(h) is tuple for h in options):
            out.append(name)
    return tuple(out)


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def as_declared(obj: Any) -> None:
    """Turn the lists held by the tuple fields of ``obj`` into tuples, in place (papermill's
    ``-y 'crop: [64, 64]'`` and JSON give lists); call it from ``__post_init__``."""
    for name in _tuple_fields(type(obj)):
        value = getattr(obj, name)
        if isinstance(value, list):
            setattr(obj, name, tuple(value))


def describe(cls: type) -> list[str]:
    """Return one line per field of ``cls``: ``name=default`` then its range or choices and
    its help, and "(not hashed)" for a field that never changes a trained model."""
    lines = []
    for f in dataclasses.fields(cls):
        s = declared(f)
        default = f.default if f.default is not dataclasses.MISSING else "(required)"
        limits = f"range {s.range};" if s.range else ""
        limits = f"one of {' | '.join(map(str, s.choices))};" if s.choices else limits
        parts = [p for p in (limits, s.help) if p]
        if s.hashed is False:
            parts.append("(not hashed)")
        lines.append(f"{f.name}={default!r}  " + " ".join(parts))
    return lines
