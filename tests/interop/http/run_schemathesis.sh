#!/usr/bin/env bash
# Issue #5: property-based tests of the HTTP API against its own OpenAPI document, with
# schemathesis (pinned) in a local virtualenv. Starts the real server binary on ephemeral
# ports in a temporary data directory, runs schemathesis with Basic auth guest/guest and the
# checks "no 5xx for any input", "responses match their schema", "statuses are documented",
# then stops the server with SIGTERM (and checks it exits 0).
#
#   FERRYMQ_BIN      server binary (default: $CARGO_TARGET_DIR or target, /debug/ferrymq)
#   SCHEMATHESIS_MAX_EXAMPLES   examples per operation and phase (default 15)
#   SCHEMATHESIS_SEED           seed for a reproducible run (default: random, printed)
#   SCHEMATHESIS_PHASES         phases to run (default examples,coverage,fuzzing,stateful)
set -euo pipefail
cd "$(dirname "$0")/../../.."
root=$(pwd)

SCHEMATHESIS_VERSION=4.32.5
venv="$root/target/interop-venv-http"
bin="${FERRYMQ_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/ferrymq}"
max_examples="${SCHEMATHESIS_MAX_EXAMPLES:-15}"
seed="${SCHEMATHESIS_SEED:-$RANDOM$RANDOM}"

if [ ! -x "$bin" ]; then
  echo "no server binary at $bin (cargo build -p ferrymq, or set FERRYMQ_BIN)" >&2
  exit 2
fi

if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

work=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# FERRYMQ_BIN is ours, not a configuration key: the server refuses unknown FERRYMQ_* variables.
env -u FERRYMQ_BIN "$bin" serve --data-dir "$work/data" --set amqp.port=0 --set http.port=0 --set mqtt.port=0 --set kafka.port=0 \
  --log-format text 2>"$work/server.log" &
server_pid=$!

# Wait (bounded) for the listener address and readiness.
addr=
for _ in $(seq 1 600); do
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "ferrymq exited during start:" >&2
    cat "$work/server.log" >&2
    exit 1
  fi
  [ -z "$addr" ] && addr=$(sed -n 's/.*http listening on \([0-9.:]*[0-9]\).*/\1/p' "$work/server.log" | head -n1)
  if [ -n "$addr" ] && grep -q "FerryMQ ready" "$work/server.log"; then
    break
  fi
  sleep 0.1
done
if [ -z "$addr" ] || ! grep -q "FerryMQ ready" "$work/server.log"; then
  echo "ferrymq did not become ready within 60 s:" >&2
  cat "$work/server.log" >&2
  exit 1
fi
echo "ferrymq ready, HTTP on $addr; schemathesis $SCHEMATHESIS_VERSION, seed $seed, $max_examples examples per operation"

status=0
(
  cd "$work"
  "$venv/bin/schemathesis" run "http://$addr/api/openapi.json" \
    --auth guest:guest \
    --checks not_a_server_error,response_schema_conformance,status_code_conformance \
    --phases "${SCHEMATHESIS_PHASES:-examples,coverage,fuzzing,stateful}" \
    --max-examples "$max_examples" \
    --seed "$seed" \
    --request-timeout 30 \
    --workers 2 \
    --no-color \
    --warnings off \
    --suppress-health-check all
) || status=$?

# Stop the server the way an operator would, and insist on a clean exit.
kill -TERM "$server_pid"
server_status=0
wait "$server_pid" || server_status=$?
server_pid=
if [ "$server_status" -ne 0 ]; then
  echo "ferrymq exited with status $server_status after SIGTERM:" >&2
  tail -n 50 "$work/server.log" >&2
  status=1
fi
if grep -q "panicked" "$work/server.log"; then
  echo "the server panicked:" >&2
  grep -A5 "panicked" "$work/server.log" >&2
  status=1
fi
exit "$status"
