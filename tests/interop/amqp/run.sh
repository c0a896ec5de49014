#!/usr/bin/env bash
# AMQP 0-9-1 interoperability suite (issue #4): real clients against the broker.
#
#   tests/interop/amqp/run.sh                      # FerryMQ: $FERRYMQ_BIN (default target/debug/ferrymq),
#                                                  # started per session on a temp data dir
#   AMQP_URL=amqp://guest:guest@127.0.0.1:5682/ tests/interop/amqp/run.sh
#                                                  # an already running broker (e.g. RabbitMQ);
#                                                  # the kill -9 durability tests are skipped
#
# Builds nothing. Installs pinned pika/aio-pika/pytest into $REPO/target/interop-venv and
# amqplib into tests/interop/amqp/node/node_modules. Extra arguments go to pytest.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
VENV="$REPO/target/interop-venv"
export FERRYMQ_BIN="${FERRYMQ_BIN:-$REPO/target/debug/ferrymq}"

if [[ -z "${AMQP_URL:-}" && ! -x "$FERRYMQ_BIN" ]]; then
  echo "interop/amqp: no server binary at $FERRYMQ_BIN (build it: cargo build -p ferrymq, or set FERRYMQ_BIN / AMQP_URL)" >&2
  exit 2
fi

echo "== interop/amqp: python clients (venv $VENV)"
STAMP="$VENV/.requirements.sha256"
WANT="$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" || "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$HERE/requirements.txt"
  echo "$WANT" > "$STAMP"
fi

echo "== interop/amqp: node client (amqplib)"
( cd "$HERE/node" && npm ci --no-audit --no-fund --loglevel=error )

status=0
echo "== interop/amqp: pytest (pika, aio-pika, tutorials, durability)"
( cd "$REPO" && "$VENV/bin/python" -m pytest -q --timeout 60 tests/interop/amqp/python "$@" ) || status=1

echo "== interop/amqp: node --test (amqplib)"
if [[ -n "${AMQP_URL:-}" ]]; then
  ( cd "$REPO" && node --test tests/interop/amqp/node ) || status=1
else
  ( cd "$REPO" && "$VENV/bin/python" tests/interop/amqp/python/with_ferrymq.py node --test tests/interop/amqp/node ) || status=1
fi

if [[ $status -ne 0 ]]; then
  echo "interop/amqp: FAILED" >&2
fi
exit $status
