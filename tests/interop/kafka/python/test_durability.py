"""Durability with a real process: records acknowledged with acks=all survive kill -9 of the
server; a restart on the same data directory hands out every one of them."""

import pytest
from confluent_kafka import Consumer, Producer

from kafka_support import WAIT_S, ck_raise, consume_n, create_topic, expect_no_more

pytestmark = pytest.mark.own_server


@pytest.mark.parametrize("idempotent", [False, True], ids=["acks-all", "idempotent"])
def test_acks_all_records_survive_kill_9(own_server, topic, idempotent):
    target = own_server.start()
    create_topic(target, topic, partitions=3)
    conf = {"acks": "all", "linger.ms": 2, "message.timeout.ms": 20000}
    if idempotent:
        conf["enable.idempotence"] = True
    p = Producer(target.ck(**conf))
    acked = {}
    errors = []
    n = 3000

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            acked[(msg.partition(), msg.offset())] = (msg.key(), msg.value())

    for i in range(n):
        while True:
            try:
                p.produce(topic, key=b"k%d" % (i % 50), value=b"v%d" % i, on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.01)
        p.poll(0)
    # Kill as soon as the last delivery report is in: nothing is flushed on a clean shutdown.
    while len(acked) + len(errors) < n:
        p.poll(0.01)
    own_server.kill()
    if errors:
        ck_raise(errors[0])
    assert len(acked) == n
    del p

    target = own_server.start()
    c = Consumer(target.ck(**{"group.id": "g-" + topic, "auto.offset.reset": "earliest",
                              "enable.auto.commit": False}))
    try:
        c.subscribe([topic])
        got = consume_n(c, n, timeout=WAIT_S * 2)
        got += [m for m in expect_no_more(c) if not m.error()]
    finally:
        c.close()
    seen = {(m.partition(), m.offset()): (m.key(), m.value()) for m in got}
    missing = sorted(set(acked) - set(seen))
    assert not missing, "%d acknowledged records lost after kill -9, e.g. %r" % (len(missing), missing[:10])
    assert all(seen[po] == acked[po] for po in acked)
    assert len(got) == n, "%d records after the restart, %d acknowledged" % (len(got), n)
    assert own_server.stop() == 0
