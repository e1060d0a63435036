"""What the notebooks run, and the tables they write (pandas).

One module per notebook family, each turning a notebook's parameters into configurations
and runs of the algorithm modules (:mod:`diffprompt.dg`, :mod:`diffprompt.tta`,
:mod:`diffprompt.probing`, :mod:`diffprompt.domain_gap`) and their results into tables:

- :mod:`~diffprompt.experiments.data`: notebook 00 (samples, class frequencies, the
  domain gap of a small CNN);
- :mod:`~diffprompt.experiments.probing`: notebook 01 (probes of frozen backbones, sweeps,
  CKA / MMD against the mIoU drop);
- :mod:`~diffprompt.experiments.dg`: notebook 02 (DG runs, mIoU and per-class tables);
- :mod:`~diffprompt.experiments.tta`: notebook 03 (every row of a target's TTA table);
- :mod:`~diffprompt.experiments.ablation`: notebook 04 (the prompt-ablation grid);
- :mod:`~diffprompt.experiments.stats`: mean ± std over seeds; bootstrap CIs of mIoU and
  of differences against a baseline row (:mod:`diffprompt.bootstrap`).

Nothing in the package imports this package but the benchmark and the paper's tables.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from diffprompt.paths import NOTEBOOKS

T = TypeVar("T")


def config_of(cls: type[T], params: Mapping[str, Any], **values: Any) -> T:
    """Return the dataclass ``cls`` with every field that ``params`` (e.g. a notebook's
    parameters) names set from it, and ``values`` on top; other parameters are ignored."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{**{k: v for k, v in params.items() if k in names}, **values})


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
    """Return the parameters of notebook ``name`` (e.g. "02_dg_training") with their default
    values, read from the parameters cell of its py:percent twin (literals only), so that
    code that follows a notebook's defaults (the benchmark, the presets' explicit values)
    never copies them."""
    return {k: v for k, (_, v) in notebook_parameters(name, folder).items()}


def explicit_parameters(
    params: Mapping[str, Any], name: str, folder: str | Path = NOTEBOOKS
) -> set[str]:
    """Return the parameters of ``params`` (notebook ``name``'s, as checked) that the user
    set: those whose value differs from the default written in the notebook's parameters
    cell (a value passed equal to its default is not told apart from it)."""
    defaults = notebook_defaults(name, folder)
    return {k for k, v in params.items() if k not in defaults or v != defaults[k]}
