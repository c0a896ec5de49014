"""Retained messages: set, delivered on subscribe with RETAIN=1, replaced, cleared by an empty
payload; live deliveries carry RETAIN=0 unless v5 Retain As Published; v5 Retain Handling 0/1/2."""

import pytest

from mqtt_support import V5, both_versions, sub_opts


@both_versions
def test_retained_delivered_on_subscribe(mq, uid, version, retained):
    topic = uid + "/state"
    retained.append(topic)
    mq(version).publish(topic, b"on", qos=1, retain=True)
    s = mq(version)
    s.subscribe(topic, 1)
    m = s.get()
    assert (m.topic, m.payload, m.retain, m.qos) == (topic, b"on", True, 1)
    s.expect_none(within=0.2)


@both_versions
def test_retained_replaced_and_matched_by_wildcards(mq, uid, version, retained):
    p = mq(version)
    for t in ("a", "b", "c/d"):
        retained.append(uid + "/" + t)
        p.publish(uid + "/" + t, b"old-" + t.encode(), qos=1, retain=True)
    p.publish(uid + "/a", b"new-a", qos=1, retain=True)
    s = mq(version)
    s.subscribe(uid + "/+", 1)
    got = sorted((m.topic, m.payload, m.retain) for m in s.get_n(2))
    assert got == [(uid + "/a", b"new-a", True), (uid + "/b", b"old-b", True)]
    s.expect_none(within=0.2)
    s2 = mq(version)
    s2.subscribe(uid + "/#", 1)
    assert sorted(m.topic for m in s2.get_n(3)) == [uid + "/a", uid + "/b", uid + "/c/d"]


@both_versions
def test_empty_retained_payload_clears(mq, uid, version):
    topic = uid + "/gone"
    p = mq(version)
    p.publish(topic, b"here", qos=1, retain=True)
    p.publish(topic, b"", qos=1, retain=True)
    s = mq(version)
    s.subscribe(topic, 1)
    # A marker proves the subscription is live; nothing retained came before it.
    p.publish(topic, b"live", qos=1)
    m = s.get()
    assert (m.payload, m.retain) == (b"live", False)
    s.expect_none(within=0.2)


@both_versions
def test_live_delivery_clears_retain_flag(mq, uid, version, retained):
    topic = uid + "/live"
    retained.append(topic)
    s = mq(version)
    s.subscribe(topic, 1)
    mq(version).publish(topic, b"x", qos=1, retain=True)
    m = s.get()
    assert (m.payload, m.retain) == (b"x", False)


@both_versions
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_retained_qos_is_min_of_stored_and_subscription(mq, uid, version, qos, retained):
    topic = uid + "/q"
    retained.append(topic)
    mq(version).publish(topic, b"r", qos=2, retain=True)
    s = mq(version)
    s.subscribe(topic, qos)
    m = s.get()
    assert (m.payload, m.retain, m.qos) == (b"r", True, qos)


def test_v5_retain_as_published(mq, uid, retained):
    topic = uid + "/rap"
    retained.append(topic)
    keep = mq(V5)
    keep.subscribe(topic, options=sub_opts(qos=1, rap=True))
    plain = mq(V5)
    plain.subscribe(topic, options=sub_opts(qos=1, rap=False))
    mq(V5).publish(topic, b"x", qos=1, retain=True)
    assert keep.get().retain is True
    assert plain.get().retain is False


def test_v5_retain_handling(mq, uid, retained):
    topic = uid + "/rh"
    retained.append(topic)
    mq(V5).publish(topic, b"stored", qos=1, retain=True)
    marker = mq(V5)

    def mark(c, text):
        marker.publish(topic, text, qos=1)
        m = c.get()
        assert (m.payload, m.retain) == (text, False), (m.payload, m.retain)

    # 0: sent on every subscribe, new or repeated.
    s0 = mq(V5)
    s0.subscribe(topic, options=sub_opts(qos=1, rh=0))
    assert (s0.get().payload, ) == (b"stored", )
    s0.subscribe(topic, options=sub_opts(qos=1, rh=0))
    assert s0.get().payload == b"stored"
    # 1: sent only if the subscription did not exist.
    s1 = mq(V5)
    s1.subscribe(topic, options=sub_opts(qos=1, rh=1))
    assert s1.get().payload == b"stored"
    s1.subscribe(topic, options=sub_opts(qos=1, rh=1))
    mark(s1, b"m1")
    s1.expect_none(within=0.2)
    # 2: never sent at subscribe.
    s2 = mq(V5)
    s2.subscribe(topic, options=sub_opts(qos=1, rh=2))
    mark(s2, b"m2")
    s2.expect_none(within=0.2)


@both_versions
def test_retained_sent_again_on_repeated_subscribe(mq, uid, version, retained):
    """(v3.1.1 3.8.4 / v5 Retain Handling 0) a repeated SUBSCRIBE sends the retained message again."""
    topic = uid + "/again"
    retained.append(topic)
    mq(version).publish(topic, b"r", qos=1, retain=True)
    s = mq(version)
    s.subscribe(topic, 1)
    assert s.get().retain is True
    s.subscribe(topic, 1)
    m = s.get()
    assert (m.payload, m.retain) == (b"r", True)
