//! Issue #9, topic permissions (RabbitMQ's topic authorisation) against the real binary:
//! routing keys checked against a user's `write` pattern when publishing to a topic
//! exchange and binding keys against `read` when binding to one, over AMQP (403
//! ACCESS_REFUSED with RabbitMQ's text), MQTT (publish, subscribe and will, MQTT 5 reason
//! codes and MQTT 3 behaviour, `{client_id}` and `{username}` expanded) and HTTP (403 JSON);
//! the management API, definitions export/import and the CLI. Each refusal is checked to
//! store, bind or deliver nothing.

#[path = "common/api.rs"]
mod api;
mod common;
#[path = "common/mqtt.rs"]
mod mqtt;

use std::net::SocketAddr;
use std::time::Duration;

use api::{assert_amqp_refused as assert_refused, basic, Api, GUEST};
use bytes::Bytes;
use common::{listening, serve, Server};
use ferrymq_mqtt_codec::{
    Connect, Packet, ProtocolVersion, Publish, QoS, ReasonCode, Subscribe, Subscription,
    SubscriptionOptions, Will,
};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use mqtt::{connect_packet, Client};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(30);
const APP: (&str, &str) = ("app", "pw");

/// A server where user `app` (password `pw`) has full vhost permissions on `/` and a topic
/// permission on the topic exchange `t.x` (write `^{username}\.`, read
/// `^({username}|public)\.`) and on the direct exchange `d.x` (which is never checked:
/// not a topic exchange). Guest bound queue `t.sink` to `t.x` with `#` and `d.sink` to
/// `d.x` with `k`; `app.q` is an empty queue for app's bindings.
struct Setup {
    _dir: tempfile::TempDir,
    server: Server,
    api: Api,
}

impl std::ops::Deref for Setup {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Setup {
    fn start() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let server = serve(dir.path(), &dir.path().join("data"), &[]);
        let api = Api::new(listening(&server, "http"));
        let s = Setup {
            _dir: dir,
            server,
            api,
        };
        s.ok(GUEST, "PUT", "/api/users/app", json!({"password": "pw"}));
        s.ok(
            GUEST,
            "PUT",
            "/api/permissions/%2F/app",
            json!({"configure": ".*", "write": ".*", "read": ".*"}),
        );
        for (x, kind) in [("t.x", "topic"), ("d.x", "direct"), ("app.dx", "fanout")] {
            s.ok(
                GUEST,
                "PUT",
                &format!("/api/exchanges/%2F/{x}"),
                json!({ "type": kind }),
            );
        }
        for q in ["t.sink", "d.sink", "app.q"] {
            s.ok(GUEST, "PUT", &format!("/api/queues/%2F/{q}"), json!({}));
        }
        s.ok(
            GUEST,
            "POST",
            "/api/bindings/%2F/e/t.x/q/t.sink",
            json!({"routing_key": "#"}),
        );
        s.ok(
            GUEST,
            "POST",
            "/api/bindings/%2F/e/d.x/q/d.sink",
            json!({"routing_key": "k"}),
        );
        for x in ["t.x", "d.x"] {
            s.ok(
                GUEST,
                "PUT",
                "/api/topic-permissions/%2F/app",
                json!({"exchange": x, "write": "^{username}\\.", "read": "^({username}|public)\\."}),
            );
        }
        s
    }

    /// Asserts that app gets a 403 with the API's JSON error body and RabbitMQ's text.
    fn refused(&self, method: &str, path: &str, body: Value, text: &str) {
        self.api.refused(APP, method, path, body, text);
    }

    async fn app_channel(&self) -> (Connection, Channel) {
        let addr = listening(&self.server, "AMQP");
        let uri = format!("amqp://app:pw@{addr}/%2f");
        let conn = tokio::time::timeout(
            DEADLINE,
            Connection::connect(&uri, ConnectionProperties::default()),
        )
        .await
        .expect("connect in time")
        .expect("connect");
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        (conn, ch)
    }
}

fn topic_refusal(access: &str, key: &str, exchange: &str) -> String {
    format!("{access} access to topic '{key}' in exchange '{exchange}' in vhost '/' refused for user 'app'")
}

async fn publish(ch: &Channel, exchange: &str, key: &str) -> Result<bool, lapin::Error> {
    let confirm = ch
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            b"m",
            BasicProperties::default(),
        )
        .await?
        .await?;
    Ok(confirm.is_ack())
}

