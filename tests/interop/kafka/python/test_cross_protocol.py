"""Cross-protocol: a Kafka topic is a FerryMQ stream of the same name in vhost "/" (design notes
section 2). Records produced over Kafka are read over AMQP (pika, x-stream-offset) and HTTP
(GET /api/streams/%2F/{name}/messages), and messages published over AMQP and HTTP are read by
Kafka consumers.

Mapping checked: Kafka record value <-> body; Kafka headers <-> message headers (Kafka header values
are bytes: AMQP shows them as byte arrays or long strings, HTTP as {"$bytes": base64} or text);
Kafka timestamp <-> the message timestamp (AMQP `timestamp` property in seconds, HTTP
`properties.timestamp_ms`); Kafka key <-> the message key (HTTP `key`; AMQP: the `x-message-key`
header, both ways)."""

import base64
import time

import pika
import pytest
import requests
from confluent_kafka import Consumer, Producer

from kafka_support import WAIT_S, consume_n, create_topic, expect_no_more, produce_all


@pytest.fixture
def amqp(broker):
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        host=broker.host, port=broker.amqp_port, credentials=pika.PlainCredentials(broker.user, broker.password),
        connection_attempts=1, socket_timeout=10))
    yield conn
    if conn.is_open:
        conn.close()


def http_get(broker, path, **params):
    r = requests.get(broker.http + path, params=params, auth=(broker.user, broker.password), timeout=WAIT_S)
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()


def http_post(broker, path, body):
    r = requests.post(broker.http + path, json=body, auth=(broker.user, broker.password), timeout=WAIT_S)
    assert r.status_code in (200, 201), (r.status_code, r.text)
    return r.json()


def header_bytes(v):
    """A header value as bytes, whichever typed form a protocol chose for Kafka's bytes."""
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return v.encode()
    if isinstance(v, dict) and set(v) == {"$bytes"}:
        return base64.b64decode(v["$bytes"])
    raise AssertionError("unexpected header value %r" % (v,))


def amqp_read(conn, stream, n, offset="first", timeout=WAIT_S):
    ch = conn.channel()
    ch.basic_qos(prefetch_count=100)
    got = []

    def on(c, method, props, body):
        got.append((method, props, body))
        c.basic_ack(method.delivery_tag)

    ch.basic_consume(stream, on, arguments={"x-stream-offset": offset})
    deadline = time.monotonic() + timeout
    while len(got) < n:
        assert time.monotonic() < deadline, "AMQP stream consumer got %d of %d within %ss" % (len(got), n, timeout)
        conn.process_data_events(time_limit=0.05)
    ch.close()
    return got


def kafka_records(broker, topic, n):
    c = Consumer(broker.ck(**{"group.id": "g-" + topic, "auto.offset.reset": "earliest"}))
    try:
        c.subscribe([topic])
        got = consume_n(c, n)
        assert not [m for m in expect_no_more(c, 0.3) if not m.error()]
        return got
    finally:
        c.close()


RECORDS = [
    (b"key-0", b"zero", [("trace", b"t-0"), ("bin", b"\x00\xff")]),
    (b"key-1", b"one", [("trace", b"t-1")]),
    (None, b"no key", []),
]


def produce_kafka(broker, topic, ts):
    create_topic(broker, topic, partitions=1)
    return produce_all(Producer(broker.ck(**{"acks": "all"})), topic,
                       [(k, v, h, ts + i) for i, (k, v, h) in enumerate(RECORDS)])


def test_kafka_records_read_over_amqp(broker, amqp, topic):
    ts = (int(time.time()) - 3600) * 1000  # whole seconds: AMQP timestamps have that resolution
    produce_kafka(broker, topic, ts)
    got = amqp_read(amqp, topic, len(RECORDS))
    assert [body for _, _, body in got] == [v for _, v, _ in RECORDS]
    for i, ((method, props, body), (key, _, headers)) in enumerate(zip(got, RECORDS)):
        h = dict(props.headers or {})
        assert h.pop("x-stream-offset") == i
        if key is None:
            assert "x-message-key" not in h, props.headers
        else:
            assert header_bytes(h.pop("x-message-key", None)) == key, props.headers
        assert {k: header_bytes(v) for k, v in h.items() if k in dict(headers)} == dict(headers), props.headers
        assert props.timestamp == (ts + i) // 1000, "AMQP timestamp %r, Kafka timestamp %d ms" % (props.timestamp, ts + i)


