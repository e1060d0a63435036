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
# puts them beside no adaptation, TENT and a hand-written target prompt.
#
# `papermill notebooks/03_tta.ipynb out.ipynb -p target acdc_night`; `-p target all`
# runs every target. The DG model of the parameters below is taken from results/ when
# notebook 02 trained it (same configuration), otherwise it is trained first.

# %% tags=["parameters"]
target: str = "adverse"  # a target, "adverse" (ACDC and Dark Zurich) or "all"
objectives: list = ["denoise", "entropy"]  # TTA objectives, one row each
settings: list = ["offline"]  # "offline" (fit, then evaluate) and/or "online" (streaming)
steps: int = 6  # TTA optimisation steps
lr: float = 0.001  # Adam learning rate of the scene prompt's word embeddings
fit_images: int = 12  # unlabeled target images to fit on (0: all)
batch_size: int = 2  # target images per TTA step
eval_images: int = 16  # labeled target images to evaluate on (0: all)
eval_every: int = 0  # mIoU every N steps for the curve (0: before and after only)
entropy_weight: float = 1.0  # weight of the entropy term in "both"
tent: bool = True  # run the TENT baseline
zero_shot: bool = True  # run the hand-written target prompt baseline
source: str = "cityscapes"  # DG model: source domain (the paper: Cityscapes -> adverse)
data_root: str = "miniature"  # "miniature" (embedded) or a data folder
model: str = "toy-sd"  # diffusion backbone: bundled name, diffusers folder or hub id
preset: str = ""  # "" or "paper" (the DG paper protocol); DG parameters you pass win
prompt_mode: str = "random_consistency"  # the DG model's prompt mode (a mode with a scene prompt)
scene_text: str = "a photo of an urban street scene"  # the scene prompt TTA starts from
dg_steps: int = 120  # DG training steps (as notebook 02's steps)
dg_batch_size: int = 8  # DG images per step (as notebook 02's batch_size)
dg_max_train_images: int = 64  # DG: first N source images (as notebook 02's; 0: all)
dg_missing: str = "train"  # no trained DG model in results/: "train" it or raise an "error"
dg_checkpoint: str = ""  # a DG checkpoint file to use instead of the one in results/
gradient_checkpointing: bool = False  # recompute UNet activations (memory for full-size SD)
device: str = "auto"  # "auto", "cpu", "cuda", ...
seed: int = 0  # seeds TTA's batches and noise (and the DG run)
results_dir: str = ""  # results folder ("": results/ of the repository)

# %%
from diffprompt.preflight import check_parameters

params = check_parameters(globals())  # a wrong type or an unknown parameter stops here

# %%
from diffprompt.dg import config_dict
from diffprompt.experiments.tta import (
    check_targets,
    dg_model,
    record_target,
    run_target,
    summary_table,
    tta_configs,
    tta_dg_config,
)
from diffprompt.results import Run

dg_cfg, dg_preset = tta_dg_config(params)  # the parameters you passed win over the preset
print(dg_preset)
tta_cfgs = tta_configs(params)
targets = list(tta_cfgs)
check_targets(tta_cfgs, objectives, settings, dg_cfg, dg_missing, dg_checkpoint, results_dir)

# %% [markdown]
# ## The DG model (from results/, or trained now)

# %%
dg = dg_model(dg_cfg, results_dir or None, dg_missing, dg_checkpoint)
print("DG run", dg.hash, "step", dg.step, "of", dg_cfg.steps)

# %% [markdown]
# ## Adapt to each target
# Every row of a target's table is computed on the same labeled images; results are written
# per target (`tables/tta_<target>.*`, `manifests/03_tta_<target>.json`).

# %%
tables, results = {}, {}
for t in targets:
    run = Run(f"03_tta_{t}", params | {"target": t}, seed=seed, root=results_dir or None)
    results[t] = run_target(dg, tta_cfgs[t], objectives, settings, tent, zero_shot)
    tables[t] = record_target(results[t], t, run)
    run.finish(
        dg_config=config_dict(dg_cfg),
        dg_preset=dg_preset.record(),
        dg_config_hash=dg.hash,
        fit_split=results[t]["fit_split"],
        tta_seconds=round(results[t]["seconds"], 1),
    )
summary = summary_table(results)
if len(targets) > 1:  # every target at once: one summary table beside the per-target ones
    run = Run("03_tta_all", params, seed=seed, root=results_dir or None)
    run.table(summary, "tta_summary", caption="mIoU (%) per TTA method and target.")
    run.finish(targets=targets, dg_config_hash=dg.hash)
summary.round(2)

# %%
tables[targets[0]]
