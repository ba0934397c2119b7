#!/usr/bin/env bash
# The seed's load test (`siege -c10 -r 5` on /prodcons and /pubsub) against a running stack,
# with the bookkeeping the seed left out: how many tasks were pushed, how many the consumers
# took, how many are still queued, and whether any went missing.
#
#   scripts/load.sh [--long] [--redis-url URL] [--queue Q] [--consumer-metrics URL]...
#                   [--supervisord-conf FILE] [--settle S] [BASE_URL]
#
# By default it checks the stack it was started against: the supervisord running
# conf/supervisord.conf of this checkout (`make run`; --supervisord-conf for another file) gives
# the web address, the Redis URL and the /metrics port of every RUNNING consumer. Options
# override: BASE_URL, the `taskd web` address; --redis-url (or $TASKD_REDIS_URL), as for
# `taskd status`; --consumer-metrics, repeated, the /metrics URL of each consumer. Without a
# running stack: web http://127.0.0.1:8000 and the consumed count is not measured. --long:
# siege -t 30S instead of -r 5. --settle: seconds to wait for consumers (default 30).
# Exit: 0 nothing lost, 1 lost tasks or disagreeing counts, 2 bad usage, 69 stack or siege
# unavailable (or siege's summary unreadable). Errors are one line on stderr.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE=
QUEUE=task:prodcons:queue
LONG=0
SETTLE=30 # seconds to wait for the consumers to catch up after the load
USERS=10  # siege -c, as in the seed
REDIS_ARGS=()
CONSUMER_METRICS=()
STACK_METRICS=()
STACK_CONF=$ROOT/conf/supervisord.conf

usage() { sed -n '2,17s/^# \{0,1\}//p' "$0"; }
die() { echo "load.sh: $1" >&2; exit "${2:-69}"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --long) LONG=1 ;;
    --redis-url) REDIS_ARGS=(--redis-url "${2:?--redis-url needs a URL}"); shift ;;
    --queue) QUEUE=${2:?--queue needs a name}; shift ;;
    --consumer-metrics) CONSUMER_METRICS+=("${2:?--consumer-metrics needs a URL}"); shift ;;
    --settle) SETTLE=${2:?--settle needs seconds}; shift ;;
    --supervisord-conf) STACK_CONF=${2:?--supervisord-conf needs a file}; shift ;;
    -h | --help) usage; exit 0 ;;
    -*) usage >&2; die "unknown option $1" 2 ;;
    *) BASE=${1%/} ;;
  esac
  shift
done

PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || PY=$(command -v python3) || die "python3 is needed to read JSON"
if [ -x "$ROOT/.venv/bin/taskd" ]; then TASKD=("$ROOT/.venv/bin/taskd"); else TASKD=("$PY" -m daemon); fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# siege's own HOME, so the user's ~/.siege is neither read nor written. siege then meets a
# fresh HOME on every run and prints "New configuration template added to ~/.siege" on stdout
# before its JSON summary: load_helpers.py reads the summary object out of whatever surrounds it.
mkdir -p "$WORK/home"

# The stack this checkout's supervisord runs: "web URL", "redis URL", "consumer URL" lines.
# Its consumers are only counted when the web and Redis given (if any) are that stack's too.
STACK_NOTE=
STACK_WEB=
STACK_REDIS=
if stack=$("$PY" "$ROOT/scripts/load_helpers.py" stack "$STACK_CONF" 2>"$WORK/stack.err"); then
  while read -r kind value; do
    case "$kind" in
      web) STACK_WEB=$value ;;
      redis) STACK_REDIS=$value ;;
      consumer) STACK_METRICS+=("$value") ;;
    esac
  done <<<"$stack"
  given_redis=${REDIS_ARGS[1]:-${TASKD_REDIS_URL:-}}
  if [ -n "$BASE" ] && [ "$BASE" != "$STACK_WEB" ]; then
    STACK_NOTE="$BASE is not the web of $STACK_CONF ($STACK_WEB)"
    STACK_METRICS=()
  elif [ -n "$given_redis" ] && [ "$given_redis" != "$STACK_REDIS" ]; then
    STACK_NOTE="the Redis given is not the one of $STACK_CONF"
    STACK_METRICS=()
  else
    BASE=${BASE:-$STACK_WEB}
    [ -n "$given_redis" ] || [ -z "$STACK_REDIS" ] || REDIS_ARGS=(--redis-url "$STACK_REDIS")
  fi
else
  STACK_NOTE=$(head -n 1 "$WORK/stack.err")
