"""Streams over AMQP 0-9-1: x-queue-type stream, x-stream-offset, credit by prefetch and ack (pika)."""

import datetime
import math
import time

import pika

from amqp_support import channel_error, confirms, connection_error, pump_for, pump_until


def declare_stream(ch, names):
    q = names.q("stream")
    ok = ch.queue_declare(q, durable=True, arguments={"x-queue-type": "stream"})
    assert (ok.method.queue, ok.method.consumer_count) == (q, 0)
    return q


def publish(ch, q, bodies):
    confirms(ch)
    for body in bodies:  # one at a time, each confirmed before the next
        ch.basic_publish("", q, body)


class Reader:
    """A stream consumer on its own channel; acks each delivery unless told not to."""

    def __init__(self, conn, q, offset, prefetch=100, ack=True):
        self.conn, self.got, self.methods = conn, [], []
        self.ch = conn.channel()
        self.ch.basic_qos(prefetch_count=prefetch)
        args = {} if offset is None else {"x-stream-offset": offset}
        self.tag = self.ch.basic_consume(q, self._on, arguments=args)
        self.ack = ack

    def _on(self, ch, method, props, body):
        self.got.append(((props.headers or {}).get("x-stream-offset"), body))
        self.methods.append(method)
        if self.ack:
            ch.basic_ack(method.delivery_tag)

    def wait(self, n, timeout=10):
        pump_until(self.conn, lambda: len(self.got) >= n, timeout, "%d stream deliveries" % n)
        return self.got

    def close(self):
        self.ch.close()


def test_stream_declare_and_counts(conn, names):
    ch = conn.channel()
    q = declare_stream(ch, names)
    publish(ch, q, [b"%d" % i for i in range(5)])
    ok = ch.queue_declare(q, durable=True, arguments={"x-queue-type": "stream"})  # equivalent redeclare
    # RabbitMQ 3.10 reports 0 messages for a stream in declare-ok; the stored count is also accepted.
    assert ok.method.message_count in (0, 5)
    r = Reader(conn, q, "first")
    r.wait(5)
    # RabbitMQ 3.10 does not count stream consumers in declare-ok.
    assert ch.queue_declare(q, passive=True).method.consumer_count in (0, 1)


def test_stream_offset_first_offset_last_next(conn, names):
    ch = conn.channel()
    q = declare_stream(ch, names)
    publish(ch, q, [b"m%d" % i for i in range(5)])

    first = Reader(conn, q, "first")
    assert first.wait(5) == [(i, b"m%d" % i) for i in range(5)]
    assert all(not m.redelivered for m in first.methods)

    default = Reader(conn, q, None)  # no x-stream-offset: "next"
    at3 = Reader(conn, q, 3)
    assert at3.wait(2) == [(3, b"m3"), (4, b"m4")]
    last = Reader(conn, q, "last")
    assert last.wait(1) == [(4, b"m4")]  # each confirmed publish is its own chunk
    nxt = Reader(conn, q, "next")
    beyond = Reader(conn, q, 1000)  # past the end
    pump_for(conn, 0.3)
    assert nxt.got == [] and default.got == [] and beyond.got == []

    publish(ch, q, [b"m5"])
    for r in (nxt, default, first, at3, last):
        pump_until(conn, lambda r=r: r.got[-1:] == [(5, b"m5")], what="m5 at every reader: %r" % ([x.got for x in (nxt, default, first, at3, last, beyond)],))
    assert nxt.got == default.got == [(5, b"m5")]
    pump_for(conn, 0.2)
    assert beyond.got == []  # it waits for offset 1000 itself
    assert [o for o, _ in first.got] == [0, 1, 2, 3, 4, 5]
    assert [o for o, _ in at3.got] == [3, 4, 5]
    assert [o for o, _ in last.got] == [4, 5]


def test_stream_offset_timestamp(conn, names):
    ch = conn.channel()
    q = declare_stream(ch, names)
    publish(ch, q, [b"before-1", b"before-2"])
    published = time.time()
    # AMQP timestamps have one-second resolution: wait until a whole second lies between.
    time.sleep(max(0.0, math.floor(published) + 2 - time.time()))
    ts = datetime.datetime.fromtimestamp(math.floor(time.time()), datetime.timezone.utc)
    publish(ch, q, [b"after-1", b"after-2"])
    r = Reader(conn, q, ts)
    assert [b for _, b in r.wait(2)] == [b"after-1", b"after-2"]
    pump_for(conn, 0.2)
    assert len(r.got) == 2


def test_stream_consumers_do_not_compete(conn, names):
    ch = conn.channel()
    q = declare_stream(ch, names)
    publish(ch, q, [b"a", b"b", b"c"])
    r1, r2 = Reader(conn, q, "first"), Reader(conn, q, "first")
    assert r1.wait(3) == r2.wait(3) == [(0, b"a"), (1, b"b"), (2, b"c")]


def test_stream_prefetch_is_credit_and_acks_advance_it(conn, names):
    ch = conn.channel()
    q = declare_stream(ch, names)
    publish(ch, q, [b"%d" % i for i in range(6)])
    r = Reader(conn, q, "first", prefetch=2, ack=False)
    r.wait(2)
    pump_for(conn, 0.3)
    assert [o for o, _ in r.got] == [0, 1]
    r.ch.basic_ack(r.methods[0].delivery_tag)
    r.wait(3)
    pump_for(conn, 0.2)
    assert [o for o, _ in r.got] == [0, 1, 2]
    r.ch.basic_ack(r.methods[2].delivery_tag, multiple=True)
    r.wait(5)
    assert [o for o, _ in r.got] == [0, 1, 2, 3, 4]
    # Settling a stream message does not remove it: a new reader sees everything.
    r.ch.basic_ack(r.methods[4].delivery_tag, multiple=True)
    assert [o for o, _ in Reader(conn, q, "first").wait(6)] == [0, 1, 2, 3, 4, 5]


def test_stream_consume_needs_prefetch(conn, names):
    q = declare_stream(conn.channel(), names)
    with channel_error(406, "PRECONDITION_FAILED - consumer prefetch count is not set for 'queue '%s' in vhost '/''" % q):
        conn.channel().basic_consume(q, lambda *a: None)


def test_stream_consume_needs_manual_ack(broker, names):
    c = broker.connect()
    q = declare_stream(c.channel(), names)
    ch = c.channel()
    ch.basic_qos(prefetch_count=10)
    with connection_error(540, "NOT_IMPLEMENTED - automatic acknowledgement not supported by stream queues queue '%s' in vhost '/'" % q):
        ch.basic_consume(q, lambda *a: None, auto_ack=True)


def test_stream_properties_and_headers_survive(conn, names):
    ch = conn.channel()
    q = declare_stream(ch, names)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"p", pika.BasicProperties(content_type="text/plain", headers={"k": "v"}, message_id="id"))
    rc = conn.channel()
    rc.basic_qos(prefetch_count=1)
    got = []
    rc.basic_consume(q, lambda c, m, p, b: got.append((m, p, b)), arguments={"x-stream-offset": "first"})
    pump_until(conn, lambda: got, what="stream delivery")
    m, p, b = got[0]
    assert (b, p.content_type, p.message_id, p.headers) == (b"p", "text/plain", "id", {"k": "v", "x-stream-offset": 0})
    assert (m.exchange, m.routing_key) == ("", q)
