"""Figures: label overlays, sample grids and class-frequency plots.

Matplotlib is imported inside the functions that draw, with the non-interactive Agg
backend when no display is attached, so headless runs need nothing more.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

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


def sample_grid(rows: Mapping[str, Sequence[dict]], alpha: float = 0.5, width: float = 14.0):
    """Return a matplotlib figure: one row per domain, image and overlay of each sample.

    ``rows`` maps a row title to samples (dicts with "image", optional "mask", "meta").
    """
    import matplotlib.pyplot as plt

    n_rows = len(rows)
    n_cols = max(len(s) for s in rows.values()) * 2
    first = next(iter(rows.values()))[0]["image"]
    h, w = first.shape[-2:]
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width, width / n_cols * n_rows * h / w * 1.25),
                             squeeze=False)  # fmt: skip
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


def class_frequency_plot(freq, title: str = "pixel share of each class per domain"):
    """Return a figure of a (domains x classes) DataFrame of pixel shares, log-scaled bars."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(14, 4.2))
    n = len(freq.index)
    x = np.arange(len(freq.columns))
    bw = 0.85 / n
    cmap = plt.get_cmap("tab20")
    for i, dom in enumerate(freq.index):
        ax.bar(x + i * bw - 0.425 + bw / 2, freq.loc[dom].to_numpy() * 100, bw, label=dom,
               color=cmap(i % 20))  # fmt: skip
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(freq.columns, rotation=45, ha="right")
    ax.set_ylabel("% of labeled pixels")
    ax.set_title(title)
    ax.legend(ncol=4, fontsize=7)
    fig.tight_layout()
    return fig


def panel_grid(rows: Mapping[str, Sequence[np.ndarray]], columns: Sequence[str],
               width: float = 12.0):  # fmt: skip
    """Return a matplotlib figure of image panels: one row per key of ``rows`` (its title on
    the left), one column per entry of ``columns`` (titles on top); each panel an (H, W, 3)
    uint8 array (e.g. image, ground-truth overlay, prediction overlays)."""
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), len(columns)
    first = next(iter(rows.values()))[0]
    h, w = first.shape[:2]
    fig, axes = plt.subplots(n_rows, n_cols, squeeze=False,
                             figsize=(width, width / n_cols * n_rows * h / w * 1.15))  # fmt: skip
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


# ---------------------------------------------------------------------------------------
# Interactive explorer (JupyterLab)
# ---------------------------------------------------------------------------------------


def feature_pca_image(feature, size: tuple[int, int] | None = None) -> np.ndarray:
    """Return an (H, W, 3) uint8 picture of a (C, h, w) feature map: its first three principal
    components over positions, each scaled to [0, 255] (nearest upsampling to ``size``)."""
    import torch

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


def explorer_view(model, dataset, index: int, scene_text: str | None = None,
                  timestep: int | None = None, feature_map: str | None = None,
                  alpha: float = 0.5) -> dict[str, np.ndarray]:  # fmt: skip
    """Return the explorer's pictures of image ``index`` of ``dataset`` under ``model`` (a
    :class:`diffprompt.model.SegModel`): ``image``, ``label`` (ground-truth overlay),
    ``prediction`` (prediction overlay) and ``pca`` (feature PCA of ``feature_map``, default
    the finest map), with the scene prompt ``scene_text`` (None: the model's own) and the UNet
    at ``timestep`` (None: the backbone's configured timesteps)."""
    import dataclasses

    import torch

    sample = dataset[int(index)]
    image = sample["image"][None]
    bb = model.backbone
    cfg = getattr(bb, "cfg", None)
    if timestep is not None and not dataclasses.is_dataclass(cfg):
        raise ValueError("this backbone has no timestep to choose: pass timestep=None")
    was_training = model.training
    model.eval()
    try:
        if timestep is not None:
            bb.cfg = dataclasses.replace(cfg, timesteps=(int(timestep),))
        with torch.no_grad():
            feats = model.features(image, None if scene_text is None else [scene_text])
            logits = model.decode(feats, tuple(image.shape[-2:]))
    finally:
        if timestep is not None:
            bb.cfg = cfg
        model.train(was_training)
    maps = [k for k in feats if k.startswith("s")] or list(feats)
    name = feature_map or max(maps, key=lambda k: feats[k].shape[-1])
    if name not in feats:
        raise ValueError(f"no feature map {name!r}: choose one of {sorted(feats)}")
    size = tuple(image.shape[-2:])
    return {"image": to_uint8_image(sample["image"]),
            "label": overlay(sample["image"], sample["mask"], alpha),
            "prediction": overlay(sample["image"], logits[0].argmax(0), alpha),
            "pca": feature_pca_image(feats[name][0], size)}  # fmt: skip


