# make run   - set up (venv, packages, redis-server) and run taskd against a local Redis
# make test  - set up and run the whole test suite (lint, types, tests)
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_WORKERS ?= 3

.PHONY: setup run test lint typecheck unit bench clean

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	@scripts/setup.sh

setup: $(VENV)/.installed

run: setup
	@scripts/run-dev.sh

lint: setup
	$(BIN)/ruff check daemon tests scripts

typecheck: setup
	$(BIN)/mypy

test: setup lint typecheck
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -q

bench: setup
	$(BIN)/python scripts/bench.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
