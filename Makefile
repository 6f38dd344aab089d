# The two Quickstart commands: `make run` (install + main job) and `make test` (install + tests).
# Python 3.11 (pyproject requires it): python3.11 when the machine has it, else python3.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || echo python3)
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= results/quickstart
# Ray binds to 127.0.0.1 only when this is set (see the README's Ray section).
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0

.PHONY: install browser run test lint bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch first: a bare torch requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev,icu-sepsis]"
	touch $@

install: $(VENV)/.installed browser

# Headless Chromium and chromedriver for the browser test, from Debian, when chromedriver is missing.
browser:
	bash scripts/install_browser.sh

run: install
	$(BIN)/sepsis-rl run --quick --out $(OUT)

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: install
	$(BIN)/python benchmarks/bench_ingest.py
