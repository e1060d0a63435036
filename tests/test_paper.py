"""The paper's tables (notebook 05) from known input tables, and the JupyterLab explorer."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import papermill as pm
import pytest

from diffprompt.benchmarks import GROUPS
from diffprompt.paper import PUBLISHED_ADVERSE, PUBLISHED_DG, paper_tables

TTA_TARGETS = GROUPS["adverse"]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def inputs(tmp_path) -> Path:
    """A results folder holding the five tables notebooks 01-04 write, with known values."""
    t = tmp_path / "results" / "tables"
    t.mkdir(parents=True)
    pd.DataFrame(
        {
            "backbone": ["diffusion (pretrained)", "supervised", "random"],
            "source": ["40.00 ± 1.00", "30.00 ± 0.50", "20.00 ± 0.10"],
            "cityscapes": ["35.00 ± 1.00", "25.00 ± 0.50", "18.00 ± 0.10"],
            "target mean": ["30.00 ± 1.00", "20.00 ± 0.50", "15.00 ± 0.10"],
            "drop": ["10.00 ± 0.20", "10.00 ± 0.30", "5.00 ± 0.00"],
            "seeds": [3, 3, 3],
        }
    ).to_csv(t / "probe_backbones.csv", index=False)

    def stats(keys: dict, values: list[tuple], deltas: bool = True) -> pd.DataFrame:
        """Rows of the notebooks' *_stats tables: (mIoU, std, delta or None) per row."""
        rows = []
        for i, (m, sd, d) in enumerate(values):
            row = {k: v[i] for k, v in keys.items()}
            row.update(mIoU=m, std=sd, seeds=3, images=60, low=m - 1.0, high=m + 1.0)
            if deltas:
                row.update(
                    delta=d,
                    delta_low=None if d is None else d - 0.5,
                    delta_high=None if d is None else d + 0.5,
                    excludes_zero=None if d is None else abs(d) > 0.5,
                )
            rows.append(row)
        return pd.DataFrame(rows)

    gta_targets = ["gta5 (source val)", "cityscapes", "bdd100k", "mapillary"]
    stats(
        {"method": ["random_consistency"] * 4, "target": gta_targets},
        [(41.0, 1.0, None), (39.5, 1.0, None), (34.25, 0.5, None), (32.0, 0.25, None)],
        deltas=False,
    ).to_csv(t / "dg_gta5_random_consistency_stats.csv", index=False)
    stats(
        {"method": ["random_consistency"] * 2, "target": ["synthia held-out", "cityscapes"]},
        [(50.0, 2.0, None), (27.5, 0.5, None)],
        deltas=False,
    ).to_csv(t / "dg_synthia_random_consistency_stats.csv", index=False)
    pd.DataFrame(
        {
            "group": ["mode", "mode", "K"],
            "setting": ["null", "random_consistency", "4"],
            "cityscapes mean": [31.5, 30.25, 30.0],
            "cityscapes std": [1.5, 1.0, np.nan],
            "target mean mean": [24.0, 23.0, 23.5],
            "target mean std": [0.5, 0.25, np.nan],
            "seeds": [3, 3, 1],
        }
    ).to_csv(t / "ablation_summary.csv", index=False)
    stats(
        {
            "group": ["mode", "mode", "K"],
            "setting": ["null", "random_consistency", "4"],
            "target": ["cityscapes"] * 3,
        },
        [(31.5, 1.5, None), (30.25, 1.0, -1.25), (30.0, 0.0, -1.5)],
    ).to_csv(t / "ablation_stats.csv", index=False)
    methods = ["no adaptation"] * 5 + ["TTA prompt: denoise"] * 5
    tta = stats(
        {"method": methods, "target": list(TTA_TARGETS) * 2},
        [(v, 0.5, None) for v in (30.0, 20.0, 25.0, 15.0, 22.0)]
        + [
            (v, 0.5, d)
            for v, d in zip((31.0, 21.0, 25.0, 16.0, 23.0), (1, 1, 0, 1, 1), strict=True)
        ],
    )
    tta.insert(2, "id", ["none"] * 5 + ["prompt_denoise"] * 5)
    tta.insert(3, "setting", ["-"] * 5 + ["offline"] * 5)
    tta.to_csv(t / "tta_stats.csv", index=False)
    return tmp_path / "results"


