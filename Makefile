# Two entry points: `make demo` runs the main job on the embedded default, `make test` runs the tests.
# Installs are exact: uv installs the versions pinned in uv.lock (`make lock` refreshes it).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
UV_HOME := .venv-uv
UV := $(UV_HOME)/bin/uv
export DAGSTER_HOME := $(CURDIR)/.batchrouter/dagster_home
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS := never

.PHONY: demo test dev lock clean

$(UV):
	$(PYTHON) -m venv $(UV_HOME)
	$(UV_HOME)/bin/pip install --quiet uv==$(UV_VERSION)

$(BIN)/batchrouter: pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --extra dev --python $(PYTHON) --quiet
	touch $(BIN)/batchrouter

demo: $(BIN)/batchrouter
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/python -m pipelines.demo

test: $(BIN)/batchrouter
	$(BIN)/ruff check batchrouter assets pipelines tests benchmarks
	$(BIN)/mypy --strict --ignore-missing-imports batchrouter
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

dev: $(BIN)/batchrouter
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/dagster dev -w workspace.yaml

lock: | $(UV)
	$(UV) lock --python $(PYTHON)

clean:
	rm -rf $(VENV) $(UV_HOME) .batchrouter
