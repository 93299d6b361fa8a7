# One entry point for set-up, checks and demos. `make demo` and `make test` work on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all install demo test lint typecheck bench mutate clean realserver

all: test

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e '.[dev,bench,otel,redis]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/runner run examples/jobs.jsonl --contexts examples/contexts.jsonl \
		-c configs/mock.toml --no-resume -o out/demo.results.jsonl \
		--latency out/demo.latency.jsonl --summary out/demo.summary.json

lint: $(STAMP)
	$(BIN)/ruff check runner tests benchmarks
	$(BIN)/ruff format --check runner tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy runner tests benchmarks

# Worker processes for pytest (pytest-xdist): most tests wait on sockets, child processes and
# timers rather than on the CPU, so more workers than the two cores pay off. Every test uses its
# own tmp_path and free ports. `make test TEST_WORKERS=0` runs the suite in one process.
TEST_WORKERS ?= 4

# mypy (one CPU-bound process, ~20 s on a fresh clone's cold cache) runs beside pytest, whose
# workers mostly wait; its report is printed after pytest's, and either failing fails the target.
test: lint
	@log=$$(mktemp); \
	echo "$(BIN)/mypy runner tests benchmarks (beside pytest; its report follows pytest's)"; \
	$(BIN)/mypy runner tests benchmarks >$$log 2>&1 & types=$$!; \
	echo "$(BIN)/pytest -q -n $(TEST_WORKERS) --dist worksteal --cov --cov-report=term:skip-covered"; \
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist worksteal --cov --cov-report=term:skip-covered; \
	tests_rc=$$?; wait $$types; types_rc=$$?; \
	echo "--- $(BIN)/mypy runner tests benchmarks (exit $$types_rc):"; cat $$log; rm -f $$log; \
	[ $$tests_rc -eq 0 ] && [ $$types_rc -eq 0 ]

# llama.cpp's llama-server and a tiny random-weight model for tests/test_realserver.py, built once
# into ~/.cache/runner-realserver (about 10 minutes on 2 cores; docs/REALSERVER.md).
realserver:
	nice -n 10 bash tools/realserver/build.sh

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# Mutation testing of the core modules (slow: minutes per module; not part of `make test`).
# `make mutate MUTANTS='runner.retry*'` narrows it to one module; after a first run,
# MUTANTS="$$(python tools/mutmut/mutants.py sample sinks 250)" runs a random sample. Survivors
# are listed by `mutmut results`, the per-module table by `tools/mutmut/mutants.py summary`.
MUTANTS ?=
mutate: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[mutate]'
	nice -n 19 $(BIN)/mutmut run $(MUTANTS)
	$(BIN)/mutmut results
	$(BIN)/python tools/mutmut/mutants.py summary

clean:
	rm -rf mutants $(VENV) .venv-bench out bench-out .pytest_cache .mypy_cache .ruff_cache