def test_tables_take_the_measured_numbers_and_label_published_rows(inputs):
    tables = paper_tables(inputs)
    assert list(tables) == [
        "T1_backbones",
        "T2_dg",
        "T2_dg_ci",
        "T3_ablation",
        "T3_ablation_ci",
        "T4_tta",
        "T4_tta_ci",
    ]
    t2, note = tables["T2_dg"]
    ours = t2.iloc[0]
    assert ours["rows"].startswith("measured (miniature, toy-sd)")
    assert [
        ours["GTA5→Cityscapes"],
        ours["GTA5→BDD100K"],
        ours["GTA5→Mapillary"],
        ours["SYNTHIA→Cityscapes (16)"],
    ] == ["39.50 ± 1.00", "34.25 ± 0.50", "32.00 ± 0.25", "27.50 ± 0.50"]
    assert ours["seeds"] == 3
    published = t2[t2["rows"].str.startswith("published: ")]
    assert len(published) == len(PUBLISHED_DG)
    assert published.loc["Rein", "GTA5→BDD100K"] == "60.40"
    assert "not comparable" in note and "protocols differ" in note
    t3, _ = tables["T3_ablation"]
    assert t3.loc["null", "target mean"] == "24.00 ± 0.50"
    assert t3.loc["K = 4", "cityscapes"] == "30.00"  # one seed: no std
    t4, note4 = tables["T4_tta"]
    measured = t4[t4["rows"].str.startswith("measured")]
    assert measured.loc["TTA prompt: denoise", "mean"] == "23.20"
    assert measured.loc["TTA prompt: denoise", "acdc_fog"] == "31.00 ± 0.50"
    assert measured.loc["no adaptation", "setting"] == "DG"
    assert measured.loc["TTA prompt: denoise", "setting"] == "TTA"  # from the id, not the label
    assert len(t4) == 2 + len(PUBLISHED_ADVERSE)
    assert t4.loc["this paper (DG), SD", "darkzurich"] == "37.00"
    assert "not comparable" in note4
    ci4, _ = tables["T4_tta_ci"]
    row = ci4.loc[("TTA prompt: denoise", "acdc_fog")]
    assert row["95% CI"] == "[30.00, 32.00]" and row["Δ vs no adaptation"] == "+1.00"
    assert row["Δ 95% CI"] == "[0.50, 1.50]" and row["excludes 0"] == "yes"
    assert ci4.loc[("TTA prompt: denoise", "acdc_rain"), "excludes 0"] == "no"
    assert ci4.loc[("no adaptation", "acdc_fog"), "excludes 0"] == "--"
    ci3, _ = tables["T3_ablation_ci"]
    assert ci3.loc[("mode", "random_consistency", "cityscapes"), "Δ vs null"] == "-1.25"
    ci2, _ = tables["T2_dg_ci"]
    assert ci2.loc[("gta5", "random_consistency", "cityscapes"), "95% CI"] == "[38.50, 40.50]"
    t1, note1 = tables["T1_backbones"]
    assert t1.loc["supervised", "target mean"] == "20.00 ± 0.50" and "no published" in note1


def test_a_missing_input_names_the_notebook_to_run(inputs):
    (inputs / "tables" / "ablation_summary.csv").unlink()
    with pytest.raises(FileNotFoundError, match="04_prompt_ablations"):
        paper_tables(inputs)
    (inputs / "tables" / "dg_synthia_random_consistency_stats.csv").unlink()
    with pytest.raises(FileNotFoundError, match="02_dg_training"):
        paper_tables(inputs)


def test_tta_stats_without_an_adverse_target_is_a_clear_error(inputs):
    path = inputs / "tables" / "tta_stats.csv"
    df = pd.read_csv(path)
    df[df["target"] == "acdc_fog"].assign(target="cityscapes").to_csv(path, index=False)
    with pytest.raises(ValueError, match="target adverse"):
        paper_tables(inputs)


def test_paper_tables_notebook_writes_every_format_and_a_figure(inputs, tmp_path):
    pm.execute_notebook(
        str(ROOT / "notebooks" / "05_paper_tables.ipynb"),
        str(tmp_path / "05.ipynb"),
        parameters=dict(results_dir=str(inputs)),
        kernel_name="python3",
        progress_bar=False,
    )
    manifest = json.loads((inputs / "manifests" / "05_paper_tables.json").read_text())
    for name in ("T1_backbones", "T2_dg", "T3_ablation", "T4_tta", "T4_tta_ci"):
        for ext in ("csv", "md", "tex"):
            assert f"tables/paper_{name}.{ext}" in manifest["outputs"]
        md = (inputs / "tables" / f"paper_{name}.md").read_text()
        assert "not comparable" in md  # the note sits under the table
        assert "nan" not in md.lower()  # missing cells show as --
        tex = (inputs / "tables" / f"paper_{name}.tex").read_text()
        assert "\\toprule" in tex and "\\caption{" in tex
        assert "nan" not in md  # missing cells show as --
    for ext in ("png", "pdf"):
        assert (inputs / "figures" / f"paper_summary.{ext}").stat().st_size > 1000
    t2 = pd.read_csv(inputs / "tables" / "paper_T2_dg.csv", index_col=0)
    assert t2.loc["ours: random_consistency", "GTA5→Cityscapes"] == "39.50 ± 1.00"


