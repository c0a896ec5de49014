"""PUBLISH at QoS 0, 1 and 2 in both directions, with the complete flows; QoS 2 exactly once,
including a reconnection in the middle of the flow (raw sockets stop after PUBREC / PUBREL)."""

import pytest

from mqtt_support import (
    PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL, V5, V311, both_versions, sub_opts, unique,
)


def sub(c, topic, qos):
    if c.version == V5:
        return c.subscribe(topic, options=sub_opts(qos=qos))
    return c.subscribe(topic, qos)


@both_versions
@pytest.mark.parametrize("pub_qos", [0, 1, 2])
@pytest.mark.parametrize("sub_qos", [0, 1, 2])
def test_delivered_at_min_of_publish_and_subscription_qos(mq, uid, version, pub_qos, sub_qos):
    """Granted QoS downgrade: a message is delivered at the lower of the two QoS levels."""
    s = mq(version)
    assert sub(s, uid, sub_qos) == [sub_qos]
    p = mq(version)
    p.publish(uid, b"q%d" % pub_qos, qos=pub_qos)
    m = s.get()
    assert (m.payload, m.qos) == (b"q%d" % pub_qos, min(pub_qos, sub_qos))
    s.expect_none(within=0.2)


@both_versions
@pytest.mark.parametrize("qos", [1, 2])
def test_order_kept_per_publisher(mq, uid, version, qos):
    s = mq(version)
    sub(s, uid, qos)
    p = mq(version)
    for i in range(50):
        p.publish(uid, b"%d" % i, qos=qos, wait=False)
    got = s.get_n(50)
    assert [m.payload for m in got] == [b"%d" % i for i in range(50)]
    s.expect_none(within=0.2)


@both_versions
def test_qos1_raw_flow_both_directions(raw, uid, version):
    r = raw(version)
    assert r.connect().rc == 0
    ack = r.subscribe(1, [(uid, 1)])
    assert ack.codes == [1]
    r.publish(uid, b"one", qos=1, pid=10)
    # PUBACK for our publish and the delivery to our own subscription, in either order.
    got = {r.recv().type, r.recv().type}
    assert got == {PUBACK, PUBLISH}


@both_versions
def test_qos2_raw_flow_both_directions(raw, uid, version):
    pub = raw(version)
    assert pub.connect().rc == 0
    s = raw(version)
    assert s.connect().rc == 0
    assert s.subscribe(1, [(uid, 2)]).codes == [2]
    pub.publish(uid, b"two", qos=2, pid=77)
    rec = pub.expect(PUBREC)
    assert rec.pid == 77 and rec.rc == 0
    pub.ack(PUBREL, 77)
    assert pub.expect(PUBCOMP).pid == 77
    m = s.expect(PUBLISH)
    assert (m.qos, m.payload, m.dup) == (2, b"two", False)
    s.ack(PUBREC, m.pid)
    assert s.expect(PUBREL).pid == m.pid
    s.ack(PUBCOMP, m.pid)
    s.expect_silence()


@both_versions
def test_qos2_duplicate_publish_before_pubrel_delivered_once(mq, raw, uid, version):
    """A resent PUBLISH (DUP) with the same packet id before PUBREL is acknowledged with PUBREC
    again and not delivered twice."""
    watcher = mq(version)
    sub(watcher, uid, 2)
    r = raw(version)
    assert r.connect().rc == 0
    r.publish(uid, b"once", qos=2, pid=5)
    assert r.expect(PUBREC).pid == 5
    r.publish(uid, b"once", qos=2, pid=5, dup=True)
    assert r.expect(PUBREC).pid == 5
    r.ack(PUBREL, 5)
    assert r.expect(PUBCOMP).pid == 5
    # The same id, now free again, carries a new message.
    r.publish(uid, b"next", qos=2, pid=5)
    assert r.expect(PUBREC).pid == 5
    r.ack(PUBREL, 5)
    assert r.expect(PUBCOMP).pid == 5
    assert [m.payload for m in watcher.get_n(2)] == [b"once", b"next"]
    watcher.expect_none()


def connect_persistent(r, cid, version):
    if version == V5:
        return r.connect(client_id=cid, clean=False, properties=dict(SessionExpiryInterval=300))
    return r.connect(client_id=cid, clean=False)


@both_versions
def test_qos2_inbound_reconnect_after_pubrec_resend_pubrel(mq, raw, uid, version):
    """Client -> server: the connection drops after PUBREC; on reconnection (same session) the
    client sends PUBREL again and gets PUBCOMP; the message is delivered exactly once."""
    watcher = mq(version)
    sub(watcher, uid, 2)
    cid = unique("q2in-")
    r = raw(version)
    assert connect_persistent(r, cid, version).rc == 0
    r.publish(uid, b"exactly-once", qos=2, pid=42)
    assert r.expect(PUBREC).pid == 42
    r.abort()
    r2 = raw(version)
    ack = connect_persistent(r2, cid, version)
    assert (ack.rc, ack.session_present) == (0, True)
    r2.ack(PUBREL, 42)
    comp = r2.expect(PUBCOMP)
    assert (comp.pid, comp.rc) == (42, 0)
    assert watcher.get().payload == b"exactly-once"
    watcher.expect_none()
    r2.disconnect()


