"""confluent-kafka AdminClient (and the consumer's offset look-ups): topics, partitions, configs,
consumer groups, offsets, delete_records."""

import time

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    OffsetSpec,
    ResourceType,
)

from kafka_support import WAIT_S, consume_n, produce_all, wait_until

RETENTION_KEYS = ("retention.ms", "retention.bytes", "segment.bytes", "cleanup.policy")


@pytest.fixture
def admin(broker):
    return AdminClient(broker.ck())


def kafka_error(excinfo):
    err = excinfo.value.args[0]
    assert isinstance(err, KafkaError), excinfo.value
    return err


def topic_partitions(admin, topic):
    md = admin.list_topics(topic=topic, timeout=WAIT_S).topics[topic]
    if md.error is not None:
        return None
    return sorted(md.partitions)


def describe(admin, topic):
    res = ConfigResource(ResourceType.TOPIC, topic)
    return admin.describe_configs([res], request_timeout=WAIT_S)[res].result(WAIT_S)


def test_create_topic_then_already_exists(admin, topic):
    fs = admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)], operation_timeout=WAIT_S)
    assert fs[topic].result(WAIT_S) is None
    assert wait_until(lambda: topic_partitions(admin, topic) == [0, 1, 2], what="3 partitions in metadata")
    md = admin.list_topics(timeout=WAIT_S)
    assert topic in md.topics
    assert [b.id for b in md.brokers.values()] == [0]
    again = admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)], operation_timeout=WAIT_S)
    with pytest.raises(KafkaException) as e:
        again[topic].result(WAIT_S)
    assert kafka_error(e).code() == KafkaError.TOPIC_ALREADY_EXISTS


def test_create_topic_with_config_and_validate_only(admin, topic):
    fs = admin.create_topics([NewTopic(topic, 1, 1, config={"retention.ms": "3600000"})], operation_timeout=WAIT_S)
    fs[topic].result(WAIT_S)
    assert describe(admin, topic)["retention.ms"].value == "3600000"
    other = topic + "-dry"
    admin.create_topics([NewTopic(other, 2, 1)], validate_only=True, operation_timeout=WAIT_S)[other].result(WAIT_S)
    assert other not in admin.list_topics(timeout=WAIT_S).topics


def test_create_partitions(admin, topic):
    create_topic_via(admin, topic, 2)
    admin.create_partitions([NewPartitions(topic, 5)], operation_timeout=WAIT_S)[topic].result(WAIT_S)
    wait_until(lambda: topic_partitions(admin, topic) == [0, 1, 2, 3, 4], what="5 partitions in metadata")
    # Fewer than now is refused (INVALID_PARTITIONS).
    with pytest.raises(KafkaException) as e:
        admin.create_partitions([NewPartitions(topic, 3)], operation_timeout=WAIT_S)[topic].result(WAIT_S)
    assert kafka_error(e).code() == KafkaError.INVALID_PARTITIONS


def create_topic_via(admin, topic, partitions):
    admin.create_topics([NewTopic(topic, partitions, 1)], operation_timeout=WAIT_S)[topic].result(WAIT_S)
    wait_until(lambda: topic_partitions(admin, topic) == list(range(partitions)), what="topic in metadata")


def test_describe_configs_has_retention_keys(admin, topic):
    create_topic_via(admin, topic, 1)
    configs = describe(admin, topic)
    for k in RETENTION_KEYS:
        assert k in configs, "describe_configs lacks %s: %r" % (k, sorted(configs))
    assert configs["cleanup.policy"].value == "delete"


def test_alter_configs_replaces_retention(admin, topic):
    create_topic_via(admin, topic, 1)
    res = ConfigResource(ResourceType.TOPIC, topic, set_config={
        "retention.ms": "7200000", "retention.bytes": "104857600", "segment.bytes": "16777216"})
    admin.alter_configs([res], request_timeout=WAIT_S)[res].result(WAIT_S)
    configs = describe(admin, topic)
    assert {k: configs[k].value for k in ("retention.ms", "retention.bytes", "segment.bytes")} == {
        "retention.ms": "7200000", "retention.bytes": "104857600", "segment.bytes": "16777216"}
    assert not configs["retention.ms"].is_default


