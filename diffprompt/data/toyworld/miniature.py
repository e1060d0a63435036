"""Generating the miniature: one sample (``render_sample``), the whole miniature
(``generate``), and keeping it current (``is_current``, ``ensure_miniature``, the CLI).

Image i of (data set, split) is drawn from the seed (seed, data set, split, i)
(``sample_seed``), so the miniature is identical on every machine for the same
parameters whatever the number of worker processes.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from diffprompt.data.toyworld.captions import caption_for
from diffprompt.data.toyworld.domains import DOMAINS
from diffprompt.data.toyworld.layouts import (
    sample_files,
    write_captions,
    write_gta5_split,
    write_image,
    write_label,
    write_mapillary_config,
)
from diffprompt.data.toyworld.render import render_appearance
from diffprompt.data.toyworld.scene import build_layout
from diffprompt.data.toyworld.world import VOID, Layout, sample_camera
from diffprompt.paths import miniature_root

#: Bump when the generator's output changes; a stale miniature is regenerated.
GENERATOR_VERSION = 5

#: Images per (registry name, split) at the default size. Labeled unless the data set
#: class lists the split as unlabeled.
DEFAULT_COUNTS: dict[str, dict[str, int]] = {
    "gta5": {"all": 250},
    "synthia": {"all": 250},
    "cityscapes": {"train": 200, "val": 100},
    "bdd100k": {"train": 150, "val": 100},
    "mapillary": {"train": 150, "val": 100},
    "acdc_fog": {"train": 200, "val": 60, "test": 40},
    "acdc_night": {"train": 200, "val": 60, "test": 40},
    "acdc_rain": {"train": 200, "val": 60, "test": 40},
    "acdc_snow": {"train": 200, "val": 60, "test": 40},
    "darkzurich": {"train": 120, "val": 200, "test": 30},
}
#: The order of the splits in a sample's seed.
SEED_SPLITS = ("all", "train", "val", "test")


@dataclass
class ToyWorldConfig:
    """Parameters of the miniature. Changing any of them regenerates it."""

    height: int = 128  # image height in pixels
    width: int = 256  # image width in pixels
    seed: int = 0  # master seed; image i of (set, split) uses seed (seed, set, split, i)
    scale: float = 1.0  # multiplies every count in DEFAULT_COUNTS (at least 2 per split)
    counts: dict[str, dict[str, int]] = field(default_factory=lambda: DEFAULT_COUNTS)

    def split_counts(self) -> dict[str, dict[str, int]]:
        """Return the number of images of every (set, split), after ``scale``."""
        return {
            d: {s: max(2, round(n * self.scale)) for s, n in splits.items()}
            for d, splits in self.counts.items()
        }

    def stamp(self) -> dict:
        """Return what identifies a generated miniature: generator version + parameters."""
        return {"generator_version": GENERATOR_VERSION, **asdict(self)}


def sample_seed(seed: int, dataset: str, split: str, i: int) -> tuple[int, int, int, int]:
    """Return the seed of image ``i`` of ``dataset`` / ``split`` under master ``seed``."""
    return seed, list(DOMAINS).index(dataset), SEED_SPLITS.index(split), i


def render_sample(
    domain_name: str, seed: tuple[int, ...], height: int = 128, width: int = 256
) -> tuple[np.ndarray, np.ndarray, str, Layout]:
    """Return (image (H, W, 3) uint8, trainIds (H, W) uint8, caption, layout) of one scene."""
    domain = DOMAINS[domain_name]
    rng = np.random.default_rng(list(seed))
    cam = sample_camera(rng, domain.camera, height, width)
    layout = build_layout(rng, domain, cam)
    img = render_appearance(layout, domain, rng)
    lab = layout.label
    if abs(cam.roll) > 0.05:  # a tilted camera: rotate picture and labels together
        img = np.asarray(Image.fromarray(img).rotate(cam.roll, Image.BILINEAR, fillcolor=(0, 0, 0)))
        lab = np.asarray(Image.fromarray(lab).rotate(cam.roll, Image.NEAREST, fillcolor=VOID))
    return img, lab, caption_for(layout, domain), layout


def _job(args: tuple[str, str, int, dict, str]) -> tuple[str, str, str, str]:
    """Render and write one sample; return (data set folder, name, caption, condition)."""
    dataset, split, i, cfg_d, out = args
    seed = sample_seed(cfg_d["seed"], dataset, split, i)
    img, lab, caption, layout = render_sample(dataset, seed, cfg_d["height"], cfg_d["width"])
    files = sample_files(dataset, split, i, cfg_d["seed"])
    folder = Path(out) / files.folder
    (folder / files.image).parent.mkdir(parents=True, exist_ok=True)
    domain = DOMAINS[dataset]
    write_image(folder / files.image, img, jpeg_quality=domain.look.jpeg or 90)
    if files.label is not None:
        (folder / files.label).parent.mkdir(parents=True, exist_ok=True)
        write_label(dataset, folder / files.label, lab, layout)
    return files.folder, files.name, caption, domain.condition


def generate(out: Path, cfg: ToyWorldConfig | None = None, workers: int | None = None) -> dict:
    """Write the whole miniature below ``out`` (which must not exist), rendering with
    ``workers`` processes (default: up to 4). Returns a summary: the stamp, the number of
    images and the seconds it took."""
    cfg = cfg or ToyWorldConfig()
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; generate() writes into a new folder")
    out.mkdir(parents=True)
    t0 = time.time()
    cfg_d = asdict(cfg)
    counts = cfg.split_counts()
    jobs = [
        (d, s, i, cfg_d, str(out))
        for d, splits in counts.items()
        for s, n in splits.items()
        for i in range(n)
    ]
    workers = workers or min(os.cpu_count() or 1, 4)
    if workers > 1:
        with mp.get_context("spawn").Pool(workers) as pool:
            results = pool.map(_job, jobs, chunksize=16)
    else:
        results = [_job(j) for j in jobs]
    captions: dict[str, dict[str, dict[str, str]]] = {}
    for folder, name, caption, condition in results:
        captions.setdefault(folder, {})[name] = {"caption": caption, "condition": condition}
    write_captions(out, captions)
    # GTA5's split file and Mapillary's label config, as in the real downloads
    write_gta5_split(out, counts["gta5"]["all"])
    write_mapillary_config(out)
    summary = {**cfg.stamp(), "images": len(jobs), "seconds": round(time.time() - t0, 2)}
    (out / "toyworld.json").write_text(json.dumps(summary, indent=1))
    return summary


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Hold an exclusive file lock on ``path`` (created if missing) while in the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def is_current(root: Path, cfg: ToyWorldConfig | None = None) -> bool:
    """Return whether ``root`` holds a miniature made by this generator with ``cfg``."""
    stamp = Path(root) / "toyworld.json"
    if not stamp.is_file():
        return False
    try:
        have = json.loads(stamp.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    want = (cfg or ToyWorldConfig()).stamp()
    return all(have.get(k) == json.loads(json.dumps(v)) for k, v in want.items())


def ensure_miniature(
    root: Path | None = None,
    cfg: ToyWorldConfig | None = None,
    force: bool = False,
    verbose: bool = False,
) -> Path:
    """Return the miniature's data root, generating it first when missing or stale.

    Generation goes to a temporary sibling folder that is renamed into place, under a file
    lock, so concurrent callers wait and an interrupted run leaves nothing half-written.
    """
    root = Path(root) if root is not None else miniature_root()
    cfg = cfg or ToyWorldConfig()
    if not force and is_current(root, cfg):
        return root
    with _lock(root.parent / f".{root.name}.lock"):
        if not force and is_current(root, cfg):
            return root
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-tmp-", dir=root.parent))
        try:
            tmp.rmdir()
            if verbose:
                print(f"generating the miniature into {root} ...", flush=True)
            summary = generate(tmp, cfg)
            if root.exists():
                old = root.with_name(f".{root.name}-old-{os.getpid()}")
                root.rename(old)
                shutil.rmtree(old, ignore_errors=True)
            tmp.rename(root)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        if verbose:
            print(f"{summary['images']} images in {summary['seconds']} s", flush=True)
    return root


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m diffprompt.data.toyworld [--root R] [--force] [--seed S] [--scale X]``;
    print the miniature's root and return 0."""
    ap = argparse.ArgumentParser(description="Generate the embedded miniature data sets.")
    ap.add_argument("--root", type=Path, default=None, help="output data root")
    ap.add_argument("--force", action="store_true", help="regenerate even if current")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every split's size")
    args = ap.parse_args(argv)
    cfg = ToyWorldConfig(seed=args.seed, scale=args.scale)
    root = ensure_miniature(args.root, cfg, force=args.force, verbose=True)
    print(root)
    return 0
