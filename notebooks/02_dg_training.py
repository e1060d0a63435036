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
# # 02 · Domain-generalization training with scene prompts and prompt randomization
#
# The paper's core experiment: a Semantic FPN head is trained on the **source domain only**,
# on the features of a frozen diffusion UNet conditioned on `[category tokens ; scene
# prompt]`, then evaluated on every target domain without seeing it. With
# `prompt_mode = "random_consistency"` (the method) each step draws `num_prompts` scene
# prompts from a vocabulary of domain descriptors (weather, time of day, rendering style,
# place, camera), and the loss adds `consistency_weight` times the disagreement of the
# predictions under those prompts. The other modes are the baselines: `null` (empty
# prompt), `category` (class tokens only), `fixed` (one scene prompt), `random` (no
# consistency term). The caption modes condition on each image's own caption (TADP):
# `caption` (`[category tokens ; caption]`), `caption_only`, and `caption_random` /
# `caption_consistency` (the caption's condition words replaced by `num_prompts` phrases of
# a pool, without and with the consistency term); captions come from the data set (the
# miniature has them), `captions_file` or a `captioner`. See docs/METHOD.md for where each
# choice comes from.
#
# Defaults: the embedded miniature and the bundled `toy-sd`, on a laptop CPU. For the paper
# protocol on a GPU set `preset = "paper"` (SD 1.5, 512 crops, batch 16, the VPD schedule,
# sliding-window test) and `data_root` to the folder with the real data sets.

# %% tags=["parameters"]
source: str = "gta5"  # registry name of the source domain (trained on its train split)
targets: list = [
    "cityscapes",
    "bdd100k",
    "mapillary",
    "acdc_fog",
    "acdc_night",
    "acdc_rain",
    "acdc_snow",
    "darkzurich",
]  # targets, evaluated on their val splits
data_root: str = "miniature"  # "miniature" (embedded, generated on demand) or a data folder
model: str = "toy-sd"  # diffusion backbone: bundled name, diffusers folder or hub id
preset: str = ""  # "" or "paper" (the paper protocol, for a GPU); parameters you pass win
prompt_mode: str = "random_consistency"  # null, category, fixed, random(_consistency), caption...
scene_text: str = "a photo of an urban street scene"  # the fixed and test-time scene prompt
num_prompts: int = 2  # K, scene prompts per step (random modes)
consistency_weight: float = 1.0  # lambda, weight of the consistency term
consistency: str = "js"  # "js" (Jensen-Shannon) or "sym_kl" (symmetric KL)
vocabulary_size: int = 0  # descriptors per vocabulary key (0: all)
prompt_pool: int = 4  # prompts drawn once to randomize over (0: fresh prompts every step)
captions_file: str = ""  # caption modes on real data: JSON {image name: caption} or CSV
captioner: str = ""  # caption modes: hub id or folder of a BLIP captioner (none: no captioner)
test_caption: str = "caption"  # caption modes at test time: the caption, or stripped of conditions
steps: int = 400  # optimizer steps (the curve plateaus by about 400 on the miniature)
batch_size: int = 4  # images per step
lr: float = 0.03  # AdamW learning rate of the head
max_train_images: int = 64  # first N source images (0: all)
max_eval_images: int = 50  # first N images of each set (0: all; ACDC has 60, Dark Zurich 200)
loss_resolution: str = "area"  # the loss at the head resolution (area, nearest) or labels (VPD)
eval_every: int = 100  # the training curve: source-val mIoU every N steps (0: none)
curve_images: int = 40  # images of the curve set, source val or held-out images (0: all)
cache_features: bool = True  # cache the frozen features (False: online, with random crops)
mixed_precision: str = "no"  # "no", "bf16" or "fp16" (CUDA only)
device: str = "auto"  # "auto" (CUDA, then MPS, then CPU), "cpu", "cuda", ...
num_processes: int = 1  # above 1: train with accelerate's notebook launcher on N processes
retrain: bool = False  # train again even if a finished run of this configuration exists
seeds: list = [0, 1, 2]  # one run per seed (the head's init, the batch order, flips, prompts)
baseline_mode: str = ""  # also trained at every seed: the difference baseline (e.g. fixed)
explore: bool = False  # show the ipywidgets explorer at the end (JupyterLab)
results_dir: str = ""  # results folder ("": results/ of the repository)

# %%
from diffprompt.parameters import check_parameters

params = check_parameters(globals())  # a wrong type or an unknown parameter stops here

