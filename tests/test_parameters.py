"""One rule for every parameter: each field of every configuration and each parameter of
every notebook has its declared type, and every number is finite and within the range
declared for it. The tests walk every field and every parameter (not a chosen list), so a
new numeric field or parameter without a range fails here."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest

from diffprompt.dg.config import TrainConfig, check_config, parse_overrides
from diffprompt.domain_gap import GapConfig
from diffprompt.parameters import (
    CONFIG_PARAMETERS,
    DG_PREFIX,
    NOTEBOOK_RANGES,
    PARAMETER_RANGES,
    check_parameters,
    notebook_parameters,
    parameter_ranges,
)
from diffprompt.paths import NOTEBOOKS
from diffprompt.preflight import ParameterError, check_values, parse_range
from diffprompt.probing import ProbeConfig
from diffprompt.settings import ranges, setting
from diffprompt.tta import TTAConfig

CONFIGS = (TrainConfig, TTAConfig, ProbeConfig, GapConfig)
NOTEBOOK_NAMES = sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.py"))
KINDS = {"int": int, "float": float, "bool": bool, "str": str, "list": list, "dict": dict}


def _base(hint):
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, __import__("types").UnionType):
        (hint,) = [a for a in args if a is not type(None)]
    return hint


def _numeric(hint) -> bool:
    base = _base(hint)
    if typing.get_origin(base) is tuple:
        return all(a in (int, float) for a in typing.get_args(base) if a is not Ellipsis)
    return base in (int, float)


def _integer(hint) -> bool:
    base = _base(hint)
    if typing.get_origin(base) is tuple:
        return all(a is int for a in typing.get_args(base) if a is not Ellipsis)
    return base is int


def _outside(spec: str, integer: bool) -> list:
    """Values just outside the range, on each finite side."""
    r = parse_range(spec)
    step = 1 if integer else 1e-6
    out = []
    if r.lo > -math.inf:
        out.append(r.lo - step if r.lo_closed else r.lo)
    if r.hi < math.inf:
        out.append(r.hi + step if r.hi_closed else r.hi)
    return [int(v) if integer else float(v) for v in out]


def _inside(spec: str, integer: bool):
    r = parse_range(spec)
    v = r.lo if r.lo_closed else r.lo + 1
    return int(v) if integer else float(v)


def _shaped(hint, default, item):
    """Return ``item`` as a value of the field's shape: itself, or a tuple holding it."""
    base = _base(hint)
    if typing.get_origin(base) is not tuple:
        return item
    if default is not None:
        return (item, *default[1:])
    args = typing.get_args(base)
    return (item,) if args[-1] is Ellipsis else (item,) * len(args)


FIELDS = [(cls, f) for cls in CONFIGS for f in dataclasses.fields(cls)]
HINTS = {cls: typing.get_type_hints(cls) for cls in CONFIGS}


def _ids(item):
    cls, f = item
    return f"{cls.__name__}.{f.name}"


def test_every_range_names_a_field_and_parses():
    for cls in CONFIGS:
        for name, spec in ranges(cls).items():
            parse_range(spec)
            assert _numeric(HINTS[cls][name]), f"{cls.__name__}.{name} is no number"
    for spec in PARAMETER_RANGES.values():
        parse_range(spec)
    for cls in CONFIGS:
        check_values(cls())  # every default is accepted
    check_config(TrainConfig())


@pytest.mark.parametrize("item", FIELDS, ids=[_ids(i) for i in FIELDS])
def test_every_config_field_has_its_type_and_range(item):
    cls, f = item
    hint = HINTS[cls][f.name]
    default = getattr(cls(), f.name)

    def rejected(value, *also: str):
        with pytest.raises(ValueError) as e:
            check_values(dataclasses.replace(cls(), **{f.name: value}))
        msg = str(e.value)
        assert msg.startswith(f"{f.name} must be") and all(a in msg for a in also), msg

    rejected(object())  # a value of another type
    if _base(hint) is bool:
        rejected(1)
        rejected("yes")
    if _base(hint) is int:
        rejected(True)
        rejected(1.5)
    if not _numeric(hint):
        assert f.name not in ranges(cls)
        return
    assert f.name in ranges(cls), f"{cls.__name__}.{f.name} is a number without a range"
    spec = ranges(cls)[f.name]
    integer = _integer(hint)
    for bad in _outside(spec, integer):
        item_value = _shaped(hint, default, bad)
        rejected(item_value, parse_range(spec).bounds, repr(item_value))
    if not integer:
        for bad in (math.nan, math.inf, -math.inf):
            rejected(_shaped(hint, default, bad), "not a finite number")
    check_values(
        dataclasses.replace(cls(), **{f.name: _shaped(hint, default, _inside(spec, integer))})
    )


BOOL_FIELDS = [f.name for f in dataclasses.fields(TrainConfig) if f.type == "bool"]


