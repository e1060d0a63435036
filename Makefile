# diffprompt: the verbs of the project, as a dependency graph.
#   make paper  set up .venv, generate the embedded miniature, run every notebook with
#               papermill (executed copies in results/runs/) and assemble the paper's tables
#   make test   set up .venv, lint, check notebooks, run the test suite (with the browser test)
#   make lab    JupyterLab on the notebooks with the .venv kernel
# Each executed notebook depends on its notebook, the package modules it runs and its
# inputs, so only what changed reruns. Real data and weights pass through variables, e.g.
#   make paper DATA_ROOT=/datasets MODEL=stable-diffusion-v1-5/stable-diffusion-v1-5 PRESET=paper
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PAPERMILL := $(VENV)/bin/papermill --log-output
DATA_ROOT ?= miniature
MODEL ?= toy-sd
PRESET ?=
DEVICE ?= auto
RUNS := results/runs
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.py))

.PHONY: setup main paper data test lint format notebooks clean clean-runs distclean \
	embedded-model embedded-candidate evidence bench tta-budget tta-budget-short lab browser
.DELETE_ON_ERROR:

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0 -e ".[notebooks,dev]"
	touch $@

setup: $(VENV)/.installed

# the embedded miniature (regenerated only when the generator changes)
ifeq ($(DATA_ROOT),miniature)
DATA := data/miniature/toyworld.json
$(DATA): $(wildcard diffprompt/data/toyworld/*.py) diffprompt/data/datasets.py | setup
	$(PY) -m diffprompt.data.toyworld
	@touch $@
else
DATA :=
endif
data: setup $(DATA)

# what notebooks 00-04 run, and the bundled model (paper.py feeds notebook 05 only; bench.py
# and fastpath.py no notebook)
CORE := $(filter-out diffprompt/paper.py diffprompt/bench.py diffprompt/fastpath.py, \
	$(wildcard diffprompt/*.py diffprompt/*/*.py diffprompt/*/*/*.py)) \
	$(wildcard diffprompt/assets/toy-sd/*/*)
# FULL=1: the embedded default's full protocol instead of the main job's cuts (every
# evaluation image, T4 on 60 images per target, DG heads 500 steps; about 31 min on 2 cores;
# after `make clean-runs`, since the executed notebooks are the targets)
ifeq ($(FULL),1)
FULL_02 := -p steps 500 -p max_eval_images 0
FULL_03 := -p dg_steps 500 -p eval_images 60
FULL_04 := -p steps 60 -p max_eval_images 0
endif
COMMON := -p data_root $(DATA_ROOT) -p device $(DEVICE)
WITH_MODEL := $(COMMON) -p model $(MODEL)
EXEC := $(RUNS)/00_data.ipynb $(RUNS)/01_feature_probing.ipynb \
	$(RUNS)/02_dg_training_gta5.ipynb $(RUNS)/02_dg_training_synthia.ipynb \
	$(RUNS)/03_tta.ipynb $(RUNS)/04_prompt_ablations.ipynb $(RUNS)/05_paper_tables.ipynb

# the main job: every notebook on the embedded default, then the paper's tables
paper: setup data $(EXEC)
main: paper

$(RUNS)/00_data.ipynb: notebooks/00_data.ipynb $(CORE) $(DATA) | setup
	@mkdir -p $(RUNS)
	$(PAPERMILL) $< $@ $(COMMON)

$(RUNS)/01_feature_probing.ipynb: notebooks/01_feature_probing.ipynb $(CORE) $(DATA) | setup
	@mkdir -p $(RUNS)
	$(PAPERMILL) $< $@ $(WITH_MODEL)

$(RUNS)/02_dg_training_gta5.ipynb: notebooks/02_dg_training.ipynb $(CORE) $(DATA) | setup
	@mkdir -p $(RUNS)
	$(PAPERMILL) $< $@ $(WITH_MODEL) -p preset "$(PRESET)" -p source gta5 $(FULL_02)

$(RUNS)/02_dg_training_synthia.ipynb: notebooks/02_dg_training.ipynb $(CORE) $(DATA) | setup
	@mkdir -p $(RUNS)
	$(PAPERMILL) $< $@ $(WITH_MODEL) -p preset "$(PRESET)" -p source synthia \
		-y "targets: [cityscapes]" $(FULL_02)

$(RUNS)/03_tta.ipynb: notebooks/03_tta.ipynb $(CORE) $(DATA) | setup
	@mkdir -p $(RUNS)
	$(PAPERMILL) $< $@ $(WITH_MODEL) -p preset "$(PRESET)" -p source cityscapes \
		-p target adverse $(FULL_03)

# after notebook 02 (order only): the ablation's method cells reuse its cached features
$(RUNS)/04_prompt_ablations.ipynb: notebooks/04_prompt_ablations.ipynb $(CORE) $(DATA) \
		| setup $(RUNS)/02_dg_training_gta5.ipynb
	@mkdir -p $(RUNS)
	$(PAPERMILL) $< $@ $(WITH_MODEL) $(FULL_04)

$(RUNS)/05_paper_tables.ipynb: notebooks/05_paper_tables.ipynb diffprompt/paper.py \
		$(RUNS)/01_feature_probing.ipynb $(RUNS)/02_dg_training_gta5.ipynb \
		$(RUNS)/02_dg_training_synthia.ipynb $(RUNS)/03_tta.ipynb \
		$(RUNS)/04_prompt_ablations.ipynb | setup
	$(PAPERMILL) $< $@ -p data_root $(DATA_ROOT) -p model $(MODEL)

# the benchmark (results/bench/)
bench: setup data
	$(PY) -m diffprompt.bench

# the TTA budget study (notebook 07: mIoU against 200 TTA steps, two learning rates, both
# objectives, three seeds, ACDC night and Dark Zurich; about 20 min on 2 cores):
# tables/tta_budget*, figures/tta_budget
tta-budget: setup data
	@mkdir -p $(RUNS)
	$(PAPERMILL) notebooks/07_tta_budget.ipynb $(RUNS)/07_tta_budget.ipynb $(WITH_MODEL) \
		-p preset "$(PRESET)"

# the short budgets (about 9 min): the same study to 25 steps, evaluated at 2, 6, 12 and 25;
# tables/tta_budget_short*, figures/tta_budget_short
tta-budget-short: setup data
	@mkdir -p $(RUNS)
	$(PAPERMILL) notebooks/07_tta_budget.ipynb $(RUNS)/07_tta_budget_short.ipynb $(WITH_MODEL) \
		-p preset "$(PRESET)" -p steps 25 -p eval_every 25 -p name tta_budget_short

# regenerate the embedded model into diffprompt/assets/toy-sd (about 25 min on one H100,
# hours on a CPU; resumable from results/runs/toy_sd), then measure it and rewrite its card
embedded-model: setup data
	$(PY) -m diffprompt.toysd.pretrain --device auto

# a candidate embedded model (diffprompt.toysd.candidates): CANDIDATE=gpu10 fine-tunes
# toy-sd in about 10 min on one H100/H200 (checkpoints with a usable model every 2 min in
# results/runs/candidates/gpu10.work/model), then measures its text use against toy-sd:
# tables/toy_sd_text_use_<name>; CANDIDATE_ARGS passes options, e.g. "--set unet_batch=128"
CANDIDATE ?= gpu10
CANDIDATE_ARGS ?=
embedded-candidate: setup data
	$(PY) -m diffprompt.toysd.candidates --recipe $(CANDIDATE) --device $(DEVICE) \
		$(CANDIDATE_ARGS)

evidence: setup data
	@mkdir -p $(RUNS)
	$(VENV)/bin/papermill --log-output notebooks/06_embedded_model.ipynb $(RUNS)/06_embedded_model.ipynb
	$(PY) -m diffprompt.toysd.eval

test: setup lint browser
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

# Debian's chromium for the JupyterLab browser test (tests/test_lab.py), installed when
# missing (apt; sudo when not root); nothing downloads a browser
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
		echo "installing Debian's chromium for the browser test"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; }

# JupyterLab on the notebooks: registers the .venv's kernel ("diffprompt (.venv)"), makes a
# notebook's paired .py twin open as a notebook (jupytext), then starts JupyterLab at the
# repository with notebooks/ open. LAB_ARGS passes options, e.g. LAB_ARGS="--port 8899 --no-browser"
LAB_ARGS ?=
lab: setup
	$(PY) -m ipykernel install --sys-prefix --name diffprompt --display-name "diffprompt (.venv)"
	$(PY) -m diffprompt.lab settings
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" \
		--ServerApp.default_url=/lab/tree/notebooks $(if $(filter 0,$(shell id -u)),--allow-root) \
		$(LAB_ARGS)

lint: setup
	$(VENV)/bin/ruff check diffprompt tests notebooks
	$(VENV)/bin/ruff format --check diffprompt tests notebooks/*.py

format: setup
	$(VENV)/bin/ruff format diffprompt tests notebooks/*.py
	$(VENV)/bin/ruff check --fix diffprompt tests notebooks

# regenerate every .ipynb from its py:percent twin, outputs stripped
notebooks: setup
	for f in $(NOTEBOOKS); do $(VENV)/bin/jupytext --to ipynb --update-metadata '{"kernelspec":{"name":"python3","display_name":"Python 3 (ipykernel)","language":"python"}}' "$$f"; done
	$(VENV)/bin/nbstripout notebooks/*.ipynb

# clean never deletes results: only tool caches (clean-runs also drops results/runs/, the
# executed notebooks, DG checkpoints and the feature cache, so the next `make paper` reruns all)
clean:
	rm -rf .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

clean-runs:
	rm -rf $(RUNS)

distclean: clean clean-runs
	rm -rf $(VENV) data/miniature
