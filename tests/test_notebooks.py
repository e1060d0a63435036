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
        assert isinstance(node, ast.Assign), ast.dump(node)
        ast.literal_eval(node.value)
    # thin: no function or class definitions in cells
    for c in code:
        tree = ast.parse("".join(c["source"]))
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)]


def test_data_notebook_runs_headless(mini_root, tmp_path):
    out = tmp_path / "results"
    pm.execute_notebook(
        str(ROOT / "notebooks" / "00_data.ipynb"),
        str(tmp_path / "00_data.ipynb"),
        parameters=dict(data_root=str(mini_root), samples_per_domain=1, freq_images=2,
                        gap_targets=["cityscapes", "acdc_night", "darkzurich"], gap_steps=2,
                        gap_batch_size=2, gap_max_images=2, results_dir=str(out)),
        kernel_name="python3",
        progress_bar=False,
    )  # fmt: skip
    manifest = json.loads((out / "manifests" / "00_data.json").read_text())
    assert manifest["params"]["gap_steps"] == 2
    for rel in ("tables/domain_gap.csv", "tables/class_frequencies.csv",
                "figures/data_samples.png", "figures/class_frequencies.png"):  # fmt: skip
        assert rel in manifest["outputs"] and (out / rel).is_file()
    import pandas as pd

    gap = pd.read_csv(out / "tables" / "domain_gap.csv", index_col=0)
    assert list(gap.index) == ["cityscapes", "acdc_night", "darkzurich"]
    assert gap["source-trained"].between(0, 100).all()