def test_incremental_alter_configs_set_and_delete(admin, topic):
    create_topic_via(admin, topic, 1)
    default_ms = describe(admin, topic)["retention.ms"].value
    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.ms", "60000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("retention.bytes", "5000000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("cleanup.policy", "delete", incremental_operation=AlterConfigOpType.SET),
    ])
    admin.incremental_alter_configs([res], request_timeout=WAIT_S)[res].result(WAIT_S)
    configs = describe(admin, topic)
    assert (configs["retention.ms"].value, configs["retention.bytes"].value, configs["cleanup.policy"].value) == (
        "60000", "5000000", "delete")
    # DELETE reverts one key to its default and leaves the other.
    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE)])
    admin.incremental_alter_configs([res], request_timeout=WAIT_S)[res].result(WAIT_S)
    configs = describe(admin, topic)
    assert configs["retention.ms"].value == default_ms
    assert configs["retention.bytes"].value == "5000000"


@pytest.mark.parametrize("key,value", [("retention.ms", "not-a-number"), ("cleanup.policy", "compact")],
                         ids=["not-a-number", "compact"])
def test_incremental_alter_invalid_value_fails(admin, topic, key, value):
    """An invalid value, and log compaction (FerryMQ does not compact: docs/kafka.md), get INVALID_CONFIG."""
    create_topic_via(admin, topic, 1)
    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)])
    with pytest.raises(KafkaException) as e:
        admin.incremental_alter_configs([res], request_timeout=WAIT_S)[res].result(WAIT_S)
    assert kafka_error(e).code() == KafkaError.INVALID_CONFIG


def test_delete_topics(admin, topic):
    create_topic_via(admin, topic, 2)
    admin.delete_topics([topic], operation_timeout=WAIT_S)[topic].result(WAIT_S)
    wait_until(lambda: topic not in admin.list_topics(timeout=WAIT_S).topics, what="topic gone from metadata")
    with pytest.raises(KafkaException) as e:
        admin.delete_topics([topic], operation_timeout=WAIT_S)[topic].result(WAIT_S)
    assert kafka_error(e).code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_consumer_groups_list_describe_delete(broker, admin, topic, closing):
    create_topic_via(admin, topic, 2)
    p = Producer(broker.ck())
    produce_all(p, topic, [(None, b"%d" % i) for i in range(10)])
    group = "g-" + topic
    c = closing(Consumer(broker.ck(**{"group.id": group, "client.id": "member-a", "auto.offset.reset": "earliest",
                                      "enable.auto.commit": False})))
    c.subscribe([topic])
    consume_n(c, 10)
    c.commit(asynchronous=False)

    listed = admin.list_consumer_groups(request_timeout=WAIT_S).result(WAIT_S)
    assert group in {g.group_id for g in listed.valid}, listed.valid
    assert group in {g.id for g in admin.list_groups(timeout=WAIT_S)}
    desc = admin.describe_consumer_groups([group], request_timeout=WAIT_S)[group].result(WAIT_S)
    assert desc.group_id == group
    assert [m.client_id for m in desc.members] == ["member-a"]
    assert sorted(tp.partition for tp in desc.members[0].assignment.topic_partitions) == [0, 1]
    assert str(desc.state).endswith("STABLE"), desc.state

    # A group with a live member cannot be deleted (NON_EMPTY_GROUP); once it is empty it can.
    with pytest.raises(KafkaException) as e:
        admin.delete_consumer_groups([group], request_timeout=WAIT_S)[group].result(WAIT_S)
    assert kafka_error(e).code() == KafkaError.NON_EMPTY_GROUP
    c.close()
    wait_until(lambda: str(admin.describe_consumer_groups([group], request_timeout=WAIT_S)[group]
                           .result(WAIT_S).state).endswith("EMPTY"), what="group empty after close")
    admin.delete_consumer_groups([group], request_timeout=WAIT_S)[group].result(WAIT_S)
    listed = admin.list_consumer_groups(request_timeout=WAIT_S).result(WAIT_S)
    assert group not in {g.group_id for g in listed.valid}
    # Its committed offsets went with it.
    fresh = closing(Consumer(broker.ck(**{"group.id": group})))
    assert [tp.offset for tp in fresh.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)],
                                                timeout=WAIT_S)] == [-1001, -1001]


