"""Writing results: tables (CSV/Markdown/LaTeX), figures and run manifests.

Every file under results/ is written atomically (:func:`diffprompt.io.atomic_path`), so
an interrupted run never leaves a half-written table. Every run writes a manifest (JSON)
with its parameters, seed, git sha and dirty flag, package versions, device, start time,
wall time and the files it produced, enough to rerun it.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from diffprompt.io import atomic_path, atomic_write_text, git_info, machine_info, versions
from diffprompt.paths import results_root
from diffprompt.preflight import check_writable


def format_mean_std(mean: float, std: float) -> str:
    """Return a table cell "m ± s" (two decimals); "m" when ``std`` is NaN (one seed); "--"
    when ``mean`` is NaN."""
    if math.isnan(mean):
        return "--"
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def parse_mean_std(cell: str) -> tuple[float, float]:
    """Return (mean, std) of a "m ± s" (or "m") table cell; std 0 when absent."""
    parts = str(cell).split("±")
    return float(parts[0]), float(parts[1]) if len(parts) > 1 else 0.0


class Run:
    """One run that writes results: collects outputs and writes its manifest at the end.

    >>> run = Run("domain_gap", params={...}, seed=0)
    >>> run.table(df, "domain_gap"); run.figure(fig, "samples"); run.finish()
    """

    def __init__(
        self,
        name: str,
        params: dict[str, Any],
        seed: int | None = None,
        root: str | os.PathLike | None = None,
    ):
        self.name = name
        self.params = params
        self.seed = seed
        self.root = Path(root) if root is not None else results_root()
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
                fig.savefig(
                    tmp,
                    format=fmt,
                    dpi=dpi,
                    bbox_inches="tight",
                    metadata={"CreationDate": None} if fmt == "pdf" else None,
                )
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
            "device": machine_info(),
            "started_utc": self.started.isoformat(timespec="seconds"),
            "wall_seconds": round(time.time() - self._t0, 2),
            "outputs": sorted(set(self.outputs)),
            **self.extra,
        }
        path = self.root / "manifests" / f"{self.name}.json"
        atomic_write_text(path, json.dumps(manifest, indent=2, default=str) + "\n")
        return path
