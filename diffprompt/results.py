"""Writing results: atomic files, tables (CSV/Markdown/LaTeX), figures and run manifests.

Every file under results/ is written to a temporary sibling first and renamed into place,
so an interrupted run never leaves a half-written table. Every run writes a manifest (JSON)
with its parameters, seed, git sha and dirty flag, package versions, device, start time,
wall time and the files it produced, enough to rerun it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata as md
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from diffprompt.paths import REPO_ROOT, results_root

PACKAGES = ("torch", "numpy", "diffusers", "transformers", "accelerate", "pillow",
            "opencv-python-headless", "scipy", "pandas", "matplotlib")  # fmt: skip


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically. Returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def git_info(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """Return {"sha": str | None, "dirty": bool | None} of the repository.

    ``dirty`` says whether tracked files other than ``results/`` (what runs write) differ
    from the commit.
    """
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()  # fmt: skip
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                 ".", ":(exclude)results"], cwd=repo, capture_output=True,
                                text=True, timeout=10, check=True).stdout  # fmt: skip
        return {"sha": sha, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}


def versions() -> dict[str, str]:
    """Return the versions of Python, diffprompt and the main packages installed."""
    out = {"python": platform.python_version()}
    for name in ("diffprompt", *PACKAGES):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


def device_info() -> dict[str, Any]:
    """Return the machine and accelerator this process runs on."""
    info: dict[str, Any] = {"platform": platform.platform(), "processor": platform.machine(),
                            "cpu_count": os.cpu_count()}  # fmt: skip
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["device"] = "cuda"
            info["gpu"] = torch.cuda.get_device_name(0)
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            info["device"] = "mps"
        else:
            info["device"] = "cpu"
    except ImportError:
        info["device"] = "cpu"
    return info


class Run:
    """One run that writes results: collects outputs and writes its manifest at the end.

    >>> run = Run("domain_gap", params={...}, seed=0)
    >>> run.table(df, "domain_gap"); run.figure(fig, "samples"); run.finish()
    """

    def __init__(self, name: str, params: dict[str, Any], seed: int | None = None,
                 root: str | os.PathLike | None = None):  # fmt: skip
        self.name = name
        self.params = params
        self.seed = seed
        self.root = Path(root) if root is not None else results_root()
        from diffprompt.preflight import check_writable

        for sub in ("", "tables", "figures", "manifests"):  # before any work, nothing written
            if sub == "" or (self.root / sub).exists():
                check_writable(self.root / sub)
        self.started = _dt.datetime.now(_dt.UTC)
        self._t0 = time.time()
        self.git = git_info()  # the code as the run started
        self.outputs: list[str] = []
        self.extra: dict[str, Any] = {}

    def _rel(self, path: Path) -> str:
        try:
            return str(path.resolve().relative_to(self.root.resolve()))
        except ValueError:
            return str(path)

    def table(self, df, name: str, float_format: str = "%.2f", caption: str | None = None) -> Path:
        """Write a pandas DataFrame as tables/<name>.csv, .md and .tex. Returns the CSV path."""
        base = self.root / "tables" / name
        csv = atomic_write_text(base.with_suffix(".csv"), df.to_csv(float_format=float_format))
        shown = df.astype(object).where(df.notna(), None)  # missing values as "--"
        md_text = shown.to_markdown(floatfmt=float_format.strip("%"), missingval="--")
        if caption:
            md_text = md_text + "\n\n" + caption + "\n"
        atomic_write_text(base.with_suffix(".md"), md_text + "\n")
        tex = df.to_latex(float_format=lambda v: float_format % v, caption=caption, na_rep="--")
        atomic_write_text(base.with_suffix(".tex"), tex)  # booktabs rules
        for suffix in (".csv", ".md", ".tex"):
            self.outputs.append(self._rel(base.with_suffix(suffix)))
        return csv

    def figure(
        self, fig, name: str, formats: tuple[str, ...] = ("png", "pdf"), dpi: int = 110
    ) -> Path:
        """Save a matplotlib figure as figures/<name>.png (and .pdf). Returns the PNG path."""
        out = None
        for fmt in formats:
            path = self.root / "figures" / f"{name}.{fmt}"
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight",
                            metadata={"CreationDate": None} if fmt == "pdf" else None)  # fmt: skip
            self.outputs.append(self._rel(path))
            out = out or path
        return out

    def finish(self, **extra: Any) -> Path:
        """Write manifests/<name>.json and return its path."""
        self.extra.update(extra)
        manifest = {
            "name": self.name,
            "params": self.params,
            "seed": self.seed,
            "git": self.git,
            "versions": versions(),
            "device": device_info(),
            "started_utc": self.started.isoformat(timespec="seconds"),
            "wall_seconds": round(time.time() - self._t0, 2),
            "outputs": sorted(set(self.outputs)),
            **self.extra,
        }
        path = self.root / "manifests" / f"{self.name}.json"
        atomic_write_text(path, json.dumps(manifest, indent=2, default=str) + "\n")
        return path