def test_list_offsets_and_offsets_for_times(broker, admin, topic, closing):
    create_topic_via(admin, topic, 1)
    p = Producer(broker.ck())
    base = int(time.time() * 1000) - 100_000
    # Explicit CreateTime timestamps, 1 s apart.
    produce_all(p, topic, [(None, b"m%d" % i, None, base + i * 1000) for i in range(10)])
    tp = TopicPartition(topic, 0)
    specs = {"earliest": OffsetSpec.earliest(), "latest": OffsetSpec.latest(), "t5": OffsetSpec.for_timestamp(base + 5000),
             "t4.5": OffsetSpec.for_timestamp(base + 4500)}
    got = {}
    for name, spec in specs.items():
        got[name] = admin.list_offsets({tp: spec}, request_timeout=WAIT_S)[tp].result(WAIT_S)
    assert got["earliest"].offset == 0
    assert got["latest"].offset == 10
    assert (got["t5"].offset, got["t5"].timestamp) == (5, base + 5000)
    assert got["t4.5"].offset == 5
    c = closing(Consumer(broker.ck(**{"group.id": "g-" + topic})))
    [r] = c.offsets_for_times([TopicPartition(topic, 0, base + 7000)], timeout=WAIT_S)
    assert (r.error, r.offset) == (None, 7)
    [r] = c.offsets_for_times([TopicPartition(topic, 0, base + 60_000)], timeout=WAIT_S)
    assert r.offset == -1  # no record at or after: the end (Kafka answers -1)
    assert c.get_watermark_offsets(tp, timeout=WAIT_S) == (0, 10)


def test_delete_records(broker, admin, topic, closing):
    create_topic_via(admin, topic, 1)
    produce_all(Producer(broker.ck()), topic, [(None, b"m%d" % i) for i in range(10)])
    tp = TopicPartition(topic, 0, 6)
    res = admin.delete_records([tp], request_timeout=WAIT_S)
    [(k, f)] = list(res.items())
    deleted = f.result(WAIT_S)
    assert getattr(deleted, "low_watermark", getattr(deleted, "offset", None)) == 6
    earliest = admin.list_offsets({TopicPartition(topic, 0): OffsetSpec.earliest()},
                                  request_timeout=WAIT_S)[TopicPartition(topic, 0)].result(WAIT_S)
    assert earliest.offset == 6
    c = closing(Consumer(broker.ck(**{"group.id": "g-" + topic, "auto.offset.reset": "earliest"})))
    c.subscribe([topic])
    assert [m.value() for m in consume_n(c, 4)] == [b"m6", b"m7", b"m8", b"m9"]


def test_list_offsets_max_timestamp(broker, admin, topic):
    """OffsetSpec.max_timestamp (ListOffsets v7): the record with the largest timestamp."""
    create_topic_via(admin, topic, 1)
    base = int(time.time() * 1000) - 100_000
    stamps = [base + 3000, base + 9000, base + 1000]
    produce_all(Producer(broker.ck()), topic, [(None, b"m%d" % i, None, t) for i, t in enumerate(stamps)])
    tp = TopicPartition(topic, 0)
    r = admin.list_offsets({tp: OffsetSpec.max_timestamp()}, request_timeout=WAIT_S)[tp].result(WAIT_S)
    assert (r.offset, r.timestamp) == (1, base + 9000)
