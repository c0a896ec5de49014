"""Fixtures: the broker under test (FerryMQ started here, or MQTT_HOST), clients, unique names."""

import contextlib
import os
import pathlib
import re

import pytest

pytest.register_assert_rewrite("mqtt_support")

from mqtt_support import V5, V311, FerryServer, MosquittoServer, Mqtt, Raw, Target, external, unique  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[4]


def ferrymq_bin():
    return os.environ.get("FERRYMQ_BIN", str(REPO / "target" / "debug" / "ferrymq"))


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """The Target every test talks to."""
    if external():
        yield Target.from_env()
        return
    binary = ferrymq_bin()
    if not os.access(binary, os.X_OK):
        pytest.exit("no ferrymq binary at %s (set FERRYMQ_BIN or build it)" % binary, returncode=2)
    root = tmp_path_factory.mktemp("ferrymq")
    server = FerryServer(binary, root / "data", root / "server.log")
    try:
        target = server.start()
    except RuntimeError as e:
        pytest.exit(str(e), returncode=3)
    yield target
    rc = server.stop()
    assert rc == 0, "ferrymq exited with %r after SIGTERM; log tail:\n%s" % (rc, server.log_tail())


def own_server_kind():
    """Which server the restart tests start for themselves: FerryMQ by default; Mosquitto when
    MQTT_OWN_BROKER=mosquitto (mosquitto.sh); none against any other external broker."""
    if not external():
        return "ferrymq"
    return os.environ.get("MQTT_OWN_BROKER") or None


@pytest.fixture
def own_server(tmp_path):
    """A server of the test's own, for tests that kill and restart it."""
    kind = own_server_kind()
    if kind == "ferrymq":
        server = FerryServer(ferrymq_bin(), tmp_path / "data", tmp_path / "server.log")
    elif kind == "mosquitto":
        server = MosquittoServer(tmp_path, tmp_path / "server.log")
    else:
        pytest.skip("restarts the server: needs FerryMQ (or MQTT_OWN_BROKER=mosquitto); MQTT_HOST is set")
    yield server
    server.kill()


@pytest.fixture
def uid(request):
    """A unique topic prefix for this test: it/<test>/<random>/ (letters, digits, '_' and '/' only,
    so that it maps onto an AMQP routing key unchanged)."""
    tag = re.sub(r"[^A-Za-z0-9]+", "_", request.node.name).strip("_")[-40:]
    return "it/%s/%s" % (tag, unique("r"))


@pytest.fixture
def mq(broker):
    """Factory of connected paho clients: mq(version=V5, **Mqtt kwargs, connect=True)."""
    made = []

    def make(version=V5, connect=True, target=None, **kw):
        c = Mqtt(target or broker, version=version, **kw)
        made.append(c)
        if connect:
            c.connect()
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def raw(broker):
    """Factory of raw socket clients: raw(version=V5)."""
    made = []

    def make(version=V5, target=None):
        r = Raw(target or broker, version=version)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


@pytest.fixture
def retained(mq):
    """Topics whose retained message a test leaves behind: cleared (empty retained publish) at the end."""
    topics = []
    yield topics
    if topics:
        with contextlib.suppress(Exception):
            c = mq(V311, tag="clear")
            for t in topics:
                c.publish(t, b"", qos=1, retain=True)

