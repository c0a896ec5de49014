#!/usr/bin/env bash
# Runs the MQTT interoperability suite against Debian's Mosquitto, the reference broker:
# starts `mosquitto` on free loopback ports (MQTT and MQTT over WebSocket) with a temp config
# from mosquitto.conf.in (user guest/guest, persistence in a temp dir), then runs run.sh in
# external mode against it. The restart tests start Mosquittos of their own
# (MQTT_OWN_BROKER=mosquitto); FerryMQ-only tests (cross-protocol) skip.
#
#   apt-get update && apt-get install -y mosquitto mosquitto-clients
#   tests/interop/mqtt/mosquitto.sh [pytest args...]
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MOSQUITTO="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
if [[ ! -x "$MOSQUITTO" ]] || ! command -v mosquitto_passwd >/dev/null || ! command -v mosquitto_sub >/dev/null; then
  echo "interop/mqtt: needs Debian's mosquitto and mosquitto-clients:" >&2
  echo "  apt-get update && apt-get install -y mosquitto mosquitto-clients" >&2
  exit 2
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/mqtt-interop-mosquitto.XXXXXX")"
PID=""
cleanup() {
  if [[ -n "$PID" ]] && kill -0 "$PID" 2>/dev/null; then
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT="$(free_port)"
WS_PORT="$(free_port)"
while [[ "$WS_PORT" == "$PORT" ]]; do WS_PORT="$(free_port)"; done

mkdir -p "$TMP/data"
: > "$TMP/passwd"
mosquitto_passwd -b "$TMP/passwd" guest guest
chmod 600 "$TMP/passwd"
sed -e "s|@DATA_DIR@|$TMP/data|g" -e "s|@PORT@|$PORT|g" -e "s|@WS_PORT@|$WS_PORT|g" \
    -e "s|@PASSWORD_FILE@|$TMP/passwd|g" -e "s|@USER@|$(id -un)|g" "$HERE/mosquitto.conf.in" > "$TMP/mosquitto.conf"

"$MOSQUITTO" -c "$TMP/mosquitto.conf" > "$TMP/mosquitto.log" 2>&1 &
PID=$!
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
  if ! kill -0 "$PID" 2>/dev/null; then
    echo "interop/mqtt: mosquitto did not start:" >&2; cat "$TMP/mosquitto.log" >&2; exit 3
  fi
  sleep 0.1
done
echo "== interop/mqtt: $("$MOSQUITTO" -h | head -1) on 127.0.0.1:$PORT, websockets on :$WS_PORT (pid $PID)"

export MQTT_HOST=127.0.0.1 MQTT_PORT="$PORT" MQTT_WS_URL="ws://127.0.0.1:$WS_PORT/mqtt"
export MQTT_BROKER_NAME=mosquitto MQTT_OWN_BROKER=mosquitto
status=0
"$HERE/run.sh" "$@" || status=$?
if [[ $status -ne 0 && -n "${MQTT_SHOW_LOG:-}" ]]; then
  echo "== mosquitto log (tail)"; tail -n 100 "$TMP/mosquitto.log"
fi
exit $status
