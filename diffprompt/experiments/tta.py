"""Notebook 03: the DG model TTA starts from, every row of a target's table, the summary.

Each row of a target's table is a method (:data:`METHODS`, by id) in a setting: "-" (no
fitting: no adaptation, the hand-written target prompt), "offline" or "online"
(:data:`diffprompt.tta.SETTINGS`). Rows carry the method's id; labels are looked up, never
parsed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from diffprompt.benchmarks import TARGET_PROMPTS, resolve_targets
from diffprompt.cache import FeatureCache
from diffprompt.data.roots import resolve_data_root
from diffprompt.dg.checkpoint import CHECKPOINT, load_dg_model
from diffprompt.dg.config import RANDOM_MODES, TrainConfig, check_config, config_from, config_hash
from diffprompt.dg.data import image_transform
from diffprompt.dg.runs import dg_run_dir, train_dg
from diffprompt.experiments import config_of
from diffprompt.model import SegModel
from diffprompt.paths import cache_dir, results_root
from diffprompt.preflight import check_files, check_writable
from diffprompt.runtime import resolve_device
from diffprompt.tta import PromptTTA, TTAConfig, check_tta, target_sets
from diffprompt.viz import tta_curve_figure, tta_prediction_figure

#: Every method of a TTA table: id -> (label in a target's table, label in the summary,
#: short name in the prediction figure, setting in the paper's T4: "DG" without
#: adaptation, else "TTA"). The hand-written prompt's label in a target's table also quotes
#: the target's prompt.
METHODS: dict[str, tuple[str, str, str, str]] = {
    "none": ("no adaptation", "no adaptation", "no adaptation", "DG"),
    "target_prompt": (
        "hand-written prompt",
        "hand-written target prompt",
        "hand-written prompt",
        "DG",
    ),
    "tent": ("TENT (normalisation affine)", "TENT (normalisation affine)", "TENT", "TTA"),
    "prompt_denoise": ("TTA prompt: denoise", "TTA prompt: denoise", "TTA denoise", "TTA"),
    "prompt_entropy": ("TTA prompt: entropy", "TTA prompt: entropy", "TTA entropy", "TTA"),
    "prompt_both": ("TTA prompt: both", "TTA prompt: both", "TTA both", "TTA"),
}
TABLE_LABEL, SUMMARY_LABEL, SHORT_LABEL, PAPER_SETTING = range(4)


# ---------------------------------------------------------------------------------------
# Configurations from the notebook's parameters
# ---------------------------------------------------------------------------------------


def tta_dg_config(params: Mapping[str, Any]) -> TrainConfig:
    """Return the TrainConfig of the DG model notebook 03 adapts: its ``source``, data,
    model, prompt parameters and seed, ``dg_steps`` / ``dg_batch_size`` /
    ``dg_max_train_images`` as notebook 02's ``steps`` / ``batch_size`` /
    ``max_train_images``, no targets, then the ``preset``."""
    p = params
    fields = {
        "source": p["source"],
        "data_root": p["data_root"],
        "model": p["model"],
        "prompt_mode": p["prompt_mode"],
        "scene_text": p["scene_text"],
        "steps": p["dg_steps"],
        "batch_size": p["dg_batch_size"],
        "max_train_images": p["dg_max_train_images"],
        "device": p["device"],
        "seed": p["seed"],
        "targets": (),
    }
    return config_from(fields, p.get("preset", ""))


def tta_configs(params: Mapping[str, Any]) -> dict[str, TTAConfig]:
    """Return {target: TTAConfig} of notebook 03's parameters (every parameter named like a
    TTAConfig field), one per target that ``target`` names (a target, a group such as
    "adverse", or "all")."""
    targets = resolve_targets(params["target"])
    return {t: config_of(TTAConfig, params, target=t) for t in targets}


def check_targets(
    cfgs: Mapping[str, TTAConfig],
    objectives: Sequence[str],
    settings: Sequence[str],
    dg_cfg: TrainConfig,
    missing: str = "train",
    checkpoint: str = "",
    results_dir=None,
) -> None:
    """Check a TTA run before any work (before its DG model is trained or loaded): every
    TTA configuration, the DG configuration (it must have a scene prompt to learn), and
    each target's fit and evaluation splits (present, labeled where evaluated, their files
    readable; see :func:`diffprompt.preflight.check_files`) and that ``results_dir`` (None:
    results/) can be written. Raises an error that says what to do."""
    check_writable(results_dir or results_root())
    check_config(dg_cfg)
    if dg_cfg.prompt_mode not in ("fixed", *RANDOM_MODES):
        raise ValueError(
            f"TTA learns the scene prompt, but the DG model is trained with "
            f"prompt_mode={dg_cfg.prompt_mode!r} (no scene prompt): use fixed, random or "
            "random_consistency"
        )
    if missing not in ("train", "error"):
        raise ValueError(f"dg_missing must be 'train' or 'error', got {missing!r}")
    if checkpoint and not Path(checkpoint).is_file():
        raise FileNotFoundError(
            f"no DG checkpoint at {checkpoint}: pass the checkpoint.pt of a finished DG run "
            "(results/runs/dg/<run>/), or '' to use results/"
        )
    root = resolve_data_root(dg_cfg.data_root)
    for cfg in cfgs.values():
        check_tta(cfg, objectives, settings)
        sets = target_sets(cfg, root, dg_cfg.target_split)
        if not sets.evaluation.labeled:
            raise ValueError(
                f"{cfg.target}: split {dg_cfg.target_split!r} has no labels to evaluate on"
            )
        check_files(sets.fit, range(sets.n_fit))
        check_files(sets.evaluation, range(sets.n_eval))


# ---------------------------------------------------------------------------------------
# The DG model TTA starts from
# ---------------------------------------------------------------------------------------


@dataclass
class DGModel:
    """A trained DG model and what TTA needs of its run."""

    model: SegModel
    cfg: TrainConfig
    root: Path  # the data root
    cache: FeatureCache | None  # the run's feature cache (its VAE latents are reused)
    transform: Any  # what the run's evaluation images get
    step: int  # the step its checkpoint reached

    @property
    def hash(self) -> str:
        return config_hash(self.cfg)


def dg_model(
    cfg: TrainConfig,
    results_dir=None,
    missing: str = "train",
    checkpoint: str = "",
    log: Callable[[str], None] = print,
) -> DGModel:
    """Return the trained DG model TTA starts from.

    ``checkpoint``: a checkpoint file to load (its configuration must equal ``cfg``, else a
    ConfigMismatchError names the fields that differ). Otherwise the finished run of
    ``cfg`` in results/runs/dg is loaded; when there is none, ``missing="train"`` trains it
    first (notebook 02's recipe) and ``missing="error"`` raises FileNotFoundError.
    """
    if missing not in ("train", "error"):
        raise ValueError(f"missing must be 'train' or 'error', got {missing!r}")
    root = resolve_data_root(cfg.data_root)
    transform = image_transform(cfg, for_eval=True)
    path = Path(checkpoint) if checkpoint else dg_run_dir(cfg, results_dir) / CHECKPOINT
    if not path.is_file() and (checkpoint or missing == "error"):
        raise FileNotFoundError(
            f"no trained DG model for this configuration at {path}: run notebook 02 with the "
            "same parameters, or pass missing='train'"
        )
    if not path.is_file():
        trainer = train_dg(cfg, results_dir, log=log)
        return DGModel(trainer.model, cfg, root, trainer.cache, transform, trainer.state.step)
    model = load_dg_model(cfg, path, resolve_device(cfg.device))
    cache = None
    if cfg.cache_features:
        cache = FeatureCache(model, cache_dir(results_dir))
    return DGModel(model, cfg, root, cache, transform, cfg.steps)


# ---------------------------------------------------------------------------------------
# One target, every row of its table
# ---------------------------------------------------------------------------------------


def run_target(
    dg: DGModel,
    cfg: TTAConfig,
    objectives: Sequence[str] = ("denoise", "entropy", "both"),
    settings: Sequence[str] = ("offline",),
    tent: bool = True,
    zero_shot: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every row of one target's TTA table. Returns {"rows": [{"id", "method",
    "setting", "mIoU", "fit images"}], "curves": rows, "nearest": {objective: rows},
    "fit_split": note, "examples": [(id, setting, prediction (H, W))], "example": (image,
    mask), "seconds": wall time}."""
    check_tta(cfg, objectives, settings)
    t0 = time.time()
    tta = PromptTTA(dg.model, cfg, dg.cache, dg.transform, log)
    sets = tta.target_sets(dg.root, dg.cfg.target_split)
    if sets.n_fit == 0 or sets.n_eval == 0:
        raise ValueError(f"{cfg.target}: no images to fit on ({sets.note}) or to evaluate on")
    fit_set, eval_set = sets.fit, sets.evaluation
    fit_idx, eval_idx = list(range(sets.n_fit)), list(range(sets.n_eval))
    rows, curves, nearest, examples = [], [], {}, []
    shown = 0  # the evaluation image of the prediction figure
    fitted = {"-": 0, "offline": sets.n_fit, "online": sets.n_eval}

    def add(method: str, setting: str, cm, model, label: str | None = None) -> None:
        rows.append(
            {
                "id": method,
                "method": label or METHODS[method][TABLE_LABEL],
                "setting": setting,
                "mIoU": tta.miou(cm, eval_set),
                "fit images": fitted[setting],
            }
        )
        examples.append((method, setting, tta.predict(model, eval_set, [shown])[0]))

    base = tta.evaluate(tta.dg, eval_set, eval_idx)
    add("none", "-", base, tta.dg)
    log(f"{cfg.target}: no adaptation {rows[-1]['mIoU']:.2f} mIoU ({sets.n_eval} images)")
    if zero_shot:
        text = TARGET_PROMPTS[cfg.target]
        zs = tta.with_scene_text(text)
        label = f'{METHODS["target_prompt"][TABLE_LABEL]} "{text}"'
        add("target_prompt", "-", tta.evaluate(zs, eval_set, eval_idx), zs, label)
    if tent:
        add("tent", "offline", *tta.tent(fit_set, fit_idx, eval_set, eval_idx))
    for objective in objectives:
        for setting in settings:
            if setting == "offline":
                cm, curve = tta.fit_offline(objective, fit_set, fit_idx, eval_set, eval_idx, base)
                curves += [{"objective": objective, **c} for c in curve]
                nearest[objective] = tta.nearest_words()
            else:
                cm = tta.fit_online(objective, eval_set, eval_idx)
            add(f"prompt_{objective}", setting, cm, tta.tta_model)
            log(f"{cfg.target}: TTA {objective} ({setting}) {rows[-1]['mIoU']:.2f} mIoU")
    sample = eval_set[shown]
    return {
        "rows": rows,
        "curves": curves,
        "nearest": nearest,
        "fit_split": sets.note,
        "examples": examples,
        "example": (sample["image"], sample["mask"]),
        "seconds": time.time() - t0,
    }


def target_table(result: Mapping[str, Any]) -> pd.DataFrame:
    """Return a target's table: mIoU per method (index: its label) with its setting, the
    images fitted on and the split they came from."""
    table = pd.DataFrame(result["rows"]).drop(columns="id").set_index("method")
    table["fit split"] = [result["fit_split"] if s != "-" else "-" for s in table["setting"]]
    return table


def record_target(result: Mapping[str, Any], target: str, run) -> pd.DataFrame:
    """Write one target's outputs through ``run`` (a :class:`diffprompt.results.Run`):
    tables tta_<target> (every row), tta_<target>_curve (mIoU against steps) and
    tta_<target>_nearest (nearest tokens of each learned word), figures tta_<target>_curve
    and tta_<target>_predictions. Returns the main table."""
    table = target_table(result)
    caption = f"{target}: mIoU (%) on its labeled split; fitted on {result['fit_split']}."
    run.table(table, f"tta_{target}", caption=caption)
    if result["curves"]:
        curve = pd.DataFrame(result["curves"]).set_index(["objective", "step"])
        run.table(curve, f"tta_{target}_curve", float_format="%.4f")
        run.figure(tta_curve_figure(result["curves"], target), f"tta_{target}_curve", ("png",))
    near = [{"objective": o, **r} for o, rows in result["nearest"].items() for r in rows]
    if near:
        near_table = pd.DataFrame(near).set_index(["objective", "position"])
        run.table(near_table, f"tta_{target}_nearest", float_format="%.4f")
    panels = {}
    for method, setting, prediction in result["examples"]:
        name = METHODS[method][SHORT_LABEL]
        panels[name if setting != "online" else f"{name} (online)"] = prediction
    figure = tta_prediction_figure(result["example"], panels, target)
    run.figure(figure, f"tta_{target}_predictions", formats=("png",), dpi=90)
    return table


def summary_table(results: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Return mIoU per method (rows, in the tables' order; the method's summary label as
    index, its id in column "id") and target (columns, then their mean when there are
    several); the hand-written prompts (one text per target) share a row."""
    cols, ids = {}, {}
    for target, result in results.items():
        keys, values = [], []
        for row in result["rows"]:
            label = METHODS[row["id"]][SUMMARY_LABEL]
            key = f"{label} (online)" if row["setting"] == "online" else label
            ids[key] = row["id"]
            keys.append(key)
            values.append(row["mIoU"])
        cols[target] = pd.Series(values, index=keys)
    order = list(dict.fromkeys(k for c in cols.values() for k in c.index))
    out = pd.DataFrame(cols).reindex(order)
    if len(out.columns) > 1:
        out["mean"] = out.mean(axis=1)
    out.insert(0, "id", [ids[k] for k in out.index])
    return out


def paper_setting(method_id: str) -> str:
    """Return the setting of a method in the paper's T4: "DG" (no adaptation) or "TTA"."""
    return METHODS[method_id][PAPER_SETTING]
