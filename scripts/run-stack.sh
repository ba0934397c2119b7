#!/usr/bin/env bash
# `make run`: the whole taskd stack under supervisord, in the foreground (Ctrl-C stops it all).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p var/run var/log var/redis
if [ -S var/run/supervisor.sock ] && .venv/bin/supervisorctl -c conf/supervisord.conf pid >/dev/null 2>&1; then
  echo "run: a taskd supervisord is already running here; 'make stop' stops it" >&2
  exit 1
fi
cat <<'MSG'
taskd stack starting under supervisord (logs in var/log/, Redis data in var/redis/):
  status:    .venv/bin/supervisorctl -c conf/supervisord.conf status
  enqueue:   .venv/bin/taskd enqueue --redis-url redis://127.0.0.1:16379/0 "some work"
  inspect:   .venv/bin/taskd status --redis-url redis://127.0.0.1:16379/0
  web:       http://127.0.0.1:8000/   (siege load: scripts/load.sh)
  metrics:   http://127.0.0.1:18600/metrics  18601 (consumers)  18650 (subscriber)  18690 (watchdog)
  health:    curl -s 127.0.0.1:18600/healthz
  logs:      tail -f var/log/consumer_00.log
Ctrl-C (or 'make stop' from another shell) stops everything; consumers drain first.
MSG
exec .venv/bin/supervisord -n -c conf/supervisord.conf
