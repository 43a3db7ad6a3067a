# Interlock developer entry points. `make up` and `make test` are the whole quickstart.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export INTERLOCK_CACHE ?= $(HOME)/.cache/interlock
export PIP_CACHE_DIR ?= $(INTERLOCK_CACHE)/pip

.PHONY: install bench-install up test lint typecheck buf-lint buf-breaking bench bench-probe bench-floor bench-overhead soak bench-budget bench-ratelimit bench-ingest bench-fallback bench-grpc-hop bench-grpc-parse clean

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

# The benchmarks run the services (and LiteLLM's proxy) on an optimised CPython, as the
# deployed image's python:3.11-slim is (built with PGO and LTO): Debian's python3.11 where
# there is one (linked statically, built with LTO and PGO), else $(PY). BENCH_PY=... overrides.
BENCH_PY ?= $(shell test -x /usr/bin/python3.11 && echo /usr/bin/python3.11 || echo $(PY))
BENCH_VENV := .venv-bench
BENCH_BIN := $(BENCH_VENV)/bin
export BENCH_PY

$(BENCH_BIN)/interlock: $(BIN)/interlock
	test -x $(BENCH_BIN)/python || $(BENCH_PY) -m venv $(BENCH_VENV)
	$(BENCH_BIN)/pip install -q --upgrade pip
	# The install's build hook regenerates the shared stubs: with the same plugins as .venv's.
	$(BENCH_BIN)/pip install -q grpcio-tools==1.85.1 mypy-protobuf==5.1.0
	$(BENCH_BIN)/pip install -q -e '.[dev]'
	touch $(BENCH_BIN)/interlock

bench-install: $(BENCH_BIN)/interlock

# Interlock vs direct calls vs LiteLLM's proxy at fixed rates; writes docs/BENCHMARKS.md's
# section and plot. `make bench BENCH_ARGS=--quick` is a smoke run that leaves docs/ alone.
bench: bench-install
	bash bench/deps.sh
	$(BENCH_BIN)/python -m bench.compare $(BENCH_ARGS)

# The first benchmark: mesh vs the built-in fake provider, in-process load at one rate.
# A/B of mesh settings at one rate: latency and CPU per call by process, e.g.
# make bench-probe PROBE_ARGS="--rate 100 --variant X=false --variant X=true"
bench-probe: bench-install
	bash bench/deps.sh
	$(BENCH_BIN)/python -m bench.probe $(PROBE_ARGS)

# The least a Python proxy adds here (httptools + the router's HTTP client, no checks), e.g.
# make bench-floor FLOOR_ARGS="--rates 10,100,1000"
bench-floor: bench-install
	bash bench/deps.sh
	$(BENCH_BIN)/python -m bench.floor $(FLOOR_ARGS)

bench-overhead: install
	$(BIN)/python -m benchmarks.router_overhead

# Steady load on the mesh, router RSS over time (the issue asks for 30 minutes).
MINUTES ?= 30
soak: bench-install
	bash bench/deps.sh
	$(BENCH_BIN)/python -m bench.soak --minutes $(MINUTES) $(SOAK_ARGS)

bench-budget: install
	$(BIN)/python -m benchmarks.budget_throughput

bench-ratelimit: install
	$(BIN)/python -m benchmarks.ratelimit_throughput

# The issue's volume: 100M rows (about 20 min of bulk load on 2 cores); ROWS=2000000 for a quick run.
ROWS ?= 100000000
STREAM ?= 1000000
bench-ingest: install
	$(BIN)/python -m benchmarks.usage_ingest --rows $(ROWS) --stream-events $(STREAM)

bench-fallback: install
	$(BIN)/python -m benchmarks.fallback_overhead

bench-grpc-hop: install
	$(BIN)/python -m benchmarks.grpc_hop

# The event-loop gRPC transport reading one request, and HPACK decoding (hpack's and ours).
bench-grpc-parse: install
	$(BIN)/python -m benchmarks.grpc_parse

clean:
	rm -rf $(VENV) $(BENCH_VENV) var build *.egg-info
