"""Real clients over FerryMQ's TLS listeners: pika (AMQPS, PLAIN and EXTERNAL), paho-mqtt
(MQTTS and MQTT over wss, the client certificate's CN as the user), kcat
(security.protocol=ssl, with and without a client certificate) and curl (HTTPS). Client
certificates are optional on this server: a certificate from an unknown CA is refused."""

import json
import ssl
import subprocess
import threading
import uuid

import paho.mqtt.client as mqtt
import pika
import pika.credentials
import pytest


def context(pki, cert=None):
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if cert:
        ctx.load_cert_chain(str(pki / ("%s.pem" % cert)), str(pki / ("%s.key" % cert)))
    return ctx


def amqps(server, pki, cert=None, credentials=None):
    params = pika.ConnectionParameters(
        host="localhost",
        port=server.port("AMQPS"),
        ssl_options=pika.SSLOptions(context(pki, cert), "localhost"),
        credentials=credentials or pika.PlainCredentials("guest", "guest"),
        connection_attempts=1,
    )
    return pika.BlockingConnection(params)


def round_trip(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"over TLS")
    for _ in range(100):
        method, _props, body = ch.basic_get(q, auto_ack=True)
        if method:
            return body
        conn.sleep(0.05)
    return None


def test_pika_plain_over_amqps(server, pki):
    conn = amqps(server, pki)
    try:
        assert round_trip(conn) == b"over TLS"
    finally:
        conn.close()


def test_pika_external_with_a_client_certificate(server, pki):
    conn = amqps(server, pki, cert="client", credentials=pika.credentials.ExternalCredentials())
    try:
        assert round_trip(conn) == b"over TLS"
    finally:
        conn.close()


def test_pika_external_is_refused_without_a_certificate(server, pki):
    # Without a certificate EXTERNAL is not offered: pika finds no common mechanism.
    with pytest.raises(pika.exceptions.AMQPError):
        amqps(server, pki, credentials=pika.credentials.ExternalCredentials())


def test_pika_with_a_certificate_of_an_unknown_ca_gets_no_connection(server, pki):
    with pytest.raises(pika.exceptions.AMQPError):
        amqps(server, pki, cert="rogue")


def mqtt_client(server, pki, cert=None, transport="tcp"):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tls-" + uuid.uuid4().hex[:8],
                    transport=transport)
    kw = {"ca_certs": str(pki / "ca.pem")}
    if cert:
        kw.update(certfile=str(pki / ("%s.pem" % cert)), keyfile=str(pki / ("%s.key" % cert)))
    c.tls_set(**kw)
    connected, result = threading.Event(), {}

    def on_connect(_c, _u, _flags, reason, _props):
        result["rc"] = reason
        connected.set()

    c.on_connect = on_connect
    if transport == "websockets":
        c.ws_set_options(path="/mqtt")
        port = server.port("https")
    else:
        port = server.port("MQTTS")
    return c, port, connected, result


@pytest.mark.parametrize("transport", ["tcp", "websockets"])
def test_paho_with_a_client_certificate_and_no_user_name(server, pki, transport):
    c, port, connected, result = mqtt_client(server, pki, cert="client", transport=transport)
    got = threading.Event()
    msgs = []

    def on_message(_c, _u, m):
        msgs.append(m.payload)
        got.set()

    c.on_message = on_message
    c.connect("localhost", port)
    c.loop_start()
    try:
        assert connected.wait(20)
        assert not result["rc"].is_failure, result["rc"]
        topic = "tls/%s/%s" % (transport, uuid.uuid4().hex[:8])
        subscribed = threading.Event()
        c.on_subscribe = lambda *_a: subscribed.set()
        c.subscribe(topic, qos=1)
        assert subscribed.wait(20)
        c.publish(topic, b"via paho over TLS", qos=1)
        assert got.wait(20)
        assert msgs == [b"via paho over TLS"]
    finally:
        c.disconnect()
        c.loop_stop()


def test_paho_with_a_certificate_naming_no_user_is_refused(server, pki):
    c, port, connected, result = mqtt_client(server, pki, cert="stranger")
    c.connect("localhost", port)
    c.loop_start()
    try:
        assert connected.wait(20)
        assert result["rc"].is_failure
        assert str(result["rc"]) == "Not authorized"
    finally:
        c.loop_stop()


def kcat(server, pki, *args, cert=None, stdin=None):
    cmd = ["kcat", "-b", "localhost:%d" % server.port("Kafka SSL"),
           "-X", "security.protocol=ssl", "-X", "ssl.ca.location=%s" % (pki / "ca.pem")]
    if cert:
        cmd += ["-X", "ssl.certificate.location=%s" % (pki / ("%s.pem" % cert)),
                "-X", "ssl.key.location=%s" % (pki / ("%s.key" % cert))]
    return subprocess.run(cmd + list(args), input=stdin, capture_output=True, timeout=60)


def test_kcat_over_ssl_with_and_without_a_client_certificate(server, pki):
    topic = "tls-kcat-" + uuid.uuid4().hex[:8]
    md = kcat(server, pki, "-L", "-J")
    assert md.returncode == 0, md.stderr
    brokers = json.loads(md.stdout)["brokers"]
    assert [b["name"].rsplit(":", 1)[1] for b in brokers] == [str(server.port("Kafka SSL"))]
    put = kcat(server, pki, "-P", "-t", topic, cert="client", stdin=b"one\ntwo\n")
    assert put.returncode == 0, put.stderr
    got = kcat(server, pki, "-C", "-t", topic, "-o", "beginning", "-c", "2", "-e")
    assert got.returncode == 0, got.stderr
    assert got.stdout.split() == [b"one", b"two"]


def test_kcat_with_a_certificate_of_an_unknown_ca_is_refused(server, pki):
    r = kcat(server, pki, "-L", "-m", "5", cert="rogue")
    assert r.returncode != 0


def curl(server, pki, *args):
    url = "https://localhost:%d/api/whoami" % server.port("https")
    return subprocess.run(["curl", "-sS", "--cacert", str(pki / "ca.pem"), *args, url],
                          capture_output=True, text=True, timeout=60)


def test_curl_over_https(server, pki):
    r = curl(server, pki, "-u", "guest:guest", "--fail")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["name"] == "guest"


def test_curl_with_a_client_certificate_and_no_credentials(server, pki):
    r = curl(server, pki, "--cert", str(pki / "client.pem"), "--key", str(pki / "client.key"), "--fail")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["name"] == "guest"
    anonymous = curl(server, pki, "-o", "/dev/null", "-w", "%{http_code}")
    assert anonymous.stdout == "401"


def test_curl_with_a_certificate_of_an_unknown_ca_is_refused(server, pki):
    r = curl(server, pki, "--cert", str(pki / "rogue.pem"), "--key", str(pki / "rogue.key"))
    assert r.returncode != 0
