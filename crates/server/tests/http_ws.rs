//! Issue #5: WebSocket and Server-Sent Events against the real `ferrymq` binary — queue
//! subscriptions with prefetch and acks over the socket, exchange subscriptions through a
//! server-named exclusive queue that goes away with the socket, publish over the socket,
//! SSE auto-ack, management close, and error frames.
//!
//! The clients are written here against raw sockets (RFC 6455 framing, SSE over chunked
//! HTTP/1.1), as the design notes ask of protocol tests; every wait has a deadline.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

fn basic() -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("guest:guest")
    )
}

/// A server and a REST client for setup and checks.
struct Env {
    _server: common::Server,
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    agent: ureq::Agent,
}

impl Env {
    fn start() -> Env {
        Env::start_with(&[])
    }

    fn start_with(args: &[&str]) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let server = common::serve(dir.path(), &dir.path().join("data"), args);
        let addr = common::listening(&server, "http");
        Env {
            _server: server,
            _dir: dir,
            addr,
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into(),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("http://{}{path}", self.addr);
        let a = &self.agent;
        let r = match method {
            "GET" => a.get(&url).header("authorization", basic()).call(),
            "DELETE" => a.delete(&url).header("authorization", basic()).call(),
            m => {
                let r = if m == "PUT" {
                    a.put(&url)
                } else {
                    a.post(&url)
                };
                r.header("authorization", basic())
                    .header("content-type", "application/json")
                    .send(body.unwrap_or(json!({})).to_string())
            }
        };
        let mut r = r.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        assert!(status < 500, "{method} {path} answered {status}: {v}");
        (status, v)
    }

    fn queue(&self, name: &str) -> (u16, Value) {
        self.call("GET", &format!("/api/queues/%2F/{name}"), None)
    }

