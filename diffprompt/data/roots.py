"""The data root: a folder holding the data sets, or the embedded miniature made on demand.

Environment variable: ``DIFFPROMPT_DATA``, the default data root when none is given
(otherwise the miniature). ``diffprompt.data.files.find_data_root`` names the same folder
without generating anything.
"""

from __future__ import annotations

import os
from pathlib import Path

from diffprompt.data.files import find_data_root, names_miniature
from diffprompt.data.toyworld import ensure_miniature


def resolve_data_root(data_root: str | os.PathLike | None = None, *, ensure: bool = True) -> Path:
    """Return the data root as a Path.

    ``None`` or "" means ``$DIFFPROMPT_DATA`` if set, else the miniature. The string
    ``"miniature"`` means the embedded miniature, which is generated (or regenerated when
    stale) here when ``ensure`` is true. Any other value is a folder that must exist, else a
    FileNotFoundError says what to pass.
    """
    if ensure and names_miniature(data_root):
        return ensure_miniature()
    return find_data_root(data_root)
