"""Will messages: published on an abnormal disconnection (with its QoS, retain flag and v5
properties), not on a clean DISCONNECT; v5 DISCONNECT 0x04 and the Will Delay Interval."""

import time

from mqtt_support import V5, both_versions, prop, sub_opts, unique


@both_versions
def test_will_published_on_abnormal_disconnect(mq, raw, uid, version):
    watcher = mq(version)
    watcher.subscribe(uid + "/will", 1)
    r = raw(version)
    assert r.connect(will=dict(topic=uid + "/will", payload=b"died", qos=1)).rc == 0
    r.abort()
    m = watcher.get()
    assert (m.topic, m.payload, m.qos, m.retain) == (uid + "/will", b"died", 1, False)


@both_versions
def test_will_published_when_paho_connection_drops(mq, uid, version):
    watcher = mq(version)
    watcher.subscribe(uid + "/will", 1)
    c = mq(version, will=dict(topic=uid + "/will", payload=b"paho-died", qos=1))
    c.kill()
    assert watcher.get().payload == b"paho-died"


@both_versions
def test_no_will_on_clean_disconnect(mq, raw, uid, version):
    watcher = mq(version)
    watcher.subscribe(uid + "/#", 1)
    r = raw(version)
    assert r.connect(will=dict(topic=uid + "/will", payload=b"should-not", qos=1)).rc == 0
    r.disconnect()
    # A marker published after the DISCONNECT was processed (a later connection) comes first.
    marker = mq(version)
    marker.publish(uid + "/marker", b"m", qos=1)
    m = watcher.get()
    assert (m.topic, m.payload) == (uid + "/marker", b"m")
    watcher.expect_none()


@both_versions
def test_retained_will(mq, raw, uid, version, retained):
    topic = uid + "/will"
    retained.append(topic)
    r = raw(version)
    assert r.connect(will=dict(topic=topic, payload=b"last words", qos=1, retain=True)).rc == 0
    r.abort()
    # A subscriber arriving later gets it as a retained message (poll until the broker noticed).
    deadline = time.monotonic() + 10
    while True:
        late = mq(version)
        late.subscribe(topic, 1)
        try:
            m = late.get(timeout=0.5)
            break
        except AssertionError:
            late.close()
            assert time.monotonic() < deadline, "the retained will never appeared"
    assert (m.payload, m.retain) == (b"last words", True)


def test_v5_will_properties_travel(mq, raw, uid):
    watcher = mq(V5)
    watcher.subscribe(uid + "/will", 1)
    r = raw(V5)
    will_props = dict(ContentType="text/plain", UserProperty=[("device", "d-1")], ResponseTopic=uid + "/resp",
                      CorrelationData=b"\x00\x01")
    assert r.connect(will=dict(topic=uid + "/will", payload=b"bye", qos=1, properties=will_props)).rc == 0
    r.abort()
    m = watcher.get()
    assert m.payload == b"bye"
    assert prop(m.properties, "ContentType") == "text/plain"
    assert prop(m.properties, "UserProperty") == [("device", "d-1")]
    assert prop(m.properties, "ResponseTopic") == uid + "/resp"
    assert prop(m.properties, "CorrelationData") == b"\x00\x01"


def test_v5_disconnect_with_will_message_reason_publishes_will(mq, raw, uid):
    watcher = mq(V5)
    watcher.subscribe(uid + "/will", 1)
    r = raw(V5)
    assert r.connect(will=dict(topic=uid + "/will", payload=b"asked-for", qos=1)).rc == 0
    r.disconnect(rc=0x04)  # Disconnect with Will Message
    assert watcher.get().payload == b"asked-for"


def test_v5_will_delay_interval(mq, raw, uid):
    """The will waits for its delay; it is published once the delay has passed."""
    watcher = mq(V5)
    watcher.subscribe(uid + "/will", 1)
    r = raw(V5)
    delay = 2
    ack = r.connect(client_id=unique("willdelay-"), clean=True, properties=dict(SessionExpiryInterval=60),
                    will=dict(topic=uid + "/will", payload=b"late", qos=1,
                              properties=dict(WillDelayInterval=delay)))
    assert ack.rc == 0
    t0 = time.monotonic()
    r.abort()
    watcher.expect_none(within=delay * 0.6)
    m = watcher.get(timeout=delay + 8)
    elapsed = time.monotonic() - t0
    assert m.payload == b"late"
    assert elapsed >= delay * 0.9, "will published after %.2fs, before its %ds delay" % (elapsed, delay)


def test_v5_will_delay_cancelled_by_reconnect(mq, raw, uid):
    """Reconnecting to the session before the Will Delay Interval ends means no will."""
    watcher = mq(V5)
    watcher.subscribe(uid + "/#", 1)
    cid = unique("willdelay-")
    delay = 2
    r = raw(V5)
    assert r.connect(client_id=cid, clean=True, properties=dict(SessionExpiryInterval=60),
                     will=dict(topic=uid + "/will", payload=b"never", qos=1,
                               properties=dict(WillDelayInterval=delay))).rc == 0
    r.abort()
    back = mq(V5, client_id=cid, clean=False, session_expiry=60)
    assert back.connack[:2] == (0, True)
    watcher.expect_none(within=delay + 1.0)
    back.publish(uid + "/marker", b"m", qos=1)
    assert watcher.get().payload == b"m"
    watcher.expect_none(within=0.2)


def test_v5_will_not_later_than_session_expiry(mq, raw, uid):
    """The will is published when the session ends, even if its delay is longer."""
    watcher = mq(V5)
    watcher.subscribe(uid + "/will", 1)
    r = raw(V5)
    assert r.connect(client_id=unique("willexp-"), clean=True, properties=dict(SessionExpiryInterval=1),
                     will=dict(topic=uid + "/will", payload=b"expired", qos=1,
                               properties=dict(WillDelayInterval=600))).rc == 0
    r.abort()
    assert watcher.get(timeout=8).payload == b"expired"


def test_v5_will_qos_and_subscription_qos(mq, raw, uid):
    """The will is delivered at min(will QoS, subscription QoS), here QoS 2."""
    watcher = mq(V5)
    watcher.subscribe(uid + "/will", options=sub_opts(qos=2))
    r = raw(V5)
    assert r.connect(will=dict(topic=uid + "/will", payload=b"q2", qos=2,
                               properties=dict(PayloadFormatIndicator=1))).rc == 0
    r.abort()
    m = watcher.get()
    assert (m.payload, m.qos, prop(m.properties, "PayloadFormatIndicator")) == (b"q2", 2, 1)



@both_versions
def test_will_published_on_session_takeover(mq, raw, uid, version):
    """The server ends the first connection without a DISCONNECT from that client: its will is
    due (MQTT-3.1.2-8; v5 with Will Delay Interval 0)."""
    watcher = mq(version)
    watcher.subscribe(uid + "/will", 1)
    cid = unique("takewill-")
    first = raw(version)
    assert first.connect(client_id=cid, will=dict(topic=uid + "/will", payload=b"taken over", qos=1)).rc == 0
    second = raw(version)
    assert second.connect(client_id=cid).rc == 0
    assert watcher.get().payload == b"taken over"
    first.expect_closed()
