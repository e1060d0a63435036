"""Where and how computations run: device and dtype selection, and how progress is shown."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Return the torch device named by ``spec``.

    ``"auto"`` (or None) picks CUDA when available, then Apple's MPS, else the CPU. Any other
    string is passed to ``torch.device``; asking for an accelerator that is absent raises a
    ValueError that says so, before any work starts.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    if spec in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError as e:
        raise ValueError(
            f"unknown device {spec!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {spec!r} was asked for, but this torch sees no CUDA GPU; "
                "use device='cpu' or 'auto'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {spec!r} was asked for, but only "
                f"{torch.cuda.device_count()} CUDA device(s) exist"
            )
    mps_available = getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    if dev.type == "mps" and not mps_available:
        raise ValueError(f"device {spec!r} was asked for, but MPS is not available; use 'cpu'")
    return dev


def resolve_dtype(spec: str | torch.dtype) -> torch.dtype:
    """Return the torch dtype named by ``spec`` (fp32/bf16/fp16 or a torch.dtype)."""
    if isinstance(spec, torch.dtype):
        return spec
    try:
        return DTYPES[str(spec).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {spec!r}: use one of fp32, bf16, fp16") from None


def _parent_cmdline() -> str:
    try:
        return Path(f"/proc/{os.getppid()}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def progress_mode(spec: str = "auto") -> str:
    """Return "bar" (tqdm) or "log" (a line every N steps) for ``spec``.

    "auto": ``$DIFFPROMPT_PROGRESS`` when set; "log" under papermill (the kernel's parent
    process is papermill) or with no terminal; "bar" in a terminal or an interactive
    Jupyter kernel.
    """
    if spec in ("bar", "log"):
        return spec
    env = os.environ.get("DIFFPROMPT_PROGRESS", "")
    if env in ("bar", "log"):
        return env
    if "ipykernel" in sys.modules:
        return "log" if "papermill" in _parent_cmdline() else "bar"
    return "bar" if sys.stderr.isatty() else "log"
