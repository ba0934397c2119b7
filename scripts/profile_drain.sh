#!/usr/bin/env bash
# Profile (pyinstrument) of taskd consume draining 20,000 no-op tasks, at its defaults and with
# --prefetch 100: /tmp/prof-defaults.txt, /tmp/prof-prefetch.txt (docs/benchmarks.md, "Profiles").
# Needs the bench extra (pyinstrument): make bench, or pip install -e ".[bench]".
set -e
cd "$(dirname "$0")/.."
PORT=$(.venv/bin/python -c "from tools.harness.ports import free_port; print(free_port())")
D=$(mktemp -d)
redis-server --port $PORT --bind 127.0.0.1 --dir $D --save "" --appendonly no --daemonize yes --logfile $D/r.log
sleep 0.5
URL=redis://127.0.0.1:$PORT/0
for mode in defaults prefetch; do
  redis-cli -p $PORT flushall >/dev/null
  (cd scripts && ../.venv/bin/python -c "import bench; p=bench.Producer('$URL'); p.enqueue('taskd', 20000)")
  extra=""; [ $mode = prefetch ] && extra="--prefetch 100"
  BENCH_TARGET=20000 BENCH_REDIS_URL=$URL PYTHONPATH=scripts:. timeout 120 .venv/bin/python -m pyinstrument -i 0.001 -o /tmp/prof-$mode.txt -m daemon consume --redis-url $URL --queue $(cd scripts && ../.venv/bin/python -c "import bench; print(bench.PEER_QUEUE)") --handler bench_peers.taskd_handlers:task --log-format json --worker-id prof $extra > /tmp/prof-$mode.log 2>&1 &
  PID=$!
  for i in $(seq 1 100); do n=$(redis-cli -p $PORT llen $(cd scripts && ../.venv/bin/python -c "import bench; print(bench.PEER_QUEUE)")); [ "$n" = "0" ] && break; sleep 0.5; done
  sleep 1; kill -TERM $PID; wait $PID || true
done
redis-cli -p $PORT shutdown nosave || true
