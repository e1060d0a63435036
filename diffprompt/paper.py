"""The paper's tables, assembled from the tables the notebooks wrote (notebook 05).

- **T1**, backbone comparison: notebook 01's linear probes (``probe_backbones``).
- **T2**, domain generalization: notebook 02's method runs from GTA5 (to Cityscapes, BDD100K,
  Mapillary) and from SYNTHIA (to Cityscapes, 16 classes), every seed, with the baseline
  prompt mode's runs (``dg_<source>_<mode>_stats``).
- **T3**, prompt ablation: notebook 04's grid (``ablation_summary``, ``ablation_stats``).
- **T4**, test-time adaptation on ACDC fog/night/rain/snow and Dark Zurich: notebook 03
  (``tta_stats``).

Each has a companion ``T*_ci`` table: the 95% bootstrap CI of every measured mIoU and the
paired difference against the table's baseline row, with whether its CI excludes 0.

Published numbers (the project's reference list, shared/PAPER.md, with the citation of each) sit in
their own rows, labelled ``published``; measured rows are labelled with the data root and the
model they ran on. A missing input table is an error that names the notebook to run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from diffprompt.benchmarks import BENCHMARKS, GROUPS
from diffprompt.experiments.stats import format_ci
from diffprompt.experiments.tta import paper_setting
from diffprompt.io import atomic_write_text
from diffprompt.paths import REPO_ROOT, results_root
from diffprompt.results import format_mean_std
from diffprompt.viz import paper_summary_figure

#: Published single-source DG numbers, GTA5 -> Cityscapes / BDD100K / Mapillary (mIoU, %).
PUBLISHED_DG = [
    ("DAFormer-DG", "MiT-B5", "Hoyer et al., DAFormer DG variant, TPAMI 2023", 52.65, 47.89, 54.66),
    ("HRDA-DG", "MiT-B5", "Hoyer et al., HRDA DG variant, TPAMI 2023", 57.41, 49.11, 61.16),
    ("DIDEX", "SD data generation", "Niemeijer et al., DIDEX, WACV 2024", 62.0, 54.3, 63.0),
    ("Rein", "DINOv2-L", "Wei et al., Rein, CVPR 2024", 66.4, 60.4, 66.1),
    ("tqdm", "EVA02-L", "Pak et al., tqdm, ECCV 2024", 68.88, 59.18, 70.10),
    ("MFuser", "DINOv2 + EVA02-L", "MFuser, CVPR 2025", 70.19, 63.13, 71.28),
]

#: Published Cityscapes -> adverse-condition numbers: (method, backbone, citation, setting,
#: column, mIoU). Columns: "darkzurich" (Dark Zurich) or "acdc (all)".
PUBLISHED_ADVERSE = [
    (
        "this paper (DG)",
        "SD",
        "Gong et al., BMVC 2024, as reported by TADP (CVPR 2024)",
        "DG, Dark Zurich val",
        "darkzurich",
        37.0,
    ),
    (
        "TADP (DG)",
        "SD 1.5",
        "Kondapaneni et al., TADP, CVPR 2024",
        "DG, Dark Zurich val",
        "darkzurich",
        42.8,
    ),
    (
        "Rein (DG)",
        "DINOv2-L",
        "Wei et al., Rein, CVPR 2024",
        "DG, ACDC test (all)",
        "acdc (all)",
        77.56,
    ),
    (
        "SoMA (DG)",
        "DINOv2-L",
        "Yun et al., SoMA, CVPR 2025",
        "DG, ACDC test (all)",
        "acdc (all)",
        78.75,
    ),
    (
        "DAFormer (UDA)",
        "MiT-B5",
        "Hoyer et al., DAFormer, CVPR 2022",
        "UDA, Dark Zurich test",
        "darkzurich",
        53.8,
    ),
    (
        "HRDA (UDA)",
        "MiT-B5",
        "Hoyer et al., HRDA, ECCV 2022",
        "UDA, Dark Zurich test",
        "darkzurich",
        55.9,
    ),
]

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
    "ablation_stats": "notebooks/04_prompt_ablations",
    "tta_summary": "notebooks/03_tta (target 'adverse' or 'all')",
    "tta_stats": "notebooks/03_tta (target 'adverse' or 'all')",
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


def t1_backbones(
    results_dir=None, data_root: str = "miniature", model: str = "toy-sd"
) -> tuple[pd.DataFrame, str]:
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


def _dg_stats(results_dir, source: str, mode: str) -> pd.DataFrame:
    """Notebook 02's statistics of ``source``'s run (index: method, target)."""
    return read_table(f"dg_{source}_{mode}_stats", results_dir, index_col=[0, 1])


def _cell(stats: pd.DataFrame, key: tuple) -> str:
    if key not in stats.index:
        return "--"
    r = stats.loc[key]
    return format_mean_std(float(r["mIoU"]), float(r["std"]))


def t2_dg(
    results_dir=None,
    mode: str = "random_consistency",
    data_root: str = "miniature",
    model: str = "toy-sd",
) -> tuple[pd.DataFrame, str]:
    """Return T2 (DG mIoU, mean ± std over seeds: GTA5 -> C/B/M, SYNTHIA -> C over 16
    classes; the baseline prompt mode's row when notebook 02 trained one) and its note."""
    cols = ["GTA5→Cityscapes", "GTA5→BDD100K", "GTA5→Mapillary", "SYNTHIA→Cityscapes (16)"]
    gta = _dg_stats(results_dir, "gta5", mode)
    syn = _dg_stats(results_dir, "synthia", mode)
    modes = list(dict.fromkeys(gta.index.get_level_values("method")))
    rows = []
    for m in [mode] + [m for m in modes if m != mode]:
        measured = [_cell(gta, (m, t)) for t in BENCHMARKS["gta5"]]
        measured.append(_cell(syn, (m, "cityscapes")))
        name = f"ours: {m}" if m == mode else f"baseline: {m} prompt"
        seeds = int(gta.loc[(m, BENCHMARKS["gta5"][0]), "seeds"])
        row = {"method": name, "backbone": model, "rows": _label(data_root, model)}
        rows.append({**row, **dict(zip(cols, measured, strict=True)), "seeds": seeds})
    for method, backbone, cite, c, b, m in PUBLISHED_DG:
        rows.append(
            {
                "method": method,
                "backbone": backbone,
                "rows": f"published: {cite}",
                cols[0]: f"{c:.2f}",
                cols[1]: f"{b:.2f}",
                cols[2]: f"{m:.2f}",
                cols[3]: "--",
                "seeds": 1,
            }
        )
    df = pd.DataFrame(rows).set_index("method")
    note = _note(
        "T2. Single-source domain generalization, mIoU (%) over the whole target split, mean ± "
        "std over seeds (measured rows; T2_dg_ci gives the 95% bootstrap CIs and the paired "
        "difference against the baseline prompt mode); SYNTHIA→Cityscapes over SYNTHIA's 16 "
        "classes. The paper's own T2 numbers are not available.",
        NOTE_PROTOCOLS,
        NOTE_MINIATURE,
    )
    return df, note


def t2_dg_ci(results_dir=None, mode: str = "random_consistency", **_) -> tuple[pd.DataFrame, str]:
    """Return T2's intervals: per source, method and evaluated set, the mIoU's 95% bootstrap
    CI and the paired difference against the baseline mode (when there is one)."""
    parts = []
    for source in ("gta5", "synthia"):
        stats = _dg_stats(results_dir, source, mode)
        modes = list(dict.fromkeys(stats.index.get_level_values("method")))
        baseline = next((m for m in modes if m != mode), mode)
        part = format_ci(stats, ["method", "target"], baseline).reset_index()
        part.insert(0, "source", source)
        parts.append(part)
    df = pd.concat(parts).set_index(["source", "method", "target"])
    note = _note(
        "T2 intervals: mIoU (%) mean ± std over seeds, its 95% bootstrap CI over the evaluated "
        "images (seeds pooled) and, where notebook 02 trained a baseline prompt mode, the "
        "paired difference against it with whether its CI excludes 0.",
        NOTE_MINIATURE,
    )
    return df, note


# ---------------------------------------------------------------------------------------
# T3: prompt ablation
# ---------------------------------------------------------------------------------------


def t3_ablation(
    results_dir=None, data_root: str = "miniature", model: str = "toy-sd"
) -> tuple[pd.DataFrame, str]:
    """Return T3 (ablation grid, mean ± std over seeds per target) and its note."""
    # "null" is a prompt mode here, not a missing value; settings stay text ("4", "0.1")
    df = read_table(
        "ablation_summary",
        results_dir,
        keep_default_na=False,
        na_values=[""],
        dtype={"group": str, "setting": str},
    )
    names = [c[: -len(" mean")] for c in df.columns if c.endswith(" mean")]
    out = df[["group", "setting"]].copy()
    for n in names:
        pairs = zip(df[f"{n} mean"], df[f"{n} std"], strict=True)
        out[n] = [format_mean_std(m, s) for m, s in pairs]
    out["seeds"] = df["seeds"]
    out.insert(
        0,
        "cell",
        [
            s if g == "mode" else f"{g} = {s}"
            for g, s in zip(out["group"], out["setting"], strict=True)
        ],
    )
    out = out.set_index("cell")
    note = _note(
        "T3. Prompt ablation: every cell is a DG training run on the source, mean ± std of mIoU "
        "(%) over seeds. Modes: null (empty prompt), category (class tokens only), fixed (one "
        "scene prompt), random (K randomized scene prompts), random_consistency (the method), "
        "caption ([category ; each image's own caption], TADP's idea), caption_consistency "
        "(K variants of the caption with its condition words replaced, and the consistency "
        "term); K, lambda and vocabulary vary the method.",
        NOTE_NONE_PUBLISHED,
        NOTE_MINIATURE,
    )
    return out, note


def t3_ablation_ci(results_dir=None, **_) -> tuple[pd.DataFrame, str]:
    """Return T3's intervals: per cell and target, the mIoU's 95% bootstrap CI and the
    paired difference against the null prompt."""
    stats = read_table(
        "ablation_stats",
        results_dir,
        index_col=[0, 1, 2],
        keep_default_na=False,
        na_values=[""],
        dtype={"group": str, "setting": str},
    )
    df = format_ci(stats, ["group", "setting", "target"], "null")
    note = _note(
        "T3 intervals: mIoU (%) mean ± std over seeds, its 95% bootstrap CI over the target's "
        "images (seeds pooled), and the paired difference against the null prompt (the same "
        "resampled images) with whether its CI excludes 0.",
        NOTE_MINIATURE,
    )
    return df, note


# ---------------------------------------------------------------------------------------
# T4: test-time adaptation
# ---------------------------------------------------------------------------------------


def t4_tta(
    results_dir=None,
    data_root: str = "miniature",
    model: str = "toy-sd",
    targets: Sequence[str] = GROUPS["adverse"],
) -> tuple[pd.DataFrame, str]:
    """Return T4 (TTA from Cityscapes on ACDC fog/night/rain/snow and Dark Zurich, with the
    no-adaptation and baseline rows) and its note."""
    stats = read_table("tta_stats", results_dir, index_col=[0, 1])
    measured_targets = list(dict.fromkeys(stats.index.get_level_values("target")))
    missing = [t for t in targets if t not in measured_targets]
    if len(missing) == len(targets):
        raise ValueError(
            f"tables/tta_stats.csv has no column for {missing}: run "
            "notebooks/03_tta with -p target adverse"
        )
    targets = [t for t in targets if t in measured_targets]
    cols = list(targets) + ["acdc (all)"]
    rows = []
    for method in dict.fromkeys(stats.index.get_level_values("method")):
        part = stats.xs(method, level="method")
        values = {t: _cell(stats, (method, t)) for t in targets}
        rows.append(
            {
                "method": method,
                "rows": _label(data_root, model),
                "setting": paper_setting(part["id"].iloc[0]),
                **values,
                "acdc (all)": "--",
                "mean": f"{float(part.loc[targets, 'mIoU'].mean()):.2f}",
                "seeds": int(part["seeds"].iloc[0]),
            }
        )
    for method, backbone, cite, setting, column, value in PUBLISHED_ADVERSE:
        row = {
            "method": f"{method}, {backbone}",
            "rows": f"published: {cite}",
            "setting": setting,
            **dict.fromkeys(cols, "--"),
            "mean": "--",
            "seeds": 1,
        }
        row[column] = f"{value:.2f}"
        rows.append(row)
    df = pd.DataFrame(rows).set_index("method")
    note = _note(
        "T4. Cityscapes as the source; test-time adaptation learns the scene prompt on "
        "unlabeled target images (denoise: diffusion loss; entropy: prediction entropy; both), "
        "then predicts with it; TENT and a hand-written target prompt are baselines; the "
        "caption rows prompt the DG model with each target image's own caption (TADP's "
        "setting), as it is and without its condition words, and TTA from own caption learns "
        "the captions' condition words (one span for the target) starting from them. mIoU (%), "
        "mean ± std over seeds (each seed: its own DG model and TTA run); 'mean' is over the "
        "measured targets; T4_tta_ci gives the 95% bootstrap CIs and the paired difference "
        "against no adaptation.",
        NOTE_PROTOCOLS,
        NOTE_MINIATURE,
    )
    return df, note


def t4_tta_ci(results_dir=None, **_) -> tuple[pd.DataFrame, str]:
    """Return T4's intervals: per method and target, the mIoU's 95% bootstrap CI and the
    paired difference against no adaptation."""
    stats = read_table("tta_stats", results_dir, index_col=[0, 1])
    df = format_ci(stats, ["method", "target"], "no adaptation")
    note = _note(
        "T4 intervals: mIoU (%) mean ± std over seeds, its 95% bootstrap CI over the target's "
        "labeled images (seeds pooled), and the paired difference against no adaptation (the "
        "same seed's DG model, the same resampled images) with whether its CI excludes 0.",
        NOTE_MINIATURE,
    )
    return df, note


def paper_tables(
    results_dir=None,
    data_root: str = "miniature",
    model: str = "toy-sd",
    mode: str = "random_consistency",
) -> dict[str, tuple[pd.DataFrame, str]]:
    """Return every table with its note, keyed by file name (T2 shows DG prompt mode
    ``mode``). All inputs are read (and a missing one reported) before anything is returned."""
    label = dict(data_root=data_root, model=model)
    return {
        "T1_backbones": t1_backbones(results_dir, **label),
        "T2_dg": t2_dg(results_dir, mode, **label),
        "T2_dg_ci": t2_dg_ci(results_dir, mode),
        "T3_ablation": t3_ablation(results_dir, **label),
        "T3_ablation_ci": t3_ablation_ci(results_dir),
        "T4_tta": t4_tta(results_dir, **label),
        "T4_tta_ci": t4_tta_ci(results_dir),
    }


def paper_figure(tables: Mapping[str, tuple[pd.DataFrame, str]]):
    """Return one figure: T1's target mean per backbone, T3's target mean per cell, and T4's
    change from no adaptation per target (measured rows only)."""
    t1, t3, t4 = (tables[k][0] for k in ("T1_backbones", "T3_ablation", "T4_tta"))
    return paper_summary_figure(t1, t3, t4)


# ---------------------------------------------------------------------------------------
# Notebook parameters (for the README)
# ---------------------------------------------------------------------------------------


def notebook_parameters(path: str | os.PathLike) -> pd.DataFrame:
    """Return a notebook's parameters as papermill infers them (``papermill --help-notebook``):
    name, type, default and help, one row each."""
    import papermill as pm  # the notebooks extra

    rows = [
        {
            "parameter": f"`{n}`",
            "type": p["inferred_type_name"],
            "default": f"`{p['default']}`",
            "help": p["help"],
        }
        for n, p in pm.inspect_notebook(str(path)).items()
    ]
    return pd.DataFrame(rows)


def parameters_markdown(folder: str | os.PathLike) -> str:
    """Return a Markdown section per notebook of ``folder`` with its parameter table."""
    parts = []
    for path in sorted(Path(folder).glob("[0-9][0-9]_*.ipynb")):
        table = notebook_parameters(path).to_markdown(index=False)
        parts.append(
            f"<details><summary><code>{path.stem}</code></summary>\n\n{table}\n\n</details>"
        )
    return "\n\n".join(parts) + "\n"


def update_readme_parameters(readme: str | os.PathLike | None = None) -> Path:
    """Rewrite the README's parameter section (between ``<!-- params:begin -->`` and
    ``<!-- params:end -->``) from the notebooks."""
    path = Path(readme) if readme else REPO_ROOT / "README.md"
    text = path.read_text()
    head, rest = text.split("<!-- params:begin -->\n")
    _, tail = rest.split("<!-- params:end -->")
    body = parameters_markdown(path.parent / "notebooks")
    return atomic_write_text(path, f"{head}<!-- params:begin -->\n{body}<!-- params:end -->{tail}")
