"""Every notebook is thin, paired, stripped, and runs headless with papermill."""

import ast
import json
from pathlib import Path

import jupytext
import papermill as pm
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stripped_paired_and_thin(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    # paired with a py:percent twin holding the same cells
    twin = jupytext.read(path.with_suffix(".py"))
    twin_code = ["".join(c["source"]) for c in twin.cells if c.cell_type == "code"]
    assert ["".join(c["source"]) for c in code] == twin_code, "run `make notebooks`"
    # one parameters cell, literals only
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1
    for node in ast.parse("".join(params[0]["source"])).body:
        assert isinstance(node, ast.Assign | ast.AnnAssign), ast.dump(node)
        ast.literal_eval(node.value)
    # every parameter is annotated with its type, and the next cell checks them (preflight)
    types = {"int", "float", "bool", "str", "list", "dict"}
    for node in ast.parse("".join(params[0]["source"])).body:
        assert isinstance(node, ast.AnnAssign) and ast.unparse(node.annotation) in types, (
            ast.unparse(node)
        )
    after = "".join(code[code.index(params[0]) + 1]["source"])
    assert "check_parameters(globals())" in after
    # thin: no function or class definitions in cells
    for c in code:
        tree = ast.parse("".join(c["source"]))
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)]


def test_data_notebook_runs_headless(mini_root, tmp_path):
    out = tmp_path / "results"
    pm.execute_notebook(
        str(ROOT / "notebooks" / "00_data.ipynb"),
        str(tmp_path / "00_data.ipynb"),
        parameters=dict(
            data_root=str(mini_root),
            samples_per_domain=1,
            freq_images=2,
            gap_targets=["cityscapes", "acdc_night", "darkzurich"],
            gap_steps=2,
            gap_batch_size=2,
            gap_max_images=2,
            results_dir=str(out),
        ),
        kernel_name="python3",
        progress_bar=False,
    )
    manifest = json.loads((out / "manifests" / "00_data.json").read_text())
    assert manifest["params"]["gap_steps"] == 2
    for rel in (
        "tables/domain_gap.csv",
        "tables/class_frequencies.csv",
        "figures/data_samples.png",
        "figures/class_frequencies.png",
    ):
        assert rel in manifest["outputs"] and (out / rel).is_file()
    import pandas as pd

    gap = pd.read_csv(out / "tables" / "domain_gap.csv", index_col=0)
    assert list(gap.index) == ["cityscapes", "acdc_night", "darkzurich"]
    assert gap["source-trained"].between(0, 100).all()


