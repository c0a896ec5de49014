"""aiokafka: AIOKafkaProducer.send_and_wait (acks=all) and AIOKafkaConsumer in a group."""

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from kafka_support import WAIT_S, create_topic


async def produce(broker, topic, n):
    p = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", request_timeout_ms=int(WAIT_S * 1000))
    await p.start()
    try:
        metas = []
        for i in range(n):
            metas.append(await p.send_and_wait(topic, b"v%d" % i, key=b"k%d" % (i % 3),
                                               headers=[("i", b"%d" % i)]))
        return metas
    finally:
        await p.stop()


async def consume_group(broker, topic, group, n):
    c = AIOKafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id=group, auto_offset_reset="earliest",
                         enable_auto_commit=False, session_timeout_ms=6000, heartbeat_interval_ms=300)
    await c.start()
    try:
        got = []
        async def fill():
            while len(got) < n:
                batches = await c.getmany(timeout_ms=200, max_records=500)
                for records in batches.values():
                    got.extend(records)
        await asyncio.wait_for(fill(), WAIT_S)
        await c.commit()
        committed = {tp.partition: await c.committed(tp) for tp in c.assignment()}
        return got, committed
    finally:
        await c.stop()


def test_send_and_wait_then_group_consumer(broker, topic):
    create_topic(broker, topic, partitions=3)
    metas = asyncio.run(produce(broker, topic, 30))
    assert [m.topic for m in metas] == [topic] * 30
    assert len({(m.partition, m.offset) for m in metas}) == 30
    group = "g-" + topic
    got, committed = asyncio.run(consume_group(broker, topic, group, 30))
    assert sorted(r.value for r in got) == sorted(b"v%d" % i for i in range(30))
    for r in got:
        i = int(r.value[1:])
        assert (r.key, list(r.headers)) == (b"k%d" % (i % 3), [("i", b"%d" % i)])
    ends = {}
    for m in metas:
        ends[m.partition] = max(ends.get(m.partition, 0), m.offset + 1)
    assert {p: o for p, o in committed.items() if p in ends} == ends

    async def again():
        c = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False)
        await c.start()
        try:
            return {p: await c.committed(TopicPartition(topic, p)) for p in ends}
        finally:
            await c.stop()
    assert asyncio.run(again()) == ends
