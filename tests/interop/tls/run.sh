#!/usr/bin/env bash
# TLS interoperability suite (issue #9): real clients against FerryMQ's TLS listeners, with
# certificates made by make-certs.sh (the openssl CLI): pika over AMQPS (PLAIN and EXTERNAL),
# paho-mqtt over MQTTS and wss (client certificate as the user), kcat with
# security.protocol=ssl (with and without a client certificate), curl over HTTPS.
#
#   tests/interop/tls/run.sh        # FerryMQ: $FERRYMQ_BIN (default target/debug/ferrymq)
#
# Builds nothing. Uses the MQTT suite's pinned clients (paho-mqtt, pika, pytest) and venv
# ($REPO/target/interop-venv-mqtt). Needs openssl, kcat and curl. Extra arguments go to pytest.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
VENV="$REPO/target/interop-venv-mqtt"
REQ="$REPO/tests/interop/mqtt/requirements.txt"
export FERRYMQ_BIN="${FERRYMQ_BIN:-$REPO/target/debug/ferrymq}"

if [[ ! -x "$FERRYMQ_BIN" ]]; then
  echo "interop/tls: no server binary at $FERRYMQ_BIN (build it: cargo build -p ferrymq, or set FERRYMQ_BIN)" >&2
  exit 2
fi

echo "== interop/tls: python clients (venv $VENV)"
STAMP="$VENV/.requirements.sha256"
WANT="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" || "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ"
  echo "$WANT" > "$STAMP"
fi

echo "== interop/tls: pytest (pika, paho-mqtt, kcat, curl over TLS)"
cd "$REPO"
if ! "$VENV/bin/python" -m pytest -q --timeout 60 tests/interop/tls/python "$@"; then
  echo "interop/tls: FAILED" >&2
  exit 1
fi
