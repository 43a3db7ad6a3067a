# Interlock developer entry points. `make up` and `make test` are the whole quickstart.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export INTERLOCK_CACHE ?= $(HOME)/.cache/interlock
export PIP_CACHE_DIR ?= $(INTERLOCK_CACHE)/pip

.PHONY: install up test lint typecheck buf-lint buf-breaking bench bench-budget bench-ratelimit bench-ingest bench-fallback clean

$(BIN)/interlock: pyproject.toml setup.py $(shell find protos -name '*.proto')
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q grpcio-tools==1.85.1 mypy-protobuf==5.1.0
	$(BIN)/python scripts/gen_protos.py
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/interlock

install: $(BIN)/interlock

up: install
	$(BIN)/interlock up

test: install
	bash scripts/test.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	bash scripts/typecheck.sh

buf-lint:
	bash scripts/buf.sh lint

buf-breaking:
	bash scripts/buf.sh breaking

bench: install
	$(BIN)/python -m benchmarks.router_overhead

bench-budget: install
	$(BIN)/python -m benchmarks.budget_throughput

bench-ratelimit: install
	$(BIN)/python -m benchmarks.ratelimit_throughput

# The issue's 100M rows need a bigger machine; ROWS scales the bulk load down.
ROWS ?= 2000000
bench-ingest: install
	$(BIN)/python -m benchmarks.usage_ingest --rows $(ROWS)

bench-fallback: install
	$(BIN)/python -m benchmarks.fallback_overhead

clean:
	rm -rf $(VENV) var build *.egg-info
