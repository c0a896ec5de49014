"""exchange.declare/delete/bind/unbind and routing through every exchange kind (pika)."""

import pika

from amqp_support import channel_error, consume, exchange_exists, get_all, pump_until


def bound_queue(ch, exchange, key="", arguments=None):
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, exchange, key, arguments=arguments)
    return q


def bodies(ch, q):
    return sorted(b for _, _, b in get_all(ch, q))


def test_declare_every_kind_and_passive(ch, names):
    for kind in ("direct", "fanout", "topic", "headers"):
        x = names.x(kind)
        ok = ch.exchange_declare(x, kind)
        assert isinstance(ok.method, pika.spec.Exchange.DeclareOk)
        # An equivalent redeclare and a passive declare both succeed.
        ch.exchange_declare(x, kind)
        assert isinstance(ch.exchange_declare(x, passive=True).method, pika.spec.Exchange.DeclareOk)
        # A passive declare ignores everything but the name (amqplib's checkExchange sends type '').
        ch.exchange_declare(x, "", passive=True)
        ch.exchange_declare(x, "fanout" if kind != "fanout" else "topic", passive=True, durable=True)


def test_predeclared_exchanges_exist(ch):
    for x, kind in (
        ("amq.direct", "direct"),
        ("amq.fanout", "fanout"),
        ("amq.topic", "topic"),
        ("amq.headers", "headers"),
        ("amq.match", "headers"),
    ):
        ch.exchange_declare(x, passive=True)
        # Redeclaring a predeclared exchange with its own properties is allowed.
        ch.exchange_declare(x, kind, durable=True)


def test_passive_declare_missing_exchange_is_404(ch, names):
    x = names.x()
    with channel_error(404, "NOT_FOUND - no exchange '%s' in vhost '/'" % x):
        ch.exchange_declare(x, passive=True)


def test_inequivalent_type_is_406(conn, names):
    x = names.x()
    conn.channel().exchange_declare(x, "direct")
    with channel_error(
        406,
        "PRECONDITION_FAILED - inequivalent arg 'type' for exchange '%s' in vhost '/': "
        "received 'fanout' but current is 'direct'" % x,
    ):
        conn.channel().exchange_declare(x, "fanout")


def test_inequivalent_durable_and_auto_delete_are_406(conn, names):
    x = names.x()
    conn.channel().exchange_declare(x, "direct", auto_delete=True)
    with channel_error(
        406,
        "PRECONDITION_FAILED - inequivalent arg 'durable' for exchange '%s' in vhost '/': "
        "received 'true' but current is 'false'" % x,
    ):
        conn.channel().exchange_declare(x, "direct", durable=True, auto_delete=True)
    with channel_error(
        406,
        "PRECONDITION_FAILED - inequivalent arg 'auto_delete' for exchange '%s' in vhost '/': "
        "received 'false' but current is 'true'" % x,
    ):
        conn.channel().exchange_declare(x, "direct", auto_delete=False)


def test_unknown_exchange_type_is_503_connection_error(broker, names):
    c = broker.connect()
    try:
        x = names.x()
        try:
            c.channel().exchange_declare(x, "no-such-kind")
        except pika.exceptions.ConnectionClosedByBroker as e:
            assert (e.reply_code, e.reply_text) == (503, "COMMAND_INVALID - unknown exchange type 'no-such-kind'")
        else:
            raise AssertionError("declare of an unknown exchange type succeeded")
    finally:
        if c.is_open:
            c.close()


def test_durable_exchange_declare(ch, names):
    x = names.x()
    ch.exchange_declare(x, "topic", durable=True)
    ch.exchange_declare(x, "topic", durable=True, passive=True)


def test_delete_if_unused(ch, names):
    x = names.x()
    ch.exchange_declare(x, "direct")
    q = bound_queue(ch, x, "k")
    with channel_error(406, "PRECONDITION_FAILED - exchange '%s' in vhost '/' in use" % x):
        ch.exchange_delete(x, if_unused=True)
    ch = ch.connection.channel()
    ch.queue_unbind(q, x, "k")
    ch.exchange_delete(x, if_unused=True)
    assert not exchange_exists(names.broker, x)


def test_delete_if_unused_only_counts_bindings_from_the_exchange(ch, names):
    # Being the destination of an exchange-to-exchange binding does not make it "used".
    x = names.x()
    ch.exchange_declare(x, "fanout")
    ch.exchange_bind(x, "amq.fanout", "")
    ch.exchange_delete(x, if_unused=True)
    assert not exchange_exists(names.broker, x)


def test_delete_missing_exchange_is_ok(ch, names):
    ch.exchange_delete(names.x())
    # The channel is still open.
    ch.exchange_declare("amq.direct", passive=True)