def test_embedded_model_notebook_retrains_and_measures(mini_root, tmp_path):
    out = tmp_path / "results"
    model_dir = tmp_path / "toy-sd"
    pm.execute_notebook(
        str(ROOT / "notebooks" / "06_embedded_model.ipynb"),
        str(tmp_path / "06.ipynb"),
        parameters=dict(
            data_root=str(mini_root),
            images=2,
            probe_steps=2,
            sample_steps=2,
            retrain=True,
            retrain_dir=str(model_dir),
            vae_steps=2,
            unet_steps=2,
            unet_stop=0,
            unet_batch=2,
            height=64,
            width=128,
            max_images=1,
            device="cpu",
            text_use_images=2,
            candidates={"same model": str(model_dir)},
            results_dir=str(out),
        ),
        kernel_name="python3",
        progress_bar=False,
    )
    assert (model_dir / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    manifest = json.loads((out / "manifests" / "06_embedded_model.json").read_text())
    for rel in (
        "tables/toy_sd_text_usage.csv",
        "tables/toy_sd_class_word_attention.csv",
        "tables/toy_sd_vae_reconstruction.csv",
        "tables/toy_sd_probe.csv",
        "tables/toy_sd_text_use.csv",
        "figures/toy_sd_training.png",
        "figures/toy_sd_samples.png",
        "figures/toy_sd_attention_maps.png",
    ):
        assert rel in manifest["outputs"] and (out / rel).is_file()
    import pandas as pd

    use = pd.read_csv(out / "tables" / "toy_sd_text_usage.csv", index_col=0)
    assert use["caption wins"].between(0, 1).all() and (use["caption loss"] > 0).all()
    att = pd.read_csv(out / "tables" / "toy_sd_class_word_attention.csv", index_col=0)
    assert att["mIoU"].between(0, 100).all()
    # text use: the model and the candidate (the same model, measured alike: the same row)
    use = pd.read_csv(out / "tables" / "toy_sd_text_use.csv", index_col=0)
    assert list(use.index) == [str(model_dir), "same model"]
    assert set(use["measured by"]) == {"06_embedded_model"}
    assert {"scene vs scene % t=1", "scene vs empty % t=400", "binding mIoU"} <= set(use.columns)
    first, second = use.iloc[0].drop(["measured by", "probe mIoU"]), use.iloc[1]
    assert (first.astype(float) - second[first.index].astype(float)).abs().max() < 1e-6
    assert use.filter(like="scene vs").ge(0).all().all()
    # the model card is written from these tables
    from diffprompt.toysd.eval import write_card

    card = write_card(model_dir, out).read_text()
    assert "Evidence" in card and "caption" in card


def test_dg_training_notebook_trains_evaluates_and_writes(mini_root, tiny_sd, tmp_path):
    out = tmp_path / "results"
    pm.execute_notebook(
        str(ROOT / "notebooks" / "02_dg_training.ipynb"),
        str(tmp_path / "02.ipynb"),
        parameters=dict(
            data_root=str(mini_root),
            model=str(tiny_sd),
            steps=3,
            batch_size=2,
            max_train_images=4,
            max_eval_images=2,
            prompt_pool=3,
            targets=["cityscapes", "acdc_night"],
            results_dir=str(out),
        ),
        kernel_name="python3",
        progress_bar=False,
    )
    tag = "gta5_random_consistency"
    manifest = json.loads((out / "manifests" / f"02_dg_training_{tag}.json").read_text())
    assert manifest["params"]["steps"] == 3 and manifest["config"]["steps"] == 3
    for rel in (
        f"tables/dg_{tag}_miou.csv",
        f"tables/dg_{tag}_per_class.csv",
        f"figures/dg_{tag}_predictions.png",
        f"figures/dg_{tag}_loss.png",
    ):
        assert rel in manifest["outputs"] and (out / rel).is_file()
    assert len(manifest["runs"]) == 3  # one run per seed (seeds 0, 1, 2)
    for run in manifest["runs"].values():
        assert (out / "runs" / "dg" / run / "checkpoint.pt").is_file()
    import pandas as pd

    stats = pd.read_csv(out / "tables" / f"dg_{tag}_stats.csv", index_col=[0, 1])
    targets = ["gta5 (source val)", "cityscapes", "acdc_night"]
    assert list(stats.index) == [("random_consistency", t) for t in targets]
    assert stats["mIoU"].between(0, 100).all() and (stats["seeds"] == 3).all()
    known = stats.dropna(subset=["low"])  # 2 images: an interval where the bootstrap has one
    assert len(known) and (known["low"] <= known["high"]).all()
    runs = pd.read_csv(out / "tables" / f"dg_{tag}_runs.csv")
    assert sorted(set(runs["seed"])) == [0, 1, 2] and len(runs) == 9
    # the seeds' mean in the statistics is the mean of the runs' mIoU
    mean = runs[runs["target"] == "cityscapes"]["mIoU"].mean()
    assert stats.loc[("random_consistency", "cityscapes"), "mIoU"] == pytest.approx(
        mean, abs=0.005
    )  # both written to 2 decimals
    miou = pd.read_csv(out / "tables" / f"dg_{tag}_miou.csv", index_col=[0, 1])
    assert "95% CI" in miou.columns
    curve = pd.read_csv(out / "tables" / f"dg_{tag}_curve.csv")
    assert set(curve["step"]) <= {1, 2, 3} and 3 in set(curve["step"])
    per_class = pd.read_csv(out / "tables" / f"dg_{tag}_per_class.csv", index_col=0)
    assert per_class.shape == (3, 19)


def test_prompt_ablation_notebook_runs_every_cell_with_seeds(mini_root, tiny_sd, tmp_path):
    out = tmp_path / "results"
    pm.execute_notebook(
        str(ROOT / "notebooks" / "04_prompt_ablations.ipynb"),
        str(tmp_path / "04.ipynb"),
        parameters=dict(
            data_root=str(mini_root),
            model=str(tiny_sd),
            steps=2,
            batch_size=2,
            modes=["fixed", "random_consistency"],
            ks=[2],
            lambdas=[1.0, 0.1],
            vocab_sizes=[0],
            seeds=[0, 1],
            train_size=[32, 64],
            max_train_images=3,
            max_eval_images=2,
            prompt_pool=3,
            targets=["cityscapes"],
            results_dir=str(out),
        ),
        kernel_name="python3",
        progress_bar=False,
    )
    import pandas as pd

    runs = pd.read_csv(out / "tables" / "ablation_runs.csv")
    assert len(runs) == 3 * 2  # (fixed, method, lambda 0.1) x 2 seeds
    summary = pd.read_csv(out / "tables" / "ablation_summary.csv")
    assert (summary["seeds"] == 2).all() and summary["target mean std"].notna().all()
    sens = pd.read_csv(out / "tables" / "prompt_sensitivity.csv", index_col=0)
    assert (sens.to_numpy() >= 0).all() and "empty prompt" in sens.index
    assert (out / "figures" / "ablation.png").is_file()


def test_tta_notebook_runs_with_tiny_parameters(mini_root, tiny_sd, tmp_path):
    out = tmp_path / "results"
    pm.execute_notebook(
        str(ROOT / "notebooks" / "03_tta.ipynb"),
        str(tmp_path / "03.ipynb"),
        parameters=dict(
            target="acdc_fog",
            objectives=["denoise", "entropy", "both"],
            data_root=str(mini_root),
            model=str(tiny_sd),
            steps=2,
            fit_images=2,
            batch_size=2,
            eval_images=2,
            eval_every=1,
            dg_steps=2,
            dg_batch_size=2,
            seeds=[0, 1],
            results_dir=str(out),
        ),
        kernel_name="python3",
        progress_bar=False,
    )
    manifest = json.loads((out / "manifests" / "03_tta_acdc_fog.json").read_text())
    assert manifest["params"]["target"] == "acdc_fog" and manifest["fit_split"]
    for rel in (
        "tables/tta_acdc_fog.csv",
        "tables/tta_acdc_fog_curve.csv",
        "tables/tta_acdc_fog_nearest.csv",
        "figures/tta_acdc_fog_predictions.png",
        "figures/tta_acdc_fog_curve.png",
    ):
        assert rel in manifest["outputs"] and (out / rel).is_file()
    import pandas as pd

    table = pd.read_csv(out / "tables" / "tta_acdc_fog.csv", index_col=0)
    assert len(table) == 9 and (table["seeds"] == 2).all() and (table["images"] == 2).all()
    # the caption rows (the miniature captions every image): each image's own caption, and
    # TTA from it (caption_tta: denoise by default), its learned span starting at "in fog"
    assert {"each image's own caption", "own caption, conditions removed"} <= set(table.index)
    assert table.loc["TTA from own caption: denoise", "setting"] == "offline"
    near = pd.read_csv(out / "tables" / "tta_acdc_fog_nearest.csv")
    span = near[near["objective"] == "caption denoise"]
    assert span["init word"].str.strip().tolist() == ["in", "fog"]
    means = table["mIoU"].map(lambda v: float(v.split("±")[0]))
    assert means.between(0, 100).all()
    assert list(table.columns[:2]) == ["setting", "mIoU"] and "excludes 0" in table.columns
    assert table.loc["no adaptation", "excludes 0"] == "--"
    # the DG models (one per seed) were trained once, in results/runs/dg; a second run on
    # another target finds seed 0's (dg_missing="error" refuses to train) and leaves its
    # checkpoint untouched
    dg_manifest = json.loads((out / "manifests" / "03_tta_dg.json").read_text())
    hashes = dg_manifest["dg_config_hashes"]
    assert len(hashes) == 2 and len(list((out / "runs" / "dg").iterdir())) == 2
    (run_dir,) = [d for d in (out / "runs" / "dg").iterdir() if d.name.endswith(hashes["0"])]
    checkpoint = run_dir / "checkpoint.pt"
    written = checkpoint.stat().st_mtime_ns
    second = pm.execute_notebook(
        str(ROOT / "notebooks" / "03_tta.ipynb"),
        str(tmp_path / "03b.ipynb"),
        parameters=dict(
            target="acdc_night",
            objectives=["entropy"],
            settings=["online"],
            tent=False,
            data_root=str(mini_root),
            model=str(tiny_sd),
            steps=1,
            fit_images=2,
            batch_size=2,
            eval_images=2,
            dg_steps=2,
            dg_batch_size=2,
            dg_missing="error",
            seeds=[0],
            results_dir=str(out),
        ),
        kernel_name="python3",
        progress_bar=False,
    )
    printed = "".join(
        o.get("text", "") for c in second["cells"] if c["cell_type"] == "code" for o in c["outputs"]
    )
    assert f"DG run {run_dir.name.rsplit('-', 1)[1]} seed 0 step 2 of 2" in printed
    assert checkpoint.stat().st_mtime_ns == written and len(list(run_dir.parent.iterdir())) == 2
    online = pd.read_csv(out / "tables" / "tta_acdc_night.csv", index_col=0)
    assert online.loc["TTA prompt: entropy (online)", "setting"] == "online"
    # the budget study (notebook 07) on the same DG model: its curves at its points and
    # every eval_every steps
    pm.execute_notebook(
        str(ROOT / "notebooks" / "07_tta_budget.ipynb"),
        str(tmp_path / "07.ipynb"),
        parameters=dict(
            targets=["acdc_night"],
            objectives=["entropy"],
            lrs=[0.001],
            steps=3,
            eval_every=3,
            points=[1],
            eval_images=2,
            fit_images=2,
            seeds=[0],
            data_root=str(mini_root),
            model=str(tiny_sd),
            dg_steps=2,
            dg_batch_size=2,
            dg_missing="error",
            results_dir=str(out),
        ),
        kernel_name="python3",
        progress_bar=False,
    )
    budget = pd.read_csv(out / "tables" / "tta_budget_runs.csv")
    assert sorted(set(budget["step"])) == [0, 1, 3] and set(budget["objective"]) == {"entropy"}
    best = json.loads((out / "manifests" / "07_tta_budget.json").read_text())
    assert best["best"]["steps"] in (1, 3) and best["best_within_default"]["steps"] == 1


def test_feature_probing_notebook_runs_with_tiny_parameters(mini_root, tiny_sd, tmp_path):
    out = tmp_path / "results"
    pm.execute_notebook(
        str(ROOT / "notebooks" / "01_feature_probing.ipynb"),
        str(tmp_path / "01.ipynb"),
        parameters=dict(
            data_root=str(mini_root),
            model=str(tiny_sd),
            targets=["cityscapes", "acdc_night"],
            sweep_targets=["cityscapes"],
            seeds=[0, 1],
            n_train=3,
            n_eval=2,
            steps=3,
            supervised_steps=2,
            supervised_batch=2,
            timesteps=[1, 50],
            noise_timesteps=[50],
            gap_images=3,
            results_dir=str(out),
        ),
        kernel_name="python3",
        progress_bar=False,
    )
    manifest = json.loads((out / "manifests" / "01_feature_probing.json").read_text())
    for rel in (
        "tables/probe_backbones.csv",
        "tables/probe_runs.csv",
        "tables/probe_sweeps.csv",
        "tables/probe_gap_measures.csv",
        "tables/probe_gap_correlation.csv",
        "figures/probe_sweeps.png",
        "figures/probe_gap_scatter.png",
        "figures/probe_pca.png",
    ):
        assert rel in manifest["outputs"] and (out / rel).is_file()
    import pandas as pd

    runs = pd.read_csv(out / "tables" / "probe_runs.csv")
    assert set(runs["backbone"]) == {
        "diffusion (pretrained)",
        "supervised",
        "supervised + photometric",
        "random",
    }
    assert len(runs) == 4 * 2 and runs["source"].between(0, 100).all()
    sweeps = pd.read_csv(out / "tables" / "probe_sweeps.csv")
    assert {"timestep (no noise)", "timestep (noised)", "decoder block", "text", "features"} == set(
        sweeps["sweep"]
    )
    gaps = pd.read_csv(out / "tables" / "probe_gap_measures.csv")
    assert gaps["CKA"].between(-1e-6, 1 + 1e-6).all()
