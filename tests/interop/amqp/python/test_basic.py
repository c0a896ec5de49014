"""basic.*: qos, consume/cancel, publish/return, properties, get, ack/nack/reject, recover (pika)."""

import datetime
import decimal

import pika
import pika.exceptions
import pytest

from amqp_support import (
    channel_error,
    connection_error,
    confirms,
    consume,
    get_all,
    message_count,
    pump_for,
    pump_until,
    wait_until,
)


def fill(ch, q, n, prefix=b"m"):
    confirms(ch)
    for i in range(n):
        ch.basic_publish("", q, prefix + b"%d" % i)


def declared(ch, names, **kw):
    q = names.q()
    ch.queue_declare(q, **kw)
    return q


# ---------------------------------------------------------------- properties


def test_all_properties_arrive_intact(ch, names):
    q = declared(ch, names)
    headers = {
        "str": "text ✓",
        "empty": "",
        "int": 42,
        "negative": -7,
        "big": 2**40,
        "bignegative": -(2**62),
        "true": True,
        "false": False,
        "decimal": decimal.Decimal("3.14"),
        "time": datetime.datetime(2024, 5, 17, 12, 30, 45, tzinfo=datetime.timezone.utc),
        "table": {"nested": {"deeper": 1}, "s": "x"},
        "array": [1, "two", [3], {"four": 4}, True],
        "emptyarray": [],
        "bytes": b"\x00\x01\xff",
        "void": None,
    }
    props = pika.BasicProperties(
        content_type="application/json",
        content_encoding="gzip",
        headers=headers,
        delivery_mode=2,
        priority=7,
        correlation_id="corr-1",
        reply_to="reply.queue",
        expiration="60000",
        message_id="msg-1",
        timestamp=1700000000,
        type="order.created",
        user_id="guest",
        app_id="interop",
    )
    ch.confirm_delivery()
    ch.basic_publish("", q, b'{"a": 1}', props)
    [(method, got, body)] = get_all(ch, q, expect=1)
    assert body == b'{"a": 1}'
    assert (method.exchange, method.routing_key, method.redelivered) == ("", q, False)
    for field in ("content_type", "content_encoding", "delivery_mode", "priority", "correlation_id", "reply_to",
                  "expiration", "message_id", "timestamp", "type", "user_id", "app_id"):
        assert getattr(got, field) == getattr(props, field), field
    assert got.headers == headers


def test_no_properties_arrive_as_none(ch, names):
    q = declared(ch, names)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"bare")
    [(_, got, body)] = get_all(ch, q, expect=1)
    assert body == b"bare"
    for field in ("content_type", "content_encoding", "headers", "delivery_mode", "priority", "correlation_id",
                  "reply_to", "expiration", "message_id", "timestamp", "type", "user_id", "app_id", "cluster_id"):
        assert getattr(got, field) is None, field


@pytest.mark.parametrize("size", [0, 1, 131072 - 8, 131072 - 7, 1024 * 1024 + 3])
def test_body_sizes_across_frames(ch, names, size):
    q = declared(ch, names)
    body = bytes(i % 251 for i in range(size))
    ch.confirm_delivery()
    ch.basic_publish("", q, body)
    [(_, _, got)] = consume(ch, q, 1, auto_ack=True)
    assert got == body


def test_user_id_must_match_login(ch, names):
    q = declared(ch, names)
    with channel_error(406, "PRECONDITION_FAILED - user_id property set to 'bob' but authenticated user was 'guest'"):
        ch.basic_publish("", q, b"x", pika.BasicProperties(user_id="bob"))
        ch.queue_declare(q, passive=True)


def test_publish_to_missing_exchange_is_404(ch, names):
    x = names.x()
    with channel_error(404, "NOT_FOUND - no exchange '%s' in vhost '/'" % x):
        ch.basic_publish(x, "k", b"x")
        ch.queue_declare("", exclusive=True)


# ---------------------------------------------------------------- mandatory / return


