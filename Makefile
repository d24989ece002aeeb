# Two entry points: `make demo` runs the main job on the embedded default, `make test` runs the tests.
# Installs are exact: uv installs the versions pinned in uv.lock (`make lock` refreshes it). `make demo`
# and `make dev` install the project's own dependencies only; `make test` adds the dev tools.
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
DEV_TOOLS := $(BIN)/pytest
HOME_CONFIG := $(DAGSTER_HOME)/dagster.yaml
# `make dev PORT=3001 HOST=0.0.0.0`: where the Dagster UI listens.
PORT ?= 3000
HOST ?= 127.0.0.1

$(UV):
	$(PYTHON) -m venv $(UV_HOME)
	$(UV_HOME)/bin/pip install --quiet uv==$(UV_VERSION)

# The demo's install: the main dependencies (--inexact keeps dev tools a `make test` installed).
$(BIN)/batchrouter: pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --inexact --python $(PYTHON) --quiet
	touch $(BIN)/batchrouter

$(DEV_TOOLS): pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --extra dev --python $(PYTHON) --quiet
	touch $(DEV_TOOLS)

# The instance settings (telemetry off, pools); refreshed when pipelines/dagster.yaml changes.
$(HOME_CONFIG): pipelines/dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp pipelines/dagster.yaml $(HOME_CONFIG)

demo: $(BIN)/batchrouter $(HOME_CONFIG)
	$(BIN)/python -m pipelines.demo

test: $(DEV_TOOLS)
	$(BIN)/ruff check batchrouter assets pipelines tests benchmarks
	$(BIN)/mypy --strict --ignore-missing-imports batchrouter
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

# `dagster dev` warns that `dg dev` (another package, dagster-dg-cli) supersedes it; it is still Dagster's
# documented way to run a workspace.yaml, so that one warning is silenced.
DEV_WARNINGS := ignore:Function `dev_command` is superseded

dev: $(BIN)/batchrouter $(HOME_CONFIG)
	PYTHONWARNINGS='$(DEV_WARNINGS)' $(BIN)/dagster dev -w workspace.yaml -h $(HOST) -p $(PORT)

lock: | $(UV)
	$(UV) lock --python $(PYTHON)

clean:
	rm -rf $(VENV) $(UV_HOME) .batchrouter
