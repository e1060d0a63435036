"""The bad-input catalogue: every case gives a clear error that names the problem and what
to do, before any work starts, with nothing written to results/ and no partial file.

Each case sets up one bad input on a fresh fake data root (tests/conftest.py) and calls the
entry point a researcher uses (``train_dg`` as notebook 02 and ``python -m diffprompt.dg``
do, the TTA/probing/domain-gap checks the notebooks call first, ``Run``, the papermill CLI).
While it runs, the backbone's ``encode``/``forward``, the probe and the domain-gap CNN's
training raise ``WorkStarted``: an error that came after work had started fails the test.

docs/ERRORS.md is generated from these cases and the messages they give; a test keeps it
current. After changing a message: ``DIFFPROMPT_WRITE_DOCS=1 pytest tests/test_bad_input.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CS_IDS, H, W, build_fake_root, save_pipeline, stripes, tiny_sd_parts
from conftest import write_palette as _write_palette

from diffprompt.backbones.hub import ModelNotFoundError
from diffprompt.backbones.tokenizer import caption_words
from diffprompt.benchmarks import resolve_targets
from diffprompt.captions import CaptionError
from diffprompt.data import DatasetError, DatasetNotFoundError
from diffprompt.dg import CheckpointError, ConfigMismatchError, TrainConfig, Trainer
from diffprompt.dg.__main__ import main as dg_main
from diffprompt.dg.runs import dg_model, dg_run_dir, train_dg
from diffprompt.domain_gap import GapConfig, run_domain_gap
from diffprompt.experiments.tta import check_targets
from diffprompt.experiments.tta_budget import check_budget
from diffprompt.labels import CLASSES
from diffprompt.paths import REPO_ROOT
from diffprompt.preflight import NotWritableError, ParameterError
from diffprompt.probing import ProbeConfig, probe_sets
from diffprompt.prompts import prompt_corpus
from diffprompt.results import Run
from diffprompt.toysd import candidates
from diffprompt.tta import TTAConfig

pytestmark = pytest.mark.usefixtures("one_thread")
DOC = REPO_ROOT / "docs" / "ERRORS.md"


class WorkStarted(AssertionError):
    """Raised by the patched compute entry points: the error came too late."""


@dataclass
class Ctx:
    """One case's world: a fresh fake data root, the tiny model, an empty results path."""

    tmp: Path
    root: Path
    model: Path
    results: Path

    def cfg(self, **over) -> TrainConfig:
        base = dict(
            model=str(self.model),
            data_root=str(self.root),
            steps=2,
            batch_size=2,
            targets=("cityscapes",),
            fpn_width=8,
            head_width=8,
            warmup=1,
            progress="log",
            prompt_pool=3,
            device="cpu",
            log_every=1,
        )
        return TrainConfig(**{**base, **over})

    @property
    def scratch(self) -> Path:
        """Where a case's set-up writes (copies of the model, checkpoints of other runs)."""
        return self.tmp / "setup"

    def model_copy(self) -> Path:
        dst = self.scratch / "model"
        shutil.copytree(self.model, dst)
        return dst


def quiet(_: str) -> None:
    pass


def train(ctx: Ctx, **over) -> None:
    """What notebook 02 and ``python -m diffprompt.dg`` run."""
    train_dg(ctx.cfg(**over), log=quiet)


@dataclass
class Case:
    id: str
    title: str
    given: str  # the bad input, as a user gives it
    where: str  # the entry point that catches it
    run: Callable[[Ctx], None]
    error: type[BaseException]
    match: str  # names the problem and what to do


# ---------------------------------------------------------------------------------------
# set-ups of the cases that need more than a config


