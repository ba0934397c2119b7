#!/usr/bin/env bash
# Set-up for `make run` / `make test` on a fresh Debian/Ubuntu machine: the virtualenv with
# taskd and its test tools, and the system binaries the tests start (redis-server, siege...).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)   # promtool: alert rule tests
command -v curl >/dev/null 2>&1 || need_apt+=(curl)             # the runbook's commands
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)       # TLS test certificates
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)  # verify conf/systemd units
command -v siege >/dev/null 2>&1 || need_apt+=(siege)           # scripts/load.sh and its test
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${need_apt[*]} with apt-get"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "setup: missing ${need_apt[*]}: install it with 'sudo apt-get install ${need_apt[*]}' and rerun" >&2
    exit 1
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test,web]' 2>&1 \
  | grep -v -e '^WARNING: Location' -e '^$' || true
"$VENV/bin/python" -c 'import daemon, redis, structlog, prometheus_client, supervisor, pytest' \
  || { echo "setup: the virtualenv $VENV is incomplete" >&2; exit 1; }
touch "$VENV/.installed"