def test_mandatory_unroutable_is_returned(ch, names):
    x = names.x()
    ch.exchange_declare(x, "direct")
    returned = []
    ch.add_on_return_callback(lambda c, method, props, body: returned.append((method, props, body)))
    ch.basic_publish(x, "nowhere", b"bounce", pika.BasicProperties(message_id="r1", headers={"h": 1}), mandatory=True)
    ch.basic_publish(x, "nowhere", b"dropped silently")  # not mandatory: no return
    ch.basic_publish("", "no-such-queue-" + x, b"bounce2", mandatory=True)
    pump_until(ch.connection, lambda: len(returned) == 2, what="two basic.return")
    (m1, p1, b1), (m2, _, b2) = returned
    assert (m1.reply_code, m1.reply_text, m1.exchange, m1.routing_key, b1) == (312, "NO_ROUTE", x, "nowhere", b"bounce")
    assert (p1.message_id, p1.headers) == ("r1", {"h": 1})
    assert (m2.reply_code, m2.exchange, m2.routing_key, b2) == (312, "", "no-such-queue-" + x, b"bounce2")
    pump_for(ch.connection, 0.2)
    assert len(returned) == 2


def test_mandatory_with_confirms_returns_then_acks(ch, names):
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError) as e:
        ch.basic_publish("", names.q("absent"), b"bounce", mandatory=True)
    [msg] = e.value.messages
    assert (msg.method.reply_code, msg.body) == (312, b"bounce")
    # The channel stays usable.
    q = declared(ch, names)
    ch.basic_publish("", q, b"routed", mandatory=True)
    assert message_count(ch, q) == 1


# ---------------------------------------------------------------- get


def test_get_and_get_empty(ch, names):
    q = declared(ch, names)
    assert ch.basic_get(q) == (None, None, None)
    fill(ch, q, 3)
    method, props, body = ch.basic_get(q, auto_ack=True)
    assert isinstance(method, pika.spec.Basic.GetOk)
    assert (body, method.message_count, method.redelivered, method.exchange, method.routing_key) == (b"m0", 2, False, "", q)
    method, _, body = ch.basic_get(q)
    assert (body, method.message_count) == (b"m1", 1)
    ch.basic_ack(method.delivery_tag)
    method, _, body = ch.basic_get(q)
    assert (body, method.message_count) == (b"m2", 0)
    ch.basic_reject(method.delivery_tag, requeue=True)
    method, _, body = ch.basic_get(q, auto_ack=True)
    assert (body, method.redelivered) == (b"m2", True)
    assert ch.basic_get(q) == (None, None, None)


# ---------------------------------------------------------------- consume / cancel


def test_consume_with_client_tags(conn, names):
    ch = conn.channel()
    q = declared(ch, names)
    got = []
    tag = ch.basic_consume(q, lambda c, m, p, b: got.append((m.consumer_tag, b)), auto_ack=True, consumer_tag="my-tag")
    assert tag == "my-tag"
    # (pika names consumers itself; server-generated amq.ctag-* tags are covered by the aio-pika and
    # amqplib suites.)
    server_tag = ch.basic_consume(q, lambda c, m, p, b: got.append((m.consumer_tag, b)), auto_ack=True)
    assert ch.queue_declare(q, passive=True).method.consumer_count == 2
    pub = conn.channel()
    fill(pub, q, 4)
    pump_until(conn, lambda: len(got) == 4, what="4 deliveries")
    # Round-robin between the two consumers, in order.
    assert sorted(b for _, b in got) == [b"m0", b"m1", b"m2", b"m3"]
    assert {t for t, _ in got} == {"my-tag", server_tag}
    ch.basic_cancel("my-tag")
    ch.basic_cancel(server_tag)
    assert ch.queue_declare(q, passive=True).method.consumer_count == 0
    fill(pub, q, 1, b"after")
    pump_for(conn, 0.2)
    assert len(got) == 4


