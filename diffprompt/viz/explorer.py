"""The JupyterLab explorer (ipywidgets, imported only when an explorer is built)."""

from __future__ import annotations

import dataclasses
import html
import io
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from diffprompt.labels import CLASSES, IGNORE_INDEX, PALETTE
from diffprompt.viz.images import feature_pca_image, overlay, to_uint8_image

#: The width (pixels) each of the explorer's pictures is shown at.
IMAGE_WIDTH = 320

#: How many views an explorer keeps to show again without recomputing.
SEEN_VIEWS = 64


def image_iou(prediction, mask) -> dict[str, float]:
    """Return the per-class IoU (%) of one image's prediction (H, W) against its trainId mask,
    for every class that the mask or the prediction holds (ignore pixels left out), in class
    order: {class name: IoU}."""
    pred = torch.as_tensor(np.asarray(prediction)).long().flatten()
    gt = torch.as_tensor(np.asarray(mask)).long().flatten()
    keep = gt != IGNORE_INDEX
    pred, gt = pred[keep], gt[keep]
    out = {}
    for c, name in enumerate(CLASSES):
        p, g = pred == c, gt == c
        union = int((p | g).sum())
        if union:
            out[name] = 100.0 * int((p & g).sum()) / union
    return out


def explorer_view(
    model,
    dataset,
    index: int,
    scene_text: str | None = None,
    timestep: int | None = None,
    feature_map: str | None = None,
    alpha: float = 0.5,
    latents: torch.Tensor | None = None,
) -> dict:
    """Return the explorer's view of image ``index`` of ``dataset`` under ``model`` (a
    :class:`diffprompt.model.SegModel`): the pictures ``image``, ``label`` (ground-truth
    overlay), ``prediction`` (prediction overlay) and ``pca`` (feature PCA of
    ``feature_map``, default the finest map), as (H, W, 3) uint8 arrays, and ``iou`` (that
    image's per-class IoU, :func:`image_iou`), with the scene prompt ``scene_text`` (None:
    the model's own) and the UNet at ``timestep`` (None: the backbone's configured
    timesteps). ``latents``: the image's VAE latents (1, c, h, w), which skip the VAE."""
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
            texts = None if scene_text is None else [scene_text]
            feats = model.features(image, texts, latents=latents)
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
    classes = logits[0].argmax(0)
    return {
        "image": to_uint8_image(sample["image"]),
        "label": overlay(sample["image"], sample["mask"], alpha),
        "prediction": overlay(sample["image"], classes, alpha),
        "pca": feature_pca_image(feats[name][0], size),
        "iou": image_iou(classes, sample["mask"]),
    }


def iou_html(iou: Mapping[str, float]) -> str:
    """An HTML table of one image's per-class IoU (%), each class in its palette colour, and
    their mean."""
    rows = []
    for name, value in iou.items():
        r, g, b = (int(v) for v in PALETTE[CLASSES.index(name)])
        swatch = f'<span style="background:rgb({r},{g},{b});padding:0 0.6em">&nbsp;</span>'
        rows.append(
            f'<tr><td style="padding:0 6px">{swatch} {html.escape(name)}</td>'
            f'<td style="padding:0 6px;text-align:right">{value:.1f}</td></tr>'
        )
    mean = sum(iou.values()) / len(iou) if iou else float("nan")
    return (
        '<table class="diffprompt-iou" style="font-size:11px;line-height:1.25">'
        "<tr><th>class</th><th>IoU (%)</th></tr>"
        + "".join(rows)
        + f"<tr><td><b>mean</b></td><td><b>{mean:.1f}</b></td></tr></table>"
    )


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


