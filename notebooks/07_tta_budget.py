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
# # 07 · The TTA budget: mIoU against TTA steps
#
# Notebook 03 adapts the scene prompt for a few steps at one learning rate. Here the same
# offline prompt TTA runs longer, for every objective and learning rate, at every seed, on a
# few targets, and is evaluated along the way, with how far the learned prompt moved
# (relative change of its word embeddings, nearest vocabulary words): does a longer or
# faster adaptation change the conclusion of notebook 03's table?
#
# `make tta-budget` (200 steps) and `make tta-budget-short` (25 steps, evaluated at 2, 6,
# 12 and 25). The DG models are notebook 03's (same parameters: the same runs in results/).

# %% tags=["parameters"]
# --- the study
targets: list = ["acdc_night", "darkzurich"]  # the targets studied
objectives: list = ["denoise", "entropy"]  # TTA objectives, one curve each
lrs: list = [0.001, 0.01]  # Adam learning rates of the word embeddings, one curve each
steps: int = 200  # TTA steps of each curve
eval_every: int = 50  # mIoU every N steps
points: list = [2, 6, 12]  # mIoU also at these steps (the short budgets)
eval_images: int = 40  # labeled images per target evaluated along the curves (0: all)
fit_images: int = 12  # unlabeled target images to fit on (0: all)
batch_size: int = 2  # target images per TTA step
seeds: list = [0, 1, 2]  # one DG model and one curve per seed (head, batches, noise)
name: str = "tta_budget"  # the name of its tables, figure and manifest
# --- the DG model adapted (notebook 03's, named dg_<setting>)
source: str = "cityscapes"  # DG model: source domain
data_root: str = "miniature"  # "miniature" (embedded) or a data folder
model: str = "toy-sd"  # diffusion backbone: bundled name, diffusers folder or hub id
preset: str = ""  # "" or "paper" (the DG paper protocol); DG parameters you pass win
dg_prompt_mode: str = "random_consistency"  # the DG model's prompt mode (with a scene prompt)
dg_scene_text: str = "a photo of an urban street scene"  # its scene prompt (TTA starts there)
dg_steps: int = 300  # DG training steps
dg_batch_size: int = 4  # DG images per step
dg_max_train_images: int = 64  # DG: first N source images (0: all)
dg_lr: float = 0.03  # DG: the head's learning rate
dg_eval_every: int = 100  # DG: source-val mIoU every N steps, the training curve (0: none)
dg_missing: str = "train"  # no trained DG model in results/: "train" it or raise an "error"
# --- where it runs
device: str = "auto"  # "auto", "cpu", "cuda", ...
results_dir: str = ""  # results folder ("": results/ of the repository)

# %%
from diffprompt.parameters import check_parameters

params = check_parameters(globals())  # a wrong type or an unknown parameter stops here

# %%
from diffprompt.dg.runs import dg_models
from diffprompt.experiments.tta import tta_dg_config
from diffprompt.experiments.tta_budget import (
    best_budget,
    budget_configs,
    budget_study,
    budget_table,
    check_budget,
)
from diffprompt.parameters import notebook_defaults
from diffprompt.results import Run
from diffprompt.viz import tta_budget_figure

dg_cfg, preset_choice = tta_dg_config(params, notebook="07_tta_budget")
print(preset_choice)
cfgs = budget_configs(params)
check_budget(name, cfgs, objectives, dg_cfg, results_dir)

# %% [markdown]
# ## The curves
# Every objective and learning rate at every seed, on each target; the change is measured
# against the DG model without adaptation (step 0).

# %%
dgs = dg_models(dg_cfg, seeds, results_dir or None, dg_missing)
curves = budget_study(dgs, cfgs, objectives, lrs, points)
run = Run(f"07_{name}", params, seed=seeds[0], root=results_dir or None)
run.table(
    curves.set_index(["target", "objective", "lr", "seed", "step"]),
    f"{name}_runs",
    float_format="%.4f",
)
budget = budget_table(curves)
run.table(budget, name, float_format="%.3f")
run.figure(tta_budget_figure(curves), name)
best = best_budget(curves)
table_steps = notebook_defaults("03_tta")["steps"]  # notebook 03's budget
run.finish(best=best, best_within_default=best_budget(curves, max_steps=table_steps))
print("best budget:", best)
budget