def test_duplicate_consumer_tag_is_530(broker, names):
    c = broker.connect()
    ch = c.channel()
    q = declared(ch, names)
    ch.basic_consume(q, lambda *a: None, consumer_tag="dup")
    with connection_error(530, "NOT_ALLOWED - attempt to reuse consumer tag 'dup'"):
        # pika refuses duplicate tags itself, so send the frame below its check.
        ch._impl._send_method(pika.spec.Basic.Consume(queue=q, consumer_tag="dup"))
        ch.queue_declare(q, passive=True)


def test_cancel_unknown_tag_is_ok(ch):
    ch._impl._send_method(pika.spec.Basic.Cancel(consumer_tag="never-existed"))
    ch.queue_declare("", exclusive=True)


def test_no_ack_consume_does_not_requeue(conn, names):
    ch = conn.channel()
    q = declared(ch, names)
    fill(ch, q, 3)
    c2 = conn.channel()
    consume(c2, q, 3, auto_ack=True)
    c2.close()
    assert message_count(ch, q) == 0


def test_unacked_messages_return_on_channel_close(conn, names):
    ch = conn.channel()
    q = declared(ch, names)
    fill(ch, q, 3)
    c2 = conn.channel()
    got = consume(c2, q, 3)
    assert [m.redelivered for m, _, _ in got] == [False] * 3
    c2.close()
    again = consume(conn.channel(), q, 3, auto_ack=True)
    assert [b for _, _, b in again] == [b"m0", b"m1", b"m2"]
    assert [m.redelivered for m, _, _ in again] == [True] * 3


def test_exclusive_consumer(conn, conn2, names):
    ch = conn.channel()
    q = declared(ch, names)
    ch.basic_consume(q, lambda *a: None, exclusive=True)
    text = "ACCESS_REFUSED - queue '%s' in vhost '/' in exclusive use" % q
    with channel_error(403, text):
        conn2.channel().basic_consume(q, lambda *a: None)
    with channel_error(403, text):
        conn.channel().basic_consume(q, lambda *a: None)
    q2 = declared(ch, names)
    ch.basic_consume(q2, lambda *a: None)
    with channel_error(403, "ACCESS_REFUSED - queue '%s' in vhost '/' in exclusive use" % q2):
        conn2.channel().basic_consume(q2, lambda *a: None, exclusive=True)


def test_server_cancels_consumer_when_queue_deleted(conn, conn2, names):
    assert conn._impl.server_capabilities.get("consumer_cancel_notify") is True
    ch = conn.channel()
    q = declared(ch, names)
    cancelled = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method))
    tag = ch.basic_consume(q, lambda *a: None)
    conn2.channel().queue_delete(q)
    pump_until(conn, lambda: cancelled, what="server-sent basic.cancel")
    assert isinstance(cancelled[0], pika.spec.Basic.Cancel)
    assert cancelled[0].consumer_tag == tag
    # The channel is still open.
    ch.queue_declare("", exclusive=True)


def test_consumer_priorities(conn, names):
    ch = conn.channel()
    q = declared(ch, names)
    high, low = [], []
    conn.channel().basic_consume(q, lambda c, m, p, b: low.append(b), auto_ack=True, arguments={"x-priority": 1})
    conn.channel().basic_consume(q, lambda c, m, p, b: high.append(b), auto_ack=True, arguments={"x-priority": 10})
    fill(ch, q, 6)
    pump_until(conn, lambda: len(high) + len(low) >= 6, what="6 deliveries")
    assert (high, low) == ([b"m%d" % i for i in range(6)], [])


def test_consumer_priority_falls_back_when_high_is_blocked(conn, names):
    ch = conn.channel()
    q = declared(ch, names)
    high, low = [], []
    hc = conn.channel()
    hc.basic_qos(prefetch_count=2)
    hc.basic_consume(q, lambda c, m, p, b: high.append(b), arguments={"x-priority": 10})  # never acks
    conn.channel().basic_consume(q, lambda c, m, p, b: low.append(b), auto_ack=True)
    fill(ch, q, 5)
    pump_until(conn, lambda: len(high) + len(low) >= 5, what="5 deliveries")
    assert high == [b"m0", b"m1"] and low == [b"m2", b"m3", b"m4"]


