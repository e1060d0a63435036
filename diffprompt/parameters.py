"""Notebook parameters: their ranges, the check each notebook runs first, their defaults
(read from the notebooks) and the configurations they set.

A parameter named like a configuration field sets that field and takes its declared range
(:mod:`diffprompt.settings`): notebook 02's ``steps`` is ``TrainConfig.steps``, notebook
03's ``dg_steps`` too (:data:`DG_PREFIX`: the DG model's settings beside TTA's), notebook
00's ``gap_steps`` is ``GapConfig.steps``. Only the parameters that set no field declare a
range here (:data:`NOTEBOOK_RANGES`), once each.
"""

from __future__ import annotations

import ast
import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from diffprompt import settings
from diffprompt.dg.config import TrainConfig
from diffprompt.domain_gap import GapConfig
from diffprompt.paths import NOTEBOOKS
from diffprompt.preflight import check_namespace
from diffprompt.probing import ProbeConfig
from diffprompt.tta import TTAConfig

T = TypeVar("T")

#: Notebook 03 names a setting of the DG model it adapts ``dg_<field>`` (``dg_steps``, ...);
#: the run's context (:data:`SHARED`) keeps its name and sets every configuration.
DG_PREFIX = "dg_"
#: The parameters that set the same field of every configuration a notebook builds.
SHARED = ("source", "data_root", "model", "device")

#: Which configuration's fields a parameter sets, under which prefix.
CONFIG_PARAMETERS: tuple[tuple[type, str], ...] = (
    (TrainConfig, ""),
    (TrainConfig, DG_PREFIX),
    (TTAConfig, ""),
    (ProbeConfig, ""),
    (GapConfig, "gap_"),
)

#: The range of each numeric parameter that sets no configuration field, by notebook (list
#: parameters: the range of each item, led by the items' type).
NOTEBOOK_RANGES: dict[str, str] = {
    # several notebooks
    "seeds": "int >= 0",
    # 00_data
    "samples_per_domain": ">= 1",
    "freq_images": ">= 0",
    "gap_max_images": ">= 0",
    # 01_feature_probing
    "sweep_train": ">= 1",
    "supervised_steps": ">= 1",
    "supervised_batch": ">= 1",
    "noise_timesteps": "int [0, 1000)",
    "gap_images": ">= 1",
    # 02_dg_training
    "num_processes": ">= 1",
    # 04_prompt_ablations
    "ks": "int >= 1",
    "lambdas": "float >= 0",
    "vocab_sizes": "int >= 0",
    # 06_embedded_model
    "images": ">= 1",
    "probe_steps": ">= 1",
    "text_use_images": ">= 1",
    "sample_steps": ">= 1",
    "vae_steps": ">= 1",
    "unet_steps": ">= 1",
    "unet_stop": ">= 0",
    "unet_batch": ">= 1",
    "height": ">= 1",
    "width": ">= 1",
    "max_images": ">= 0",
    # 07_tta_budget
    "lrs": "float > 0",
    "points": "int >= 1",
}


def _item_type(hint: Any) -> str:
    """Return "int " or "float " for a tuple annotation of numbers ("" otherwise): the
    range of a list parameter is led by its items' type."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (hint,) = [a for a in args if a is not type(None)]
        args = typing.get_args(hint)
    if typing.get_origin(hint) is not tuple:
        return ""
    kinds = {a for a in args if a is not Ellipsis}
    return "int " if kinds == {int} else "float " if kinds == {float} else ""


def parameter_ranges(
    configs: Sequence[tuple[type, str]] = CONFIG_PARAMETERS,
    notebook_ranges: Mapping[str, str] = NOTEBOOK_RANGES,
) -> dict[str, str]:
    """Return {parameter: range} of every numeric notebook parameter: a configuration
    field's declared range under its parameter name (``configs``: (class, prefix)), then
    ``notebook_ranges``. A ValueError names a parameter two declarations give different
    ranges, or one declared both with a field and in ``notebook_ranges``."""
    out: dict[str, str] = {}
    where: dict[str, str] = {}
    for cls, prefix in configs:
        hints = typing.get_type_hints(cls)
        for field, spec in settings.ranges(cls).items():
            name, full = prefix + field, _item_type(hints[field]) + spec
            if name in out and out[name] != full:
                raise ValueError(
                    f"parameter {name!r} has two ranges: {out[name]!r} ({where[name]}) and "
                    f"{full!r} ({cls.__name__}.{field}); declare one range for both fields"
                )
            out[name], where[name] = full, f"{cls.__name__}.{field}"
    for name, spec in notebook_ranges.items():
        if name in out:
            raise ValueError(
                f"parameter {name!r} sets {where[name]}, whose declaration gives its range: "
                "remove it from NOTEBOOK_RANGES"
            )
        out[name] = spec
    return out


#: The range of every numeric notebook parameter, by name (the same in every notebook).
PARAMETER_RANGES = parameter_ranges()


def check_parameters(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """Check a notebook's parameters (its ``globals()`` after the parameters cell) against
    their declared types and :data:`PARAMETER_RANGES`, and that no unknown name was passed
    (:func:`diffprompt.preflight.check_namespace`); return {name: value}."""
    return check_namespace(namespace, PARAMETER_RANGES)


def config_of(cls: type[T], params: Mapping[str, Any], prefix: str = "", **values: Any) -> T:
    """Return the dataclass ``cls`` with every field that ``params`` (e.g. a notebook's
    parameters) names, as ``prefix + field``, set from it, and ``values`` on top; other
    parameters are ignored."""
    names = {f.name for f in dataclasses.fields(cls)}
    given = {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}
    return cls(**{**{k: v for k, v in given.items() if k in names}, **values})


def notebook_parameters(name: str, folder: str | Path = NOTEBOOKS) -> dict[str, tuple[str, Any]]:
    """Return {parameter: (its declared type's name, its default)} of notebook ``name`` (e.g.
    "02_dg_training"), read from the parameters cell of its py:percent twin (literals only)."""
    path = Path(folder) / f"{name}.py"
    text = path.read_text()
    marker = '# %% tags=["parameters"]'
    if marker not in text:
        raise ValueError(f"{path} has no parameters cell ({marker})")
    cell = text.split(marker, 1)[1].split("\n# %%", 1)[0]
    out = {}
    for node in ast.parse(cell).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = (ast.unparse(node.annotation), ast.literal_eval(node.value))
    return out


def notebook_defaults(name: str, folder: str | Path = NOTEBOOKS) -> dict[str, Any]:
    """Return the parameters of notebook ``name`` with their default values (from its
    parameters cell), so that code that follows a notebook's defaults never copies them."""
    return {k: v for k, (_, v) in notebook_parameters(name, folder).items()}


def explicit_parameters(
    params: Mapping[str, Any], name: str, folder: str | Path = NOTEBOOKS
) -> set[str]:
    """Return the parameters of ``params`` (notebook ``name``'s) that the user set: those
    whose value differs from the notebook's default (a value passed equal to its default is
    not told apart from it)."""
    defaults = notebook_defaults(name, folder)
    return {k for k, v in params.items() if k not in defaults or v != defaults[k]}
