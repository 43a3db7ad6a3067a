#!/usr/bin/env bash
# buf from the npm package @bufbuild/buf, installed once into the cache.
#   scripts/buf.sh lint       - STANDARD + COMMENTS lint of protos/
#   scripts/buf.sh breaking   - FILE-level breaking check against main
#                               (on main itself: against the previous commit)
#   scripts/buf.sh format     - show formatting differences
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${INTERLOCK_CACHE:-$HOME/.cache/interlock}"
BUF_VERSION=1.75.0
BUF="$CACHE/npm/node_modules/.bin/buf"
if [[ ! -x "$BUF" ]] || [[ "$("$BUF" --version)" != "$BUF_VERSION" ]]; then
  echo "buf: installing @bufbuild/buf@$BUF_VERSION with npm into $CACHE/npm" >&2
  mkdir -p "$CACHE/npm"
  npm install --prefix "$CACHE/npm" --no-audit --no-fund --silent "@bufbuild/buf@$BUF_VERSION"
fi
case "${1:-lint}" in
  lint)
    "$BUF" lint
    "$BUF" format --exit-code --diff >/dev/null || { "$BUF" format --diff; echo "buf: run 'scripts/buf.sh format -w'" >&2; exit 1; }
    echo "buf: lint and format clean"
    ;;
  format)
    shift; "$BUF" format "$@"
    ;;
  breaking)
    branch="$(git rev-parse --abbrev-ref HEAD 2>/dev/null || echo HEAD)"
    if [[ "$branch" != "main" ]] && git rev-parse --verify -q main >/dev/null; then
      against="main"
    elif git rev-parse --verify -q HEAD~1 >/dev/null; then
      against="$(git rev-parse HEAD~1)"
    else
      echo "buf: breaking: no earlier commit to compare with (first commit)"; exit 0
    fi
    if ! git ls-tree -d --name-only "$against" protos | grep -q protos; then
      echo "buf: breaking: $against has no protos/; nothing to compare"; exit 0
    fi
    "$BUF" breaking --against ".git#ref=$against"
    echo "buf: no breaking changes against $against"
    ;;
  *) echo "usage: scripts/buf.sh lint|breaking|format" >&2; exit 2 ;;
esac