# ---------------------------------------------------------------- qos


def test_prefetch_count_limits_unacked(conn, names):
    ch = conn.channel()
    q = declared(ch, names)
    fill(ch, q, 5)
    c = conn.channel()
    c.basic_qos(prefetch_count=2)
    got = []
    c.basic_consume(q, lambda ch_, m, p, b: got.append(m))
    pump_until(conn, lambda: len(got) >= 2, what="2 deliveries")
    pump_for(conn, 0.3)
    assert len(got) == 2
    c.basic_ack(got[0].delivery_tag)
    pump_until(conn, lambda: len(got) == 3, what="a third after one ack")
    c.basic_ack(got[2].delivery_tag, multiple=True)
    pump_until(conn, lambda: len(got) == 5, what="the rest after a multiple ack")


def test_prefetch_per_consumer_vs_global(conn, names):
    ch = conn.channel()
    q1, q2 = declared(ch, names), declared(ch, names)
    fill(ch, q1, 5)
    fill(ch, q2, 5)
    # Per consumer (global=false): each consumer on the channel may hold 2.
    per = conn.channel()
    per.basic_qos(prefetch_count=2)
    got = []
    per.basic_consume(q1, lambda c, m, p, b: got.append(m))
    per.basic_consume(q2, lambda c, m, p, b: got.append(m))
    pump_until(conn, lambda: len(got) >= 4, what="2 + 2 deliveries")
    pump_for(conn, 0.3)
    assert len(got) == 4
    per.close()
    # Global (shared by the channel's consumers): 3 in all.
    glob = conn.channel()
    glob.basic_qos(prefetch_count=3, global_qos=True)
    got2 = []
    glob.basic_consume(q1, lambda c, m, p, b: got2.append(m))
    glob.basic_consume(q2, lambda c, m, p, b: got2.append(m))
    pump_until(conn, lambda: len(got2) >= 3, what="3 deliveries over two consumers")
    pump_for(conn, 0.3)
    assert len(got2) == 3
    glob.basic_ack(got2[-1].delivery_tag, multiple=True)
    pump_until(conn, lambda: len(got2) == 6, what="3 more after acking all")


def test_prefetch_size_is_not_implemented(broker):
    c = broker.connect()
    with connection_error(540, "NOT_IMPLEMENTED - prefetch_size!=0 (10)"):
        c.channel().basic_qos(prefetch_size=10)


def test_fair_dispatch_between_two_consumers(conn, names):
    ch = conn.channel()
    q = declared(ch, names)
    slow, fast = [], []
    sc, fc = conn.channel(), conn.channel()
    sc.basic_qos(prefetch_count=1)
    fc.basic_qos(prefetch_count=1)
    sc.basic_consume(q, lambda c, m, p, b: slow.append(b))  # busy: never acks
    fc.basic_consume(q, lambda c, m, p, b: (fast.append(b), c.basic_ack(m.delivery_tag)))
    fill(ch, q, 10)
    pump_until(conn, lambda: len(slow) + len(fast) >= 10, what="10 deliveries")
    assert len(slow) == 1 and len(fast) == 9


# ---------------------------------------------------------------- ack / nack / reject / recover


def test_ack_multiple_then_close_requeues_rest(conn, names):
    ch = conn.channel()
    q = declared(ch, names)
    fill(ch, q, 5)
    c = conn.channel()
    got = consume(c, q, 5)
    c.basic_ack(got[2][0].delivery_tag, multiple=True)  # m0..m2
    c.close()
    again = consume(conn.channel(), q, 2, auto_ack=True)
    assert [(b, m.redelivered) for m, _, b in again] == [(b"m3", True), (b"m4", True)]