@pytest.mark.parametrize("name", BOOL_FIELDS)
def test_command_line_booleans_take_true_false_1_0_only(name):
    for word, value in [("true", True), ("True", True), ("1", True)] + [
        ("false", False),
        ("False", False),
        ("0", False),
    ]:
        assert parse_overrides([f"{name}={word}"]) == {name: value}
    for word in ("yes", "maybe", "on", ""):
        with pytest.raises(ValueError, match=f"{name} must be true or false, got {word!r}"):
            parse_overrides([f"{name}={word}"])


def test_command_line_rejects_non_finite_and_out_of_range_numbers():
    for item, match in [
        ("lr=nan", "lr must be a positive number, got nan"),
        ("lr=inf", "lr must be a positive number, got inf"),
        ("dropout=1", r"dropout must be a number in \[0, 1\), got 1.0"),
        ("scale_range=0.5,nan", "scale_range must be a positive number"),
        ("warmup=-1", "warmup must be a non-negative integer, got -1"),
    ]:
        with pytest.raises(ValueError, match=match):
            check_config(TrainConfig(**parse_overrides([item])))


PARAMETERS = [
    (nb, name, kind, default)
    for nb in NOTEBOOK_NAMES
    for name, (kind, default) in notebook_parameters(nb).items()
]


def _namespace(nb: str, **over) -> dict:
    params = notebook_parameters(nb)
    ns = {k: v for k, (_, v) in params.items()}
    ns["__annotations__"] = {k: KINDS[t] for k, (t, _) in params.items()}
    return {**ns, **over}


def _numeric_parameter(kind: str, default) -> bool:
    if kind in ("int", "float"):
        return True
    return kind == "list" and any(
        isinstance(v, int | float) and not isinstance(v, bool) for v in default
    )


@pytest.mark.parametrize("nb", NOTEBOOK_NAMES)
def test_notebook_defaults_pass_the_check(nb):
    check_parameters(_namespace(nb))


@pytest.mark.parametrize("param", PARAMETERS, ids=[f"{nb}.{name}" for nb, name, *_ in PARAMETERS])
def test_every_notebook_parameter_has_its_type_and_range(param):
    nb, name, kind, default = param

    def rejected(value, *also: str):
        with pytest.raises(ParameterError) as e:
            check_parameters(_namespace(nb, **{name: value}))
        msg = str(e.value)
        assert f"parameter {name!r} must be" in msg or f"parameter {name} must be" in msg, msg
        assert all(a in msg for a in also), msg

    wrong = {"str": 5, "int": "abc", "float": "fast", "bool": "yes", "list": "x", "dict": "x"}
    rejected(wrong[kind])
    if not _numeric_parameter(kind, default):
        assert name not in PARAMETER_RANGES or kind == "list", name
        return
    assert name in PARAMETER_RANGES, f"notebook {nb}: numeric parameter {name} has no range"
    spec = PARAMETER_RANGES[name]
    r = parse_range(spec)
    integer = kind == "int" or r.kind is int
    as_value = (lambda v: [v]) if kind == "list" else (lambda v: v)
    for bad in _outside(spec, integer):
        rejected(as_value(bad), r.bounds)
    for bad in (math.nan, math.inf):
        rejected(as_value(bad))
    check_parameters(_namespace(nb, **{name: as_value(_inside(spec, integer))}))


def test_a_parameter_that_sets_a_field_takes_its_declared_range():
    for cls, prefix in CONFIG_PARAMETERS:
        for field, spec in ranges(cls).items():
            got = parse_range(PARAMETER_RANGES[prefix + field])
            assert got.bounds == parse_range(spec).bounds, (cls.__name__, prefix, field)
    assert PARAMETER_RANGES["dg_steps"] == PARAMETER_RANGES["steps"] == ">= 1"
    assert PARAMETER_RANGES["timesteps"] == "int [0, 1000)"  # a list: its items' type first
    assert PARAMETER_RANGES["gap_input_scale"] == "> 0"


def test_a_range_is_declared_once():
    @dataclasses.dataclass
    class Other:
        steps: int = setting(5, "steps", range=">= 0")

    with pytest.raises(ValueError, match="parameter 'steps' has two ranges"):
        parameter_ranges([(TrainConfig, ""), (Other, "")], {})
    with pytest.raises(ValueError, match="remove it from NOTEBOOK_RANGES"):
        parameter_ranges([(TrainConfig, "")], {"lr": "> 0"})
    assert set(NOTEBOOK_RANGES) <= set(PARAMETER_RANGES)


def test_notebook_03s_dg_parameters_each_set_a_dg_field():
    dg = [n for n in notebook_parameters("03_tta") if n.startswith(DG_PREFIX)]
    about_the_run = {"dg_missing", "dg_checkpoint"}  # how the DG model is found, not trained
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert {n.removeprefix(DG_PREFIX) for n in dg if n not in about_the_run} <= fields
    assert "dg_steps" in dg and "dg_prompt_mode" in dg
