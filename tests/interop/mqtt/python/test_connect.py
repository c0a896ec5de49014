"""CONNECT: protocol levels, client identifiers, credentials, keep-alive, session takeover, CONNACK."""

import time

import pytest
from paho.mqtt.packettypes import PacketTypes

from mqtt_support import (
    CONNACK, DISCONNECT, V5, V31, V311, Closed, both_versions, prop, props, still_serving, unique, xfail_on,
)


@pytest.mark.parametrize("version", [V31, V311, V5])
def test_connect_publish_subscribe_each_protocol_level(mq, uid, version):
    c = mq(version)
    rc, session_present, _ = c.connack
    assert (rc, session_present) == (0, False)
    assert c.subscribe(uid + "/t", 1) == [1]
    c.publish(uid + "/t", b"hello " + version.encode(), qos=1)
    m = c.get()
    assert (m.topic, m.payload, m.qos) == (uid + "/t", b"hello " + version.encode(), 1)


def test_v5_empty_client_id_gets_assigned_identifier(mq, uid):
    c = mq(V5, client_id="")
    rc, _, p = c.connack
    assigned = prop(p, "AssignedClientIdentifier")
    assert rc == 0 and assigned, "CONNACK carries no Assigned Client Identifier: %s" % p
    # It works as a client id: the session is usable.
    assert c.subscribe(uid, 1) == [1]
    c.publish(uid, b"x", qos=1)
    assert c.get().payload == b"x"
    # Two clients with empty ids get distinct identifiers.
    other = mq(V5, client_id="")
    assert prop(other.connack[2], "AssignedClientIdentifier") not in (None, assigned)


def test_v311_empty_client_id_with_clean_session_is_accepted(raw):
    r = raw(V311)
    ack = r.connect(client_id="", clean=True)
    assert ack.rc == 0
    assert r.ping().type == 13


def test_v311_empty_client_id_without_clean_session_is_rejected(raw):
    r = raw(V311)
    ack = r.connect(client_id="", clean=False)
    assert (ack.rc, ack.session_present) == (0x02, False)  # Identifier rejected
    r.expect_closed()


def test_v31_empty_client_id_is_rejected(raw):
    # MQTT 3.1 requires a client identifier of 1 to 23 characters.
    r = raw(V31)
    ack = r.connect(client_id="", clean=True)
    assert ack.rc == 0x02
    r.expect_closed()


@both_versions
def test_wrong_password_is_refused(raw, broker, version):
    r = raw(version)
    ack = r.connect(user=broker.user, password=broker.password + "-wrong")
    if version == V5:
        assert ack.rc in (0x86, 0x87), "want Bad User Name or Password / Not authorized, got 0x%02x" % ack.rc
    else:
        assert ack.rc in (0x04, 0x05), "want bad user name or password / not authorized, got %d" % ack.rc
    r.expect_closed()


@both_versions
def test_right_password_is_accepted(raw, version):
    r = raw(version)
    assert r.connect(user=True).rc == 0


@both_versions
def test_keep_alive_timeout_publishes_will(mq, raw, uid, version):
    """A client that stops sending is disconnected (keep-alive 1 s), and its will is published."""
    watcher = mq(version)
    watcher.subscribe(uid + "/will", 1)
    r = raw(version)
    ack = r.connect(keepalive=1, will=dict(topic=uid + "/will", payload=b"gone", qos=1))
    assert ack.rc == 0
    keepalive = prop(ack.props, "ServerKeepAlive", 1)  # v5: the server's value rules
    t0 = time.monotonic()
    r.expect_closed(timeout=keepalive * 1.5 + 10)  # the timing itself: the next test
    elapsed = time.monotonic() - t0
    assert elapsed >= keepalive * 1.0, "closed after %.2fs, before the keep-alive expired" % elapsed
    m = watcher.get()
    assert (m.topic, m.payload, m.qos) == (uid + "/will", b"gone", 1)


@both_versions
@xfail_on("mosquitto", "2.0.11 checks keep-alives only every few seconds: an idle client with keep-alive 2 s "
                       "is closed after 3 to 8 s, not 3 s (MQTT-3.1.2-24)", strict=False)