def test_delete_removes_bindings(ch, names):
    x = names.x()
    ch.exchange_declare(x, "fanout")
    q = bound_queue(ch, x)
    ch.exchange_delete(x)
    ch.exchange_declare(x, "fanout")
    ch.confirm_delivery()
    ch.basic_publish(x, "", b"after")
    assert get_all(ch, q) == []


def test_auto_delete_exchange_goes_with_its_last_binding(ch, names):
    x = names.x()
    ch.exchange_declare(x, "direct", auto_delete=True)
    q1 = bound_queue(ch, x, "a")
    q2 = bound_queue(ch, x, "b")
    ch.queue_unbind(q1, x, "a")
    assert exchange_exists(names.broker, x)
    ch.queue_unbind(q2, x, "b")
    assert not exchange_exists(names.broker, x)


def test_auto_delete_exchange_without_bindings_stays(ch, names):
    x = names.x()
    ch.exchange_declare(x, "direct", auto_delete=True)
    assert exchange_exists(names.broker, x)


def test_direct_routing(ch, names):
    x = names.x()
    ch.exchange_declare(x, "direct")
    qa, qb = bound_queue(ch, x, "a"), bound_queue(ch, x, "b")
    ch.queue_bind(qb, x, "a")  # qb bound twice: still one copy per queue
    ch.confirm_delivery()
    for key in ("a", "b", "c"):
        ch.basic_publish(x, key, key.encode())
    assert bodies(ch, qa) == [b"a"]
    assert bodies(ch, qb) == [b"a", b"b"]


def test_fanout_routing_ignores_key(ch, names):
    x = names.x()
    ch.exchange_declare(x, "fanout")
    qs = [bound_queue(ch, x, "ignored%d" % i) for i in range(3)]
    ch.confirm_delivery()
    ch.basic_publish(x, "whatever", b"hi")
    for q in qs:
        assert bodies(ch, q) == [b"hi"]


def test_topic_routing(ch, names):
    x = names.x()
    ch.exchange_declare(x, "topic")
    patterns = {
        "star": "*.orange.*",
        "hash": "lazy.#",
        "rabbit": "*.*.rabbit",
        "all": "#",
        "exact": "a.b",
        "hashmid": "a.#.z",
    }
    qs = {name: bound_queue(ch, x, p) for name, p in patterns.items()}
    keys = ["quick.orange.rabbit", "lazy.orange.elephant", "quick.orange.fox", "lazy.brown.fox", "lazy",
            "quick.brown.fox", "orange", "quick.orange.male.rabbit", "a.b", "a.z", "a.b.c.z", ""]
    ch.confirm_delivery()
    for k in keys:
        ch.basic_publish(x, k, k.encode())
    assert bodies(ch, qs["star"]) == sorted([b"quick.orange.rabbit", b"lazy.orange.elephant", b"quick.orange.fox"])
    assert bodies(ch, qs["hash"]) == sorted([b"lazy.orange.elephant", b"lazy.brown.fox", b"lazy"])
    assert bodies(ch, qs["rabbit"]) == [b"quick.orange.rabbit"]
    assert bodies(ch, qs["all"]) == sorted(k.encode() for k in keys)
    assert bodies(ch, qs["exact"]) == [b"a.b"]
    assert bodies(ch, qs["hashmid"]) == sorted([b"a.z", b"a.b.c.z"])


def test_headers_routing(ch, names):
    x = names.x()
    ch.exchange_declare(x, "headers")
    q_all = bound_queue(ch, x, arguments={"x-match": "all", "format": "pdf", "type": "report"})
    q_any = bound_queue(ch, x, arguments={"x-match": "any", "format": "pdf", "type": "report"})
    q_default = bound_queue(ch, x, arguments={"format": "zip"})  # x-match defaults to all
    q_empty = bound_queue(ch, x, arguments={"x-match": "all"})  # no conditions: matches everything
    ch.confirm_delivery()
    msgs = {
        b"both": {"format": "pdf", "type": "report", "extra": 1},
        b"pdf": {"format": "pdf"},
        b"log": {"type": "log"},
        b"zip": {"format": "zip"},
        b"none": None,
    }
    for body, headers in msgs.items():
        ch.basic_publish(x, "", body, pika.BasicProperties(headers=headers))
    assert bodies(ch, q_all) == [b"both"]
    assert bodies(ch, q_any) == sorted([b"both", b"pdf"])
    assert bodies(ch, q_default) == [b"zip"]
    assert bodies(ch, q_empty) == sorted(msgs)


