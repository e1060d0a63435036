# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Test-time adaptation: learning the scene prompt on the target domain
#
# The paper adapts a DG model at test time by learning its scene prompt on unlabeled
# target images, with everything else frozen. Here the word embeddings of the training
# scene prompt are optimised with the diffusion denoising loss on the target images
# (`denoise`, as textual inversion learns a word), with the entropy of the predictions
# (`entropy`), or both; then the target is segmented with the learned prompt. The table
# puts them beside no adaptation, TENT, a hand-written target prompt and, with
# `caption_rows`, the DG model prompted with each target image's own caption in place of its
# scene prompt (TADP's test-time setting), as it is and without its condition words; with
# `caption_tta`, TTA also starts from each image's own caption and learns its condition words
# (one span of word embeddings shared by the target, the rest of each caption kept).
#
# `papermill notebooks/03_tta.ipynb out.ipynb -p target acdc_night`; `-p target all`
# runs every target. The DG model of the parameters below is taken from results/ when
# notebook 02 trained it (same configuration), otherwise it is trained first. How the table
# changes with a longer or faster adaptation is notebook 07 (the TTA budget).

# %% tags=["parameters"]
# --- the adaptation
target: str = "adverse"  # a target, "adverse" (ACDC and Dark Zurich) or "all"
objectives: list = ["denoise", "entropy"]  # TTA objectives, one row each
settings: list = ["offline"]  # "offline" (fit, then evaluate) and/or "online" (streaming)
steps: int = 6  # TTA optimisation steps
lr: float = 0.001  # Adam learning rate of the scene prompt's word embeddings
fit_images: int = 12  # unlabeled target images to fit on (0: all)
batch_size: int = 2  # target images per TTA step
eval_images: int = 20  # labeled target images evaluated (0: all; ACDC has 60, Dark Zurich 200)
seeds: list = [0, 1, 2]  # one DG model and one TTA run per seed (head, batches, noise)
# --- the rows beside it
tent: bool = True  # run the TENT baseline
zero_shot: bool = True  # run the hand-written target prompt baseline
caption_rows: bool = True  # the DG model prompted with each target image caption (TADP)
caption_tta: list = ["denoise"]  # TTA objectives that start from each image caption (caption_rows)
captions_file: str = ""  # caption rows on real data: JSON {image name: caption} or CSV
captioner: str = ""  # caption rows: hub id or folder of a BLIP captioner (none: no captioner)
entropy_weight: float = 1.0  # weight of the entropy term in "both"
eval_every: int = 0  # mIoU every N steps for the curve (0: before and after only)
gradient_checkpointing: bool = False  # recompute UNet activations (memory for full-size SD)
# --- the DG model adapted (notebook 02's settings, named dg_<setting>)
source: str = "cityscapes"  # DG model: source domain (the paper: Cityscapes -> adverse)
data_root: str = "miniature"  # "miniature" (embedded) or a data folder
model: str = "toy-sd"  # diffusion backbone: bundled name, diffusers folder or hub id
preset: str = ""  # "" or "paper" (the DG paper protocol); DG parameters you pass win
dg_prompt_mode: str = "random_consistency"  # the DG model's prompt mode (with a scene prompt)
dg_scene_text: str = "a photo of an urban street scene"  # its scene prompt (TTA starts there)
dg_steps: int = 300  # DG training steps (notebook 02: 400; fewer to fit the main job)
dg_batch_size: int = 4  # DG images per step (as notebook 02's batch_size)
dg_max_train_images: int = 64  # DG: first N source images (as notebook 02's; 0: all)
dg_lr: float = 0.03  # DG: the head's learning rate (as notebook 02's lr)
dg_eval_every: int = 100  # DG: source-val mIoU every N steps, the training curve (0: none)
dg_missing: str = "train"  # no trained DG model in results/: "train" it or raise an "error"
dg_checkpoint: str = ""  # a DG checkpoint file to use instead of the one in results/
# --- where it runs
device: str = "auto"  # "auto", "cpu", "cuda", ...
results_dir: str = ""  # results folder ("": results/ of the repository)

# %%
from diffprompt.parameters import check_parameters