def _corrupt_image(ctx: Ctx) -> None:
    (ctx.root / "gta5/images/00002.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    train(ctx)


def _label_wrong_size(ctx: Ctx) -> None:
    _write_palette(ctx.root / "gta5/labels/00001.png", stripes(CS_IDS, h=H, w=W + 4))
    train(ctx)


def _label_outside_mapping(ctx: Ctx) -> None:
    values = stripes(CS_IDS)
    values[:, 0] = 250  # no Cityscapes id
    _write_palette(ctx.root / "gta5/labels/00002.png", values)
    train(ctx)


def _empty_split(ctx: Ctx) -> None:
    for p in (ctx.root / "cityscapes/leftImg8bit/val").rglob("*.png"):
        p.unlink()
    train(ctx)


def _no_dataset_folder(ctx: Ctx) -> None:
    shutil.rmtree(ctx.root / "dark_zurich")
    train(ctx, targets=("cityscapes", "darkzurich"))


def _missing_component(ctx: Ctx) -> None:
    model = ctx.model_copy()
    shutil.rmtree(model / "unet")
    train(ctx, model=str(model))


def _pickled_weights(ctx: Ctx) -> None:
    from diffusers import UNet2DConditionModel

    model = ctx.model_copy()
    unet = UNet2DConditionModel.from_pretrained(model / "unet")
    shutil.rmtree(model / "unet")
    unet.save_pretrained(model / "unet", safe_serialization=False)  # a pickle (.bin) only
    train(ctx, model=str(model))


def _checkpoint_of(ctx: Ctx, cfg: TrainConfig) -> Path:
    return Trainer(cfg, ctx.scratch / "elsewhere", log=quiet).save_checkpoint()


def _checkpoint_config_mismatch(ctx: Ctx) -> None:
    path = _checkpoint_of(ctx, ctx.cfg(consistency_weight=1.0))
    dg_model(ctx.cfg(consistency_weight=3.0, steps=1), checkpoint=str(path), log=quiet)


def _checkpoint_shape_mismatch(ctx: Ctx) -> None:
    model = ctx.model_copy()
    cfg = ctx.cfg(model=str(model))
    path = _checkpoint_of(ctx, cfg)
    shutil.rmtree(model)  # the folder now holds a model of other widths, under the same name
    words = caption_words(prompt_corpus(CLASSES))
    wider = tiny_sd_parts(ctx.scratch, words=words, max_length=32, unet_widths=(16, 32, 48))
    save_pipeline(wider, model)
    dg_model(cfg, checkpoint=str(path), log=quiet)


def _truncated_checkpoint(ctx: Ctx) -> None:
    cfg = ctx.cfg()
    data = _checkpoint_of(ctx, cfg).read_bytes()
    run = dg_run_dir(cfg, ctx.scratch / "old")  # a run folder whose checkpoint was cut short
    run.mkdir(parents=True)
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    train_dg(cfg, ctx.scratch / "old", log=quiet)


def _read_only_results(ctx: Ctx) -> None:
    """A read-only results folder, seen by a process that cannot override permissions (as
    root: with CAP_DAC_OVERRIDE dropped by setpriv)."""
    ctx.results.mkdir()
    ctx.results.chmod(0o555)
    code = f"from diffprompt.results import Run; Run('00_data', {{}}, root={str(ctx.results)!r})"
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: a read-only folder cannot be made")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    cmd = [*prefix, sys.executable, "-c", code]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if p.returncode == 0:
        return
    last = p.stderr.strip().splitlines()[-1]
    if not last.startswith("diffprompt.preflight.NotWritableError: "):
        raise AssertionError(p.stderr)
    raise NotWritableError(last.split(": ", 1)[1])


def _results_is_a_file(ctx: Ctx) -> None:
    ctx.results.write_text("not a folder\n")
    Run("02_dg_training", {}, root=ctx.results / "sub")


def _papermill(ctx: Ctx, notebook: str, *args: str) -> None:
    """Run a notebook with the papermill CLI as a user would; re-raise its ParameterError."""
    out = ctx.tmp / "executed.ipynb"
    papermill = str(Path(sys.executable).parent / "papermill")
    notebook_path = str(REPO_ROOT / "notebooks" / notebook)
    places = ["-p", "data_root", str(ctx.root), "-p", "results_dir", str(ctx.results)]
    cmd = [papermill, notebook_path, str(out), *places, *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    if p.returncode == 0:
        return
    found = re.findall(r"^ParameterError: (.*)$", p.stdout + p.stderr, re.M)
    if not found:
        raise AssertionError(p.stderr[-3000:])
    out.unlink(missing_ok=True)  # papermill's executed copy lies outside results/
    raise ParameterError(found[-1])


def _cli(ctx: Ctx, *overrides: str) -> None:
    """``python -m diffprompt.dg KEY=VALUE ...``: its error becomes SystemExit('error: ...')."""
    where = [f"data_root={ctx.root}", f"model={ctx.model}"]
    try:
        dg_main([*where, *overrides, "--results", str(ctx.results)])
    except SystemExit as e:
        raise SystemExit(str(e.code)) from None


def _tta(
    ctx: Ctx,
    target: str = "acdc_night",
    missing: str = "train",
    prompt_mode: str = "random_consistency",
    caption_tta: tuple[str, ...] = (),
    **over,
) -> None:
    """What notebook 03 runs before it loads or trains the DG model."""
    targets = resolve_targets(target)
    cfgs = {t: TTAConfig(target=t, **over) for t in targets}
    dg_cfg = ctx.cfg(source="cityscapes", targets=(), prompt_mode=prompt_mode)
    check_targets(cfgs, ["denoise"], ["offline"], dg_cfg, missing, "", None, None, caption_tta)
    dg_model(dg_cfg, None, missing, log=quiet)


def _budget(ctx: Ctx, name: str = "tta_budget", targets=("acdc_night",)) -> None:
    """What notebook 07 checks of its budget study before any work."""
    dg_cfg = ctx.cfg(source="cityscapes", targets=(), prompt_mode="random_consistency")
    cfgs = {t: TTAConfig(target=t) for t in targets}
    check_budget(name, cfgs, ["denoise"], dg_cfg)


def _probe(ctx: Ctx, **over) -> None:
    """What notebook 01 runs first."""
    probe_sets(ProbeConfig(data_root=str(ctx.root), targets=("cityscapes",), **over))


def _gap(ctx: Ctx, **over) -> None:
    """What notebook 00 runs for its domain-gap table."""
    run_domain_gap(ctx.root, "gta5", ["cityscapes"], GapConfig(device="cpu", **over))


def _candidate(ctx: Ctx, *args: str) -> None:
    """The candidate command of the embedded model, its outputs in scratch space."""
    where = ["--out", str(ctx.scratch / "candidate"), "--results", str(ctx.results)]
    sets = ["--set", f"data_root={ctx.root}"]
    if "--set" in args:  # one --set takes every assignment
        i = args.index("--set")
        args = (*args[:i], *args[i + 1 :])
        sets = [*sets, *[a for a in args if "=" in a]]
        args = tuple(a for a in args if "=" not in a)
    candidates.main([*where, "--device", "cpu", *args, *sets])


CASES = [
    Case(
        "unknown-dataset",
        "An unknown data set",
        '`source="gta6"`',
        "train_dg (notebook 02)",
        lambda c: train(c, source="gta6"),
        ValueError,
        r"unknown data set 'gta6'.*Did you mean 'gta5'",
    ),
    Case(
        "unknown-target",
        "An unknown DG target",
        '`targets=["citiscapes"]`',
        "train_dg (notebook 02)",
        lambda c: train(c, targets=("citiscapes",)),
        ValueError,
        r"unknown data set 'citiscapes'; valid names:.*Did you mean 'cityscapes'",
    ),
    Case(
        "unknown-tta-target",
        "An unknown TTA target",
        "`-p target acdc_nite`",
        "resolve_targets (notebook 03)",
        lambda c: _tta(c, target="acdc_nite"),
        ValueError,
        r"unknown target 'acdc_nite'; valid targets:.*Did you mean 'acdc_night'",
    ),
    Case(
        "unknown-backbone",
        "An unknown backbone",
        '`model="toy-sdd"`',
        "DiffusionBackbone.from_pretrained via train_dg",
        lambda c: train(c, model="toy-sdd"),
        ModelNotFoundError,
        r"no Stable Diffusion model folder at 'toy-sdd': pass an existing folder",
    ),
    Case(
        "missing-data-root",
        "A data root that does not exist",
        '`data_root="/no/such/folder"`',
        "resolve_data_root via train_dg",
        lambda c: train(c, data_root=str(c.tmp / "nowhere")),
        FileNotFoundError,
        r"does not exist or is not a folder\. Pass the folder that holds",
    ),
    Case(
        "missing-dataset-folder",
        "A data set missing from the data root",
        '`targets=["cityscapes", "darkzurich"]`, no dark_zurich/ under the root',
        "Trainer preflight (evaluation sets are opened before training)",
        _no_dataset_folder,
        DatasetNotFoundError,
        r"dark_zurich",
    ),
    Case(
        "corrupted-image",
        "A corrupted image",
        "gta5/images/00002.png truncated",
        "Trainer preflight (check_files)",
        _corrupt_image,
        DatasetError,
        r"cannot read image .*00002\.png.*Replace these files",
    ),
    Case(
        "label-wrong-size",
        "A label of another size than its image",
        "gta5/labels/00001.png 4 pixels wider",
        "Trainer preflight (check_files)",
        _label_wrong_size,
        DatasetError,
        rf"is {W + 4}x{H} \(WxH\) but its image .* is {W}x{H}",
    ),
    Case(
        "label-outside-mapping",
        "Label values outside the mapping",
        "gta5/labels/00002.png holds id 250",
        "Trainer preflight (check_files)",
        _label_outside_mapping,
        DatasetError,
        r"holds values \[250\] outside.*strict_labels=False",
    ),
    Case(
        "empty-split",
        "An empty split",
        "cityscapes/leftImg8bit/val/ holds no images",
        "Trainer preflight (evaluation sets)",
        _empty_split,
        DatasetNotFoundError,
        r"is empty",
    ),
    Case(
        "unlabeled-eval-split",
        "Evaluation on a split without labels",
        '`target_split="test"`',
        "Trainer preflight",
        lambda c: train(c, target_split="test"),
        ValueError,
        r"has no labels to evaluate on; set target_split",
    ),
    Case(
        "papermill-wrong-type",
        "A papermill parameter of the wrong type",
        "`-p steps abc`",
        "check_parameters (first cell of every notebook)",
        lambda c: _papermill(c, "02_dg_training.ipynb", "-p", "steps", "abc"),
        ParameterError,
        r"parameter 'steps' must be an integer \(steps: int\), got str 'abc'; pass e\.g\. -p steps",
    ),
    Case(
        "papermill-unknown-parameter",
        "A misspelt papermill parameter",
        "`-p stepz 5`",
        "check_parameters (first cell of every notebook)",
        lambda c: _papermill(c, "03_tta.ipynb", "-p", "stepz", "5"),
        ParameterError,
        r"unknown parameter 'stepz'.*Did you mean 'steps'",
    ),
    Case(
        "zero-steps",
        "Zero steps",
        "`steps=0`",
        "check_config via train_dg",
        lambda c: train(c, steps=0),
        ValueError,
        r"steps must be a positive integer, got 0",
    ),
    Case(
        "negative-steps",
        "Negative steps",
        "`steps=-5`",
        "check_config via train_dg",
        lambda c: train(c, steps=-5),
        ValueError,
        r"steps must be a positive integer, got -5",
    ),
    Case(
        "tta-zero-steps",
        "Zero TTA steps",
        "`-p steps 0` (notebook 03)",
        "check_targets (notebook 03)",
        lambda c: _tta(c, steps=0),
        ValueError,
        r"steps must be a positive integer, got 0",
    ),
    Case(
        "tta-caption-without-captions",
        "TTA from the caption without the caption rows",
        "`-p caption_rows False` with `caption_tta` left at `[denoise]` (notebook 03)",
        "check_targets (notebook 03)",
        lambda c: _tta(c, caption_tta=("denoise",)),
        ValueError,
        r"TTA from the caption \(caption_tta\) needs the caption rows: set caption_rows True",
    ),
    Case(
        "probe-zero-images",
        "A probe with no training images",
        "`n_train=0` (notebook 01)",
        "probe_sets (notebook 01)",
        lambda c: _probe(c, n_train=0),
        ValueError,
        r"probe: n_train must be a positive integer, got 0",
    ),
    Case(
        "gap-negative-lr",
        "A negative learning rate",
        "`gap` recipe `lr=-0.1` (notebook 00)",
        "run_domain_gap (notebook 00)",
        lambda c: _gap(c, lr=-0.1),
        ValueError,
        r"domain gap: lr must be a positive number, got -0\.1",
    ),
    Case(
        "crop-larger-than-image",
        "A crop larger than the image",
        f"`crop=(16, 32)` on {H}x{W} images, `cache_features=False`",
        "Trainer preflight (check_crop)",
        lambda c: train(c, cache_features=False, crop=(16, 32)),
        ValueError,
        rf"crop 16x32 \(HxW\) is larger than the source images \({H}x{W} at the smallest\): use a crop of at most",
    ),
    Case(
        "batch-not-divisible",
        "A batch that does not split into micro-batches",
        "`batch_size=6, grad_accum=4`",
        "check_config via train_dg",
        lambda c: train(c, batch_size=6, grad_accum=4),
        ValueError,
        r"batch_size 6 is not a multiple of grad_accum 4",
    ),
    Case(
        "model-missing-component",
        "A model folder missing a component",
        "a diffusers folder without unet/",
        "resolve_model_folder via train_dg",
        _missing_component,
        ModelNotFoundError,
        r"lacks unet; a complete checkpoint folder holds vae, unet",
    ),
    Case(
        "pickled-weights",
        "A model whose weights are pickles, not safetensors",
        "unet/diffusion_pytorch_model.bin only",
        "DiffusionBackbone.from_pretrained",
        _pickled_weights,
        ModelNotFoundError,
        r"unet holds diffusion_pytorch_model\.bin \(pickled\) but no \.safetensors file.*Convert it once",
    ),
    Case(
        "hub-offline",
        "A hub id while offline",
        '`model="someone/some-sd"` with HF_HUB_OFFLINE=1',
        "resolve_model_folder via train_dg",
        lambda c: train(c, model="someone/some-sd"),
        ModelNotFoundError,
        r"not in the local Hugging Face cache and HF_HUB_OFFLINE is set.*hf download",
    ),
    Case(
        "checkpoint-config-mismatch",
        "A checkpoint from another configuration",
        "`dg_checkpoint` written with consistency_weight 1, run with 3",
        "dg_model (notebook 03)",
        _checkpoint_config_mismatch,
        ConfigMismatchError,
        r"written by a run with another configuration \(fields \['consistency_weight', 'steps'\] differ\); delete it",
    ),
    Case(
        "checkpoint-shape-mismatch",
        "A checkpoint whose shapes do not fit the model",
        "the model folder was replaced by one of other widths",
        "load_dg_model (notebook 03)",
        _checkpoint_shape_mismatch,
        ConfigMismatchError,
        r"does not fit this model \(size mismatch.*delete it",
    ),
    Case(
        "truncated-checkpoint",
        "A truncated checkpoint",
        "checkpoint.pt cut to half its bytes",
        "train_dg (resume)",
        _truncated_checkpoint,
        CheckpointError,
        r"cannot be read .*truncated or not a diffprompt DG checkpoint: delete it",
    ),
    Case(
        "read-only-results",
        "A read-only results folder",
        "results/ with mode 0555",
        "Run (every notebook's first cell), train_dg, check_targets",
        _read_only_results,
        NotWritableError,
        r"is not writable: Permission denied; make it writable",
    ),
    Case(
        "results-is-a-file",
        "A results path below a file",
        '`results_dir="some/file/sub"`',
        "Run",
        _results_is_a_file,
        NotWritableError,
        r"cannot be created: .* is not a folder",
    ),
    Case(
        "tta-no-dg-model",
        "TTA without a trained DG model",
        "`-p dg_missing error`, nothing in results/",
        "dg_model (notebook 03)",
        lambda c: _tta(c, missing="error"),
        FileNotFoundError,
        r"no trained DG model for this configuration .*run notebook 02 with the same parameters",
    ),
    Case(
        "tta-no-scene-prompt",
        "TTA from a DG model without a scene prompt",
        "`-p prompt_mode category` (notebook 03)",
        "check_targets (notebook 03)",
        lambda c: _tta(c, prompt_mode="category"),
        ValueError,
        r"TTA learns the scene prompt, but the DG model is trained with prompt_mode='category'.*use fixed",
    ),
    Case(
        "unknown-device",
        "An unknown device",
        '`device="gpu"`',
        "resolve_device via train_dg",
        lambda c: train(c, device="gpu"),
        ValueError,
        r"unknown device 'gpu': use 'auto', 'cpu', 'cuda'",
    ),
    Case(
        "nan-learning-rate",
        "A learning rate that is not a number",
        '`lr=float("nan")`',
        "check_config via train_dg",
        lambda c: train(c, lr=float("nan")),
        ValueError,
        r"lr must be a positive number, got nan \(not a finite number\): set lr to a value > 0",
    ),
    Case(
        "out-of-range-dropout",
        "A value outside its documented range",
        "`dropout=1.0`",
        "check_config via train_dg",
        lambda c: train(c, dropout=1.0),
        ValueError,
        r"dropout must be a number in \[0, 1\), got 1\.0: set dropout to a value in \[0, 1\)",
    ),
    Case(
        "tta-infinite-lr",
        "An infinite TTA learning rate",
        '`lr=float("inf")` (notebook 03)',
        "check_targets (notebook 03)",
        lambda c: _tta(c, lr=float("inf")),
        ValueError,
        r"lr must be a positive number, got inf \(not a finite number\)",
    ),
    Case(
        "papermill-out-of-range",
        "A notebook parameter outside its range",
        "`-p lr -0.01`",
        "check_parameters (first cell of every notebook)",
        lambda c: _papermill(c, "02_dg_training.ipynb", "-p", "lr", "-0.01"),
        ParameterError,
        r"parameter lr must be a positive number, got -0\.01; pass a value > 0 \(-p lr VALUE\)",
    ),
    Case(
        "cli-nan",
        "A command-line number that is not finite",
        "`python -m diffprompt.dg lr=nan`",
        "python -m diffprompt.dg",
        lambda c: _cli(c, "lr=nan"),
        SystemExit,
        r"error: lr must be a positive number, got nan \(not a finite number\)",
    ),
    Case(
        "cli-out-of-range",
        "A command-line value outside its range",
        "`python -m diffprompt.dg warmup=-1`",
        "python -m diffprompt.dg",
        lambda c: _cli(c, "warmup=-1"),
        SystemExit,
        r"error: warmup must be a non-negative integer, got -1: set warmup to a value >= 0",
    ),
    Case(
        "cli-bad-boolean",
        "A command-line boolean that is neither true nor false",
        "`python -m diffprompt.dg flip=yes`",
        "python -m diffprompt.dg",
        lambda c: _cli(c, "flip=yes"),
        SystemExit,
        r"error: flip must be true or false, got 'yes': write flip=true or flip=false",
    ),
    Case(
        "cli-wrong-value",
        "A command-line value of the wrong type",
        "`python -m diffprompt.dg steps=abc`",
        "python -m diffprompt.dg",
        lambda c: _cli(c, "steps=abc"),
        SystemExit,
        r"error: steps must be an integer, got 'abc'",
    ),
    Case(
        "budget-name-with-a-path",
        "A TTA budget study whose name is a path",
        "`-p name ../tta`",
        "check_budget (notebook 07)",
        lambda c: _budget(c, name="../tta"),
        ValueError,
        r"name '\.\./tta' names the study's files: use letters, digits and underscores",
    ),
    Case(
        "budget-unknown-target",
        "A TTA budget study on an unknown target",
        '`-y "targets: [acdc_nite]"`',
        "check_budget (notebook 07)",
        lambda c: _budget(c, targets=["acdc_nite"]),
        ValueError,
        r"unknown target 'acdc_nite'; valid targets:.*Did you mean 'acdc_night'",
    ),
    Case(
        "cli-unknown-field",
        "A misspelt command-line field",
        "`python -m diffprompt.dg stepz=5`",
        "python -m diffprompt.dg",
        lambda c: _cli(c, "stepz=5"),
        SystemExit,
        r"error: unknown TrainConfig field 'stepz'\. Did you mean 'steps'",
    ),
    Case(
        "caption-missing",
        "An image without a caption in a caption mode",
        "`prompt_mode=caption` on real data without captions",
        "Trainer preflight (captions)",
        lambda c: train(c, prompt_mode="caption"),
        CaptionError,
        r"image '.*' of gta5 / train has no caption.*captions_file=PATH.*captioner=",
    ),
    Case(
        "captions-file-missing",
        "A captions file that does not exist",
        "`captions_file=nope.json`",
        "Trainer preflight (captions)",
        lambda c: train(c, prompt_mode="caption", captions_file=str(c.tmp / "nope.json")),
        CaptionError,
        r"captions file .*nope\.json does not exist; pass a JSON file",
    ),
    Case(
        "captioner-missing",
        "A captioner that is not on disk, offline",
        "`captioner=nobody/no-such-blip` with HF_HUB_OFFLINE=1",
        "Trainer preflight (captions)",
        lambda c: train(
            c, prompt_mode="caption", caption_source="captioner", captioner="nobody/no-such-blip"
        ),
        ModelNotFoundError,
        r"captioner 'nobody/no-such-blip' is not in the local Hugging Face cache",
    ),
    Case(
        "candidate-unknown-recipe",
        "An unknown candidate recipe of the embedded model",
        "`--recipe gpu11`",
        "toysd.candidates (make embedded-candidate)",
        lambda c: _candidate(c, "--recipe", "gpu11"),
        SystemExit,
        r"unknown candidate recipe 'gpu11'; choose from gpu10, gpu10-masked, cpu-textpath",
    ),
    Case(
        "candidate-unknown-part",
        "A part to train that the recipe does not know",
        "`--set train_parts=unet,decoder`",
        "toysd.candidates (ToySDConfig)",
        lambda c: _candidate(c, "--set", "train_parts=unet,decoder"),
        SystemExit,
        r"train_parts \['decoder'\] unknown; choose from text_embedding, cross_attention",
    ),
    Case(
        "candidate-missing-start-model",
        "A model to fine-tune that is not there",
        "`--set init_from=/models/no-such-toy`",
        "toysd.candidates (before training)",
        lambda c: _candidate(c, "--set", f"init_from={c.scratch / 'no-such-toy'}"),
        ModelNotFoundError,
        r"no toy model to fine-tune \(init_from\) folder at .*no-such-toy",
    ),
]

MESSAGES: dict[str, tuple[str, str]] = {}  # id -> (exception type, normalised message)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _normalise(msg: str, ctx: Ctx) -> str:
    for path, name in (
        (ctx.results, "<results>"),
        (ctx.root, "<data>"),
        (ctx.model, "<model>"),
        (ctx.tmp, "<tmp>"),
        (REPO_ROOT, "<repo>"),
    ):
        msg = msg.replace(str(path), name)
    return re.sub(r"-[0-9a-f]{16}\b", "-<config hash>", msg)  # run folders hash the paths too


def run_case(case: Case, tmp: Path, model: Path, monkeypatch) -> str:
    """Run one case; assert its error, its message and that nothing was written."""
    from diffprompt.backbones.diffusion import DiffusionBackbone

    ctx = Ctx(tmp, build_fake_root(tmp / "data"), model, tmp / "results")
    monkeypatch.setenv("DIFFPROMPT_RESULTS", str(ctx.results))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def work(*a, **k):
        raise WorkStarted(f"{case.id}: work started before the error")

    monkeypatch.setattr(DiffusionBackbone, "encode", work)
    monkeypatch.setattr(DiffusionBackbone, "forward", work)
    monkeypatch.setattr("diffprompt.probing.fit_probe", work)
    monkeypatch.setattr("diffprompt.domain_gap.train_cnn", work)
    before = {p for p in _files(tmp) if not p.is_relative_to(ctx.results)}
    with pytest.raises(case.error) as e:
        case.run(ctx)
    msg = str(e.value) if not isinstance(e.value, SystemExit) else str(e.value.code)
    assert re.search(case.match, msg, re.S), msg
    assert _files(ctx.results) == [], f"{case.id} wrote into results/"
    partial = [
        p for p in _files(tmp) if p.name.endswith(".tmp") or ".diffprompt-write-probe" in p.name
    ]
    assert partial == [], partial
    new = [p for p in _files(tmp) if p not in before and not p.is_relative_to(ctx.results)]
    assert [p for p in new if not p.is_relative_to(ctx.scratch)] == []
    if ctx.results.exists():
        ctx.results.chmod(0o755)
    MESSAGES[case.id] = (type(e.value).__name__, _normalise(msg, ctx))
    return msg


def test_there_are_at_least_twenty_cases():
    assert len(CASES) >= 20
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_early_and_clearly(case, tmp_path, tiny_sd, monkeypatch):
    run_case(case, tmp_path, tiny_sd, monkeypatch)


def render(messages: dict[str, tuple[str, str]]) -> str:
    """Return docs/ERRORS.md for the messages of every case."""
    out = [
        "# Bad input: what diffprompt says",
        "",
        "Every case below is a test (`tests/test_bad_input.py`). Each stops before any work",
        "starts (no feature is computed, no model trained), writes nothing to results/ and leaves",
        "no partial file; the message names the problem and what to do. Paths are shown as",
        "`<data>` (the data root), `<model>`, `<results>`, `<tmp>` and `<repo>`. This page is",
        "generated from the tests: `DIFFPROMPT_WRITE_DOCS=1 pytest tests/test_bad_input.py`.",
        "",
        "What is checked before a run, and where, is described in `diffprompt/preflight.py`:",
        "notebook parameters (types, finite numbers in their ranges, names) in every notebook's",
        "first cell; configurations (`check_config`, `check_tta`, `check_values`: every field's",
        "type, finite numbers, the range of each); data sets (the root, each data set's",
        "folder and split, and the files a run reads: every file for up to 256 images, an evenly",
        "spread sample of 32 beyond; `python -m diffprompt.data check NAME` reads all); the",
        "crop against the images; the model folder and its weights (safetensors only);",
        "checkpoints (readable, same configuration hash, same shapes); and the results folder.",
        "",
        "| # | case | input | caught by | error |",
        "|---|---|---|---|---|",
    ]
    for i, c in enumerate(CASES, 1):
        out.append(
            f"| {i} | [{c.title}](#{i}-{c.id}) | {c.given} | {c.where} | `{messages[c.id][0]}` |"
        )
    out.append("")
    for i, c in enumerate(CASES, 1):
        kind, msg = messages[c.id]
        out += [
            f"## {i}. {c.id}",
            "",
            f"{c.title}: {c.given}. Caught by {c.where}; raises `{kind}`:",
            "",
            "```text",
            msg,
            "```",
            "",
        ]
    return "\n".join(out)


def test_errors_doc_lists_every_case_with_its_message(tmp_path_factory, tiny_sd, monkeypatch):
    for case in CASES:  # the cases this session did not run (e.g. under -k) run now
        if case.id not in MESSAGES:
            with monkeypatch.context() as m:
                run_case(case, tmp_path_factory.mktemp(case.id), tiny_sd, m)
    text = render(MESSAGES)
    if os.environ.get("DIFFPROMPT_WRITE_DOCS") == "1":
        DOC.write_text(text)
    assert DOC.is_file(), "run DIFFPROMPT_WRITE_DOCS=1 pytest tests/test_bad_input.py"
    assert DOC.read_text() == text, (
        "docs/ERRORS.md is out of date: DIFFPROMPT_WRITE_DOCS=1 pytest tests/test_bad_input.py"
    )


def test_check_parameters_types_and_names():
    from diffprompt.parameters import check_parameters

    ann = {"steps": int, "lr": float, "targets": list, "retrain": bool, "name": str}
    good = {
        "steps": 3,
        "lr": 1,
        "targets": ["a"],
        "retrain": False,
        "name": "x",
        "np": np,
        "In": [],
        "_": None,
        "__annotations__": ann,
    }
    assert check_parameters(good)["lr"] == 1.0 and isinstance(check_parameters(good)["lr"], float)
    for bad, match in [
        ({"steps": 1.5}, "'steps' must be an integer"),
        ({"steps": True}, "'steps' must be an integer"),
        ({"retrain": 1}, "'retrain' must be True or False"),
        ({"targets": "cityscapes"}, r"-y 'targets: \[\]'"),
        ({"lr": "fast"}, "'lr' must be a number"),
        ({"name": 5}, "'name' must be a string"),
    ]:
        with pytest.raises(ParameterError, match=match):
            check_parameters({**good, **bad})
    with pytest.raises(ParameterError, match="unknown parameter 'lrr'.*Did you mean 'lr'"):
        check_parameters({**good, "lrr": 0.1})
    # a namespace checked once (a notebook re-run interactively) may hold the run's variables
    ns = dict(good)
    check_parameters(ns)
    ns["trainer"] = object()
    check_parameters(ns)


def test_sampled_file_check_reads_first_last_and_spread():
    from diffprompt.preflight import ALL_FILES, SAMPLE_FILES, file_indices

    assert file_indices(10) == list(range(10))
    big = file_indices(10_000)
    assert len(big) == SAMPLE_FILES and big[0] == 0 and big[-1] == 9999
    assert file_indices(ALL_FILES + 1, range(5, ALL_FILES + 6))[0] == 5
    assert torch.tensor(big).diff().min() > 100  # evenly spread
