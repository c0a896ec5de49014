//! Issue #5: cross-protocol tests against the real `ferrymq` binary — HTTP → AMQP and
//! AMQP → HTTP with headers and properties mapped (content type and encoding, correlation
//! id, reply-to, message id, timestamp, expiration, priority, type, app and user id,
//! persistence, typed headers), and the channel and consumer listings of AMQP connections.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::{listening, serve, Server};
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(30);

struct Both {
    server: Server,
    _dir: tempfile::TempDir,
    http: String,
}

fn start() -> Both {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &dir.path().join("data"), &[]);
    let http = format!("http://{}", listening(&server, "http"));
    Both {
        server,
        _dir: dir,
        http,
    }
}

async fn connect(b: &Both) -> Connection {
    let uri = format!("amqp://guest:guest@{}/%2f", listening(&b.server, "AMQP"));
    tokio::time::timeout(
        DEADLINE,
        Connection::connect(&uri, ConnectionProperties::default()),
    )
    .await
    .expect("connect in time")
    .expect("connect")
}

fn s(v: &str) -> ShortString {
    v.into()
}

fn auth() -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("guest:guest")
    )
}

/// A raw body: content type, extra headers, text.
type Raw = (
    &'static str,
    Vec<(&'static str, &'static str)>,
    &'static str,
);

/// One HTTP call (on a blocking thread: ureq is synchronous). `raw` sends a body with the
/// given content type and extra headers instead of JSON.
async fn call(
    base: &str,
    method: &'static str,
    path: &str,
    body: Option<Value>,
    raw: Option<Raw>,
) -> (u16, Value) {
    let url = format!("{base}{path}");
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut resp = match (method, raw) {
            ("GET", _) => agent.get(&url).header("authorization", auth()).call(),
            ("DELETE", _) => agent.delete(&url).header("authorization", auth()).call(),
            (_, Some((ct, headers, text))) => {
                let mut r = agent
                    .post(&url)
                    .header("authorization", auth())
                    .header("content-type", ct);
                for (k, v) in headers {
                    r = r.header(k, v);
                }
                r.send(text)
            }
            (m, None) => {
                let r = if m == "PUT" {
                    agent.put(&url)
                } else {
                    agent.post(&url)
                };
                r.header("authorization", auth())
                    .header("content-type", "application/json")
                    .send(body.unwrap_or(json!({})).to_string())
            }
        }
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        assert!(status < 500, "{method} {url} answered {status}: {v}");
        (status, v)
    })
    .await
    .expect("http thread")
}

async fn get(base: &str, path: &str) -> Value {
    let (status, v) = call(base, "GET", path, None, None).await;
    assert_eq!(status, 200, "GET {path}: {v}");
    v
}

async fn next_delivery(c: &mut lapin::Consumer) -> lapin::message::Delivery {
    tokio::time::timeout(DEADLINE, c.next())
        .await
        .expect("a delivery in time")
        .expect("consumer open")
        .expect("delivery ok")
}

fn int(v: Option<&AMQPValue>) -> Option<i64> {
    match v? {
        AMQPValue::ShortShortInt(i) => Some(*i as i64),
        AMQPValue::ShortShortUInt(i) => Some(*i as i64),
        AMQPValue::ShortInt(i) => Some(*i as i64),
        AMQPValue::ShortUInt(i) => Some(*i as i64),
        AMQPValue::LongInt(i) => Some(*i as i64),
        AMQPValue::LongUInt(i) => Some(*i as i64),
        AMQPValue::LongLongInt(i) => Some(*i),
        _ => None,
    }
}

