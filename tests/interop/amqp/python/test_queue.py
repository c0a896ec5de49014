"""queue.declare/bind/unbind/purge/delete and the declare arguments (pika)."""

import time

import pika
import pika.exceptions
import pytest

from amqp_support import (
    channel_error,
    connection_error,
    consume,
    get_all,
    message_count,
    pump_until,
    queue_exists,
    wait_until,
)


def test_server_named_queue(ch):
    ok = ch.queue_declare("", exclusive=True)
    assert ok.method.queue.startswith("amq.gen-")
    assert len(ok.method.queue) > len("amq.gen-")
    assert (ok.method.message_count, ok.method.consumer_count) == (0, 0)
    other = ch.queue_declare("", exclusive=True).method.queue
    assert other != ok.method.queue


def test_declare_ok_counts(conn, names):
    ch = conn.channel()
    q = names.q()
    ok = ch.queue_declare(q)
    assert (ok.method.queue, ok.method.message_count, ok.method.consumer_count) == (q, 0, 0)
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q, b"m%d" % i)
    ok = ch.queue_declare(q, passive=True)
    assert (ok.method.message_count, ok.method.consumer_count) == (3, 0)
    # An equivalent active redeclare reports the same.
    assert ch.queue_declare(q).method.message_count == 3
    consumer = conn.channel()
    consumer.basic_qos(prefetch_count=1)
    consumer.basic_consume(q, lambda *a: None)
    # One message is now unacked at the consumer; declare-ok counts ready messages only.
    wait_until(lambda: ch.queue_declare(q, passive=True).method.message_count == 2, what="2 ready")
    ok = ch.queue_declare(q, passive=True)
    assert (ok.method.message_count, ok.method.consumer_count) == (2, 1)


def test_passive_declare_missing_queue_is_404(ch, names):
    q = names.q()
    with channel_error(404, "NOT_FOUND - no queue '%s' in vhost '/'" % q):
        ch.queue_declare(q, passive=True)


def test_reserved_queue_name_is_403(conn):
    with channel_error(403, "ACCESS_REFUSED - queue name 'amq.interop' contains reserved prefix 'amq.*'"):
        conn.channel().queue_declare("amq.interop")
    with channel_error(404, "NOT_FOUND - no queue 'amq.interop' in vhost '/'"):
        conn.channel().queue_declare("amq.interop", passive=True)


@pytest.mark.parametrize(
    "first,second,arg,received,current",
    [
        ({}, {"durable": True}, "durable", "'true'", "'false'"),
        ({"durable": True}, {}, "durable", "'false'", "'true'"),
        ({"auto_delete": True}, {}, "auto_delete", "'false'", "'true'"),
    ],
)
def test_inequivalent_flags_are_406(conn, names, first, second, arg, received, current):
    q = names.q()
    conn.channel().queue_declare(q, **first)
    with channel_error(
        406,
        "PRECONDITION_FAILED - inequivalent arg '%s' for queue '%s' in vhost '/': received %s but current is %s"
        % (arg, q, received, current),
    ):
        conn.channel().queue_declare(q, **second)


def test_inequivalent_arguments_are_406(conn, names):
    q = names.q()
    conn.channel().queue_declare(q, arguments={"x-message-ttl": 1000})
    with channel_error(
        406,
        "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue '%s' in vhost '/': "
        "received '2000' but current is '1000'" % q,
    ):
        conn.channel().queue_declare(q, arguments={"x-message-ttl": 2000})
    with channel_error(
        406,
        contains="PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue '%s' in vhost '/'" % q,
    ):
        conn.channel().queue_declare(q)
    # Passive declares ignore arguments.
    conn.channel().queue_declare(q, passive=True, arguments={"x-message-ttl": 5})


