"""The JupyterLab explorer (ipywidgets, imported only when an explorer is built)."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from diffprompt.viz.images import feature_pca_image, overlay, to_uint8_image


def explorer_view(
    model,
    dataset,
    index: int,
    scene_text: str | None = None,
    timestep: int | None = None,
    feature_map: str | None = None,
    alpha: float = 0.5,
) -> dict[str, np.ndarray]:
    """Return the explorer's pictures of image ``index`` of ``dataset`` under ``model`` (a
    :class:`diffprompt.model.SegModel`): ``image``, ``label`` (ground-truth overlay),
    ``prediction`` (prediction overlay) and ``pca`` (feature PCA of ``feature_map``, default
    the finest map), with the scene prompt ``scene_text`` (None: the model's own) and the UNet
    at ``timestep`` (None: the backbone's configured timesteps)."""
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
    return {
        "image": to_uint8_image(sample["image"]),
        "label": overlay(sample["image"], sample["mask"], alpha),
        "prediction": overlay(sample["image"], logits[0].argmax(0), alpha),
        "pca": feature_pca_image(feats[name][0], size),
    }


def _png(array: np.ndarray) -> bytes:
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
        self.views = 0
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
        self.images = {k: W.Image(format="png") for k in ("image", "label", "prediction", "pca")}
        self.status = W.Label()
        cells = [W.VBox([W.Label(k), im]) for k, im in self.images.items()]
        self.widget = W.VBox(
            [
                W.HBox([self.dataset, self.index]),
                W.HBox([self.prompt, self.timestep]),
                W.GridBox(cells, layout=W.Layout(grid_template_columns="repeat(2, 1fr)")),
                self.status,
            ]
        )
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
        view = explorer_view(
            self.model,
            self.datasets[self.dataset.value],
            self.index.value,
            self.prompt.value or None,
            self.timestep.value,
            self.feature_map,
        )
        for k, im in self.images.items():
            im.value = _png(view[k])
        self.views += 1
        self.current = view
        self.status.value = (
            f"{self.dataset.value} #{self.index.value} · prompt "
            f"{self.prompt.value or '(model default)'!r} · t={self.timestep.value}"
        )
        return view

    def _ipython_display_(self):  # pragma: no cover - needs a frontend
        from IPython.display import display

        display(self.widget)
