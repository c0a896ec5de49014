"""HTTP/2 (cleartext, prior knowledge) with httpx against the real server: the same data plane
and management API as over HTTP/1.1, many requests as streams of one connection."""

import httpx

from conftest import AUTH


def h2_client():
    # http1=False: HTTP/2 with prior knowledge (h2c), no HTTP/1.1 upgrade dance.
    return httpx.Client(http1=False, http2=True, auth=AUTH, timeout=30)


def test_publish_and_get_over_http2(server, name):
    with h2_client() as c:
        r = c.put(server.http + "/api/queues/%2F/" + name, json={"durable": True})
        assert r.http_version == "HTTP/2" and r.status_code < 300, (r.status_code, r.text)
        r = c.post(server.http + "/api/queues/%2F/" + name + "/publish",
                   json={"payload": "over h2", "headers": {"via": "h2"}})
        assert (r.http_version, r.status_code) == ("HTTP/2", 200), r.text
        assert r.json()["routed"] is True
        r = c.post(server.http + "/api/queues/%2F/" + name + "/get",
                   json={"max_messages": 1, "wait_ms": 5000, "auto_ack": True})
        assert (r.http_version, r.status_code) == ("HTTP/2", 200), r.text
        [pulled] = r.json()["messages"]
        assert pulled["message"]["payload"] == "over h2"
        assert pulled["message"]["headers"] == {"via": "h2"}


def test_errors_and_management_over_one_http2_connection(server, name):
    with h2_client() as c:
        for path in ("/api/overview", "/api/vhosts", "/api/exchanges", "/health/live", "/metrics"):
            r = c.get(server.http + path)
            assert (r.http_version, r.status_code) == ("HTTP/2", 200), (path, r.text)
        # Bad input over HTTP/2 gets the same JSON error as over HTTP/1.1, and the connection
        # keeps serving.
        r = c.post(server.http + "/api/queues/%2F/" + name + "/publish", content=b"{not json",
                   headers={"content-type": "application/json"})
        assert r.http_version == "HTTP/2" and 400 <= r.status_code < 500
        assert "error" in r.json()
        r = c.get(server.http + "/api/queues/%2F/" + name)
        assert (r.http_version, r.status_code) == ("HTTP/2", 404)
        r = c.get(server.http + "/health/live")
        assert (r.http_version, r.status_code) == ("HTTP/2", 200)