    /// Polls the queue until `f` holds (deadline: `common::TIMEOUT`).
    fn await_queue(&self, name: &str, what: &str, f: impl Fn(u16, &Value) -> bool) -> Value {
        let deadline = Instant::now() + common::TIMEOUT;
        loop {
            let (s, v) = self.queue(name);
            if f(s, &v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "queue {name}: {what}; last {s} {v}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn publish(&self, queue: &str, payload: &str) {
        let (s, v) = self.call(
            "POST",
            &format!("/api/queues/%2F/{queue}/publish"),
            Some(json!({"payload": payload})),
        );
        assert_eq!(s, 200, "{v}");
    }
}

/// Sends a request head and reads the answer's status line and headers.
fn request_head(
    addr: SocketAddr,
    path: &str,
    extra: &[(&str, String)],
) -> (BufReader<TcpStream>, u16, Vec<(String, String)>) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(common::TIMEOUT)).unwrap();
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    (&s).write_all(head.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    (r, status, headers)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A minimal RFC 6455 client: masked text frames out, unmasked frames in.
struct Ws {
    r: BufReader<TcpStream>,
    /// Frames read while waiting for another type.
    pending: Vec<Value>,
    /// Pings received (each answered with a pong, as RFC 6455 asks).
    pings: usize,
}

impl Ws {
    fn connect(addr: SocketAddr, query: &str) -> Ws {
        let (r, status, headers) = request_head(
            addr,
            &format!("/api/ws{query}"),
            &[
                ("Authorization", basic()),
                ("Upgrade", "websocket".into()),
                ("Connection", "Upgrade".into()),
                ("Sec-WebSocket-Version", "13".into()),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==".into()),
            ],
        );
        assert_eq!(status, 101, "{headers:?}");
        // RFC 6455's example key and its accept value.
        assert_eq!(
            header(&headers, "sec-websocket-accept"),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        Ws {
            r,
            pending: Vec::new(),
            pings: 0,
        }
    }

    fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        let mut f = vec![0x80 | opcode];
        let n = payload.len();
        if n < 126 {
            f.push(0x80 | n as u8);
        } else if n < 65536 {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.r.get_mut().write_all(&f).unwrap();
    }

    fn send(&mut self, v: Value) {
        self.send_frame(0x1, v.to_string().as_bytes());
    }

    fn send_text(&mut self, s: &str) {
        self.send_frame(0x1, s.as_bytes());
    }

    /// The next data frame as JSON; `Err(close payload)` on a close frame or EOF.
    fn frame(&mut self) -> Result<Value, Vec<u8>> {
        self.frame_or_ping(false).map(|v| v.unwrap_or(Value::Null))
    }

    /// Reads until `n` pings in all have arrived (each answered); data frames are kept.
    fn await_pings(&mut self, n: usize) {
        while self.pings < n {
            match self.frame_or_ping(true) {
                Ok(Some(v)) => self.pending.push(v),
                Ok(None) => {}
                Err(c) => panic!(
                    "closed waiting for pings: {:?}",
                    String::from_utf8_lossy(&c)
                ),
            }
        }
    }

    /// The next data frame (`Some`), or `None` after a ping when `stop_at_ping`.
    fn frame_or_ping(&mut self, stop_at_ping: bool) -> Result<Option<Value>, Vec<u8>> {
        loop {
            let mut h = [0u8; 2];
            if self.r.read_exact(&mut h).is_err() {
                return Err(Vec::new());
            }
            let opcode = h[0] & 0x0f;
            assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
            let n = match h[1] & 0x7f {
                126 => {
                    let mut b = [0u8; 2];
                    self.r.read_exact(&mut b).unwrap();
                    u16::from_be_bytes(b) as usize
                }
                127 => {
                    let mut b = [0u8; 8];
                    self.r.read_exact(&mut b).unwrap();
                    u64::from_be_bytes(b) as usize
                }
                n => n as usize,
            };
            let mut p = vec![0u8; n];
            self.r.read_exact(&mut p).unwrap();
            assert_ne!(h[0] & 0x80, 0, "the server does not fragment");
            match opcode {
                0x1 | 0x2 => return Ok(Some(serde_json::from_slice(&p).unwrap())),
                0x8 => return Err(p),
                0x9 => {
                    self.pings += 1;
                    // The pong; the server may have closed the socket already.
                    let mask = [0u8; 4];
                    let mut pong = vec![0x8A, 0x80 | p.len() as u8];
                    pong.extend_from_slice(&mask);
                    pong.extend_from_slice(&p);
                    let _ = self.r.get_mut().write_all(&pong);
                    if stop_at_ping {
                        return Ok(None);
                    }
                }
                _ => {} // pong
            }
        }
    }

    /// The next frame of `kind` (other frames are kept for later).
    fn expect(&mut self, kind: &str) -> Value {
        if let Some(i) = self.pending.iter().position(|v| v["type"] == kind) {
            return self.pending.remove(i);
        }
        loop {
            match self.frame() {
                Ok(v) if v["type"] == kind => return v,
                Ok(v) => self.pending.push(v),
                Err(c) => panic!(
                    "socket closed waiting for {kind}: {:?}; pending {:?}",
                    String::from_utf8_lossy(&c),
                    self.pending
                ),
            }
        }
    }

    fn close(mut self) {
        self.send_frame(0x8, &1000u16.to_be_bytes());
        // Read until the server's close frame or EOF.
        while self.frame().is_ok() {}
    }
}

#[test]
fn websocket_queue_subscription_with_prefetch_acks_and_nacks() {
    let env = Env::start();
    assert_eq!(
        env.call("PUT", "/api/queues/%2F/jobs", Some(json!({}))).0,
        201
    );
    for i in 0..5 {
        env.publish("jobs", &format!("m{i}"));
    }
    let mut ws = Ws::connect(env.addr, "?vhost=%2F");
    ws.send(json!({"op": "subscribe", "id": 1, "queue": "jobs", "prefetch": 2}));
    let sub = ws.expect("subscribed");
    assert_eq!(
        (
            &sub["id"],
            &sub["subscription"],
            &sub["queue"],
            &sub["auto_ack"]
        ),
        (&json!(1), &json!("s1"), &json!("jobs"), &json!(false))
    );
    let a = ws.expect("message");
    let b = ws.expect("message");
    assert_eq!(a["message"]["payload"], "m0");
    assert_eq!(b["message"]["payload"], "m1");
    assert_eq!(a["subscription"], "s1");
    // Prefetch 2: the third waits for an ack.
    env.await_queue("jobs", "2 unacked, 3 ready", |_, v| {
        v["messages_unacked"] == 2 && v["messages_ready"] == 3
    });
    ws.send(json!({"op": "ack", "id": "a1", "delivery": a["delivery"]}));
    let settled = ws.expect("settled");
    assert_eq!(settled["settled"], json!([a["delivery"]]));
    let c = ws.expect("message");
    assert_eq!(c["message"]["payload"], "m2");
    // Nack with requeue: m1 comes back, redelivered, after the window frees.
    ws.send(json!({"op": "nack", "delivery": b["delivery"], "requeue": true}));
    let again = ws.expect("message");
    assert_eq!(again["message"]["payload"], "m1");
    assert_eq!(again["redelivered"], true);
    assert_eq!(again["delivery_count"], 2);
    // Unknown and already-settled deliveries are reported, not fatal.
    ws.send(json!({"op": "ack", "deliveries": [a["delivery"], "nope"]}));
    let s = ws.expect("settled");
    assert_eq!(s["unknown"], json!([a["delivery"], "nope"]));
    // Closing the socket returns the unacked (m2, m1) to the queue: 4 messages left.
    ws.close();
    env.await_queue("jobs", "unacked returned", |_, v| {
        v["messages_ready"] == 4 && v["messages_unacked"] == 0 && v["consumers"] == 0
    });
    let (_, conns) = env.call("GET", "/api/connections", None);
    assert!(
        !conns.to_string().contains("websocket"),
        "connection unregistered: {conns}"
    );
}

#[test]
fn websocket_exchange_subscription_and_publish_over_the_socket() {
    let env = Env::start();
    let mut ws = Ws::connect(env.addr, "");
    ws.send(
        json!({"op": "subscribe", "subscription": "eu", "exchange": "amq.topic",
        "pattern": "orders.*"}),
    );
    let sub = ws.expect("subscribed");
    let q = sub["queue"].as_str().unwrap().to_string();
    assert!(q.starts_with("amq.gen-"), "{sub}");
    assert_eq!(sub["auto_ack"], true);
    let (s, info) = env.queue(&q);
    assert_eq!(s, 200);
    assert_eq!(
        (&info["exclusive"], &info["auto_delete"], &info["durable"]),
        (&json!(true), &json!(true), &json!(false)),
        "{info}"
    );
    let (_, conns) = env.call("GET", "/api/connections", None);
    let conn = conns
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["protocol"] == "websocket")
        .unwrap_or_else(|| panic!("no websocket connection in {conns}"))
        .clone();
    assert_eq!(conn["user"], "guest");

    // Publish over the same socket: a matching key reaches the subscription.
    ws.send(json!({"op": "publish", "id": "p1", "exchange": "amq.topic",
        "routing_key": "orders.eu", "payload": "hello", "headers": {"tenant": "a"},
        "properties": {"correlation_id": "c-1"}}));
    let p = ws.expect("published");
    assert_eq!(
        (&p["id"], &p["routed"], &p["routed_to"]),
        (&json!("p1"), &json!(true), &json!(1))
    );
    let m = ws.expect("message");
    assert_eq!(m["subscription"], "eu");
    assert!(m.get("delivery").is_none(), "auto-ack: no delivery id: {m}");
    assert_eq!(m["message"]["routing_key"], "orders.eu");
    assert_eq!(m["message"]["exchange"], "amq.topic");
    assert_eq!(m["message"]["payload"], "hello");
    assert_eq!(m["message"]["headers"]["tenant"], "a");
    assert_eq!(m["message"]["properties"]["correlation_id"], "c-1");
    // A non-matching key is unroutable; a REST publish reaches the socket too.
    ws.send(
        json!({"op": "publish", "exchange": "amq.topic", "routing_key": "orders.eu.x",
        "payload": "no"}),
    );
    assert_eq!(ws.expect("published")["routed"], false);
    let (s, v) = env.call(
        "POST",
        "/api/exchanges/%2F/amq.topic/publish",
        Some(json!({"routing_key": "orders.us", "payload": "from rest"})),
    );
    assert_eq!((s, &v["routed_to"]), (200, &json!(1)));
    assert_eq!(ws.expect("message")["message"]["payload"], "from rest");
    // Publish straight to a queue over the socket.
    assert_eq!(
        env.call("PUT", "/api/queues/%2F/direct", Some(json!({}))).0,
        201
    );
    ws.send(json!({"op": "publish", "queue": "direct", "payload": "d"}));
    assert_eq!(ws.expect("published")["routed_to"], 1);

    // Unsubscribe deletes the server-named queue; a second subscription works on.
    ws.send(json!({"op": "unsubscribe", "subscription": "eu"}));
    ws.expect("unsubscribed");
    env.await_queue(&q, "deleted on unsubscribe", |s, _| s == 404);
    ws.send(json!({"op": "subscribe", "exchange": "amq.fanout"}));
    let q2 = ws.expect("subscribed")["queue"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(env.queue(&q2).0, 200);

    // Management closes the connection: a close frame, then the queue is gone.
    let id = conn["id"].as_u64().unwrap();
    assert_eq!(
        env.call("DELETE", &format!("/api/connections/{id}"), None)
            .0,
        204
    );
    let close = loop {
        match ws.frame() {
            Ok(_) => continue,
            Err(c) => break c,
        }
    };
    assert!(close.len() >= 2, "a close frame with a code");
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1001);
    assert!(String::from_utf8_lossy(&close[2..]).contains("management"));
    env.await_queue(&q2, "deleted with the connection", |s, _| s == 404);
}

#[test]
fn websocket_errors_are_frames_and_http_errors_are_json() {
    let env = Env::start();
    // No credentials, a missing vhost, and a plain GET: JSON errors before any upgrade.
    let (_, s, _) = request_head(env.addr, "/api/ws", &[]);
    assert_eq!(s, 401);
    let (_, s, _) = request_head(
        env.addr,
        "/api/ws?vhost=nope",
        &[("Authorization", basic())],
    );
    assert_eq!(s, 404);
    let (mut r, s, h) = request_head(env.addr, "/api/ws", &[("Authorization", basic())]);
    assert!((400..500).contains(&s), "{s}");
    let n: usize = header(&h, "content-length").unwrap().parse().unwrap();
    let mut body = vec![0; n];
    r.read_exact(&mut body).unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"], "websocket_upgrade_required");

    let mut ws = Ws::connect(env.addr, "");
    ws.send_text("{not json");
    assert_eq!(ws.expect("error")["status"], 400);
    ws.send(json!({"op": "dance", "id": 7}));
    let e = ws.expect("error");
    assert_eq!((&e["status"], &e["id"]), (&json!(422), &json!(7)));
    ws.send(json!({"op": "subscribe", "id": 8, "queue": "missing"}));
    let e = ws.expect("error");
    assert_eq!(
        (&e["status"], &e["error"], &e["id"]),
        (&json!(404), &json!("not_found"), &json!(8))
    );
    ws.send(json!({"op": "subscribe", "queue": "q", "exchange": "x"}));
    assert_eq!(ws.expect("error")["status"], 422);
    assert_eq!(env.call("PUT", "/api/queues/%2F/q", Some(json!({}))).0, 201);
    ws.send(json!({"op": "subscribe", "queue": "q", "prefetch": 0}));
    assert_eq!(ws.expect("error")["status"], 422);
    ws.send(json!({"op": "subscribe", "subscription": "x", "queue": "q"}));
    ws.expect("subscribed");
    ws.send(json!({"op": "subscribe", "subscription": "x", "queue": "q"}));
    assert_eq!(ws.expect("error")["status"], 409);
    ws.send(json!({"op": "publish", "exchange": "nope", "payload": "x"}));
    assert_eq!(ws.expect("error")["status"], 404);
    ws.send(json!({"op": "publish", "exchange": "amq.topic", "payload": "x", "bogus": 1}));
    assert_eq!(ws.expect("error")["status"], 422);
    ws.send(json!({"op": "unsubscribe", "subscription": "nope"}));
    assert_eq!(ws.expect("error")["status"], 404);
    // Deleting the queue cancels the subscription.
    assert_eq!(env.call("DELETE", "/api/queues/%2F/q", None).0, 200);
    let c = ws.expect("cancelled");
    assert_eq!(
        (&c["subscription"], &c["queue"]),
        (&json!("x"), &json!("q"))
    );
    // The socket still works.
    ws.send(json!({"op": "publish", "id": 9, "exchange": "amq.topic", "payload": "x"}));
    assert_eq!(ws.expect("published")["id"], 9);
    ws.close();
}

/// A minimal SSE reader over chunked HTTP/1.1.
struct Sse {
    r: BufReader<TcpStream>,
    buf: String,
}

impl Sse {
    fn open(addr: SocketAddr, path: &str) -> Sse {
        let (r, status, headers) = request_head(addr, path, &[("Authorization", basic())]);
        assert_eq!(status, 200, "{headers:?}");
        assert_eq!(header(&headers, "content-type"), Some("text/event-stream"));
        assert_eq!(header(&headers, "transfer-encoding"), Some("chunked"));
        Sse {
            r,
            buf: String::new(),
        }
    }

    /// The next event (name, data as JSON), skipping comments (keep-alives).
    fn event(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..i + 2).collect();
                let mut name = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return Some((name, serde_json::from_str(&data).unwrap()));
            }
            let mut size = String::new();
            if self.r.read_line(&mut size).ok()? == 0 {
                return None;
            }
            let n = usize::from_str_radix(size.trim(), 16).ok()?;
            if n == 0 {
                return None;
            }
            let mut chunk = vec![0; n + 2];
            self.r.read_exact(&mut chunk).ok()?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    }
}

