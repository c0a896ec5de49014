"""connection.* and channel.*: handshake, login, vhost, channels, flow, hard errors (pika)."""

import pika
import pika.exceptions
import pytest

from amqp_support import channel_error, connection_error

RABBITMQ_CAPABILITIES = (
    "publisher_confirms",
    "exchange_exchange_bindings",
    "basic.nack",
    "consumer_cancel_notify",
    "connection.blocked",
    "consumer_priorities",
    "authentication_failure_close",
    "per_consumer_qos",
    "direct_reply_to",
)


def test_server_properties_and_capabilities(conn):
    props = conn._impl.server_properties
    for key in ("product", "version", "platform", "copyright", "information"):
        assert isinstance(props.get(key), str) and props[key], key
    caps = props["capabilities"]
    for cap in RABBITMQ_CAPABILITIES:
        assert caps.get(cap) is True, cap


def test_tune_negotiation(broker):
    c = broker.connect(channel_max=7, frame_max=16384, heartbeat=0)
    try:
        params = c._impl.params
        # The lower of client and server values wins; 0 heartbeat from the client disables it.
        assert params.channel_max == 7
        assert params.frame_max == 16384
        assert params.heartbeat == 0
        ch = c.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        body = bytes(range(256)) * 300  # 76800 bytes: several 16 KiB frames
        ch.confirm_delivery()
        ch.basic_publish("", q, body)
        _, _, got = ch.basic_get(q, auto_ack=True)
        assert got == body
    finally:
        c.close()


def test_heartbeat_negotiation(broker):
    c = broker.connect(heartbeat=5)
    try:
        assert c._impl.params.heartbeat == 5
    finally:
        c.close()


def test_many_channels(broker):
    c = broker.connect()
    try:
        chans = [c.channel() for _ in range(50)]
        assert len({ch.channel_number for ch in chans}) == 50
        for ch in chans[::2]:
            ch.close()
        for ch in chans[1::2]:
            ch.queue_declare("", exclusive=True)
        assert all(ch.is_closed for ch in chans[::2])
    finally:
        c.close()


def test_channel_limit_is_enforced(broker):
    c = broker.connect(channel_max=3)
    try:
        for _ in range(3):
            c.channel()
        with pytest.raises(pika.exceptions.NoFreeChannels):
            c.channel()
    finally:
        c.close()


def test_bad_password_is_403(broker):
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as e:
        broker.connect(credentials=pika.PlainCredentials(broker.user, "wrong-password"))
    assert "(403)" in str(e.value)
    assert (
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
        in str(e.value)
    )


def test_unknown_user_is_403(broker):
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as e:
        broker.connect(credentials=pika.PlainCredentials("no-such-user", "x"))
    assert "(403)" in str(e.value)


def test_missing_vhost_is_530(broker):
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as e:
        broker.connect(virtual_host="no-such-vhost")
    assert "(530)" in str(e.value)
    assert "NOT_ALLOWED - vhost no-such-vhost not found" in str(e.value)


def test_client_close_of_channel_and_connection(broker):
    c = broker.connect()
    ch = c.channel()
    ch.close()
    assert ch.is_closed and c.is_open
    c.close()
    assert c.is_closed


def test_channel_flow_active(ch):
    assert ch.flow(True) is True
    ch.queue_declare("", exclusive=True)


def test_channel_flow_inactive_is_not_implemented(broker):
    c = broker.connect()
    with connection_error(540, "NOT_IMPLEMENTED - active=false"):
        c.channel().flow(False)


def test_second_channel_open_is_504(broker):
    c = broker.connect()
    ch = c.channel()
    with connection_error(504, "CHANNEL_ERROR - second 'channel.open' seen"):
        ch._impl._send_method(pika.spec.Channel.Open())
        ch.queue_declare("", exclusive=True)


def test_channel_method_on_channel_zero_is_504(broker):
    c = broker.connect()
    ch = c.channel()
    with connection_error(504, "CHANNEL_ERROR - unexpected method in connection state running"):
        c._impl._send_method(0, pika.spec.Basic.Qos(prefetch_count=1))
        ch.queue_declare("", exclusive=True)


def test_method_instead_of_content_header_is_505(broker):
    c = broker.connect()
    ch = c.channel()
    with connection_error(
        505, "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead"
    ):
        ch._impl._send_method(pika.spec.Basic.Publish(exchange="", routing_key="x"))  # no header, no body
        ch.queue_declare("", exclusive=True)


def test_server_only_method_from_client_is_503(broker):
    c = broker.connect()
    ch = c.channel()
    with connection_error(503, "COMMAND_INVALID - unimplemented method"):
        ch._impl._send_method(pika.spec.Queue.DeclareOk(queue="x", message_count=0, consumer_count=0))
        ch.queue_declare("", exclusive=True)


def test_channel_error_leaves_connection_and_other_channels_open(conn, names):
    other = conn.channel()
    q = names.q()
    with channel_error(404):
        conn.channel().queue_declare(q, passive=True)
    assert conn.is_open and other.is_open
    other.queue_declare(q)
