"""The figures of the notebooks' tables: class frequencies, DG losses and predictions, the
prompt ablation, TTA curves and predictions, the probe sweeps, the gap measures, the
feature PCA, and the paper's summary figure.

Each function takes what it draws (tables, arrays, precomputed predictions) and returns a
matplotlib figure drawn in the toolkit's one seaborn theme (:data:`THEME`, :func:`themed`;
classes always in the Cityscapes palette); matplotlib and seaborn are imported inside them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import pandas as pd

from diffprompt.benchmarks import GROUPS
from diffprompt.labels import CLASSES, PALETTE
from diffprompt.results import parse_mean_std
from diffprompt.viz.images import overlay, panel_grid, to_uint8_image

#: The toolkit's theme: seaborn's white grid at the paper context, its colour-blind palette
#: for methods and domains; classes always take the Cityscapes palette (:func:`class_colors`).
THEME = {"style": "whitegrid", "context": "paper", "palette": "colorblind", "font_scale": 1.15}


@contextmanager
def themed():
    """Draw in :data:`THEME` (seaborn's style, context and palette, restored afterwards)."""
    import seaborn as sns

    with (
        sns.axes_style(THEME["style"]),
        sns.plotting_context(THEME["context"], font_scale=THEME["font_scale"]),
        sns.color_palette(THEME["palette"]),
    ):
        yield


def _themed(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def draw(*args, **kwargs):
        with themed():
            return fn(*args, **kwargs)

    return draw


def class_colors(names: Sequence[str]) -> list[tuple[float, float, float]]:
    """The Cityscapes palette colour (RGB in [0, 1]) of each class name."""
    return [tuple(float(v) / 255 for v in PALETTE[CLASSES.index(n)]) for n in names]


def _class_strip(fig, ax, names: Sequence[str]) -> None:
    """A strip of the classes' palette colours above a heatmap whose columns are classes."""
    pos = ax.get_position()
    strip = fig.add_axes((pos.x0, pos.y1 + 0.01, pos.width, 0.025))
    strip.imshow(np.array(class_colors(names))[None], aspect="auto")
    strip.set_axis_off()


def _class_heatmap(values: pd.DataFrame, title: str, **heatmap):
    """A heatmap of a (rows x classes) table, 6.5-pt annotations, the classes' palette strip
    above it and ``title`` above that; ``heatmap``: seaborn's annotation, colour map and
    colour bar arguments."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(14, 0.42 * len(values) + 2.2))
    sns.heatmap(values, annot_kws={"fontsize": 6.5}, linewidths=0.4, ax=ax, **heatmap)
    ax.set(xlabel="", ylabel="")
    ax.set_xticklabels(ax.get_xticklabels(), rotation=40, ha="right")
    fig.tight_layout()
    _class_strip(fig, ax, list(values.columns))
    ax.set_title(title, pad=26)
    return fig


@_themed
def class_frequency_plot(freq: pd.DataFrame, title: str = "pixel share of each class per domain"):
    """Return a heatmap of a (domains x classes) DataFrame of pixel shares: the colour is the
    share's log10 (rare classes stay visible), each cell annotated with its % share."""
    share = freq * 100
    text = share.map(lambda v: "0" if v == 0 else f"{v:.2g}" if v < 10 else f"{v:.0f}")
    return _class_heatmap(
        np.log10(share.clip(lower=10**-1.5)),
        title,
        annot=text,
        fmt="",
        cmap="mako_r",
        vmin=-1.5,
        vmax=2,
        cbar_kws={"label": "log10 % of labeled pixels", "pad": 0.01},
    )


@_themed
def per_class_heatmap(per_class: pd.DataFrame, title: str):
    """Return a heatmap of per-class IoU (%) (rows: evaluated sets, columns: classes; NaN:
    the class absent from the set), annotated, on one 0-100 scale."""
    return _class_heatmap(
        per_class.astype(float),
        title,
        annot=True,
        fmt=".0f",
        cmap="viridis",
        vmin=0,
        vmax=100,
        cbar_kws={"label": "IoU (%)", "pad": 0.01},
    )


# ---------------------------------------------------------------------------------------
# DG runs (notebook 02) and the ablation (notebook 04)
# ---------------------------------------------------------------------------------------


@_themed
def dg_loss_figure(log: Sequence[dict], consistency: str):
    """Return a figure of a DG run's training loss per step (``log``: the run's state log),
    cross-entropy and consistency (``consistency``: its kind)."""
    import matplotlib.pyplot as plt

    df = pd.DataFrame(log)
    fig, ax = plt.subplots(1, 2, figsize=(9, 3))
    ax[0].plot(df["step"], df["ce"], lw=1)
    ax[0].set(xlabel="step", ylabel="cross-entropy", title="source cross-entropy")
    ax[1].plot(df["step"], df["consistency"], lw=1, color="C1")
    ax[1].set(xlabel="step", ylabel="consistency", title=f"consistency ({consistency})")
    fig.tight_layout()
    return fig


@_themed
def dg_curve_figure(curve: pd.DataFrame, reference: float | None = None, label: str = ""):
    """Return a figure of DG training curves (:func:`diffprompt.experiments.dg.curve_table`):
    the curve set's mIoU against the step, one line per (method, seed); ``reference``: a
    horizontal line (e.g. the linear probe's mIoU on the same set), named ``label``."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    methods = list(dict.fromkeys(curve["method"]))
    for i, method in enumerate(methods):
        part = curve[curve["method"] == method]
        for j, (_seed, run) in enumerate(part.groupby("seed", sort=True)):
            ax.plot(
                run["step"],
                run["mIoU"],
                color=f"C{i}",
                lw=1.2,
                alpha=0.9,
                marker="o",
                ms=3,
                label=method if j == 0 else None,
            )
    if reference is not None:
        ax.axhline(reference, color="0.3", ls="--", lw=1, label=label or "reference")
    name = curve["set"].iloc[0] if len(curve) else ""
    ax.set(xlabel="step", ylabel=f"mIoU (%), {name}", title="DG training curve (each seed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def dg_prediction_figure(trainer, sets: Mapping[str, object], index: int = 0):
    """Return a figure: per evaluated set, image ``index``, its labels and the prediction of
    a DG run (``trainer``: a :class:`diffprompt.dg.Trainer`)."""
    rows = {}
    for name, ds in sets.items():
        s = ds[index]
        pred = trainer.predictor(ds)(s["image"][None], [index])[0].cpu()
        image = s["image"]
        rows[name] = [to_uint8_image(image), overlay(image, s["mask"]), overlay(image, pred)]
    columns = ["image", "ground truth", f"prediction ({trainer.cfg.prompt_mode})"]
    return panel_grid(rows, columns)


def _interval_panels(
    table: pd.DataFrame, rows: Sequence[str], panels: str, value: str, low: str, high: str
):
    """Draw one horizontal interval plot per ``panels`` value: a point at ``value`` and a bar
    from ``low`` to ``high`` for each row label (``rows``, in that order), coloured by the
    label's group (its text before ": "). Returns (figure, axes)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    names = list(dict.fromkeys(table[panels]))
    fig, axes = plt.subplots(
        1,
        len(names),
        figsize=(3.3 * len(names) + 2.2, 0.32 * len(rows) + 1.4),
        squeeze=False,
        sharey=True,
    )
    groups = list(dict.fromkeys(r.split(": ")[0] for r in rows))
    colors = dict(zip(groups, sns.color_palette(n_colors=len(groups)), strict=True))
    y = {r: i for i, r in enumerate(rows)}
    for ax, name in zip(axes[0], names, strict=True):
        part = table[table[panels] == name]
        for _, r in part.iterrows():
            c = colors[r["row"].split(": ")[0]]
            ax.errorbar(
                r[value],
                y[r["row"]],
                xerr=[[r[value] - r[low]], [r[high] - r[value]]],
                fmt="o",
                ms=4,
                color=c,
                capsize=2,
                lw=1.2,
            )
        ax.set_title(name)
        ax.set_yticks(range(len(rows)), rows)
        ax.set_ylim(len(rows) - 0.5, -0.5)
    return fig, axes[0]


@_themed
def ablation_plot(stats: pd.DataFrame, reference: str = "null"):
    """Return the prompt-ablation grid (:func:`diffprompt.experiments.ablation.
    ablation_statistics`): per target (panels), each cell's mIoU (mean over seeds) with its
    95% bootstrap CI over images, a dashed line at the ``reference`` setting's mIoU."""
    table = stats.reset_index() if "group" not in stats.columns else stats.copy()
    table["row"] = table["group"].astype(str) + ": " + table["setting"].astype(str)
    rows = list(dict.fromkeys(table["row"]))
    fig, axes = _interval_panels(table, rows, "target", "mIoU", "low", "high")
    for ax, target in zip(axes, dict.fromkeys(table["target"]), strict=True):
        ref = table[(table["target"] == target) & (table["setting"].astype(str) == reference)]
        if len(ref):
            ax.axvline(float(ref["mIoU"].iloc[0]), color="0.4", ls="--", lw=0.9)
        ax.set_xlabel("mIoU (%)")
    fig.suptitle(f"prompt ablation: mIoU with 95% bootstrap CIs (dashed: {reference})", fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------
# Test-time adaptation (notebook 03)
# ---------------------------------------------------------------------------------------


@_themed
def tta_curve_figure(curves: Sequence[dict], target: str):
    """Return a plot of mIoU against TTA steps, one line per objective."""
    import matplotlib.pyplot as plt

    df = pd.DataFrame(curves)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for obj, part in df.groupby("objective", sort=False):
        ax.plot(part["step"], part["mIoU"], marker="o", ms=3, label=obj)
    ax.set(xlabel="TTA step", ylabel="mIoU (%)", title=f"{target}: mIoU against TTA steps")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


@_themed
def tta_change_figure(stats: pd.DataFrame, reference: str = "no adaptation"):
    """Return the change of every TTA table row from ``reference`` (the paired difference
    of :func:`diffprompt.experiments.tta.tta_statistics`, same images and seeds) with its
    95% bootstrap CI, per target (panels); a change whose CI excludes 0 is a filled point."""
    table = stats.reset_index() if "target" not in stats.columns else stats.copy()
    table = table[table["method"] != reference].dropna(subset=["delta"])
    table["row"] = table["method"]  # coloured by the method's family (its text before ": ")
    rows = list(dict.fromkeys(table["row"]))
    fig, axes = _interval_panels(table, rows, "target", "delta", "delta_low", "delta_high")
    for ax in axes:
        ax.axvline(0, color="0.2", lw=0.9)
        ax.set_xlabel(f"mIoU change vs {reference}")
    for ax, target in zip(axes, dict.fromkeys(table["target"]), strict=True):
        part = table[(table["target"] == target) & ~table["excludes_zero"].astype(bool)]
        y = [rows.index(r) for r in part["row"]]
        ax.scatter(part["delta"], y, s=14, color="white", zorder=3)  # open: not resolved
    fig.suptitle(
        f"TTA: change from {reference}, 95% paired bootstrap CIs (open: CI holds 0)", fontsize=10
    )
    fig.tight_layout()
    return fig


@_themed
def tta_budget_figure(curves: pd.DataFrame):
    """Return the TTA budget study (:func:`diffprompt.experiments.tta.budget_study`): per
    target (columns), the change of mIoU from no adaptation (top) and the prompt's relative
    change (bottom) against TTA steps, one line per (objective, lr), mean ± std over seeds."""
    import matplotlib.pyplot as plt

    targets = list(dict.fromkeys(curves["target"]))
    fig, axes = plt.subplots(2, len(targets), figsize=(4.6 * len(targets), 6), squeeze=False)
    combos = list(dict.fromkeys(zip(curves["objective"], curves["lr"], strict=True)))
    for j, target in enumerate(targets):
        part = curves[curves["target"] == target]
        for i, (objective, lr) in enumerate(combos):
            run = part[(part["objective"] == objective) & (part["lr"] == lr)]
            g = run.groupby("step")
            style = dict(color=f"C{i}", marker="o", ms=3, label=f"{objective}, lr {lr:g}")
            for row, column in enumerate(("change", "relative change")):
                mean, std = g[column].mean(), g[column].std(ddof=1).fillna(0)
                ax = axes[row, j]
                ax.plot(mean.index, mean.values, **style)
                ax.fill_between(mean.index, mean - std, mean + std, color=f"C{i}", alpha=0.15)
        axes[0, j].axhline(0, color="0.3", lw=0.8)
        n = part["images"].iloc[0] if len(part) else 0
        axes[0, j].set(title=f"{target} ({n} images)", ylabel="Δ mIoU vs no adaptation")
        axes[1, j].set(xlabel="TTA step", ylabel="prompt's relative change")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    seeds = curves["seed"].nunique()
    fig.suptitle(f"TTA budget: mean ± std over {seeds} seeds", fontsize=10)
    fig.tight_layout()
    return fig


def tta_prediction_figure(example: tuple, predictions: Mapping[str, np.ndarray], target: str):
    """Return a figure of one target image (``example``: (image, mask)): the image, its
    labels and the prediction (H, W) of every method of ``predictions`` (name -> map), four
    panels a row."""
    image, mask = example
    panels = {"image": to_uint8_image(image), "ground truth": overlay(image, mask)}
    for name, pred in predictions.items():
        panels[name] = overlay(image, pred)
    names = list(panels)
    cols = min(4, len(names))
    blank = panels["image"] * 0 + 255
    rows = {}
    for r in range(math.ceil(len(names) / cols)):
        chunk = names[r * cols : (r + 1) * cols]
        chunk += [None] * (cols - len(chunk))
        rows[" " * r] = [panels[n] if n else blank for n in chunk]
    fig = panel_grid(rows, [""] * cols, width=3.2 * cols)
    axes_rows = [fig.axes[i : i + cols] for i in range(0, len(fig.axes), cols)]
    for r, ax_row in enumerate(axes_rows):
        for c, ax in enumerate(ax_row):
            i = r * cols + c
            ax.set_title(names[i] if i < len(names) else "", fontsize=7)
    fig.suptitle(f"{target}: before and after test-time adaptation", fontsize=9, y=1.02)
    return fig


# ---------------------------------------------------------------------------------------
# Feature probing (notebook 01)
# ---------------------------------------------------------------------------------------


@_themed
def sweep_figure(sweeps: pd.DataFrame):
    """Return one panel per sweep: source and target-mean mIoU against the swept value."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    names = list(dict.fromkeys(sweeps["sweep"]))
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.3), squeeze=False)
    long = sweeps.melt(
        id_vars=["sweep", "value"],
        value_vars=["source", "target mean"],
        var_name="set",
        value_name="mIoU",
    )
    long["value"] = long["value"].astype(str)
    for i, (ax, name) in enumerate(zip(axes[0], names, strict=True)):
        part = long[long["sweep"] == name]
        sns.pointplot(
            part,
            x="value",
            y="mIoU",
            hue="set",
            markers=["o", "s"],
            markersize=4,
            linewidth=1.2,
            ax=ax,
            legend=i == 0,
        )
        ax.set(title=name, xlabel="", ylabel="mIoU (%)" if i == 0 else "")
        ax.tick_params(axis="x", labelsize=7, rotation=30)
    fig.tight_layout()
    return fig


@_themed
def gap_scatter(table: pd.DataFrame, corr: pd.DataFrame):
    """Return scatter plots of the mIoU drop against 1 - CKA and MMD, one colour per backbone
    (``table``: backbone, target, CKA, MMD, drop; ``corr``: their correlations, with a
    "pearson r" column per measure)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    measures = (("1 - CKA", 1 - table["CKA"]), ("MMD", table["MMD"]))
    for ax, (name, x) in zip(axes, measures, strict=True):
        for i, (b, part) in enumerate(table.groupby("backbone", sort=False)):
            ax.scatter(x[part.index], part["drop"], s=18, color=f"C{i}", label=b)
        r = corr.loc[name, "pearson r"]
        ax.set(
            xlabel=f"{name} (source vs target features)",
            ylabel="mIoU drop (source - target)",
            title=f"{name}: Pearson r = {r:.2f}",
        )
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


@_themed
def pca_figure(
    points: np.ndarray,
    domains: np.ndarray,
    classes: np.ndarray,
    names: Sequence[str],
    title: str,
):
    """Return a figure of 2-D PCA points (N, 2) of pixel features, coloured by domain (left;
    ``domains`` (N,) indexes ``names``) and by class (right, the Cityscapes palette;
    ``classes`` (N,) trainIds)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for di, name in enumerate(names):
        m = domains == di
        axes[0].scatter(points[m, 0], points[m, 1], s=2, alpha=0.4, color=f"C{di % 10}", label=name)
    axes[0].legend(fontsize=7, markerscale=5)
    axes[0].set_title(f"{title}: by domain", fontsize=9)
    axes[1].scatter(points[:, 0], points[:, 1], s=2, alpha=0.4, c=PALETTE[classes] / 255.0)
    for c in sorted(set(classes.tolist())):
        axes[1].scatter([], [], s=12, color=PALETTE[c] / 255.0, label=CLASSES[c])
    axes[1].legend(fontsize=6, ncol=2, markerscale=1.5)
    axes[1].set_title("by class", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------
# The paper's summary figure (notebook 05)
# ---------------------------------------------------------------------------------------


@_themed
def paper_summary_figure(t1: pd.DataFrame, t3: pd.DataFrame, t4: pd.DataFrame):
    """Return one figure of the paper's tables: T1's target mean per backbone, T3's target
    mean per cell (both "mean ± std" cells), and T4's change from no adaptation per adverse
    target (measured rows only)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), gridspec_kw={"width_ratios": [1, 2, 1.6]})
    ms = [parse_mean_std(v) for v in t1["target mean"]]
    ax = axes[0]
    colors = ["C0"] + ["C7"] * (len(t1) - 1)
    ax.bar(range(len(t1)), [m for m, _ in ms], yerr=[s for _, s in ms], capsize=3, color=colors)
    ticks = [str(i).replace(" + ", "\n+ ").replace(" (", "\n(") for i in t1.index]
    ax.set_xticks(range(len(t1)), ticks, fontsize=8)
    ax.set_ylabel("target mean mIoU (%)")
    ax.set_title("T1 · linear probe, frozen backbone")

    ms = [parse_mean_std(v) for v in t3["target mean"]]
    ax = axes[1]
    labels = list(t3.index)
    cells = zip(t3["group"], t3["setting"], strict=True)
    colors = [
        "C1" if s == "random_consistency" else "C0" if g == "mode" else "C2" for g, s in cells
    ]
    ax.bar(range(len(t3)), [m for m, _ in ms], yerr=[s for _, s in ms], capsize=3, color=colors)
    ax.set_xticks(range(len(t3)), labels, rotation=35, ha="right", fontsize=8)
    lo = min(m - s for m, s in ms)
    ax.set_ylim(max(0.0, lo - 3), max(m + s for m, s in ms) + 1.5)
    ax.set_title("T3 · prompt ablation (target mean, mean ± std)")

    measured = t4[t4["rows"].str.startswith("measured")]
    targets = [c for c in GROUPS["adverse"] if c in measured.columns]

    def means(row) -> np.ndarray:
        return np.array([parse_mean_std(str(row[t]))[0] for t in targets])

    base = means(measured.iloc[0])
    ax = axes[2]
    others = measured.iloc[1:]
    width = 0.8 / max(1, len(others))
    for j, (name, r) in enumerate(others.iterrows()):
        offsets = np.arange(len(targets)) + j * width - 0.4 + width / 2
        ax.bar(offsets, means(r) - base, width, label=name)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(targets)), [t.replace("acdc_", "") for t in targets], fontsize=8)
    ax.set_ylabel(f"mIoU change vs '{measured.index[0]}'")
    ax.set_title("T4 · test-time adaptation (Cityscapes source)")
    # below the axes: inside, it hid bars of the last targets
    ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    fig.tight_layout()
    return fig