# %%
from diffprompt.dg import config_dict, dg_run_dir, launch
from diffprompt.experiments.dg import (
    curve_table,
    describe_run,
    dg_config,
    dg_display,
    dg_statistics,
    evaluate_seeds,
    miou_on_first,
    per_class_mean,
    runs_table,
    seed_configs,
    train_seeds,
)
from diffprompt.results import Run
from diffprompt.viz import (
    dg_curve_figure,
    dg_loss_figure,
    dg_prediction_figure,
    per_class_heatmap,
)

cfg, preset_choice = dg_config(params)  # the parameters you passed win over the preset
cfgs = seed_configs(cfg, seeds, baseline_mode)  # {(prompt mode, seed): config}
tag = f"{cfg.source}_{cfg.prompt_mode}"
run = Run(f"02_dg_training_{tag}", params, seed=seeds[0], root=results_dir or None)
print(preset_choice)
print(cfg)

# %% [markdown]
# ## Train on the source, once per seed (and the baseline mode)
# A finished run of the same configuration (same hash) is reused; `retrain = True` starts
# over. Interrupted runs resume from their last checkpoint. With `eval_every`, each run
# logs the mIoU of the source's val split (of held-out source images for SYNTHIA, which has
# none) along the way: the curve shows whether the head has reached its plateau.

# %%
if num_processes > 1:
    for c in cfgs.values():
        launch(c, num_processes, results_dir or None, retrain=retrain)
trainers = train_seeds(cfgs, results_dir or None, retrain=retrain and num_processes == 1)
trainer = trainers[(cfg.prompt_mode, seeds[0])]
print(describe_run(trainer))

# %%
curve = curve_table(trainers)
run.table(curve.set_index(["method", "seed", "step"]), f"dg_{tag}_curve")
if len(curve):
    run.figure(dg_curve_figure(curve), f"dg_{tag}_curve", formats=("png",))
fig = dg_loss_figure(trainer.state.log, trainer.cfg.consistency)
run.figure(fig, f"dg_{tag}_loss", formats=("png",))

# %% [markdown]
# ## Evaluate on every target
# Dataset-level mIoU (one confusion matrix per target and run) on every image of each set
# (`max_eval_images = 0`), mean ± std over the seeds, its 95% bootstrap interval over the
# images (seeds pooled) and the paired difference against the baseline mode
# (docs/METHOD.md, "Statistics"); the source's own val split is the in-domain reference.

# %%
rows, sets = evaluate_seeds(trainers)
run.table(runs_table(rows), f"dg_{tag}_runs")
stats = dg_statistics(rows, cfg.source, sets, baseline_mode)
run.table(stats, f"dg_{tag}_stats")
miou = dg_display(stats, baseline_mode)
run.table(miou, f"dg_{tag}_miou")
source_val = next(iter(sets))  # the source's val split (or the first target without one)
probe_images = miou_on_first(rows, cfg.prompt_mode, source_val, 10, cfg.source, sets)
print(f"{source_val}, first 10 images (T1's probe set):", probe_images)
miou

# %%
per_class = per_class_mean(rows, cfg.source, sets, cfg.prompt_mode)
run.table(per_class.round(2), f"dg_{tag}_per_class", float_format="%.1f")
title = f"per-class IoU (%) of {cfg.prompt_mode} from {cfg.source}, mean over seeds"
run.figure(per_class_heatmap(per_class, title), f"dg_{tag}_per_class", formats=("png",))
per_class.round(1)

# %% [markdown]
# ## Predictions
# One image per evaluated set: the image, its labels and the prediction (first seed).

# %%
fig = dg_prediction_figure(trainer, sets)
run.figure(fig, f"dg_{tag}_predictions", formats=("png",), dpi=90)
run.finish(
    config=config_dict(cfg),  # of every run, but for its prompt mode and seed
    runs={f"{m} seed {s}": dg_run_dir(c, results_dir or None).name for (m, s), c in cfgs.items()},
    preset=preset_choice.record(),
    first_10_images={source_val: probe_images},
    training_seconds={f"{m} seed {s}": round(t.state.seconds, 1) for (m, s), t in trainers.items()},
)

# %% [markdown]
# ## Explore (JupyterLab)
# With `explore = True`: choose a target and an image, a scene prompt and a UNet timestep;
# the explorer shows the image, its ground truth, the prediction overlay, that image's
# per-class IoU and a PCA of the features.

# %%
if explore:
    from IPython.display import display

    from diffprompt.viz import Explorer

    display(Explorer(trainer.model, sets, scene_text=scene_text).widget)
