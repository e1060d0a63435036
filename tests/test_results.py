"""Results are written atomically and every run leaves a manifest."""

import json
import os

import pandas as pd
import pytest

from diffprompt.io import atomic_path, atomic_write_text, git_info
from diffprompt.results import Run


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "t.csv"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # like any new file, not 0600
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]


def test_run_writes_tables_and_manifest(tmp_path):
    run = Run("demo", params={"steps": 3}, seed=7, root=tmp_path)
    df = pd.DataFrame({"mIoU": [12.345, 50.0]}, index=["a", "b"])
    run.table(df, "demo_table", caption="a caption")
    path = run.finish(note="x")
    m = json.loads(path.read_text())
    assert m["params"] == {"steps": 3} and m["seed"] == 7 and m["note"] == "x"
    assert {"sha", "dirty"} <= set(m["git"]) and "torch" in m["versions"]
    assert m["device"]["device"] in ("cpu", "cuda", "mps")
    assert "tables/demo_table.csv" in m["outputs"] and m["wall_seconds"] >= 0
    assert (tmp_path / "tables" / "demo_table.md").read_text().count("12.35") == 1
    assert "\\toprule" in (tmp_path / "tables" / "demo_table.tex").read_text()
    assert pd.read_csv(tmp_path / "tables" / "demo_table.csv", index_col=0).loc["b", "mIoU"] == 50


def test_dirty_flag_ignores_run_outputs(tmp_path):
    import subprocess

    def git(*a):
        subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "t.csv").write_text("a\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    assert git_info(tmp_path)["dirty"] is False
    (tmp_path / "results" / "t.csv").write_text("b\n")  # a run rewrote its table
    assert git_info(tmp_path)["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")  # the code changed
    assert git_info(tmp_path)["dirty"] is True