def test_invalid_arguments_are_406(conn, names):
    for args, arg in (
        ({"x-max-length": -1}, "x-max-length"),
        ({"x-message-ttl": -5}, "x-message-ttl"),
        ({"x-queue-type": "no-such-type"}, "x-queue-type"),
        ({"x-overflow": "no-such-mode"}, "x-overflow"),
        ({"x-max-priority": "high"}, "x-max-priority"),
    ):
        q = names.q()
        with channel_error(406, contains="PRECONDITION_FAILED - invalid arg '%s' for queue '%s' in vhost '/'" % (arg, q)):
            conn.channel().queue_declare(q, arguments=args)
        assert not queue_exists(names.broker, q)


def test_exclusive_queue_is_locked_to_its_connection(broker, conn, conn2, names):
    q = names.q()
    conn.channel().queue_declare(q, exclusive=True)
    locked = (
        "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '%s' in vhost '/'. It could be "
        "originally declared on another connection or the exclusive property value does not match that of "
        "the original declaration." % q
    )
    for op in (
        lambda c: c.queue_declare(q, passive=True),
        lambda c: c.queue_declare(q, exclusive=True),
        lambda c: c.queue_declare(q),
        lambda c: c.basic_consume(q, lambda *a: None),
        lambda c: c.basic_get(q),
        lambda c: c.queue_purge(q),
        lambda c: c.queue_delete(q),
        lambda c: c.queue_bind(q, "amq.fanout"),
    ):
        with channel_error(405, locked):
            op(conn2.channel())
    # Publishing to it from elsewhere is allowed.
    pub = conn2.channel()
    pub.confirm_delivery()
    pub.basic_publish("", q, b"from elsewhere")
    [(_, _, body)] = get_all(conn.channel(), q)
    assert body == b"from elsewhere"
    # Redeclaring a non-exclusive name as exclusive is also refused.
    shared = names.q()
    conn.channel().queue_declare(shared)
    with channel_error(405, locked.replace(q, shared)):
        conn.channel().queue_declare(shared, exclusive=True)


def test_exclusive_queue_goes_with_its_connection(broker, names):
    q = names.q()
    c = broker.connect()
    c.channel().queue_declare(q, exclusive=True)
    assert queue_exists(broker, q)
    c.close()
    wait_until(lambda: not queue_exists(broker, q), what="exclusive queue deleted")


def test_auto_delete_queue_goes_with_its_last_consumer(ch, names):
    q = names.q()
    ch.queue_declare(q, auto_delete=True)
    # Never had a consumer: stays.
    assert queue_exists(names.broker, q)
    t1 = ch.basic_consume(q, lambda *a: None)
    t2 = ch.basic_consume(q, lambda *a: None)
    ch.basic_cancel(t1)
    assert queue_exists(names.broker, q)
    ch.basic_cancel(t2)
    wait_until(lambda: not queue_exists(names.broker, q), what="auto-delete queue deleted")


def test_bind_unbind(ch, names):
    q, x = names.q(), names.x()
    ch.exchange_declare(x, "direct")
    ch.queue_declare(q)
    ch.queue_bind(q, x, "k1")
    ch.queue_bind(q, x, "k2")
    ch.queue_bind(q, x, "k2")  # idempotent
    ch.confirm_delivery()
    ch.basic_publish(x, "k1", b"1")
    ch.basic_publish(x, "k2", b"2")
    assert sorted(b for _, _, b in get_all(ch, q)) == [b"1", b"2"]
    ch.queue_unbind(q, x, "k1")
    ch.queue_unbind(q, x, "no-such-binding")  # unbinding a missing binding is ok
    ch.basic_publish(x, "k1", b"3")
    ch.basic_publish(x, "k2", b"4")
    assert [b for _, _, b in get_all(ch, q)] == [b"4"]


