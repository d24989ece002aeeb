# Two entry points: `make demo` runs the main job on the embedded default, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME := $(CURDIR)/.batchrouter/dagster_home

.PHONY: demo test dev clean

$(BIN)/batchrouter: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/batchrouter

demo: $(BIN)/batchrouter
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/python -m pipelines.demo

test: $(BIN)/batchrouter
	$(BIN)/ruff check batchrouter assets pipelines tests benchmarks
	$(BIN)/mypy --strict --ignore-missing-imports batchrouter
	$(BIN)/python -m pytest -q


dev: $(BIN)/batchrouter
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/dagster dev -w workspace.yaml

clean:
	rm -rf $(VENV) .batchrouter