// ------------------------------------------------------------------ AMQP

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_publish_to_a_topic_exchange_checks_the_routing_key() {
    let s = Setup::start();
    let (conn, ch) = s.app_channel().await;
    // Allowed, twice (the second goes through the channel's cached check).
    assert!(publish(&ch, "t.x", "app.a").await.unwrap());
    assert!(publish(&ch, "t.x", "app.b").await.unwrap());
    assert_eq!(s.messages("t.sink"), 2);
    // Refused on the same channel: the cached exchange still checks every key.
    assert_refused(
        publish(&ch, "t.x", "other.a").await,
        &topic_refusal("write", "other.a", "t.x"),
    );
    // Refused as the first publish of a channel.
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    assert_refused(
        publish(&ch, "t.x", "appx").await,
        &topic_refusal("write", "appx", "t.x"),
    );
    assert_eq!(s.messages("t.sink"), 2, "nothing refused was routed");
    // A direct exchange is never checked, even with a topic permission naming it.
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    assert!(publish(&ch, "d.x", "k").await.unwrap());
    assert_eq!(s.messages("d.sink"), 1);
    // Without a topic permission on an exchange the user is not restricted (RabbitMQ).
    assert!(publish(&ch, "amq.topic", "other.a").await.unwrap());
    // Removing the permission lifts the restriction for new channels.
    s.ok(
        GUEST,
        "DELETE",
        "/api/topic-permissions/%2F/app?exchange=t.x",
        Value::Null,
    );
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    assert!(publish(&ch, "t.x", "other.a").await.unwrap());
    assert_eq!(s.messages("t.sink"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_bindings_to_a_topic_exchange_check_the_binding_key() {
    let s = Setup::start();
    let (conn, ch) = s.app_channel().await;
    let no_args = FieldTable::default;
    assert_refused(
        ch.queue_bind(
            "app.q".into(),
            "t.x".into(),
            "other.#".into(),
            QueueBindOptions::default(),
            no_args(),
        )
        .await,
        &topic_refusal("read", "other.#", "t.x"),
    );
    assert!(!s.has_binding("t.x", "app.q", "other.#"));
    let ch = conn.create_channel().await.unwrap();
    for key in ["app.#", "public.news"] {
        ch.queue_bind(
            "app.q".into(),
            "t.x".into(),
            key.into(),
            QueueBindOptions::default(),
            no_args(),
        )
        .await
        .unwrap();
        assert!(s.has_binding("t.x", "app.q", key));
    }
    // exchange.bind with a topic source.
    assert_refused(
        ch.exchange_bind(
            "app.dx".into(),
            "t.x".into(),
            "other.*".into(),
            ExchangeBindOptions::default(),
            no_args(),
        )
        .await,
        &topic_refusal("read", "other.*", "t.x"),
    );
    assert!(!s.has_binding("t.x", "app.dx", "other.*"));
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_bind(
        "app.dx".into(),
        "t.x".into(),
        "public.*".into(),
        ExchangeBindOptions::default(),
        no_args(),
    )
    .await
    .unwrap();
    assert!(s.has_binding("t.x", "app.dx", "public.*"));
    // Unbinding is checked as RabbitMQ does; guest's binding stays.
    assert_refused(
        ch.queue_unbind("t.sink".into(), "t.x".into(), "#".into(), no_args())
            .await,
        &topic_refusal("read", "#", "t.x"),
    );
    assert!(s.has_binding("t.x", "t.sink", "#"));
    // A direct exchange's bindings are not checked.
    let ch = conn.create_channel().await.unwrap();
    ch.queue_bind(
        "app.q".into(),
        "d.x".into(),
        "other".into(),
        QueueBindOptions::default(),
        no_args(),
    )
    .await
    .unwrap();
    assert!(s.has_binding("d.x", "app.q", "other"));
}

// ------------------------------------------------------------------ HTTP

#[test]
fn http_publish_to_a_topic_exchange_checks_every_routing_key() {
    let s = Setup::start();
    s.refused(
        "POST",
        "/api/exchanges/%2F/t.x/publish",
        json!({"routing_key": "other.a", "payload": "no"}),
        &topic_refusal("write", "other.a", "t.x"),
    );
    // A batch with one refused key stores nothing.
    s.refused(
        "POST",
        "/api/exchanges/%2F/t.x/publish/batch",
        json!({"messages": [
            {"routing_key": "app.a", "payload": "1"},
            {"routing_key": "other.b", "payload": "2"}
        ]}),
        &topic_refusal("write", "other.b", "t.x"),
    );
    s.refused(
        "POST",
        "/api/exchanges/%2F/t.x/messages?routing_key=other.c",
        json!("raw"),
        &topic_refusal("write", "other.c", "t.x"),
    );
    assert_eq!(s.messages("t.sink"), 0, "nothing refused was routed");
    let r = s.ok(
        APP,
        "POST",
        "/api/exchanges/%2F/t.x/publish",
        json!({"routing_key": "app.a", "payload": "yes"}),
    );
    assert_eq!(r["routed"], true, "{r}");
    s.ok(
        APP,
        "POST",
        "/api/exchanges/%2F/t.x/publish/batch",
        json!({"messages": [
            {"routing_key": "app.b", "payload": "1"},
            {"routing_key": "app.c", "payload": "2"}
        ]}),
    );
    s.ok(
        APP,
        "POST",
        "/api/exchanges/%2F/d.x/publish",
        json!({"routing_key": "k", "payload": "direct"}),
    );
    assert_eq!(s.messages("t.sink"), 3);
    assert_eq!(s.messages("d.sink"), 1);
}

#[test]
fn http_bindings_and_exchange_subscriptions_check_the_binding_key() {
    let s = Setup::start();
    s.refused(
        "POST",
        "/api/bindings/%2F/e/t.x/q/app.q",
        json!({"routing_key": "other.#"}),
        &topic_refusal("read", "other.#", "t.x"),
    );
    assert!(!s.has_binding("t.x", "app.q", "other.#"));
    s.refused(
        "DELETE",
        "/api/bindings/%2F/e/t.x/q/t.sink?routing_key=%23",
        Value::Null,
        &topic_refusal("read", "#", "t.x"),
    );
    assert!(s.has_binding("t.x", "t.sink", "#"));
    s.ok(
        APP,
        "POST",
        "/api/bindings/%2F/e/t.x/q/app.q",
        json!({"routing_key": "public.#"}),
    );
    assert!(s.has_binding("t.x", "app.q", "public.#"));
    // An event stream on an exchange binds its pattern: read on it is checked first.
    s.refused(
        "GET",
        "/api/exchanges/%2F/t.x/events?pattern=other.%23",
        Value::Null,
        &topic_refusal("read", "other.#", "t.x"),
    );
    // Allowed: the stream opens (its headers come; the body streams until dropped).
    let url = format!("{}/api/exchanges/%2F/t.x/events?pattern=app.%23", s.base);
    let resp = s
        .agent
        .get(&url)
        .header("authorization", &basic("app", "pw"))
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    drop(resp);
}

#[test]
fn management_api_round_trip_definitions_and_cli() {
    let s = Setup::start();
    let all = s.ok(GUEST, "GET", "/api/topic-permissions", Value::Null);
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
    let mine = s.ok(GUEST, "GET", "/api/topic-permissions/%2F/app", Value::Null);
    assert_eq!(
        mine[1],
        json!({"user": "app", "vhost": "/", "exchange": "t.x",
               "write": "^{username}\\.", "read": "^({username}|public)\\."})
    );
    // The user may read its own; another non-administrator may not; nor set any.
    s.ok(APP, "GET", "/api/topic-permissions/%2F/app", Value::Null);
    let (st, _) = s.call(APP, "GET", "/api/topic-permissions", Value::Null);
    assert_eq!(st, 403);
    let (st, _) = s.call(
        APP,
        "PUT",
        "/api/topic-permissions/%2F/app",
        json!({"exchange": "t.x", "write": ".*", "read": ".*"}),
    );
    assert_eq!(st, 403);
    // Invalid bodies (422, as PUT /api/permissions): a pattern that does not compile, an
    // unknown field, no exchange; then no such user or vhost (404).
    for (path, body) in [
        (
            "/api/topic-permissions/%2F/app",
            json!({"exchange": "t.x", "write": "(", "read": ".*"}),
        ),
        (
            "/api/topic-permissions/%2F/app",
            json!({"exchange": "t.x", "write": ".*", "read": ".*", "configure": ".*"}),
        ),
        (
            "/api/topic-permissions/%2F/app",
            json!({"exchange": "", "write": ".*", "read": ".*"}),
        ),
    ] {
        let (st, v) = s.call(GUEST, "PUT", path, body);
        assert_eq!(st, 422, "{v}");
        assert_eq!(v["error"], "invalid_argument", "{v}");
    }
    for path in [
        "/api/topic-permissions/%2F/nobody",
        "/api/topic-permissions/novhost/app",
    ] {
        let (st, v) = s.call(
            GUEST,
            "PUT",
            path,
            json!({"exchange": "t.x", "write": ".*", "read": ".*"}),
        );
        assert_eq!(st, 404, "{path}: {v}");
    }
    // Replace, then the vhost listing.
    s.ok(
        GUEST,
        "PUT",
        "/api/topic-permissions/%2F/app",
        json!({"exchange": "t.x", "write": "^w", "read": "^r"}),
    );
    let vh = s.ok(GUEST, "GET", "/api/topic-permissions/%2F", Value::Null);
    assert_eq!(vh.as_array().unwrap().len(), 2, "{vh}");
    assert!(vh.to_string().contains("\"^w\""), "{vh}");

    // Definitions: exported in RabbitMQ's format, imported into a fresh server and enforced.
    let defs = s.ok(GUEST, "GET", "/api/definitions", Value::Null);
    let tps = defs["topic_permissions"].as_array().unwrap();
    assert_eq!(tps.len(), 2, "{defs}");
    assert!(tps.contains(
        &json!({"user": "app", "vhost": "/", "exchange": "t.x", "write": "^w", "read": "^r"})
    ));
    let fresh = Setup::start();
    fresh.ok(
        GUEST,
        "PUT",
        "/api/topic-permissions/%2F/app",
        json!({"exchange": "t.x", "write": ".*", "read": ".*"}),
    );
    let r = fresh.ok(GUEST, "POST", "/api/definitions", defs.clone());
    assert_eq!(r["topic_permissions"], 2, "{r}");
    assert_eq!(
        fresh.ok(GUEST, "GET", "/api/topic-permissions", Value::Null),
        s.ok(GUEST, "GET", "/api/topic-permissions", Value::Null)
    );
    fresh.refused(
        "POST",
        "/api/exchanges/%2F/t.x/publish",
        json!({"routing_key": "app.a", "payload": "no"}),
        &topic_refusal("write", "app.a", "t.x"),
    );
    // A document with an invalid pattern imports nothing of it.
    let mut bad = defs.clone();
    bad["topic_permissions"] = json!([{"user": "app", "vhost": "/", "exchange": "z.x",
                                       "write": "(", "read": ""}]);
    let (st, v) = fresh.call(GUEST, "POST", "/api/definitions", bad);
    assert_eq!(st, 422, "{v}");
    assert!(
        !fresh
            .ok(GUEST, "GET", "/api/topic-permissions", Value::Null)
            .to_string()
            .contains("z.x"),
        "nothing of a refused document is imported"
    );

    // Delete one exchange's, then all; a second delete is 404.
    s.ok(
        GUEST,
        "DELETE",
        "/api/topic-permissions/%2F/app?exchange=d.x",
        Value::Null,
    );
    assert_eq!(
        s.ok(GUEST, "GET", "/api/topic-permissions/%2F/app", Value::Null)
            .as_array()
            .unwrap()
            .len(),
        1
    );
    s.ok(
        GUEST,
        "DELETE",
        "/api/topic-permissions/%2F/app",
        Value::Null,
    );
    let (st, _) = s.call(GUEST, "GET", "/api/topic-permissions/%2F/app", Value::Null);
    assert_eq!(st, 404);
    let (st, _) = s.call(
        GUEST,
        "DELETE",
        "/api/topic-permissions/%2F/app",
        Value::Null,
    );
    assert_eq!(st, 404);

    // The CLI: set, list, clear.
    let d = s._dir.path();
    let cli = |args: &[&str]| {
        let mut cmd = common::ferrymq(d);
        cmd.env("FERRYMQ_URL", &s.base).args(args);
        let r = common::run(&mut cmd);
        assert!(r.status.success(), "{args:?}: {}{}", r.stdout, r.stderr);
        r.stdout
    };
    cli(&[
        "topic-permissions",
        "set",
        "app",
        "--exchange",
        "t.x",
        "--write",
        "^cli\\.",
        "--read",
        "^cli\\.",
    ]);
    let list = cli(&["topic-permissions", "list"]);
    assert!(
        list.lines().next().unwrap().starts_with("vhost")
            && list.contains("t.x")
            && list.contains("^cli\\."),
        "{list}"
    );
    s.refused(
        "POST",
        "/api/exchanges/%2F/t.x/publish",
        json!({"routing_key": "app.a", "payload": "no"}),
        &topic_refusal("write", "app.a", "t.x"),
    );
    cli(&["topic-permissions", "clear", "app", "--exchange", "t.x"]);
    let json: Value = serde_json::from_str(&cli(&["topic-permissions", "list", "--json"])).unwrap();
    assert_eq!(json, json!([]));
    let mut cmd = common::ferrymq(d);
    cmd.env("FERRYMQ_URL", &s.base)
        .args(["topic-permissions", "clear", "app"]);
    let r = common::run(&mut cmd);
    assert_eq!(r.status.code(), Some(1), "{}{}", r.stdout, r.stderr);
}

// ------------------------------------------------------------------ MQTT

/// User `dev` may publish under `devices/{client_id}/` and `users/{username}/`, and
/// subscribe under `devices/{client_id}/` and `broadcast/` (topic permissions on
/// amq.topic, where MQTT topics are routing keys with `/` as `.`).
fn mqtt_setup() -> (Setup, SocketAddr) {
    let s = Setup::start();
    s.ok(GUEST, "PUT", "/api/users/dev", json!({"password": "pw"}));
    s.ok(
        GUEST,
        "PUT",
        "/api/permissions/%2F/dev",
        json!({"configure": ".*", "write": ".*", "read": ".*"}),
    );
    s.ok(
        GUEST,
        "PUT",
        "/api/topic-permissions/%2F/dev",
        json!({"exchange": "amq.topic",
               "write": "^devices\\.{client_id}\\.|^users\\.{username}\\.",
               "read": "^devices\\.{client_id}\\.|^broadcast\\."}),
    );
    let addr = listening(&s.server, "MQTT");
    (s, addr)
}

fn login(v: ProtocolVersion, id: &str) -> Connect {
    let mut c = connect_packet(v, id, true);
    c.username = Some("dev".into());
    c.password = Some(Bytes::from_static(b"pw"));
    c
}

async fn connected(addr: SocketAddr, c: Connect) -> Client {
    let (cl, a) = Client::connect(addr, c).await;
    assert_eq!(a.reason_code, ReasonCode::SUCCESS);
    cl
}

async fn send_publish(c: &mut Client, topic: &str, qos: QoS, pid: u16, body: &'static [u8]) {
    c.send(Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: (qos != QoS::AtMostOnce).then_some(pid),
        properties: Default::default(),
        payload: Bytes::from_static(body),
    }))
    .await;
}

/// The watcher's next message: its topic and payload.
async fn next_seen(w: &mut Client) -> (String, Vec<u8>) {
    let p = w.expect_publish().await;
    (p.topic.to_string(), p.payload.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_publish_checks_the_topic_with_client_id_and_username_expanded() {
    let (_s, addr) = mqtt_setup();
    let mut watcher = Client::v5(addr, "watcher", true).await;
    for f in ["devices/#", "users/#"] {
        watcher.subscribe(1, f, QoS::AtMostOnce).await;
    }

    // MQTT 5: QoS 0 refused is dropped, QoS 1 gets PUBACK 0x87; allowed ones go through.
    let mut c = connected(addr, login(ProtocolVersion::V5, "c1")).await;
    send_publish(&mut c, "devices/c2/t", QoS::AtMostOnce, 0, b"refused-0").await;
    send_publish(&mut c, "devices/c2/t", QoS::AtLeastOnce, 1, b"refused-1").await;
    match c.recv().await {
        Packet::Puback(a) => assert_eq!(
            (a.packet_id, a.reason_code),
            (1, ReasonCode::NOT_AUTHORIZED)
        ),
        p => panic!("expected PUBACK, got {p:?}"),
    }
    send_publish(&mut c, "users/other/t", QoS::AtLeastOnce, 2, b"refused-2").await;
    match c.recv().await {
        Packet::Puback(a) => assert_eq!(
            (a.packet_id, a.reason_code),
            (2, ReasonCode::NOT_AUTHORIZED)
        ),
        p => panic!("expected PUBACK, got {p:?}"),
    }
    c.publish("devices/c1/t", b"ok-1", QoS::AtLeastOnce, false, 3)
        .await;
    c.publish("users/dev/t", b"ok-2", QoS::AtMostOnce, false, 0)
        .await;
    // The watcher sees the allowed ones first: the refused ones were never routed.
    assert_eq!(
        next_seen(&mut watcher).await,
        ("devices/c1/t".into(), b"ok-1".to_vec())
    );
    assert_eq!(
        next_seen(&mut watcher).await,
        ("users/dev/t".into(), b"ok-2".to_vec())
    );
    c.disconnect().await;

    // MQTT 3.1.1: a refused QoS 0 is dropped and the connection stays; a refused QoS 1
    // closes the connection (no failure code in PUBACK).
    let mut c = connected(addr, login(ProtocolVersion::V3_1_1, "c3")).await;
    send_publish(&mut c, "devices/c1/t", QoS::AtMostOnce, 0, b"refused-3").await;
    c.ping().await;
    c.publish("devices/c3/t", b"ok-3", QoS::AtLeastOnce, false, 1)
        .await;
    assert_eq!(
        next_seen(&mut watcher).await,
        ("devices/c3/t".into(), b"ok-3".to_vec())
    );
    send_publish(&mut c, "devices/c1/t", QoS::AtLeastOnce, 2, b"refused-4").await;
    assert!(c.next().await.is_none(), "closed without a PUBACK");
    // Nothing refused reached the watcher.
    let mut c = connected(addr, login(ProtocolVersion::V5, "c1")).await;
    c.publish("devices/c1/end", b"end", QoS::AtLeastOnce, false, 1)
        .await;
    assert_eq!(
        next_seen(&mut watcher).await,
        ("devices/c1/end".into(), b"end".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_subscribe_checks_each_filter() {
    let (s, addr) = mqtt_setup();
    for (v, refused) in [(ProtocolVersion::V5, 0x87), (ProtocolVersion::V3_1_1, 0x80)] {
        let mut c = connected(addr, login(v, "c1")).await;
        c.send(Packet::Subscribe(Subscribe {
            packet_id: 7,
            properties: Default::default(),
            subscriptions: [
                "devices/c1/#",
                "devices/c2/#",
                "broadcast/+/x",
                "$share/g/devices/c2/x",
            ]
            .iter()
            .map(|f| Subscription {
                filter: (*f).into(),
                options: SubscriptionOptions::qos(QoS::AtLeastOnce),
            })
            .collect(),
        }))
        .await;
        match c.recv().await {
            Packet::Suback(a) => assert_eq!(
                a.reason_codes,
                vec![
                    ReasonCode(1),
                    ReasonCode(refused),
                    ReasonCode(1),
                    ReasonCode(refused)
                ],
                "{v:?}"
            ),
            p => panic!("expected SUBACK, got {p:?}"),
        }
        // Only the allowed filters were bound.
        let b = s.ok(GUEST, "GET", "/api/bindings/%2F", Value::Null);
        let keys: Vec<&str> = b
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["source"] == "amq.topic")
            .filter_map(|b| b["routing_key"].as_str())
            .collect();
        assert!(
            keys.contains(&"devices.c1.#") && keys.contains(&"broadcast.*.x"),
            "{keys:?}"
        );
        assert!(
            !keys.iter().any(|k| k.starts_with("devices.c2")),
            "{keys:?}"
        );
        // A message on a refused filter's topic is not delivered; one on an allowed one is.
        let mut g = Client::v5(addr, "guest-pub", true).await;
        g.publish("devices/c2/x", b"not-for-c1", QoS::AtLeastOnce, false, 1)
            .await;
        g.publish("devices/c1/x", b"for-c1", QoS::AtLeastOnce, false, 2)
            .await;
        g.disconnect().await;
        let p = c.expect_publish().await;
        assert_eq!(&p.payload[..], b"for-c1", "{v:?}");
        c.disconnect().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_will_topic_is_checked_at_connect() {
    let (_s, addr) = mqtt_setup();
    let mut watcher = Client::v5(addr, "watcher", true).await;
    watcher.subscribe(1, "devices/#", QoS::AtMostOnce).await;
    for v in [ProtocolVersion::V5, ProtocolVersion::V3_1_1] {
        let mut c = login(v, "c1");
        c.will = Some(Will {
            topic: "devices/c2/will".into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
        });
        // CONNACK 0x87 (MQTT 3: 5, not authorized), as Mosquitto and RabbitMQ refuse it.
        let (_, a) = Client::connect(addr, c.clone()).await;
        assert_eq!(a.reason_code, ReasonCode::NOT_AUTHORIZED, "{v:?}");
        // Its own topic is allowed; an abnormal end publishes it.
        c.will.as_mut().unwrap().topic = "devices/c1/will".into();
        let cl = connected(addr, c).await;
        drop(cl);
        assert_eq!(
            next_seen(&mut watcher).await,
            ("devices/c1/will".into(), b"gone".to_vec()),
            "{v:?}"
        );
    }
}