def test_exchange_to_exchange_bind_and_unbind(ch, names):
    src, dst = names.x("src"), names.x("dst")
    ch.exchange_declare(src, "topic")
    ch.exchange_declare(dst, "fanout")
    q = bound_queue(ch, dst)
    ch.exchange_bind(dst, src, "orders.*")
    ch.confirm_delivery()
    ch.basic_publish(src, "orders.new", b"routed")
    ch.basic_publish(src, "invoices.new", b"not routed")
    assert bodies(ch, q) == [b"routed"]
    ch.exchange_unbind(dst, src, "orders.*")
    ch.basic_publish(src, "orders.new", b"after unbind")
    assert bodies(ch, q) == []


def test_exchange_to_exchange_cycle_delivers_once(ch, names):
    a, b = names.x("a"), names.x("b")
    ch.exchange_declare(a, "fanout")
    ch.exchange_declare(b, "fanout")
    ch.exchange_bind(b, a)
    ch.exchange_bind(a, b)
    q = bound_queue(ch, b)
    ch.confirm_delivery()
    ch.basic_publish(a, "", b"once")
    assert bodies(ch, q) == [b"once"]


def test_exchange_bind_missing_source_or_destination_is_404(conn, names):
    x = names.x()
    conn.channel().exchange_declare(x, "fanout")
    missing = names.x("missing")
    with channel_error(404, "NOT_FOUND - no exchange '%s' in vhost '/'" % missing):
        conn.channel().exchange_bind(x, missing)
    with channel_error(404, "NOT_FOUND - no exchange '%s' in vhost '/'" % missing):
        conn.channel().exchange_bind(missing, x)


def test_internal_exchange_routes_but_refuses_publishes(conn, names):
    ch = conn.channel()
    front, internal = names.x("front"), names.x("internal")
    ch.exchange_declare(front, "fanout")
    ch.exchange_declare(internal, "fanout", internal=True)
    ch.exchange_bind(internal, front)
    q = bound_queue(ch, internal)
    ch.confirm_delivery()
    ch.basic_publish(front, "", b"via front")
    assert bodies(ch, q) == [b"via front"]
    ch2 = conn.channel()
    with channel_error(403, "ACCESS_REFUSED - cannot publish to internal exchange '%s' in vhost '/'" % internal):
        ch2.basic_publish(internal, "", b"direct")
        ch2.queue_declare("", exclusive=True)  # a round trip to see the channel close


def test_alternate_exchange(ch, names):
    x, ae = names.x("main"), names.x("ae")
    ch.exchange_declare(ae, "fanout")
    ch.exchange_declare(x, "direct", arguments={"alternate-exchange": ae})
    q_main = bound_queue(ch, x, "known")
    q_ae = bound_queue(ch, ae)
    returned = []
    ch.add_on_return_callback(lambda *a: returned.append(a))
    ch.confirm_delivery()
    ch.basic_publish(x, "known", b"routed")
    # Mandatory is satisfied by the alternate exchange: no basic.return.
    ch.basic_publish(x, "unknown", b"to ae", mandatory=True)
    assert bodies(ch, q_main) == [b"routed"]
    [(method, props, body)] = get_all(ch, q_ae)
    assert body == b"to ae"
    assert (method.exchange, method.routing_key) == (x, "unknown")
    assert returned == []


def test_alternate_exchange_missing_drops_and_returns_mandatory(ch, names):
    x = names.x("main")
    ch.exchange_declare(x, "direct", arguments={"alternate-exchange": names.x("never-declared")})
    returned = []
    ch.add_on_return_callback(lambda ch_, method, props, body: returned.append((method.reply_code, body)))
    ch.basic_publish(x, "nothing", b"lost", mandatory=True)
    pump_until(ch.connection, lambda: returned, what="basic.return")
    assert returned == [(312, b"lost")]


def test_reserved_names_and_default_exchange(conn):
    with channel_error(403, "ACCESS_REFUSED - exchange name 'amq.interop' contains reserved prefix 'amq.*'"):
        conn.channel().exchange_declare("amq.interop", "direct")
    with channel_error(404, "NOT_FOUND - no exchange 'amq.interop' in vhost '/'"):
        conn.channel().exchange_declare("amq.interop", passive=True)
    with channel_error(403, "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed"):
        conn.channel().exchange_delete("amq.direct")
    for op in (
        lambda c: c.exchange_declare("", "direct"),
        lambda c: c.exchange_declare("", passive=True),
        lambda c: c.exchange_delete(""),
        lambda c: c.exchange_bind("amq.fanout", "", "k"),
        lambda c: c.exchange_bind("", "amq.fanout", "k"),
    ):
        with channel_error(403, "ACCESS_REFUSED - operation not permitted on the default exchange"):
            op(conn.channel())


def test_default_exchange_routes_by_queue_name(ch, names):
    q = names.q()
    ch.queue_declare(q)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"hello")
    [(method, _, body)] = consume(ch, q, 1, auto_ack=True)
    assert (method.exchange, method.routing_key, body) == ("", q, b"hello")
