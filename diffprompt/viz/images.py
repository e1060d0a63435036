"""Pictures as arrays and grids of them: label overlays, sample grids, panel grids and the
PCA picture of a feature map.

Matplotlib is imported inside the functions that draw (it is heavy and optional for
headless use of the package).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from diffprompt.labels import IGNORE_INDEX, colorize


def to_uint8_image(image) -> np.ndarray:
    """Return an (H, W, 3) uint8 array from a (3, H, W) float tensor in [0, 1] or an array."""
    arr = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.dtype != np.uint8:
        arr = np.clip(arr * 255 + 0.5, 0, 255).astype(np.uint8)
    return arr


def overlay(image, trainids, alpha: float = 0.5) -> np.ndarray:
    """Return an (H, W, 3) uint8 blend of an image with its trainId colours (ignore: none)."""
    img = to_uint8_image(image).astype(np.float32)
    lab = np.asarray(trainids.cpu() if hasattr(trainids, "cpu") else trainids)
    col = colorize(lab).astype(np.float32)
    a = np.where(lab == IGNORE_INDEX, 0.0, alpha)[..., None]
    return (img * (1 - a) + col * a).astype(np.uint8)


def feature_pca_image(feature, size: tuple[int, int] | None = None) -> np.ndarray:
    """Return an (H, W, 3) uint8 picture of a (C, h, w) feature map: its first three principal
    components over positions, each scaled to [0, 255] (nearest upsampling to ``size``)."""
    f = torch.as_tensor(feature).float()
    c, h, w = f.shape
    x = f.reshape(c, h * w).T
    x = x - x.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    comps = v[:3].T if v.shape[0] >= 3 else torch.nn.functional.pad(v.T, (0, 3 - v.shape[0]))
    y = x @ comps
    lo, hi = y.min(0).values, y.max(0).values
    y = (y - lo) / (hi - lo).clamp_min(1e-8)
    img = (y.reshape(h, w, 3).numpy() * 255).round().astype(np.uint8)
    if size is not None and (h, w) != tuple(size):
        rows = np.arange(size[0]) * h // size[0]
        cols = np.arange(size[1]) * w // size[1]
        img = img[rows][:, cols]
    return img


def sample_grid(rows: Mapping[str, Sequence[dict]], alpha: float = 0.5, width: float = 14.0):
    """Return a matplotlib figure: one row per domain, image and overlay of each sample.

    ``rows`` maps a row title to samples (dicts with "image", optional "mask", "meta").
    """
    import matplotlib.pyplot as plt

    n_rows = len(rows)
    n_cols = max(len(s) for s in rows.values()) * 2
    first = next(iter(rows.values()))[0]["image"]
    h, w = first.shape[-2:]
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(width, width / n_cols * n_rows * h / w * 1.25), squeeze=False
    )
    for r, (title, samples) in enumerate(rows.items()):
        for c, s in enumerate(samples):
            ax_img, ax_lab = axes[r, 2 * c], axes[r, 2 * c + 1]
            ax_img.imshow(to_uint8_image(s["image"]))
            if "mask" in s:
                ax_lab.imshow(overlay(s["image"], s["mask"], alpha))
            else:
                ax_lab.text(0.5, 0.5, "unlabeled split", ha="center", va="center")
            if c == 0:
                ax_img.set_ylabel(title, fontsize=9)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout(pad=0.3)
    return fig


def panel_grid(
    rows: Mapping[str, Sequence[np.ndarray]], columns: Sequence[str], width: float = 12.0
):
    """Return a matplotlib figure of image panels: one row per key of ``rows`` (its title on
    the left), one column per entry of ``columns`` (titles on top); each panel an (H, W, 3)
    uint8 array (e.g. image, ground-truth overlay, prediction overlays)."""
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), len(columns)
    first = next(iter(rows.values()))[0]
    h, w = first.shape[:2]
    fig, axes = plt.subplots(
        n_rows, n_cols, squeeze=False, figsize=(width, width / n_cols * n_rows * h / w * 1.15)
    )
    for r, (title, panels) in enumerate(rows.items()):
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(panel)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(title, fontsize=9)
    fig.tight_layout(pad=0.3)
    return fig
