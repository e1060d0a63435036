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
# # 06 · The embedded model: what the tiny Stable Diffusion learned
#
# Every notebook runs by default on `toy-sd`, a tiny Stable-Diffusion-style model (VAE, UNet,
# CLIP text encoder, tokenizer, scheduler, in diffusers format) that the project pretrains
# on the miniature's training splits and ships in the package. This notebook shows its
# training record and measures, on held-out images, what it learned: whether it uses its
# text, whether class words find their regions in cross-attention, what its VAE keeps of
# each class, whether its features beat the same UNet with random weights, and what it
# draws from captions. Its model card (`diffprompt/assets/toy-sd/README.md`) quotes these
# numbers.
#
# With `retrain = True` it first regenerates the model with `diffprompt.toysd.pretrain`
# (deterministic for a seed on a given device type; hours on a CPU, minutes on a GPU) into
# `retrain_dir`, and measures that one instead.

# %% tags=["parameters"]
model: str = "toy-sd"  # the bundled model, or a diffusers folder
data_root: str = "miniature"  # "miniature" (embedded, generated on demand) or a data folder
images: int = 32  # held-out images per measurement
probe_steps: int = 300  # optimisation steps of each linear probe
sample_steps: int = 30  # DDIM steps of the sampled images
retrain: bool = False  # regenerate the model first (see the recipe parameters below)
retrain_dir: str = "results/runs/toy-sd"  # where a regenerated model is written
vae_steps: int = 2000  # VAE steps of the recipe (used only when retrain is True)
unet_steps: int = 9000  # UNet schedule length of the recipe
unet_stop: int = 8000  # UNet step the recipe stops at (0: the whole schedule)
unet_batch: int = 256  # UNet batch size of the recipe
height: int = 128  # training resolution: the miniature's image size
width: int = 256  # training width
max_images: int = 0  # cap on training images per data set (0: all; tests use a few)
device: str = "auto"  # where a retrain runs: "auto" (CUDA if present), "cpu", "cuda"
compare_vaes: dict = {}  # other VAEs to compare per class: {"name": "diffusers VAE folder"}
text_use_images: int = 16  # held-out images per text-use measure (prompt sensitivity etc.)
candidates: dict = {}  # candidate models measured beside it: {"name": "toy model folder"}
seed: int = 0  # seeds training, probes and sampling
results_dir: str = ""  # "": results/ of the repository

# %%
from diffprompt.parameters import check_parameters

params = check_parameters(globals())  # a wrong type or an unknown parameter stops here

# %%
import pandas as pd

from diffprompt.backbones.diffusion import DiffusionBackbone, FeatureConfig
from diffprompt.backbones.hub import resolve_model_folder
from diffprompt.data.roots import resolve_data_root
from diffprompt.parameters import config_of
from diffprompt.results import Run
from diffprompt.toysd.candidates import measure
from diffprompt.toysd.eval import (
    DEMO_CAPTIONS,
    evidence_attention,
    evidence_probe,
    evidence_text,
    evidence_vae,
    masks_padding,
    sample_figure,
    sample_images,
    training_figure,
    write_table,
)
from diffprompt.toysd.pretrain import ToySDConfig, load_training_record, pretrain
from diffprompt.toysd.text_use import recorded_candidates, text_use, text_use_table

root = resolve_data_root(data_root)
run = Run("06_embedded_model", params, seed=seed, root=results_dir or None)

# %% [markdown]
# ## The model (regenerated first when `retrain = True`)

# %%
if retrain:
    cfg = config_of(ToySDConfig, params)
    folder = pretrain(cfg, retrain_dir, retrain_dir + ".work", device=device)
else:
    folder = resolve_model_folder(model)
bb = DiffusionBackbone.from_pretrained(folder, FeatureConfig(blocks=(0, 1, 2)))
rec = load_training_record(folder)
print(bb.describe())
print("parameters:", rec["parameters"], "training images:", rec["training_images"])

# %% [markdown]
# ## Training curves
# VAE loss, UNet noise-prediction loss, and the held-out loss with the caption and with the
# empty prompt, measured with the same noise during training.

# %%
fig = training_figure(rec)
run.figure(fig, "toy_sd_training", formats=("png",), dpi=100)

# %% [markdown]
# ## Does it use its text?
# The same held-out latents, noise and timestep, once with the image's caption and once
# with the empty prompt. `caption wins` is the share of pairs where the caption gives the
# lower loss (0.5 would mean the text is ignored).

# %%
write_table(run, "toy_sd_text_usage", evidence_text(bb, root, images, seed))

# %% [markdown]
# ## Do class words bind to regions?
# One prompt names all 19 classes; each pixel takes the class whose word it attends to most
# (no head, no training). Then the maps of five words for one image of every domain.

# %%
att, fig = evidence_attention(bb, root, images, seed)
run.figure(fig, "toy_sd_attention_maps", formats=("png",), dpi=90)
write_table(run, "toy_sd_class_word_attention", att)

# %% [markdown]
# ## What the VAE keeps of each class
# Reconstruction PSNR per class on GTA5 val (the 4x-vs-8x choice is argued in the model card).

# %%
write_table(run, "toy_sd_vae_reconstruction", evidence_vae(bb, root, images, compare_vaes))

# %% [markdown]
# ## Features against random weights
# The same linear probe on the features of the pretrained UNet and of the same UNet with
# random weights (same VAE and text encoder), trained on GTA5 train, scored on GTA5 val.

# %%
probes = write_table(run, "toy_sd_probe", evidence_probe(bb, root, probe_steps, seed=seed))

# %% [markdown]
# ## How much does the prompt reach the features?
# The measures a candidate recipe is judged by (`diffprompt.toysd.text_use`): the
# % change of the feature maps between scene prompts and against the empty prompt at
# t = 1 (the features' timestep), 200 and 400; class-word binding (best of t = 1, 200);
# the caption's loss gap at t <= 600; the probe. A candidate replaces toy-sd only with
# binding >= 25 mIoU or scene-prompt sensitivity >= 25% at t = 1, the probe within 2
# points. Rows: this model, the `candidates` measured here, and the candidates that
# `diffprompt.toysd.candidates` runs measured (their run, device and git sha in "measured
# by").

# %%
# the probe above is this one unless the model masks padding (then read with trimmed prompts)
known = {} if masks_padding(bb) else dict(probe_miou=probes.loc["pretrained UNet", "mIoU"])
name = str(folder) if retrain else model
measures = {name: text_use(bb, root, text_use_images, probe_steps, seed=seed, **known)}
for name, path in candidates.items():
    kw = dict(images=text_use_images, probe_steps=probe_steps, seed=seed)
    measures[name] = measure(path, root, bb.unet.device, **kw)
table = text_use_table(measures).assign(**{"measured by": run.name})
recorded = recorded_candidates(run.root)
write_table(run, "toy_sd_text_use", table if recorded.empty else pd.concat([table, recorded]))

# %% [markdown]
# ## Images sampled from captions
# DDIM with classifier-free guidance 4 from the captions below.

# %%
samples = sample_images(
    folder, DEMO_CAPTIONS, steps=sample_steps, seed=seed, height=height, width=width
)
fig = sample_figure(samples, DEMO_CAPTIONS)
run.figure(fig, "toy_sd_samples", formats=("png",), dpi=100)
run.finish(model=model)
