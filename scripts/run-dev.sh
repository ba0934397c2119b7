#!/usr/bin/env bash
# `make run`: a local redis-server on a non-standard port (data under var/), a few demo
# tasks, and one consumer with the `log` handler in the foreground. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${DEV_REDIS_PORT:-16379}
mkdir -p var/redis var/run var/log
export TASKD_REDIS_URL="redis://127.0.0.1:${PORT}/0"

redis-server --port "$PORT" --bind 127.0.0.1 --dir "$PWD/var/redis" --appendonly yes \
  --save "" --daemonize yes --pidfile "$PWD/var/run/redis.pid" --logfile "$PWD/var/log/redis.log"
stop_redis() { [ -f var/run/redis.pid ] && kill "$(cat var/run/redis.pid)" 2>/dev/null || true; }
trap stop_redis EXIT
for _ in $(seq 50); do .venv/bin/python -c "import redis,sys; redis.Redis(port=$PORT).ping()" 2>/dev/null && break; sleep 0.1; done

.venv/bin/taskd enqueue --queue task:prodcons:queue "hello" "from" "taskd"
cat <<MSG
redis-server on 127.0.0.1:${PORT} (data in var/redis). In another shell:
  .venv/bin/taskd enqueue --redis-url ${TASKD_REDIS_URL} "some work"
  seq 1 100 | .venv/bin/taskd enqueue --redis-url ${TASKD_REDIS_URL} -
  .venv/bin/taskd status --redis-url ${TASKD_REDIS_URL}
Ctrl-C stops the consumer (it drains first) and this redis-server.
MSG
.venv/bin/taskd consume --queue task:prodcons:queue --handler daemon.handlers:log \
  --worker-id "dev:consumer" --heartbeat-file var/run/consumer.heartbeat.json
