"""HTTP ↔ AMQP (pika) against the real server: headers and properties cross both ways; the
AMQP connection's channel and consumer show up in the management API; a policy set over
HTTP governs a queue declared over AMQP."""

import decimal

import pika
import pika.exceptions

from conftest import eventually


def amqp(server):
    return pika.BlockingConnection(
        pika.ConnectionParameters(
            host=server.amqp_host, port=server.amqp_port, credentials=pika.PlainCredentials("guest", "guest")
        )
    )


def test_http_publish_reaches_pika_with_properties_and_headers(server, name):
    conn = amqp(server)
    try:
        ch = conn.channel()
        ch.queue_declare(name, durable=True)
        r = server.call("POST", "/api/queues/%2F/" + name + "/publish", {
            "payload": "from http",
            "headers": {"tenant": "a", "n": 7, "ok": True},
            "properties": {"content_type": "text/plain", "correlation_id": "c-1", "reply_to": "back",
                           "message_id": "m-1", "expiration_ms": 60000, "priority": 3,
                           "timestamp_ms": 1700000000000, "type": "greeting", "app_id": "py"},
        })
        assert r.status_code == 200 and r.json()["routed"] is True
        method, props, body = ch.basic_get(name, auto_ack=True)
        assert body == b"from http"
        assert props.content_type == "text/plain"
        assert props.correlation_id == "c-1"
        assert props.reply_to == "back"
        assert props.message_id == "m-1"
        assert props.expiration == "60000"
        assert props.priority == 3
        assert props.timestamp == 1700000000
        assert props.type == "greeting"
        assert props.app_id == "py"
        assert props.delivery_mode == 2
        assert props.headers == {"tenant": "a", "n": 7, "ok": True}
        # A raw body keeps its content type; x-ferrymq-* headers map to properties and headers.
        r = server.call("POST", "/api/queues/%2F/" + name + "/messages", data=b"\x00\xff",
                        headers={"content-type": "application/octet-stream", "x-ferrymq-correlation-id": "c-2",
                                 "x-ferrymq-header-trace": "t-1"})
        assert r.status_code == 200
        method, props, body = ch.basic_get(name, auto_ack=True)
        assert body == b"\x00\xff"
        assert (props.content_type, props.correlation_id) == ("application/octet-stream", "c-2")
        assert props.headers == {"trace": "t-1"}
    finally:
        conn.close()


def test_pika_publish_reaches_http_with_properties_and_headers(server, name):
    conn = amqp(server)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(name, durable=True)
        ch.basic_publish("", name, b"from pika", pika.BasicProperties(
            content_type="application/json", content_encoding="utf-8", correlation_id="c-9",
            reply_to="replies", message_id="m-9", expiration="30000", priority=5,
            timestamp=1700000001, type="t", app_id="pika", delivery_mode=2,
            headers={"s": "x", "i": -3, "b": False, "d": decimal.Decimal("1.5")}))
    finally:
        conn.close()
    r = server.call("POST", "/api/queues/%2F/" + name + "/get", {"max_messages": 1, "wait_ms": 5000})
    m = r.json()["messages"][0]
    assert m["message"]["payload"] == "from pika"
    assert m["message"]["properties"] == {
        "content_type": "application/json", "content_encoding": "utf-8", "correlation_id": "c-9",
        "reply_to": "replies", "message_id": "m-9", "expiration_ms": 30000, "priority": 5,
        "timestamp_ms": 1700000001000, "type": "t", "app_id": "pika", "persistent": True,
    }
    assert m["message"]["headers"] == {"s": "x", "i": -3, "b": False, "d": {"$decimal": {"scale": 1, "value": 15}}}
    ack = server.call("POST", "/api/queues/%2F/" + name + "/ack", {"receipt_handles": [m["receipt_handle"]]})
    assert ack.json()["settled"] == [m["receipt_handle"]]


def test_pika_channels_and_consumers_are_listed(server, name):
    conn = amqp(server)
    try:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=7)
        ch.confirm_delivery()
        ch.queue_declare(name)
        tag = ch.basic_consume(name, lambda *a: None, consumer_tag="py-" + name)
        conn.process_data_events(0)
        consumers = eventually(
            "the pika consumer is listed",
            lambda: [c for c in server.call("GET", "/api/consumers").json() if c["consumer_tag"] == tag],
        )
        c = consumers[0]
        assert (c["queue"], c["prefetch_count"], c["ack_required"], c["active"]) == (name, 7, True, True)
        chans = server.call("GET", "/api/connections/%d/channels" % c["connection"]).json()
        mine = [x for x in chans if x["number"] == c["channel"]]
        assert mine and mine[0]["confirm"] is True and mine[0]["prefetch_count"] == 7
        assert mine[0]["consumer_count"] == 1 and mine[0]["name"] == c["channel_name"]
    finally:
        conn.close()
    eventually(
        "the consumer is gone with its connection",
        lambda: not [c for c in server.call("GET", "/api/consumers").json() if c["queue"] == name],
    )


def test_policy_set_over_http_governs_an_amqp_queue(server, name):
    r = server.call("PUT", "/api/policies/%2F/" + name, {
        "pattern": "^%s$" % name.replace(".", "\\."), "apply-to": "queues",
        "definition": {"max-length": 2, "overflow": "reject-publish"},
    })
    assert r.status_code == 200, r.text
    conn = amqp(server)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(name)
        for i in range(2):
            ch.basic_publish("", name, b"ok")
        try:
            ch.basic_publish("", name, b"refused")
            raise AssertionError("the third publish should be nacked (reject-publish)")
        except pika.exceptions.NackError:
            pass
    finally:
        conn.close()
    q = server.call("GET", "/api/queues/%2F/" + name).json()
    assert (q["messages"], q["policy"]) == (2, name)
    assert q["effective_policy_definition"] == {"max-length": 2, "overflow": "reject-publish"}
    assert server.call("DELETE", "/api/policies/%2F/" + name).status_code == 204
