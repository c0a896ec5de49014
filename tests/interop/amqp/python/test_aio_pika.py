"""aio-pika (aiormq/pamqp underneath): the asyncio client's view of the same behaviour."""

import asyncio
import datetime
import decimal
import functools
import uuid

import aio_pika
import aiormq.exceptions
import pamqp.commands
import pytest

DEADLINE_S = 10


def run_async(fn):
    """Runs an `async def test(broker, names)` on a fresh event loop with an overall deadline."""

    @functools.wraps(fn)
    def wrapper(broker, names):
        async def with_deadline():
            await asyncio.wait_for(fn(broker, names), timeout=40)

        asyncio.run(with_deadline())

    return wrapper


async def connect(broker, **kw):
    return await aio_pika.connect(broker.url(**kw), timeout=DEADLINE_S)


async def next_message(queue_iter):
    return await asyncio.wait_for(queue_iter.__anext__(), DEADLINE_S)


@run_async
async def test_aio_publish_consume_ack_with_typed_headers(broker, names):
    async with await connect(broker) as conn:
        ch = await conn.channel()
        q = await ch.declare_queue(names.q(), durable=True)
        headers = {
            "s": "text",
            "small": 5,
            "neg": -300,
            "int32": 70000,
            "int64": 2**40,
            "float": 2.5,
            "bool": True,
            "dec": decimal.Decimal("1.25"),
            "table": {"a": 1, "b": "c"},
            "array": [1, "x", False],
            "none": None,
            "ts": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
        }
        msg = aio_pika.Message(
            b"payload",
            headers=headers,
            content_type="text/plain",
            content_encoding="utf-8",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            priority=3,
            correlation_id="c-1",
            reply_to="r",
            expiration=60,
            message_id="id-1",
            timestamp=datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
            type="t",
            user_id="guest",
            app_id="aio",
        )
        confirmation = await ch.default_exchange.publish(msg, q.name)
        assert isinstance(confirmation, pamqp.commands.Basic.Ack)
        async with q.iterator() as it:
            got = await next_message(it)
            await got.ack()
        assert got.body == b"payload"
        assert (got.content_type, got.content_encoding, got.delivery_mode) == ("text/plain", "utf-8", aio_pika.DeliveryMode.PERSISTENT)
        assert (got.priority, got.correlation_id, got.reply_to, got.message_id) == (3, "c-1", "r", "id-1")
        assert (got.type, got.user_id, got.app_id, got.expiration) == ("t", "guest", "aio", 60)
        assert got.timestamp == datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
        assert (got.redelivered, got.exchange, got.routing_key) == (False, "", q.name)
        for k, v in headers.items():
            assert got.headers[k] == v, k
        await q.delete()


@run_async
async def test_aio_error_classes(broker, names):
    async with await connect(broker) as conn:
        missing = names.q("missing")
        ch = await conn.channel()
        with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity) as e:
            await ch.declare_queue(missing, passive=True)
        assert e.value.args[0] == "NOT_FOUND - no queue '%s' in vhost '/'" % missing

        ch = await conn.channel()
        name = names.q()
        await ch.declare_queue(name, arguments={"x-max-length": 5})
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed) as e:
            await (await conn.channel()).declare_queue(name, arguments={"x-max-length": 6})
        assert e.value.args[0].startswith("PRECONDITION_FAILED - inequivalent arg 'x-max-length'")

        with pytest.raises(aiormq.exceptions.ChannelAccessRefused) as e:
            await (await conn.channel()).declare_exchange("amq.aio-" + uuid.uuid4().hex[:6])
        assert "contains reserved prefix 'amq.*'" in e.value.args[0]

        excl = names.q("excl")
        await (await conn.channel()).declare_queue(excl, exclusive=True)
        async with await connect(broker) as other:
            with pytest.raises(aiormq.exceptions.ChannelLockedResource) as e:
                await (await other.channel()).declare_queue(excl, passive=True)
            assert e.value.args[0].startswith("RESOURCE_LOCKED - cannot obtain exclusive access to locked queue")


@run_async
async def test_aio_bad_password(broker, names):
    with pytest.raises(aiormq.exceptions.ProbableAuthenticationError) as e:
        await connect(broker, password="definitely-wrong")
    assert e.value.args[0] == (
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
    )


