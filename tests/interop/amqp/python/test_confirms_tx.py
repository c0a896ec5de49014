"""confirm.select and tx.select/commit/rollback (pika BlockingConnection)."""

import pika
import pika.exceptions
import pytest

from amqp_support import channel_error, get_all, message_count


def test_confirm_select_and_persistent_publishes(ch, names):
    q = names.q()
    ch.queue_declare(q, durable=True)
    ch.confirm_delivery()
    for i in range(20):
        ch.basic_publish("", q, b"%d" % i, pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent))
    # Every publish above returned only after its basic.ack.
    assert message_count(ch, q) == 20
    got = get_all(ch, q)
    assert [b for _, _, b in got] == [b"%d" % i for i in range(20)]
    assert {p.delivery_mode for _, p, _ in got} == {2}


def test_confirm_select_is_idempotent(ch, names):
    ch.confirm_delivery()
    ch._impl._send_method(pika.spec.Confirm.Select(nowait=True))  # a second select: still fine
    q = names.q()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"x")
    assert message_count(ch, q) == 1


def test_confirms_ack_unroutable_and_to_missing_queue(ch, names):
    ch.confirm_delivery()
    x = names.x()
    ch.exchange_declare(x, "direct")
    # Unroutable, not mandatory: confirmed (acked) all the same.
    ch.basic_publish(x, "nowhere", b"lost")
    ch.basic_publish("", names.q("absent"), b"lost too")


def test_nack_on_reject_publish_overflow(ch, names):
    q = names.q()
    ch.queue_declare(q, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"1")
    for _ in range(2):
        with pytest.raises(pika.exceptions.NackError):
            ch.basic_publish("", q, b"over")
    assert [b for _, _, b in get_all(ch, q)] == [b"1"]


def test_cannot_switch_between_confirm_and_tx(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    with channel_error(406, "PRECONDITION_FAILED - cannot switch from confirm to tx mode"):
        ch.tx_select()
    ch = conn.channel()
    ch.tx_select()
    with channel_error(406, "PRECONDITION_FAILED - cannot switch from tx to confirm mode"):
        ch.confirm_delivery()


def test_commit_and_rollback_need_tx_select(conn):
    with channel_error(406, "PRECONDITION_FAILED - channel is not transactional"):
        conn.channel().tx_commit()
    with channel_error(406, "PRECONDITION_FAILED - channel is not transactional"):
        conn.channel().tx_rollback()


def test_tx_publish_commit_and_rollback(conn, names):
    q = names.q()
    obs = conn.channel()
    obs.queue_declare(q)
    tx = conn.channel()
    tx.tx_select()
    tx.tx_select()  # again: fine
    tx.basic_publish("", q, b"a")
    tx.basic_publish("", q, b"b")
    assert message_count(obs, q) == 0  # not before the commit
    tx.tx_rollback()
    assert message_count(obs, q) == 0
    tx.basic_publish("", q, b"c")
    tx.basic_publish("", q, b"d")
    tx.tx_commit()
    assert [b for _, _, b in get_all(obs, q)] == [b"c", b"d"]
    # The channel stays transactional after a commit.
    tx.basic_publish("", q, b"e")
    assert message_count(obs, q) == 0
    tx.tx_commit()
    assert [b for _, _, b in get_all(obs, q)] == [b"e"]


def test_tx_acks_commit_and_rollback(conn, names):
    q = names.q()
    obs = conn.channel()
    obs.queue_declare(q)
    obs.confirm_delivery()
    for b in (b"1", b"2"):
        obs.basic_publish("", q, b)
    tx = conn.channel()
    tx.tx_select()
    m1, _, b1 = tx.basic_get(q)
    m2, _, b2 = tx.basic_get(q)
    assert (b1, b2) == (b"1", b"2")
    tx.basic_ack(m1.delivery_tag)
    tx.tx_rollback()
    # A rolled-back ack leaves the message unacked (not requeued) ...
    assert message_count(obs, q) == 0
    tx.basic_ack(m2.delivery_tag)
    tx.tx_commit()
    tx.close()
    # ... so closing the channel requeues message 1, while the committed ack of 2 stands.
    [(method, _, body)] = get_all(obs, q)
    assert (body, method.redelivered) == (b"1", True)


def test_tx_reject_requeue_on_commit(conn, names):
    q = names.q()
    obs = conn.channel()
    obs.queue_declare(q)
    obs.confirm_delivery()
    obs.basic_publish("", q, b"r")
    tx = conn.channel()
    tx.tx_select()
    method, _, _ = tx.basic_get(q)
    tx.basic_reject(method.delivery_tag, requeue=True)
    assert message_count(obs, q) == 0
    tx.tx_commit()
    assert [(b, m.redelivered) for m, _, b in get_all(obs, q)] == [(b"r", True)]
