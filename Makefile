# Entry points: `make run` (daemon on feeds.yaml), `make test`, `make test-fast`, `make check`,
# `make demo`, `make bench`, `make screenshots`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast check lint demo bench bench-hourly screenshots clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/aggregator -c feeds.yaml run

# Lint first: CI runs this target, so ruff and mypy stay clean on main.
test: lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# the unit and in-process tests only: no daemon processes or end-to-end rounds
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check aggregator tests demo
	$(BIN)/ruff format --check aggregator tests demo
	$(BIN)/mypy

check: test

demo: $(STAMP)
	$(BIN)/python demo/run.py

# docs/screenshots/: the demo's page in Debian's chromium (apt-get install chromium)
screenshots: $(STAMP)
	$(BIN)/python -m tests.screenshots

bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# issue 17: the daemon on 100,000 feeds polled hourly, 10 minutes (see bench/README.md)
bench-hourly: $(STAMP)
	$(BIN)/python bench/hourly.py $(HOURLY_ARGS)

clean:
	rm -rf $(VENV) public demo-out aggregator.db aggregator.db-wal aggregator.db-shm
