# Two entry points for a fresh machine: `make demo` and `make test` (see README.md).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-latest lint lock baselines model-report clean

# Both environments come from the hashed locks in requirements/ (make lock refreshes them);
# scripts/venv.sh prints one line per step and keeps pip's output in .venv/install.log.
$(VENV)/.eval: requirements/eval.lock requirements/dev.lock pyproject.toml
	@PY=$(PY) scripts/venv.sh $(VENV) requirements/eval.lock
	@touch $@

$(VENV)/.dev: requirements/dev.lock pyproject.toml
	@PY=$(PY) scripts/venv.sh $(VENV) requirements/dev.lock
	@touch $@ $(VENV)/.eval

# The main job: service on loopback with SQLite, the edge pipeline over the bundled sample
# faces, a decision table; then the evaluation report of the shipped model on those faces.
demo: $(VENV)/.eval
	$(BIN)/kfaar demo --out out/demo
	$(BIN)/kfaar eval --anonymizer hpvfg --seed 2025 --out out/demo/eval.json
	@echo "report: out/demo/eval.md (grid: out/demo/eval_grid.png, ROC: out/demo/eval_roc.png)"

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest -q

# The same suite on the newest releases pyproject.toml allows, in a throwaway .venv-latest,
# so drift is seen before a lock refresh (README: when it last passed).
test-latest:
	@rm -rf .venv-latest
	@PY=$(PY) scripts/venv.sh .venv-latest --latest
	.venv-latest/bin/pip list --format=freeze > .venv-latest/versions.txt
	.venv-latest/bin/pytest -q

# Re-resolve requirements/*.lock from pyproject.toml (pip-tools, pinned in the script).
lock:
	scripts/lock.sh

# Regenerate docs/baselines.md on the paper's LFW dev triplets (about half an hour).
baselines: $(VENV)/.eval
	$(BIN)/python benchmarks/baselines.py --out docs/baselines.md

# Reproduce docs/MODEL_CARD.md's table: the shipped model, fp32 and int8, on the LFW dev
# triplets with the dlib judge, and fp32 with the system's recognizer as judge (about 15
# minutes; needs $$KFAAR_DATA_ROOT or ../shared/data).
DATA ?= $(or $(KFAAR_DATA_ROOT),../shared/data)
model-report: $(VENV)/.eval
	for p in fp32 int8; do \
	  $(BIN)/kfaar eval --root $(DATA)/lfw --triplets $(DATA)/splits/lfw_dev_triplets.txt \
	    --anonymizer hpvfg:$$p --seed 2025 --out out/model-report/$$p.json || exit 1; \
	done
	$(BIN)/kfaar recognizer export-arcface out/model-report/system_judge.onnx
	$(BIN)/kfaar eval --root $(DATA)/lfw --triplets $(DATA)/splits/lfw_dev_triplets.txt \
	  --anonymizer hpvfg --judge onnx:out/model-report/system_judge.onnx --seed 2025 \
	  --out out/model-report/fp32_system_judge.json
	$(BIN)/python benchmarks/model_table.py out/model-report/fp32.json \
	  out/model-report/int8.json out/model-report/fp32_system_judge.json

clean:
	rm -rf $(VENV) .venv-latest .venv-lock out