fi
if [ ${#CONSUMER_METRICS[@]} -eq 0 ] && [ ${#STACK_METRICS[@]} -gt 0 ]; then
  CONSUMER_METRICS=("${STACK_METRICS[@]}")
  echo "load.sh: checking the consumers of $STACK_CONF: ${CONSUMER_METRICS[*]}" >&2
fi
BASE=${BASE:-http://127.0.0.1:8000}

if ! command -v siege >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "load.sh: siege is missing; installing it with apt-get" >&2
    timeout 300 apt-get update -qq
    DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq siege >/dev/null
  else
    die "siege is missing: install it (Debian/Ubuntu: sudo apt-get install siege; macOS: brew install siege)"
  fi
fi

# Our own siegerc: no log file under /var/log, no HTML parsing, summary as JSON on stdout.
cat >"$WORK/siegerc" <<'RC'
verbose = false
json_output = true
logging = false
parser = false
connection = close
protocol = HTTP/1.1
RC

# A stack started a moment ago (make run in another shell) may still be importing: give each
# address up to 15 s to answer before calling it unavailable.
wait_http() {
  local url=$1 deadline=$((SECONDS + 15))
  until curl -fsS --max-time 5 -o /dev/null "$url" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.5
  done
}
wait_http "$BASE/healthz" || die "no taskd web answers at $BASE/healthz${STACK_NOTE:+ ($STACK_NOTE)}"
for url in "${CONSUMER_METRICS[@]}"; do
  wait_http "$url" || die "no consumer metrics answer at $url"
done

# "pending processing delayed dead" of $QUEUE, from `taskd status --json`.
queue_state() {
  timeout 20 "${TASKD[@]}" status --json --queue "$QUEUE" "${REDIS_ARGS[@]}" |
    "$PY" -c 'import json,sys; q=json.load(sys.stdin)[0]
print(q["pending"], q["processing"], q["delayed"], q["dead"])' ||
    die "taskd status could not read queue $QUEUE (is --redis-url right?)"
}

# Sum of one sample over Prometheus pages: metric_sum NAME{labels} URL...
metric_sum() {
  local sample=$1 url total=0 value
  shift
  for url in "$@"; do
    value=$(curl -fsS --max-time 5 "$url" | awk -v s="$sample" '$1 == s {v += $2} END {printf "%d", v}') ||
      die "cannot read metrics at $url"
    total=$((total + value))
  done
  echo "$total"
}
web_pushes() { metric_sum 'taskd_web_requests_total{route="/prodcons",status="302"}' "$BASE/metrics"; }
consumer_acks() { metric_sum "taskd_tasks_acked_total{queue=\"$QUEUE\"}" "${CONSUMER_METRICS[@]}"; }

# siege one URL; prints "successful failed".
run_siege() {
  local url=$1 out="$WORK/siege.json" budget args
  if [ "$LONG" = 1 ]; then args=(-c"$USERS" -t 30S); else args=(-c"$USERS" -r 5); fi
  budget=120
  echo "siege ${args[*]} $url" >&2
  if ! HOME="$WORK/home" timeout "$budget" siege -R "$WORK/siegerc" --no-follow --no-parser -j "${args[@]}" "$url" \
    >"$out" 2>"$WORK/siege.err"; then
    cat "$WORK/siege.err" >&2
    die "siege failed or ran past ${budget} s on $url"
  fi
  "$PY" "$ROOT/scripts/load_helpers.py" summary "$out" 2>"$WORK/summary.err" ||
    die "could not read siege's summary on $url: $(head -n 1 "$WORK/summary.err")"
}

state=$(queue_state)
read -r pending0 processing0 delayed0 dead0 <<<"$state"
queued0=$((pending0 + processing0 + delayed0))
web0=$(web_pushes)
acks0=0
if [ ${#CONSUMER_METRICS[@]} -gt 0 ]; then acks0=$(consumer_acks); fi

result=$(run_siege "$BASE/prodcons")
read -r siege_ok prodcons_failed <<<"$result"
result=$(run_siege "$BASE/pubsub")
read -r published pubsub_failed <<<"$result"

# Let the consumers catch up: until the queue is back to where it was, it stops shrinking for
# 5 s (no consumer?), or --settle seconds pass.
deadline=$((SECONDS + SETTLE))
last=-1
still=0
while :; do
  state=$(queue_state)
  read -r pending processing delayed dead <<<"$state"
  queued=$((pending + processing + delayed))
  if [ "$queued" -le "$queued0" ] || [ "$SECONDS" -ge "$deadline" ]; then break; fi
  if [ "$queued" = "$last" ]; then still=$((still + 1)); else still=0; fi
  [ "$still" -ge 10 ] && break
  last=$queued
  sleep 0.5
done
dead_new=$((dead - dead0))

# Pushed = LPUSHes that succeeded, as counted by taskd web (302 answers on /prodcons). siege
# should agree; in timed mode it abandons its last in-flight requests (up to one per user),
# which the server may still have completed.
pushed=$(($(web_pushes) - web0))
echo
echo "/prodcons: siege $siege_ok ok, $prodcons_failed failed; taskd web pushed $pushed"
echo "/pubsub:   siege $published ok, $pubsub_failed failed (pub/sub keeps nothing: only live subscribers got them)"
if [ "$LONG" = 1 ]; then slack=$USERS; else slack=0; fi
status=0
if [ "$pushed" -lt "$siege_ok" ] || [ "$pushed" -gt $((siege_ok + slack)) ]; then
  echo "MISMATCH: siege saw $siege_ok successful pushes, taskd web counted $pushed"
  status=1
fi
if [ ${#CONSUMER_METRICS[@]} -eq 0 ]; then
  taken=$((queued0 + pushed - queued))
  echo "queue $QUEUE: queued before $queued0, after $queued; pushed $pushed, taken off $taken (dead-lettered $dead_new)"
  echo "consumed: not measured (${STACK_NOTE:-no RUNNING consumer in $STACK_CONF}; pass --consumer-metrics URL of each consumer to check for loss)"
  exit "$status"
fi
count_consumed() {
  acked=$(($(consumer_acks) - acks0))
  consumed=$((acked + dead_new))
  lost=$((queued0 + pushed - consumed - queued))
}
count_consumed
# A consumer bumps its counter just after the ack: give a last ack one more second to show.
if [ "$lost" != 0 ]; then sleep 1; count_consumed; fi
echo "queue $QUEUE: queued before $queued0, after $queued; pushed $pushed, consumed $consumed (acked $acked, dead-lettered $dead_new)"
if [ "$lost" = 0 ]; then
  echo "result: no task lost (queued before + pushed == consumed + queued after)"
else
  echo "result: MISMATCH: queued before + pushed - consumed - queued after = $lost"
  status=1
fi
exit "$status"
