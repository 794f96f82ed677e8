# Every target creates .venv itself (pip, never uv) and is idempotent: the venv is rebuilt only
# when pyproject.toml changes.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-cluster browser lint bench clean

# --no-compile: pip byte-compiles all 21,000 modules of the venv one by one (46 s of a 2:10
# install on 2 cores); Python compiles the few thousand that a run imports on first use.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-compile -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -m "not cluster and not gpu" -q

test-cluster: $(STAMP) browser
	$(BIN)/python -m pytest -m cluster -q

# Headless Chromium for the UI tests (Debian's package; installed once, as root).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python benchmarks/step_cost.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
