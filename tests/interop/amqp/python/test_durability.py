"""Durability with a real process: kill -9 FerryMQ and restart it on the same data directory.

FerryMQ only (skipped when AMQP_URL points at another broker)."""

import contextlib

import pika

from amqp_support import consume, exchange_exists, get_all, needs_own_server, queue_exists

N = 30
ACKED = range(0, 10)  # consumed and acked before the crash
UNACKED = range(10, 20)  # delivered, not acked at the crash
UNTOUCHED = range(20, N)  # never delivered before the crash


@needs_own_server
def test_kill_9_keeps_confirmed_and_unacked_drops_acked(own_server):
    broker = own_server.start()
    c = broker.connect()
    ch = c.channel()
    ch.queue_declare("durable.q", durable=True)
    ch.exchange_declare("durable.x", "topic", durable=True)
    ch.queue_bind("durable.q", "durable.x", "orders.#")
    ch.queue_declare("transient.q", durable=False)
    ch.confirm_delivery()
    for i in range(N):
        # Every basic_publish here returned after its basic.ack: each message is confirmed.
        ch.basic_publish("durable.x", "orders.new", b"%d" % i,
                         pika.BasicProperties(delivery_mode=2, message_id="m%d" % i, headers={"i": i}))
    ch.basic_publish("", "durable.q", b"transient", pika.BasicProperties(delivery_mode=1))

    consumer = c.channel()
    consumer.basic_qos(prefetch_count=len(ACKED) + len(UNACKED))
    got = consume(consumer, "durable.q", len(ACKED) + len(UNACKED))
    assert [b for _, _, b in got] == [b"%d" % i for i in list(ACKED) + list(UNACKED)]
    for method, _, body in got:
        if int(body) in ACKED:
            consumer.basic_ack(method.delivery_tag)
    # A synchronous round trip on the same channel: the broker has processed the acks before the kill.
    consumer.basic_qos(prefetch_count=1)

    own_server.kill()
    with contextlib.suppress(Exception):
        c.close()

    broker = own_server.start()
    assert queue_exists(broker, "durable.q")
    assert exchange_exists(broker, "durable.x")
    assert not queue_exists(broker, "transient.q")
    c = broker.connect()
    ch = c.channel()
    ch.confirm_delivery()
    remaining = len(UNACKED) + len(UNTOUCHED)
    assert ch.queue_declare("durable.q", passive=True).method.message_count == remaining
    after = get_all(ch, "durable.q", expect=remaining)
    by_body = {int(b): (m, p) for m, p, b in after if b != b"transient"}
    assert b"transient" not in [b for _, _, b in after], "a transient message survived the restart"
    # Acked: gone. Unacked at the crash: back, flagged redelivered. Every confirmed message: present.
    assert sorted(by_body) == list(UNACKED) + list(UNTOUCHED)
    for i in UNACKED:
        assert by_body[i][0].redelivered is True, "message %d: redelivered flag not set" % i
    for i, (m, p) in by_body.items():
        assert (p.delivery_mode, p.message_id, p.headers) == (2, "m%d" % i, {"i": i})
    # Order is kept.
    assert [int(b) for _, _, b in after] == list(UNACKED) + list(UNTOUCHED)
    # The binding survived too.
    ch.basic_publish("durable.x", "orders.again", b"routed", pika.BasicProperties(delivery_mode=2))
    assert [b for _, _, b in get_all(ch, "durable.q", expect=1)] == [b"routed"]
    c.close()
    assert own_server.stop() == 0


@needs_own_server
def test_clean_restart_keeps_durable_state(own_server):
    broker = own_server.start()
    c = broker.connect()
    ch = c.channel()
    ch.queue_declare("q.quorum", durable=True, arguments={"x-queue-type": "quorum"})
    ch.queue_declare("q.stream", durable=True, arguments={"x-queue-type": "stream"})
    ch.queue_declare("q.args", durable=True, arguments={"x-max-length": 5, "x-message-ttl": 600000})
    ch.confirm_delivery()
    for q in ("q.quorum", "q.stream", "q.args"):
        for i in range(3):
            ch.basic_publish("", q, b"%s-%d" % (q.encode(), i), pika.BasicProperties(delivery_mode=2))
    c.close()
    assert own_server.stop() == 0

    broker = own_server.start()
    c = broker.connect()
    ch = c.channel()
    # Redeclaring with the same arguments is equivalent; the arguments were kept.
    ch.queue_declare("q.args", durable=True, arguments={"x-max-length": 5, "x-message-ttl": 600000})
    assert [b for _, _, b in get_all(ch, "q.args", expect=3)] == [b"q.args-%d" % i for i in range(3)]
    assert [b for _, _, b in get_all(ch, "q.quorum", expect=3)] == [b"q.quorum-%d" % i for i in range(3)]
    sc = c.channel()
    sc.basic_qos(prefetch_count=10)
    got = consume(sc, "q.stream", 3, ack=True, arguments={"x-stream-offset": "first"})
    assert [(p.headers["x-stream-offset"], b) for _, p, b in got] == [(i, b"q.stream-%d" % i) for i in range(3)]
    c.close()
    assert own_server.stop() == 0