params = check_parameters(globals())  # a wrong type or an unknown parameter stops here

# %%
from diffprompt.dg import config_dict
from diffprompt.dg.runs import dg_models
from diffprompt.experiments.stats import format_ci
from diffprompt.experiments.tta import (
    check_targets,
    dg_curves,
    record_target,
    run_target,
    seed_rows,
    seed_summary,
    target_rows,
    tta_captions,
    tta_configs,
    tta_dg_config,
    tta_seed_config,
    tta_statistics,
)
from diffprompt.results import Run
from diffprompt.viz import dg_curve_figure, tta_change_figure

dg_cfg, preset_choice = tta_dg_config(params)  # the parameters you passed win over the preset
print(preset_choice)
tta_cfgs = tta_configs(params)
targets = list(tta_cfgs)
rows = target_rows(params, tta_captions(params, results_dir))  # which rows each table holds
check_targets(
    tta_cfgs,
    objectives,
    settings,
    dg_cfg,
    dg_missing,
    dg_checkpoint,
    results_dir,
    rows.captions,
    caption_tta,
)

# %% [markdown]
# ## The DG models, one per seed (from results/, or trained now)
# The curve: the source-val mIoU along each run's training (`dg_eval_every`).

# %%
dgs = dg_models(dg_cfg, seeds, results_dir or None, dg_missing, dg_checkpoint)
for s, dg in dgs.items():
    print("DG run", dg.hash, "seed", s, "step", dg.step, "of", dg_cfg.steps)
run = Run("03_tta_dg", params, seed=seeds[0], root=results_dir or None)
dg_curve = dg_curves(dgs)
run.table(dg_curve.set_index(["method", "seed", "step"]), f"dg_{dg_cfg.source}_curve")
if len(dg_curve):
    run.figure(dg_curve_figure(dg_curve), f"dg_{dg_cfg.source}_curve", formats=("png",))
run.finish(
    dg_config=config_dict(dg_cfg),
    dg_preset=preset_choice.record(),
    dg_config_hashes={s: dg.hash for s, dg in dgs.items()},
)

# %% [markdown]
# ## Adapt to each target, at every seed
# Every row of a target's table is computed on the same labeled images (all of them with
# `eval_images = 0`); seed s adapts the DG model of seed s with TTA seed s. Results are
# written per target (`tables/tta_<target>.*`, `manifests/03_tta_<target>.json`): mean ±
# std over seeds, the 95% bootstrap CI over images (seeds pooled) and the paired difference
# against no adaptation (docs/METHOD.md, "Statistics").

# %%
results = {
    s: {
        t: run_target(
            dgs[s],
            tta_seed_config(tta_cfgs[t], s),
            rows,
            examples=s == seeds[0],  # the prediction figure shows the first seed
        )
        for t in targets
    }
    for s in seeds
}
stats = tta_statistics(seed_rows(results), dg_cfg.source)
tables = {}
for t in targets:
    first = results[seeds[0]][t]
    run = Run(f"03_tta_{t}", params | {"target": t}, seed=seeds[0], root=results_dir or None)
    tables[t] = record_target(first, t, run, stats)
    run.finish(
        dg_config=config_dict(dg_cfg),
        dg_preset=preset_choice.record(),
        dg_config_hashes={s: dg.hash for s, dg in dgs.items()},
        fit_split=first.fit_split,
        tta_seconds={s: round(results[s][t].seconds, 1) for s in seeds},
    )
summary = seed_summary(stats)
if len(targets) > 1:  # every target at once: the summary tables beside the per-target ones
    run = Run("03_tta_all", params, seed=seeds[0], root=results_dir or None)
    run.table(
        summary, "tta_summary", caption="mIoU (%) per TTA method and target, mean over seeds."
    )
    run.table(stats, "tta_stats")
    run.table(format_ci(stats, ["method", "target"], "no adaptation"), "tta_ci")
    run.figure(tta_change_figure(stats), "tta_changes")  # each row against no adaptation
    run.finish(targets=targets, dg_config_hashes={s: dg.hash for s, dg in dgs.items()})
summary.round(2)

# %%
tables[targets[0]]