def test_keep_alive_enforced_at_one_and_a_half_intervals(raw, version):
    """Closed after 1.5 x keep-alive (2 s -> 3 s), with 1.5 s of slack for a loaded machine."""
    r = raw(version)
    ack = r.connect(keepalive=2)
    assert ack.rc == 0
    keepalive = prop(ack.props, "ServerKeepAlive", 2)
    t0 = time.monotonic()
    r.expect_closed(timeout=keepalive * 1.5 + 10)
    elapsed = time.monotonic() - t0
    assert keepalive * 1.0 <= elapsed <= keepalive * 1.5 + 1.5, "closed after %.2fs (keep-alive %ds)" % (
        elapsed, keepalive)


@both_versions
def test_pings_keep_the_connection_alive(raw, version):
    r = raw(version)
    assert r.connect(keepalive=1).rc == 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < 3.2:  # > 2 x 1.5 s
        assert r.ping().type == 13
        time.sleep(0.4)


@both_versions
def test_session_takeover_closes_first_connection(mq, uid, version):
    cid = unique("takeover-")
    first = mq(version, client_id=cid)
    second = mq(version, client_id=cid)
    assert second.connack[0] == 0
    first.wait_disconnect()
    # The second connection works.
    second.subscribe(uid, 1)
    second.publish(uid, b"after", qos=1)
    assert second.get().payload == b"after"


@xfail_on("mosquitto", "2.0.11 closes the old connection without DISCONNECT 0x8E (MQTT-3.1.4-3)")
def test_v5_session_takeover_sends_disconnect_0x8e(raw, mq):
    cid = unique("takeover-")
    first = raw(V5)
    assert first.connect(client_id=cid).rc == 0
    second = mq(V5, client_id=cid)
    assert second.connack[0] == 0
    got = first.expect_closed()
    assert [(p.type, p.rc) for p in got] == [(DISCONNECT, 0x8E)], got  # Session taken over
    # paho reports it too.
    third = mq(V5, client_id=cid)
    assert third.connack[0] == 0
    rc, _, from_server = second.wait_disconnect()
    assert (rc, from_server) == (0x8E, True)


def test_v5_connack_advertises_limits(mq):
    """CONNACK tells the client the server's limits that the suite relies on."""
    _, _, p = mq(V5).connack
    assert prop(p, "MaximumPacketSize", 0) > 0, "no Maximum Packet Size in CONNACK: %s" % p
    assert prop(p, "TopicAliasMaximum", 0) > 0, "no Topic Alias Maximum in CONNACK: %s" % p
    assert prop(p, "ReceiveMaximum", 65535) > 0
    assert prop(p, "MaximumQoS") is None, "Maximum QoS %s: QoS 2 is required" % prop(p, "MaximumQoS")
    assert prop(p, "RetainAvailable", 1) == 1
    assert prop(p, "SharedSubscriptionAvailable", 1) == 1
    assert prop(p, "SubscriptionIdentifierAvailable", 1) == 1
    assert prop(p, "WildcardSubscriptionAvailable", 1) == 1


def test_v5_unknown_authentication_method_is_refused(raw, broker):
    r = raw(V5)
    ack = r.connect(properties=dict(AuthenticationMethod="SCRAM-SHA-1", AuthenticationData=b"n,,n=guest,r=abc"))
    assert ack.type == CONNACK and ack.rc == 0x8C, "want Bad authentication method, got %r" % ack
    r.expect_closed()
    still_serving(broker, V5)


def test_second_connect_on_a_connection_is_a_protocol_error(raw, broker):
    r = raw(V311)
    assert r.connect().rc == 0
    try:
        r.connect(expect=None)
        r.expect_closed()
    except Closed:
        pass
    still_serving(broker)


def test_v5_disconnect_properties_accepted(mq):
    c = mq(V5, session_expiry=0)
    c.disconnect(properties=props(PacketTypes.DISCONNECT, ReasonString="bye"))
