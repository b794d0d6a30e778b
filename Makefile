# The two commands of the README: `make up` starts the service on this machine, `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install up demo test test-fast lint format bench lock

install: $(BIN)/oprover
$(BIN)/oprover: requirements.lock pyproject.toml
	@command -v redis-server >/dev/null || { echo "installing redis-server (apt)"; \
	  (apt-get update -qq && apt-get install -y -qq redis-server) >/dev/null; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	@touch $@

# On a box with an NVIDIA GPU, the `gpu` extra (SGLang) too: `oprover up` then serves the model itself.
up: install
	@if command -v nvidia-smi >/dev/null 2>&1 && ! $(BIN)/python -c "import sglang" 2>/dev/null; then \
	  echo "NVIDIA GPU found: installing the gpu extra (SGLang)"; $(BIN)/pip install -q -c requirements.lock -e '.[gpu]'; fi
	$(BIN)/oprover up

# The tests mostly wait (processes starting, stand-ins answering at real latencies), so they run on TEST_WORKERS
# pytest-xdist workers, more than the cores; one file at a time per worker (`--dist loadfile`: a module's
# `oprover up` starts once), heaviest files first (tests/conftest.py). Tests marked `timing` assert a wall-clock
# bound a busy machine could break: they run afterwards, one at a time, in the files that hold them.
TEST_WORKERS ?= 4
PARALLEL     := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
TIMING_FILES  = $(shell grep -l 'pytest.mark.timing' tests/test_*.py)

test: install
	status=0; \
	$(BIN)/pytest -q -m "not lean and not gpu and not timing" $(PARALLEL) || status=$$?; \
	$(if $(TIMING_FILES),$(BIN)/pytest -q -m "not lean and not gpu and timing" -p no:xdist $(TIMING_FILES) || status=$$?;) \
	exit $$status

test-fast: install
	status=0; \
	$(BIN)/pytest -q -m "not lean and not gpu and not slow and not timing" $(PARALLEL) || status=$$?; \
	$(if $(TIMING_FILES),$(BIN)/pytest -q -m "not lean and not gpu and not slow and timing" -p no:xdist $(TIMING_FILES) || status=$$?;) \
	exit $$status

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Every benchmark, bounded for a small machine; writes docs/benchmarks.md (`python -m bench --help`).
bench: install
	$(BIN)/python -m bench

# The service on the stand-in model and stand-in Lean with a scripted sample: no GPU, no Lean, no settings; no
# result is a real proof (README, "Try it without a GPU (demo)"; state in data/demo).
demo: install
	$(BIN)/oprover up --demo

# Re-pin after changing dependencies in pyproject.toml (run inside a fresh venv that installed `.[dev]`).
lock:
	$(BIN)/pip freeze --exclude-editable | grep -v '^-e ' > requirements.lock