def test_ack_all_with_tag_zero(conn, names):
    ch = conn.channel()
    q = declared(ch, names)
    fill(ch, q, 4)
    c = conn.channel()
    consume(c, q, 4)
    c.basic_ack(0, multiple=True)
    c.close()
    assert message_count(ch, q) == 0


def test_nack_multiple_requeue(conn, names):
    ch = conn.channel()
    q = declared(ch, names)
    fill(ch, q, 3)
    c = conn.channel()
    got = consume(c, q, 3)
    c.basic_nack(got[-1][0].delivery_tag, multiple=True, requeue=True)
    again = consume(c, q, 3, ack=True)
    assert [(b, m.redelivered) for m, _, b in again] == [(b"m0", True), (b"m1", True), (b"m2", True)]


def test_nack_and_reject_without_requeue_drop(conn, names):
    ch = conn.channel()
    q = declared(ch, names)
    fill(ch, q, 3)
    c = conn.channel()
    got = consume(c, q, 3)
    c.basic_reject(got[0][0].delivery_tag, requeue=False)
    c.basic_nack(got[2][0].delivery_tag, multiple=True, requeue=False)
    c.close()
    assert message_count(ch, q) == 0


def test_reject_requeue_goes_back_to_the_head(conn, names):
    ch = conn.channel()
    q = declared(ch, names)
    fill(ch, q, 3)
    method, _, body = ch.basic_get(q)
    assert body == b"m0"
    ch.basic_reject(method.delivery_tag, requeue=True)
    assert [(b, m.redelivered) for m, _, b in get_all(ch, q)] == [(b"m0", True), (b"m1", False), (b"m2", False)]


@pytest.mark.parametrize("op", ["ack", "nack", "reject", "double-ack"])
def test_unknown_delivery_tag_is_406(ch, names, op):
    q = declared(ch, names)
    fill(ch, q, 1)
    method, _, _ = ch.basic_get(q)
    tag = method.delivery_tag
    with channel_error(406, "PRECONDITION_FAILED - unknown delivery tag %d" % (tag if op == "double-ack" else 42)):
        if op == "ack":
            ch.basic_ack(42)
        elif op == "nack":
            ch.basic_nack(42)
        elif op == "reject":
            ch.basic_reject(42)
        else:
            ch.basic_ack(tag)
            ch.basic_ack(tag)
        ch.queue_declare(q, passive=True)
    # Closing the channel returned the unacked message.
    assert message_count(ch.connection.channel(), q) == (0 if op == "double-ack" else 1)


def test_ack_on_another_channel_is_406(conn, names):
    ch = conn.channel()
    q = declared(ch, names)
    fill(ch, q, 1)
    method, _, _ = ch.basic_get(q)
    other = conn.channel()
    with channel_error(406, "PRECONDITION_FAILED - unknown delivery tag %d" % method.delivery_tag):
        other.basic_ack(method.delivery_tag)
        other.queue_declare(q, passive=True)


def test_recover_requeue(conn, names):
    ch = conn.channel()
    q = declared(ch, names)
    fill(ch, q, 2)
    c = conn.channel()
    got = []
    c.basic_consume(q, lambda ch_, m, p, b: got.append((m, b)))
    pump_until(conn, lambda: len(got) == 2, what="2 deliveries")
    c.basic_recover(requeue=True)
    pump_until(conn, lambda: len(got) == 4, what="2 redeliveries after basic.recover")
    assert [(m.redelivered, b) for m, b in got[2:]] == [(True, b"m0"), (True, b"m1")]
    c.basic_ack(got[3][0].delivery_tag, multiple=True)
    # The old delivery tags are void after recover.
    with channel_error(406, "PRECONDITION_FAILED - unknown delivery tag %d" % got[0][0].delivery_tag):
        c.basic_ack(got[0][0].delivery_tag)
        c.queue_declare(q, passive=True)


def test_recover_without_requeue_is_not_implemented(broker, names):
    c = broker.connect()
    with connection_error(540, "NOT_IMPLEMENTED - requeue=false"):
        c.channel().basic_recover(requeue=False)
