"""confluent-kafka (librdkafka 2.x): an idempotent producer into a 6-partition topic, a consumer
group that grows from 2 to 3 members (rebalance), committed offsets, and a group that resumes from
its committed offsets after the server restarts on the same data directory."""

import collections
import time

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from kafka_support import WAIT_S, ck_raise, consume_n, create_topic, expect_no_more, produce_all

PARTITIONS = 6
N = 6000


def idempotent_producer(target):
    return Producer(target.ck(**{"enable.idempotence": True, "acks": "all", "linger.ms": 5,
                                 "message.timeout.ms": 30000}))


def member(target, group, name):
    return Consumer(target.ck(**{
        "group.id": group, "client.id": name, "auto.offset.reset": "earliest", "enable.auto.commit": False,
        "session.timeout.ms": 6000, "heartbeat.interval.ms": 300, "max.poll.interval.ms": 60000,
        "enable.partition.eof": False, "partition.assignment.strategy": "range",
    }))


class Member:
    """One group member: what it consumed, its assignment as rebalance callbacks reported it."""

    def __init__(self, target, group, topic, name):
        self.name = name
        self.c = member(target, group, name)
        self.assigned = set()
        self.got = []  # (partition, offset, key, value)
        self.c.subscribe([topic], on_assign=self._on_assign, on_revoke=self._on_revoke)

    def _on_assign(self, c, parts):
        self.assigned = {p.partition for p in parts}

    def _on_revoke(self, c, parts):
        self.assigned = set()

    def poll(self, timeout=0.05):
        """One batch, then a synchronous commit of what it consumed (at-least-once)."""
        msgs = self.c.consume(num_messages=500, timeout=timeout)
        for m in msgs:
            if m.error():
                ck_raise(m.error())
            self.got.append((m.partition(), m.offset(), m.key(), m.value()))
        if msgs:
            try:
                self.c.commit(asynchronous=False)
            except KafkaException as e:
                # A rebalance between the batch and its commit: the next owner re-reads (at-least-once).
                if e.args[0].code() not in (KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION,
                                            KafkaError._NO_OFFSET):
                    raise
        return len(msgs)

    def close(self):
        self.c.close()


def pump(members, until, timeout=WAIT_S * 2, what="condition"):
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %ss waiting for %s; assignments %r, consumed %r" % (
                timeout, what, {m.name: sorted(m.assigned) for m in members},
                {m.name: len(m.got) for m in members}))
        for m in members:
            m.poll()


def committed(target, group, topic):
    c = Consumer(target.ck(**{"group.id": group, "enable.auto.commit": False}))
    try:
        parts = c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=WAIT_S)
        for p in parts:
            if p.error:
                ck_raise(p.error)
        return {p.partition: p.offset for p in parts}
    finally:
        c.close()


def keyed(start, n):
    return [(b"key-%d" % (i % 200), b"value-%d" % i) for i in range(start, start + n)]


