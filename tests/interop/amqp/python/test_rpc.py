"""RPC: direct reply-to (amq.rabbitmq.reply-to) and callback queues (pika)."""

import uuid

import pika

from amqp_support import channel_error, pump_until

REPLY_TO = "amq.rabbitmq.reply-to"


def serve_one(conn, q, seen):
    """An RPC server on its own channel: answers "echo:<body>" to reply_to with the correlation id."""
    ch = conn.channel()
    ch.queue_declare(q)

    def on_request(c, method, props, body):
        seen.append(props)
        c.basic_publish("", props.reply_to, b"echo:" + body,
                        pika.BasicProperties(correlation_id=props.correlation_id))
        c.basic_ack(method.delivery_tag)

    ch.basic_consume(q, on_request)
    return ch


def test_direct_reply_to(conn, conn2, names):
    q = names.q("rpc")
    seen = []
    serve_one(conn2, q, seen)
    ch = conn.channel()
    replies = []
    ch.basic_consume(REPLY_TO, lambda c, m, p, b: replies.append((m, p, b)), auto_ack=True)
    ids = [str(uuid.uuid4()) for _ in range(3)]
    for i, corr in enumerate(ids):
        ch.basic_publish("", q, b"req%d" % i, pika.BasicProperties(reply_to=REPLY_TO, correlation_id=corr))
    pump_until([conn, conn2], lambda: len(replies) == 3 and len(seen) == 3, what="3 requests and replies")
    # The server sees a per-channel reply address, not the pseudo-queue's name.
    assert all(p.reply_to.startswith(REPLY_TO + ".") for p in seen)
    assert len({p.reply_to for p in seen}) == 1
    assert sorted((p.correlation_id, b) for _, p, b in replies) == sorted(
        (corr, b"echo:req%d" % i) for i, corr in enumerate(ids)
    )
    m = replies[0][0]
    assert (m.exchange, m.routing_key) == ("", seen[0].reply_to)


def test_direct_reply_to_pseudo_queue_declare(ch):
    ok = ch.queue_declare(REPLY_TO, passive=True)
    assert ok.method.queue == REPLY_TO


def test_direct_reply_to_needs_consumer_first(ch, names):
    q = names.q()
    ch.queue_declare(q)
    with channel_error(406, "PRECONDITION_FAILED - fast reply consumer does not exist"):
        ch.basic_publish("", q, b"x", pika.BasicProperties(reply_to=REPLY_TO))
        ch.queue_declare(q, passive=True)


def test_direct_reply_to_needs_no_ack(ch):
    with channel_error(406, "PRECONDITION_FAILED - reply consumer cannot acknowledge"):
        ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=False)


def test_reply_to_unknown_address_is_dropped(ch, names):
    # Replying to a stale direct reply-to address drops the message; the channel stays open.
    ch.confirm_delivery()
    ch.basic_publish("", REPLY_TO + ".g1h2AA5yZXBseUAyNzc5NjQyMAAAC1oAAAAAXPbiCw==", b"late")
    ch.queue_declare("", exclusive=True)


def test_callback_queue_rpc(conn, conn2, names):
    q = names.q("rpc")
    seen = []
    serve_one(conn2, q, seen)
    ch = conn.channel()
    callback = ch.queue_declare("", exclusive=True).method.queue
    replies = []
    ch.basic_consume(callback, lambda c, m, p, b: replies.append((p.correlation_id, b)), auto_ack=True)
    corr = str(uuid.uuid4())
    ch.basic_publish("", q, b"hi", pika.BasicProperties(reply_to=callback, correlation_id=corr))
    pump_until([conn, conn2], lambda: replies, what="reply")
    assert replies == [(corr, b"echo:hi")]
