# The two commands of the README, and the steps they share.
# `make demo` and `make test` each run the idempotent set-up first.
PY := .venv/bin/python
export QT_QPA_PLATFORM ?= offscreen
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup demo test lint plugin bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m scripts.demo

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	.venv/bin/lint-imports

test: setup lint
	$(PY) -m pytest

plugin: setup
	$(PY) scripts/build_plugin.py

bench: setup
	$(PY) -m benchmarks

clean:
	rm -rf dist .pytest_cache .ruff_cache artifacts
