//! Policies: applied to existing and later queues, streams and exchanges; declared
//! arguments win; removal falls back; persisted across restarts; in definitions.

mod common;

use common::*;
use ferrymq_core::queue::QueueDecl;
use ferrymq_core::{ApplyTo, Broker, ExchangeDecl, ExchangeKind, Policy, QueueRef};
use serde_json::json;

fn policy(name: &str, pattern: &str, priority: i32, def: serde_json::Value) -> Policy {
    Policy {
        vhost: "/".into(),
        name: name.into(),
        pattern: pattern.into(),
        apply_to: ApplyTo::All,
        priority,
        definition: def.as_object().cloned().unwrap_or_default(),
    }
}

fn depth(b: &Broker, name: &str) -> u64 {
    vhost(b).queue(name).expect("queue").message_count()
}

#[tokio::test]
async fn policy_applies_to_existing_and_new_queues_and_declared_args_win() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let vh = vhost(&b);
    vh.declare_queue(QueueDecl::durable("jobs.a"), 0, false)
        .unwrap();
    vh.declare_queue(
        QueueDecl::durable("jobs.own").arg("x-max-length", 4i64),
        0,
        false,
    )
    .unwrap();
    for i in 0..5 {
        vh.publish("", msg("jobs.a", &i.to_string())).unwrap();
        vh.publish("", msg("jobs.own", &i.to_string())).unwrap();
    }
    assert_eq!(depth(&b, "jobs.own"), 4);
    b.put_policy(policy("limit", "^jobs\\.", 0, json!({"max-length": 2})))
        .unwrap();
    // Existing queue trimmed at once (oldest first); the declared argument wins.
    assert_eq!(depth(&b, "jobs.a"), 2);
    assert_eq!(depth(&b, "jobs.own"), 4);
    let q = vh.queue("jobs.a").unwrap();
    let applied = b.queue_policy("/", &q);
    assert_eq!(applied.name.as_deref(), Some("limit"));
    assert_eq!(applied.definition.get("max-length"), Some(&json!(2)));
    let own = b.queue_policy("/", &vh.queue("jobs.own").unwrap());
    assert_eq!(own.name.as_deref(), Some("limit"));
    assert!(own.definition.is_empty(), "declared x-max-length hides it");
    // A queue declared later gets it too.
    vh.declare_queue(QueueDecl::durable("jobs.b"), 0, false)
        .unwrap();
    for i in 0..5 {
        vh.publish("", msg("jobs.b", &i.to_string())).unwrap();
    }
    assert_eq!(depth(&b, "jobs.b"), 2);
    // A higher-priority policy takes over; deleting it falls back.
    b.put_policy(policy("bigger", "^jobs\\.b$", 5, json!({"max-length": 3})))
        .unwrap();
    vh.publish("", msg("jobs.b", "x")).unwrap();
    assert_eq!(depth(&b, "jobs.b"), 3);
    b.delete_policy("/", "bigger").unwrap();
    assert_eq!(depth(&b, "jobs.b"), 2);
    b.delete_policy("/", "limit").unwrap();
    for i in 0..5 {
        vh.publish("", msg("jobs.b", &i.to_string())).unwrap();
    }
    assert_eq!(depth(&b, "jobs.b"), 7);
    assert!(b
        .queue_policy("/", &vh.queue("jobs.b").unwrap())
        .name
        .is_none());
    assert!(b.delete_policy("/", "limit").is_err());
}

