"""Fixtures: the FerryMQ under test (started here), servers of a test's own, unique names."""

import os
import pathlib
import re

import pytest

pytest.register_assert_rewrite("kafka_support")

from kafka_support import FerryServer, unique  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[4]


def ferrymq_bin():
    return os.environ.get("FERRYMQ_BIN", str(REPO / "target" / "debug" / "ferrymq"))


def _start(server):
    try:
        return server.start()
    except RuntimeError as e:
        pytest.exit(str(e), returncode=3)


@pytest.fixture(scope="session")
def _binary():
    binary = ferrymq_bin()
    if not os.access(binary, os.X_OK):
        pytest.exit("no ferrymq binary at %s (set FERRYMQ_BIN or build it)" % binary, returncode=2)
    return binary


@pytest.fixture(scope="session")
def broker(_binary, tmp_path_factory):
    """The Target most tests talk to: one FerryMQ for the session (defaults, except that the
    initial rebalance delay is 0)."""
    root = tmp_path_factory.mktemp("ferrymq")
    server = FerryServer(_binary, root / "data", root / "server.log")
    target = _start(server)
    target.server = server
    yield target
    rc = server.stop()
    assert rc == 0, "ferrymq exited with %r after SIGTERM; log tail:\n%s" % (rc, server.log_tail())


@pytest.fixture(scope="session")
def sasl_broker(_binary, tmp_path_factory):
    """A FerryMQ whose Kafka listener requires SASL (PLAIN, SCRAM-SHA-256)."""
    root = tmp_path_factory.mktemp("ferrymq-sasl")
    server = FerryServer(_binary, root / "data", root / "server.log",
                         {"kafka.sasl_mechanisms": "PLAIN,SCRAM-SHA-256"})
    target = _start(server)
    target.server = server
    yield target
    rc = server.stop()
    assert rc == 0, "ferrymq exited with %r after SIGTERM; log tail:\n%s" % (rc, server.log_tail())


@pytest.fixture(scope="session")
def no_autocreate_broker(_binary, tmp_path_factory):
    """A FerryMQ with kafka.auto_create_topics=false."""
    root = tmp_path_factory.mktemp("ferrymq-noauto")
    server = FerryServer(_binary, root / "data", root / "server.log", {"kafka.auto_create_topics": "false"})
    target = _start(server)
    target.server = server
    yield target
    rc = server.stop()
    assert rc == 0, "ferrymq exited with %r after SIGTERM; log tail:\n%s" % (rc, server.log_tail())


@pytest.fixture
def own_server(_binary, tmp_path):
    """A FerryMQ of the test's own (not started), for tests that stop, kill and restart it."""
    server = FerryServer(_binary, tmp_path / "data", tmp_path / "server.log")
    yield server
    server.kill()


@pytest.fixture
def topic(request):
    """A topic name of this test's own: it-<test>-<random> (legal in Kafka and as a stream)."""
    tag = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")[-40:]
    return "it-%s-%s" % (tag, unique(""))


@pytest.fixture
def closing():
    """Clients to close at the end of the test: closing(client) returns it."""
    made = []

    def add(c):
        made.append(c)
        return c

    yield add
    for c in reversed(made):
        try:
            c.close()
        except Exception:  # noqa: BLE001 -- best effort at teardown
            pass
