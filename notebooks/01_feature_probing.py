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
# # 01 · Feature probing: do diffusion features generalize better?
#
# The paper's first claim: representations pretrained by diffusion generalize across
# domains better than supervised and self-supervised ones. Each backbone below is frozen;
# the same linear probe (BatchNorm + 1x1 convolution on its maps) is trained on the source
# only and scored on the source's val split and on every target, over several seeds. Then,
# on the diffusion backbone, sweeps over the timestep, the decoder block, the text
# conditioning, the noise and the kind of features; and label-free measures of the gap
# between source and target features (CKA, MMD), checked against the mIoU drop.
#
# **What each backbone saw.** On the embedded default the study compares one architecture,
# the embedded model's UNet, under three trainings: denoising pretraining on the unlabeled
# images of *every* domain (as Stable Diffusion saw the internet), supervised training on
# the source labels only (with and without photometric augmentation, so that the
# comparison is not won by exposure to the target looks alone), and none (random weights).
# On real data, pass hub ids or folders in `real_backbones` (SD 1.5/2.1, ResNet, ConvNeXt,
# Swin, DINOv2, CLIP); they join the table.

# %% tags=["parameters"]
source: str = "gta5"  # the probe is trained on this domain's train split only
targets: list = [
    "cityscapes",
    "bdd100k",
    "mapillary",
    "acdc_fog",
    "acdc_night",
    "acdc_rain",
    "acdc_snow",
    "darkzurich",
]  # targets of the backbone table
sweep_targets: list = ["cityscapes", "acdc_night"]  # targets of the sweeps
data_root: str = "miniature"  # "miniature" (embedded) or a data folder
model: str = "toy-sd"  # the embedded diffusion model (its UNet gives the three variants)
real_backbones: list = []  # hub ids or folders of real backbones to add (needs their weights)
seeds: list = [0, 1, 2]  # probe seeds of the backbone table (sweeps use the first)
n_train: int = 48  # source images the probe is fitted on
n_eval: int = 10  # images of the source val split and of each target
sweep_train: int = 32  # source images the probes of the sweeps are fitted on
steps: int = 80  # probe optimisation steps
lr: float = 0.01  # AdamW learning rate of the probe
supervised_steps: int = 40  # steps of the supervised UNet variants (end to end)
supervised_batch: int = 4  # their batch size (random 64x128 crops)
timesteps: list = [1, 400]  # timestep sweep, without noise
noise_timesteps: list = [400]  # timestep sweep with the latent noised to t
gap_images: int = 10  # images per domain for CKA and MMD
pca_map: str = "s1"  # the map shown in the PCA figure
device: str = "auto"  # "auto", "cpu", "cuda", ...
results_dir: str = ""  # results folder ("": results/ of the repository)

# %%
from diffprompt.parameters import check_parameters

params = check_parameters(globals())  # a wrong type or an unknown parameter stops here

# %%
from dataclasses import replace

from diffprompt.experiments.probing import (
    SAW,
    correlations,
    embedded_backbones,
    gap_study,
    gap_table,
    pca_figure,
    probe_all,
    probe_config,
    real_backbone,
    run_sweeps,
)
from diffprompt.experiments.stats import mean_std
from diffprompt.paths import cache_dir
from diffprompt.probing import features_of, probe_sets
from diffprompt.results import Run
from diffprompt.viz import gap_scatter, sweep_figure

cfg = probe_config(params)
run = Run("01_feature_probing", params, seed=seeds[0], root=results_dir or None)
cache = cache_dir(results_dir or None)
sets = probe_sets(cfg)

# %% [markdown]
# ## The backbones

# %%
backbones = embedded_backbones(
    model, supervised_steps, supervised_batch, data_root, seeds[0], device=device
)
backbones |= {name: real_backbone(name, device=device) for name in real_backbones}
features = {name: features_of(bb, name, cache) for name, bb in backbones.items()}
{name: SAW.get(name, "its own pretraining (see its model card)") for name in backbones}

# %% [markdown]
# ## Backbone table: the same probe on every frozen backbone
# mIoU (%), mean ± std over the seeds; drop = source val - target mean.

# %%
probes = probe_all(features, sets, cfg, seeds, log=print)
run.table(probes.set_index(["backbone", "seed"]), "probe_runs")
table = mean_std(probes, ["backbone"])
run.table(table, "probe_backbones", caption=f"Linear probe trained on {source}; mIoU (%).")
table

# %% [markdown]
# ## Sweeps on the diffusion backbone
# Timestep (with the clean latent, and with the latent noised to t), decoder block, text
# conditioning (the scene prompt against the empty prompt), and the kind of features:
# decoder maps, the class tokens' cross-attention maps, or both (seed `seeds[0]`, targets
# `sweep_targets`).

# %%
sweep_cfg = replace(cfg, targets=tuple(sweep_targets), n_train=sweep_train)
diffusion = backbones["diffusion (pretrained)"]
sweep_sets = probe_sets(sweep_cfg)
sweeps = run_sweeps(diffusion, sweep_sets, sweep_cfg, timesteps, noise_timesteps, cache, log=print)
run.table(sweeps.set_index(["sweep", "value"]), "probe_sweeps")
run.figure(sweep_figure(sweeps), "probe_sweeps", formats=("png",))
sweeps.round(2)

# %% [markdown]
# ## Label-free gap measures against the mIoU drop
# Linear CKA between the source's and the target's position-wise mean maps and MMD between
# their pooled features, per map and backbone; then whether they predict the probe's drop.

# %%
gaps = gap_study(features, sets, gap_images)
run.table(gaps.set_index(["backbone", "target", "map"]), "probe_gap_measures", float_format="%.4f")
joined = gap_table(gaps, probes)
corr = correlations(joined)
run.table(corr, "probe_gap_correlation", float_format="%.3f")
run.figure(gap_scatter(joined, corr), "probe_gap_scatter")
corr

# %% [markdown]
# ## PCA of the diffusion features by domain and by class

# %%
fig = pca_figure(features["diffusion (pretrained)"], sets, pca_map)
run.figure(fig, "probe_pca", formats=("png",), dpi=100)
run.finish(what_each_backbone_saw={n: SAW.get(n, "") for n in backbones})
