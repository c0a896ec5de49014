"""kafka-python 2.x: KafkaProducer (acks=all), KafkaConsumer (group, commit, seek_to_beginning,
offsets_for_times) and KafkaAdminClient (create/delete topics, describe configs)."""

import time

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import TopicAlreadyExistsError

from kafka_support import WAIT_S, wait_until

MS = int(WAIT_S * 1000)


@pytest.fixture
def kadmin(broker):
    a = KafkaAdminClient(bootstrap_servers=broker.bootstrap, client_id="kp-admin", request_timeout_ms=MS)
    yield a
    a.close()


def kp_topic(kadmin, topic, partitions):
    kadmin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)], timeout_ms=MS)
    wait_until(lambda: topic in kadmin.list_topics(), what="topic %s listed" % topic)


def consumer(broker, *topics, **kw):
    conf = dict(bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
                consumer_timeout_ms=200, request_timeout_ms=MS + 1000, session_timeout_ms=6000,
                heartbeat_interval_ms=300)
    conf.update(kw)
    return KafkaConsumer(*topics, **conf)


def poll_n(c, n, timeout=WAIT_S):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        assert time.monotonic() < deadline, "got %d of %d records within %ss" % (len(got), n, timeout)
        for records in c.poll(timeout_ms=200, max_records=500).values():
            got.extend(records)
    return got


def test_producer_acks_all_and_group_consumer_commits(broker, kadmin, topic):
    kp_topic(kadmin, topic, 2)
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", retries=3, linger_ms=5)
    futures = [p.send(topic, key=b"k%d" % (i % 4), value=b"v%d" % i, headers=[("n", b"%d" % i)])
               for i in range(100)]
    metas = [f.get(timeout=WAIT_S) for f in futures]
    p.close()
    assert {(m.topic, m.partition) for m in metas} <= {(topic, 0), (topic, 1)}
    assert len({(m.partition, m.offset) for m in metas}) == 100

    group = "g-" + topic
    c = consumer(broker, topic, group_id=group)
    got = poll_n(c, 100)
    assert sorted(r.value for r in got) == sorted(b"v%d" % i for i in range(100))
    for r in got:
        assert r.headers == [("n", r.value[1:])] and r.key == b"k%d" % (int(r.value[1:]) % 4)
    c.commit()
    committed = {p_: c.committed(TopicPartition(topic, p_)) for p_ in (0, 1)}
    per = {p_: sum(1 for m in metas if m.partition == p_) for p_ in (0, 1)}
    assert committed == per
    c.close()

    # Same group again: nothing left; seek_to_beginning re-reads everything.
    c = consumer(broker, topic, group_id=group)

    def assigned_and_nothing_to_read():
        assert c.poll(timeout_ms=100) == {}, "records re-read after they were committed"
        return c.assignment()
    wait_until(assigned_and_nothing_to_read, what="the group's assignment")
    c.seek_to_beginning()
    assert len(poll_n(c, 100)) == 100
    c.close()


def test_offsets_for_times(broker, kadmin, topic):
    kp_topic(kadmin, topic, 1)
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    base = int(time.time() * 1000) - 50_000
    for i in range(6):
        p.send(topic, value=b"m%d" % i, timestamp_ms=base + i * 1000).get(timeout=WAIT_S)
    p.close()
    c = consumer(broker)
    tp = TopicPartition(topic, 0)
    c.assign([tp])
    found = c.offsets_for_times({tp: base + 3000})[tp]
    assert (found.offset, found.timestamp) == (3, base + 3000)
    assert c.offsets_for_times({tp: base + 3500})[tp].offset == 4
    assert c.offsets_for_times({tp: base + 600_000})[tp] is None
    assert (c.beginning_offsets([tp])[tp], c.end_offsets([tp])[tp]) == (0, 6)
    c.seek(tp, found.offset)
    got = poll_n(c, 3)
    assert [(r.offset, r.value, r.timestamp) for r in got] == [(3 + i, b"m%d" % (3 + i), base + (3 + i) * 1000)
                                                               for i in range(3)]
    c.close()


def test_admin_create_describe_delete(broker, kadmin, topic):
    kp_topic(kadmin, topic, 3)
    with pytest.raises(TopicAlreadyExistsError):
        kadmin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)], timeout_ms=MS)
    described = kadmin.describe_topics([topic])
    assert [(t["topic"], sorted(p["partition"] for p in t["partitions"])) for t in described] == [(topic, [0, 1, 2])]
    [resp] = kadmin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    [(err, _, _, name, entries)] = [r[:5] for r in resp.resources]
    assert (err, name) == (0, topic)
    keys = {e[0]: e[1] for e in entries}
    for k in ("retention.ms", "retention.bytes", "segment.bytes", "cleanup.policy"):
        assert k in keys, sorted(keys)
    kadmin.delete_topics([topic], timeout_ms=MS)
    wait_until(lambda: topic not in kadmin.list_topics(), what="topic gone")
