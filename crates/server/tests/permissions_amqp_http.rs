//! Issue #9: vhost permissions (configure / write / read regular expressions, RabbitMQ's
//! model) enforced over AMQP (403 ACCESS_REFUSED channel errors with RabbitMQ's text) and
//! HTTP (403 with the JSON error body), against the real binary: one refused and one allowed
//! case per operation, and a refusal changes nothing.

#[path = "common/api.rs"]
mod api;
mod common;

use std::time::Duration;

use api::{assert_amqp_refused as assert_refused, Api, GUEST};
use common::{listening, serve, Server};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(30);

/// A server where user `app` (password `pw`, no tags) may configure, write and read only
/// names starting with `app.`; guest has created `app.q`, `app.x` (direct, bound to `app.q`
/// with key `k`), `app.y`, `other.q` (holding one message) and `other.x`.
struct Setup {
    _dir: tempfile::TempDir,
    server: Server,
    api: Api,
}

const APP: (&str, &str) = ("app", "pw");

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
            json!({"configure": "^app\\.", "write": "^app\\.", "read": "^app\\."}),
        );
        for q in ["app.q", "other.q"] {
            s.ok(GUEST, "PUT", &format!("/api/queues/%2F/{q}"), json!({}));
        }
        for x in ["app.x", "app.y", "other.x"] {
            s.ok(
                GUEST,
                "PUT",
                &format!("/api/exchanges/%2F/{x}"),
                json!({"type": "direct"}),
            );
        }
        s.ok(
            GUEST,
            "POST",
            "/api/bindings/%2F/e/app.x/q/app.q",
            json!({"routing_key": "k"}),
        );
        s.ok(
            GUEST,
            "POST",
            "/api/queues/%2F/other.q/publish",
            json!({"payload": "kept"}),
        );
        s
    }

    /// Asserts that app gets a 403 with the API's JSON error body and RabbitMQ's text.
    fn refused(&self, method: &str, path: &str, body: Value, text: &str) {
        self.api.refused(APP, method, path, body, text);
    }

    fn exists(&self, path: &str) -> bool {
        match self.call(GUEST, "GET", path, Value::Null).0 {
            200 => true,
            404 => false,
            s => panic!("GET {path}: {s}"),
        }
    }

    async fn connect(&self, who: (&str, &str)) -> Connection {
        let addr = listening(&self.server, "AMQP");
        let uri = format!("amqp://{}:{}@{addr}/%2f", who.0, who.1);
        tokio::time::timeout(
            DEADLINE,
            Connection::connect(&uri, ConnectionProperties::default()),
        )
        .await
        .expect("connect in time")
        .expect("connect")
    }

    async fn app_channel(&self) -> (Connection, Channel) {
        let conn = self.connect(APP).await;
        let ch = conn.create_channel().await.unwrap();
        (conn, ch)
    }
}

fn no_options() -> FieldTable {
    FieldTable::default()
}

