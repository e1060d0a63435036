"""DG configuration: prompt modes, checks, hash, presets and command-line overrides."""

import dataclasses

import pytest

from diffprompt.dg.config import (
    PROMPT_MODES,
    TrainConfig,
    changed_fields,
    check_config,
    config_dict,
    config_hash,
    effective_prompts,
    parse_overrides,
    source_split,
    with_preset,
)
from diffprompt.parameters import config_of
from diffprompt.settings import unhashed_names


def test_synthia_trains_on_its_only_split():
    assert source_split(TrainConfig(source="synthia")) == "all"  # no official split
    assert source_split(TrainConfig(source="gta5")) == "train"
    assert source_split(TrainConfig(source="cityscapes", source_split="val")) == "val"


def test_modes_set_k_and_lambda():
    base = TrainConfig(num_prompts=3, consistency_weight=2.0)
    got = {m: effective_prompts(dataclasses.replace(base, prompt_mode=m)) for m in PROMPT_MODES}
    assert got == {
        "null": (1, 0.0),
        "category": (1, 0.0),
        "fixed": (1, 0.0),
        "random": (3, 0.0),
        "random_consistency": (3, 2.0),
        "caption": (1, 0.0),
        "caption_only": (1, 0.0),
        "caption_random": (3, 0.0),
        "caption_consistency": (3, 2.0),
    }


@pytest.mark.parametrize(
    "over, match",
    [
        ({"source": "gta6"}, "unknown data set 'gta6'"),
        ({"targets": ("citiscapes",)}, "Did you mean 'cityscapes'"),
        ({"prompt_mode": "randomised"}, "unknown prompt_mode"),
        ({"consistency": "l2"}, "unknown consistency"),
        ({"steps": 0}, "steps must be a positive integer"),
        ({"steps": -5}, "steps must be a positive integer"),
        ({"batch_size": 6, "grad_accum": 4}, "not a multiple of grad_accum"),
        ({"num_prompts": 1}, "K >= 2"),
        ({"adapter": True}, "cache_features=False"),
        ({"inference": "tiles"}, r"unknown inference 'tiles'; choose one of \('whole', 'slide'\)"),
        ({"pooling": "mean"}, "unknown pooling 'mean'"),
        ({"lr": 0.0}, "lr must be a positive number, got 0.0"),
        ({"prompt_pool": 1}, "prompt_pool=1 leaves nothing"),
        ({"scale_range": (2.0, 1.0)}, "scale_range"),
    ],
)
def test_bad_configs_are_clear_errors(over, match):
    with pytest.raises(ValueError, match=match):
        check_config(TrainConfig(**over))


def test_config_hash_ignores_evaluation_fields_only():
    base = TrainConfig()
    evaluation = dataclasses.replace(base, targets=("cityscapes",), max_eval_images=3)
    assert config_hash(base) == config_hash(evaluation)
    assert config_hash(base) != config_hash(dataclasses.replace(base, consistency_weight=0.5))
    assert {"targets", "max_eval_images", "device", "eval_every"} <= set(
        unhashed_names(TrainConfig)
    )
    for name in unhashed_names(TrainConfig):  # changing one keeps the hash
        changed = dataclasses.replace(base, **{name: _another(getattr(base, name))})
        assert config_hash(changed) == config_hash(base), name
    other = config_dict(dataclasses.replace(base, lr=0.5, seed=3))
    assert changed_fields(base, other) == ["lr", "seed"]


def _another(value):
    """A value of the same kind as ``value`` that differs from it."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, tuple):
        return value[:1] if len(value) > 1 else (*value, *value)
    return f"{value}x"


def test_caption_fields_are_hashed_only_when_set():
    base = TrainConfig()
    assert config_hash(base) == config_hash(dataclasses.replace(base, captions_file=""))
    assert config_hash(base) != config_hash(dataclasses.replace(base, captions_file="c.json"))


def test_paper_preset_and_overrides():
    cfg = with_preset(TrainConfig(), "paper")[0]
    assert (cfg.crop, cfg.batch_size, cfg.inference, cfg.eval_stride) == (
        (512, 512),
        16,
        "slide",
        (341, 341),
    )
    assert cfg.model == "stable-diffusion-v1-5/stable-diffusion-v1-5" and not cfg.cache_features
    local = with_preset(TrainConfig(model="/models/sd15"), "paper")[0]
    assert local.model == "/models/sd15"  # a given model is kept
    with pytest.raises(ValueError, match="unknown preset"):
        with_preset(TrainConfig(), "papers")
    items = ["targets=cityscapes,acdc_night", "crop=64,64", "steps=10", "flip=false"]
    over = parse_overrides([*items, "scene_text=a photo", "train_size=None"])
    assert over == {
        "targets": ("cityscapes", "acdc_night"),
        "crop": (64, 64),
        "steps": 10,
        "flip": False,
        "scene_text": "a photo",
        "train_size": None,
    }
    with pytest.raises(ValueError, match="unknown TrainConfig field 'step'"):
        parse_overrides(["step=3"])
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_overrides(["steps"])


def test_config_from_notebook_parameters_ignores_other_names_and_applies_a_preset():
    params = {"steps": 7, "targets": ["cityscapes"], "explore": True, "results_dir": ""}
    cfg = config_of(TrainConfig, params)
    assert cfg.steps == 7 and cfg.targets == ("cityscapes",)
    assert with_preset(cfg, "paper", params)[0].crop == (512, 512)
    dg = config_of(TrainConfig, {"dg_steps": 3, "steps": 9, "lr": 0.5}, "dg_")
    assert (dg.steps, dg.lr) == (3, TrainConfig().lr)


def test_command_line_values_take_their_declared_types():
    over = parse_overrides(["flip=False", "noise=1", "lr=3e-4", "blocks=0,2", "timesteps=1"])
    assert over == {"flip": False, "noise": True, "lr": 3e-4, "blocks": (0, 2), "timesteps": (1,)}
    assert isinstance(parse_overrides(["lr=1"])["lr"], float)
    assert parse_overrides(["num_templates=None", "blocks=null"]) == {
        "num_templates": None,
        "blocks": None,
    }
    for bad, match in [
        ("flip=maybe", "flip must be true or false, got 'maybe'"),
        ("steps=abc", "steps must be an integer, got 'abc'"),
        ("steps=2.5", "steps must be an integer"),
        ("lr=fast", "lr must be a number"),
        ("crop=512", "crop takes 2 comma-separated values"),
        ("steps=None", "steps must be an integer"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_overrides([bad])
