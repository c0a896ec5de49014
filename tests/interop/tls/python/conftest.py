"""Fixtures: a test PKI (make-certs.sh) and one FerryMQ with every TLS listener on a free port
(client certificates optional, the common name as the user)."""

import os
import pathlib
import re
import signal
import subprocess
import threading
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[4]
LISTENING = re.compile(r"(AMQPS|MQTTS|Kafka SSL|https) listening on (\S+?):(\d+)\b")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    subprocess.run(["bash", str(REPO / "tests/interop/tls/make-certs.sh"), str(d)], check=True, timeout=60)
    return d


class TlsServer:
    def __init__(self, proc, ports, lines):
        self.proc, self.ports, self.lines = proc, ports, lines

    def port(self, label):
        return self.ports[label]

    def log(self):
        return "".join(self.lines)[-4000:]


@pytest.fixture(scope="session")
def server(pki, tmp_path_factory):
    binary = os.environ.get("FERRYMQ_BIN", str(REPO / "target" / "debug" / "ferrymq"))
    if not os.access(binary, os.X_OK):
        pytest.exit("no ferrymq binary at %s (set FERRYMQ_BIN or build it)" % binary, returncode=2)
    data = tmp_path_factory.mktemp("data")
    sets = []
    for section in ("amqp", "mqtt", "kafka", "http"):
        sets += ["%s.port=0" % section, "%s.tls_port=0" % section, "%s.tls_enabled=true" % section]
    sets += [
        "tls.cert_file=%s" % (pki / "server.pem"),
        "tls.key_file=%s" % (pki / "server.key"),
        "tls.ca_file=%s" % (pki / "ca.pem"),
        "tls.client_auth=optional",
    ]
    args = [binary, "serve", "--data-dir", str(data)]
    for s in sets:
        args += ["--set", s]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMQ_")}
    env["NO_COLOR"] = "1"
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)
    lines, cond = [], threading.Condition()

    def drain():
        for raw in iter(proc.stderr.readline, b""):
            with cond:
                lines.append(ANSI.sub("", raw.decode("utf-8", "replace")))
                cond.notify_all()
        with cond:
            cond.notify_all()

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + 60
    with cond:
        while not any("FerryMQ ready" in line for line in lines):
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                proc.kill()
                pytest.exit("ferrymq did not become ready:\n%s" % "".join(lines)[-4000:], returncode=3)
            cond.wait(min(left, 0.2))
        ports = {m.group(1): int(m.group(3)) for m in map(LISTENING.search, lines) if m}
    yield TlsServer(proc, ports, lines)
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert rc == 0, "ferrymq exited with %r after SIGTERM" % rc
