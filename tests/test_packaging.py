"""The set-up files agree with each other: pyproject, environment.yml, README and CI."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    proj = _pyproject()["project"]
    deps = env["dependencies"]
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python"))
    assert python == "python=3.11" and proj["requires-python"] == ">=3.11,<3.12"
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    torch_pin = next(d for d in proj["dependencies"] if d.startswith("torch"))
    assert torch_pin == "torch==2.13.0" and torch_pin in pip
    editable = next(p for p in pip if p.startswith("-e ."))
    extras = re.search(r"\[(.*)\]", editable).group(1).split(",")
    assert set(extras) == set(proj["optional-dependencies"]), "install every extra"


def test_no_torchvision_anywhere():
    proj = _pyproject()["project"]
    allreqs = proj["dependencies"] + sum(proj["optional-dependencies"].values(), [])
    assert not [r for r in allreqs if r.lower().startswith("torchvision")]
    assert "torchvision" not in (ROOT / "environment.yml").read_text()


def test_ruff_is_the_linter():
    assert any(
        r.startswith("ruff") for r in _pyproject()["project"]["optional-dependencies"]["dev"]
    )


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, flags=re.S)
    setup = blocks[0].strip().splitlines()
    assert len(setup) == 2, "the README's set-up is two commands"
    test_cmd = setup[1].strip()
    ci = [
        ln.strip()
        for ln in (ROOT / ".ci" / "run").read_text().splitlines()
        if ln.strip() and not ln.startswith("#") and not ln.startswith(("set ", "cd "))
    ]
    assert ci == [test_cmd]
