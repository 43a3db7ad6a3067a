#!/usr/bin/env bash
# Tools of `make bench` / `make soak`, installed once and cached under $INTERLOCK_CACHE:
# - nginx (Debian package): the static OpenAI-format upstream;
# - vegeta (Go module): open-loop HTTP load at a fixed rate;
# - ghz (Go module): open-loop gRPC load at a fixed rate;
# - LiteLLM's proxy (PyPI, pinned) in its own venv, never in .venv: its pins would clash.
#   It runs on the interpreter the bench's services run on ($BENCH_PY, set by the Makefile).
# Installs only what is missing; apt-get needs root (or sudo).
set -euo pipefail
CACHE=${INTERLOCK_CACHE:-$HOME/.cache/interlock}
VEGETA_VERSION=v12.13.0
GHZ_VERSION=v0.93.0
# The newest LiteLLM whose `proxy` extra resolves from PyPI here (later ones pin
# litellm-proxy / litellm-proxy-extras releases that are not published).
LITELLM_VERSION=1.108.6
mkdir -p "$CACHE/bin"
export PIP_CACHE_DIR=${PIP_CACHE_DIR:-$CACHE/pip}

if ! command -v nginx >/dev/null && [[ ! -x /usr/sbin/nginx ]]; then
  echo "bench deps: installing nginx-light from Debian" >&2
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "bench deps: need root to install nginx" >&2; exit 1; }
    SUDO=sudo
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nginx-light
fi

go_install() {  # module@version -> $CACHE/bin, with Go's own caches under $CACHE too
  GOPATH="$CACHE/go" GOMODCACHE="$CACHE/go/pkg/mod" GOCACHE="$CACHE/go/cache" GOBIN="$CACHE/bin" \
    go install "$1"
}
have_module() {  # binary module version: true when the cached binary was built from it
  [[ -x "$CACHE/bin/$1" ]] && go version -m "$CACHE/bin/$1" 2>/dev/null | grep -q "mod[[:space:]]*$2[[:space:]]*$3"
}
if ! have_module vegeta github.com/tsenart/vegeta/v12 "$VEGETA_VERSION"; then
  echo "bench deps: go install vegeta $VEGETA_VERSION" >&2
  go_install "github.com/tsenart/vegeta/v12@$VEGETA_VERSION"
fi
if ! have_module ghz github.com/bojand/ghz "$GHZ_VERSION"; then
  echo "bench deps: go install ghz $GHZ_VERSION" >&2
  go_install "github.com/bojand/ghz/cmd/ghz@$GHZ_VERSION"
fi

BENCH_PY=${BENCH_PY:-python3}
# One venv per interpreter: a venv made from another Python is never reused.
PY_TAG=$("$BENCH_PY" -c 'import sys; print(f"py{sys.version_info[0]}{sys.version_info[1]}")')-$(readlink -f "$(command -v "$BENCH_PY")" | md5sum | cut -c1-8)
LITELLM_VENV="$CACHE/litellm-$LITELLM_VERSION-$PY_TAG"
if [[ ! -x "$LITELLM_VENV/bin/litellm" ]]; then
  echo "bench deps: LiteLLM proxy $LITELLM_VERSION into $LITELLM_VENV ($BENCH_PY)" >&2
  rm -rf "$LITELLM_VENV"
  "$BENCH_PY" -m venv "$LITELLM_VENV"
  "$LITELLM_VENV/bin/pip" install -q --upgrade pip
  "$LITELLM_VENV/bin/pip" install -q "litellm[proxy]==$LITELLM_VERSION"
fi
# The harness finds the pinned venv through this link.
ln -sfn "$LITELLM_VENV" "$CACHE/litellm"
