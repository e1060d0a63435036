"""The README's Python examples run as written (on the tiny model and miniature)."""

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parent.parent / "README.md"

pytestmark = pytest.mark.usefixtures("one_thread")


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_has_python_examples():
    assert len(_blocks()) >= 3


@pytest.mark.parametrize("index", range(len(_blocks())))
def test_readme_python_example_runs(index, tiny_sd, mini_root, tmp_path, monkeypatch, capsys):
    code = _blocks()[index]
    code = code.replace('"toy-sd"', repr(str(tiny_sd))).replace('"miniature"', repr(str(mini_root)))
    monkeypatch.setenv("DIFFPROMPT_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("DIFFPROMPT_PROGRESS", "log")
    namespace = {"images": torch.rand(2, 3, 64, 128)}
    if "Explorer(trainer" in code:  # the JupyterLab snippet needs a trained model first
        pytest.importorskip("ipywidgets")
        from diffprompt.dg import TrainConfig, Trainer

        cfg = TrainConfig(
            model=str(tiny_sd),
            data_root=str(mini_root),
            targets=("acdc_night",),
            steps=1,
            batch_size=2,
            max_train_images=2,
            prompt_pool=3,
            fpn_width=8,
            head_width=8,
        )
        namespace["trainer"] = Trainer(cfg, None, log=lambda s: None)
    exec(compile(code, f"README block {index}", "exec"), namespace)
