#!/usr/bin/env bash
# Issue #5: the HTTP API with real Python clients — WebSocket (`websockets`), Server-Sent
# Events and REST (`requests`), HTTP/2 with prior knowledge (`httpx`), and HTTP <-> AMQP (`pika`) — against the real server binary,
# started by the suite on free ports in a temporary data directory and stopped with SIGTERM.
#
#   FERRYMQ_BIN   server binary (default: $CARGO_TARGET_DIR or target, /debug/ferrymq)
#
# Installs the pinned clients (requirements.txt) into target/interop-venv-http-clients.
# Extra arguments go to pytest.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
VENV="$REPO/target/interop-venv-http-clients"
export FERRYMQ_BIN="${FERRYMQ_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/debug/ferrymq}"

if [[ ! -x "$FERRYMQ_BIN" ]]; then
  echo "interop/http: no server binary at $FERRYMQ_BIN (cargo build -p ferrymq, or set FERRYMQ_BIN)" >&2
  exit 2
fi

STAMP="$VENV/.requirements.sha256"
WANT="$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" || "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$HERE/requirements.txt"
  echo "$WANT" > "$STAMP"
fi

echo "== interop/http: pytest (websockets, requests, httpx over HTTP/2, pika)"
cd "$REPO"
exec "$VENV/bin/python" -m pytest -q --timeout 60 tests/interop/http/python "$@"