def test_bind_to_missing_exchange_or_queue_is_404(conn, names):
    q, x = names.q(), names.x()
    conn.channel().queue_declare(q)
    conn.channel().exchange_declare(x, "direct")
    with channel_error(404, "NOT_FOUND - no exchange 'missing.%s' in vhost '/'" % x):
        conn.channel().queue_bind(q, "missing." + x, "k")
    with channel_error(404, "NOT_FOUND - no queue 'missing.%s' in vhost '/'" % q):
        conn.channel().queue_bind("missing." + q, x, "k")


def test_default_exchange_bindings_are_403(conn, names):
    q = names.q()
    conn.channel().queue_declare(q)
    with channel_error(403, "ACCESS_REFUSED - operation not permitted on the default exchange"):
        conn.channel().queue_bind(q, "", "other")
    with channel_error(403, "ACCESS_REFUSED - operation not permitted on the default exchange"):
        conn.channel().queue_unbind(q, "", q)


def test_purge(ch, names):
    q = names.q()
    ch.queue_declare(q)
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", q, b"%d" % i)
    method, _, _ = ch.basic_get(q)  # one unacked: purge leaves it alone
    assert ch.queue_purge(q).method.message_count == 4
    assert message_count(ch, q) == 0
    ch.basic_nack(method.delivery_tag, requeue=True)
    assert [b for _, _, b in get_all(ch, q, expect=1)] == [b"0"]
    assert ch.queue_purge(q).method.message_count == 0


def test_purge_missing_is_404(ch, names):
    q = names.q()
    with channel_error(404, "NOT_FOUND - no queue '%s' in vhost '/'" % q):
        ch.queue_purge(q)


def test_delete_returns_count_and_conditions(conn, names):
    ch = conn.channel()
    q = names.q()
    ch.queue_declare(q)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"1")
    ch.basic_publish("", q, b"2")
    with channel_error(406, "PRECONDITION_FAILED - queue '%s' in vhost '/' not empty" % q):
        ch.queue_delete(q, if_empty=True)
    ch = conn.channel()
    tag = ch.basic_consume(q, lambda *a: None, auto_ack=True)
    pump_until(conn, lambda: message_count(conn.channel(), q) == 0, what="queue drained")
    with channel_error(406, "PRECONDITION_FAILED - queue '%s' in vhost '/' in use" % q):
        conn.channel().queue_delete(q, if_unused=True)
    ch.basic_cancel(tag)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("", q, b"3")
    assert ch.queue_delete(q, if_unused=True).method.message_count == 1
    assert not queue_exists(names.broker, q)
    # Deleting a missing queue is ok and reports no messages.
    assert conn.channel().queue_delete(q).method.message_count == 0


@pytest.mark.parametrize("queue_type", ["classic", "quorum", "stream"])
def test_delete_durable_queue(ch, names, queue_type):
    q = names.q(queue_type)
    ch.queue_declare(q, durable=True, arguments={"x-queue-type": queue_type})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"persistent", pika.BasicProperties(delivery_mode=2))
    ok = ch.queue_delete(q)
    assert isinstance(ok.method, pika.spec.Queue.DeleteOk)
    assert not queue_exists(names.broker, q)
    # The name is free again, for any type.
    ch.queue_declare(q, durable=True)
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    ch.queue_delete(q)


def test_delete_removes_bindings(ch, names):
    q, x = names.q(), names.x()
    ch.exchange_declare(x, "fanout")
    ch.queue_declare(q)
    ch.queue_bind(q, x)
    ch.queue_delete(q)
    ch.queue_declare(q)
    ch.confirm_delivery()
    ch.basic_publish(x, "", b"x")
    assert get_all(ch, q) == []


def test_queue_ttl_expires_messages(ch, names):
    q = names.q()
    ch.queue_declare(q, arguments={"x-message-ttl": 200})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"old")
    time.sleep(0.6)
    ch.basic_publish("", q, b"new")
    assert [b for _, _, b in get_all(ch, q)] == [b"new"]


