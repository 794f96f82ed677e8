# Every target creates .venv itself (pip, never uv) and is idempotent: the venv is rebuilt only
# when pyproject.toml changes.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# pytest-xdist workers for both suites (TEST_WORKERS=0 runs them in one process). The tests
# mostly wait on Ray, servers and subprocesses: run serially on a 2-core EPYC they kept the
# cores 27-39% busy and CI took about 34 minutes; with 2 workers `make test` went from 8:35 to
# 5:32 and `make test-cluster` from 19:33 to 14:05. Workers beyond the cores oversubscribe them.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal

.PHONY: setup demo test test-cluster browser lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(PYTEST) -m "not cluster and not gpu" -q

# The local stack's test (infra/local/up.sh, down.sh) runs alone, in a process of its own: on
# CI both its runs failed beside the other worker (down.sh "left" Ray's processes), while it
# has passed there alone and here either way. Alone it costs about a minute.
STACK_TEST := tests/infra/test_local_stack.py
test-cluster: $(STAMP) browser
	$(PYTEST) -m cluster -q --ignore=$(STACK_TEST)
	$(BIN)/python -m pytest -p no:xdist -m cluster -q $(STACK_TEST)

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
