# The two commands of the README: `make up` starts the service on this machine, `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install up test test-fast lint format bench lock

install: $(BIN)/oprover
$(BIN)/oprover: requirements.lock pyproject.toml
	@command -v redis-server >/dev/null || { echo "installing redis-server (apt)"; \
	  (apt-get update -qq && apt-get install -y -qq redis-server) >/dev/null; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	@touch $@

up: install
	$(BIN)/oprover up

test: install
	$(BIN)/pytest -q -m "not lean and not gpu"

test-fast: install
	$(BIN)/pytest -q -m "not lean and not gpu and not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install
	$(BIN)/python bench/bench_lean.py
	$(BIN)/python bench/bench_generate.py
	$(BIN)/python bench/bench_memory.py

# Re-pin after changing dependencies in pyproject.toml (run inside a fresh venv that installed `.[dev]`).
lock:
	$(BIN)/pip freeze --exclude-editable | grep -v '^-e ' > requirements.lock
