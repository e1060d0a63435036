"""Reliability: a run killed with SIGKILL resumes to the same result, the same seed gives the
same numbers, 2 processes train as 1, manifests hold what a rerun needs, loading is safe.

The training runs go through the command line (``python -m diffprompt.dg``, and
``torchrun`` for two processes), each in a fresh process on one thread, as a user runs them.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffprompt.dg.checkpoint import read_checkpoint
from diffprompt.paths import REPO_ROOT

STEPS = 24
KILL_AT = 10  # SIGKILL when the log shows this step (checkpoints every 4 steps)


def _args(mini_root: Path, tiny_sd: Path, **over) -> list[str]:
    base = dict(
        data_root=mini_root,
        model=tiny_sd,
        steps=STEPS,
        batch_size=4,
        max_train_images=8,
        max_eval_images=4,
        targets="cityscapes",
        fpn_width=8,
        head_width=8,
        warmup=2,
        ckpt_every=4,
        log_every=1,
        progress="log",
        prompt_pool=3,
        device="cpu",
        dropout=0.0,
        seed=0,
    )
    return [f"{k}={v}" for k, v in {**base, **over}.items()]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "DIFFPROMPT_PROGRESS": "log",
    }


def _train(args: list[str], results: Path, launcher: list[str] | None = None) -> str:
    cmd = [
        *(launcher or [sys.executable]),
        "-m",
        "diffprompt.dg",
        *args,
        "--results",
        str(results),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    return p.stdout


def _table(stdout: str) -> str:
    """The mIoU table the command prints at the end."""
    return "\n".join(ln for ln in stdout.splitlines() if ln.startswith("|"))


def _checkpoint(results: Path) -> dict:
    (path,) = (results / "runs" / "dg").glob("*/checkpoint.pt")
    return read_checkpoint(path)


def _head(results: Path) -> dict[str, torch.Tensor]:
    return _checkpoint(results)["model"]["head"]


def _losses(results: Path) -> list[float]:
    return [e["loss"] for e in json.loads(_checkpoint(results)["state"])["log"]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mini_root, tiny_sd):
    """One uninterrupted single-process run: (results folder, its stdout)."""
    out = tmp_path_factory.mktemp("reference")
    return out, _train(_args(mini_root, tiny_sd), out)


def test_sigkill_mid_run_then_rerun_resumes_to_the_same_metrics(
    reference, mini_root, tiny_sd, tmp_path
):
    ref, ref_out = reference
    part = tmp_path / "results"
    cmd = [
        sys.executable,
        "-m",
        "diffprompt.dg",
        *_args(mini_root, tiny_sd),
        "--results",
        str(part),
    ]
    p = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env()
    )
    seen = []
    for line in p.stdout:
        seen.append(line)
        if line.startswith(f"step {KILL_AT}/{STEPS}"):
            os.kill(p.pid, signal.SIGKILL)
            break
    p.stdout.close()
    assert p.wait(timeout=60) == -signal.SIGKILL, "".join(seen)[-3000:]
    # what the killed run left: a whole checkpoint of a step before the kill, no table
    state = json.loads(_checkpoint(part)["state"])
    assert 0 < state["step"] < STEPS and state["step"] % 4 == 0
    assert not (part / "tables").exists()
    out = _train(_args(mini_root, tiny_sd), part)  # the same command again
    assert (
        f"resumed: {next((part / 'runs' / 'dg').glob('*/checkpoint.pt'))} at step {state['step']}"
        in out
    )
    assert f"training random_consistency from step {state['step']}" in out
    assert "step 1/" not in out  # nothing before the checkpoint was trained again
    assert _table(out) == _table(ref_out) and "cityscapes" in _table(out)
    assert _losses(part) == _losses(ref)
    for k, v in _head(ref).items():
        assert torch.equal(_head(part)[k], v), k


def test_same_seed_same_machine_identical_miou_and_weights(reference, mini_root, tiny_sd, tmp_path):
    ref, ref_out = reference
    out = _train(_args(mini_root, tiny_sd), tmp_path / "again")
    assert _table(out) == _table(ref_out)
    for k, v in _head(ref).items():
        assert torch.equal(_head(tmp_path / "again")[k], v), k
    # another seed is another run (the test can tell runs apart)
    other = _train(_args(mini_root, tiny_sd, seed=1, steps=4), tmp_path / "seed1")
    assert any(not torch.equal(_head(tmp_path / "seed1")[k], v) for k, v in _head(ref).items())
    assert "cityscapes" in _table(other)


#: 2 processes vs 1 with the same global batch, reading the same cached features. The sums
#: of the two processes' gradients run in another order, so the losses differ from the
#: first step at float rounding (measured: 7e-8 relative); Adam then amplifies that step by
#: step (measured: 4e-5 relative by step 24, head weights 4.8e-4 relative L2). Tolerances:
#: the first 4 losses 1e-6, every loss 2e-4, head weights 5e-3 relative L2, mIoU 0.5 points.
#: (With features computed in each process's own smaller batches, fp16 rounding of the
#: cache differs too: 2e-3 relative weights after 6 steps, mIoU within 0.01.)
FIRST_LOSS_TOL, LOSS_TOL, WEIGHT_TOL, MIOU_TOL = 1e-6, 2e-4, 5e-3, 0.5


def test_two_gloo_processes_train_as_one(reference, mini_root, tiny_sd, tmp_path):
    ref, ref_out = reference
    torchrun = Path(sys.executable).parent / "torchrun"
    two = tmp_path / "two"
    (two / "runs").mkdir(parents=True)
    shutil.copytree(ref / "runs" / "cache", two / "runs" / "cache")  # the same frozen features
    out = _train(
        _args(mini_root, tiny_sd),
        two,
        launcher=[str(torchrun), "--standalone", "--nproc_per_node", "2"],
    )
    assert re.search(r"on 2 process\(es\) \(cpu(:\d)?\), 2 image\(s\) per process", out), out[
        -2000:
    ]
    num = sum(((_head(two)[k] - v) ** 2).sum() for k, v in _head(ref).items())
    den = sum((v**2).sum() for v in _head(ref).values())
    assert (num / den).sqrt() < WEIGHT_TOL, (num / den).sqrt()
    a, b = _losses(ref), _losses(two)
    assert len(a) == len(b) == STEPS
    rel = [abs(x - y) / abs(x) for x, y in zip(a, b, strict=True)]
    assert max(rel[:4]) < FIRST_LOSS_TOL and max(rel) < LOSS_TOL, rel

    def miou(stdout: str) -> dict[str, float]:
        rows = [ln.split("|") for ln in _table(stdout).splitlines()[2:]]
        return {r[1].strip(): float(r[2]) for r in rows}

    assert miou(out).keys() == miou(ref_out).keys()
    for k, v in miou(ref_out).items():
        assert abs(miou(out)[k] - v) <= MIOU_TOL, (k, v, miou(out)[k])


# ---------------------------------------------------------------------------------------
# Manifests and safe loading


def test_manifest_holds_what_a_rerun_needs(tmp_path):
    from diffprompt.results import Run

    run = Run("demo", {"steps": 3, "targets": ["cityscapes"]}, seed=7, root=tmp_path)
    path = run.finish()
    m = json.loads(path.read_text())
    assert m["params"] == {"steps": 3, "targets": ["cityscapes"]} and m["seed"] == 7
    assert len(m["git"]["sha"]) == 40 and isinstance(m["git"]["dirty"], bool)
    assert {"python", "diffprompt", "torch", "diffusers", "transformers", "accelerate"} <= set(
        m["versions"]
    )
    assert m["device"]["device"] in ("cpu", "cuda", "mps") and m["device"]["cpu_count"] >= 1
    assert "torch_threads" in m["device"] and m["started_utc"] and m["wall_seconds"] >= 0


def _calls(tree: ast.AST, name: str):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Attribute) and f.attr == name) or (
                isinstance(f, ast.Name) and f.id == name
            ):
                yield node


def _sources():
    files = sorted((REPO_ROOT / "diffprompt").rglob("*.py")) + sorted(
        (REPO_ROOT / "notebooks").glob("*.py")
    )
    return [(p, ast.parse(p.read_text())) for p in files]


def test_every_torch_load_is_weights_only_and_nothing_trusts_remote_code():
    sources = _sources()
    assert len(sources) > 20
    loads = 0
    for path, tree in sources:
        for call in _calls(tree, "load"):
            f = call.func
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                if f.value.id in ("pickle", "cPickle", "dill", "joblib"):
                    pytest.fail(f"{path}: {f.value.id}.load")
                if f.value.id == "torch":
                    loads += 1
                    kw = {k.arg: k.value for k in call.keywords}
                    ok = (
                        isinstance(kw.get("weights_only"), ast.Constant)
                        and kw["weights_only"].value is True
                    )
                    assert ok, f"{path}:{call.lineno}: torch.load without weights_only=True"
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                pytest.fail(f"{path}:{node.lineno}: trust_remote_code")
            if isinstance(node, ast.Constant) and node.value == "trust_remote_code":
                pytest.fail(f"{path}:{node.lineno}: trust_remote_code")
    assert loads >= 2  # the DG checkpoint and the embedded model's pretraining files


#: Classes whose from_pretrained reads configs or vocabularies only, never weights.
NO_WEIGHTS = {
    "CLIPTokenizer",
    "DDPMScheduler",
    "DDIMScheduler",
    "AutoConfig",
    "AutoTokenizer",
    "AutoProcessor",
}


def test_every_weight_loading_from_pretrained_asks_for_safetensors():
    n = 0
    for path, tree in _sources():
        for call in _calls(tree, "from_pretrained"):
            f = call.func
            owner = (
                f.value.attr if isinstance(f.value, ast.Attribute) else getattr(f.value, "id", "")
            )
            if owner in NO_WEIGHTS or owner in ("DiffusionBackbone", "cls", "self"):
                continue  # DiffusionBackbone.from_pretrained is checked through its own calls
            kw = {k.arg: k.value for k in call.keywords}
            assert (
                isinstance(kw.get("use_safetensors"), ast.Constant)
                and kw["use_safetensors"].value is True
            ), f"{path}:{call.lineno}: {owner}.from_pretrained without use_safetensors=True"
            n += 1
    assert n >= 5


def test_comparator_loader_asks_for_safetensors():
    """comparators._load calls ``cls.from_pretrained`` (skipped above): check it by source."""
    src = (REPO_ROOT / "diffprompt" / "backbones" / "comparators.py").read_text()
    call = next(
        c
        for c in _calls(ast.parse(src), "from_pretrained")
        if getattr(c.func.value, "id", "") == "cls"
    )
    assert any(k.arg == "use_safetensors" and k.value.value is True for k in call.keywords)


def test_pretraining_checkpoint_refuses_another_recipe(tmp_path):
    from dataclasses import replace

    from diffprompt.toysd.pretrain import ToySDConfig, _load, _save, recipe_hash

    cfg = ToySDConfig()
    _save({"recipe_hash": recipe_hash(cfg), "x": torch.ones(2)}, tmp_path / "checkpoint.pt")
    assert torch.equal(_load(tmp_path / "checkpoint.pt", cfg)["x"], torch.ones(2))
    with pytest.raises(ValueError, match="another configuration"):
        _load(tmp_path / "checkpoint.pt", replace(cfg, seed=cfg.seed + 1))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    """A save that dies half-way leaves the previous checkpoint whole and no temporary file."""
    from diffprompt.toysd import pretrain as toysd_pretrain

    path = tmp_path / "checkpoint.pt"
    toysd_pretrain._save({"a": torch.zeros(3)}, path)

    def dies(obj, f, *a, **k):
        Path(f).write_bytes(b"PK\x03\x04 half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(OSError, match="disk full"):
        toysd_pretrain._save({"a": torch.ones(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.zeros(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
