"""Fixtures: the broker under test (FerryMQ started here, or AMQP_URL), connections, unique names."""

import contextlib
import os
import pathlib

import pytest

pytest.register_assert_rewrite("amqp_support")

from amqp_support import Broker, FerryServer, Names  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[4]


def ferrymq_bin():
    return os.environ.get("FERRYMQ_BIN", str(REPO / "target" / "debug" / "ferrymq"))


def external():
    return bool(os.environ.get("AMQP_URL"))


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    if external():
        yield Broker.from_url(os.environ["AMQP_URL"])
        return
    binary = ferrymq_bin()
    if not os.access(binary, os.X_OK):
        pytest.exit("no ferrymq binary at %s (set FERRYMQ_BIN or build it)" % binary, returncode=2)
    root = tmp_path_factory.mktemp("ferrymq")
    server = FerryServer(binary, root / "data", root / "server.log")
    try:
        b = server.start()
    except RuntimeError as e:
        pytest.exit(str(e), returncode=3)
    yield b
    rc = server.stop()
    assert rc == 0, "ferrymq exited with %r after SIGTERM; log tail:\n%s" % (rc, server.log_tail())


@pytest.fixture
def own_server(tmp_path):
    """A FerryMQ server of the test's own, for tests that kill it."""
    server = FerryServer(ferrymq_bin(), tmp_path / "data", tmp_path / "server.log")
    yield server
    server.kill()


@pytest.fixture
def names(broker, request):
    n = Names(broker, request.node.name)
    yield n
    n.cleanup()


@pytest.fixture
def conn(broker):
    c = broker.connect()
    yield c
    with contextlib.suppress(Exception):
        if c.is_open:
            c.close()


@pytest.fixture
def ch(conn):
    return conn.channel()


@pytest.fixture
def conn2(broker):
    c = broker.connect()
    yield c
    with contextlib.suppress(Exception):
        if c.is_open:
            c.close()
