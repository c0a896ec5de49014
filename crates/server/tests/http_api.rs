//! Issue #5: the HTTP API against the real `ferrymq` binary — publish, pull with leases and
//! deadlines, management, definitions, streams, metrics, authentication and every error path
//! (JSON error bodies, never a 5xx for bad input).

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

/// A running server and a client for it.
struct Api {
    _server: common::Server,
    _dir: tempfile::TempDir,
    base: String,
    agent: ureq::Agent,
    auth: Option<String>,
}

fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

impl Api {
    fn start() -> Api {
        let dir = tempfile::tempdir().unwrap();
        let server = common::serve(dir.path(), &dir.path().join("data"), &[]);
        let addr = common::listening(&server, "http");
        Api {
            _server: server,
            _dir: dir,
            base: format!("http://{addr}"),
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into(),
            auth: Some(basic("guest", "guest")),
        }
    }

    fn as_auth(&self, auth: Option<String>) -> Api2<'_> {
        Api2 { api: self, auth }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.as_auth(self.auth.clone()).call(method, path, body)
    }
    fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None)
    }
    fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, Some(body))
    }
    fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("PUT", path, Some(body))
    }
    fn delete(&self, path: &str) -> (u16, Value) {
        self.call("DELETE", path, None)
    }
}

struct Api2<'a> {
    api: &'a Api,
    auth: Option<String>,
}

impl Api2<'_> {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.api.base);
        let a = &self.api.agent;
        let mut resp = match (method, body) {
            ("GET", _) => {
                let mut r = a.get(&url);
                if let Some(h) = &self.auth {
                    r = r.header("authorization", h);
                }
                r.call()
            }
            ("DELETE", _) => {
                let mut r = a.delete(&url);
                if let Some(h) = &self.auth {
                    r = r.header("authorization", h);
                }
                r.call()
            }
            (m, body) => {
                let mut r = if m == "PUT" {
                    a.put(&url)
                } else {
                    a.post(&url)
                };
                if let Some(h) = &self.auth {
                    r = r.header("authorization", h);
                }
                r.header("content-type", "application/json")
                    .send(body.unwrap_or(json!({})).to_string())
            }
        }
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        assert!(status < 500, "{method} {path} answered {status}: {v}");
        if status >= 400 {
            assert!(
                v["error"].is_string() && v["reason"].is_string(),
                "{method} {path}: error body without error/reason: {v}"
            );
        }
        (status, v)
    }
}

#[test]
fn health_auth_tokens_and_error_bodies() {
    let api = Api::start();
    assert_eq!(api.as_auth(None).call("GET", "/health/live", None).0, 200);
    assert_eq!(api.as_auth(None).call("GET", "/health/ready", None).0, 200);
    let (s, v) = api.as_auth(None).call("GET", "/api/queues", None);
    assert_eq!((s, v["error"].as_str()), (401, Some("not_authorized")));
    let (s, _) = api
        .as_auth(Some(basic("guest", "wrong")))
        .call("GET", "/api/queues", None);
    assert_eq!(s, 401);
    assert_eq!(
        api.as_auth(Some("Digest x".into()))
            .call("GET", "/api/queues", None)
            .0,
        401
    );
    assert_eq!(
        api.as_auth(Some("Basic !!!".into()))
            .call("GET", "/api/queues", None)
            .0,
        401
    );
    // Bearer tokens: issued against Basic, used, revoked.
    let (s, t) = api.post("/api/tokens", json!({"ttl_seconds": 60}));
    assert_eq!(s, 201, "{t}");
    let bearer = format!("Bearer {}", t["token"].as_str().unwrap());
    let b = api.as_auth(Some(bearer.clone()));
    assert_eq!(b.call("GET", "/api/whoami", None).1["name"], "guest");
    assert_eq!(b.call("POST", "/api/tokens", Some(json!({}))).0, 403);
    assert_eq!(b.call("DELETE", "/api/tokens/current", None).0, 204);
    assert_eq!(b.call("GET", "/api/whoami", None).0, 401);
    assert_eq!(api.post("/api/tokens", json!({"ttl_seconds": 0})).0, 422);
    // Error paths.
    assert_eq!(api.get("/api/nope").0, 404);
    assert_eq!(api.delete("/api/overview").0, 405);
    assert_eq!(api.get("/api/queues/nohost").0, 404);
    assert_eq!(
        api.put("/api/queues/%2F/q", json!({"durable": "yes"})).0,
        422
    );
    assert_eq!(api.put("/api/queues/%2F/q", json!({"bogus": 1})).0, 422);
    let url = format!("{}/api/queues/%2F/q", api.base);
    let mut r = api
        .agent
        .put(&url)
        .header("authorization", api.auth.as_deref().unwrap())
        .header("content-type", "application/json")
        .send("{not json")
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.body_mut().read_to_string().unwrap().contains("\"error\""));
    let mut r = api
        .agent
        .put(&url)
        .header("authorization", api.auth.as_deref().unwrap())
        .send("{}")
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    let _ = r.body_mut().read_to_string();
    assert_eq!(
        api.put(
            "/api/queues/%2F/q",
            json!({"arguments": {"x-max-length": -1}})
        )
        .0,
        422
    );
    assert_eq!(api.put("/api/queues/%2F/amq.x", json!({})).0, 403);
    assert_eq!(
        api.put("/api/exchanges/%2F/x", json!({"type": "weird"})).0,
        422
    );
    // OpenAPI and metrics are served.
    let (s, doc) = api.get("/api/openapi.json");
    assert_eq!(s, 200);
    assert!(doc["paths"]["/api/queues/{vhost}/{name}/get"]["post"].is_object());
    let (s, m) = api.as_auth(None).call("GET", "/metrics", None);
    assert_eq!(s, 200);
    let m = m.as_str().unwrap().to_string();
    assert!(
        m.contains("ferrymq_fsync_duration_seconds_bucket{le=\"+Inf\"}"),
        "{m}"
    );
    assert!(m.contains("ferrymq_alarm{resource=\"disk\"} 0"));
}

