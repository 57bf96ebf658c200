# newsflow: `make demo` sets everything up and runs the demo; `make test` sets up and tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test check browser lint typecheck pytest bench fmt clean

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)  ## set up, then ingest the bundled demo sources into warehouse/news.duckdb
	$(BIN)/newsflow run

test: check browser pytest  ## set up, lint, type-check and run the whole test suite

browser:  ## Debian's chromium for the UI test, when missing (needs root)
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	  || echo "chromium missing and not root: the UI test will be skipped"; }

check: lint typecheck

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

bench: $(STAMP)  ## the benchmarks (JSON on stdout; ../shared beside the project; loopback only)
	$(BIN)/python bench/throughput.py --pages 2000
	$(BIN)/python bench/warehouse_bench.py load
	$(BIN)/python bench/warehouse_bench.py query --articles 1000000
	$(BIN)/python bench/dedup_eval.py
	$(BIN)/python bench/bad_input_report.py

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) warehouse/news.duckdb warehouse/news.duckdb.wal
