"""SUBSCRIBE / UNSUBSCRIBE: '+' and '#', '$'-topics, invalid filters and topic names, granted
QoS, overlapping subscriptions, shared subscriptions ($share/group/filter)."""

import contextlib
import queue
import struct
import time

import pytest
from paho.mqtt.packettypes import PacketTypes

from mqtt_support import (
    DISCONNECT, SUBACK, SUBSCRIBE, V5, V311, Closed, both_versions, packet, packed, still_serving, sub_opts,
    WAIT_S, unique, utf8, versions_xfail_on, xfail_on,
)

MATCHES = [
    # filter, topic, matches?
    ("{u}/+/temp", "{u}/kitchen/temp", True),
    ("{u}/+/temp", "{u}/kitchen/x/temp", False),
    ("{u}/+/temp", "{u}//temp", True),  # '+' matches an empty level
    ("{u}/#", "{u}", True),  # '#' matches the parent level too
    ("{u}/#", "{u}/a/b/c", True),
    ("{u}/a/#", "{u}/ab", False),
    ("{u}/+", "{u}/a/b", False),
    ("{u}/+/+", "{u}/a/b", True),
    ("{u}/a", "{u}/A", False),  # case sensitive
    ("{u}/a/", "{u}/a/", True),  # a trailing '/' is a level of its own
    ("{u}/a/", "{u}/a", False),
]


@both_versions
@pytest.mark.parametrize("flt,topic,match", MATCHES)
def test_wildcard_matching(mq, uid, version, flt, topic, match):
    flt, topic = flt.format(u=uid), topic.format(u=uid)
    s = mq(version)
    assert s.subscribe([(flt, 1), (uid + "/marker", 1)]) == [1, 1]
    p = mq(version)
    p.publish(topic, b"t", qos=1)
    p.publish(uid + "/marker", b"m", qos=1)
    first = s.get()
    if match:
        assert (first.topic, first.payload) == (topic, b"t")
        assert s.get().payload == b"m"
    else:
        assert (first.topic, first.payload) == (uid + "/marker", b"m"), "%s matched %s" % (flt, topic)


@both_versions
def test_dollar_topics_not_matched_by_leading_wildcards(mq, uid, version):
    """'#' and '+/...' do not match topics that start with '$'; an explicit '$...' filter does."""
    suffix = unique("d")
    dtopic = "$ferry-it/%s/x" % suffix
    hash_all = mq(version)
    hash_all.subscribe("#", 0)
    plus = mq(version)
    plus.subscribe("+/%s/x" % suffix, 0)
    explicit = mq(version)
    explicit.subscribe("$ferry-it/%s/#" % suffix, 0)
    explicit.subscribe(uid + "/marker", 0)
    plus.subscribe(uid + "/marker", 0)
    p = mq(version)
    p.publish(dtopic, b"dollar", qos=1)
    p.publish(uid + "/marker", b"m", qos=1)
    assert explicit.get().topic == dtopic
    assert explicit.get().topic == uid + "/marker"
    assert plus.get().topic == uid + "/marker"
    # '#' receives everyone's traffic: look for ours only, up to our marker.
    while True:
        m = hash_all.get()
        assert m.topic != dtopic, "'#' matched a '$' topic"
        if m.topic == uid + "/marker":
            break


@both_versions
@pytest.mark.parametrize("bad", ["{u}/#/x", "{u}/a#", "{u}/a+/b", "{u}/+a", ""])
def test_invalid_topic_filter_refused(raw, broker, uid, version, bad):
    """An invalid filter gets a failure code in SUBACK (>= 0x80), or the connection is closed
    (v5: after DISCONNECT with a reason code); never a subscription."""
    flt = bad.format(u=uid)
    r = raw(version)
    assert r.connect().rc == 0
    body = struct.pack("!H", 3) + (packed(PacketTypes.SUBSCRIBE, None) if version == V5 else b"")
    body += utf8(flt) + bytes([1])
    r.send(packet(SUBSCRIBE, 2, body))
    try:
        p = r.recv()
    except Closed:
        p = None
    if p is not None and p.type == SUBACK:
        assert p.codes and p.codes[0] >= 0x80, "filter %r accepted: %r" % (flt, p.codes)
    elif p is not None:
        assert p.type == DISCONNECT and p.rc >= 0x80, p
        r.expect_closed()
    still_serving(broker, version)


@both_versions
@pytest.mark.parametrize("bad", ["{u}/+", "{u}/#", "{u}/a+b"])
def test_publish_to_wildcard_topic_closes(raw, mq, broker, uid, version, bad):
    """A topic name with a wildcard is malformed (v5: DISCONNECT 0x90 Topic Name invalid or
    0x81/0x82); it never reaches a subscriber."""
    topic = bad.format(u=uid)
    watcher = mq(version)
    watcher.subscribe(uid + "/#", 0)
    r = raw(version)
    assert r.connect().rc == 0
    r.publish(topic, b"bad", qos=0)
    got = r.expect_closed()
    if version == V5 and got:
        assert [p.type for p in got] == [DISCONNECT] and got[0].rc in (0x81, 0x82, 0x90), got
    if "a+b" not in topic:
        watcher.expect_none(within=0.2)
    still_serving(broker, version)


