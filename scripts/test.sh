#!/usr/bin/env bash
# `make test`: static checks, then every test against real Kafka, ClickHouse, Redis and
# Jaeger, which tests/conftest.py starts (or takes from INTERLOCK_TEST_* addresses).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
step() { echo; echo "==> $*"; }

step "system packages"
bash scripts/system_deps.sh

step "ruff"
$BIN/ruff check .
$BIN/ruff format --check .
step "mypy --strict"
bash scripts/typecheck.sh
step "buf lint + breaking"
bash scripts/buf.sh lint
bash scripts/buf.sh breaking
# Jaeger is built from its Go module on first run (minutes on 2 cores), cached after.
step "warm Kafka jars (Maven) and the Jaeger binary (go build)"
$BIN/python -m interlock.devservers fetch
step "pytest"
set +e
$BIN/python -m pytest "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit $rc