def test_queue_ttl_zero_delivers_only_to_waiting_consumers(conn, names):
    ch = conn.channel()
    q = names.q()
    ch.queue_declare(q, arguments={"x-message-ttl": 0})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"nobody waiting")
    assert get_all(ch, q) == []
    got = []
    consumer = conn.channel()
    consumer.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    ch.basic_publish("", q, b"consumer waiting")
    pump_until(conn, lambda: got, what="delivery with ttl 0")
    assert got == [b"consumer waiting"]


def test_per_message_expiration(ch, names):
    q = names.q()
    ch.queue_declare(q)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"short", pika.BasicProperties(expiration="150"))
    ch.basic_publish("", q, b"long", pika.BasicProperties(expiration="600000"))
    ch.basic_publish("", q, b"none")
    time.sleep(0.5)
    # The expired message is at the head of the queue, so it is dropped before delivery.
    got = get_all(ch, q)
    assert [b for _, _, b in got] == [b"long", b"none"]
    assert got[0][1].expiration == "600000"


def test_per_message_expiration_invalid_is_406(ch, names):
    q = names.q()
    ch.queue_declare(q)
    with channel_error(406, contains="PRECONDITION_FAILED - invalid expiration 'soon'"):
        ch.basic_publish("", q, b"x", pika.BasicProperties(expiration="soon"))
        ch.queue_declare(q, passive=True)


def test_queue_expires_when_unused(ch, names):
    q = names.q()
    ch.queue_declare(q, arguments={"x-expires": 300})
    assert queue_exists(names.broker, q)
    time.sleep(0.5)
    wait_until(lambda: not queue_exists(names.broker, q), timeout=10, what="x-expires deleted the queue")


def test_queue_with_consumer_does_not_expire(conn, names):
    ch = conn.channel()
    q = names.q()
    ch.queue_declare(q, arguments={"x-expires": 300})
    ch.basic_consume(q, lambda *a: None)
    conn.process_data_events(time_limit=1.0)
    assert queue_exists(names.broker, q)


def test_max_length_drop_head(ch, names):
    q = names.q()
    ch.queue_declare(q, arguments={"x-max-length": 2})
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", q, b"%d" % i)
    assert message_count(ch, q) == 2
    assert [b for _, _, b in get_all(ch, q)] == [b"3", b"4"]


def test_max_length_bytes(ch, names):
    q = names.q()
    ch.queue_declare(q, arguments={"x-max-length-bytes": 10})
    ch.confirm_delivery()
    for body in (b"aaaa", b"bbbb", b"cccc", b"dd"):
        ch.basic_publish("", q, body)
    # Bodies only count: 4 + 4 + 4 > 10, so the head goes; 4 + 4 + 2 fits.
    assert [b for _, _, b in get_all(ch, q)] == [b"bbbb", b"cccc", b"dd"]


def test_max_length_reject_publish_nacks(ch, names):
    q = names.q()
    ch.queue_declare(q, arguments={"x-max-length": 2, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"1")
    ch.basic_publish("", q, b"2")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"3")
    assert [b for _, _, b in get_all(ch, q)] == [b"1", b"2"]
    ch.basic_publish("", q, b"4")  # room again
    assert [b for _, _, b in get_all(ch, q)] == [b"4"]


def test_max_length_reject_publish_dlx(ch, names):
    q, dlq, dlx = names.q(), names.q("dlq"), names.x("dlx")
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx)
    ch.queue_declare(q, arguments={"x-max-length": 1, "x-overflow": "reject-publish-dlx", "x-dead-letter-exchange": dlx})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"kept")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"rejected")
    assert [b for _, _, b in get_all(ch, q)] == [b"kept"]
    [(_, props, body)] = get_all(ch, dlq, expect=1)
    assert body == b"rejected"
    [death] = props.headers["x-death"]
    assert (death["reason"], death["queue"], death["count"]) == ("maxlen", q, 1)


