"""Explicit settings win over a preset: a KEY=VALUE on the command line and a notebook
parameter the user passed (one that differs from its default) keep their values; the
preset sets the rest, and the run reports (and the manifest records) which is which."""

from __future__ import annotations

import json
from pathlib import Path

import papermill as pm
import pytest
import scipy.io
from conftest import CS_IDS, save_pipeline, stripes, tiny_sd_parts, write_palette, write_rgb

from diffprompt.dg.__main__ import main as dg_main
from diffprompt.dg.config import PRESETS, TrainConfig, with_preset
from diffprompt.experiments.dg import dg_config
from diffprompt.experiments.tta import tta_dg_config
from diffprompt.parameters import notebook_defaults
from diffprompt.paths import REPO_ROOT

ROOT = REPO_ROOT
pytestmark = pytest.mark.usefixtures("one_thread")


def test_explicit_fields_win_and_are_reported():
    cfg, choice = with_preset(TrainConfig(steps=3, crop=(96, 96)), "paper", ["steps", "crop"])
    assert (cfg.steps, cfg.crop, cfg.batch_size) == (3, (96, 96), PRESETS["paper"]["batch_size"])
    assert choice.overridden == {
        "steps": {"preset": 80_000, "user": 3},
        "crop": {"preset": (512, 512), "user": (96, 96)},
    }
    assert set(choice.kept) == set(PRESETS["paper"]) - {"steps", "crop"}
    record = choice.record()
    assert record["preset"] == "paper" and record["overridden"]["crop"]["user"] == [96, 96]
    assert "steps=3 (preset: 80000)" in str(choice)
    # without explicit fields the preset sets everything, the model only over "toy-sd"
    assert with_preset(TrainConfig(steps=3), "paper")[0].steps == 80_000
    local, choice = with_preset(TrainConfig(model="/models/sd15"), "paper")
    assert local.model == "/models/sd15" and "model" in choice.overridden
    assert with_preset(TrainConfig(), "")[1].record() == {
        "preset": "",
        "kept": [],
        "overridden": {},
    }


def test_notebook_parameters_that_differ_from_their_defaults_are_explicit():
    nb02 = notebook_defaults("02_dg_training")
    cfg, choice = dg_config({**nb02, "preset": "paper", "steps": 1000})
    assert cfg.steps == 1000 and cfg.crop == (512, 512)
    assert list(choice.overridden) == ["steps"]
    # a parameter passed with its default value is not told apart: the preset sets it
    assert dg_config({**nb02, "preset": "paper", "steps": nb02["steps"]})[0].steps == 80_000
    nb03 = notebook_defaults("03_tta")
    cfg, choice = tta_dg_config({**nb03, "preset": "paper", "dg_steps": 7, "steps": 2})
    assert cfg.steps == 7 and cfg.batch_size == 16 and list(choice.overridden) == ["steps"]


def test_command_line_values_override_the_preset(mini_root, tiny_sd, tmp_path, capsys):
    out = tmp_path / "results"
    argv = [
        f"data_root={mini_root}",
        f"model={tiny_sd}",
        "crop=48,48",
        "steps=3",
        "batch_size=2",
        "fpn_width=8",
        "head_width=8",
        "max_train_images=4",
        "max_eval_images=1",
        "targets=cityscapes",
        "mixed_precision=no",
        "device=cpu",
        "--preset",
        "paper",
        "--results",
        str(out),
    ]
    dg_main(argv)
    printed = capsys.readouterr().out
    assert "preset 'paper' sets" in printed and "crop=(48, 48) (preset: (512, 512))" in printed
    (run,) = (out / "runs" / "dg").iterdir()
    saved = json.loads((run / "config.json").read_text())
    assert saved["crop"] == [48, 48] and saved["steps"] == 3  # the user's
    assert saved["adapter"] is True and saved["cache_features"] is False  # the preset's
    assert saved["lr"] == PRESETS["paper"]["lr"] and saved["inference"] == "slide"


def _big_source_root(root: Path, size: int = 512) -> Path:
    """GTA5 only (3 images of size x size): the paper preset's 512 crops fit."""
    g = root / "gta5"
    for i in (1, 2, 3):
        write_rgb(g / "images" / f"{i:05d}.png", seed=i, h=size, w=size)
        write_palette(g / "labels" / f"{i:05d}.png", stripes(CS_IDS, h=size, w=size))
    scipy.io.savemat(g / "split.mat", {"trainIds": [[1], [2]], "valIds": [[3]], "testIds": [[3]]})
    return root


def _coarse_sd(tmp_path: Path) -> Path:
    """The tiny SD model with a VAE of stride 8, so 512 crops stay cheap."""
    from diffusers import AutoencoderKL

    from diffprompt.backbones.tokenizer import caption_words
    from diffprompt.labels import CLASSES
    from diffprompt.prompts import prompt_corpus

    words = caption_words(prompt_corpus(CLASSES))
    _, unet, text, tok, sched = tiny_sd_parts(tmp_path, words=words, max_length=32)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    )
    save_pipeline((vae, unet, text, tok, sched), tmp_path / "model")
    return tmp_path / "model"


def test_notebook_parameters_override_the_preset(tmp_path):
    out = tmp_path / "results"
    pm.execute_notebook(
        str(ROOT / "notebooks" / "02_dg_training.ipynb"),
        str(tmp_path / "02.ipynb"),
        parameters=dict(
            preset="paper",
            data_root=str(_big_source_root(tmp_path / "data")),
            model=str(_coarse_sd(tmp_path)),
            steps=1,
            batch_size=1,
            max_train_images=1,
            max_eval_images=1,
            targets=[],
            device="cpu",
            results_dir=str(out),
        ),
        kernel_name="python3",
        progress_bar=False,
    )
    tag = "gta5_random_consistency"
    manifest = json.loads((out / "manifests" / f"02_dg_training_{tag}.json").read_text())
    assert manifest["config"]["steps"] == 1 and manifest["config"]["batch_size"] == 1
    assert manifest["config"]["crop"] == [512, 512] and manifest["config"]["fpn_width"] == 256
    preset = manifest["preset"]
    assert preset["preset"] == "paper"
    assert preset["overridden"]["steps"] == {"preset": 80_000, "user": 1}
    assert set(preset["overridden"]) == {"steps", "batch_size", "model"}
    assert {"crop", "lr", "fpn_width", "adapter"} <= set(preset["kept"])
