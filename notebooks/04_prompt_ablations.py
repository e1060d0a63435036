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
# # 04 · Prompt ablations: which part of the prompting matters?
#
# Every cell of this grid is a real DG training run on the source (notebook 02's recipe,
# with a lighter head and fewer steps so the whole grid fits a laptop), repeated over
# `seeds`, and reported as mean ± std so a difference can be told from seed noise:
#
# - **mode**: `null` (empty prompt), `category` (class tokens only), `fixed` (one scene
#   prompt), `random` (K randomized scene prompts, no consistency), `random_consistency`
#   (the method), and TADP's idea beside them: `caption` (each image's own caption after the
#   class tokens, at training and test time) and `caption_consistency` (K variants of the
#   caption with its condition words replaced, and the consistency term: the paper's
#   randomization applied to captions);
# - **K**: scene prompts per step, for the method;
# - **lambda**: weight of the consistency term, for the method;
# - **vocabulary**: descriptors per vocabulary key the prompts are drawn from (1 leaves a
#   single possible prompt, so randomization degenerates to a fixed prompt).
#
# Seeds vary the head's initial weights, the batch order and the flips; the prompt pool is
# drawn once (`pool_seed`). The result is reported as measured, also where it contradicts
# the paper.

# %% tags=["parameters"]
source: str = "gta5"  # registry name of the source domain
targets: list = ["cityscapes", "acdc_night", "darkzurich"]  # targets averaged in the summary
data_root: str = "miniature"  # "miniature" (embedded) or a data folder
model: str = "toy-sd"  # diffusion backbone: bundled name, diffusers folder or hub id
modes: list = [
    "null",
    "category",
    "fixed",
    "random",
    "random_consistency",
    "caption",
    "caption_consistency",
]  # prompt modes
ks: list = [2, 4]  # K values for the method (the first is the base of every other cell)
lambdas: list = [1.0, 10.0]  # consistency weights for the method (first: the base)
vocab_sizes: list = [0, 1]  # descriptors per vocabulary key (0: all; first: the base)
seeds: list = [0, 1, 2]  # one run per seed and cell (at least 2 for mean and std)
steps: int = 40  # optimizer steps per run (the full protocol: 60)
batch_size: int = 4  # images per step
lr: float = 0.01  # AdamW learning rate of the head
train_size: list = []  # resize images to [h, w] ([]: as stored, sharing notebook 02's features)
fpn_width: int = 32  # Semantic FPN channels (lighter than notebook 02)
head_width: int = 32  # semantic-branch channels
prompt_pool: int = 4  # prompts drawn once to randomize over
max_train_images: int = 64  # first N source images
max_eval_images: int = 50  # first N images of each set (0: all; ACDC has 60, Dark Zurich 200)
device: str = "auto"  # "auto", "cpu", "cuda", ...
results_dir: str = ""  # results folder ("": results/ of the repository)

# %%
from diffprompt.parameters import check_parameters

params = check_parameters(globals())  # a wrong type or an unknown parameter stops here

# %%
from diffprompt.experiments.ablation import (
    ablation_base,
    ablation_cells,
    ablation_display,
    ablation_statistics,
    ablation_summary,
    prompt_sensitivity,
    run_ablation,
)
from diffprompt.experiments.stats import format_ci
from diffprompt.results import Run
from diffprompt.viz import ablation_plot

base = ablation_base(params)
cells = ablation_cells(modes, ks[1:], lambdas[1:], vocab_sizes[1:], base)
run = Run("04_prompt_ablations", params, seed=seeds[0], root=results_dir or None)
print(len(cells), "cells x", len(seeds), "seeds:", [(g, s) for g, s, _ in cells])

# %% [markdown]
# ## Every run
# A run of a configuration that already finished (same hash) is reused.

# %%
runs, cm_rows = run_ablation(base, cells, seeds, results_dir or None)
run.table(runs.set_index(["group", "setting", "seed"]), "ablation_runs")
runs

# %% [markdown]
# ## Mean ± std over seeds

# %%
summary = ablation_summary(runs, targets)
run.table(summary, "ablation_summary")
shown = ablation_display(summary, [*targets, "target mean"])
caption = f"mIoU (%), mean ± std over seeds {seeds}; source {source}."
run.table(shown, "ablation", caption=caption)
shown

# %% [markdown]
# ## Intervals and differences against the null prompt
# Per cell and target: the 95% bootstrap CI of the mIoU over the target's images (seeds
# pooled) and the paired difference against the `null` prompt on the same resampled images,
# with whether its CI excludes 0 (docs/METHOD.md, "Statistics").

# %%
stats = ablation_statistics(cm_rows, source)
run.table(stats, "ablation_stats")
shown_ci = format_ci(stats, ["group", "setting", "target"], "null")
run.table(shown_ci, "ablation_ci")
shown_ci

# %%
fig = ablation_plot(stats)  # each cell with its interval, per target
run.figure(fig, "ablation")

# %% [markdown]
# ## How much does the prompt change the features?
# The relative change of the backbone's maps of source images when the fixed scene prompt
# is replaced by other prompts of the pool, by the category tokens alone, or by the empty
# prompt. Where it is small, the predictions under different prompts hardly differ, and
# randomization and the consistency term have little to act on.

# %%
sensitivity = prompt_sensitivity(base, range(16), results_dir or None)
run.table(sensitivity, "prompt_sensitivity", float_format="%.4f")
run.finish(cells=[(g, s, o) for g, s, o in cells])
sensitivity
