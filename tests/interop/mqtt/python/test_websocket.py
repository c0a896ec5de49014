"""MQTT over WebSocket (subprotocol "mqtt", path /mqtt) with paho's websockets transport,
mixed with TCP clients. MQTT.js covers the same in ../node."""

import pytest
from paho.mqtt.packettypes import PacketTypes

from mqtt_support import V5, V311, both_versions, prop, props, sub_opts


@pytest.fixture(autouse=True)
def _needs_ws(broker):
    if not broker.ws:
        pytest.skip("no WebSocket endpoint (set MQTT_WS_URL)")


@both_versions
def test_ws_publish_subscribe(mq, uid, version):
    c = mq(version, transport="websockets")
    assert c.connack[0] == 0
    c.subscribe(uid, 1)
    c.publish(uid, b"over websocket", qos=1)
    m = c.get()
    assert (m.topic, m.payload, m.qos) == (uid, b"over websocket", 1)


@both_versions
def test_ws_and_tcp_clients_talk(mq, uid, version):
    ws = mq(version, transport="websockets")
    tcp = mq(version)
    ws.subscribe(uid + "/to-ws", 2)
    tcp.subscribe(uid + "/to-tcp", 2)
    tcp.publish(uid + "/to-ws", b"from tcp", qos=2)
    ws.publish(uid + "/to-tcp", b"from ws", qos=2)
    assert (ws.get().payload, tcp.get().payload) == (b"from tcp", b"from ws")


def test_ws_large_message_spans_frames(mq, uid):
    c = mq(V311, transport="websockets")
    c.subscribe(uid, 1)
    body = bytes(range(256)) * 512  # 128 KiB
    mq(V311).publish(uid, body, qos=1)
    assert c.get().payload == body


def test_ws_retained_and_v5_properties(mq, uid, retained):
    retained.append(uid)
    mq(V5).publish(uid, b"r", qos=1, retain=True,
                   properties=props(PacketTypes.PUBLISH, UserProperty=[("via", "ws")], ContentType="text/plain"))
    c = mq(V5, transport="websockets")
    c.subscribe(uid, options=sub_opts(qos=1))
    m = c.get()
    assert (m.payload, m.retain) == (b"r", True)
    assert prop(m.properties, "UserProperty") == [("via", "ws")]
    assert prop(m.properties, "ContentType") == "text/plain"


def test_ws_will_on_dropped_connection(mq, uid):
    watcher = mq(V311)
    watcher.subscribe(uid + "/will", 1)
    c = mq(V311, transport="websockets", will=dict(topic=uid + "/will", payload=b"ws gone", qos=1))
    c.kill()
    assert watcher.get().payload == b"ws gone"


def test_ws_persistent_session(mq, uid):
    c = mq(V5, transport="websockets", client_id=None, clean=True, session_expiry=300)
    cid = c.client_id
    c.subscribe(uid, options=sub_opts(qos=1))
    c.disconnect()
    mq(V5).publish(uid, b"while away", qos=1)
    back = mq(V5, transport="websockets", client_id=cid, clean=False, session_expiry=0)
    assert back.connack[:2] == (0, True)
    assert back.get().payload == b"while away"
