"""Every figure of the toolkit, and the JupyterLab explorer.

- :mod:`~diffprompt.viz.images`: pictures as arrays (label overlays, a feature map's PCA
  picture) and grids of them;
- :mod:`~diffprompt.viz.plots`: the figures of the notebooks' tables and the paper's
  summary figure;
- :mod:`~diffprompt.viz.explorer`: the ipywidgets explorer (``Explorer``), ipywidgets
  imported only when one is built.

Matplotlib and seaborn are imported inside the functions that draw.
"""

from diffprompt.viz.explorer import Explorer, explorer_view
from diffprompt.viz.images import (
    feature_pca_image,
    overlay,
    panel_grid,
    sample_grid,
    to_uint8_image,
)
from diffprompt.viz.plots import (
    ablation_plot,
    class_frequency_plot,
    dg_curve_figure,
    dg_loss_figure,
    dg_prediction_figure,
    gap_scatter,
    paper_summary_figure,
    pca_figure,
    per_class_heatmap,
    sweep_figure,
    themed,
    tta_budget_figure,
    tta_change_figure,
    tta_curve_figure,
    tta_prediction_figure,
)

__all__ = [
    "Explorer",
    "ablation_plot",
    "class_frequency_plot",
    "dg_curve_figure",
    "dg_loss_figure",
    "dg_prediction_figure",
    "explorer_view",
    "feature_pca_image",
    "gap_scatter",
    "overlay",
    "panel_grid",
    "paper_summary_figure",
    "pca_figure",
    "per_class_heatmap",
    "sample_grid",
    "sweep_figure",
    "themed",
    "to_uint8_image",
    "tta_budget_figure",
    "tta_change_figure",
    "tta_curve_figure",
    "tta_prediction_figure",
]
