# diffprompt: the verbs of the project, as a dependency graph.
#   make main   set up .venv, generate the embedded miniature, run the main job
#   make test   set up .venv, lint, check notebooks, run the test suite
# Real data and weights pass through variables, e.g.
#   make main DATA_ROOT=/datasets
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_ROOT ?= miniature
RUNS := results/runs
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.py))

.PHONY: setup main data test lint format notebooks clean distclean embedded-model evidence
.DELETE_ON_ERROR:

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[notebooks,dev]"
	touch $@

setup: $(VENV)/.installed

# the embedded miniature (regenerated only when the generator or its parameters change)
data: setup
ifeq ($(DATA_ROOT),miniature)
	$(PY) -m diffprompt.data.toyworld
else
	@echo "data root: $(DATA_ROOT) (the miniature is not needed)"
endif

# the main job on the embedded default (for now: the data notebook)
main: setup data $(RUNS)/00_data.ipynb

$(RUNS)/00_data.ipynb: notebooks/00_data.ipynb diffprompt/data/toyworld.py diffprompt/domain_gap.py | setup
	@mkdir -p $(RUNS)
	$(VENV)/bin/papermill --log-output notebooks/00_data.ipynb $@ -p data_root $(DATA_ROOT)

# regenerate the embedded model into diffprompt/assets/toy-sd (about 25 min on one H100,
# hours on a CPU; resumable from results/runs/toy_sd), then measure it and rewrite its card
embedded-model: setup data
	$(PY) -m diffprompt.backbones.toy_sd --device auto

evidence: setup data
	@mkdir -p $(RUNS)
	$(VENV)/bin/papermill --log-output notebooks/06_embedded_model.ipynb $(RUNS)/06_embedded_model.ipynb
	$(PY) -m diffprompt.backbones.toy_sd_eval

test: setup lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

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

# clean never deletes results
clean:
	rm -rf .pytest_cache .ruff_cache $(RUNS)
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) data/miniature
