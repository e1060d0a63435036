"""The data root: a folder holding the data sets, or the embedded miniature made on demand.

Environment variable: ``DIFFPROMPT_DATA``, the default data root when none is given
(otherwise the miniature).
"""

from __future__ import annotations

import os
from pathlib import Path

from diffprompt.data.toyworld import ensure_miniature
from diffprompt.paths import DATASET_DIRS, MINIATURE, miniature_root


def resolve_data_root(data_root: str | os.PathLike | None = None, *, ensure: bool = True) -> Path:
    """Return the data root as a Path.

    ``None`` or "" means ``$DIFFPROMPT_DATA`` if set, else the miniature. The string
    ``"miniature"`` means the embedded miniature, which is generated (or regenerated when
    stale) here when ``ensure`` is true. Any other value is a folder that must exist, else a
    FileNotFoundError says what to pass.
    """
    if data_root is None or str(data_root) == "":
        data_root = os.environ.get("DIFFPROMPT_DATA") or MINIATURE
    if str(data_root) == MINIATURE:
        return ensure_miniature() if ensure else miniature_root()
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"Data root {root} does not exist or is not a folder. Pass the folder that holds "
            f"the data sets (subfolders {sorted(set(DATASET_DIRS.values()))}), set "
            f"DIFFPROMPT_DATA to it, or use data_root='{MINIATURE}' for the embedded miniature."
        )
    return root
