#!/usr/bin/env bash
# Kafka wire-protocol interoperability suite (issue #7): real clients against the broker.
#
#   tests/interop/kafka/run.sh [pytest args...]   # FerryMQ: $FERRYMQ_BIN (default target/debug/ferrymq),
#                                                 # started per session on a temp data dir with every
#                                                 # listener on port 0 and kafka.group_initial_rebalance_delay_ms=0
#
# Builds nothing. Installs pinned confluent-kafka/kafka-python/aiokafka/pika/requests/pytest into
# $REPO/target/interop-venv-kafka and kafkajs into tests/interop/kafka/node/node_modules.
# Needs kcat (Debian: kcat) for test_kcat.py; without it those tests skip.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
VENV="$REPO/target/interop-venv-kafka"
export FERRYMQ_BIN="${FERRYMQ_BIN:-$REPO/target/debug/ferrymq}"

if [[ ! -x "$FERRYMQ_BIN" ]]; then
  echo "interop/kafka: no server binary at $FERRYMQ_BIN (build it: cargo build -p ferrymq, or set FERRYMQ_BIN)" >&2
  exit 2
fi

echo "== interop/kafka: python clients (venv $VENV)"
STAMP="$VENV/.requirements.sha256"
WANT="$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" || "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$HERE/requirements.txt"
  echo "$WANT" > "$STAMP"
fi

echo "== interop/kafka: node client (kafkajs)"
( cd "$HERE/node" && npm ci --no-audit --no-fund --loglevel=error )

if ! command -v kcat >/dev/null 2>&1; then
  echo "interop/kafka: kcat not found (apt-get install kcat): test_kcat.py will skip" >&2
fi

status=0
echo "== interop/kafka: pytest (kcat, confluent-kafka, kafka-python, aiokafka, raw sockets, durability, cross-protocol, SASL)"
( cd "$REPO" && "$VENV/bin/python" -m pytest -q --timeout 90 tests/interop/kafka/python "$@" ) || status=1

echo "== interop/kafka: node --test (kafkajs)"
( cd "$REPO" && KAFKAJS_NO_PARTITIONER_WARNING=1 "$VENV/bin/python" tests/interop/kafka/python/with_ferrymq.py \
    node --test tests/interop/kafka/node ) || status=1

if [[ $status -ne 0 ]]; then
  echo "interop/kafka: FAILED" >&2
fi
exit $status
