"""SASL on the Kafka listener (kafka.sasl_mechanisms=PLAIN,SCRAM-SHA-256) against FerryMQ's users
(default guest/guest): both mechanisms work, a wrong password fails with an authentication error,
and a client without SASL is not served."""

import queue
import time

import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient

from kafka_support import WAIT_S, consume_n, produce_all, unique


def sasl_conf(target, mechanism, user="guest", password="guest", **extra):
    return target.ck(**{"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": mechanism,
                        "sasl.username": user, "sasl.password": password}, **extra)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_produce_and_consume_with_sasl(sasl_broker, mechanism):
    topic = unique("it-sasl-%s-" % mechanism.lower())
    delivered = produce_all(Producer(sasl_conf(sasl_broker, mechanism)), topic,
                            [(b"k", b"secret-%d" % i) for i in range(5)])
    assert [m.offset() for m in delivered] == list(range(5))
    c = Consumer(sasl_conf(sasl_broker, mechanism, **{"group.id": "g-" + topic, "auto.offset.reset": "earliest"}))
    try:
        c.subscribe([topic])
        assert [m.value() for m in consume_n(c, 5)] == [b"secret-%d" % i for i in range(5)]
    finally:
        c.close()


def auth_errors(conf):
    """Errors a client reports through error_cb while it tries to reach the cluster."""
    errs = queue.Queue()
    conf = dict(conf, error_cb=errs.put)
    admin = AdminClient(conf)
    with pytest.raises(Exception):
        admin.list_topics(timeout=3)
    return admin, errs


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_wrong_password_is_an_authentication_error(sasl_broker, mechanism):
    admin, errs = auth_errors(sasl_conf(sasl_broker, mechanism, password="wrong"))
    seen = []
    deadline = time.monotonic() + WAIT_S
    while True:
        assert time.monotonic() < deadline, "no authentication error reported; errors seen: %r" % seen
        admin.poll(0.1)  # serves error_cb
        try:
            err = errs.get_nowait()
        except queue.Empty:
            continue
        seen.append(err)
        if err.code() in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED):
            break
    assert "authentication" in err.str().lower() or "auth" in err.str().lower(), err.str()


def test_client_without_sasl_is_not_served(sasl_broker):
    """A PLAINTEXT client (no SaslHandshake) gets no metadata from a listener that requires SASL."""
    admin = AdminClient(sasl_broker.ck(**{"socket.timeout.ms": 3000}))
    with pytest.raises(Exception):
        admin.list_topics(timeout=3)
