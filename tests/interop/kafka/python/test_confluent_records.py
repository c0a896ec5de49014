"""confluent-kafka record shapes: compression codecs, null values (tombstones) and keys, empty
values, binary headers (null included), a large record, and explicit partitions."""

import pytest
from confluent_kafka import Consumer, Producer

from kafka_support import consume_n, create_topic, expect_no_more, produce_all


def read_all(broker, topic, n, closing):
    c = closing(Consumer(broker.ck(**{"group.id": "g-" + topic, "auto.offset.reset": "earliest",
                                      "fetch.max.bytes": 4 * 1024 * 1024})))
    c.subscribe([topic])
    got = consume_n(c, n)
    assert not [m for m in expect_no_more(c, 0.3) if not m.error()]
    return sorted(got, key=lambda m: (m.partition(), m.offset()))


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_compressed_batches_round_trip(broker, topic, closing, codec):
    create_topic(broker, topic, partitions=2)
    p = Producer(broker.ck(**{"compression.type": codec, "linger.ms": 20, "acks": "all"}))
    records = [(b"k%d" % (i % 7), (b"payload-%d-" % i) * 20, [("i", b"%d" % i)]) for i in range(500)]
    produce_all(p, topic, records)
    got = read_all(broker, topic, 500, closing)
    assert sorted((m.key(), m.value(), tuple(m.headers())) for m in got) == \
        sorted((k, v, tuple(h)) for k, v, h in records)


def test_null_value_null_key_empty_value_and_null_header(broker, topic, closing):
    create_topic(broker, topic, partitions=1)
    p = Producer(broker.ck())
    produce_all(p, topic, [
        (b"tombstone", None),
        (None, b"no key"),
        (b"empty", b""),
        (b"h", b"v", [("null", None), ("bin", b"\x00\x01\xff"), ("dup", b"1"), ("dup", b"2")]),
    ])
    got = read_all(broker, topic, 4, closing)
    assert [(m.key(), m.value()) for m in got] == [(b"tombstone", None), (None, b"no key"), (b"empty", b""),
                                                   (b"h", b"v")]
    assert got[3].headers() == [("null", None), ("bin", b"\x00\x01\xff"), ("dup", b"1"), ("dup", b"2")]


def test_large_record(broker, topic, closing):
    create_topic(broker, topic, partitions=1)
    big = bytes(range(256)) * 3000  # 768,000 bytes
    produce_all(Producer(broker.ck(**{"message.max.bytes": 1_000_000})), topic, [(b"big", big)])
    [m] = read_all(broker, topic, 1, closing)
    assert m.value() == big


def test_explicit_partitions_and_offsets(broker, topic, closing):
    create_topic(broker, topic, partitions=3)
    p = Producer(broker.ck())
    for part in (2, 0, 2, 1, 2):
        p.produce(topic, b"to-%d" % part, partition=part)
    assert p.flush(10) == 0
    got = read_all(broker, topic, 5, closing)
    assert [(m.partition(), m.offset(), m.value()) for m in got] == [
        (0, 0, b"to-0"), (1, 0, b"to-1"), (2, 0, b"to-2"), (2, 1, b"to-2"), (2, 2, b"to-2")]


def test_produce_auto_creates_topic_with_default_partitions(broker, topic, closing):
    """kafka.auto_create_topics (default on): producing to an unknown topic creates it with
    kafka.default_partitions (1) partitions, as a stream."""
    [m] = produce_all(Producer(broker.ck()), topic, [(b"k", b"first")])
    assert (m.partition(), m.offset()) == (0, 0)
    md = closing(Consumer(broker.ck(**{"group.id": "g-" + topic}))).list_topics(topic=topic, timeout=10)
    assert md.topics[topic].error is None and sorted(md.topics[topic].partitions) == [0]
    [got] = read_all(broker, topic, 1, closing)
    assert got.value() == b"first"
