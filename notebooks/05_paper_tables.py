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
# # 05 · The paper's tables, regenerated
#
# This notebook runs nothing heavy: it assembles the tables the other notebooks wrote into
# the paper's four tables and one summary figure.
#
# - **T1** backbone comparison (notebook 01: linear probes on frozen features);
# - **T2** domain generalization, GTA5 → Cityscapes / BDD100K / Mapillary and SYNTHIA →
#   Cityscapes over 16 classes (notebook 02, run once per source);
# - **T3** prompt ablation (notebook 04);
# - **T4** test-time adaptation from Cityscapes to ACDC fog / night / rain / snow and Dark
#   Zurich (notebook 03).
#
# Published numbers sit in their own rows, labelled `published` with their citation. On the
# embedded miniature the measured rows are **not comparable** to them: the miniature and the
# 7.8M-parameter `toy-sd` test the code path and the direction of effects only. Each table is
# written as CSV, Markdown and LaTeX (booktabs) under `results/tables/paper_T*`, with its note.

# %% tags=["parameters"]
data_root: str = "miniature"  # the data root the notebooks ran on (labels the measured rows)
model: str = "toy-sd"  # the diffusion backbone they ran with (labels the measured rows)
mode: str = "random_consistency"  # the DG prompt mode shown in T2
results_dir: str = ""  # results folder the notebooks wrote to ("": results/ of the repository)

# %%
from diffprompt.parameters import check_parameters

params = check_parameters(globals())  # a wrong type or an unknown parameter stops here

# %%
from IPython.display import Markdown, display

from diffprompt.paper import paper_figure, paper_tables
from diffprompt.results import Run

tables = paper_tables(results_dir or None, data_root=data_root, model=model, mode=mode)
run = Run("05_paper_tables", params, root=results_dir or None)

# %%
for name, (table, note) in tables.items():
    run.table(table, f"paper_{name}", caption=note)
    display(Markdown(f"### {name}"), table, Markdown(f"*{note}*"))

# %% [markdown]
# ## Summary figure
# Left: the probe's target mean per frozen backbone (T1). Middle: the ablation grid's target
# mean (T3). Right: each TTA method's change from no adaptation, per target (T4).

# %%
fig = paper_figure(tables)
run.figure(fig, "paper_summary")
inputs = ["probe_backbones", f"dg_gta5_{mode}_stats", f"dg_synthia_{mode}_stats"]
inputs += ["ablation_summary", "ablation_stats", "tta_stats"]
run.finish(inputs=[f"tables/{name}.csv" for name in inputs])
