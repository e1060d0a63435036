"""Notebook 03: the DG model TTA starts from, every row of a target's table, the summary.

Each row of a target's table (:class:`Row`) is a method (:data:`METHODS`, by id) in a
setting: "-" (nothing fitted: no adaptation, the hand-written target prompt, each image's
caption), "offline" or "online" (:data:`diffprompt.tta.SETTINGS`). :func:`run_target` runs
them by family (:func:`fixed_rows`, :func:`tent_row`, :func:`learned_rows`); labels are
looked up by id, never parsed.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from diffprompt.benchmarks import TARGET_PROMPTS, eval_classes, resolve_targets
from diffprompt.captions import CaptionBook, CaptionPrompt
from diffprompt.data.roots import resolve_data_root
from diffprompt.dg.config import (
    RANDOM_MODES,
    PresetChoice,
    TrainConfig,
    check_config,
    with_preset,
)
from diffprompt.dg.runs import DGModel
from diffprompt.experiments.stats import ci_rows, format_ci
from diffprompt.parameters import DG_PREFIX, SHARED, config_of, explicit_parameters
from diffprompt.paths import cache_dir, results_root
from diffprompt.preflight import check_files, check_writable
from diffprompt.prompts import OWN_PROMPT
from diffprompt.tent import tent
from diffprompt.tta import (
    OBJECTIVES,
    PromptTTA,
    TargetScorer,
    TargetSets,
    TTAConfig,
    caption_start,
    check_tta,
    prompted,
    target_sets,
    with_scene_text,
)
from diffprompt.viz import tta_curve_figure, tta_prediction_figure


class Method(NamedTuple):
    """How a method of the TTA tables is named."""

    table: str  # its label in a target's table
    summary: str  # its label in the summary (and T4)
    short: str  # its name in the prediction figure
    paper: str  # its setting in the paper's T4: "DG" (no adaptation) or "TTA"


#: Every method of a TTA table, by id. The hand-written prompt's label in a target's table
#: also quotes the target's prompt.
METHODS: dict[str, Method] = {
    "none": Method("no adaptation", "no adaptation", "no adaptation", "DG"),
    "target_prompt": Method(
        "hand-written prompt", "hand-written target prompt", "hand-written prompt", "DG"
    ),
    "target_caption": Method("own caption", "each image's own caption", "own caption", "DG"),
    "target_caption_stripped": Method(
        "own caption, condition words removed",
        "own caption, conditions removed",
        "caption, no conditions",
        "DG",
    ),
    "tent": Method("TENT (normalisation affine)", "TENT (normalisation affine)", "TENT", "TTA"),
    "prompt_denoise": Method("TTA prompt: denoise", "TTA prompt: denoise", "TTA denoise", "TTA"),
    "prompt_entropy": Method("TTA prompt: entropy", "TTA prompt: entropy", "TTA entropy", "TTA"),
    "prompt_both": Method("TTA prompt: both", "TTA prompt: both", "TTA both", "TTA"),
    **{
        f"caption_{o}": Method(
            f"TTA from own caption: {o}",
            f"TTA from own caption: {o}",
            f"caption TTA {o}",
            "TTA",
        )
        for o in OBJECTIVES
    },
}


# ---------------------------------------------------------------------------------------
# Configurations from the notebook's parameters
# ---------------------------------------------------------------------------------------


def tta_dg_config(
    params: Mapping[str, Any], explicit: Iterable[str] | None = None, notebook: str = "03_tta"
) -> tuple[TrainConfig, PresetChoice]:
    """Return the TrainConfig of the DG model a TTA notebook adapts and what its preset did:
    every ``dg_<field>`` parameter sets that field (:data:`diffprompt.parameters.DG_PREFIX`:
    ``dg_steps`` is notebook 02's ``steps``), the run's context (``source``, ``data_root``,
    ``model``, ``device``) is shared, no targets (the seed is set per run); then the
    ``preset`` on every field but those the user passed (``explicit``: parameter names;
    None: the parameters whose values differ from ``notebook``'s defaults)."""
    if explicit is None:
        explicit = explicit_parameters(params, notebook)
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


def target_rows(params: Mapping[str, Any], captions: CaptionBook | None) -> TargetRows:
    """Return the rows of notebook 03's target tables (:class:`TargetRows`) from its
    parameters and its captions (:func:`tta_captions`)."""
    return TargetRows(
        objectives=tuple(params["objectives"]),
        settings=tuple(params["settings"]),
        tent=params["tent"],
        zero_shot=params["zero_shot"],
        captions=captions,
        caption_objectives=tuple(params["caption_tta"]),
    )


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


@dataclass(frozen=True)
class TargetRows:
    """Which rows a target's table holds beside no adaptation."""

    objectives: Sequence[str] = ("denoise", "entropy", "both")  # learned-prompt rows
    settings: Sequence[str] = ("offline",)  # each learned-prompt row in these settings
    tent: bool = True  # the TENT baseline
    zero_shot: bool = True  # the hand-written target prompt
    captions: CaptionBook | None = None  # the DG model prompted with each image's caption
    caption_objectives: Sequence[str] = ()  # TTA from each image's caption (needs captions)


@dataclass
class Row:
    """One row of a target's TTA table."""

    id: str  # the method (:data:`METHODS`)
    setting: str  # "-" (nothing fitted), "offline" or "online"
    miou: float  # mIoU (%) on the evaluated images
    fit_images: int  # the images adapted on
    matrices: np.ndarray  # (N, C, C): each evaluated image's confusion matrix (bootstrap)
    label: str = ""  # the table's label where it is not the method's own
    example: torch.Tensor | None = None  # the shown image's predicted classes (H, W)

    def table_row(self) -> dict[str, Any]:
        """The row as a target's table shows it."""
        label = self.label or METHODS[self.id].table
        return {
            "method": label,
            "setting": self.setting,
            "mIoU": self.miou,
            "fit images": self.fit_images,
        }


@dataclass
class TargetResult:
    """Every row of one target's table, and what its figures and tables need besides."""

    rows: list[Row]
    fit_split: str  # which split was fitted on, and whether it has labels
    example: tuple[torch.Tensor, torch.Tensor]  # the shown image (3, H, W) and its labels
    curves: list[dict] = dataclasses.field(default_factory=list)  # offline mIoU by step
    nearest: dict[str, list[dict]] = dataclasses.field(default_factory=dict)  # learned words
    seconds: float = 0.0  # wall time


@dataclass
class Target:
    """One target as TTA sees it: its sets, the indices fitted on and evaluated, the scorer,
    and the image of the prediction figure (``shown``: None, no figure)."""

    sets: TargetSets
    scorer: TargetScorer
    shown: int | None

    @property
    def fit_idx(self) -> list[int]:
        return list(range(self.sets.n_fit))

    @property
    def eval_idx(self) -> list[int]:
        return list(range(self.sets.n_eval))

    def row(self, method, setting, cm, predict, label="") -> Row:
        """The row of a method whose confusion matrix is ``cm``; ``predict(dataset, idx)``
        gives its classes of the shown image."""
        ev = self.sets.evaluation
        fitted = {"-": 0, "offline": self.sets.n_fit, "online": self.sets.n_eval}[setting]
        example = None if self.shown is None else predict(ev, [self.shown])[0]
        miou = self.scorer.miou(cm, ev)
        return Row(method, setting, miou, fitted, cm.per_image_matrices(), label, example)


def fixed_rows(dg: DGModel, target: Target, rows: TargetRows, name: str) -> list[Row]:
    """The rows that fit nothing: no adaptation, the hand-written target prompt, and the DG
    model prompted with each image's own caption, as it is and without its condition words.
    Their maps are shared across seeds (the DG models' backbone and prompts are the same)."""
    ev, idx, scorer = target.sets.evaluation, target.eval_idx, target.scorer
    models = [("none", dg.model, OWN_PROMPT, "")]
    if rows.zero_shot:
        text = TARGET_PROMPTS[name]
        label = f'{METHODS["target_prompt"].table} "{text}"'
        models.append(("target_prompt", with_scene_text(dg.model, text), OWN_PROMPT, label))
    if rows.captions is not None:
        models.append(("target_caption", dg.model, CaptionPrompt(rows.captions, "caption"), ""))
        stripped = CaptionPrompt(rows.captions, "stripped")
        models.append(("target_caption_stripped", dg.model, stripped, ""))
    out = []
    for method, model, prompt, label in models:
        context_of = prompted(model, prompt)
        cm = scorer.evaluate(model, ev, idx, context_of, fixed=True)

        def predict(ds, i, model=model, context_of=context_of):
            return scorer.predict(model, ds, i, context_of, fixed=True)

        out.append(target.row(method, "-", cm, predict, label))
    return out


def tent_row(dg: DGModel, cfg: TTAConfig, target: Target) -> Row:
    """The TENT row (:func:`diffprompt.tent.tent`): a copy of the DG model adapted on the
    fit images, then scored."""
    adapted = tent(dg.model, cfg, target.scorer, target.sets.fit, target.fit_idx)
    cm = target.scorer.evaluate(adapted, target.sets.evaluation, target.eval_idx)
    return target.row("tent", "offline", cm, lambda ds, i: target.scorer.predict(adapted, ds, i))


def learned_rows(
    adapter: PromptTTA, objective: str, method: str, target: Target, settings, start=None
) -> tuple[list[Row], list[dict], list[dict]]:
    """The rows of one learned prompt (one per setting), its offline curve (``start``: the
    curve's step 0, None: evaluated) and its nearest words: (rows, curve, nearest)."""
    sets = target.sets
    rows, curve, nearest = [], [], []
    for setting in settings:
        if setting == "offline":
            fit = (objective, sets.fit, target.fit_idx, sets.evaluation, target.eval_idx)
            cm, curve = adapter.fit_offline(*fit, start)
            nearest = adapter.nearest_words()
        else:
            cm = adapter.fit_online(objective, sets.evaluation, target.eval_idx)
        rows.append(target.row(method, setting, cm, adapter.predict))
    return rows, curve, nearest


def run_target(
    dg: DGModel,
    cfg: TTAConfig,
    rows: TargetRows = TargetRows(),
    log: Callable[[str], None] = print,
    examples: bool = True,
) -> TargetResult:
    """Run every row of one target's TTA table (:class:`TargetRows`: the learned prompts,
    TENT, the hand-written prompt, the DG model prompted with each image's own caption, as
    is and without its condition words, TADP's test-time setting, and TTA that starts from
    each image's caption and learns its condition words, one span for the target:
    :class:`diffprompt.tta.CaptionStart`). ``examples``: each row's prediction of the first
    evaluated image, for the prediction figure (one seed shows it)."""
    check_tta(cfg, rows.objectives, rows.settings)
    t0 = time.time()
    sets = target_sets(cfg, dg.root, dg.cfg.target_split, dg.transform)
    if sets.n_fit == 0 or sets.n_eval == 0:
        raise ValueError(f"{cfg.target}: no images to fit on ({sets.note}) or to evaluate on")
    target = Target(sets, TargetScorer(dg.model.backbone, cfg, dg.cache), 0 if examples else None)
    out = fixed_rows(dg, target, rows, cfg.target)
    for r in out:
        log(f"{cfg.target}: {METHODS[r.id].table} {r.miou:.2f} mIoU ({sets.n_eval} images)")
    if rows.tent:
        out.append(tent_row(dg, cfg, target))
    shown = sets.evaluation[0]
    result = TargetResult(out, sets.note, (shown["image"], shown["mask"]))
    learned = []
    if rows.objectives:  # one adapter: each fit starts from the training scene prompt
        adapter = PromptTTA(dg.model, cfg, target.scorer, log=log)
        learned += [(adapter, o, f"prompt_{o}", o) for o in rows.objectives]
    if rows.captions is not None and rows.caption_objectives:
        start = caption_start(rows.captions, sets.fit, target.fit_idx, cfg.caption_span)
        log(f"{cfg.target}: TTA from own caption, span init {start.phrase!r}")
        adapter = PromptTTA(dg.model, cfg, target.scorer, start, log)
        learned += [(adapter, o, f"caption_{o}", f"caption {o}") for o in rows.caption_objectives]
    for adapter, objective, method, name in learned:
        at_start = out[0].miou if adapter.start is None else None  # no adaptation: step 0
        fitted, curve, nearest = learned_rows(
            adapter, objective, method, target, rows.settings, at_start
        )
        for r in fitted:
            log(f"{cfg.target}: {METHODS[method].table} ({r.setting}) {r.miou:.2f}")
        result.rows += fitted
        result.curves += [{"objective": name, **c} for c in curve]
        if nearest:
            result.nearest[name] = nearest
    result.seconds = time.time() - t0
    return result


def target_table(result: Mapping[str, Any]) -> pd.DataFrame:
    """Return a target's table: mIoU per method (index: its label) with its setting, the
    images fitted on and the split they came from."""
    table = pd.DataFrame([r.table_row() for r in result.rows]).set_index("method")
    table["fit split"] = [result.fit_split if s != "-" else "-" for s in table["setting"]]
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
    caption = f"{target}: mIoU (%) on its labeled split; fitted on {result.fit_split}."
    if stats is not None:
        part = stats.xs(target, level="target")
        shown = format_ci(part, ["method"], METHODS["none"].summary)
        shown.insert(0, "setting", part["setting"].to_numpy())
        table = shown
        caption += " Mean ± std over seeds, 95% bootstrap CIs over images (seeds pooled)."
    run.table(table, f"tta_{target}", caption=caption)
    if result.curves:
        curve = pd.DataFrame(result.curves).set_index(["objective", "step"])
        run.table(curve, f"tta_{target}_curve", float_format="%.4f")
        run.figure(tta_curve_figure(result.curves, target), f"tta_{target}_curve", ("png",))
    near = [{"objective": o, **r} for o, rows in result.nearest.items() for r in rows]
    if near:
        near_table = pd.DataFrame(near).set_index(["objective", "position"])
        run.table(near_table, f"tta_{target}_nearest", float_format="%.4f")
    panels = {}
    for r in result.rows:
        if r.example is not None:
            name = METHODS[r.id].short
            panels[name if r.setting != "online" else f"{name} (online)"] = r.example
    figure = tta_prediction_figure(result.example, panels, target)
    run.figure(figure, f"tta_{target}_predictions", formats=("png",), dpi=90)
    return table


def summary_table(results: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Return mIoU per method (rows, in the tables' order; the method's summary label as
    index, its id in column "id") and target (columns, then their mean when there are
    several); the hand-written prompts (one text per target) share a row."""
    cols, ids = {}, {}
    for target, result in results.items():
        keys, values = [], []
        for row in result.rows:
            label = METHODS[row.id].summary
            key = f"{label} (online)" if row.setting == "online" else label
            ids[key] = row.id
            keys.append(key)
            values.append(row.miou)
        cols[target] = pd.Series(values, index=keys)
    order = list(dict.fromkeys(k for c in cols.values() for k in c.index))
    out = pd.DataFrame(cols).reindex(order)
    if len(out.columns) > 1:
        out["mean"] = out.mean(axis=1)
    out.insert(0, "id", [ids[k] for k in out.index])
    return out


def paper_setting(method_id: str) -> str:
    """Return the setting of a method in the paper's T4: "DG" (no adaptation) or "TTA"."""
    return METHODS[method_id].paper


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
            for r in result.rows:
                label = METHODS[r.id].summary
                method = f"{label} (online)" if r.setting == "online" else label
                rows.append(
                    {
                        "method": method,
                        "id": r.id,
                        "setting": r.setting,
                        "target": target,
                        "seed": seed,
                        "mIoU": r.miou,
                        "cms": r.matrices,
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
        {"method": METHODS["none"].summary},
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