#[test]
fn publish_pull_ack_nack_deadlines_and_redrive() {
    let api = Api::start();
    assert_eq!(api.put("/api/queues/%2F/dlq", json!({})).0, 201);
    let (s, q) = api.put(
        "/api/queues/%2F/work",
        json!({"arguments": {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dlq"}}),
    );
    assert_eq!(s, 201, "{q}");
    assert_eq!(
        api.put("/api/queues/%2F/work", json!({})).0,
        409,
        "inequivalent"
    );
    // Publish with headers and properties, JSON and raw.
    let (s, r) = api.post(
        "/api/queues/%2F/work/publish",
        json!({"payload": "aGk=", "payload_encoding": "base64",
               "headers": {"n": 1, "b": {"$bytes": "AP8="}},
               "properties": {"correlation_id": "c1", "priority": 3, "content_type": "text/plain"}}),
    );
    assert_eq!((s, r["routed"].as_bool()), (200, Some(true)));
    assert_eq!(
        api.post("/api/queues/%2F/missing/publish", json!({"payload": "x"}))
            .0,
        404
    );
    assert_eq!(
        api.post(
            "/api/exchanges/%2F/missing/publish",
            json!({"payload": "x"})
        )
        .0,
        404
    );
    let (s, r) = api.post(
        "/api/exchanges/%2F/amq.direct/publish",
        json!({"routing_key": "nowhere", "payload": "x"}),
    );
    assert_eq!((s, r["routed"].as_bool()), (200, Some(false)));
    assert_eq!(
        api.post(
            "/api/queues/%2F/work/publish",
            json!({"payload": "%", "payload_encoding": "base64"})
        )
        .0,
        422
    );
    assert_eq!(
        api.post(
            "/api/queues/%2F/work/publish/batch",
            json!({"messages": []})
        )
        .0,
        422
    );
    // Pull: headers and properties come back.
    let (s, r) = api.post(
        "/api/queues/%2F/work/get",
        json!({"max_messages": 10, "visibility_timeout_ms": 500}),
    );
    assert_eq!(s, 200);
    let m = &r["messages"][0];
    assert_eq!(m["message"]["payload"], "hi");
    assert_eq!(m["message"]["headers"]["n"], 1);
    assert_eq!(m["message"]["headers"]["b"]["$bytes"], "AP8=");
    assert_eq!(m["message"]["properties"]["correlation_id"], "c1");
    assert_eq!(m["message"]["properties"]["priority"], 3);
    assert_eq!(m["delivery_count"], 1);
    // Not acked before its deadline: it returns, redelivered.
    let t0 = Instant::now();
    let (_, r) = api.post("/api/queues/%2F/work/get", json!({"wait_ms": 5000}));
    assert!(
        t0.elapsed() >= Duration::from_millis(200),
        "waited for the deadline"
    );
    let m = &r["messages"][0];
    assert_eq!(
        (m["redelivered"].as_bool(), m["delivery_count"].as_u64()),
        (Some(true), Some(2))
    );
    let h = m["receipt_handle"].as_str().unwrap().to_string();
    // Extend, nack with delay, then nack to the dead-letter queue.
    let (_, r) = api.post(
        "/api/queues/%2F/work/extend",
        json!({"receipt_handles": [h, "bogus"], "visibility_timeout_ms": 60000}),
    );
    assert_eq!(
        (r["settled"][0].as_str(), r["unknown"][0].as_str()),
        (Some(h.as_str()), Some("bogus"))
    );
    assert_eq!(
        api.post(
            "/api/queues/%2F/work/nack",
            json!({"receipt_handles": [h], "delay_ms": 300})
        )
        .0,
        200
    );
    assert!(
        api.post("/api/queues/%2F/work/get", json!({})).1["messages"]
            .as_array()
            .unwrap()
            .is_empty(),
        "delayed"
    );
    let (_, r) = api.post("/api/queues/%2F/work/get", json!({"wait_ms": 5000}));
    let h = r["messages"][0]["receipt_handle"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, r) = api.post(
        "/api/queues/%2F/work/nack",
        json!({"receipt_handles": [h], "requeue": false}),
    );
    assert_eq!(r["settled"].as_array().unwrap().len(), 1);
    assert_eq!(
        api.post("/api/queues/%2F/work/ack", json!({"receipt_handles": [h]}))
            .1["unknown"][0],
        h.as_str()
    );
    let (_, d) = api.get("/api/queues/%2F/dlq/browse?count=5");
    assert_eq!(d[0]["message"]["headers"]["x-first-death-queue"], "work");
    assert_eq!(
        d[0]["message"]["headers"]["n"], 1,
        "headers kept when dead-lettered"
    );
    // Redrive: back to the source, headers preserved.
    let (s, r) = api.post("/api/queues/%2F/dlq/move", json!({}));
    assert_eq!((s, r["moved"].as_u64()), (200, Some(1)), "{r}");
    let (_, b) = api.get("/api/queues/%2F/work/browse");
    assert_eq!(b[0]["message"]["headers"]["n"], 1);
    assert_eq!(
        api.post("/api/queues/%2F/work/move", json!({"destination": "nope"}))
            .0,
        404
    );
    // Long poll wakes on a publish.
    let base = api.base.clone();
    let auth = api.auth.clone().unwrap();
    assert_eq!(api.delete("/api/queues/%2F/work/contents").1["messages"], 1);
    let waiter = std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let t0 = Instant::now();
        let mut r = agent
            .post(&format!("{base}/api/queues/%2F/work/get"))
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .send(json!({"wait_ms": 15000, "auto_ack": true}).to_string())
            .unwrap();
        let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        (t0.elapsed(), v)
    });
    std::thread::sleep(Duration::from_millis(300));
    api.post("/api/queues/%2F/work/publish", json!({"payload": "wake"}));
    let (took, v) = waiter.join().unwrap();
    assert_eq!(v["messages"][0]["message"]["payload"], "wake");
    assert!(
        took < Duration::from_secs(10),
        "woken by the publish, not the timeout"
    );
    assert_eq!(
        api.get("/api/queues/%2F/work").1["messages"],
        0,
        "auto_ack settled it"
    );
    // Pull parameter errors.
    assert_eq!(
        api.post("/api/queues/%2F/work/get", json!({"max_messages": 0}))
            .0,
        422
    );
    assert_eq!(
        api.post("/api/queues/%2F/work/get", json!({"wait_ms": 999999}))
            .0,
        422
    );
    assert_eq!(api.post("/api/queues/%2F/nope/get", json!({})).0, 404);
    assert_eq!(
        api.post("/api/queues/%2F/work/ack", json!({"receipt_handles": []}))
            .0,
        422
    );
}

#[test]
fn management_permissions_and_definitions() {
    let api = Api::start();
    assert_eq!(
        api.put("/api/exchanges/%2F/orders", json!({"type": "topic"}))
            .0,
        201
    );
    assert_eq!(
        api.put("/api/exchanges/%2F/orders", json!({"type": "topic"}))
            .0,
        200
    );
    assert_eq!(
        api.put("/api/exchanges/%2F/orders", json!({"type": "fanout"}))
            .0,
        409
    );
    assert_eq!(api.put("/api/queues/%2F/eu", json!({})).0, 201);
    let (s, b) = api.post(
        "/api/bindings/%2F/e/orders/q/eu",
        json!({"routing_key": "eu.#"}),
    );
    assert_eq!(s, 201, "{b}");
    assert_eq!(
        api.post("/api/bindings/%2F/e/orders/x/eu", json!({})).0,
        404
    );
    assert_eq!(api.post("/api/bindings/%2F/e/nope/q/eu", json!({})).0, 404);
    let (_, bs) = api.get("/api/bindings/%2F");
    assert!(bs
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["routing_key"] == "eu.#"));
    let (_, r) = api.post(
        "/api/exchanges/%2F/orders/publish/batch",
        json!({"messages": [{"routing_key": "eu.fr", "payload": "1"}, {"routing_key": "us", "payload": "2"}]}),
    );
    assert_eq!(
        (r["routed"].as_u64(), r["unroutable"].as_u64()),
        (Some(1), Some(1))
    );
    let (_, q) = api.get("/api/queues/%2F/eu");
    assert_eq!(
        (q["messages"].as_u64(), q["messages_ready"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(api.delete("/api/queues/%2F/eu?if_empty=true").0, 409);
    assert_eq!(
        api.delete("/api/exchanges/%2F/orders?if_unused=true").0,
        409
    );
    assert_eq!(
        api.delete("/api/bindings/%2F/e/orders/q/eu?routing_key=nope")
            .0,
        404
    );
    assert_eq!(
        api.delete("/api/bindings/%2F/e/orders/q/eu?routing_key=eu.%23")
            .0,
        204
    );
    // A user with no tags and read-only permissions.
    assert_eq!(api.put("/api/users/bob", json!({"password": "pw"})).0, 201);
    assert_eq!(api.put("/api/users/bob", json!({"password": ""})).0, 422);
    assert_eq!(
        api.put(
            "/api/permissions/%2F/bob",
            json!({"configure": "", "write": "", "read": "e.*"})
        )
        .0,
        200
    );
    assert_eq!(
        api.put(
            "/api/permissions/%2F/bob",
            json!({"configure": "(", "write": "", "read": ""})
        )
        .0,
        422
    );
    let bob = api.as_auth(Some(basic("bob", "pw")));
    assert_eq!(bob.call("GET", "/api/users", None).0, 403);
    assert_eq!(
        bob.call("PUT", "/api/queues/%2F/mine", Some(json!({}))).0,
        403
    );
    assert_eq!(
        bob.call(
            "POST",
            "/api/queues/%2F/eu/publish",
            Some(json!({"payload": "x"}))
        )
        .0,
        403
    );
    assert_eq!(
        bob.call(
            "POST",
            "/api/queues/%2F/eu/get",
            Some(json!({"auto_ack": true}))
        )
        .0,
        200
    );
    assert_eq!(bob.call("GET", "/api/queues/%2F/eu/browse", None).0, 200);
    assert_eq!(bob.call("GET", "/api/definitions", None).0, 403);
    // Definitions round trip into a second server.
    assert_eq!(
        api.put("/api/vhosts/prod", json!({"max_queues": 10})).0,
        201
    );
    assert_eq!(
        api.put(
            "/api/queues/prod/jobs",
            json!({"arguments": {"x-max-length": 5}})
        )
        .0,
        201
    );
    let (s, defs) = api.get("/api/definitions");
    assert_eq!(s, 200);
    let other = Api::start();
    let (s, r) = other.post("/api/definitions", defs.clone());
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        other.get("/api/queues/prod/jobs").1["arguments"]["x-max-length"],
        5
    );
    assert_eq!(other.get("/api/exchanges/%2F/orders").1["type"], "topic");
    assert_eq!(other.get("/api/vhosts/prod").1["max_queues"], 10);
    assert_eq!(
        other
            .post(
                "/api/definitions",
                json!({"users": [{"name": "", "password": ""}]})
            )
            .0,
        422
    );
    assert_eq!(other.post("/api/definitions", json!({"queues": 5})).0, 422);
    // Overview, connections, vhost deletion.
    assert!(api.get("/api/overview").1["queues"].as_u64().unwrap() >= 2);
    assert_eq!(api.get("/api/connections").0, 200);
    assert_eq!(api.get("/api/connections/999999").0, 404);
    assert_eq!(api.delete("/api/connections/999999").0, 404);
    // Deleting a vhost with a durable queue, or a stream, fails in the core today (the
    // queue's log is still open when its files are removed): reported, not tested here.
    assert_eq!(api.put("/api/vhosts/empty", json!({})).0, 201);
    assert_eq!(api.delete("/api/vhosts/empty").0, 204);
    assert_eq!(api.delete("/api/vhosts/empty").0, 404);
    assert_eq!(api.delete("/api/users/bob").0, 204);
    assert_eq!(bob.call("GET", "/api/whoami", None).0, 401);
}

#[test]
fn streams_read_from_offsets_and_commit_group_offsets() {
    let api = Api::start();
    let (s, q) = api.put("/api/streams/%2F/events", json!({}));
    assert_eq!((s, q["type"].as_str()), (201, Some("stream")), "{q}");
    let msgs: Vec<Value> = (0..5)
        .map(|i| json!({"payload": format!("e{i}")}))
        .collect();
    assert_eq!(
        api.post(
            "/api/queues/%2F/events/publish/batch",
            json!({"messages": msgs})
        )
        .1["routed"],
        5
    );
    let (_, r) = api.get("/api/streams/%2F/events/messages?offset=first&max=2");
    assert_eq!(r["records"][0]["message"]["payload"], "e0");
    assert_eq!(r["next_offset"], 2);
    let (_, r) = api.get("/api/streams/%2F/events/messages?offset=last");
    assert_eq!(r["records"][0]["message"]["payload"], "e4");
    let (_, r) = api.get("/api/streams/%2F/events/messages?offset=3");
    assert_eq!(r["records"].as_array().unwrap().len(), 2);
    assert_eq!(
        api.get("/api/streams/%2F/events/messages?timestamp_ms=0").1["records"][0]["offset"],
        0
    );
    assert_eq!(
        api.get("/api/streams/%2F/events/offsets/g1")
            .1
            .get("offset"),
        None
    );
    assert_eq!(
        api.put("/api/streams/%2F/events/offsets/g1", json!({"offset": 4}))
            .0,
        200
    );
    assert_eq!(api.get("/api/streams/%2F/events/offsets/g1").1["offset"], 4);
    let (_, r) = api.get("/api/streams/%2F/events/messages?group=g1");
    assert_eq!(r["records"][0]["message"]["payload"], "e4");
    assert_eq!(
        api.get("/api/streams/%2F/events/messages?offset=soon").0,
        422
    );
    assert_eq!(
        api.get("/api/streams/%2F/events/messages?partition=7").0,
        404
    );
    assert_eq!(api.get("/api/streams/%2F/events/messages?max=0").0, 422);
    assert_eq!(api.post("/api/queues/%2F/events/get", json!({})).0, 409);
    assert_eq!(api.delete("/api/queues/%2F/events/contents").0, 409);
    assert_eq!(api.put("/api/queues/%2F/plain", json!({})).0, 201);
    assert_eq!(api.get("/api/streams/%2F/plain/messages").0, 409);
    assert_eq!(api.get("/api/streams").1.as_array().unwrap().len(), 1);
    assert_eq!(api.delete("/api/streams/%2F/plain").0, 404);
}

/// Reads one HTTP/1.1 answer (status, lowercased headers, body by Content-Length).
fn read_answer(r: &mut impl std::io::BufRead) -> (u16, Vec<(String, String)>, String) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(!line.is_empty(), "the server closed the connection");
    let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let n: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0; n];
    r.read_exact(&mut body).unwrap();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// The keep-alive bug: an error answered before the request body was read (404, 405, 401,
/// 415, …) made hyper close the connection without `Connection: close`, so a pooling client
/// reusing it saw "peer disconnected". Every answer, errors included, keeps the connection.
#[test]
fn error_answers_keep_the_connection_alive() {
    use std::io::{BufReader, Write};
    let api = Api::start();
    let addr = api.base.trim_start_matches("http://").to_string();
    let s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(common::TIMEOUT)).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let auth = basic("guest", "guest");
    let big = "x".repeat(300_000);
    let json_body = json!({"payload": "p"}).to_string();
    // (method, path, authorization, content type, body, expected status)
    type Req<'a> = (&'a str, &'a str, Option<&'a str>, &'a str, &'a str, u16);
    let requests: Vec<Req> = vec![
        (
            "POST",
            "/api/nope",
            Some(&auth),
            "application/json",
            &big,
            404,
        ),
        (
            "DELETE",
            "/api/overview",
            Some(&auth),
            "application/json",
            &big,
            405,
        ),
        (
            "POST",
            "/api/queues/%2F/q/publish",
            None,
            "application/json",
            &big,
            401,
        ),
        (
            "PUT",
            "/api/queues/%2F/q",
            Some(&auth),
            "text/plain",
            &big,
            415,
        ),
        (
            "PUT",
            "/api/queues/%2F/q",
            Some(&auth),
            "application/json",
            "{not json",
            400,
        ),
        (
            "PUT",
            "/api/queues/%2F/q",
            Some(&auth),
            "application/json",
            "{}",
            201,
        ),
        (
            "POST",
            "/api/queues/%2F/q/publish",
            Some(&auth),
            "application/json",
            &json_body,
            200,
        ),
        (
            "POST",
            "/api/queues/%2F/nope/publish",
            Some(&auth),
            "application/json",
            &big,
            400,
        ),
        (
            "GET",
            "/api/queues/%2F/q",
            Some(&auth),
            "application/json",
            "",
            200,
        ),
    ];
    for (i, (method, path, auth, ctype, body, want)) in requests.into_iter().enumerate() {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(a) = auth {
            head.push_str(&format!("Authorization: {a}\r\n"));
        }
        head.push_str("\r\n");
        w.write_all(head.as_bytes()).unwrap();
        w.write_all(body.as_bytes()).unwrap();
        let (status, headers, text) = read_answer(&mut r);
        assert_eq!(status, want, "request {i}: {method} {path}: {text}");
        assert!(
            !headers
                .iter()
                .any(|(k, v)| k == "connection" && v == "close"),
            "request {i} closed the connection: {headers:?}"
        );
        if i == 8 {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["messages"], 1);
        }
    }
    // A body over the limit is not drained: 413, and the server says it closes.
    let head = format!(
        "POST /api/queues/%2F/q/publish HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        1u64 << 31
    );
    w.write_all(head.as_bytes()).unwrap();
    let (status, headers, text) = read_answer(&mut r);
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("body_too_large"), "{text}");
    assert!(headers
        .iter()
        .any(|(k, v)| k == "connection" && v == "close"));

    // And a pooling client (ureq keeps connections alive) sees no disconnects mixing errors
    // and successes.
    for _ in 0..20 {
        assert_eq!(api.get("/api/nope").0, 404);
        assert_eq!(api.delete("/api/overview").0, 405);
        assert_eq!(
            api.post("/api/queues/%2F/q/publish", json!({"bogus": 1})).0,
            422
        );
        assert_eq!(api.get("/api/overview").0, 200);
    }
}

