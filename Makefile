# make run   - set up (venv, packages, redis-server) and run the supervisord stack (foreground)
# make dev   - one consumer against its own local Redis, without supervisord
# make test  - set up and run the whole test suite (lint, types, tests)
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_WORKERS ?= 3

.PHONY: setup run dev stop status test lint typecheck bench bench-quick bench-loops bench-cluster soak clean

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
	$(BIN)/ruff check daemon tools tests scripts examples

typecheck: setup
	$(BIN)/mypy

test: setup lint typecheck
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -q

# soak: the stack under load and scheduled faults, then a verdict (docs/soak.md)
soak: setup
	$(BIN)/python -m tools.soak $(SOAK_ARGS)

# bench: taskd against the seed's loop, Celery, Dramatiq and RQ (the bench extra), several minutes
bench: setup
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[bench]'
	$(BIN)/python scripts/bench.py

bench-quick: setup
	$(BIN)/python scripts/bench.py --quick

bench-loops: setup
	$(BIN)/python scripts/bench.py --loops --tasks 20000 --repeat 5 --more --pin 1

# bench-cluster: one queue over 1, 2, 3 cluster primaries (N shards, P consumers), as ratios
bench-cluster: setup
	$(BIN)/python scripts/bench_cluster.py $(BENCH_CLUSTER_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
	find var -mindepth 2 ! -name .gitkeep -delete  # var/log, var/run, var/redis stay (supervisord)
