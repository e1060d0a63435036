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
# consistency term). See docs/METHOD.md for where each choice comes from.
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
prompt_mode: str = "random_consistency"  # null, category, fixed, random or random_consistency
scene_text: str = "a photo of an urban street scene"  # the fixed and test-time scene prompt
num_prompts: int = 2  # K, scene prompts per step (random modes)
consistency_weight: float = 1.0  # lambda, weight of the consistency term
consistency: str = "js"  # "js" (Jensen-Shannon) or "sym_kl" (symmetric KL)
vocabulary_size: int = 0  # descriptors per vocabulary key (0: all)
prompt_pool: int = 4  # prompts drawn once to randomize over (0: fresh prompts every step)
steps: int = 120  # optimizer steps
batch_size: int = 8  # images per step
lr: float = 0.01  # AdamW learning rate of the head
max_train_images: int = 64  # first N source images (0: all)
max_eval_images: int = 20  # first N images of each target (0: all)
cache_features: bool = True  # cache the frozen features (False: online, with random crops)
mixed_precision: str = "no"  # "no", "bf16" or "fp16" (CUDA only)
device: str = "auto"  # "auto" (CUDA, then MPS, then CPU), "cpu", "cuda", ...
num_processes: int = 1  # above 1: train with accelerate's notebook launcher on N processes
retrain: bool = False  # train again even if a finished run of this configuration exists
seed: int = 0  # seeds the head, the batch order and the flips
explore: bool = False  # show the ipywidgets explorer at the end (JupyterLab)
results_dir: str = ""  # results folder ("": results/ of the repository)

# %%
from diffprompt.preflight import check_parameters

params = check_parameters(globals())  # a wrong type or an unknown parameter stops here

# %%
from diffprompt.dg import config_dict, dg_run_dir, launch, train_dg
from diffprompt.experiments.dg import describe_run, dg_config, miou_table, per_class_table
from diffprompt.results import Run
from diffprompt.viz import dg_loss_figure, dg_prediction_figure

cfg, preset_choice = dg_config(params)  # the parameters you passed win over the preset
tag = f"{cfg.source}_{cfg.prompt_mode}"
run = Run(f"02_dg_training_{tag}", params, seed=seed, root=results_dir or None)
print(preset_choice)
print(cfg)

# %% [markdown]
# ## Train on the source
# A finished run of the same configuration (same hash) is reused; `retrain = True` starts
# over. Interrupted runs resume from their last checkpoint.

# %%
if num_processes > 1:
    launch(cfg, num_processes, results_dir or None, retrain=retrain)
trainer = train_dg(cfg, results_dir or None, retrain=retrain and num_processes == 1)
print(describe_run(trainer))

# %%
fig = dg_loss_figure(trainer.state.log, trainer.cfg.consistency)
run.figure(fig, f"dg_{tag}_loss", formats=("png",))

# %% [markdown]
# ## Evaluate on every target
# Dataset-level mIoU (one confusion matrix per target); the source's own val split is the
# in-domain reference.

# %%
sets = trainer.eval_sets()
cms = trainer.evaluate(sets)
miou = miou_table(trainer, cms, sets)
run.table(miou, f"dg_{tag}_miou")
miou

# %%
per_class = per_class_table(trainer, cms, sets)
run.table(per_class.round(2), f"dg_{tag}_per_class", float_format="%.1f")
per_class.round(1)

# %% [markdown]
# ## Predictions
# One image per evaluated set: the image, its labels and the prediction.

# %%
fig = dg_prediction_figure(trainer, sets)
run.figure(fig, f"dg_{tag}_predictions", formats=("png",), dpi=90)
run.finish(
    config=config_dict(trainer.cfg),
    preset=preset_choice.record(),
    config_hash=trainer.hash,
    checkpoint=dg_run_dir(cfg, results_dir or None).name,
    training_seconds=round(trainer.state.seconds, 1),
)

# %% [markdown]
# ## Explore (JupyterLab)
# With `explore = True`: choose a target and an image, a scene prompt and a UNet timestep;
# the explorer shows the prediction overlay and a PCA of the features.

# %%
if explore:
    from IPython.display import display

    from diffprompt.viz import Explorer

    display(Explorer(trainer.model, sets, scene_text=scene_text).widget)
