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
# # 00 · The data: seven domains, their miniature, and a measured domain gap
#
# The paper's experiments read GTA5, SYNTHIA, Cityscapes, BDD100K, Mapillary Vistas, ACDC
# (fog, night, rain, snow) and Dark Zurich. With the default `data_root = "miniature"` this
# notebook uses the embedded miniature: procedurally generated copies of those data sets,
# written in their real layouts and label formats (see data/README.md), generated on
# demand. Point `data_root` at a folder holding the real data sets to use them instead:
# the same loaders read both.
#
# It shows samples of every domain with their labels, the class frequencies per domain, and
# a measured domain gap: a small CNN trained on the source (GTA5) and tested on every
# target, against the same CNN trained on each target's own labels.

# %% tags=["parameters"]
data_root: str = "miniature"  # "miniature" (embedded, generated on demand) or a data folder
samples_per_domain: int = 2  # pictures per domain in the sample figure
freq_images: int = 60  # images per domain counted for the class frequencies (0: all)
gap_source: str = "gta5"  # the CNN trained on this data set's "train" split
gap_targets: list = [
    "cityscapes",
    "bdd100k",
    "mapillary",
    "acdc_fog",
    "acdc_night",
    "acdc_rain",
    "acdc_snow",
    "darkzurich",
]  # the data sets the source-trained CNN is tested on
gap_steps: int = 1000  # optimisation steps of every CNN
gap_batch_size: int = 8  # images per step
gap_input_scale: float = 1.0  # the CNN sees images resized by this factor
gap_max_images: int = 0  # cap on training/evaluation images per set (0: all; tests use a few)
gap_reuse: bool = True  # reuse a stored run with the same code, recipe and data (else retrain)
seed: int = 0  # seeds the CNNs and the sampling of pictures
device: str = "auto"  # where the CNNs train: "auto" (CUDA if present), "cpu", "cuda", ...
results_dir: str = ""  # "": results/ of the repository

# %%
from diffprompt.parameters import check_parameters

params = check_parameters(globals())  # a wrong type or an unknown parameter stops here

# %%
from diffprompt.benchmarks import TARGETS
from diffprompt.data.roots import resolve_data_root
from diffprompt.experiments.data import (
    class_frequencies,
    gap_config,
    load_or_run_domain_gap,
    pick_samples,
    record_domain_gap,
)
from diffprompt.results import Run
from diffprompt.viz import class_frequency_plot, sample_grid

root = resolve_data_root(data_root)
run = Run("00_data", params, seed=seed, root=results_dir or None)
print("data root:", root)

# %% [markdown]
# ## Every domain, side by side
# Each row: a picture and its trainId labels overlaid (black: ignored pixels, such as the
# ego vehicle's hood). Unlabeled splits (ACDC test, Dark Zurich train) are used for test-time
# adaptation only.

# %%
names = ["gta5", "synthia", *TARGETS]
rows = pick_samples(root, names, samples_per_domain, seed=seed)
fig = sample_grid(rows)
run.figure(fig, "data_samples", formats=("png",), dpi=72)  # raster content: PNG only
for name, samples in rows.items():
    print(f"{name:12s} {samples[0]['meta']['caption']}")

# %% [markdown]
# ## Class frequencies per domain
# Share of labeled pixels of each of the 19 classes (log scale).

# %%
freq = class_frequencies(root, names, max_images=freq_images)
caption = "Percent of labeled pixels per class and domain."
run.table(freq * 100, "class_frequencies", float_format="%.3f", caption=caption)
fig = class_frequency_plot(freq)
run.figure(fig, "class_frequencies")
freq.round(4) * 100

# %% [markdown]
# ## A measured domain gap
# The same small CNN (`diffprompt.domain_gap.SmallSegNet`, same recipe) trained on the
# source and on each target's own labels, evaluated on each target's labeled evaluation
# split. Targets without a labeled training split (Dark Zurich) use half of their labeled
# split for training and the other half for evaluation. Training the CNNs takes a while on a
# CPU, so a stored run with exactly the same code, recipe and data is reused (its table and
# provenance live in `results/tables/domain_gap.*`); `gap_reuse = False` retrains.

# %%
cfg = gap_config(params)
gap = load_or_run_domain_gap(
    root, gap_source, gap_targets, cfg, run.root, gap_max_images, reuse=gap_reuse, log=print
)
record_domain_gap(run, gap, gap_source)
run.finish()
print("checks:", gap.attrs["checks"])
gap