def test_max_length_drop_head_dead_letters(ch, names):
    q, dlq = names.q(), names.q("dlq")
    ch.queue_declare(dlq)
    ch.queue_declare(q, arguments={"x-max-length": 1, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"first")
    ch.basic_publish("", q, b"second")
    [(_, props, body)] = get_all(ch, dlq, expect=1)
    assert body == b"first"
    assert props.headers["x-death"][0]["reason"] == "maxlen"
    assert props.headers["x-first-death-reason"] == "maxlen"
    assert [b for _, _, b in get_all(ch, q)] == [b"second"]


def test_priority_queue(ch, names):
    q = names.q()
    ch.queue_declare(q, arguments={"x-max-priority": 5})
    ch.confirm_delivery()
    order = [(None, b"none-a"), (1, b"p1"), (5, b"p5"), (9, b"p9-capped"), (3, b"p3"), (0, b"p0"), (None, b"none-b")]
    for prio, body in order:
        ch.basic_publish("", q, body, pika.BasicProperties(priority=prio))
    got = get_all(ch, q)
    # Priorities above the maximum count as the maximum; equal priorities keep FIFO order;
    # no priority is priority 0.
    assert [b for _, _, b in got] == [b"p5", b"p9-capped", b"p3", b"p1", b"none-a", b"p0", b"none-b"]
    assert got[1][1].priority == 9  # the property itself is delivered unchanged


def test_priority_queue_with_consumer_prefetch(conn, names):
    ch = conn.channel()
    q = names.q()
    ch.queue_declare(q, arguments={"x-max-priority": 10})
    ch.confirm_delivery()
    for i in range(10):
        ch.basic_publish("", q, b"%d" % i, pika.BasicProperties(priority=i))
    got = consume(conn.channel(), q, 10, auto_ack=True)
    assert [b for _, _, b in got] == [b"%d" % i for i in reversed(range(10))]


def test_single_active_consumer(conn, names):
    q = names.q()
    ch = conn.channel()
    ch.queue_declare(q, arguments={"x-single-active-consumer": True})
    a, b = [], []
    ca, cb = conn.channel(), conn.channel()
    tag_a = ca.basic_consume(q, lambda c, m, p, body: (a.append(body), c.basic_ack(m.delivery_tag)))
    cb.basic_consume(q, lambda c, m, p, body: (b.append(body), c.basic_ack(m.delivery_tag)))
    ok = ch.queue_declare(q, passive=True)
    assert ok.method.consumer_count == 2
    ch.confirm_delivery()
    for i in range(4):
        ch.basic_publish("", q, b"%d" % i)
    pump_until(conn, lambda: len(a) == 4, what="4 deliveries to the active consumer")
    assert b == []
    ca.basic_cancel(tag_a)
    for i in range(4, 6):
        ch.basic_publish("", q, b"%d" % i)
    pump_until(conn, lambda: len(b) == 2, what="the second consumer takes over")
    assert a == [b"0", b"1", b"2", b"3"] and b == [b"4", b"5"]


def test_quorum_queue_basics_and_delivery_limit(ch, names):
    q = names.q()
    ok = ch.queue_declare(q, durable=True, arguments={"x-queue-type": "quorum", "x-delivery-limit": 2})
    assert (ok.method.message_count, ok.method.consumer_count) == (0, 0)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"poison", pika.BasicProperties(delivery_mode=2))
    counts = []
    for _ in range(3):
        [(method, props, body)] = get_all(ch, q, expect=1, auto_ack=False)
        assert body == b"poison"
        counts.append((method.redelivered, (props.headers or {}).get("x-delivery-count", 0)))
        ch.basic_reject(method.delivery_tag, requeue=True)
    assert counts == [(False, 0), (True, 1), (True, 2)]
    # Returned a third time: over the limit, so it is dropped (no dead-letter exchange).
    wait_until(lambda: message_count(ch, q) == 0, what="message dropped after the delivery limit")
    assert get_all(ch, q) == []


