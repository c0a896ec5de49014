"""WebSocket (Python `websockets`) and Server-Sent Events (`requests`) against the real server:
queue subscriptions with acks, exchange subscriptions with publish over the socket, stream
subscriptions with credit and group commits, SSE from a queue and an exchange."""

import base64
import json

import requests
from websockets.sync.client import connect

from conftest import AUTH, eventually

BASIC = "Basic " + base64.b64encode(b"guest:guest").decode()


def ws(server, query=""):
    return connect(server.ws_url(query), additional_headers={"Authorization": BASIC}, open_timeout=30)


class Frames:
    """Reads JSON frames, keeping those of other types for later."""

    def __init__(self, sock):
        self.sock, self.pending = sock, []

    def send(self, **req):
        self.sock.send(json.dumps(req))

    def expect(self, kind):
        for i, f in enumerate(self.pending):
            if f["type"] == kind:
                return self.pending.pop(i)
        while True:
            f = json.loads(self.sock.recv(timeout=30))
            if f["type"] == kind:
                return f
            self.pending.append(f)


def test_queue_subscription_acks_and_requeue_on_close(server, name):
    assert server.call("PUT", "/api/queues/%2F/" + name, {}).status_code == 201
    for i in range(3):
        assert server.call("POST", "/api/queues/%%2F/%s/publish" % name, {"payload": "m%d" % i}).ok
    with ws(server) as sock:
        f = Frames(sock)
        f.send(op="subscribe", id=1, queue=name, prefetch=2)
        assert f.expect("subscribed")["queue"] == name
        a, b = f.expect("message"), f.expect("message")
        assert [a["message"]["payload"], b["message"]["payload"]] == ["m0", "m1"]
        f.send(op="ack", id="a", deliveries=[a["delivery"], b["delivery"]])
        assert sorted(f.expect("settled")["settled"]) == sorted([a["delivery"], b["delivery"]])
        c = f.expect("message")
        assert c["message"]["payload"] == "m2" and c["redelivered"] is False
        consumers = server.call("GET", "/api/consumers/%2F").json()
        mine = [x for x in consumers if x["queue"] == name]
        assert mine and mine[0]["protocol"] == "websocket" and mine[0]["ack_required"] is True
    # Closed with m2 unacked: it is back in the queue.
    eventually(
        "m2 requeued",
        lambda: server.call("GET", "/api/queues/%2F/" + name).json()["messages_ready"] == 1,
    )


def test_exchange_subscription_and_publish_over_the_socket(server, name):
    with ws(server) as sock:
        f = Frames(sock)
        f.send(op="subscribe", subscription="eu", exchange="amq.topic", pattern=name + ".eu.*")
        sub = f.expect("subscribed")
        assert sub["queue"].startswith("amq.gen-") and sub["auto_ack"] is True
        f.send(op="publish", id="p1", exchange="amq.topic", routing_key=name + ".eu.fr",
               payload="bonjour", headers={"tenant": "a"}, properties={"correlation_id": "c-1"})
        assert f.expect("published")["routed"] is True
        m = f.expect("message")
        assert m["message"]["payload"] == "bonjour"
        assert m["message"]["headers"] == {"tenant": "a"}
        assert m["message"]["properties"]["correlation_id"] == "c-1"
        f.send(op="subscribe", queue="no-such-queue-" + name)
        e = f.expect("error")
        assert e["status"] == 404 and e["error"] == "not_found"


def test_stream_subscription_with_credit_and_group_commit(server, name):
    assert server.call("PUT", "/api/streams/%2F/" + name, {}).status_code == 201
    for i in range(4):
        assert server.call("POST", "/api/queues/%%2F/%s/publish" % name, {"payload": "e%d" % i}).ok
    with ws(server) as sock:
        f = Frames(sock)
        f.send(op="subscribe", stream=name, offset="first", credit=2, group="py")
        assert f.expect("subscribed")["offset"] == 0
        assert [f.expect("message")["offset"] for _ in range(2)] == [0, 1]
        f.send(op="commit", id="c", subscription="s1")
        assert f.expect("committed")["offset"] == 2
        f.send(op="credit", subscription="s1", credit=5)
        assert [f.expect("message")["offset"] for _ in range(2)] == [2, 3]
    got = server.call("GET", "/api/streams/%%2F/%s/offsets/py" % name).json()
    assert got["offset"] == 2
    # A new socket of the same group starts where the group committed.
    with ws(server) as sock:
        f = Frames(sock)
        f.send(op="subscribe", stream=name, group="py", credit=1)
        assert f.expect("subscribed")["offset"] == 2
        m = f.expect("message")
        assert (m["offset"], m["message"]["payload"]) == (2, "e2")


def sse_events(resp):
    """Yields (event, data) pairs of a text/event-stream response."""
    event, data = None, []
    for line in resp.iter_lines(decode_unicode=True):
        if line == "":
            if event or data:
                yield event, "\n".join(data)
            event, data = None, []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            event = line[len("event:"):].strip()
        elif line.startswith("data:"):
            data.append(line[len("data:"):].lstrip())


def test_sse_queue_and_exchange_events(server, name):
    assert server.call("PUT", "/api/queues/%2F/" + name, {}).status_code == 201
    assert server.call("POST", "/api/queues/%%2F/%s/publish" % name, {"payload": "hello"}).ok
    url = server.http + "/api/queues/%%2F/%s/events?prefetch=5" % name
    with requests.get(url, auth=AUTH, stream=True, timeout=(10, 30)) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
        ev, data = next(events)
        assert (ev, json.loads(data)) == ("subscribed", {"queue": name})
        ev, data = next(events)
        msg = json.loads(data)
        assert ev == "message" and msg["message"]["payload"] == "hello"
    eventually(
        "the SSE delivery was acked",
        lambda: server.call("GET", "/api/queues/%2F/" + name).json()["messages"] == 0,
    )
    url = server.http + "/api/exchanges/%%2F/amq.topic/events?pattern=%s.%%23" % name
    with requests.get(url, auth=AUTH, stream=True, timeout=(10, 30)) as r:
        events = sse_events(r)
        ev, data = next(events)
        temp = json.loads(data)["queue"]
        assert ev == "subscribed" and temp.startswith("amq.gen-")
        pub = server.call("POST", "/api/exchanges/%2F/amq.topic/publish",
                          {"routing_key": name + ".x", "payload": "topic!"})
        assert pub.json()["routed"] is True
        ev, data = next(events)
        assert ev == "message" and json.loads(data)["message"]["payload"] == "topic!"
    eventually(
        "the temporary queue went away with the stream",
        lambda: server.call("GET", "/api/queues/%2F/" + temp).status_code == 404,
    )
    # Errors before the stream starts are JSON.
    r = requests.get(server.http + "/api/queues/%2F/missing-" + name + "/events", auth=AUTH, timeout=30)
    assert r.status_code == 404 and r.json()["error"] == "not_found"
