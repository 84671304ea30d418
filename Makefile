# securefed — two commands do all the set-up on a fresh machine:
#   make demo   creates/updates .venv, installs pinned versions, runs configs/quickstart.toml
#   make test   creates/updates .venv, runs lint (ruff + mypy) and the whole test suite
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.securefed-installed
RUN    ?= runs/quickstart
PYTEST_ARGS ?=

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1

.PHONY: venv demo test lint unit bench clean

venv: $(STAMP)

# torch is pinned in the same pip command as everything else (see docs/install.md):
# otherwise a dependency can pull a CUDA build of several GB.
$(STAMP): pyproject.toml requirements/lock.txt requirements/assets.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -r requirements/lock.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements/assets.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# --overwrite: a rerun replaces the previous demo run (a run directory holds one run)
demo: $(STAMP)
	$(BIN)/securefed run configs/quickstart.toml --out $(RUN) --overwrite

lint: $(STAMP)
	$(BIN)/ruff check securefed strategies attacks tests bench
	$(BIN)/mypy securefed strategies attacks
	$(BIN)/mypy --explicit-package-bases bench

unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

test: lint $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/comm.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