def test_kafka_records_read_over_http(broker, topic):
    ts = int(time.time() * 1000) - 3_600_000
    produce_kafka(broker, topic, ts)
    page = http_get(broker, "/api/streams/%%2F/%s/messages" % topic, offset="first", max=10, partition=0)
    recs = page["records"]
    assert [r["offset"] for r in recs] == [0, 1, 2] and page["end_offset"] == 3
    for i, (r, (key, value, headers)) in enumerate(zip(recs, RECORDS)):
        m = r["message"]
        assert r["partition"] == 0
        body = m["payload"].encode() if m["payload_encoding"] == "string" else base64.b64decode(m["payload"])
        assert body == value
        if key is None:
            assert m.get("key") is None
        else:
            k = m["key"].encode() if m["payload_encoding"] == "string" else base64.b64decode(m["key"])
            assert k == key
        assert {k: header_bytes(v) for k, v in m["headers"].items()} == dict(headers)
        assert m["properties"].get("timestamp_ms") == ts + i, m["properties"]


def test_amqp_publish_read_by_kafka_consumer(broker, amqp, topic):
    create_topic(broker, topic, partitions=1)
    ch = amqp.channel()
    ch.confirm_delivery()
    ts = int(time.time()) - 7200
    # To the default exchange with the stream's name as routing key...
    ch.basic_publish("", topic, b"via default exchange", pika.BasicProperties(
        headers={"origin": "amqp", "n": "1", "x-message-key": "amqp-key"}, timestamp=ts, delivery_mode=2))
    # ...and through an exchange bound to the stream.
    ex = "ex-" + topic
    ch.exchange_declare(ex, "direct", auto_delete=True)
    ch.queue_bind(topic, ex, "rk")
    ch.basic_publish(ex, "rk", b"via bound exchange",
                     pika.BasicProperties(headers={"origin": "amqp-ex"}, timestamp=ts + 1, delivery_mode=2))
    # Without a timestamp property the Kafka record still has one: the append time.
    before = int(time.time() * 1000)
    ch.basic_publish("", topic, b"no timestamp")
    after = int(time.time() * 1000)
    got = kafka_records(broker, topic, 3)
    assert [m.value() for m in got] == [b"via default exchange", b"via bound exchange", b"no timestamp"]
    assert [m.key() for m in got] == [b"amqp-key", None, None]
    assert sorted(got[0].headers() or []) == [("n", b"1"), ("origin", b"amqp")]
    assert got[1].headers() == [("origin", b"amqp-ex")]
    assert not got[2].headers()
    assert [m.timestamp()[1] for m in got[:2]] == [ts * 1000, (ts + 1) * 1000]
    assert before - 1000 <= got[2].timestamp()[1] <= after + 1000, (before, got[2].timestamp(), after)
    assert [m.offset() for m in got] == [0, 1, 2]
    ch.exchange_delete(ex)


def test_http_publish_read_by_kafka_consumer(broker, topic):
    create_topic(broker, topic, partitions=1)
    ts = int(time.time() * 1000) - 5000
    answer = http_post(broker, "/api/queues/%%2F/%s/publish" % topic, {
        "payload": "from http", "key": "http-key", "headers": {"origin": "http"},
        "properties": {"timestamp_ms": ts}})
    assert answer.get("routed", True) is True, answer
    answer = http_post(broker, "/api/exchanges/%2F/amq.default/publish", {
        "routing_key": topic, "payload": "AP8=", "payload_encoding": "base64", "key": "AQI=",
        "headers": {"bin": {"$bytes": "AAE="}}, "properties": {"timestamp_ms": ts + 1}})
    assert answer.get("routed") is True, answer
    got = kafka_records(broker, topic, 2)
    assert [(m.key(), m.value()) for m in got] == [(b"http-key", b"from http"), (b"\x01\x02", b"\x00\xff")]
    assert got[0].headers() == [("origin", b"http")]
    assert got[1].headers() == [("bin", b"\x00\x01")]
    assert [m.timestamp()[1] for m in got] == [ts, ts + 1]