#[test]
fn sse_queue_events_are_auto_acked_and_exchange_events_use_a_temporary_queue() {
    let env = Env::start();
    assert_eq!(
        env.call("PUT", "/api/queues/%2F/feed", Some(json!({}))).0,
        201
    );
    for i in 0..3 {
        env.publish("feed", &format!("e{i}"));
    }
    let mut sse = Sse::open(env.addr, "/api/queues/%2F/feed/events?prefetch=2");
    let (kind, v) = sse.event().unwrap();
    assert_eq!((kind.as_str(), &v["queue"]), ("subscribed", &json!("feed")));
    for i in 0..3 {
        let (kind, v) = sse.event().unwrap();
        assert_eq!(kind, "message");
        assert_eq!(v["message"]["payload"], format!("e{i}"));
        assert!(v.get("delivery").is_none());
    }
    env.await_queue("feed", "auto-acked", |_, v| v["messages"] == 0);
    env.publish("feed", "live");
    assert_eq!(sse.event().unwrap().1["message"]["payload"], "live");
    drop(sse);
    env.await_queue("feed", "consumer gone", |_, v| v["consumers"] == 0);

    // Exchange + pattern.
    let mut sse = Sse::open(
        env.addr,
        "/api/exchanges/%2F/amq.topic/events?pattern=logs.%23",
    );
    let (kind, v) = sse.event().unwrap();
    assert_eq!(kind, "subscribed");
    let q = v["queue"].as_str().unwrap().to_string();
    assert!(q.starts_with("amq.gen-"));
    for key in ["logs.a.b", "other", "logs.c"] {
        env.call(
            "POST",
            "/api/exchanges/%2F/amq.topic/publish",
            Some(json!({"routing_key": key, "payload": key})),
        );
    }
    assert_eq!(sse.event().unwrap().1["message"]["routing_key"], "logs.a.b");
    assert_eq!(sse.event().unwrap().1["message"]["routing_key"], "logs.c");
    drop(sse);
    env.await_queue(&q, "deleted with the stream", |s, _| s == 404);

    // Errors are JSON answers, not streams.
    let (_, s, _) = request_head(
        env.addr,
        "/api/queues/%2F/missing/events",
        &[("Authorization", basic())],
    );
    assert_eq!(s, 404);
    let (_, s, _) = request_head(
        env.addr,
        "/api/exchanges/%2F/missing/events",
        &[("Authorization", basic())],
    );
    assert_eq!(s, 404);
    let (_, s, _) = request_head(
        env.addr,
        "/api/queues/%2F/feed/events?prefetch=0",
        &[("Authorization", basic())],
    );
    assert_eq!(s, 422);
    let (_, s, _) = request_head(env.addr, "/api/queues/%2F/feed/events", &[]);
    assert_eq!(s, 401);
    // Deleting the queue ends the stream with a `cancelled` event.
    let mut sse = Sse::open(env.addr, "/api/queues/%2F/feed/events");
    assert_eq!(sse.event().unwrap().0, "subscribed");
    assert_eq!(env.call("DELETE", "/api/queues/%2F/feed", None).0, 200);
    assert_eq!(sse.event().unwrap().0, "cancelled");
    assert!(sse.event().is_none(), "the stream ends");
}