/// Issue #5 on the core's `publish_to_queue` and `delete_permission`: moved and redriven
/// messages keep their exchange and routing key; permissions can be removed.
#[test]
fn moves_keep_routing_keys_and_permissions_can_be_deleted() {
    let api = Api::start();
    for q in ["src", "dst"] {
        assert_eq!(api.put(&format!("/api/queues/%2F/{q}"), json!({})).0, 201);
    }
    let (s, v) = api.post(
        "/api/bindings/%2F/e/amq.topic/q/src",
        json!({"routing_key": "orders.#"}),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = api.post(
        "/api/exchanges/%2F/amq.topic/publish",
        json!({"routing_key": "orders.eu", "payload": "o1", "headers": {"n": 1}}),
    );
    assert_eq!((s, &v["routed_to"]), (200, &json!(1)));
    let (s, r) = api.post("/api/queues/%2F/src/move", json!({"destination": "dst"}));
    assert_eq!(
        (s, &r["moved"], &r["skipped"]),
        (200, &json!(1), &json!(0)),
        "{r}"
    );
    let (_, b) = api.get("/api/queues/%2F/dst/browse?count=5");
    let m = &b[0]["message"];
    assert_eq!(m["routing_key"], "orders.eu", "{b}");
    assert_eq!(m["exchange"], "amq.topic");
    assert_eq!(
        (&m["payload"], &m["headers"]["n"]),
        (&json!("o1"), &json!(1))
    );
    assert_eq!(api.get("/api/queues/%2F/src").1["messages"], 0);

    // A dead-letter redrive: back to the source queue, routing key and exchange unchanged,
    // even though no binding would route it there.
    assert_eq!(api.put("/api/queues/%2F/jobs.dlq", json!({})).0, 201);
    let (s, v) = api.put(
        "/api/queues/%2F/jobs",
        json!({"arguments": {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "jobs.dlq"}}),
    );
    assert_eq!(s, 201, "{v}");
    api.post(
        "/api/bindings/%2F/e/amq.direct/q/jobs",
        json!({"routing_key": "job.new"}),
    );
    let (s, _) = api.post(
        "/api/exchanges/%2F/amq.direct/publish",
        json!({"routing_key": "job.new", "payload": "j1"}),
    );
    assert_eq!(s, 200);
    let (_, r) = api.post("/api/queues/%2F/jobs/get", json!({}));
    let h = r["messages"][0]["receipt_handle"].clone();
    let (_, r) = api.post(
        "/api/queues/%2F/jobs/nack",
        json!({"receipt_handles": [h], "requeue": false}),
    );
    assert_eq!(r["settled"].as_array().map(Vec::len), Some(1));
    let (_, d) = api.get("/api/queues/%2F/jobs.dlq/browse");
    assert_eq!(d[0]["message"]["routing_key"], "jobs.dlq", "{d}");
    let (s, r) = api.post("/api/queues/%2F/jobs.dlq/move", json!({}));
    assert_eq!((s, &r["moved"]), (200, &json!(1)), "{r}");
    let (_, b) = api.get("/api/queues/%2F/jobs/browse");
    assert_eq!(
        b[0]["message"]["routing_key"], "jobs.dlq",
        "kept, not rewritten: {b}"
    );
    assert_eq!(b[0]["message"]["headers"]["x-first-death-queue"], "jobs");

    // DELETE /api/permissions/{vhost}/{user}.
    assert_eq!(
        api.put("/api/users/carol", json!({"password": "pw", "tags": []}))
            .0,
        201
    );
    let perm = json!({"configure": "", "write": "", "read": ".*"});
    assert_eq!(api.put("/api/permissions/%2F/carol", perm).0, 200);
    let carol = api.as_auth(Some(basic("carol", "pw")));
    assert_eq!(carol.call("GET", "/api/queues/%2F/dst", None).0, 200);
    assert_eq!(
        carol.call("DELETE", "/api/permissions/%2F/carol", None).0,
        403,
        "administrators only"
    );
    assert_eq!(api.delete("/api/permissions/%2F/carol").0, 204);
    assert_eq!(api.get("/api/permissions/%2F/carol").0, 404);
    assert_eq!(carol.call("GET", "/api/queues/%2F/dst", None).0, 403);
    assert_eq!(
        api.delete("/api/permissions/%2F/carol").0,
        404,
        "already gone"
    );
    assert_eq!(api.delete("/api/permissions/%2F/nobody").0, 404);
    assert_eq!(api.delete("/api/permissions/nohost/carol").0, 404);
    let (_, all) = api.get("/api/permissions");
    assert!(!all.to_string().contains("carol"), "{all}");
}

#[test]
fn policies_apply_to_queues_and_exchanges_and_travel_in_definitions() {
    let api = Api::start();
    assert_eq!(api.put("/api/queues/%2F/jobs.a", json!({})).0, 201);
    assert_eq!(
        api.put(
            "/api/queues/%2F/jobs.own",
            json!({"arguments": {"x-max-length": 4}})
        )
        .0,
        201
    );
    for i in 0..5 {
        for q in ["jobs.a", "jobs.own"] {
            let (s, _) = api.post(
                &format!("/api/queues/%2F/{q}/publish"),
                json!({"payload": i.to_string()}),
            );
            assert_eq!(s, 200);
        }
    }
    let body = json!({"pattern": "^jobs\\.", "apply-to": "queues", "priority": 1,
                      "definition": {"max-length": 2, "message-ttl": 60000}});
    let (s, p) = api.put("/api/policies/%2F/limit", body.clone());
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["apply-to"], "queues");
    // Applied to the existing queue at once; the declared x-max-length wins.
    let (_, q) = api.get("/api/queues/%2F/jobs.a");
    assert_eq!(q["messages"], 2, "{q}");
    assert_eq!(q["policy"], "limit");
    assert_eq!(
        q["effective_policy_definition"],
        json!({"max-length": 2, "message-ttl": 60000})
    );
    let (_, q) = api.get("/api/queues/%2F/jobs.own");
    assert_eq!(q["messages"], 4);
    assert_eq!(
        q["effective_policy_definition"],
        json!({"message-ttl": 60000})
    );
    // Listings and errors.
    let (_, all) = api.get("/api/policies");
    assert_eq!(all.as_array().map(Vec::len), Some(1));
    let (_, vp) = api.get("/api/policies/%2F");
    assert_eq!(vp[0]["name"], "limit");
    assert_eq!(api.get("/api/policies/%2F/limit").1["priority"], 1);
    assert_eq!(api.get("/api/policies/%2F/nope").0, 404);
    assert_eq!(api.get("/api/policies/nope").0, 404);
    assert_eq!(api.put("/api/policies/nope/p", body.clone()).0, 404);
    let (s, e) = api.put(
        "/api/policies/%2F/bad",
        json!({"pattern": "(", "definition": {"max-length": 1}}),
    );
    assert_eq!(s, 422, "{e}");
    let (s, e) = api.put(
        "/api/policies/%2F/bad",
        json!({"pattern": ".*", "definition": {"max-lenght": 1}}),
    );
    assert_eq!(s, 422);
    assert!(e["reason"].as_str().unwrap().contains("max-lenght"), "{e}");
    assert_eq!(
        api.put(
            "/api/policies/%2F/bad",
            json!({"pattern": ".*", "apply-to": "everything", "definition": {"max-length": 1}})
        )
        .0,
        422
    );
    // Exchanges: a policy's alternate exchange.
    assert_eq!(
        api.put("/api/exchanges/%2F/events", json!({"type": "direct"}))
            .0,
        201
    );
    assert_eq!(api.put("/api/queues/%2F/lost", json!({})).0, 201);
    assert_eq!(
        api.post("/api/bindings/%2F/e/amq.fanout/q/lost", json!({}))
            .0,
        201
    );
    let (s, _) = api.put(
        "/api/policies/%2F/ae",
        json!({"pattern": "^events$", "apply-to": "exchanges",
               "definition": {"alternate-exchange": "amq.fanout"}}),
    );
    assert_eq!(s, 200);
    let (_, x) = api.get("/api/exchanges/%2F/events");
    assert_eq!(x["policy"], "ae");
    let (_, r) = api.post(
        "/api/exchanges/%2F/events/publish",
        json!({"routing_key": "none", "payload": "x"}),
    );
    assert_eq!(r["routed"], true, "{r}");
    assert_eq!(api.get("/api/queues/%2F/lost").1["messages"], 1);
    // Definitions carry policies.
    let (_, d) = api.get("/api/definitions");
    let names: Vec<&str> = d["policies"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["ae", "limit"]);
    let (s, r) = api.post("/api/definitions", d.clone());
    assert_eq!((s, &r["policies"]), (200, &json!(2)), "{r}");
    let mut bad = d.clone();
    bad["policies"][0]["pattern"] = json!("(");
    assert_eq!(api.post("/api/definitions", bad).0, 422);
    // Only administrators and policymakers manage policies.
    assert_eq!(api.put("/api/users/pat", json!({"password": "pw"})).0, 201);
    assert_eq!(
        api.put(
            "/api/permissions/%2F/pat",
            json!({"configure": ".*", "write": ".*", "read": ".*"})
        )
        .0,
        200
    );
    let pat = api.as_auth(Some(basic("pat", "pw")));
    assert_eq!(
        pat.call("PUT", "/api/policies/%2F/x", Some(body.clone())).0,
        403
    );
    assert_eq!(pat.call("DELETE", "/api/policies/%2F/limit", None).0, 403);
    assert_eq!(pat.call("GET", "/api/policies/%2F/limit", None).0, 200);
    // Deleting the policy lifts the limit.
    assert_eq!(api.delete("/api/policies/%2F/limit").0, 204);
    assert_eq!(api.delete("/api/policies/%2F/limit").0, 404);
    let (_, q) = api.get("/api/queues/%2F/jobs.a");
    assert_eq!(q["policy"], Value::Null);
    for i in 0..3 {
        api.post(
            "/api/queues/%2F/jobs.a/publish",
            json!({"payload": i.to_string()}),
        );
    }
    assert_eq!(api.get("/api/queues/%2F/jobs.a").1["messages"], 5);
}
