"""Persistent sessions: subscriptions and QoS 1/2 messages kept while the client is offline,
delivered on reconnection; clean session / clean start discard; v5 session expiry."""

import time

from paho.mqtt.packettypes import PacketTypes

from mqtt_support import V5, V311, both_versions, props, sub_opts, unique


def persistent(mq, version, cid, clean=False, expiry=300, **kw):
    """A session that outlives the connection: v5 Session Expiry Interval (`clean` is Clean
    Start), v3.1.1 Clean Session 0 (the unique client id makes the first one fresh)."""
    if version == V5:
        return mq(version, client_id=cid, clean=clean, session_expiry=expiry, **kw)
    return mq(version, client_id=cid, clean=False, **kw)


@both_versions
def test_qos1_and_qos2_queued_while_offline_delivered_on_reconnect(mq, uid, version):
    cid = unique("sess-")
    s = persistent(mq, version, cid, clean=True)
    s.subscribe([(uid + "/q1", 1), (uid + "/q2", 2)])
    s.disconnect()
    p = mq(version)
    for i in range(5):
        p.publish(uid + "/q1", b"one-%d" % i, qos=1)
    p.publish(uid + "/q2", b"two", qos=2)
    back = persistent(mq, version, cid)
    assert back.connack[:2] == (0, True), "session not present: %r" % (back.connack,)
    got = back.get_n(6)
    assert [m.payload for m in got if m.topic.endswith("q1")] == [b"one-%d" % i for i in range(5)]
    assert [(m.payload, m.qos) for m in got if m.topic.endswith("q2")] == [(b"two", 2)]
    # The subscription itself survived: live messages arrive too.
    p.publish(uid + "/q1", b"live", qos=1)
    assert back.get().payload == b"live"


@both_versions
def test_qos0_subscription_survives_but_offline_qos0_not_required(mq, uid, version):
    cid = unique("sess0-")
    s = persistent(mq, version, cid, clean=True)
    s.subscribe(uid, 0)
    s.disconnect()
    back = persistent(mq, version, cid)
    assert back.connack[1] is True
    mq(version).publish(uid, b"after", qos=0)
    assert back.get().payload == b"after"


@both_versions
def test_clean_session_discards_previous_session(mq, uid, version):
    cid = unique("clean-")
    s = persistent(mq, version, cid, clean=True)
    s.subscribe(uid, 1)
    s.disconnect()
    mq(version).publish(uid, b"lost", qos=1)
    fresh = mq(version, client_id=cid, clean=True)
    assert fresh.connack[:2] == (0, False)
    fresh.expect_none()
    fresh.disconnect()
    # And the subscription is gone with it.
    again = persistent(mq, version, cid)
    assert again.connack[1] is False
    mq(version).publish(uid, b"nobody", qos=1)
    again.expect_none()


def test_v311_clean_session_client_has_no_session_afterwards(mq, uid):
    cid = unique("v3clean-")
    c = mq(V311, client_id=cid, clean=True)
    c.subscribe(uid, 1)
    c.disconnect()
    back = mq(V311, client_id=cid, clean=False)
    assert back.connack[1] is False


def test_v5_session_expiry_zero_ends_session_at_disconnect(mq, uid):
    cid = unique("exp0-")
    c = mq(V5, client_id=cid, clean=True, session_expiry=0)
    c.subscribe(uid, options=sub_opts(qos=1))
    c.disconnect()
    back = mq(V5, client_id=cid, clean=False, session_expiry=60)
    assert back.connack[:2] == (0, False)


def test_v5_session_expiry_removes_queued_messages(mq, uid):
    cid = unique("exp-")
    c = mq(V5, client_id=cid, clean=True, session_expiry=1)
    c.subscribe(uid, options=sub_opts(qos=1))
    c.disconnect()
    mq(V5).publish(uid, b"expires with the session", qos=1)
    time.sleep(2.5)  # the session expiry interval itself is what is tested
    back = mq(V5, client_id=cid, clean=False, session_expiry=60)
    assert back.connack[:2] == (0, False)
    back.expect_none()


def test_v5_session_kept_within_expiry(mq, uid):
    cid = unique("keep-")
    c = mq(V5, client_id=cid, clean=True, session_expiry=5)
    c.subscribe(uid, options=sub_opts(qos=1))
    c.disconnect()
    mq(V5).publish(uid, b"kept", qos=1)
    time.sleep(1.0)
    back = mq(V5, client_id=cid, clean=False, session_expiry=5)
    assert back.connack[:2] == (0, True)
    assert back.get().payload == b"kept"


def test_v5_disconnect_can_shorten_session_expiry(mq, uid):
    """DISCONNECT may change a non-zero Session Expiry Interval (here to 0: the session ends)."""
    cid = unique("dexp-")
    c = mq(V5, client_id=cid, clean=True, session_expiry=300)
    c.subscribe(uid, options=sub_opts(qos=1))
    c.disconnect(properties=props(PacketTypes.DISCONNECT, SessionExpiryInterval=0))
    back = mq(V5, client_id=cid, clean=False, session_expiry=60)
    assert back.connack[:2] == (0, False)


def test_v5_clean_start_with_expiry_discards_old_session(mq, uid):
    cid = unique("cs-")
    c = mq(V5, client_id=cid, clean=True, session_expiry=300)
    c.subscribe(uid, options=sub_opts(qos=1))
    c.disconnect()
    again = mq(V5, client_id=cid, clean=True, session_expiry=300)
    assert again.connack[:2] == (0, False)
    mq(V5).publish(uid, b"x", qos=1)
    again.expect_none()


def test_session_shared_between_protocol_versions(mq, uid):
    """A session made by a v3.1.1 client is resumed by a v5 client with the same id."""
    cid = unique("mix-")
    c = mq(V311, client_id=cid, clean=False)
    c.subscribe(uid, 1)
    c.disconnect()
    mq(V311).publish(uid, b"for v5", qos=1)
    back = mq(V5, client_id=cid, clean=False, session_expiry=0)
    assert back.connack[:2] == (0, True)
    assert back.get().payload == b"for v5"