#[test]
fn websocket_stream_subscription_with_credit_offsets_and_group_commit() {
    let env = Env::start();
    assert_eq!(
        env.call("PUT", "/api/streams/%2F/events", Some(json!({})))
            .0,
        201
    );
    for i in 0..5 {
        env.publish("events", &format!("e{i}"));
    }
    let mut ws = Ws::connect(env.addr, "");
    ws.send(
        json!({"op": "subscribe", "id": 1, "subscription": "tail", "stream": "events",
                   "offset": "first", "credit": 2, "group": "billing"}),
    );
    let sub = ws.expect("subscribed");
    assert_eq!(
        (
            &sub["stream"],
            &sub["offset"],
            &sub["credit"],
            &sub["group"]
        ),
        (&json!("events"), &json!(0), &json!(2), &json!("billing"))
    );
    let m0 = ws.expect("message");
    let m1 = ws.expect("message");
    assert_eq!(
        (
            &m0["offset"],
            &m0["message"]["payload"],
            &m0["subscription"]
        ),
        (&json!(0), &json!("e0"), &json!("tail"))
    );
    assert_eq!((&m1["offset"], &m1["partition"]), (&json!(1), &json!(0)));
    assert!(m0.get("delivery").is_none(), "stream records are not acked");
    // Credit used up: the consumer listing shows the whole window in flight.
    let deadline = Instant::now() + common::TIMEOUT;
    loop {
        let (_, cs) = env.call("GET", "/api/consumers", None);
        let c = &cs[0];
        if c["messages_unacknowledged"] == 2 {
            assert_eq!(
                (&c["queue"], &c["ack_required"], &c["protocol"]),
                (&json!("events"), &json!(false), &json!("websocket"))
            );
            break;
        }
        assert!(Instant::now() < deadline, "consumer listing: {cs}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Commit after the last record sent (offset 2), durable before the answer.
    ws.send(json!({"op": "commit", "id": "c1", "subscription": "tail"}));
    let c = ws.expect("committed");
    assert_eq!(
        (&c["id"], &c["group"], &c["offset"]),
        (&json!("c1"), &json!("billing"), &json!(2))
    );
    assert!(
        ws.pending.iter().all(|f| f["type"] != "message"),
        "nothing beyond the credit: {:?}",
        ws.pending
    );
    let (_, off) = env.call("GET", "/api/streams/%2F/events/offsets/billing", None);
    assert_eq!(off["offset"], 2);
    // More credit: the rest, then the live tail.
    ws.send(json!({"op": "credit", "id": 2, "subscription": "tail", "credit": 10}));
    assert_eq!(ws.expect("credit")["credit"], 10);
    for want in 2..5 {
        assert_eq!(ws.expect("message")["offset"], want);
    }
    env.publish("events", "e5");
    let live = ws.expect("message");
    assert_eq!(
        (&live["offset"], &live["message"]["payload"]),
        (&json!(5), &json!("e5"))
    );
    // Errors are frames; the socket stays usable.
    for (req, status) in [
        (
            json!({"op": "credit", "subscription": "tail", "credit": 1000}),
            422,
        ),
        (
            json!({"op": "credit", "subscription": "nope", "credit": 1}),
            404,
        ),
        (
            json!({"op": "subscribe", "stream": "events", "credit": 0}),
            422,
        ),
        (json!({"op": "subscribe", "stream": "missing"}), 404),
        (
            json!({"op": "subscribe", "stream": "events", "prefetch": 5}),
            422,
        ),
        (
            json!({"op": "subscribe", "stream": "events", "partition": 3}),
            404,
        ),
        (
            json!({"op": "subscribe", "stream": "events", "offset": "middle"}),
            422,
        ),
        (
            json!({"op": "subscribe", "queue": "events", "offset": "first"}),
            422,
        ),
        (
            json!({"op": "subscribe", "stream": "events", "group": "a/b"}),
            422,
        ),
    ] {
        ws.send(req.clone());
        let e = ws.expect("error");
        assert_eq!(e["status"], status, "{req} -> {e}");
    }
    // A new subscription of the group starts at its committed offset.
    ws.send(json!({"op": "unsubscribe", "subscription": "tail"}));
    ws.expect("unsubscribed");
    ws.pending.retain(|f| f["type"] != "message");
    ws.send(json!({"op": "subscribe", "stream": "events", "group": "billing", "credit": 1}));
    let again = ws.expect("subscribed");
    assert_eq!(again["offset"], 2);
    assert_eq!(ws.expect("message")["offset"], 2);
    ws.send(json!({"op": "commit", "subscription": again["subscription"], "offset": 4}));
    assert_eq!(ws.expect("committed")["offset"], 4);
    // From a timestamp (0: the first record), without a group: commit is refused.
    ws.send(
        json!({"op": "subscribe", "subscription": "ts", "stream": "events",
                   "timestamp_ms": 0, "credit": 1}),
    );
    assert_eq!(ws.expect("subscribed")["offset"], 0);
    ws.send(json!({"op": "commit", "subscription": "ts"}));
    assert_eq!(ws.expect("error")["status"], 422);
    // "last" starts at the last record; "next" after it.
    ws.send(json!({"op": "subscribe", "stream": "events", "offset": "last", "credit": 1}));
    assert_eq!(ws.expect("subscribed")["offset"], 5);
    ws.send(json!({"op": "subscribe", "stream": "events", "credit": 1}));
    assert_eq!(ws.expect("subscribed")["offset"], 6);
    let (_, chans) = env.call("GET", "/api/channels", None);
    assert_eq!(chans[0]["protocol"], "websocket");
    assert_eq!(chans[0]["consumer_count"], 4, "{chans}");
    ws.close();
    let deadline = Instant::now() + common::TIMEOUT;
    while env.call("GET", "/api/consumers", None).1 != json!([]) {
        assert!(Instant::now() < deadline, "stream consumers cancelled");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn websocket_clients_that_go_silent_are_closed_and_their_deliveries_return() {
    // Pings every 500 ms; a client silent for 1 s is gone.
    let env = Env::start_with(&["--set", "http.websocket_timeout_ms=1000"]);
    assert_eq!(
        env.call("PUT", "/api/queues/%2F/jobs", Some(json!({}))).0,
        201
    );
    for i in 0..4 {
        env.publish("jobs", &format!("m{i}"));
    }
    // A live client reads, and so answers the pings.
    let mut live = Ws::connect(env.addr, "?vhost=%2F");
    live.send(json!({"op": "subscribe", "id": 1, "queue": "jobs", "prefetch": 1}));
    live.expect("subscribed");
    let first = live.expect("message");
    // It keeps reading meanwhile: three pings are 1.5 timeouts.
    let live = std::thread::spawn(move || {
        live.await_pings(3);
        live
    });
    // A silent one subscribes, then neither reads nor writes (a half-open connection).
    let mut silent = Ws::connect(env.addr, "?vhost=%2F");
    silent.send(json!({"op": "subscribe", "id": 1, "queue": "jobs", "prefetch": 2}));
    env.await_queue("jobs", "3 unacked", |_, v| v["messages_unacked"] == 3);
    // The server closes the silent one; its two deliveries go back to the queue.
    env.await_queue("jobs", "the silent client's deliveries returned", |_, v| {
        v["messages_unacked"] == 1 && v["messages_ready"] == 3 && v["consumers"] == 1
    });
    let close = loop {
        match silent.frame() {
            Ok(_) => continue, // what it was sent before it was closed
            Err(c) => break c,
        }
    };
    assert_eq!(&close[..2], &1001u16.to_be_bytes(), "going away");
    assert!(
        String::from_utf8_lossy(&close[2..]).contains("no frame from the client"),
        "{close:?}"
    );
    // The live one is still served after several timeouts' worth of pings.
    let mut live = live.join().unwrap();
    live.send(json!({"op": "ack", "id": 2, "delivery": first["delivery"]}));
    let settled = live.expect("settled");
    assert_eq!(settled["settled"], json!([first["delivery"]]));
    assert!(live.expect("message")["message"]["payload"]
        .as_str()
        .is_some_and(|p| p.starts_with('m')));
    live.close();
}
