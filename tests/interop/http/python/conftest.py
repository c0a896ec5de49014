"""Fixtures: a FerryMQ server (the `ferrymq` binary from FERRYMQ_BIN) with AMQP and HTTP on
free ports in a temporary data directory, stopped with SIGTERM (and a clean exit checked)."""

import os
import pathlib
import re
import signal
import subprocess
import threading
import time
import uuid

import pytest
import requests

REPO = pathlib.Path(__file__).resolve().parents[4]
READY_TIMEOUT_S = 60.0
HTTP_LISTENING = re.compile(r"http listening on (\S+?:\d+)")
AMQP_LISTENING = re.compile(r"AMQP listening on (\S+?):(\d+)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
AUTH = ("guest", "guest")


class Server:
    """Where the server listens, and a REST helper that fails loudly on 5xx."""

    def __init__(self, http, amqp_host, amqp_port):
        self.http, self.amqp_host, self.amqp_port = http, amqp_host, amqp_port
        self.session = requests.Session()
        self.session.auth = AUTH

    def call(self, method, path, json=None, **kw):
        r = self.session.request(method, self.http + path, json=json, timeout=30, **kw)
        assert r.status_code < 500, "%s %s answered %s: %s" % (method, path, r.status_code, r.text)
        return r

    def ws_url(self, query=""):
        return "ws://%s/api/ws%s" % (self.http[len("http://"):], query)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    binary = os.environ.get("FERRYMQ_BIN", str(REPO / "target" / "debug" / "ferrymq"))
    if not os.access(binary, os.X_OK):
        pytest.exit("no ferrymq binary at %s (set FERRYMQ_BIN or build it)" % binary, returncode=2)
    root = tmp_path_factory.mktemp("ferrymq")
    env = {k: v for k, v in os.environ.items() if k != "FERRYMQ_BIN"}
    env["NO_COLOR"] = "1"
    proc = subprocess.Popen(
        [binary, "serve", "--data-dir", str(root / "data"), "--set", "amqp.port=0", "--set", "http.port=0",
         "--set", "mqtt.port=0", "--set", "kafka.port=0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    lines, cond = [], threading.Condition()

    def drain():
        for raw in iter(proc.stderr.readline, b""):
            with cond:
                lines.append(ANSI.sub("", raw.decode("utf-8", "replace")))
                cond.notify_all()
        with cond:
            cond.notify_all()

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + READY_TIMEOUT_S
    http = amqp = None
    with cond:
        while True:
            for line in lines:
                http = http or (HTTP_LISTENING.search(line) and HTTP_LISTENING.search(line).group(1))
                m = AMQP_LISTENING.search(line)
                amqp = amqp or (m and (m.group(1), int(m.group(2))))
            if http and amqp and any("FerryMQ ready" in l for l in lines):
                break
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                proc.kill()
                pytest.exit("ferrymq did not become ready:\n%s" % "".join(lines)[-4000:], returncode=3)
            cond.wait(min(left, 0.2))
    yield Server("http://" + http, amqp[0], amqp[1])
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(30)
    assert rc == 0, "ferrymq exited %r after SIGTERM:\n%s" % (rc, "".join(lines)[-4000:])
    assert not any("panicked" in l for l in lines), "".join(lines)[-4000:]


@pytest.fixture
def name(request):
    """A unique entity name for this test."""
    return "py.%s.%s" % (re.sub(r"[^A-Za-z0-9_]+", "_", request.node.name)[-24:], uuid.uuid4().hex[:8])


def eventually(what, f, timeout=30.0):
    """Polls f() until it returns a truthy value; fails with `what` after the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        v = f()
        if v:
            return v
        assert time.monotonic() < deadline, "never happened: %s" % what
        time.sleep(0.02)
