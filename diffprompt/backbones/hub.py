"""Where a pretrained model comes from: the bundled model, a local folder or a hub id.

Every loader of the project goes through :func:`resolve_model_folder`, which turns the
user's string into a local folder before any weights are read:

- ``"toy-sd"`` (alias ``"embedded"``): the embedded model shipped in the package;
- an existing folder: used as is, nothing touches the network;
- a hub id ``"org/name"``: taken from the local Hugging Face cache when it is there;
  otherwise downloaded, unless ``HF_HUB_OFFLINE`` is set or the hub cannot be reached, in
  which case a clear error says how to provide a local folder. Reachability is probed
  with a short timeout first, so an offline machine never waits on DNS retries.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from diffprompt.paths import ASSETS

#: Names of bundled models and their folders.
BUNDLED = {"toy-sd": ASSETS / "toy-sd", "embedded": ASSETS / "toy-sd"}


class ModelNotFoundError(FileNotFoundError):
    """A model could not be found locally and may not or cannot be downloaded."""


def hub_offline() -> bool:
    """Return True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) asks for no network."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False


def hub_reachable(timeout: float = 3.0) -> bool:
    """Return whether a TCP connection to the hub endpoint opens within ``timeout`` seconds.

    DNS lookups cannot be given a timeout, so the probe runs in a daemon thread that is
    abandoned when it takes too long.
    """
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            ok.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok and ok[0])


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _looks_like_path(name: str) -> bool:
    return not _HUB_ID.match(name) or name.startswith((".", "~"))


def _how_to(name: str) -> str:
    return (
        f"Download it on a machine with internet, e.g. `hf download {name} --local-dir DIR` "
        "(or `huggingface-cli download`), copy DIR here and pass that folder instead of the "
        "hub id."
    )


def resolve_model_folder(
    name_or_path: str | os.PathLike,
    allow_patterns: Sequence[str] | None = None,
    what: str = "model",
    required: Sequence[str] = (),
) -> Path:
    """Return the local folder of a model given by bundled name, folder or hub id.

    ``allow_patterns`` restricts a download to those files (e.g. only the components a
    loader reads); ``required`` lists entries (files or sub-folders) the folder must hold.
    Raises :class:`ModelNotFoundError` with what to do, before any weights are read.
    """
    name = str(name_or_path)
    if name in BUNDLED:
        folder = BUNDLED[name]
        if not (folder / "model_index.json").is_file():
            raise ModelNotFoundError(
                f"the bundled {what} {name!r} is missing from {folder}; reinstall the package "
                "from a full checkout, or regenerate it with `python -m diffprompt.toysd.pretrain`"
            )
    elif Path(name).expanduser().is_dir():
        folder = Path(name).expanduser()
    elif _looks_like_path(name):
        raise ModelNotFoundError(
            f"no {what} folder at {name!r}: pass an existing folder in diffusers/transformers "
            "format, a hub id such as 'org/name', or 'toy-sd' for the bundled model"
        )
    else:
        folder = _hub_folder(name, allow_patterns, what)
    missing = [r for r in required if not (folder / r).exists()]
    if missing:
        raise ModelNotFoundError(
            f"the {what} folder {folder} lacks {', '.join(missing)}; a complete checkpoint "
            f"folder holds {', '.join(required)} (save one with `save_pretrained`, or download "
            "the full repository)"
        )
    return folder


def _hub_folder(repo_id: str, allow_patterns: Sequence[str] | None, what: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = list(allow_patterns) if allow_patterns else None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    if hub_offline():
        raise ModelNotFoundError(
            f"{what} {repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is "
            f"set, so it cannot be downloaded. {_how_to(repo_id)}"
        )
    if not hub_reachable():
        raise ModelNotFoundError(
            f"{what} {repo_id!r} is not in the local Hugging Face cache and the hub cannot be "
            f"reached (no network?). {_how_to(repo_id)}"
        )
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:  # a wrong id, a gated repository, a broken connection
        raise ModelNotFoundError(
            f"could not download {what} {repo_id!r}: {e}. Check the id, or {_how_to(repo_id)}"
        ) from e