@both_versions
def test_qos2_inbound_reconnect_after_pubrec_resend_publish_not_duplicated(mq, raw, uid, version):
    """Client -> server: the connection drops after PUBREC and a client that lost that fact sends
    the PUBLISH again (DUP) with the same id: PUBREC again, and still delivered once."""
    watcher = mq(version)
    sub(watcher, uid, 2)
    cid = unique("q2dup-")
    r = raw(version)
    assert connect_persistent(r, cid, version).rc == 0
    r.publish(uid, b"once-only", qos=2, pid=43)
    assert r.expect(PUBREC).pid == 43
    r.abort()
    r2 = raw(version)
    assert connect_persistent(r2, cid, version).session_present
    r2.publish(uid, b"once-only", qos=2, pid=43, dup=True)
    assert r2.expect(PUBREC).pid == 43
    r2.ack(PUBREL, 43)
    assert r2.expect(PUBCOMP).pid == 43
    assert watcher.get().payload == b"once-only"
    watcher.expect_none()
    r2.disconnect()


@both_versions
def test_qos2_outbound_reconnect_before_pubrec_redelivers_with_dup(mq, raw, uid, version):
    """Server -> client: the subscriber drops before PUBREC; on reconnection the server sends the
    PUBLISH again with DUP=1 and the same packet id."""
    cid = unique("q2out-")
    s = raw(version)
    assert connect_persistent(s, cid, version).rc == 0
    assert s.subscribe(1, [(uid, 2)]).codes == [2]
    mq(version).publish(uid, b"redeliver-me", qos=2)
    first = s.expect(PUBLISH)
    assert (first.qos, first.dup, first.payload) == (2, False, b"redeliver-me")
    s.abort()
    s2 = raw(version)
    assert connect_persistent(s2, cid, version).session_present
    again = s2.expect(PUBLISH)
    assert (again.qos, again.dup, again.pid, again.payload) == (2, True, first.pid, b"redeliver-me")
    s2.ack(PUBREC, again.pid)
    assert s2.expect(PUBREL).pid == again.pid
    s2.ack(PUBCOMP, again.pid)
    s2.expect_silence()
    s2.disconnect()


@both_versions
def test_qos2_outbound_reconnect_after_pubrel_resends_pubrel_only(mq, raw, uid, version):
    """Server -> client: the subscriber drops after receiving PUBREL (before PUBCOMP); on
    reconnection the server resends PUBREL, not the PUBLISH."""
    cid = unique("q2rel-")
    s = raw(version)
    assert connect_persistent(s, cid, version).rc == 0
    assert s.subscribe(1, [(uid, 2)]).codes == [2]
    mq(version).publish(uid, b"m", qos=2)
    m = s.expect(PUBLISH)
    s.ack(PUBREC, m.pid)
    assert s.expect(PUBREL).pid == m.pid
    s.abort()
    s2 = raw(version)
    assert connect_persistent(s2, cid, version).session_present
    rel = s2.expect(PUBREL)
    assert rel.pid == m.pid
    s2.ack(PUBCOMP, m.pid)
    s2.expect_silence()
    s2.disconnect()


@both_versions
def test_qos1_redelivered_with_dup_after_reconnect(mq, raw, uid, version):
    cid = unique("q1dup-")
    s = raw(version)
    assert connect_persistent(s, cid, version).rc == 0
    assert s.subscribe(1, [(uid, 1)]).codes == [1]
    mq(version).publish(uid, b"unacked", qos=1)
    first = s.expect(PUBLISH)
    assert (first.qos, first.dup) == (1, False)
    s.abort()
    s2 = raw(version)
    assert connect_persistent(s2, cid, version).session_present
    again = s2.expect(PUBLISH)
    assert (again.dup, again.pid, again.payload) == (True, first.pid, b"unacked")
    s2.ack(PUBACK, again.pid)
    s2.expect_silence()
    s2.disconnect()


def test_large_payload_roundtrip(mq, uid):
    s = mq(V311)
    s.subscribe(uid, 1)
    body = bytes(range(256)) * 1024  # 256 KiB, every byte value
    mq(V311).publish(uid, body, qos=1)
    assert s.get().payload == body


@both_versions
def test_empty_payload_non_retained(mq, uid, version):
    s = mq(version)
    s.subscribe(uid, 1)
    mq(version).publish(uid, b"", qos=1)
    m = s.get()
    assert (m.payload, m.retain) == (b"", False)

