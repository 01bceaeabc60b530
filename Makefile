# Two entry points for a fresh machine: `make demo` and `make test` (see README.md).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint baselines clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.eval: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[eval]"
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip check
	touch $@ $(VENV)/.eval

# The main job: evaluate the keyed baseline on the bundled sample faces, end to end.
demo: $(VENV)/.eval
	$(BIN)/kfaar eval --anonymizer scramble --out out/demo/eval.json
	@echo "report: out/demo/eval.md (grid: out/demo/eval_grid.png, ROC: out/demo/eval_roc.png)"

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest -q

# Regenerate docs/baselines.md on the paper's LFW dev triplets (about half an hour).
baselines: $(VENV)/.eval
	$(BIN)/python benchmarks/baselines.py --out docs/baselines.md

clean:
	rm -rf $(VENV) out
