"""Files and facts every module shares: atomic writes, checksums, the machine and the code.

- :func:`atomic_path`, :func:`atomic_write_text`, :func:`save_tensors`: every file the
  package writes (tables, figures, manifests, checkpoints, cache entries) goes to a
  temporary sibling first and is renamed into place, so an interrupted run never leaves a
  half-written file;
- :func:`tensor_checksum`, :func:`module_checksum`, :func:`digest`: content hashes that
  key caches and checkpoints;
- :func:`machine_info`, :func:`versions`, :func:`git_info`: what a number was measured on
  (manifests and the benchmark);
- :func:`did_you_mean`: the hint under every "unknown name" error.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib.metadata as md
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from diffprompt.paths import REPO_ROOT

#: Packages whose versions a manifest records (besides Python and diffprompt).
PACKAGES = (
    "torch",
    "numpy",
    "diffusers",
    "transformers",
    "accelerate",
    "pillow",
    "opencv-python-headless",
    "scipy",
    "pandas",
    "matplotlib",
)


# ---------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched. The
    temporary file is named ``.<name>.<random>.tmp``, so a writer killed half-way leaves
    only such a file behind (never a half-written ``path``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; results are shared files
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically. Returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def save_tensors(
    tensors: Mapping[str, Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> Path:
    """Write ``tensors`` to a safetensors file at ``path`` atomically. Returns the path."""
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
    return Path(path)


# ---------------------------------------------------------------------------------------
# Checksums
# ---------------------------------------------------------------------------------------


def digest(obj: Any, size: int = 12) -> str:
    """Return a hex digest (``size`` bytes) of a string, or of an object as sorted JSON."""
    text = obj if isinstance(obj, str) else json.dumps(obj, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=size).hexdigest()


def tensor_checksum(t: Tensor) -> str:
    """Return a hex digest of a tensor's dtype, shape and bytes."""
    h = hashlib.blake2b(digest_size=12)
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}|{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def module_checksum(module: nn.Module) -> str:
    """Return a hex digest of every tensor in ``module``'s state dict (names, shapes, bytes)."""
    h = hashlib.blake2b(digest_size=12)
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor_checksum(t).encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------
# The machine and the code
# ---------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Return the machine and accelerator this process runs on: platform, CPU model, cores,
    torch threads and version, the device torch picks and the GPU's name when there is one."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["device"] = "cuda"
        info["gpu"] = torch.cuda.get_device_name(0)
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        info["device"] = "mps"
    else:
        info["device"] = "cpu"
    return info


def versions() -> dict[str, str]:
    """Return the versions of Python, diffprompt and the main packages installed."""
    out = {"python": platform.python_version()}
    for name in ("diffprompt", *PACKAGES):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


def git_info(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """Return {"sha": str | None, "dirty": bool | None} of the repository.

    ``dirty`` says whether tracked files other than ``results/`` (what runs write) differ
    from the commit.
    """
    git = ["git", "-C", str(repo)]
    status_cmd = [*git, "status", "--porcelain", "--untracked-files=no", "--"]
    try:
        sha = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            [*status_cmd, ".", ":(exclude)results"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}
    return {"sha": sha, "dirty": bool(status.strip())}


# ---------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return " Did you mean 'x'?" for the closest of ``choices``, or "" when none is close."""
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""
