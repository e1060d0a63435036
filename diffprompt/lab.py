"""JupyterLab on the notebooks (`make lab`): the .venv's kernel and the default viewer that
opens the notebooks' paired py:percent twins as notebooks (jupytext's lab integration).

``python -m diffprompt.lab settings [DIR]`` writes :data:`LAB_OVERRIDES` into ``DIR``'s
``overrides.json`` (default: this environment's JupyterLab application settings,
``<sys.prefix>/share/jupyter/lab/settings``), keeping whatever else the file holds; a
user's own JupyterLab settings still win over it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from diffprompt.io import atomic_write_text

#: What `make lab` sets: a .py file opens as a notebook (jupytext's "Jupytext Notebook"
#: viewer), so a notebook's twin runs and saves as the notebook does.
LAB_OVERRIDES: dict[str, dict[str, Any]] = {
    "@jupyterlab/docmanager-extension:plugin": {"defaultViewers": {"python": "Jupytext Notebook"}},
}


def app_settings_dir() -> Path:
    """This environment's JupyterLab application settings folder."""
    return Path(sys.prefix) / "share" / "jupyter" / "lab" / "settings"


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, Mapping) else v
    return out


def write_overrides(folder: str | Path | None = None) -> Path:
    """Merge :data:`LAB_OVERRIDES` into ``folder``/overrides.json (None: :func:`app_settings_dir`)
    and return its path. A file that is not a JSON object is an error naming it."""
    path = Path(folder if folder is not None else app_settings_dir()) / "overrides.json"
    current: dict[str, Any] = {}
    if path.is_file():
        try:
            current = json.loads(path.read_text(encoding="utf-8") or "{}")
        except ValueError as e:
            raise ValueError(f"{path} is not valid JSON ({e}): fix or remove it") from e
        if not isinstance(current, dict):
            raise ValueError(f"{path} must hold a JSON object: fix or remove it")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(_merge(current, LAB_OVERRIDES), indent=2) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "settings" or len(args) > 2:
        print("usage: python -m diffprompt.lab settings [DIR]", file=sys.stderr)
        return 2
    print(f"wrote {write_overrides(args[1] if len(args) == 2 else None)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