@run_async
async def test_aio_confirms_nack_and_mandatory_return(broker, names):
    async with await connect(broker) as conn:
        ch = await conn.channel(publisher_confirms=True)
        q = await ch.declare_queue(names.q(), arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
        assert isinstance(await ch.default_exchange.publish(aio_pika.Message(b"1"), q.name), pamqp.commands.Basic.Ack)
        with pytest.raises(aio_pika.exceptions.DeliveryError) as e:
            await ch.default_exchange.publish(aio_pika.Message(b"2"), q.name)
        assert isinstance(e.value.frame, pamqp.commands.Basic.Nack)
        returned = await ch.default_exchange.publish(aio_pika.Message(b"r"), names.q("absent"), mandatory=True)
        assert isinstance(returned.delivery, pamqp.commands.Basic.Return)
        assert (returned.delivery.reply_code, returned.delivery.reply_text, returned.body) == (312, "NO_ROUTE", b"r")


@run_async
async def test_aio_transaction(broker, names):
    async with await connect(broker) as conn:
        ch = await conn.channel(publisher_confirms=False)
        q = await ch.declare_queue(names.q())
        tx = ch.transaction()
        await tx.select()
        await ch.default_exchange.publish(aio_pika.Message(b"rolled back"), q.name)
        await tx.rollback()
        await ch.default_exchange.publish(aio_pika.Message(b"committed"), q.name)
        await tx.commit()
        got = await q.get(no_ack=True, timeout=DEADLINE_S)
        assert got.body == b"committed"
        assert await q.get(no_ack=True, fail=False) is None


@run_async
async def test_aio_prefetch_and_nack_requeue(broker, names):
    async with await connect(broker) as conn:
        ch = await conn.channel()
        await ch.set_qos(prefetch_count=1)
        q = await ch.declare_queue(names.q())
        for i in range(3):
            await ch.default_exchange.publish(aio_pika.Message(b"%d" % i), q.name)
        seen = []
        async with q.iterator() as it:
            m = await next_message(it)
            seen.append((m.body, m.redelivered))
            await m.nack(requeue=True)
            for _ in range(3):
                m = await next_message(it)
                seen.append((m.body, m.redelivered))
                await m.ack()
        assert seen == [(b"0", False), (b"0", True), (b"1", False), (b"2", False)]


@run_async
async def test_aio_dead_letter_on_reject(broker, names):
    async with await connect(broker) as conn:
        ch = await conn.channel()
        dlx = await ch.declare_exchange(names.x("dlx"), aio_pika.ExchangeType.TOPIC)
        dlq = await ch.declare_queue(names.q("dlq"))
        await dlq.bind(dlx, "#")
        q = await ch.declare_queue(names.q(), arguments={"x-dead-letter-exchange": dlx.name, "x-dead-letter-routing-key": "dead"})
        await ch.default_exchange.publish(aio_pika.Message(b"bad"), q.name)
        m = await q.get(timeout=DEADLINE_S)
        await m.reject(requeue=False)
        async with dlq.iterator() as it:
            d = await next_message(it)
            await d.ack()
        assert (d.body, d.routing_key, d.exchange) == (b"bad", "dead", dlx.name)
        [death] = d.headers["x-death"]
        assert (death["reason"], death["queue"], death["count"], death["routing-keys"]) == ("rejected", q.name, 1, [q.name])


@run_async
async def test_aio_direct_reply_to_rpc(broker, names):
    async with await connect(broker) as server_conn, await connect(broker) as client_conn:
        sch = await server_conn.channel()
        rpc_q = await sch.declare_queue(names.q("rpc"))

        async def on_request(message: aio_pika.abc.AbstractIncomingMessage):
            async with message.process():
                n = int(message.body)
                await sch.default_exchange.publish(
                    aio_pika.Message(str(n * n).encode(), correlation_id=message.correlation_id),
                    routing_key=message.reply_to,
                )

        await rpc_q.consume(on_request)
        cch = await client_conn.channel()
        reply_q = await cch.get_queue("amq.rabbitmq.reply-to", ensure=False)
        replies = {}
        done = asyncio.get_running_loop().create_future()

        async def on_reply(message: aio_pika.abc.AbstractIncomingMessage):
            replies[message.correlation_id] = int(message.body)
            if len(replies) == 5 and not done.done():
                done.set_result(None)

        await reply_q.consume(on_reply, no_ack=True)
        for n in range(5):
            await cch.default_exchange.publish(
                aio_pika.Message(str(n).encode(), reply_to="amq.rabbitmq.reply-to", correlation_id="c%d" % n),
                routing_key=rpc_q.name,
            )
        await asyncio.wait_for(done, DEADLINE_S)
        assert replies == {"c%d" % n: n * n for n in range(5)}


@run_async
async def test_aio_stream_offsets(broker, names):
    async with await connect(broker) as conn:
        ch = await conn.channel()
        await ch.set_qos(prefetch_count=10)
        q = await ch.declare_queue(names.q("stream"), durable=True, arguments={"x-queue-type": "stream"})
        for i in range(4):
            await ch.default_exchange.publish(aio_pika.Message(b"s%d" % i), q.name)
        got = []
        async with q.iterator(arguments={"x-stream-offset": 2}) as it:
            for _ in range(2):
                m = await next_message(it)
                got.append((m.headers["x-stream-offset"], m.body))
                await m.ack()
        assert got == [(2, b"s2"), (3, b"s3")]


@run_async
async def test_aio_exchange_to_exchange_and_headers(broker, names):
    async with await connect(broker) as conn:
        ch = await conn.channel()
        src = await ch.declare_exchange(names.x("src"), aio_pika.ExchangeType.TOPIC)
        hx = await ch.declare_exchange(names.x("hdr"), aio_pika.ExchangeType.HEADERS)
        await hx.bind(src, "events.#")
        q = await ch.declare_queue(names.q(), exclusive=True)
        await q.bind(hx, arguments={"x-match": "any", "kind": "a", "level": 3})
        await src.publish(aio_pika.Message(b"match-int", headers={"level": 3}), "events.x")
        await src.publish(aio_pika.Message(b"no-key", headers={"kind": "a"}), "other")
        await src.publish(aio_pika.Message(b"no-header", headers={"kind": "b"}), "events.y")
        await src.publish(aio_pika.Message(b"match-str", headers={"kind": "a"}), "events.z")
        bodies = []
        while (m := await q.get(no_ack=True, fail=False)) is not None:
            bodies.append(m.body)
        assert bodies == [b"match-int", b"match-str"]
