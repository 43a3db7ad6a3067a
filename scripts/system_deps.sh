#!/usr/bin/env bash
# System packages the tests need (Debian): Redis, PostgreSQL, a JDK and Maven for Kafka,
# npm for buf. Installs only what is missing; needs root (or sudo) for apt-get.
set -euo pipefail
need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || need_apt+=(postgresql)
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need_apt+=(maven)
command -v npm >/dev/null || need_apt+=(npm)
if ((${#need_apt[@]} == 0)); then
  exit 0
fi
echo "system deps: installing ${need_apt[*]} from Debian" >&2
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "system deps: need root to install ${need_apt[*]}" >&2; exit 1; }
  SUDO=sudo
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