@pytest.mark.parametrize(
    "path", sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.stem
)
def test_help_notebook_lists_every_parameter_with_type_and_help(path):
    params = pm.inspect_notebook(str(path))
    assert params
    for name, p in params.items():
        assert p["inferred_type_name"] not in ("None", ""), f"{path.name}: {name} has no type"
        assert p["help"].strip(), f"{path.name}: {name} has no help"
        assert "fmt:" not in p["help"], f"{path.name}: {name}: a formatter comment as help"


# ---------------------------------------------------------------------------------------
# the explorer


def test_explorer_callbacks_update_the_views(tiny_sd, mini_root):
    import torch

    from diffprompt import labels
    from diffprompt.build import build_model
    from diffprompt.data import build_dataset
    from diffprompt.dg.config import TrainConfig
    from diffprompt.viz import Explorer, feature_pca_image, to_uint8_image
    from diffprompt.viz.explorer import explorer_view, image_iou

    torch.manual_seed(0)
    model = build_model(TrainConfig(model=str(tiny_sd), prompt_mode="fixed"))
    sets = {
        "cityscapes": build_dataset("cityscapes", "val", mini_root),
        "acdc_night": build_dataset("acdc_night", "val", mini_root),
    }
    ex = Explorer(model, sets, "a photo of a street", timesteps=(1, 400))
    assert ex.views == 1 and ex.encoded == 1
    assert set(ex.current) == {"image", "label", "prediction", "pca", "iou"}
    h, w = sets["cityscapes"][0]["image"].shape[-2:]
    pictures = {k: v for k, v in ex.current.items() if k != "iou"}
    assert all(v.shape == (h, w, 3) and v.dtype == np.uint8 for v in pictures.values())
    assert all(im.value[:4] == b"\x89PNG" for im in ex.images.values())
    # the image's per-class IoU: against its own prediction, of the classes either holds
    sample = sets["cityscapes"][0]
    direct = explorer_view(model, sets["cityscapes"], 0, "a photo of a street", 1)
    assert ex.current["iou"] == direct["iou"] and np.array_equal(
        ex.current["prediction"], direct["prediction"]
    )  # the cached latents give the view of the direct path
    present = {labels.CLASSES[c] for c in sample["mask"].unique().tolist() if c != 255}
    assert present <= set(ex.current["iou"]) and "mean" in ex.iou.value
    assert image_iou(sample["mask"], sample["mask"]) == dict.fromkeys(
        [n for n in labels.CLASSES if n in present], 100.0
    )
    first = ex.current
    ex.timestep.value = 400  # the UNet at another timestep: other features, the same latents
    assert ex.views == 2 and ex.encoded == 1 and not np.array_equal(ex.current["pca"], first["pca"])
    assert np.array_equal(ex.current["image"], first["image"])
    assert model.backbone.cfg.timesteps == (1,)  # restored after the view
    ex.prompt.value = "a photo at night"
    assert ex.views == 3 and ex.encoded == 1 and "night" in ex.status.value
    ex.timestep.value = 1
    ex.prompt.value = "a photo of a street"  # seen before: shown again, nothing recomputed
    assert ex.views == 4 and ex.encoded == 1  # (t=1 at night was new)
    assert np.array_equal(ex.current["pca"], first["pca"])
    ex.index.value = 1
    assert ex.encoded == 2
    ex.dataset.value = "acdc_night"
    assert ex.dataset.value in ex.status.value and ex.index.max == len(sets["acdc_night"]) - 1
    ref = sets["acdc_night"][ex.index.value]["image"]
    assert np.array_equal(ex.current["image"], to_uint8_image(ref)) and ex.encoded == 3
    # the PCA picture: three components of a map, each spanning [0, 255]
    pca = feature_pca_image(torch.randn(8, 4, 6), size=(8, 12))
    assert (
        pca.shape == (8, 12, 3) and (pca.min((0, 1)) == 0).all() and (pca.max((0, 1)) == 255).all()
    )


def test_explorer_is_lazy_about_ipywidgets():
    import subprocess
    import sys

    code = (
        "import sys, diffprompt.viz, diffprompt.paper, diffprompt.tta; "
        "print('ipywidgets' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_readme_lists_every_notebook_parameter():
    from diffprompt.paper import parameters_markdown

    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- params:begin -->\n")[1].split("<!-- params:end -->")[0]
    assert section == parameters_markdown(ROOT / "notebooks"), (
        "README's parameter list is stale: python -c 'from diffprompt.paper import "
        "update_readme_parameters as u; u()'"
    )