fn text(v: Option<&AMQPValue>) -> Option<String> {
    match v? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_publishes_reach_amqp_consumers_with_headers_and_properties() {
    let b = start();
    let conn = connect(&b).await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        s("x.http"),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut consumer = ch
        .basic_consume(
            s("x.http"),
            s("amqp-side"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    // A JSON envelope with every property and typed headers.
    let (status, r) = call(
        &b.http,
        "POST",
        "/api/exchanges/%2F/amq.default/publish",
        Some(json!({
            "routing_key": "x.http",
            "payload": "{\"order\":1}",
            "headers": {"tenant": "a", "n": 42, "ok": true, "blob": {"$bytes": "AAEC"},
                        "at": {"$timestamp": 1_700_000_000_000i64}},
            "properties": {
                "content_type": "application/json", "content_encoding": "identity",
                "correlation_id": "corr-1", "reply_to": "replies", "message_id": "m-1",
                "timestamp_ms": 1_700_000_000_000i64, "expiration_ms": 60000, "priority": 7,
                "type": "order.created", "app_id": "http-test", "user_id": "guest",
                "persistent": true
            }
        })),
        None,
    )
    .await;
    assert_eq!((status, &r["routed"]), (200, &json!(true)), "{r}");
    let d = next_delivery(&mut consumer).await;
    assert_eq!(d.data, b"{\"order\":1}");
    assert_eq!(d.routing_key.as_str(), "x.http");
    let p = &d.properties;
    assert_eq!(
        p.content_type().as_ref().map(|v| v.as_str()),
        Some("application/json")
    );
    assert_eq!(
        p.content_encoding().as_ref().map(|v| v.as_str()),
        Some("identity")
    );
    assert_eq!(
        p.correlation_id().as_ref().map(|v| v.as_str()),
        Some("corr-1")
    );
    assert_eq!(p.reply_to().as_ref().map(|v| v.as_str()), Some("replies"));
    assert_eq!(p.message_id().as_ref().map(|v| v.as_str()), Some("m-1"));
    assert_eq!(*p.timestamp(), Some(1_700_000_000));
    assert_eq!(p.expiration().as_ref().map(|v| v.as_str()), Some("60000"));
    assert_eq!(*p.priority(), Some(7));
    assert_eq!(p.kind().as_ref().map(|v| v.as_str()), Some("order.created"));
    assert_eq!(p.app_id().as_ref().map(|v| v.as_str()), Some("http-test"));
    assert_eq!(p.user_id().as_ref().map(|v| v.as_str()), Some("guest"));
    assert_eq!(*p.delivery_mode(), Some(2));
    let h = p.headers().as_ref().expect("headers").inner();
    assert_eq!(text(h.get("tenant")), Some("a".into()));
    assert_eq!(int(h.get("n")), Some(42));
    assert_eq!(h.get("ok"), Some(&AMQPValue::Boolean(true)));
    match h.get("blob") {
        Some(AMQPValue::ByteArray(bytes)) => assert_eq!(bytes.as_slice(), [0, 1, 2]),
        other => panic!("blob should be a byte array, got {other:?}"),
    }
    assert_eq!(h.get("at"), Some(&AMQPValue::Timestamp(1_700_000_000)));
    d.ack(BasicAckOptions::default()).await.unwrap();

    // A raw body: Content-Type kept, x-ferrymq-* headers mapped.
    let (status, _) = call(
        &b.http,
        "POST",
        "/api/queues/%2F/x.http/messages",
        None,
        Some((
            "application/pdf",
            vec![
                ("x-ferrymq-correlation-id", "corr-2"),
                ("x-ferrymq-reply-to", "amq.rabbitmq.reply-to"),
                ("x-ferrymq-message-id", "m-2"),
                ("x-ferrymq-priority", "3"),
                ("x-ferrymq-expiration-ms", "5000"),
                ("x-ferrymq-header-Tenant", "b"),
            ],
            "%PDF-1.7",
        )),
    )
    .await;
    assert_eq!(status, 200);
    let d = next_delivery(&mut consumer).await;
    assert_eq!(d.data, b"%PDF-1.7");
    let p = &d.properties;
    assert_eq!(
        p.content_type().as_ref().map(|v| v.as_str()),
        Some("application/pdf")
    );
    assert_eq!(
        p.correlation_id().as_ref().map(|v| v.as_str()),
        Some("corr-2")
    );
    assert_eq!(
        p.reply_to().as_ref().map(|v| v.as_str()),
        Some("amq.rabbitmq.reply-to")
    );
    assert_eq!(p.message_id().as_ref().map(|v| v.as_str()), Some("m-2"));
    assert_eq!(*p.priority(), Some(3));
    assert_eq!(p.expiration().as_ref().map(|v| v.as_str()), Some("5000"));
    let h = p.headers().as_ref().expect("headers").inner();
    assert_eq!(text(h.get("tenant")), Some("b".into()), "names lowercased");
    d.ack(BasicAckOptions::default()).await.unwrap();
    conn.close(200, s("bye")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_publishes_reach_http_consumers_with_headers_and_properties() {
    let b = start();
    let conn = connect(&b).await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.queue_declare(
        s("x.amqp"),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut headers = FieldTable::default();
    headers.insert(s("tenant"), AMQPValue::LongString("a".into()));
    headers.insert(s("n"), AMQPValue::LongLongInt(-42));
    headers.insert(s("ok"), AMQPValue::Boolean(true));
    headers.insert(s("ratio"), AMQPValue::Double(0.5));
    headers.insert(s("blob"), AMQPValue::ByteArray(vec![0u8, 255].into()));
    headers.insert(s("at"), AMQPValue::Timestamp(1_700_000_000));
    let props = BasicProperties::default()
        .with_content_type(s("text/plain"))
        .with_content_encoding(s("utf-8"))
        .with_correlation_id(s("corr-9"))
        .with_reply_to(s("replies"))
        .with_message_id(s("m-9"))
        .with_timestamp(1_700_000_001)
        .with_expiration(s("60000"))
        .with_priority(4)
        .with_delivery_mode(2)
        .with_type(s("greeting"))
        .with_app_id(s("lapin"))
        .with_user_id(s("guest"))
        .with_headers(headers);
    ch.basic_publish(
        s(""),
        s("x.amqp"),
        BasicPublishOptions::default(),
        b"hello from amqp",
        props,
    )
    .await
    .unwrap()
    .await
    .unwrap();
    // Pulled over HTTP.
    let (status, r) = call(
        &b.http,
        "POST",
        "/api/queues/%2F/x.amqp/get",
        Some(json!({"max_messages": 1, "wait_ms": 5000, "auto_ack": true})),
        None,
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let m = &r["messages"][0]["message"];
    assert_eq!(m["payload"], "hello from amqp");
    assert_eq!(m["routing_key"], "x.amqp");
    assert_eq!(m["exchange"], "");
    assert_eq!(
        m["properties"],
        json!({
            "content_type": "text/plain", "content_encoding": "utf-8",
            "correlation_id": "corr-9", "reply_to": "replies", "message_id": "m-9",
            "timestamp_ms": 1_700_000_001_000i64, "expiration_ms": 60000, "priority": 4,
            "persistent": true, "type": "greeting", "app_id": "lapin", "user_id": "guest"
        })
    );
    let h = &m["headers"];
    assert_eq!(h["tenant"], "a");
    assert_eq!(h["n"], -42);
    assert_eq!(h["ok"], true);
    assert_eq!(h["ratio"], 0.5);
    assert_eq!(h["blob"], json!({"$bytes": "AP8="}));
    assert_eq!(h["at"], json!({"$timestamp": 1_700_000_000_000i64}));
    conn.close(200, s("bye")).await.unwrap();
}

/// Runs the admin CLI against the server; returns its stdout (it must succeed).
async fn cli(b: &Both, args: &[&str]) -> String {
    let mut cmd = common::ferrymq(b._dir.path());
    cmd.env("FERRYMQ_URL", &b.http).args(args);
    let r = tokio::task::spawn_blocking(move || common::run(&mut cmd))
        .await
        .expect("cli thread");
    assert!(r.status.success(), "{}{}", r.stdout, r.stderr);
    r.stdout
}

/// Polls `path` until `ok` holds for its JSON (listings reflect a connection's state once its
/// loop has turned), failing after the deadline with the last answer.
async fn eventually(base: &str, path: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + DEADLINE;
    loop {
        let v = get(base, path).await;
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < end, "GET {path} never matched: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_channels_and_consumers_are_listed() {
    let b = start();
    let conn = connect(&b).await;
    let ch = conn.create_channel().await.unwrap();
    let ch2 = conn.create_channel().await.unwrap();
    ch.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch2.tx_select().await.unwrap();
    ch.queue_declare(
        s("work"),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    for i in 0..3u8 {
        ch.basic_publish(
            s(""),
            s("work"),
            BasicPublishOptions::default(),
            &[i],
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let mut consumer = ch
        .basic_consume(
            s("work"),
            s("c-1"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for _ in 0..3 {
        next_delivery(&mut consumer).await;
    }
    let channels = eventually(&b.http, "/api/channels", |v| {
        v.as_array()
            .is_some_and(|a| a.iter().any(|c| c["messages_unacknowledged"] == 3))
    })
    .await;
    let all = channels.as_array().unwrap();
    assert_eq!(all.len(), 2, "{channels}");
    let first = all.iter().find(|c| c["number"] == ch.id()).unwrap();
    assert_eq!(first["protocol"], "amqp-0-9-1");
    assert_eq!(first["user"], "guest");
    assert_eq!(first["vhost"], "/");
    assert_eq!(first["prefetch_count"], 10);
    assert_eq!(first["confirm"], true);
    assert_eq!(first["transactional"], false);
    assert_eq!(first["consumer_count"], 1);
    let second = all.iter().find(|c| c["number"] == ch2.id()).unwrap();
    assert_eq!(
        (&second["transactional"], &second["consumer_count"]),
        (&json!(true), &json!(0))
    );
    let conn_id = first["connection"].as_u64().unwrap();
    assert_eq!(
        first["name"],
        format!("{conn_id} ({})", ch.id()),
        "RabbitMQ-style channel name"
    );
    assert_eq!(
        get(&b.http, &format!("/api/connections/{conn_id}")).await["channels"],
        2,
        "open channels"
    );
    let per_conn = get(&b.http, &format!("/api/connections/{conn_id}/channels")).await;
    assert_eq!(per_conn.as_array().map(Vec::len), Some(2));
    let per_vhost = get(&b.http, "/api/vhosts/%2F/channels").await;
    assert_eq!(per_vhost.as_array().map(Vec::len), Some(2));
    assert_eq!(
        call(
            &b.http,
            "GET",
            "/api/connections/999999/channels",
            None,
            None
        )
        .await
        .0,
        404
    );
    let consumers = get(&b.http, "/api/consumers/%2F").await;
    let c = &consumers[0];
    assert_eq!(consumers.as_array().map(Vec::len), Some(1), "{consumers}");
    assert_eq!(
        (
            &c["queue"],
            &c["consumer_tag"],
            &c["connection"],
            &c["channel"]
        ),
        (
            &json!("work"),
            &json!("c-1"),
            &json!(conn_id),
            &json!(ch.id())
        )
    );
    assert_eq!(
        (
            &c["ack_required"],
            &c["prefetch_count"],
            &c["messages_unacknowledged"],
            &c["active"],
            &c["protocol"]
        ),
        (
            &json!(true),
            &json!(10),
            &json!(3),
            &json!(true),
            &json!("amqp-0-9-1")
        )
    );
    assert_eq!(get(&b.http, "/api/consumers").await, consumers);
    // The admin CLI lists them too.
    let table = cli(&b, &["consumers", "list"]).await;
    let mut lines = table.lines();
    assert!(
        lines.next().is_some_and(|h| h.starts_with("vhost")),
        "{table}"
    );
    assert!(
        lines
            .next()
            .is_some_and(|l| l.contains("work") && l.contains("c-1")),
        "{table}"
    );
    let listed: Value = serde_json::from_str(&cli(&b, &["channels", "list", "--json"]).await)
        .expect("channels list --json prints JSON");
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    // Closing a channel unregisters it; cancelling the consumer removes it.
    ch2.close(200, s("done")).await.unwrap();
    ch.basic_cancel(s("c-1"), BasicCancelOptions::default())
        .await
        .unwrap();
    let left = eventually(&b.http, "/api/channels", |v| {
        v.as_array().is_some_and(|a| a.len() == 1)
    })
    .await;
    assert_eq!(left[0]["consumer_count"], 0);
    assert_eq!(
        get(&b.http, &format!("/api/connections/{conn_id}")).await["channels"],
        1,
        "a closed channel is no longer counted"
    );
    assert_eq!(get(&b.http, "/api/consumers").await, json!([]));
    conn.close(200, s("bye")).await.unwrap();
    eventually(&b.http, "/api/channels", |v| v == &json!([])).await;
}