def test_quorum_queue_delivery_limit_dead_letters(ch, names):
    q, dlq = names.q(), names.q("dlq")
    ch.queue_declare(dlq)
    ch.queue_declare(q, durable=True, arguments={
        "x-queue-type": "quorum", "x-delivery-limit": 0,
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq,
    })
    ch.confirm_delivery()
    ch.basic_publish("", q, b"once")
    [(method, _, _)] = get_all(ch, q, expect=1, auto_ack=False)
    ch.basic_nack(method.delivery_tag, requeue=True)
    [(_, props, body)] = get_all(ch, dlq, expect=1)
    assert body == b"once"
    assert props.headers["x-death"][0]["reason"] == "delivery_limit"
    assert props.headers["x-death"][0]["queue"] == q


def test_quorum_queue_property_checks(conn, names):
    for kw, prop in (({}, "non-durable"), ({"durable": True, "exclusive": True}, "exclusive-owner"),
                     ({"durable": True, "auto_delete": True}, "auto-delete")):
        q = names.q()
        with channel_error(406, "PRECONDITION_FAILED - invalid property '%s' for queue '%s' in vhost '/'" % (prop, q)):
            conn.channel().queue_declare(q, arguments={"x-queue-type": "quorum"}, **kw)
    q = names.q()
    with channel_error(406, contains="PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue '%s'" % q):
        conn.channel().queue_declare(q, durable=True, arguments={"x-queue-type": "quorum", "x-max-priority": 5})
    q = names.q()
    with channel_error(406, contains="PRECONDITION_FAILED - invalid arg 'x-delivery-limit' for queue '%s'" % q):
        conn.channel().queue_declare(q, arguments={"x-delivery-limit": 2})  # classic queues have no limit


def test_queue_type_is_an_equivalence_argument(conn, names):
    q = names.q()
    conn.channel().queue_declare(q, durable=True, arguments={"x-queue-type": "quorum"})
    with channel_error(406, contains="PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '%s' in vhost '/'" % q):
        conn.channel().queue_declare(q, durable=True)
    c = names.q()
    conn.channel().queue_declare(c, durable=True)
    # Naming the default type explicitly is equivalent to leaving it out.
    conn.channel().queue_declare(c, durable=True, arguments={"x-queue-type": "classic"})
    with channel_error(406, contains="PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '%s' in vhost '/'" % c):
        conn.channel().queue_declare(c, durable=True, arguments={"x-queue-type": "quorum"})


def test_operations_on_missing_queue_are_404(conn, names):
    q = names.q()
    text = "NOT_FOUND - no queue '%s' in vhost '/'" % q
    for op in (
        lambda c: c.basic_consume(q, lambda *a: None),
        lambda c: c.basic_get(q),
    ):
        with channel_error(404, text):
            op(conn.channel())
    # Unbinding is idempotent: a missing queue or exchange is not an error.
    ch = conn.channel()
    ch.queue_unbind(q, "amq.direct", "k")
    ch.queue_unbind(ch.queue_declare("", exclusive=True).method.queue, "missing." + q, "k")
    ch.exchange_unbind("missing." + q, "amq.direct", "k")


def test_stream_must_be_durable(conn, names):
    q = names.q()
    with channel_error(406, "PRECONDITION_FAILED - invalid property 'non-durable' for queue '%s' in vhost '/'" % q):
        conn.channel().queue_declare(q, arguments={"x-queue-type": "stream"})


def test_hard_error_closes_connection(broker, names):
    # basic.get on a stream is not implemented: a connection error (540), not a channel error.
    q = names.q()
    c = broker.connect()
    c.channel().queue_declare(q, durable=True, arguments={"x-queue-type": "stream"})
    with connection_error(540, contains="NOT_IMPLEMENTED - basic.get not supported by stream queues"):
        c.channel().basic_get(q)
    assert not c.is_open