@both_versions
def test_unsubscribe_stops_delivery(mq, uid, version):
    s = mq(version)
    s.subscribe([(uid + "/a", 1), (uid + "/b", 1)])
    codes = s.unsubscribe(uid + "/a")
    if version == V5:
        assert codes == [0]
    p = mq(version)
    p.publish(uid + "/a", b"a", qos=1)
    p.publish(uid + "/b", b"b", qos=1)
    assert s.get().payload == b"b"
    s.expect_none(within=0.2)


def test_v5_unsubscribe_unknown_filter_reports_no_subscription(mq, uid):
    s = mq(V5)
    assert s.unsubscribe(uid + "/never") == [0x11]  # No subscription existed


@both_versions
def test_resubscribe_replaces_qos(mq, uid, version):
    s = mq(version)
    s.subscribe(uid, 2)
    assert s.subscribe(uid, 0) == [0]
    mq(version).publish(uid, b"x", qos=2)
    assert s.get().qos == 0
    s.expect_none(within=0.2)


@versions_xfail_on("mosquitto", "2.0.11 delivers one v3.1.1 copy at the QoS of one matching subscription, "
                   "not the maximum of all (MQTT-3.3.5-1)")
def test_overlapping_subscriptions(mq, uid, version):
    """A message matching several filters of one client: one copy per filter or one copy at the
    highest QoS (both allowed); never none, never more than the number of filters."""
    s = mq(version)
    s.subscribe([(uid + "/#", 0), (uid + "/+/x", 2), (uid + "/a/x", 1)])
    mq(version).publish(uid + "/a/x", b"o", qos=2)
    first = s.get()
    extra = []
    try:
        while True:
            extra.append(s.get(timeout=0.3))
    except AssertionError:
        pass
    copies = [first] + extra
    assert 1 <= len(copies) <= 3, copies
    assert max(m.qos for m in copies) == 2, [(m.qos, m.mid) for m in copies]


@both_versions
def test_shared_subscription_load_balanced(mq, uid, version):
    """Each message goes to exactly one member of the group; every member gets some; a plain
    subscriber of the same filter gets them all."""
    group = unique("g")
    members = [mq(version, tag="m%d" % i) for i in range(3)]
    for m in members:
        assert m.subscribe("$share/%s/%s/+" % (group, uid), 1) == [1]
    plain = mq(version)
    plain.subscribe(uid + "/+", 1)
    p = mq(version)
    n = 30
    for i in range(n):
        p.publish(uid + "/jobs", b"%d" % i, qos=1, wait=False)
    assert sorted(int(m.payload) for m in plain.get_n(n)) == list(range(n))
    per = drain_group(members, n)
    seen = sorted(x for got in per for x in got)
    assert seen == list(range(n)), "each message exactly once to the group: %s" % per
    for m in members:
        m.expect_none(within=0.2)
    assert all(per), "not load-balanced: %s" % [len(g) for g in per]


def drain_group(members, n, timeout=WAIT_S):
    """What each member of a group received, until n in all (or the deadline)."""
    per = [[] for _ in members]
    deadline = time.monotonic() + timeout
    while sum(map(len, per)) < n and time.monotonic() < deadline:
        for i, m in enumerate(members):
            with contextlib.suppress(queue.Empty):
                per[i].append(int(m.messages.get(timeout=0.02).payload))
    return per


def test_shared_subscription_two_groups_each_get_everything(mq, uid):
    g1 = [mq(V5) for _ in range(2)]
    g2 = [mq(V311)]
    for c in g1:
        c.subscribe("$share/ga/%s" % uid, options=sub_opts(qos=1))
    g2[0].subscribe("$share/gb/%s" % uid, 1)
    p = mq(V5)
    for i in range(10):
        p.publish(uid, b"%d" % i, qos=1)
    assert sorted(int(m.payload) for m in g2[0].get_n(10)) == list(range(10))
    per = drain_group(g1, 10)
    assert sorted(x for got in per for x in got) == list(range(10))
    for c in g1:
        c.expect_none(within=0.2)


@xfail_on("mosquitto", "2.0.11 accepts No Local on a shared subscription (MQTT-3.8.3-4)")
def test_v5_shared_subscription_with_no_local_is_protocol_error(raw, broker, uid):
    """[MQTT-3.8.3-4] No Local on a shared subscription is a Protocol Error."""
    r = raw(V5)
    assert r.connect().rc == 0
    body = struct.pack("!H", 4) + packed(PacketTypes.SUBSCRIBE, None)
    body += utf8("$share/g/%s" % uid) + bytes([1 | 0x04])
    r.send(packet(SUBSCRIBE, 2, body))
    got = r.expect_closed()
    assert got and got[0].type == DISCONNECT and got[0].rc == 0x82, got
    still_serving(broker, V5)

