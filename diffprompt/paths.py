"""Where things live: the repository, the data root and the results root.

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


def resolve_data_root(data_root: str | os.PathLike | None = None, *, ensure: bool = True) -> Path:
    """Return the data root as a Path.

    ``None`` means ``$DIFFPROMPT_DATA`` if set, else the miniature. The string
    ``"miniature"`` means the embedded miniature, which is generated (or regenerated when
    stale) here when ``ensure`` is true. Any other value is a folder that must exist.
    """
    if data_root is None or str(data_root) == "":
        data_root = os.environ.get("DIFFPROMPT_DATA") or MINIATURE
    if str(data_root) == MINIATURE:
        if ensure:
            from diffprompt.data.toyworld import ensure_miniature

            return ensure_miniature()
        return miniature_root()
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"Data root {root} does not exist or is not a folder. Pass the folder that holds "
            f"the data sets (subfolders {sorted(set(DATASET_DIRS.values()))}), set "
            f"DIFFPROMPT_DATA to it, or use data_root='{MINIATURE}' for the embedded miniature."
        )
    return root
