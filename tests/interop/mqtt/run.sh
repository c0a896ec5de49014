#!/usr/bin/env bash
# MQTT 3.1/3.1.1/5.0 interoperability suite (issue #6): real clients against the broker.
#
#   tests/interop/mqtt/run.sh                 # FerryMQ: $FERRYMQ_BIN (default target/debug/ferrymq),
#                                             # started per session on a temp data dir with
#                                             # --set amqp.port=0 --set http.port=0 --set mqtt.port=0
#   MQTT_HOST=127.0.0.1 MQTT_PORT=1883 MQTT_WS_URL=ws://127.0.0.1:9001/mqtt tests/interop/mqtt/run.sh
#                                             # an already running broker; FerryMQ-only tests skip
#   tests/interop/mqtt/mosquitto.sh           # starts Debian's mosquitto and runs this against it
#
# Builds nothing. Installs pinned paho-mqtt/pika/pytest into $REPO/target/interop-venv-mqtt and
# MQTT.js into tests/interop/mqtt/node/node_modules. Extra arguments go to pytest.
# Needs mosquitto_pub/mosquitto_sub (Debian: mosquitto-clients) for test_mosquitto_clients.py.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
VENV="$REPO/target/interop-venv-mqtt"
export FERRYMQ_BIN="${FERRYMQ_BIN:-$REPO/target/debug/ferrymq}"

if [[ -z "${MQTT_HOST:-}" && ! -x "$FERRYMQ_BIN" ]]; then
  echo "interop/mqtt: no server binary at $FERRYMQ_BIN (build it: cargo build -p ferrymq, or set FERRYMQ_BIN / MQTT_HOST)" >&2
  exit 2
fi

echo "== interop/mqtt: python clients (venv $VENV)"
STAMP="$VENV/.requirements.sha256"
WANT="$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" || "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$HERE/requirements.txt"
  echo "$WANT" > "$STAMP"
fi

echo "== interop/mqtt: node client (MQTT.js)"
( cd "$HERE/node" && npm ci --no-audit --no-fund --loglevel=error )

status=0
echo "== interop/mqtt: pytest (paho-mqtt v3.1/v3.1.1/v5, raw sockets, mosquitto clients, durability, cross-protocol)"
( cd "$REPO" && "$VENV/bin/python" -m pytest -q --timeout 60 tests/interop/mqtt/python "$@" ) || status=1

echo "== interop/mqtt: node --test (MQTT.js over TCP and WebSocket)"
if [[ -n "${MQTT_HOST:-}" ]]; then
  ( cd "$REPO" && node --test tests/interop/mqtt/node ) || status=1
else
  ( cd "$REPO" && "$VENV/bin/python" tests/interop/mqtt/python/with_ferrymq.py node --test tests/interop/mqtt/node ) || status=1
fi

if [[ $status -ne 0 ]]; then
  echo "interop/mqtt: FAILED" >&2
fi
exit $status