class Explorer:
    """An ipywidgets explorer for JupyterLab: choose a data set and an image, a scene prompt
    (free text) and a UNet timestep; it shows the image, the ground truth, the prediction
    overlay, that image's per-class IoU and a PCA of the features. ``datasets`` maps names to
    data sets; ``model`` is a trained SegModel.

    It recomputes only what a control changed: each image's VAE latents are encoded once and
    kept (:attr:`encoded` counts the encodings), a prompt or a timestep reruns the UNet and
    the head on them (:attr:`views` counts the views computed), and a view seen before is
    shown again from memory. ipywidgets is imported here only, so headless runs never need
    it. Display the explorer with ``explorer.widget`` (the last expression of a cell), or call
    :meth:`update` after setting the controls' values yourself.
    """

    def __init__(
        self,
        model,
        datasets: Mapping[str, object],
        scene_text: str = "",
        timesteps: Sequence[int] = (1, 50, 100, 200, 400, 700),
        feature_map=None,
    ):
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
        self.views = self.encoded = 0
        self._latents: dict[tuple[str, int], torch.Tensor] = {}
        self._seen: dict[tuple, dict] = {}
        first = next(iter(self.datasets))
        self.dataset = W.Dropdown(options=list(self.datasets), value=first, description="data")
        self.index = W.IntSlider(0, 0, len(self.datasets[first]) - 1, description="image")
        self.prompt = W.Text(
            scene_text,
            description="prompt",
            continuous_update=False,
            placeholder="empty: the model's own prompt",
        )
        self.timestep = W.SelectionSlider(
            options=[int(t) for t in timesteps], value=int(timesteps[0]), description="timestep"
        )
        names = {"image": "image", "label": "ground truth", "prediction": "prediction"}
        names["pca"] = "feature PCA"
        size = W.Layout(width=f"{IMAGE_WIDTH}px")  # small images shown larger, large smaller
        self.images = {k: W.Image(format="png", layout=size) for k in names}
        for k, im in self.images.items():
            im.add_class(f"diffprompt-{k}")
        self.iou = W.HTML()
        self.status = W.Label()
        self.status.add_class("diffprompt-status")
        cells = [W.VBox([W.Label(names[k]), im]) for k, im in self.images.items()]
        self.widget = W.VBox(
            [
                W.HBox([self.dataset, self.index]),
                W.HBox([self.prompt, self.timestep]),
                W.HBox(
                    [
                        W.GridBox(cells, layout=W.Layout(grid_template_columns="repeat(2, 1fr)")),
                        W.VBox([W.Label("per-class IoU of this image"), self.iou]),
                    ]
                ),
                self.status,
            ]
        )
        self.widget.add_class("diffprompt-explorer")
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

    def latents(self, name: str, index: int):
        """The VAE latents of image ``index`` of data set ``name`` (None for a backbone
        without a VAE), encoded on first use and kept."""
        bb = self.model.backbone
        if not hasattr(bb, "encode"):
            return None
        key = (name, int(index))
        if key not in self._latents:
            image = self.datasets[name][int(index)]["image"][None]
            with torch.no_grad():
                self._latents[key] = bb.encode(image.to(bb.unet.device))
            self.encoded += 1
        return self._latents[key]

    def update(self) -> dict:
        """Show the view of the controls' current values (computed when not seen before)."""
        name, index = self.dataset.value, self.index.value
        prompt, t = self.prompt.value or None, self.timestep.value
        key = (name, index, prompt, t, self.feature_map)
        if key not in self._seen:
            if len(self._seen) >= SEEN_VIEWS:  # oldest out
                self._seen.pop(next(iter(self._seen)))
            self._seen[key] = explorer_view(
                self.model,
                self.datasets[name],
                index,
                prompt,
                t,
                self.feature_map,
                latents=self.latents(name, index),
            )
            self.views += 1
        view = self.current = self._seen[key]
        for k, im in self.images.items():
            im.value = _png(view[k])
        self.iou.value = iou_html(view["iou"])
        self.status.value = (
            f"{name} #{index} · prompt {self.prompt.value or '(model default)'!r} · t={t}"
        )
        return view

    def _ipython_display_(self):  # pragma: no cover - needs a frontend
        from IPython.display import display

        display(self.widget)
