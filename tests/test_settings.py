"""Each setting declared once: what a field's declaration says reaches the checks, the hash
rule, the command line and the notebook parameters' ranges, with nothing else to edit."""

from __future__ import annotations

import dataclasses

import pytest

import diffprompt.dg.__main__ as cli
from diffprompt.dg.config import TrainConfig, check_config, config_hash, parse_overrides
from diffprompt.parameters import parameter_ranges
from diffprompt.preflight import check_values
from diffprompt.settings import (
    IF_SET,
    as_declared,
    choices,
    describe,
    hashed_names,
    ranges,
    setting,
    unhashed_names,
)


@dataclasses.dataclass
class Recipe:
    steps: int = setting(10, "optimizer steps", range=">= 1")
    size: tuple[int, int] | None = setting(None, "resize", range=">= 1")
    mode: str = setting("a", "how", choices=("a", "b"))
    device: str = setting("cpu", "where", hashed=False)
    extra: str = setting("", "added later", hashed=IF_SET)

    def __post_init__(self):
        as_declared(self)


def test_the_declarations_are_read_back():
    assert ranges(Recipe) == {"steps": ">= 1", "size": ">= 1"}
    assert choices(Recipe) == {"mode": ("a", "b")}
    assert unhashed_names(Recipe) == ["device"]
    assert hashed_names(Recipe()) == ["steps", "size", "mode"]
    assert hashed_names(Recipe(extra="x")) == ["steps", "size", "mode", "extra"]
    assert Recipe(size=[4, 8]).size == (4, 8)  # lists from papermill or JSON become tuples
    lines = describe(Recipe)
    assert lines[0] == "steps=10  range >= 1; optimizer steps"
    assert lines[2] == "mode='a'  one of a | b; how"
    assert lines[3].endswith("(not hashed)")
    with pytest.raises(ValueError, match="hashed must be"):
        setting(1, hashed="sometimes")


def test_check_values_reads_ranges_and_choices_from_the_declarations():
    check_values(Recipe())
    with pytest.raises(ValueError, match=r"steps must be a positive integer, got 0"):
        check_values(Recipe(steps=0))
    with pytest.raises(ValueError, match=r"unknown mode 'c'; choose one of \('a', 'b'\)"):
        check_values(Recipe(mode="c"))


@dataclasses.dataclass
class Extended(TrainConfig):
    """TrainConfig with two settings added, each in one place."""

    warp: float = setting(0.5, "a new hashed setting", range="[0, 1]")
    note: str = setting("", "a new setting that never changes the model", hashed=False)


def test_a_new_field_reaches_the_checks_the_hash_and_the_command_line(monkeypatch, capsys):
    # the preflight checks
    check_config(Extended())
    with pytest.raises(ValueError, match=r"warp must be a number in \[0, 1\], got 2.0"):
        check_config(Extended(warp=2.0))
    # the hash rule
    assert config_hash(Extended(warp=0.7)) != config_hash(Extended())
    assert config_hash(Extended(note="x")) == config_hash(Extended())
    # the command line: parsed as its type, checked, listed in --help
    assert parse_overrides(["warp=0.25"], Extended) == {"warp": 0.25}
    trained = []
    monkeypatch.setattr(cli, "train_dg", lambda cfg, *a, **k: trained.append(cfg) or _stop())
    with pytest.raises(SystemExit, match="warp must be a number in"):
        cli.main(["warp=3"], config=Extended)
    with pytest.raises(_Stop):
        cli.main(["warp=0.25", "steps=3"], config=Extended)
    assert (trained[0].warp, trained[0].steps) == (0.25, 3)
    with pytest.raises(SystemExit):
        cli.main(["--help"], config=Extended)
    assert "warp=0.5  range [0, 1]; a new hashed setting" in capsys.readouterr().out
    # the notebook parameters that set it (notebook 02's name, notebook 03's dg_ name)
    table = parameter_ranges([(Extended, ""), (Extended, "dg_")], {})
    assert table["warp"] == table["dg_warp"] == "[0, 1]"


class _Stop(Exception):
    pass


def _stop():
    raise _Stop
