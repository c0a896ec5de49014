#!/usr/bin/env bash
# HTTP benchmark (docs/benchmarks.md, "## HTTP"): publish throughput over keep-alive
# connections (single and batched) and long-poll consume, with wrk, against a release build.
#
#   FERRYMQ_BIN   server binary (default: ${CARGO_TARGET_DIR:-target}/release/ferrymq)
#   DURATION      seconds per run (default 10)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../../.." && pwd)
bin="${FERRYMQ_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/ferrymq}"
d="${DURATION:-10}"
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null; rm -rf "$work"' EXIT

env -u FERRYMQ_BIN "$bin" serve --data-dir "$work/data" --set amqp.port=0 --set http.port=0 --set mqtt.port=0 --set kafka.port=0 \
  2>"$work/log" &
pid=$!
for _ in $(seq 1 300); do grep -q "FerryMQ ready" "$work/log" && break; sleep 0.1; done
addr=$(sed -n 's/.*http listening on \([0-9.:]*[0-9]\).*/\1/p' "$work/log" | head -n1)
url="http://$addr"
api() { curl -sf -u guest:guest -H 'content-type: application/json' "$@"; }
api -X PUT "$url/api/queues/%2F/bench" -d '{}' >/dev/null
purge() { api -X DELETE "$url/api/queues/%2F/bench/contents" >/dev/null; }
run() { echo "== $*"; env "$@" | grep -E "Requests/sec| 50%| 99%|messages|Socket errors"; }

cd "$here"
run BATCH=1 wrk -t1 -c1 -d"${d}s" --latency -s publish.lua "$url"; purge
run BATCH=1 wrk -t2 -c64 -d"${d}s" --latency -s publish.lua "$url"; purge
run BATCH=100 wrk -t2 -c8 -d"${d}s" --latency -s publish.lua "$url"; purge
run BATCH=1 PERSISTENT=false wrk -t2 -c64 -d"${d}s" --latency -s publish.lua "$url"; purge
# Long-poll consume: fill the queue, then drain it with 4 pollers (100 per pull, auto-ack).
BATCH=1000 wrk -t1 -c4 -d"${d}s" -s publish.lua "$url" | grep messages/s
echo "queue depth: $(api "$url/api/queues/%2F/bench" | sed -n 's/.*"messages":\([0-9]*\).*/\1/p')"
run MAX=100 wrk -t2 -c4 -d"${d}s" --latency -s pull.lua "$url"
# Publish and long-poll consume at once (end to end): publisher batches of 100, 4 pollers.
purge
(BATCH=100 wrk -t1 -c4 -d"${d}s" -s publish.lua "$url" | sed 's/^/publish: /' | grep messages/s) &
publisher=$!
run MAX=100 wrk -t1 -c4 -d"${d}s" -s pull.lua "$url"
wait "$publisher" # not a bare `wait`: that would wait for the server too
t0=$(date +%s.%N); kill -TERM "$pid"; wait "$pid" || true; pid=
echo "server shutdown took $(echo "$(date +%s.%N) - $t0" | bc) s"
