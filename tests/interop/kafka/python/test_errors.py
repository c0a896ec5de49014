"""Errors a client must see: OFFSET_OUT_OF_RANGE, UNKNOWN_TOPIC_OR_PARTITION (auto creation off),
a connection sending a garbage or oversized request size is closed (others keep working), and
ApiVersions at an unsupported version gets UNSUPPORTED_VERSION with the v0 fallback list."""

import struct
import time

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from kafka import KafkaConsumer
from kafka import TopicPartition as KpTopicPartition
from kafka.errors import OffsetOutOfRangeError

from kafka_support import (
    API_VERSIONS,
    FETCH,
    LIST_OFFSETS,
    METADATA,
    PRODUCE,
    UNSUPPORTED_VERSION,
    WAIT_S,
    Raw,
    compact_str,
    create_topic,
    parse_api_versions_v0,
    produce_all,
    unique,
)


def test_fetch_out_of_range_offset_with_reset_error(broker, topic, closing):
    """auto.offset.reset=error: the client reports the broker's OFFSET_OUT_OF_RANGE."""
    create_topic(broker, topic, partitions=1)
    produce_all(Producer(broker.ck()), topic, [(None, b"m%d" % i) for i in range(5)])
    c = closing(Consumer(broker.ck(**{"group.id": "g-" + topic, "auto.offset.reset": "error",
                                      "enable.auto.commit": False})))
    c.assign([TopicPartition(topic, 0, 1000)])
    deadline = time.monotonic() + WAIT_S
    while True:
        assert time.monotonic() < deadline, "no error for a fetch at offset 1000 of a 5-record partition"
        m = c.poll(0.2)
        if m is None:
            continue
        assert m.error() is not None, "got a record at offset %d" % m.offset()
        err = m.error()
        # librdkafka reports the broker's OFFSET_OUT_OF_RANGE wrapped as _AUTO_OFFSET_RESET when the
        # reset policy is "error"; either way the broker's error must be named.
        assert err.code() in (KafkaError.OFFSET_OUT_OF_RANGE, KafkaError._AUTO_OFFSET_RESET), err
        assert "out of range" in err.str().lower(), err.str()
        break


def test_fetch_out_of_range_kafka_python(broker, topic):
    """kafka-python with auto_offset_reset='none' raises OffsetOutOfRangeError."""
    create_topic(broker, topic, partitions=1)
    produce_all(Producer(broker.ck()), topic, [(None, b"m%d" % i) for i in range(3)])
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="none", enable_auto_commit=False)
    try:
        tp = KpTopicPartition(topic, 0)
        c.assign([tp])
        c.seek(tp, 500)
        deadline = time.monotonic() + WAIT_S
        with pytest.raises(OffsetOutOfRangeError):
            while time.monotonic() < deadline:
                assert c.poll(timeout_ms=200) == {}
    finally:
        c.close()


def test_produce_to_unknown_topic_without_auto_creation(no_autocreate_broker):
    target = no_autocreate_broker
    name = unique("it-unknown-")
    admin = AdminClient(target.ck())
    md = admin.list_topics(topic=name, timeout=WAIT_S)
    assert md.topics[name].error is not None and md.topics[name].error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART, \
        md.topics[name].error
    p = Producer(target.ck(**{"topic.metadata.propagation.max.ms": 500, "message.timeout.ms": 10000}))
    reports = []
    p.produce(name, b"x", on_delivery=lambda err, msg: reports.append(err))
    p.flush(WAIT_S)
    assert len(reports) == 1 and reports[0] is not None, "the produce to an unknown topic was acknowledged"
    assert reports[0].code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC), reports[0]
    assert name not in admin.list_topics(timeout=WAIT_S).topics


def still_working(target, topic):
    [m] = produce_all(Producer(target.ck()), topic, [(None, b"alive")])
    return m.offset()


@pytest.mark.parametrize("size", [
    pytest.param(struct.pack(">i", 0x7FFFFFFF), id="oversized"),
    pytest.param(struct.pack(">i", -1), id="negative"),
    pytest.param(struct.pack(">i", 0), id="zero"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http-garbage"),
])
def test_garbage_request_size_closes_only_that_connection(broker, topic, size):
    create_topic(broker, topic, partitions=1)
    bystander = Raw(broker)
    bystander.request(API_VERSIONS, 0, 1)
    assert parse_api_versions_v0(bystander.response())[:2] == (1, 0)
    assert still_working(broker, topic) == 0
    bad = Raw(broker)
    try:
        bad.send(size + b"\x00" * 64)
        bad.expect_closed()
    finally:
        bad.close()
    # The other connection, and new clients, are unaffected.
    bystander.request(API_VERSIONS, 0, 2)
    assert parse_api_versions_v0(bystander.response())[:2] == (2, 0)
    bystander.close()
    assert still_working(broker, topic) == 1


def test_api_versions_v0_lists_the_apis(broker):
    r = Raw(broker)
    r.request(API_VERSIONS, 0, 7)
    corr, err, apis = parse_api_versions_v0(r.response())
    r.close()
    assert (corr, err) == (7, 0)
    for key in (PRODUCE, FETCH, LIST_OFFSETS, METADATA, API_VERSIONS):
        assert key in apis, "ApiVersions lacks api key %d: %r" % (key, apis)
        lo, hi = apis[key]
        assert 0 <= lo <= hi, (key, lo, hi)
    assert apis[API_VERSIONS][1] >= 3  # librdkafka and the Java client start with v3


@pytest.mark.parametrize("version", [127, 32767])
def test_api_versions_unsupported_version_falls_back_to_v0(broker, version):
    """A too-new ApiVersions request gets UNSUPPORTED_VERSION in a v0 response with the full list
    (KIP-511: the client then retries with a version from it), and the connection stays usable."""
    r = Raw(broker)
    # v3+ request layout: header v2 (tagged fields), body client_software_name/version (compact).
    r.request(API_VERSIONS, version, 42, body=compact_str("raw") + compact_str("1.0") + b"\x00",
              flexible_header=True)
    corr, err, apis = parse_api_versions_v0(r.response())
    assert (corr, err) == (42, UNSUPPORTED_VERSION)
    assert API_VERSIONS in apis and apis[API_VERSIONS][0] == 0
    assert METADATA in apis
    # The fallback works on the same connection.
    r.request(API_VERSIONS, 0, 43)
    assert parse_api_versions_v0(r.response())[:2] == (43, 0)
    r.close()