def test_kafka_topic_is_a_stream_with_its_partitions(broker, topic):
    create_topic(broker, topic, partitions=4)
    info = http_get(broker, "/api/streams/%%2F/%s" % topic)
    assert (info.get("name"), info.get("type")) == (topic, "stream")
    assert info.get("partitions") == 4, info
    # A record produced to partition 3 is read from partition 3 over HTTP.
    produce = Producer(broker.ck())
    produce.produce(topic, b"p3", partition=3)
    assert produce.flush(WAIT_S) == 0
    page = http_get(broker, "/api/streams/%%2F/%s/messages" % topic, partition=3)
    assert [(r["partition"], r["offset"], r["message"]["payload"]) for r in page["records"]] == [(3, 0, "p3")]


def test_stream_declared_over_http_is_a_kafka_topic(broker, topic, closing):
    r = requests.put(broker.http + "/api/streams/%%2F/%s" % topic, json={"arguments": {"x-partitions": 3}},
                     auth=(broker.user, broker.password), timeout=WAIT_S)
    assert r.status_code in (200, 201, 204), r.text
    http_post(broker, "/api/queues/%%2F/%s/publish" % topic, {"payload": "hello", "key": "k"})
    md = closing(Consumer(broker.ck(**{"group.id": "g-" + topic}))).list_topics(topic=topic, timeout=WAIT_S)
    assert md.topics[topic].error is None and sorted(md.topics[topic].partitions) == [0, 1, 2]
    [m] = kafka_records(broker, topic, 1)
    assert (m.key(), m.value()) == (b"k", b"hello")


def test_tombstone_reads_as_empty_body_with_null_value_header(broker, amqp, topic):
    """A null Kafka value (tombstone) is an empty body with the header x-kafka-null-value: true
    (docs/kafka.md); the record's key stays."""
    create_topic(broker, topic, partitions=1)
    produce_all(Producer(broker.ck()), topic, [(b"gone", None), (b"kept", b"")])
    [(_, p0, b0), (_, p1, b1)] = amqp_read(amqp, topic, 2)
    assert (b0, (p0.headers or {}).get("x-kafka-null-value")) == (b"", True)
    assert header_bytes(p0.headers["x-message-key"]) == b"gone"
    assert (b1, "x-kafka-null-value" in (p1.headers or {})) == (b"", False)
    recs = http_get(broker, "/api/streams/%%2F/%s/messages" % topic, offset="first")["records"]
    assert [(r["message"]["payload"], r["message"]["headers"].get("x-kafka-null-value")) for r in recs] == [
        ("", True), ("", None)]


def test_kafka_group_offsets_are_the_stream_group_offsets(broker, topic):
    """Offsets a Kafka consumer group commits are the stream's group offsets (docs/kafka.md):
    HTTP shows them, and an offset committed over HTTP is where a Kafka member of the group starts."""
    create_topic(broker, topic, partitions=2)
    p = Producer(broker.ck())
    for i in range(10):
        p.produce(topic, b"m%d" % i, partition=i % 2)
    assert p.flush(WAIT_S) == 0
    group = "g-" + topic
    c = Consumer(broker.ck(**{"group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False}))
    c.subscribe([topic])
    got = consume_n(c, 10)
    c.commit(asynchronous=False)
    c.close()
    for part in (0, 1):
        o = http_get(broker, "/api/streams/%%2F/%s/offsets/%s" % (topic, group), partition=part)
        assert o.get("offset") == 5, (part, o)
    # Rewind partition 0 over HTTP: a new member of the group re-reads from there.
    p0 = sorted(m.offset() for m in got if m.partition() == 0)
    assert p0 == [0, 1, 2, 3, 4]
    r = requests.put(broker.http + "/api/streams/%%2F/%s/offsets/%s" % (topic, group),
                     json={"offset": 0, "partition": 0}, auth=(broker.user, broker.password), timeout=WAIT_S)
    assert r.status_code == 200, r.text
    c = Consumer(broker.ck(**{"group.id": group, "auto.offset.reset": "latest", "enable.auto.commit": False}))
    try:
        c.subscribe([topic])
        again = consume_n(c, len(p0))
        assert sorted((m.partition(), m.offset()) for m in again) == [(0, o) for o in p0]
        assert not [m for m in expect_no_more(c) if not m.error()]
    finally:
        c.close()
