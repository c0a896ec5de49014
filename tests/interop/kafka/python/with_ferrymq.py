"""Runs a command against a FerryMQ server started for it: `python with_ferrymq.py CMD ARGS...`.

Starts `$FERRYMQ_BIN serve` on a temporary data directory with every listener on port 0 (and
kafka.group_initial_rebalance_delay_ms=0), runs CMD with KAFKA_BOOTSTRAP pointing at it, then stops
the server with SIGTERM. Exits with CMD's status, or 1 if the server did not exit 0 after SIGTERM."""

import os
import pathlib
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from kafka_support import FerryServer  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[4]


def main(argv):
    if not argv:
        sys.exit("usage: with_ferrymq.py CMD [ARGS...]")
    binary = os.environ.get("FERRYMQ_BIN", str(REPO / "target" / "debug" / "ferrymq"))
    with tempfile.TemporaryDirectory(prefix="ferrymq-interop-kafka-") as tmp:
        server = FerryServer(binary, pathlib.Path(tmp) / "data", pathlib.Path(tmp) / "server.log")
        try:
            target = server.start()
        except RuntimeError as e:
            print(str(e), file=sys.stderr)
            return 3
        try:
            rc = subprocess.call(argv, env=target.env())
        finally:
            status = server.stop()
        if status != 0:
            print("ferrymq exited %r after SIGTERM; log tail:\n%s" % (status, server.log_tail()), file=sys.stderr)
            return rc or 1
        return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
