"""Where things live: the repository, the bundled assets, the data root and the results root.

Constants and path conventions only (a leaf: it imports nothing of the package).

The data root holds one folder per data set (see ``DATASET_DIRS``); the embedded
miniature is generated on demand into ``data/miniature`` of the repository with exactly
the same folder names, so the real data sets and the miniature differ only by the root.

Environment variables:
    DIFFPROMPT_DATA     default data root when none is given (otherwise the miniature)
    DIFFPROMPT_RESULTS  results root (default: ``results/`` of the repository)
"""

from __future__ import annotations

import os
from pathlib import Path

#: The repository (or, for an installed package, the folder above the package).
REPO_ROOT = Path(__file__).resolve().parent.parent

#: The notebooks (each a py:percent twin beside its .ipynb).
NOTEBOOKS = REPO_ROOT / "notebooks"

#: Files shipped inside the package (the embedded model).
ASSETS = Path(__file__).resolve().parent / "assets"

#: Special data-root value that means "the embedded miniature, generated on demand".
MINIATURE = "miniature"

#: Folder of each data set below a data root (the official archives unpacked there).
DATASET_DIRS: dict[str, str] = {
    "gta5": "gta5",
    "synthia": "synthia",
    "cityscapes": "cityscapes",
    "bdd100k": "bdd100k",
    "mapillary": "mapillary",
    "acdc": "acdc",
    "darkzurich": "dark_zurich",
}


def miniature_root() -> Path:
    """Return the folder the embedded miniature is generated into (git-ignored)."""
    return REPO_ROOT / "data" / "miniature"


def results_root() -> Path:
    """Return the results root: ``$DIFFPROMPT_RESULTS`` or ``results/`` of the repository."""
    env = os.environ.get("DIFFPROMPT_RESULTS")
    return Path(env).expanduser() if env else REPO_ROOT / "results"


def runs_root(results_dir: str | os.PathLike | None = None) -> Path:
    """Return the folder of run scratch space (DG checkpoints, the feature cache, executed
    notebooks): ``<results>/runs`` (``results_dir`` None or "": :func:`results_root`)."""
    return (Path(results_dir) if results_dir else results_root()) / "runs"


def cache_dir(results_dir: str | os.PathLike | None = None) -> Path:
    """Return the feature-cache folder, ``<results>/runs/cache``."""
    return runs_root(results_dir) / "cache"
