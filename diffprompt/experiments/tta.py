"""Notebook 03: the DG model TTA starts from, every row of a target's table, the summary.

Each row of a target's table is a method (:data:`METHODS`, by id) in a setting: "-" (no
fitting: no adaptation, the hand-written target prompt), "offline" or "online"
(:data:`diffprompt.tta.SETTINGS`). Rows carry the method's id; labels are looked up, never
parsed.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from diffprompt.benchmarks import TARGET_PROMPTS, eval_classes, resolve_targets
from diffprompt.cache import FeatureCache
from diffprompt.captions import CaptionBook, CaptionPrompt
from diffprompt.data.roots import resolve_data_root
from diffprompt.dg.checkpoint import CHECKPOINT, load_dg_model, read_checkpoint
from diffprompt.dg.config import (
    RANDOM_MODES,
    PresetChoice,
    TrainConfig,
    check_config,
    config_hash,
    with_preset,
)
from diffprompt.dg.data import image_transform
from diffprompt.dg.runs import dg_run_dir, train_dg
from diffprompt.experiments.stats import ci_rows, format_ci
from diffprompt.model import SegModel
from diffprompt.parameters import DG_PREFIX, SHARED, config_of, explicit_parameters
from diffprompt.paths import cache_dir, results_root
from diffprompt.preflight import check_files, check_writable
from diffprompt.runtime import resolve_device
from diffprompt.tta import (
    OBJECTIVES,
    PromptTTA,
    TTAConfig,
    caption_start,
    check_tta,
    target_sets,
)
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
    "target_caption": (
        "own caption",
        "each image's own caption",
        "own caption",
        "DG",
    ),
    "target_caption_stripped": (
        "own caption, condition words removed",
        "own caption, conditions removed",
        "caption, no conditions",
        "DG",
    ),
    "tent": ("TENT (normalisation affine)", "TENT (normalisation affine)", "TENT", "TTA"),
    "prompt_denoise": ("TTA prompt: denoise", "TTA prompt: denoise", "TTA denoise", "TTA"),
    "prompt_entropy": ("TTA prompt: entropy", "TTA prompt: entropy", "TTA entropy", "TTA"),
    "prompt_both": ("TTA prompt: both", "TTA prompt: both", "TTA both", "TTA"),
    **{
        f"caption_{o}": (
            f"TTA from own caption: {o}",
            f"TTA from own caption: {o}",
            f"caption TTA {o}",
            "TTA",
        )
        for o in OBJECTIVES
    },
}
TABLE_LABEL, SUMMARY_LABEL, SHORT_LABEL, PAPER_SETTING = range(4)


# ---------------------------------------------------------------------------------------
# Configurations from the notebook's parameters
# ---------------------------------------------------------------------------------------


def tta_dg_config(
    params: Mapping[str, Any], explicit: Iterable[str] | None = None
) -> tuple[TrainConfig, PresetChoice]:
    """Return the TrainConfig of the DG model notebook 03 adapts and what its preset did:
    every ``dg_<field>`` parameter sets that field (:data:`diffprompt.parameters.DG_PREFIX`:
    ``dg_steps`` is notebook 02's ``steps``), the run's context (``source``, ``data_root``,
    ``model``, ``device``) is shared, no targets (the seed is set per run); then the
    ``preset`` on every field but those the user passed (``explicit``: parameter names;
    None: the parameters whose values differ from the notebook's defaults)."""
    if explicit is None:
        explicit = explicit_parameters(params, "03_tta")
    shared = {k: params[k] for k in SHARED if k in params}
    cfg = config_of(TrainConfig, params, DG_PREFIX, **shared, targets=())
    given = {k.removeprefix(DG_PREFIX) for k in explicit if k.startswith(DG_PREFIX)}
    return with_preset(cfg, params.get("preset", ""), given | (set(shared) & set(explicit)))


def tta_configs(params: Mapping[str, Any]) -> dict[str, TTAConfig]:
    """Return {target: TTAConfig} of notebook 03's parameters (every parameter named like a
    TTAConfig field), one per target that ``target`` names (a target, a group such as
    "adverse", or "all")."""
    targets = resolve_targets(params["target"])
    return {t: config_of(TTAConfig, params, target=t) for t in targets}


def tta_seed_config(cfg: TTAConfig, seed: int) -> TTAConfig:
    """Return ``cfg`` with TTA seed ``seed`` (its batches and noise)."""
    return dataclasses.replace(cfg, seed=int(seed))


def check_targets(
    cfgs: Mapping[str, TTAConfig],
    objectives: Sequence[str],
    settings: Sequence[str],
    dg_cfg: TrainConfig,
    missing: str = "train",
    checkpoint: str = "",
    results_dir=None,
    captions: CaptionBook | None = None,
    caption_objectives: Sequence[str] = (),
) -> None:
    """Check a TTA run before any work (before its DG model is trained or loaded): every
    TTA configuration, the DG configuration (it must have a scene prompt to learn), and
    each target's fit and evaluation splits (present, labeled where evaluated, their files
    readable; see :func:`diffprompt.preflight.check_files`; with ``captions``, every
    evaluation image has a caption, and with ``caption_objectives`` (TTA from the caption)
    every fit image too) and that ``results_dir`` (None: results/) can be written. Raises
    an error that says what to do."""
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
    if caption_objectives and captions is None:
        raise ValueError(
            "TTA from the caption (caption_tta) needs the caption rows: set caption_rows True "
            "(captions from the data set, captions_file or captioner), or caption_tta []"
        )
    if checkpoint and not Path(checkpoint).is_file():
        raise FileNotFoundError(
            f"no DG checkpoint at {checkpoint}: pass the checkpoint.pt of a finished DG run "
            "(results/runs/dg/<run>/), or '' to use results/"
        )
    root = resolve_data_root(dg_cfg.data_root)
    for cfg in cfgs.values():
        check_tta(cfg, [*objectives, *caption_objectives], settings)
        sets = target_sets(cfg, root, dg_cfg.target_split)
        if not sets.evaluation.labeled:
            raise ValueError(
                f"{cfg.target}: split {dg_cfg.target_split!r} has no labels to evaluate on"
            )
        check_files(sets.fit, range(sets.n_fit))
        check_files(sets.evaluation, range(sets.n_eval))
        if captions is not None:
            captions.check(sets.evaluation, range(sets.n_eval))
        if captions is not None and caption_objectives:
            captions.check(sets.fit, range(sets.n_fit))


def tta_captions(params: Mapping[str, Any], results_dir=None) -> CaptionBook | None:
    """Return the captions of notebook 03's caption rows (``caption_rows``; None without
    them): from the data set, else ``captions_file``, else ``captioner``, those of a
    captioner kept beside the feature cache."""
    if not params.get("caption_rows", False):
        return None
    file, captioner = params.get("captions_file", ""), params.get("captioner", "")
    return CaptionBook("auto", file, captioner, cache_dir(results_dir or None))


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
    log: list = dataclasses.field(default_factory=list)  # its training log (the curve)

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
        state = trainer.state
        return DGModel(trainer.model, cfg, root, trainer.cache, transform, state.step, state.log)
    model = load_dg_model(cfg, path, resolve_device(cfg.device))
    state = json.loads(read_checkpoint(path)["state"])
    cache = None
    if cfg.cache_features:
        cache = FeatureCache(model, cache_dir(results_dir))
    return DGModel(model, cfg, root, cache, transform, state["step"], state["log"])


def dg_models(
    cfg: TrainConfig,
    seeds: Sequence[int],
    results_dir=None,
    missing: str = "train",
    checkpoint: str = "",
    log: Callable[[str], None] = print,
) -> dict[int, DGModel]:
    """Return {seed: :func:`dg_model` of ``cfg`` at that seed} (``checkpoint``: one file,
    only with a single seed)."""
    if checkpoint and len(seeds) != 1:
        raise ValueError(
            "dg_checkpoint is one DG model: pass it with a single seed (-y 'seeds: [0]')"
        )
    return {
        int(s): dg_model(
            dataclasses.replace(cfg, seed=int(s)), results_dir, missing, checkpoint, log
        )
        for s in seeds
    }


def dg_curves(dgs: Mapping[int, DGModel]) -> pd.DataFrame:
    """Return the DG runs' training curves (as :func:`diffprompt.experiments.dg.curve_table`)."""
    rows = [
        {
            "method": dg.cfg.prompt_mode,
            "seed": seed,
            "step": e["step"],
            "set": f"{dg.cfg.source} val",
            "mIoU": e["curve_mIoU"],
            "loss": e["loss"],
        }
        for seed, dg in dgs.items()
        for e in dg.log
        if "curve_mIoU" in e
    ]
    return pd.DataFrame(rows, columns=["method", "seed", "step", "set", "mIoU", "loss"])


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
    examples: bool = True,
    captions: CaptionBook | None = None,
    caption_objectives: Sequence[str] = (),
) -> dict[str, Any]:
    """Run every row of one target's TTA table (with ``captions``, also the DG model
    prompted with each target image's own caption in place of its scene prompt, as is and
    without its condition words: TADP's test-time setting; and with ``caption_objectives``,
    TTA that starts from each image's caption and learns its condition words, one span for
    the target: :class:`diffprompt.tta.CaptionStart`). Returns {"rows": [{"id", "method",
    "setting", "mIoU", "fit images"}], "curves": rows, "nearest": {objective: rows},
    "fit_split": note, "examples": [(id, setting, prediction (H, W))] (empty with
    ``examples=False``: the prediction figure shows one seed), "example": (image, mask),
    "seconds": wall time}."""
    check_tta(cfg, objectives, settings)
    t0 = time.time()
    tta = PromptTTA(dg.model, cfg, dg.cache, dg.transform, log)
    sets = tta.target_sets(dg.root, dg.cfg.target_split)
    if sets.n_fit == 0 or sets.n_eval == 0:
        raise ValueError(f"{cfg.target}: no images to fit on ({sets.note}) or to evaluate on")
    fit_set, eval_set = sets.fit, sets.evaluation
    fit_idx, eval_idx = list(range(sets.n_fit)), list(range(sets.n_eval))
    rows, curves, nearest, example_rows = [], [], {}, []
    shown = 0  # the evaluation image of the prediction figure
    fitted = {"-": 0, "offline": sets.n_fit, "online": sets.n_eval}

    def add(method: str, setting: str, cm, model, label=None, prompts=None, by=None) -> None:
        """Add a row; its example prediction by the adapter ``by`` (None: ``tta``) that
        knows the model's context."""
        rows.append(
            {
                "id": method,
                "method": label or METHODS[method][TABLE_LABEL],
                "setting": setting,
                "mIoU": tta.miou(cm, eval_set),
                "fit images": fitted[setting],
                "cms": cm.per_image_matrices(),
            }
        )
        if examples:
            shown_classes = (by or tta).predict(model, eval_set, [shown], prompts=prompts)[0]
            example_rows.append((method, setting, shown_classes))

    base = tta.evaluate(tta.dg, eval_set, eval_idx, fixed=True)  # maps shared across seeds
    add("none", "-", base, tta.dg)
    log(f"{cfg.target}: no adaptation {rows[-1]['mIoU']:.2f} mIoU ({sets.n_eval} images)")
    if zero_shot:
        text = TARGET_PROMPTS[cfg.target]
        zs = tta.with_scene_text(text)
        label = f'{METHODS["target_prompt"][TABLE_LABEL]} "{text}"'
        add("target_prompt", "-", tta.evaluate(zs, eval_set, eval_idx, fixed=True), zs, label)
    if captions is not None:
        for method, variant in (
            ("target_caption", "caption"),
            ("target_caption_stripped", "stripped"),
        ):
            prompt = CaptionPrompt(captions, variant)
            cm = tta.evaluate(tta.dg, eval_set, eval_idx, prompts=prompt)
            add(method, "-", cm, tta.dg, prompts=prompt)
            log(f"{cfg.target}: {METHODS[method][TABLE_LABEL]} {rows[-1]['mIoU']:.2f} mIoU")
    if tent:
        add("tent", "offline", *tta.tent(fit_set, fit_idx, eval_set, eval_idx))

    def fit(adapter: PromptTTA, objective: str, method: str, name: str, at_start) -> None:
        """One learned-prompt row per setting; the offline curve and nearest words as
        ``name``; ``at_start``: the curve's step 0 (None: evaluated)."""
        for setting in settings:
            if setting == "offline":
                cm, curve = adapter.fit_offline(
                    objective, fit_set, fit_idx, eval_set, eval_idx, at_start
                )
                curves.extend({"objective": name, **c} for c in curve)
                nearest[name] = adapter.nearest_words()
            else:
                cm = adapter.fit_online(objective, eval_set, eval_idx)
            add(method, setting, cm, adapter.tta_model, by=adapter)
            log(f"{cfg.target}: {METHODS[method][TABLE_LABEL]} ({setting}) {rows[-1]['mIoU']:.2f}")

    for objective in objectives:
        fit(tta, objective, f"prompt_{objective}", objective, base)
    if captions is not None and caption_objectives:
        start = caption_start(captions, fit_set, fit_idx, cfg.caption_span)
        log(f"{cfg.target}: TTA from own caption, span init {start.phrase!r}")
        ctta = PromptTTA(dg.model, cfg, dg.cache, dg.transform, log, start)
        for objective in caption_objectives:
            fit(ctta, objective, f"caption_{objective}", f"caption {objective}", None)
    sample = eval_set[shown]
    return {
        "rows": rows,
        "curves": curves,
        "nearest": nearest,
        "fit_split": sets.note,
        "examples": example_rows,
        "example": (sample["image"], sample["mask"]),
        "seconds": time.time() - t0,
    }


def target_table(result: Mapping[str, Any]) -> pd.DataFrame:
    """Return a target's table: mIoU per method (index: its label) with its setting, the
    images fitted on and the split they came from."""
    table = pd.DataFrame(result["rows"]).drop(columns=["id", "cms"]).set_index("method")
    table["fit split"] = [result["fit_split"] if s != "-" else "-" for s in table["setting"]]
    return table


def record_target(
    result: Mapping[str, Any], target: str, run, stats: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Write one target's outputs through ``run`` (a :class:`diffprompt.results.Run`):
    tables tta_<target> (every row: with ``stats``, :func:`tta_statistics` of every seed,
    as text with the CIs and the difference against no adaptation; else ``result``'s
    mIoU), tta_<target>_curve (mIoU against steps) and tta_<target>_nearest (nearest
    tokens of each learned word), figures tta_<target>_curve and tta_<target>_predictions
    (of ``result``, one seed). Returns the main table."""
    table = target_table(result)
    caption = f"{target}: mIoU (%) on its labeled split; fitted on {result['fit_split']}."
    if stats is not None:
        part = stats.xs(target, level="target")
        shown = format_ci(part, ["method"], METHODS["none"][SUMMARY_LABEL])
        shown.insert(0, "setting", part["setting"].to_numpy())
        table = shown
        caption += " Mean ± std over seeds, 95% bootstrap CIs over images (seeds pooled)."
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


# ---------------------------------------------------------------------------------------
# Seeds: every method of every target at every seed, and their statistics
# ---------------------------------------------------------------------------------------


def seed_rows(results: Mapping[int, Mapping[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Return one row per (seed, target, method) of ``results`` ({seed: {target:
    :func:`run_target` result}}): its summary label ("method"), id, setting, target, seed,
    mIoU and per-image matrices ("cms")."""
    rows = []
    for seed, per_target in results.items():
        for target, result in per_target.items():
            for r in result["rows"]:
                label = METHODS[r["id"]][SUMMARY_LABEL]
                method = f"{label} (online)" if r["setting"] == "online" else label
                rows.append(
                    {
                        "method": method,
                        "id": r["id"],
                        "setting": r["setting"],
                        "target": target,
                        "seed": seed,
                        "mIoU": r["mIoU"],
                        "cms": r["cms"],
                    }
                )
    return rows


def tta_statistics(rows: Sequence[Mapping[str, Any]], source: str) -> pd.DataFrame:
    """Return per (method, target): mIoU mean and std over seeds, the 95% bootstrap CI
    (images resampled, seeds pooled) and the paired difference against "no adaptation" of
    the same seed's DG model, with whether its CI excludes 0
    (:func:`diffprompt.experiments.stats.ci_rows`); columns "id" and "setting": the
    method's id and setting."""
    out = ci_rows(
        rows,
        ["method", "target"],
        {"method": METHODS["none"][SUMMARY_LABEL]},
        classes=lambda keys: eval_classes(source, keys["target"]),
    )
    ids = {r["method"]: (r["id"], r["setting"]) for r in rows}
    df = pd.DataFrame(out)
    df.insert(1, "id", [ids[m][0] for m in df["method"]])
    df.insert(2, "setting", [ids[m][1] for m in df["method"]])
    return df.set_index(["method", "target"])


def seed_summary(stats: pd.DataFrame) -> pd.DataFrame:
    """Return the summary of :func:`tta_statistics`: mean mIoU over seeds per method (rows,
    id in column "id") and target (columns), then their mean when there are several."""
    out = stats["mIoU"].unstack("target")
    out = out.reindex(list(dict.fromkeys(stats.index.get_level_values("method"))))
    if len(out.columns) > 1:
        out["mean"] = out.mean(axis=1)
    ids = stats["id"].groupby(level="method").first()
    out.insert(0, "id", [ids[m] for m in out.index])
    out.columns.name = None
    return out
