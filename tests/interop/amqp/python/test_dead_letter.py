"""Dead-lettering: reasons, x-death history, routing-key override, chains (pika)."""

import datetime
import time

import pika

from amqp_support import get_all


def test_rejected_message_is_dead_lettered_with_x_death(ch, names):
    x, dlx = names.x("src"), names.x("dlx")
    q, dlq = names.q("work"), names.q("dlq")
    ch.exchange_declare(x, "direct")
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx)
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": dlx})
    ch.queue_bind(q, x, "orders")
    ch.confirm_delivery()
    ch.basic_publish(x, "orders", b"bad", pika.BasicProperties(headers={"keep": "me"}, message_id="m1"))
    [(method, _, _)] = get_all(ch, q, expect=1, auto_ack=False)
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) - datetime.timedelta(seconds=5)
    ch.basic_reject(method.delivery_tag, requeue=False)
    [(dmethod, props, body)] = get_all(ch, dlq, expect=1)
    assert body == b"bad"
    # The routing key is kept (no x-dead-letter-routing-key); the exchange is the DLX.
    assert (dmethod.exchange, dmethod.routing_key) == (dlx, "orders")
    assert props.message_id == "m1"
    assert props.headers["keep"] == "me"
    [death] = props.headers["x-death"]
    assert death["count"] == 1
    assert death["reason"] == "rejected"
    assert death["queue"] == q
    assert death["exchange"] == x
    assert death["routing-keys"] == ["orders"]
    assert before <= death["time"] <= datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=5)
    assert props.headers["x-first-death-reason"] == "rejected"
    assert props.headers["x-first-death-queue"] == q
    assert props.headers["x-first-death-exchange"] == x


def test_nack_dead_letters_with_routing_key_override(ch, names):
    q, dlq = names.q("work"), names.q("dlq")
    ch.queue_declare(dlq)
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"n")
    [(method, _, _)] = get_all(ch, q, expect=1, auto_ack=False)
    ch.basic_nack(method.delivery_tag, requeue=False)
    [(dmethod, props, body)] = get_all(ch, dlq, expect=1)
    assert (body, dmethod.exchange, dmethod.routing_key) == (b"n", "", dlq)
    [death] = props.headers["x-death"]
    assert (death["reason"], death["queue"], death["exchange"], death["routing-keys"]) == ("rejected", q, "", [q])


def test_requeued_reject_is_not_dead_lettered(ch, names):
    q, dlq = names.q("work"), names.q("dlq")
    ch.queue_declare(dlq)
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"again")
    [(method, _, _)] = get_all(ch, q, expect=1, auto_ack=False)
    ch.basic_reject(method.delivery_tag, requeue=True)
    assert [b for _, _, b in get_all(ch, q)] == [b"again"]
    assert get_all(ch, dlq) == []


def test_expired_message_dead_letters_without_expiration(ch, names):
    q, dlq = names.q("work"), names.q("dlq")
    ch.queue_declare(dlq)
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"ttl", pika.BasicProperties(expiration="100"))
    [(_, props, body)] = get_all(ch, dlq, expect=1, timeout=10)
    assert body == b"ttl"
    # The per-message TTL is removed and kept in the x-death entry.
    assert props.expiration is None
    [death] = props.headers["x-death"]
    assert (death["reason"], death["queue"], death["original-expiration"]) == ("expired", q, "100")


def test_dead_letter_chain_ttl_then_reject(ch, names):
    dlx1 = names.x("dlx1")
    q1, q2, q3 = names.q("one"), names.q("two"), names.q("three")
    ch.exchange_declare(dlx1, "topic")
    ch.queue_declare(q3)
    ch.queue_declare(q2, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": q3})
    ch.queue_bind(q2, dlx1, "#")
    ch.queue_declare(q1, arguments={"x-message-ttl": 50, "x-dead-letter-exchange": dlx1})
    ch.confirm_delivery()
    ch.basic_publish("", q1, b"chain", pika.BasicProperties(headers={"origin": "test"}))
    [(method, props, _)] = get_all(ch, q2, expect=1, auto_ack=False, timeout=10)
    assert [d["reason"] for d in props.headers["x-death"]] == ["expired"]
    ch.basic_reject(method.delivery_tag, requeue=False)
    [(_, props, body)] = get_all(ch, q3, expect=1)
    assert body == b"chain"
    deaths = props.headers["x-death"]
    # Most recent first.
    assert [(d["queue"], d["reason"], d["count"]) for d in deaths] == [(q2, "rejected", 1), (q1, "expired", 1)]
    assert deaths[1]["exchange"] == "" and deaths[1]["routing-keys"] == [q1]
    assert deaths[0]["exchange"] == dlx1 and deaths[0]["routing-keys"] == [q1]
    assert props.headers["x-first-death-queue"] == q1
    assert props.headers["x-first-death-reason"] == "expired"
    assert props.headers["x-first-death-exchange"] == ""
    assert props.headers["origin"] == "test"


def test_x_death_counts_repeated_cycles(ch, names):
    a, b = names.q("a"), names.q("b")
    ch.queue_declare(a, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": b})
    ch.queue_declare(b, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": a})
    ch.confirm_delivery()
    ch.basic_publish("", a, b"loop")
    for q in (a, b, a):
        [(method, _, _)] = get_all(ch, q, expect=1, auto_ack=False)
        ch.basic_reject(method.delivery_tag, requeue=False)
    [(_, props, _)] = get_all(ch, b, expect=1)
    deaths = props.headers["x-death"]
    assert [(d["queue"], d["reason"], d["count"]) for d in deaths] == [(a, "rejected", 2), (b, "rejected", 1)]
    assert props.headers["x-first-death-queue"] == a


def test_expiry_cycle_without_rejection_is_dropped(ch, names):
    # A message that would expire back into the queue it came from, with no rejection in the cycle,
    # is dropped instead of cycling forever.
    q = names.q()
    ch.queue_declare(q, arguments={"x-message-ttl": 50, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": q})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"cycle")
    time.sleep(0.5)
    # A message still cycling would sit in the queue for most of each 50 ms round: sample repeatedly.
    counts = []
    for _ in range(10):
        counts.append(ch.queue_declare(q, passive=True).method.message_count)
        time.sleep(0.03)
    assert counts == [0] * 10


def test_dead_letter_to_missing_exchange_drops(ch, names):
    q = names.q()
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": names.x("absent")})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"gone")
    [(method, _, _)] = get_all(ch, q, expect=1, auto_ack=False)
    ch.basic_reject(method.delivery_tag, requeue=False)
    assert ch.queue_declare(q, passive=True).method.message_count == 0
