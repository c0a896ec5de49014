"""Cross-protocol (FerryMQ only: it needs FerryMQ's AMQP and HTTP listeners, so it cannot be
checked against Mosquitto). MQTT topics map onto the amq.topic exchange: '/' <-> '.',
'+' <-> '*', '#' <-> '#'; MQTT 5 user properties <-> headers; content type and correlation data
<-> their AMQP properties (RabbitMQ's conventions, docs: design notes section 2)."""

import base64
import json
import time
import urllib.request

import pika
import pytest
from paho.mqtt.packettypes import PacketTypes

from mqtt_support import V5, V311, WAIT_S, ferrymq_only, prop, props, sub_opts

pytestmark = [ferrymq_only, pytest.mark.ferrymq_only]


def rk(topic):
    return topic.replace("/", ".")


@pytest.fixture
def amqp(broker):
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        host=broker.host, port=broker.amqp_port, credentials=pika.PlainCredentials(broker.user, broker.password),
        connection_attempts=1, socket_timeout=10))
    ch = conn.channel()
    yield ch
    if conn.is_open:
        conn.close()


def bound_queue(ch, binding_key):
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, "amq.topic", binding_key)
    return q


def get_one(ch, q, timeout=WAIT_S):
    deadline = time.monotonic() + timeout
    while True:
        method, properties, body = ch.basic_get(q, auto_ack=True)
        if method is not None:
            return method, properties, body
        assert time.monotonic() < deadline, "nothing reached AMQP queue %s within %ss" % (q, timeout)
        ch.connection.process_data_events(time_limit=0.05)


@pytest.mark.parametrize("version", [V311, V5])
def test_mqtt_publish_reaches_amqp_queue_bound_to_amq_topic(mq, amqp, uid, version):
    q = bound_queue(amqp, rk(uid) + ".a.b")
    mq(version).publish(uid + "/a/b", b"from mqtt", qos=1)
    method, _, body = get_one(amqp, q)
    assert (method.exchange, method.routing_key, body) == ("amq.topic", rk(uid) + ".a.b", b"from mqtt")


def test_mqtt_v5_properties_become_amqp_properties_and_headers(mq, amqp, uid):
    q = bound_queue(amqp, rk(uid) + ".*.temp")  # '*' = MQTT '+'
    mq(V5).publish(uid + "/kitchen/temp", b'{"c": 21}', qos=1, properties=props(
        PacketTypes.PUBLISH, UserProperty=[("site", "berlin"), ("floor", "2")], ContentType="application/json",
        CorrelationData=b"corr-1"))
    method, p, body = get_one(amqp, q)
    assert (method.routing_key, body) == (rk(uid) + ".kitchen.temp", b'{"c": 21}')
    assert p.content_type == "application/json"
    assert (p.headers or {}).get("site") in ("berlin", b"berlin")
    assert (p.headers or {}).get("floor") in ("2", b"2")
    assert p.correlation_id == "corr-1"


def test_amqp_publish_to_amq_topic_reaches_mqtt_subscriber(mq, amqp, uid):
    s = mq(V5)
    s.subscribe(uid + "/x/+", options=sub_opts(qos=1))
    amqp.basic_publish("amq.topic", rk(uid) + ".x.y", b"from amqp", pika.BasicProperties(
        content_type="text/plain", headers={"tenant": "a"}, correlation_id="c-9"))
    m = s.get()
    assert (m.topic, m.payload) == (uid + "/x/y", b"from amqp")
    assert prop(m.properties, "ContentType") == "text/plain"
    assert ("tenant", "a") in (prop(m.properties, "UserProperty") or [])
    assert prop(m.properties, "CorrelationData") == b"c-9"


def test_amqp_publish_reaches_v311_subscriber_with_hash(mq, amqp, uid):
    s = mq(V311)
    s.subscribe(uid + "/#", 1)
    amqp.basic_publish("amq.topic", rk(uid) + ".deep.er.key", b"deep")
    m = s.get()
    assert (m.topic, m.payload) == (uid + "/deep/er/key", b"deep")


def test_http_publish_reaches_mqtt_subscriber(mq, broker, uid):
    """POST /api/exchanges/%2F/amq.topic/publish (docs/http-api.md)."""
    s = mq(V5)
    s.subscribe(uid + "/http/+", options=sub_opts(qos=1))
    body = json.dumps({"routing_key": rk(uid) + ".http.in", "payload": "from http",
                       "headers": {"tenant": "h"}, "properties": {"content_type": "text/plain"}}).encode()
    req = urllib.request.Request(
        "http://%s:%d/api/exchanges/%%2F/amq.topic/publish" % (broker.host, broker.http_port), data=body,
        method="POST", headers={"content-type": "application/json", "authorization": "Basic " + base64.b64encode(
            ("%s:%s" % (broker.user, broker.password)).encode()).decode()})
    with urllib.request.urlopen(req, timeout=WAIT_S) as resp:
        answer = json.loads(resp.read())
    assert answer.get("routed") is True, answer
    m = s.get()
    assert (m.topic, m.payload) == (uid + "/http/in", b"from http")
    assert prop(m.properties, "ContentType") == "text/plain"
    assert ("tenant", "h") in (prop(m.properties, "UserProperty") or [])


def test_retained_mqtt_message_not_duplicated_to_amqp(mq, amqp, uid, retained):
    """A retained MQTT publish is routed once to AMQP at publish time, like any other."""
    retained.append(uid + "/r")
    q = bound_queue(amqp, rk(uid) + ".r")
    mq(V311).publish(uid + "/r", b"kept", qos=1, retain=True)
    _, _, body = get_one(amqp, q)
    assert body == b"kept"
    assert amqp.basic_get(q, auto_ack=True)[0] is None