def _png(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


class Explorer:
    """An ipywidgets explorer for JupyterLab: choose a data set and an image, a scene prompt
    and a timestep; it shows the image, the ground truth, the prediction overlay and a PCA of
    the features. ``datasets`` maps names to data sets; ``model`` is a trained SegModel.

    ipywidgets is imported here only, so headless runs never need it. Display the explorer
    with ``explorer.widget`` (the last expression of a cell), or call :meth:`update` after
    setting the controls' values yourself.
    """

    def __init__(self, model, datasets: Mapping[str, object], scene_text: str = "",
                 timesteps: Sequence[int] = (1, 50, 100, 200, 400, 700), feature_map=None):  # fmt: skip
        try:
            import ipywidgets as W
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(
                "the explorer needs ipywidgets: pip install ipywidgets (or the [notebooks] "
                "extra of diffprompt)"
            ) from e
        if not datasets:
            raise ValueError("Explorer needs at least one data set")
        self.model, self.datasets, self.feature_map = model, dict(datasets), feature_map
        self.views = 0
        first = next(iter(self.datasets))
        self.dataset = W.Dropdown(options=list(self.datasets), value=first, description="data")
        self.index = W.IntSlider(0, 0, len(self.datasets[first]) - 1, description="image")
        self.prompt = W.Text(scene_text, description="prompt", continuous_update=False,
                             placeholder="empty: the model's own prompt")  # fmt: skip
        self.timestep = W.SelectionSlider(options=[int(t) for t in timesteps],
                                          value=int(timesteps[0]), description="timestep")  # fmt: skip
        self.images = {k: W.Image(format="png") for k in ("image", "label", "prediction", "pca")}
        self.status = W.Label()
        cells = [W.VBox([W.Label(k), im]) for k, im in self.images.items()]
        self.widget = W.VBox([W.HBox([self.dataset, self.index]),
                              W.HBox([self.prompt, self.timestep]),
                              W.GridBox(cells, layout=W.Layout(
                                  grid_template_columns="repeat(2, 1fr)")),
                              self.status])  # fmt: skip
        self.dataset.observe(self._on_dataset, names="value")
        for w in (self.index, self.prompt, self.timestep):
            w.observe(lambda _change: self.update(), names="value")
        self.update()

    def _on_dataset(self, _change) -> None:
        n = len(self.datasets[self.dataset.value])
        with self.index.hold_trait_notifications():
            self.index.max = n - 1
            self.index.value = min(self.index.value, n - 1)
        self.update()

    def update(self) -> dict[str, np.ndarray]:
        """Recompute the pictures for the controls' current values and show them."""
        view = explorer_view(self.model, self.datasets[self.dataset.value], self.index.value,
                             self.prompt.value or None, self.timestep.value,
                             self.feature_map)  # fmt: skip
        for k, im in self.images.items():
            im.value = _png(view[k])
        self.views += 1
        self.current = view
        self.status.value = (f"{self.dataset.value} #{self.index.value} · prompt "
                             f"{self.prompt.value or '(model default)'!r} · t={self.timestep.value}")  # fmt: skip
        return view

    def _ipython_display_(self):  # pragma: no cover - needs a frontend
        from IPython.display import display

        display(self.widget)
