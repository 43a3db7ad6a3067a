#!/usr/bin/env bash
# mypy --strict over the `interlock` package as Python imports it. The package spans two
# folders (libs/interlock is `interlock`, services/ is `interlock.services`), which mypy
# cannot map itself, so a tree of symlinks in the shape of the package is checked instead.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=.cache/mypy-src
rm -rf "$SRC"
mkdir -p "$SRC/interlock"
for entry in libs/interlock/*; do
  ln -s "$PWD/$entry" "$SRC/interlock/$(basename "$entry")"
done
ln -s "$PWD/services" "$SRC/interlock/services"
MYPYPATH="$SRC" .venv/bin/mypy -p interlock
.venv/bin/mypy tests scripts benchmarks bench