@pytest.mark.own_server
def test_idempotent_producer_group_rebalance_and_resume_after_restart(own_server, topic):
    target = own_server.start()
    create_topic(target, topic, partitions=PARTITIONS)
    group = "g-" + topic
    producer = idempotent_producer(target)

    # Phase 1: two members share the 6 partitions, then half the records.
    m1, m2 = Member(target, group, topic, "m1"), Member(target, group, topic, "m2")
    members = [m1, m2]
    pump(members, lambda: len(m1.assigned) == 3 and len(m2.assigned) == 3,
         what="a 3/3 assignment of two members")
    first = produce_all(producer, topic, keyed(0, N // 2), timeout=60)
    produced = {(m.partition(), m.offset()): (m.key(), m.value()) for m in first}
    assert len(produced) == N // 2, "the idempotent producer got duplicate (partition, offset) pairs"
    by_key = collections.defaultdict(set)
    for (p, _), (k, _) in produced.items():
        by_key[k].add(p)
    assert all(len(ps) == 1 for ps in by_key.values()), "a key went to more than one partition"
    for p in range(PARTITIONS):
        offsets = sorted(o for (q, o) in produced if q == p)
        assert offsets == list(range(len(offsets))), "partition %d offsets are not 0..n-1: %r" % (p, offsets[:10])

    pump(members, lambda: sum(len(m.got) for m in members) >= N // 2, what="phase 1 consumed by 2 members")
    assert not (m1.assigned & m2.assigned)
    assert m1.assigned | m2.assigned == set(range(PARTITIONS))
    before = committed(target, group, topic)
    per_partition = collections.Counter(p for p, _ in produced)
    assert before == {p: per_partition[p] for p in range(PARTITIONS)}, "phase 1 not fully committed"

    # Phase 2: a third member joins; the group rebalances over the 6 partitions.
    m3 = Member(target, group, topic, "m3")
    members.append(m3)
    pump(members, lambda: all(len(m.assigned) == 2 for m in members)
         and set().union(*(m.assigned for m in members)) == set(range(PARTITIONS)),
         what="a 2/2/2 assignment after the third member joined")
    second = produce_all(producer, topic, keyed(N // 2, N // 2), timeout=60)
    for m in second:
        produced[(m.partition(), m.offset())] = (m.key(), m.value())
    assert len(produced) == N
    pump(members, lambda: {(p, o) for m in members for p, o, _, _ in m.got} >= set(produced),
         what="every produced record consumed")
    assert len(m3.got) > 0, "the third member consumed nothing"

    seen = collections.Counter((p, o) for m in members for p, o, _, _ in m.got)
    for m in members:
        for p, o, k, v in m.got:
            assert produced[(p, o)] == (k, v), "record %d/%d consumed as %r, produced as %r" % (p, o, (k, v), produced[(p, o)])
        # Within one member, each partition is read in offset order.
        for p in range(PARTITIONS):
            offs = [o for q, o, _, _ in m.got if q == p]
            assert offs == sorted(offs), "%s read partition %d out of order" % (m.name, p)
    dups = {po: n for po, n in seen.items() if n > 1}
    # At-least-once: only records past the committed offset at the rebalance may be read twice.
    assert all(o >= before[p] for (p, o) in dups), "records committed before the rebalance were re-read: %r" % sorted(dups)[:20]
    assert not (set(seen) - set(produced)), "consumed records that were never produced"

    for m in members:
        extra = expect_no_more(m.c, 0.3)
        assert not extra
    after = committed(target, group, topic)
    per_partition = collections.Counter(p for p, _ in produced)
    assert after == {p: per_partition[p] for p in range(PARTITIONS)}
    for m in members:
        m.close()

    # Records produced after the last commit, then a restart on the same data directory.
    tail = produce_all(producer, topic, keyed(N, 300))
    producer.flush(WAIT_S)
    del producer
    assert own_server.stop() == 0
    target = own_server.start()
    assert committed(target, group, topic) == after, "committed offsets did not survive the restart"
    resumed = Member(target, group, topic, "m4")
    want = {(m.partition(), m.offset()) for m in tail}
    pump([resumed], lambda: {(p, o) for p, o, _, _ in resumed.got} >= want, what="the 300 records after the commit")
    extra = expect_no_more(resumed.c)
    got = {(p, o) for p, o, _, _ in resumed.got} | {(m.partition(), m.offset()) for m in extra}
    early = sorted((p, o) for p, o in got if o < after[p])
    assert not early, "records before the committed offset were read again after the restart: %r" % early[:20]
    assert got == want
    resumed.close()
    assert own_server.stop() == 0


def test_idempotent_producer_sends_in_order_per_key(broker, topic, closing):
    """Order within a partition is the produce order (idempotence with up to 5 in flight)."""
    create_topic(broker, topic, partitions=2)
    p = Producer(broker.ck(**{"enable.idempotence": True, "acks": "all", "linger.ms": 0,
                              "max.in.flight.requests.per.connection": 5, "batch.num.messages": 10}))
    delivered = produce_all(p, topic, [(b"k%d" % (i % 2), b"%d" % i) for i in range(500)])
    by_partition = collections.defaultdict(list)
    for m in delivered:
        by_partition[m.partition()].append((m.offset(), int(m.value())))
    for p_, rows in by_partition.items():
        rows.sort()
        values = [v for _, v in rows]
        assert values == sorted(values), "partition %d is not in produce order" % p_
    c = closing(Consumer(broker.ck(**{"group.id": "g-" + topic, "auto.offset.reset": "earliest"})))
    c.subscribe([topic])
    got = consume_n(c, 500)
    assert sorted(int(m.value()) for m in got) == list(range(500))


def light_member(target, group, name, **extra):
    conf = {"group.id": group, "client.id": name, "auto.offset.reset": "earliest", "enable.auto.commit": True,
            "auto.commit.interval.ms": 200, "session.timeout.ms": 6000, "heartbeat.interval.ms": 300}
    conf.update(extra)
    return Consumer(target.ck(**conf))


def test_cooperative_sticky_rebalance(broker, topic, closing):
    """KIP-429 incremental rebalancing (librdkafka's cooperative-sticky): a third member joins
    without the others giving up the partitions they keep."""
    create_topic(broker, topic, partitions=PARTITIONS)
    group = "g-" + topic
    members = []
    owned = {}

    def add(name):
        c = closing(light_member(broker, group, name, **{"partition.assignment.strategy": "cooperative-sticky"}))
        owned[name] = set()
        revoked_kept = []

        def on_assign(consumer, parts):
            owned[name] |= {p.partition for p in parts}

        def on_revoke(consumer, parts):
            gone = {p.partition for p in parts}
            revoked_kept.append(gone)
            owned[name] -= gone

        c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
        members.append((name, c, revoked_kept))

    def pump_until(pred, what):
        deadline = time.monotonic() + WAIT_S * 2
        while not pred():
            assert time.monotonic() < deadline, "timed out waiting for %s; owned %r" % (what, owned)
            for _, c, _ in members:
                m = c.poll(0.05)
                if m is not None and m.error():
                    ck_raise(m.error())

    add("a")
    add("b")
    pump_until(lambda: sorted(len(v) for v in owned.values()) == [3, 3], "3/3")
    before = {k: set(v) for k, v in owned.items()}
    add("c")
    pump_until(lambda: sorted(len(v) for v in owned.values()) == [2, 2, 2], "2/2/2")
    # Incremental: a and b only gave up partitions; they kept 2 of their 3 each.
    for name in ("a", "b"):
        assert owned[name] <= before[name], (name, before, owned)
    assert set().union(*owned.values()) == set(range(PARTITIONS))


def test_static_member_rejoins_with_its_assignment(broker, topic, closing):
    """KIP-345 static membership: a member with group.instance.id that closes and comes back
    within the session timeout gets its partitions back."""
    create_topic(broker, topic, partitions=4)
    group = "g-" + topic
    owned, assigns = {}, {}

    def member_with(instance):
        c = light_member(broker, group, instance, **{"group.instance.id": instance, "session.timeout.ms": 10000})

        def on_assign(consumer, parts):
            owned[instance] = {p.partition for p in parts}
            assigns[instance] = assigns.get(instance, 0) + 1

        c.subscribe([topic], on_assign=on_assign)
        return c

    a, b = member_with("static-a"), closing(member_with("static-b"))

    def pump(cs, pred, what):
        deadline = time.monotonic() + WAIT_S * 2
        while not pred():
            assert time.monotonic() < deadline, "timed out waiting for %s; owned %r" % (what, owned)
            for c in cs:
                c.poll(0.05)

    pump([a, b], lambda: len(owned.get("static-a", ())) == 2 and len(owned.get("static-b", ())) == 2, "2/2")
    first, b_assigns = dict(owned), assigns["static-b"]
    a.close()  # a static member's close sends no LeaveGroup: no rebalance
    owned.pop("static-a")
    a = closing(member_with("static-a"))
    pump([a, b], lambda: "static-a" in owned, "static-a assigned again")
    assert owned["static-a"] == first["static-a"]
    # The other member saw no rebalance at all.
    for _ in range(10):
        b.poll(0.05)
    assert (owned["static-b"], assigns["static-b"]) == (first["static-b"], b_assigns)
