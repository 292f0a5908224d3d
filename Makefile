# The README's two commands: `make demo` and `make test`. Both create .venv themselves.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	&& { echo $$p; break; }; done)

# pytest-xdist: two workers (the MariaDB tests in one group); `make test PYTEST_WORKERS=` runs
# serially. CONTRIBUTING.md, "Keeping the suite fast".
PYTEST_WORKERS ?= -n 2 --dist loadgroup

.PHONY: demo test lint typecheck unit integration chaos bench bench-redis bench-compare clean system-deps

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "multiactive needs Python 3.11 or newer (apt-get install python3 python3-venv)"; exit 1; }
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null || { \
		echo "the venv module is missing: apt-get install python3-venv"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,fast,zstd]'
	rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP)
	$(BIN)/multiactive demo
	$(BIN)/multiactive route demo

system-deps:
	@scripts/system-deps.sh

test: $(STAMP) system-deps
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest $(PYTEST_WORKERS)

unit: $(STAMP) system-deps
	$(BIN)/pytest tests/unit

integration: $(STAMP) system-deps
	$(BIN)/pytest $(PYTEST_WORKERS) tests/integration

chaos: $(STAMP)
	$(BIN)/multiactive check --seeds 20 --duration 5

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/replication.py

bench-redis: $(STAMP) system-deps
	$(BIN)/python benchmarks/apply_redis.py

# Ours beside a NATS JetStream mirror and a RabbitMQ shovel (installs their Debian packages).
bench-compare: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/compare.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
