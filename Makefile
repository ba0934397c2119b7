# make run   - set up (venv, packages, redis-server) and run the supervisord stack (foreground)
# make dev   - one consumer against its own local Redis, without supervisord
# make test  - set up and run the whole test suite (lint, types, tests)
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_WORKERS ?= 3

.PHONY: setup run dev stop status test lint typecheck bench soak clean

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	@scripts/setup.sh

setup: $(VENV)/.installed

run: setup
	@scripts/run-stack.sh

dev: setup
	@scripts/run-dev.sh

stop:
	$(BIN)/supervisorctl -c conf/supervisord.conf shutdown

status:
	$(BIN)/supervisorctl -c conf/supervisord.conf status

lint: setup
	$(BIN)/ruff check daemon tests scripts examples

typecheck: setup
	$(BIN)/mypy

test: setup lint typecheck
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -q

soak: setup
	$(BIN)/python scripts/soak.py $(SOAK_ARGS)

bench: setup
	$(BIN)/python scripts/bench.py --tasks 20000 --repeat 5 --more --pin 1

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