// ------------------------------------------------------------------ AMQP

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_queue_declare_needs_configure() {
    let s = Setup::start();
    let (conn, ch) = s.app_channel().await;
    assert_refused(
        ch.queue_declare(
            "other.new".into(),
            QueueDeclareOptions::default(),
            no_options(),
        )
        .await,
        "configure access to queue 'other.new' in vhost '/' refused for user 'app'",
    );
    assert!(!s.exists("/api/queues/%2F/other.new"), "not created");
    // Server-named queues are checked under their generated name, and not created.
    let ch = conn.create_channel().await.unwrap();
    assert_refused(
        ch.queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            no_options(),
        )
        .await,
        "configure access to queue 'amq.gen-",
    );
    let queues = s.ok(GUEST, "GET", "/api/queues/%2F", json!({}));
    assert!(
        !queues.to_string().contains("amq.gen-"),
        "no server-named queue left: {queues}"
    );
    // A passive declare needs no permission (RabbitMQ's rule); allowed names work.
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            "other.q".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            no_options(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 1);
    ch.queue_declare(
        "app.new".into(),
        QueueDeclareOptions::default(),
        no_options(),
    )
    .await
    .unwrap();
    assert!(s.exists("/api/queues/%2F/app.new"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_queue_delete_needs_configure() {
    let s = Setup::start();
    let (_conn, ch) = s.app_channel().await;
    assert_refused(
        ch.queue_delete("other.q".into(), QueueDeleteOptions::default())
            .await,
        "configure access to queue 'other.q' in vhost '/' refused for user 'app'",
    );
    assert!(s.exists("/api/queues/%2F/other.q"));
    assert_eq!(s.messages("other.q"), 1);
    let (_conn, ch) = s.app_channel().await;
    ch.queue_delete("app.q".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    assert!(!s.exists("/api/queues/%2F/app.q"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_exchange_declare_and_delete_need_configure() {
    let s = Setup::start();
    let (conn, ch) = s.app_channel().await;
    assert_refused(
        ch.exchange_declare(
            "other.new".into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            no_options(),
        )
        .await,
        "configure access to exchange 'other.new' in vhost '/' refused for user 'app'",
    );
    assert!(!s.exists("/api/exchanges/%2F/other.new"), "not created");
    let ch = conn.create_channel().await.unwrap();
    assert_refused(
        ch.exchange_delete("other.x".into(), ExchangeDeleteOptions::default())
            .await,
        "configure access to exchange 'other.x' in vhost '/' refused for user 'app'",
    );
    assert!(s.exists("/api/exchanges/%2F/other.x"), "not deleted");
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        "app.new".into(),
        lapin::ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        no_options(),
    )
    .await
    .unwrap();
    assert!(s.exists("/api/exchanges/%2F/app.new"));
    ch.exchange_delete("app.new".into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    assert!(!s.exists("/api/exchanges/%2F/app.new"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_queue_bind_and_unbind_need_write_on_the_queue_and_read_on_the_exchange() {
    let s = Setup::start();
    let (conn, ch) = s.app_channel().await;
    assert_refused(
        ch.queue_bind(
            "app.q".into(),
            "other.x".into(),
            "b".into(),
            QueueBindOptions::default(),
            no_options(),
        )
        .await,
        "read access to exchange 'other.x' in vhost '/' refused for user 'app'",
    );
    let ch = conn.create_channel().await.unwrap();
    assert_refused(
        ch.queue_bind(
            "other.q".into(),
            "app.x".into(),
            "b".into(),
            QueueBindOptions::default(),
            no_options(),
        )
        .await,
        "write access to queue 'other.q' in vhost '/' refused for user 'app'",
    );
    assert!(!s.has_binding("other.x", "app.q", "b"));
    assert!(!s.has_binding("app.x", "other.q", "b"));
    let ch = conn.create_channel().await.unwrap();
    ch.queue_bind(
        "app.q".into(),
        "app.x".into(),
        "b".into(),
        QueueBindOptions::default(),
        no_options(),
    )
    .await
    .unwrap();
    assert!(s.has_binding("app.x", "app.q", "b"));
    // Unbind: guest binds other.x → app.q; app may not remove it.
    s.ok(
        GUEST,
        "POST",
        "/api/bindings/%2F/e/other.x/q/app.q",
        json!({"routing_key": "u"}),
    );
    assert_refused(
        ch.queue_unbind("app.q".into(), "other.x".into(), "u".into(), no_options())
            .await,
        "read access to exchange 'other.x' in vhost '/' refused for user 'app'",
    );
    assert!(s.has_binding("other.x", "app.q", "u"), "still bound");
    let ch = conn.create_channel().await.unwrap();
    ch.queue_unbind("app.q".into(), "app.x".into(), "b".into(), no_options())
        .await
        .unwrap();
    assert!(!s.has_binding("app.x", "app.q", "b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_exchange_bind_and_unbind_need_write_on_the_destination_and_read_on_the_source() {
    let s = Setup::start();
    let (conn, ch) = s.app_channel().await;
    assert_refused(
        ch.exchange_bind(
            "other.x".into(),
            "app.x".into(),
            "e".into(),
            ExchangeBindOptions::default(),
            no_options(),
        )
        .await,
        "write access to exchange 'other.x' in vhost '/' refused for user 'app'",
    );
    let ch = conn.create_channel().await.unwrap();
    assert_refused(
        ch.exchange_bind(
            "app.y".into(),
            "other.x".into(),
            "e".into(),
            ExchangeBindOptions::default(),
            no_options(),
        )
        .await,
        "read access to exchange 'other.x' in vhost '/' refused for user 'app'",
    );
    assert!(!s.has_binding("app.x", "other.x", "e"));
    assert!(!s.has_binding("other.x", "app.y", "e"));
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_bind(
        "app.y".into(),
        "app.x".into(),
        "e".into(),
        ExchangeBindOptions::default(),
        no_options(),
    )
    .await
    .unwrap();
    assert!(s.has_binding("app.x", "app.y", "e"));
    s.ok(
        GUEST,
        "POST",
        "/api/bindings/%2F/e/app.x/e/other.x",
        json!({"routing_key": "u"}),
    );
    assert_refused(
        ch.exchange_unbind(
            "other.x".into(),
            "app.x".into(),
            "u".into(),
            ExchangeUnbindOptions::default(),
            no_options(),
        )
        .await,
        "write access to exchange 'other.x' in vhost '/' refused for user 'app'",
    );
    assert!(s.has_binding("app.x", "other.x", "u"), "still bound");
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_unbind(
        "app.y".into(),
        "app.x".into(),
        "e".into(),
        ExchangeUnbindOptions::default(),
        no_options(),
    )
    .await
    .unwrap();
    assert!(!s.has_binding("app.x", "app.y", "e"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_publish_needs_write_on_the_exchange() {
    let s = Setup::start();
    let (conn, ch) = s.app_channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    // Allowed twice (the second from the channel's cache), then another exchange is refused.
    for _ in 0..2 {
        let confirm = ch
            .basic_publish(
                "app.x".into(),
                "k".into(),
                BasicPublishOptions::default(),
                b"ok",
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
    }
    assert_eq!(s.messages("app.q"), 2);
    let r = async {
        ch.basic_publish(
            "other.x".into(),
            "k".into(),
            BasicPublishOptions::default(),
            b"no",
            BasicProperties::default(),
        )
        .await?
        .await
    }
    .await;
    assert_refused(
        r,
        "write access to exchange 'other.x' in vhost '/' refused for user 'app'",
    );
    // The default exchange is checked as amq.default.
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let r = async {
        ch.basic_publish(
            "".into(),
            "app.q".into(),
            BasicPublishOptions::default(),
            b"no",
            BasicProperties::default(),
        )
        .await?
        .await
    }
    .await;
    assert_refused(
        r,
        "write access to exchange 'amq.default' in vhost '/' refused for user 'app'",
    );
    assert_eq!(s.messages("app.q"), 2, "nothing refused was routed");
    assert_eq!(s.messages("other.q"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_consume_get_and_purge_need_read_on_the_queue() {
    let s = Setup::start();
    let (conn, ch) = s.app_channel().await;
    assert_refused(
        ch.basic_consume(
            "other.q".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            no_options(),
        )
        .await,
        "read access to queue 'other.q' in vhost '/' refused for user 'app'",
    );
    let ch = conn.create_channel().await.unwrap();
    assert_refused(
        ch.basic_get("other.q".into(), BasicGetOptions { no_ack: true })
            .await,
        "read access to queue 'other.q' in vhost '/' refused for user 'app'",
    );
    let ch = conn.create_channel().await.unwrap();
    assert_refused(
        ch.queue_purge("other.q".into(), QueuePurgeOptions::default())
            .await,
        "read access to queue 'other.q' in vhost '/' refused for user 'app'",
    );
    assert_eq!(s.messages("other.q"), 1, "nothing consumed or purged");
    // Allowed on app.q.
    s.ok(
        GUEST,
        "POST",
        "/api/queues/%2F/app.q/publish",
        json!({"payload": "a"}),
    );
    let ch = conn.create_channel().await.unwrap();
    let got = ch
        .basic_get("app.q".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert!(got.is_some());
    ch.basic_consume(
        "app.q".into(),
        "c".into(),
        BasicConsumeOptions::default(),
        no_options(),
    )
    .await
    .unwrap();
    ch.queue_purge("app.q".into(), QueuePurgeOptions::default())
        .await
        .unwrap();
}

// ------------------------------------------------------------------ HTTP data plane

#[test]
fn http_publish_needs_write() {
    let s = Setup::start();
    s.refused(
        "POST",
        "/api/exchanges/%2F/other.x/publish",
        json!({"routing_key": "k", "payload": "no"}),
        "write access to exchange 'other.x' in vhost '/' refused for user 'app'",
    );
    s.refused(
        "POST",
        "/api/exchanges/%2F/other.x/publish/batch",
        json!({"messages": [{"routing_key": "k", "payload": "no"}]}),
        "write access to exchange 'other.x' in vhost '/' refused for user 'app'",
    );
    // Straight to a queue = through the default exchange, as RabbitMQ's HTTP publish.
    s.refused(
        "POST",
        "/api/queues/%2F/app.q/publish",
        json!({"payload": "no"}),
        "write access to exchange 'amq.default' in vhost '/' refused for user 'app'",
    );
    assert_eq!(s.messages("app.q"), 0);
    assert_eq!(s.messages("other.q"), 1);
    s.ok(
        APP,
        "POST",
        "/api/exchanges/%2F/app.x/publish",
        json!({"routing_key": "k", "payload": "yes"}),
    );
    assert_eq!(s.messages("app.q"), 1);
}

#[test]
fn http_reads_need_read() {
    let s = Setup::start();
    let text = "read access to queue 'other.q' in vhost '/' refused for user 'app'";
    s.refused(
        "POST",
        "/api/queues/%2F/other.q/get",
        json!({"auto_ack": true}),
        text,
    );
    s.refused("GET", "/api/queues/%2F/other.q/browse", Value::Null, text);
    s.refused("GET", "/api/queues/%2F/other.q/events", Value::Null, text);
    s.refused(
        "GET",
        "/api/exchanges/%2F/other.x/events?pattern=k",
        Value::Null,
        "read access to exchange 'other.x' in vhost '/' refused for user 'app'",
    );
    s.refused(
        "DELETE",
        "/api/queues/%2F/other.q/contents",
        Value::Null,
        text,
    );
    assert_eq!(s.messages("other.q"), 1, "nothing taken");
    // Streams are queues for permissions.
    s.ok(GUEST, "PUT", "/api/streams/%2F/other.s", json!({}));
    s.refused(
        "GET",
        "/api/streams/%2F/other.s/messages?offset=first",
        Value::Null,
        "read access to queue 'other.s' in vhost '/' refused for user 'app'",
    );
    s.refused(
        "PUT",
        "/api/streams/%2F/other.s/offsets/g",
        json!({"offset": 0}),
        "read access to queue 'other.s' in vhost '/' refused for user 'app'",
    );
    // Allowed on app.q.
    s.ok(
        GUEST,
        "POST",
        "/api/queues/%2F/app.q/publish",
        json!({"payload": "a"}),
    );
    s.ok(APP, "GET", "/api/queues/%2F/app.q/browse", Value::Null);
    let v = s.ok(
        APP,
        "POST",
        "/api/queues/%2F/app.q/get",
        json!({"auto_ack": true}),
    );
    assert_eq!(v["messages"].as_array().map(Vec::len), Some(1), "{v}");
    s.ok(APP, "DELETE", "/api/queues/%2F/app.q/contents", Value::Null);
}

#[test]
fn http_move_needs_read_on_the_source_and_write_on_the_destination() {
    let s = Setup::start();
    s.ok(GUEST, "PUT", "/api/queues/%2F/app.dest", json!({}));
    s.refused(
        "POST",
        "/api/queues/%2F/other.q/move",
        json!({"destination": "app.dest"}),
        "read access to queue 'other.q' in vhost '/' refused for user 'app'",
    );
    s.ok(
        GUEST,
        "POST",
        "/api/queues/%2F/app.q/publish",
        json!({"payload": "m"}),
    );
    s.refused(
        "POST",
        "/api/queues/%2F/app.q/move",
        json!({"destination": "other.q"}),
        "write access to queue 'other.q' in vhost '/' refused for user 'app'",
    );
    assert_eq!(s.messages("app.q"), 1);
    assert_eq!(s.messages("other.q"), 1);
    let v = s.ok(
        APP,
        "POST",
        "/api/queues/%2F/app.q/move",
        json!({"destination": "app.dest"}),
    );
    assert_eq!(v["moved"], 1, "{v}");
    assert_eq!(s.messages("app.dest"), 1);
}

// ------------------------------------------------------------------ HTTP management

#[test]
fn http_declare_and_delete_need_configure() {
    let s = Setup::start();
    for (kind, body) in [
        ("queues", json!({})),
        ("streams", json!({})),
        ("exchanges", json!({"type": "fanout"})),
    ] {
        let what = if kind == "exchanges" {
            "exchange"
        } else {
            "queue"
        };
        s.refused(
            "PUT",
            &format!("/api/{kind}/%2F/other.new"),
            body.clone(),
            &format!("configure access to {what} 'other.new' in vhost '/' refused for user 'app'"),
        );
        assert!(!s.exists(&format!("/api/{kind}/%2F/other.new")), "{kind}");
        s.ok(APP, "PUT", &format!("/api/{kind}/%2F/app.new"), body);
        s.ok(
            APP,
            "DELETE",
            &format!("/api/{kind}/%2F/app.new"),
            Value::Null,
        );
    }
    s.refused(
        "DELETE",
        "/api/queues/%2F/other.q",
        Value::Null,
        "configure access to queue 'other.q' in vhost '/' refused for user 'app'",
    );
    s.refused(
        "DELETE",
        "/api/exchanges/%2F/other.x",
        Value::Null,
        "configure access to exchange 'other.x' in vhost '/' refused for user 'app'",
    );
    assert!(s.exists("/api/queues/%2F/other.q"));
    assert!(s.exists("/api/exchanges/%2F/other.x"));
}

#[test]
fn http_bindings_need_write_on_the_destination_and_read_on_the_source() {
    let s = Setup::start();
    s.refused(
        "POST",
        "/api/bindings/%2F/e/other.x/q/app.q",
        json!({"routing_key": "b"}),
        "read access to exchange 'other.x' in vhost '/' refused for user 'app'",
    );
    s.refused(
        "POST",
        "/api/bindings/%2F/e/app.x/q/other.q",
        json!({"routing_key": "b"}),
        "write access to queue 'other.q' in vhost '/' refused for user 'app'",
    );
    s.refused(
        "POST",
        "/api/bindings/%2F/e/app.x/e/other.x",
        json!({"routing_key": "b"}),
        "write access to exchange 'other.x' in vhost '/' refused for user 'app'",
    );
    assert!(!s.has_binding("other.x", "app.q", "b"));
    assert!(!s.has_binding("app.x", "other.q", "b"));
    assert!(!s.has_binding("app.x", "other.x", "b"));
    s.ok(
        GUEST,
        "POST",
        "/api/bindings/%2F/e/other.x/q/app.q",
        json!({"routing_key": "g"}),
    );
    s.refused(
        "DELETE",
        "/api/bindings/%2F/e/other.x/q/app.q?routing_key=g",
        Value::Null,
        "read access to exchange 'other.x' in vhost '/' refused for user 'app'",
    );
    assert!(s.has_binding("other.x", "app.q", "g"));
    s.ok(
        APP,
        "POST",
        "/api/bindings/%2F/e/app.x/e/app.y",
        json!({"routing_key": "b"}),
    );
    assert!(s.has_binding("app.x", "app.y", "b"));
    s.ok(
        APP,
        "DELETE",
        "/api/bindings/%2F/e/app.x/e/app.y?routing_key=b",
        Value::Null,
    );
    assert!(!s.has_binding("app.x", "app.y", "b"));
}

#[test]
fn administrators_are_subject_to_vhost_permissions() {
    let s = Setup::start();
    s.ok(
        GUEST,
        "PUT",
        "/api/users/boss",
        json!({"password": "pw", "tags": ["administrator"]}),
    );
    s.ok(
        GUEST,
        "PUT",
        "/api/permissions/%2F/boss",
        json!({"configure": "^app\\.", "write": "^app\\.", "read": "^app\\."}),
    );
    let boss = ("boss", "pw");
    // The tag still grants management operations…
    s.ok(boss, "GET", "/api/users", Value::Null);
    // …but not the vhost's resources.
    let (st, v) = s.call(boss, "PUT", "/api/queues/%2F/other.new", json!({}));
    assert_eq!(st, 403, "{v}");
    assert!(!s.exists("/api/queues/%2F/other.new"));
    let (st, v) = s.call(
        boss,
        "POST",
        "/api/exchanges/%2F/other.x/publish",
        json!({"payload": "no"}),
    );
    assert_eq!(st, 403, "{v}");
    // A vhost an administrator creates grants it full permissions there (as RabbitMQ's API).
    s.ok(boss, "PUT", "/api/vhosts/boss.vh", json!({}));
    s.ok(boss, "PUT", "/api/queues/boss.vh/anything", json!({}));
}