#[tokio::test]
async fn dead_lettering_and_alternate_exchange_come_from_policies() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let vh = vhost(&b);
    vh.declare_queue(QueueDecl::durable("work"), 0, false)
        .unwrap();
    vh.declare_queue(QueueDecl::durable("work.dlq"), 0, false)
        .unwrap();
    vh.declare_queue(QueueDecl::durable("unrouted"), 0, false)
        .unwrap();
    vh.declare_exchange(ExchangeDecl::new("events", ExchangeKind::Direct), false)
        .unwrap();
    vh.declare_exchange(ExchangeDecl::new("ae", ExchangeKind::Fanout), false)
        .unwrap();
    vh.bind(
        ferrymq_core::Binding {
            source: "ae".into(),
            destination: ferrymq_core::Destination::Queue("unrouted".into()),
            routing_key: String::new(),
            arguments: Default::default(),
        },
        0,
    )
    .unwrap();
    b.put_policy(policy(
        "dlx",
        "^work$",
        0,
        json!({"dead-letter-exchange": "", "dead-letter-routing-key": "work.dlq", "max-length": 1}),
    ))
    .unwrap();
    let mut ae = policy("ae", "^events$", 0, json!({"alternate-exchange": "ae"}));
    ae.apply_to = ApplyTo::Exchanges;
    b.put_policy(ae).unwrap();
    // max-length 1 with drop-head dead-letters the older message.
    vh.publish("", msg("work", "1")).unwrap();
    vh.publish("", msg("work", "2")).unwrap();
    assert_eq!(depth(&b, "work"), 1);
    assert_eq!(depth(&b, "work.dlq"), 1);
    // Unroutable on `events` goes to the policy's alternate exchange.
    let p = vh.publish("events", msg("nowhere", "x")).unwrap();
    assert_eq!(p.routed, 1);
    assert_eq!(depth(&b, "unrouted"), 1);
    let x = vh.exchange("events").unwrap();
    assert_eq!(b.exchange_policy("/", &x).name.as_deref(), Some("ae"));
    b.delete_policy("/", "ae").unwrap();
    let p = vh.publish("events", msg("nowhere", "x")).unwrap();
    assert!(p.unroutable());
}

#[tokio::test]
async fn stream_retention_follows_policy() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let vh = vhost(&b);
    vh.declare_queue(
        QueueDecl::durable("events").arg("x-queue-type", "stream"),
        0,
        false,
    )
    .unwrap();
    let mut p = policy(
        "ret",
        "^events$",
        0,
        json!({"max-age": "1D", "max-length": 10}),
    );
    p.apply_to = ApplyTo::Streams;
    b.put_policy(p).unwrap();
    let QueueRef::Stream(s) = vh.queue("events").unwrap() else {
        panic!("a stream")
    };
    assert_eq!(s.retention().max_age_ms, Some(86_400_000));
    assert_eq!(s.retention().max_messages, Some(10));
    b.delete_policy("/", "ret").unwrap();
    assert_eq!(s.retention().max_age_ms, None);
}

#[tokio::test]
async fn policies_persist_and_travel_in_definitions() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = open(dir.path()).await;
        vhost(&b)
            .declare_queue(QueueDecl::durable("q"), 0, false)
            .unwrap();
        b.put_policy(policy("p", "^q$", 3, json!({"max-length": 1})))
            .unwrap();
        assert!(b
            .put_policy(policy("bad", "(", 0, json!({"max-length": 1})))
            .is_err());
        let mut missing = policy("p", ".*", 0, json!({"max-length": 1}));
        missing.vhost = "nope".into();
        assert!(b.put_policy(missing).is_err());
        b.shutdown().await.unwrap();
    }
    let b = open(dir.path()).await;
    assert_eq!(b.policies().len(), 1);
    assert_eq!(b.policy("/", "p").unwrap().priority, 3);
    let vh = vhost(&b);
    vh.publish("", msg("q", "1")).unwrap();
    vh.publish("", msg("q", "2")).unwrap();
    assert_eq!(
        depth(&b, "q"),
        1,
        "the restored policy applies to the restored queue"
    );
    let d = b.export_definitions();
    assert_eq!(d.policies.len(), 1);
    let dir2 = tempfile::tempdir().unwrap();
    let b2 = open(dir2.path()).await;
    b2.import_definitions(d).unwrap();
    assert_eq!(b2.policy("/", "p").unwrap().pattern, "^q$");
    b.delete_vhost("/").unwrap();
    assert!(b.policies().is_empty());
}

/// Polls `f` until it holds, failing after the deadline.
async fn until(what: &str, f: impl Fn() -> bool) {
    let end = std::time::Instant::now() + DEADLINE;
    while !f() {
        assert!(std::time::Instant::now() < end, "never happened: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn message_ttl_and_expires_come_from_policies() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let vh = vhost(&b);
    vh.declare_queue(QueueDecl::durable("ttl"), 0, false)
        .unwrap();
    vh.declare_queue(QueueDecl::transient("idle"), 0, false)
        .unwrap();
    b.put_policy(policy("ttl", "^ttl$", 0, json!({"message-ttl": 20})))
        .unwrap();
    vh.publish("", msg("ttl", "short-lived")).unwrap();
    assert_eq!(depth(&b, "ttl"), 1);
    until("the message expired", || depth(&b, "ttl") == 0).await;
    // An unused queue goes once the policy's `expires` passes.
    b.put_policy(policy("idle", "^idle$", 0, json!({"expires": 30})))
        .unwrap();
    until("the idle queue expired", || vh.queue("idle").is_none()).await;
}
