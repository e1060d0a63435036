"""The paper's tables, assembled from the tables the notebooks wrote (notebook 05).

- **T1**, backbone comparison: notebook 01's linear probes (``probe_backbones``).
- **T2**, domain generalization: notebook 02's method run from GTA5 (to Cityscapes, BDD100K,
  Mapillary) and from SYNTHIA (to Cityscapes, 16 classes) (``dg_<source>_<mode>_miou``).
- **T3**, prompt ablation: notebook 04's grid (``ablation_summary``).
- **T4**, test-time adaptation on ACDC fog/night/rain/snow and Dark Zurich: notebook 03
  (``tta_summary``).

Published numbers (the project's reference list, shared/PAPER.md, with the citation of each) sit in
their own rows, labelled ``published``; measured rows are labelled with the data root and the
model they ran on. A missing input table is an error that names the notebook to run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from diffprompt.paths import results_root

#: Targets of T2 and T4 in their column order.
DG_GTA5_TARGETS = ("cityscapes", "bdd100k", "mapillary")
TTA_TARGETS = ("acdc_fog", "acdc_night", "acdc_rain", "acdc_snow", "darkzurich")

#: Published single-source DG numbers, GTA5 -> Cityscapes / BDD100K / Mapillary (mIoU, %).
PUBLISHED_DG = [
    ("DAFormer-DG", "MiT-B5", "Hoyer et al., DAFormer DG variant, TPAMI 2023", 52.65, 47.89, 54.66),
    ("HRDA-DG", "MiT-B5", "Hoyer et al., HRDA DG variant, TPAMI 2023", 57.41, 49.11, 61.16),
    ("DIDEX", "SD data generation", "Niemeijer et al., DIDEX, WACV 2024", 62.0, 54.3, 63.0),
    ("Rein", "DINOv2-L", "Wei et al., Rein, CVPR 2024", 66.4, 60.4, 66.1),
    ("tqdm", "EVA02-L", "Pak et al., tqdm, ECCV 2024", 68.88, 59.18, 70.10),
    ("MFuser", "DINOv2 + EVA02-L", "MFuser, CVPR 2025", 70.19, 63.13, 71.28),
]  # fmt: skip

#: Published Cityscapes -> adverse-condition numbers: (method, backbone, citation, setting,
#: column, mIoU). Columns: "darkzurich" (Dark Zurich) or "acdc (all)".
PUBLISHED_ADVERSE = [
    ("this paper (DG)", "SD", "Gong et al., BMVC 2024, as reported by TADP (CVPR 2024)",
     "DG, Dark Zurich val", "darkzurich", 37.0),
    ("TADP (DG)", "SD 1.5", "Kondapaneni et al., TADP, CVPR 2024", "DG, Dark Zurich val",
     "darkzurich", 42.8),
    ("Rein (DG)", "DINOv2-L", "Wei et al., Rein, CVPR 2024", "DG, ACDC test (all)",
     "acdc (all)", 77.56),
    ("SoMA (DG)", "DINOv2-L", "Yun et al., SoMA, CVPR 2025", "DG, ACDC test (all)", "acdc (all)", 78.75),
    ("DAFormer (UDA)", "MiT-B5", "Hoyer et al., DAFormer, CVPR 2022", "UDA, Dark Zurich test",
     "darkzurich", 53.8),
    ("HRDA (UDA)", "MiT-B5", "Hoyer et al., HRDA, ECCV 2022", "UDA, Dark Zurich test",
     "darkzurich", 55.9),
]  # fmt: skip

NOTE_PROTOCOLS = (
    "Published rows are copied from their papers; their protocols differ (evaluation "
    "resolution, Mapillary label mapping, GTA5 split, ACDC test vs val, Dark Zurich val vs test)."
)
NOTE_MINIATURE = (
    "Measured rows on the embedded miniature (toy-sd, 128x256 images) are not comparable to "
    "the published numbers: they test the code path and the direction of effects, not the "
    "paper's values."
)
NOTE_NONE_PUBLISHED = (
    "The paper's full text is not available, so no published numbers exist for this table."
)

#: Which notebook writes each input table (for the error of a missing one).
SOURCES = {
    "probe_backbones": "notebooks/01_feature_probing",
    "ablation_summary": "notebooks/04_prompt_ablations",
    "tta_summary": "notebooks/03_tta (target 'adverse' or 'all')",
}


def read_table(name: str, results_dir: str | os.PathLike | None = None, **kw) -> pd.DataFrame:
    """Read ``tables/<name>.csv`` of a results folder, or raise naming the notebook to run."""
    root = Path(results_dir) if results_dir else results_root()
    path = root / "tables" / f"{name}.csv"
    if not path.is_file():
        origin = SOURCES.get(name, "notebooks/02_dg_training")
        raise FileNotFoundError(
            f"{path} is missing: run {origin} first (or `make paper`, which runs every notebook)"
        )
    return pd.read_csv(path, **kw)


def _label(data_root: str, model: str) -> str:
    return f"measured ({data_root}, {model})"


def _note(*parts: str) -> str:
    return " ".join(parts)


# ---------------------------------------------------------------------------------------
# T1: backbones
# ---------------------------------------------------------------------------------------


def t1_backbones(results_dir=None, data_root: str = "miniature",
                 model: str = "toy-sd") -> tuple[pd.DataFrame, str]:  # fmt: skip
    """Return T1 (linear probe mIoU of each frozen backbone, source and targets) and its note."""
    df = read_table("probe_backbones", results_dir).set_index("backbone")
    df.insert(0, "rows", _label(data_root, model))
    note = _note(
        "T1. Linear probe on frozen features, trained on the source only (mean ± std over "
        "seeds); 'drop' is source minus target mean.",
        "The paper states that diffusion-pretrained features generalize better than supervised "
        "and self-supervised backbones.",
        NOTE_NONE_PUBLISHED,
        NOTE_MINIATURE,
    )
    return df, note


# ---------------------------------------------------------------------------------------
# T2: domain generalization
# ---------------------------------------------------------------------------------------


def _dg_miou(results_dir, source: str, mode: str) -> pd.Series:
    return read_table(f"dg_{source}_{mode}_miou", results_dir).set_index("target")["mIoU"]


def t2_dg(results_dir=None, mode: str = "random_consistency", data_root: str = "miniature",
          model: str = "toy-sd") -> tuple[pd.DataFrame, str]:  # fmt: skip
    """Return T2 (DG mIoU: GTA5 -> C/B/M, SYNTHIA -> C over 16 classes) and its note."""
    cols = ["GTA5→Cityscapes", "GTA5→BDD100K", "GTA5→Mapillary", "SYNTHIA→Cityscapes (16)"]
    gta = _dg_miou(results_dir, "gta5", mode)
    syn = _dg_miou(results_dir, "synthia", mode)
    rows = [{"method": f"ours: {mode}", "backbone": model, "rows": _label(data_root, model),
             **dict(zip(cols, [gta.get(t, np.nan) for t in DG_GTA5_TARGETS]
                        + [syn.get("cityscapes", np.nan)], strict=True))}]  # fmt: skip
    for method, backbone, cite, c, b, m in PUBLISHED_DG:
        rows.append({"method": method, "backbone": backbone, "rows": f"published: {cite}",
                     cols[0]: c, cols[1]: b, cols[2]: m, cols[3]: np.nan})  # fmt: skip
    df = pd.DataFrame(rows).set_index("method")
    note = _note(
        "T2. Single-source domain generalization, mIoU (%) over the whole target split; "
        "SYNTHIA→Cityscapes over SYNTHIA's 16 classes. The paper's own T2 numbers are not "
        "available.",
        NOTE_PROTOCOLS,
        NOTE_MINIATURE,
    )
    return df, note


# ---------------------------------------------------------------------------------------
# T3: prompt ablation
# ---------------------------------------------------------------------------------------


def _pm(mean: float, std: float) -> str:
    return (
        "--" if pd.isna(mean) else f"{mean:.2f} ± {std:.2f}" if not pd.isna(std) else f"{mean:.2f}"
    )


def t3_ablation(results_dir=None, data_root: str = "miniature",
                model: str = "toy-sd") -> tuple[pd.DataFrame, str]:  # fmt: skip
    """Return T3 (ablation grid, mean ± std over seeds per target) and its note."""
    # "null" is a prompt mode here, not a missing value; settings stay text ("4", "0.1")
    df = read_table("ablation_summary", results_dir, keep_default_na=False, na_values=[""],
                    dtype={"group": str, "setting": str})  # fmt: skip
    names = [c[: -len(" mean")] for c in df.columns if c.endswith(" mean")]
    out = df[["group", "setting"]].copy()
    for n in names:
        out[n] = [_pm(m, s) for m, s in zip(df[f"{n} mean"], df[f"{n} std"], strict=True)]
    out["seeds"] = df["seeds"]
    out.insert(0, "cell", [s if g == "mode" else f"{g} = {s}"
                           for g, s in zip(out["group"], out["setting"], strict=True)])  # fmt: skip
    out = out.set_index("cell")
    note = _note(
        "T3. Prompt ablation: every cell is a DG training run on the source, mean ± std of mIoU "
        "(%) over seeds. Modes: null (empty prompt), category (class tokens only), fixed (one "
        "scene prompt), random (K randomized scene prompts), random_consistency (the method); "
        "K, lambda and vocabulary vary the method.",
        NOTE_NONE_PUBLISHED,
        NOTE_MINIATURE,
    )
    return out, note


# ---------------------------------------------------------------------------------------
# T4: test-time adaptation
# ---------------------------------------------------------------------------------------


def t4_tta(results_dir=None, data_root: str = "miniature", model: str = "toy-sd",
           targets: Sequence[str] = TTA_TARGETS) -> tuple[pd.DataFrame, str]:  # fmt: skip
    """Return T4 (TTA from Cityscapes on ACDC fog/night/rain/snow and Dark Zurich, with the
    no-adaptation and baseline rows) and its note."""
    summary = read_table("tta_summary", results_dir, index_col=0)
    missing = [t for t in targets if t not in summary.columns]
    if missing:
        raise ValueError(f"tables/tta_summary.csv has no column for {missing}: run "
                         "notebooks/03_tta with -p target adverse")  # fmt: skip
    cols = list(targets) + ["acdc (all)"]
    rows = []
    for method, r in summary.iterrows():
        rows.append({"method": method, "rows": _label(data_root, model), "setting": "TTA"
                     if method.startswith(("TTA", "TENT")) else "DG",
                     **{t: r[t] for t in targets}, "acdc (all)": np.nan,
                     "mean": float(np.mean([r[t] for t in targets]))})  # fmt: skip
    for method, backbone, cite, setting, column, value in PUBLISHED_ADVERSE:
        row = {"method": f"{method}, {backbone}", "rows": f"published: {cite}",
               "setting": setting, **dict.fromkeys(cols, np.nan), "mean": np.nan}  # fmt: skip
        row[column] = value
        rows.append(row)
    df = pd.DataFrame(rows).set_index("method")
    note = _note(
        "T4. Cityscapes as the source; test-time adaptation learns the scene prompt on "
        "unlabeled target images (denoise: diffusion loss; entropy: prediction entropy; both), "
        "then predicts with it; TENT and a hand-written target prompt are baselines. mIoU (%); "
        "'mean' is over the measured targets.",
        NOTE_PROTOCOLS,
        NOTE_MINIATURE,
    )
    return df, note


def paper_tables(results_dir=None, data_root: str = "miniature", model: str = "toy-sd",
                 mode: str = "random_consistency") -> dict[str, tuple[pd.DataFrame, str]]:  # fmt: skip
    """Return every table with its note, keyed by file name (T2 shows DG prompt mode
    ``mode``). All inputs are read (and a missing one reported) before anything is returned."""
    label = dict(data_root=data_root, model=model)
    return {"T1_backbones": t1_backbones(results_dir, **label),
            "T2_dg": t2_dg(results_dir, mode, **label),
            "T3_ablation": t3_ablation(results_dir, **label),
            "T4_tta": t4_tta(results_dir, **label)}  # fmt: skip


def _mean_std(cell: str) -> tuple[float, float]:
    parts = str(cell).split("±")
    return float(parts[0]), float(parts[1]) if len(parts) > 1 else 0.0


def paper_figure(tables: Mapping[str, tuple[pd.DataFrame, str]]):
    """Return one figure: T1's target mean per backbone, T3's target mean per cell, and T4's
    change from no adaptation per target (measured rows only)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), gridspec_kw={"width_ratios": [1, 2, 1.6]})
    t1 = tables["T1_backbones"][0]
    ms = [_mean_std(v) for v in t1["target mean"]]
    ax = axes[0]
    ax.bar(range(len(t1)), [m for m, _ in ms], yerr=[s for _, s in ms], capsize=3,
           color=["C0"] + ["C7"] * (len(t1) - 1))  # fmt: skip
    ax.set_xticks(range(len(t1)), [str(i).replace(" + ", "\n+ ").replace(" (", "\n(")
                                   for i in t1.index], fontsize=8)  # fmt: skip
    ax.set_ylabel("target mean mIoU (%)")
    ax.set_title("T1 · linear probe, frozen backbone")

    t3 = tables["T3_ablation"][0]
    ms = [_mean_std(v) for v in t3["target mean"]]
    ax = axes[1]
    labels = list(t3.index)
    colors = ["C1" if s == "random_consistency" else "C0" if g == "mode" else "C2"
              for g, s in zip(t3["group"], t3["setting"], strict=True)]  # fmt: skip
    ax.bar(range(len(t3)), [m for m, _ in ms], yerr=[s for _, s in ms], capsize=3, color=colors)
    ax.set_xticks(range(len(t3)), labels, rotation=35, ha="right", fontsize=8)
    lo = min(m - s for m, s in ms)
    ax.set_ylim(max(0.0, lo - 3), max(m + s for m, s in ms) + 1.5)
    ax.set_title("T3 · prompt ablation (target mean, mean ± std)")

    t4 = tables["T4_tta"][0]
    measured = t4[t4["rows"].str.startswith("measured")]
    targets = [c for c in TTA_TARGETS if c in measured.columns]
    base = measured.iloc[0][targets].astype(float)
    ax = axes[2]
    others = measured.iloc[1:]
    width = 0.8 / max(1, len(others))
    for j, (name, r) in enumerate(others.iterrows()):
        ax.bar(np.arange(len(targets)) + j * width - 0.4 + width / 2,
               r[targets].astype(float) - base, width, label=name)  # fmt: skip
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(targets)), [t.replace("acdc_", "") for t in targets], fontsize=8)
    ax.set_ylabel(f"mIoU change vs '{measured.index[0]}'")
    ax.set_title("T4 · test-time adaptation (Cityscapes source)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------
# Notebook parameters (for the README)
# ---------------------------------------------------------------------------------------


def notebook_parameters(path: str | os.PathLike) -> pd.DataFrame:
    """Return a notebook's parameters as papermill infers them (``papermill --help-notebook``):
    name, type, default and help, one row each."""
    import papermill as pm

    rows = [{"parameter": f"`{n}`", "type": p["inferred_type_name"], "default": f"`{p['default']}`",
             "help": p["help"]} for n, p in pm.inspect_notebook(str(path)).items()]  # fmt: skip
    return pd.DataFrame(rows)


def parameters_markdown(folder: str | os.PathLike) -> str:
    """Return a Markdown section per notebook of ``folder`` with its parameter table."""
    parts = []
    for path in sorted(Path(folder).glob("[0-9][0-9]_*.ipynb")):
        table = notebook_parameters(path).to_markdown(index=False)
        parts.append(f"<details><summary><code>{path.stem}</code></summary>\n\n{table}\n\n"
                     "</details>")  # fmt: skip
    return "\n\n".join(parts) + "\n"


def update_readme_parameters(readme: str | os.PathLike | None = None) -> Path:
    """Rewrite the README's parameter section (between ``<!-- params:begin -->`` and
    ``<!-- params:end -->``) from the notebooks."""
    from diffprompt.paths import REPO_ROOT
    from diffprompt.io import atomic_write_text

    path = Path(readme) if readme else REPO_ROOT / "README.md"
    text = path.read_text()
    head, rest = text.split("<!-- params:begin -->\n")
    _, tail = rest.split("<!-- params:end -->")
    body = parameters_markdown(path.parent / "notebooks")
    return atomic_write_text(path, f"{head}<!-- params:begin -->\n{body}<!-- params:end -->{tail}")
