//! In-process tests of the core model: routing, queues, consumers, lifecycle,
//! dead-lettering, priorities, delays, retries, users and vhosts.

mod common;

use common::*;
use ferrymq_core::queue::{QueueDecl, GET_CONSUMER};
use ferrymq_core::{
    Binding, CoreError, Destination, ExchangeDecl, ExchangeKind, FieldTable, QueueRef, Value,
};

fn bind_q(vh: &ferrymq_core::VHost, x: &str, q: &str, key: &str) {
    vh.bind(
        Binding {
            source: x.into(),
            destination: Destination::Queue(q.into()),
            routing_key: key.into(),
            arguments: FieldTable::new(),
        },
        0,
    )
    .unwrap();
}

fn classic(vh: &ferrymq_core::VHost, name: &str) -> std::sync::Arc<ferrymq_core::queue::Queue> {
    match vh.queue(name).unwrap() {
        QueueRef::Classic(q) => q,
        QueueRef::Stream(_) => panic!("not a classic queue"),
    }
}

fn get_body(vh: &ferrymq_core::VHost, q: &str) -> Option<String> {
    classic(vh, q)
        .get(true, ferrymq_core::clock::now_ms())
        .map(|(d, _)| String::from_utf8_lossy(&d.message.body).into_owned())
}

#[tokio::test]
async fn default_exchange_routes_by_queue_name() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let vh = vhost(&b);
    vh.declare_queue(QueueDecl::transient("q1"), 1, false)
        .unwrap();
    let p = vh.publish("", msg("q1", "hello")).unwrap();
    assert_eq!(p.routed, 1);
    assert!(vh.publish("", msg("nope", "x")).unwrap().unroutable());
    assert_eq!(get_body(&vh, "q1").as_deref(), Some("hello"));
    assert_eq!(get_body(&vh, "q1"), None);
}

#[tokio::test]
async fn every_exchange_kind_routes() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let vh = vhost(&b);
    for q in ["qa", "qb", "qc"] {
        vh.declare_queue(QueueDecl::transient(q), 1, false).unwrap();
    }
    bind_q(&vh, "amq.direct", "qa", "k1");
    bind_q(&vh, "amq.fanout", "qa", "");
    bind_q(&vh, "amq.fanout", "qb", "");
    bind_q(&vh, "amq.topic", "qc", "*.orange.#");
    let mut args = FieldTable::new();
    args.insert("x-match", "any".into());
    args.insert("color", "red".into());
    vh.bind(
        Binding {
            source: "amq.headers".into(),
            destination: Destination::Queue("qb".into()),
            routing_key: String::new(),
            arguments: args,
        },
        0,
    )
    .unwrap();

    assert_eq!(vh.publish("amq.direct", msg("k1", "d")).unwrap().routed, 1);
    assert!(vh
        .publish("amq.direct", msg("k2", "d"))
        .unwrap()
        .unroutable());
    assert_eq!(vh.publish("amq.fanout", msg("x", "f")).unwrap().routed, 2);
    assert_eq!(
        vh.publish("amq.topic", msg("a.orange.b.c", "t"))
            .unwrap()
            .routed,
        1
    );
    assert!(vh
        .publish("amq.topic", msg("a.green", "t"))
        .unwrap()
        .unroutable());
    let mut h = msg("", "h");
    h.headers.insert("color", "red".into());
    assert_eq!(vh.publish("amq.headers", h).unwrap().routed, 1);

    assert_eq!(classic(&vh, "qa").message_count(), 2);
    assert_eq!(classic(&vh, "qb").message_count(), 2);
    assert_eq!(classic(&vh, "qc").message_count(), 1);
    assert!(matches!(
        vh.publish("missing", msg("k", "x")),
        Err(CoreError::NotFound(_))
    ));
}

#[tokio::test]
async fn exchange_to_exchange_alternate_and_internal() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let vh = vhost(&b);
    vh.declare_queue(QueueDecl::transient("end"), 1, false)
        .unwrap();
    vh.declare_queue(QueueDecl::transient("unrouted"), 1, false)
        .unwrap();
    let mut internal = ExchangeDecl::new("inner", ExchangeKind::Fanout);
    internal.internal = true;
    vh.declare_exchange(internal, false).unwrap();
    let mut outer = ExchangeDecl::new("outer", ExchangeKind::Direct);
    outer.arguments.insert("alternate-exchange", "ae".into());
    vh.declare_exchange(outer, false).unwrap();
    vh.declare_exchange(ExchangeDecl::new("ae", ExchangeKind::Fanout), false)
        .unwrap();
    vh.bind(
        Binding {
            source: "outer".into(),
            destination: Destination::Exchange("inner".into()),
            routing_key: "go".into(),
            arguments: FieldTable::new(),
        },
        0,
    )
    .unwrap();
    bind_q(&vh, "inner", "end", "");
    bind_q(&vh, "ae", "unrouted", "");
    // A cycle back to outer must not loop forever.
    vh.bind(
        Binding {
            source: "inner".into(),
            destination: Destination::Exchange("outer".into()),
            routing_key: String::new(),
            arguments: FieldTable::new(),
        },
        0,
    )
    .unwrap();

    assert_eq!(vh.publish("outer", msg("go", "via e2e")).unwrap().routed, 1);
    assert_eq!(
        vh.publish("outer", msg("other", "to ae")).unwrap().routed,
        1
    );
    assert_eq!(get_body(&vh, "end").as_deref(), Some("via e2e"));
    assert_eq!(get_body(&vh, "unrouted").as_deref(), Some("to ae"));
    assert!(matches!(
        vh.publish("inner", msg("", "x")),
        Err(CoreError::AccessRefused(_))
    ));
}

#[tokio::test]
async fn declarations_check_equivalence_and_reserved_names() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let vh = vhost(&b);
    vh.declare_queue(QueueDecl::durable("q").arg("x-max-length", 5i64), 1, false)
        .unwrap();
    let e = vh
        .declare_queue(QueueDecl::transient("q"), 1, false)
        .unwrap_err();
    assert!(
        matches!(&e, CoreError::PreconditionFailed(m) if m.contains("inequivalent arg 'durable'")),
        "{e}"
    );
    let e = vh
        .declare_queue(QueueDecl::durable("q").arg("x-max-length", 6i64), 1, false)
        .unwrap_err();
    assert!(e.to_string().contains("x-max-length"), "{e}");
    assert!(vh
        .declare_queue(QueueDecl::durable("q").arg("x-max-length", 5i64), 1, false)
        .is_ok());
    assert!(matches!(
        vh.declare_queue(QueueDecl::durable("missing"), 1, true),
        Err(CoreError::NotFound(_))
    ));
    assert!(matches!(
        vh.declare_queue(QueueDecl::durable("amq.mine"), 1, false),
        Err(CoreError::AccessRefused(_))
    ));
    assert!(matches!(
        vh.declare_exchange(ExchangeDecl::new("amq.x", ExchangeKind::Direct), false),
        Err(CoreError::AccessRefused(_))
    ));
    let e = vh
        .declare_exchange(ExchangeDecl::new("amq.topic", ExchangeKind::Direct), false)
        .unwrap_err();
    assert!(e.to_string().contains("inequivalent arg 'type'"), "{e}");
    let named = vh
        .declare_queue(QueueDecl::transient(""), 1, false)
        .unwrap();
    assert!(named.name.starts_with("amq.gen-"));
}

#[tokio::test]
async fn competing_consumers_round_robin_with_prefetch() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let vh = vhost(&b);
    vh.declare_queue(QueueDecl::transient("work"), 1, false)
        .unwrap();
    let (s1, mut r1) = sink();
    let (s2, mut r2) = sink();
    let (c1, _) = vh.consume("work", opts("c1", 1), None, s1).unwrap();
    let (_c2, _) = vh.consume("work", opts("c2", 1), None, s2).unwrap();
    for i in 0..4 {
        vh.publish("", msg("work", &format!("m{i}"))).unwrap();
    }
    let d1 = take(&mut r1, 1).await;
    let d2 = take(&mut r2, 1).await;
    assert_eq!(
        (bodies(&d1), bodies(&d2)),
        (vec!["m0".to_string()], vec!["m1".to_string()])
    );
    // Prefetch 1: nothing more until an ack.
    assert_idle(&mut r1);
    assert_idle(&mut r2);
    let q = classic(&vh, "work");
    assert_eq!(q.info().unacked, 2);
    q.ack(&[d1[0].id], 0);
    assert_eq!(bodies(&take(&mut r1, 1).await), vec!["m2"]);
    assert!(q.cancel(c1, 0));
    q.ack(&[d2[0].id], 0);
    assert_eq!(bodies(&take(&mut r2, 1).await), vec!["m3"]);
}

#[tokio::test]
async fn prefetch_by_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let vh = vhost(&b);
    vh.declare_queue(QueueDecl::transient("q"), 1, false)
        .unwrap();
    for _ in 0..3 {
        vh.publish("", msg("q", "0123456789")).unwrap();
    }
    let (s, mut r) = sink();
    let mut o = opts("c", 0);
    o.prefetch_bytes = 25;
    vh.consume("q", o, None, s).unwrap();
    let ds = take(&mut r, 2).await;
    assert_idle(&mut r);
    classic(&vh, "q").ack(&[ds[0].id], 0);
    take(&mut r, 1).await;
}

#[tokio::test]
async fn nack_requeue_sets_redelivered_and_reject_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let vh = vhost(&b);
    vh.declare_exchange(ExchangeDecl::new("dlx", ExchangeKind::Fanout), false)
        .unwrap();
    vh.declare_queue(QueueDecl::transient("dead"), 1, false)
        .unwrap();
    bind_q(&vh, "dlx", "dead", "");
    vh.declare_queue(
        QueueDecl::transient("q").arg("x-dead-letter-exchange", "dlx"),
        1,
        false,
    )
    .unwrap();
    vh.publish("", msg("q", "a")).unwrap();
    let (s, mut r) = sink();
    vh.consume("q", opts("c", 1), None, s).unwrap();
    let d = take(&mut r, 1).await;
    assert!(!d[0].redelivered);
    let q = classic(&vh, "q");
    q.nack(&[d[0].id], true, 0);
    let d = take(&mut r, 1).await;
    assert!(d[0].redelivered);
    assert_eq!(d[0].delivery_count, 2);
    q.nack(&[d[0].id], false, 0);
    let (dead, _) = classic(&vh, "dead").get(true, 0).expect("dead-lettered");
    let deaths = match dead.message.headers.get("x-death") {
        Some(Value::Array(a)) => a.clone(),
        other => panic!("x-death missing: {other:?}"),
    };
    let Value::Table(t) = &deaths[0] else {
        panic!("x-death entry is a table")
    };
    assert_eq!(t.get_str("reason"), Some("rejected"));
    assert_eq!(t.get_str("queue"), Some("q"));
    assert_eq!(t.get_i64("count"), Some(1));
    assert_eq!(
        dead.message.headers.get_str("x-first-death-reason"),
        Some("rejected")
    );
}

#[tokio::test]
async fn ttl_expires_to_dead_letter_with_routing_key() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let vh = vhost(&b);
    vh.declare_queue(QueueDecl::transient("expired"), 1, false)
        .unwrap();
    vh.declare_queue(
        QueueDecl::transient("ttl")
            .arg("x-message-ttl", 30i64)
            .arg("x-dead-letter-exchange", "")
            .arg("x-dead-letter-routing-key", "expired"),
        1,
        false,
    )
    .unwrap();
    vh.publish("", msg("ttl", "queue-ttl")).unwrap();
    let mut m = msg("ttl", "message-ttl");
    m.properties.expiration_ms = Some(10);
    vh.publish("", m).unwrap();
    let q = classic(&vh, "expired");
    eventually("both messages expire", || q.message_count() == 2).await;
    assert_eq!(classic(&vh, "ttl").message_count(), 0);
    let (d, _) = q.get(true, 0).unwrap();
    let Some(Value::Array(deaths)) = d.message.headers.get("x-death") else {
        panic!("x-death")
    };
    let Value::Table(t) = &deaths[0] else {
        panic!()
    };
    assert_eq!(t.get_str("reason"), Some("expired"));
}

#[tokio::test]
async fn max_length_overflow_modes() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let vh = vhost(&b);
    vh.declare_queue(QueueDecl::transient("dl"), 1, false)
        .unwrap();
    vh.declare_queue(
        QueueDecl::transient("drop")
            .arg("x-max-length", 2i64)
            .arg("x-dead-letter-exchange", "")
            .arg("x-dead-letter-routing-key", "dl"),
        1,
        false,
    )
    .unwrap();
    vh.declare_queue(
        QueueDecl::transient("reject")
            .arg("x-max-length", 2i64)
            .arg("x-overflow", "reject-publish"),
        1,
        false,
    )
    .unwrap();
    vh.declare_queue(
        QueueDecl::transient("rejectdlx")
            .arg("x-max-length", 1i64)
            .arg("x-overflow", "reject-publish-dlx")
            .arg("x-dead-letter-exchange", "")
            .arg("x-dead-letter-routing-key", "dl"),
        1,
        false,
    )
    .unwrap();
    vh.declare_queue(
        QueueDecl::transient("bytes").arg("x-max-length-bytes", 10i64),
        1,
        false,
    )
    .unwrap();
    for i in 0..3 {
        vh.publish("", msg("drop", &format!("d{i}"))).unwrap();
    }
    assert_eq!(get_body(&vh, "drop").as_deref(), Some("d1"));
    assert_eq!(
        get_body(&vh, "dl").as_deref(),
        Some("d0"),
        "head dead-lettered as maxlen"
    );

    assert_eq!(vh.publish("", msg("reject", "r0")).unwrap().rejected, 0);
    vh.publish("", msg("reject", "r1")).unwrap();
    let p = vh.publish("", msg("reject", "r2")).unwrap();
    assert_eq!((p.routed, p.rejected), (0, 1));
    assert_eq!(get_body(&vh, "reject").as_deref(), Some("r0"));

    vh.publish("", msg("rejectdlx", "x0")).unwrap();
    assert_eq!(vh.publish("", msg("rejectdlx", "x1")).unwrap().rejected, 1);
    assert_eq!(get_body(&vh, "dl").as_deref(), Some("x1"));

    vh.publish("", msg("bytes", "12345")).unwrap();
    vh.publish("", msg("bytes", "67890")).unwrap();
    vh.publish("", msg("bytes", "abcde")).unwrap();
    assert_eq!(classic(&vh, "bytes").message_count(), 2);
    assert_eq!(get_body(&vh, "bytes").as_deref(), Some("67890"));
}

#[tokio::test]
async fn delivery_limit_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let vh = vhost(&b);
    vh.declare_queue(QueueDecl::transient("dl"), 1, false)
        .unwrap();
    vh.declare_queue(
        QueueDecl::durable("q")
            .arg("x-delivery-limit", 1i64)
            .arg("x-dead-letter-exchange", "")
            .arg("x-dead-letter-routing-key", "dl"),
        1,
        false,
    )
    .unwrap();
    vh.publish("", msg("q", "poison")).unwrap();
    let q = classic(&vh, "q");
    let (d, _) = q.get(false, 0).unwrap();
    q.nack(&[d.id], true, 0);
    let (d, _) = q.get(false, 0).unwrap();
    assert_eq!(d.delivery_count, 2);
    q.nack(&[d.id], true, 0);
    assert_eq!(q.message_count(), 0);
    let (dead, _) = classic(&vh, "dl").get(true, 0).unwrap();
    assert_eq!(
        dead.message.headers.get_str("x-first-death-reason"),
        Some("delivery_limit")
    );
}

#[tokio::test]
async fn priorities_deliver_highest_first() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let vh = vhost(&b);
    vh.declare_queue(
        QueueDecl::transient("p").arg("x-max-priority", 10i64),
        1,
        false,
    )
    .unwrap();
    for (body, prio) in [("low", 1u8), ("none", 0), ("high", 9), ("over", 200)] {
        let mut m = msg("p", body);
        m.properties.priority = Some(prio);
        vh.publish("", m).unwrap();
    }
    let order: Vec<_> = std::iter::from_fn(|| get_body(&vh, "p")).collect();
    assert_eq!(
        order,
        vec!["over", "high", "low", "none"],
        "priority over max is clamped to max, FIFO within a level"
    );
}

#[tokio::test]
async fn consumer_priority_and_single_active_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let vh = vhost(&b);
    vh.declare_queue(QueueDecl::transient("cp"), 1, false)
        .unwrap();
    let (lo_s, mut lo) = sink();
    let (hi_s, mut hi) = sink();
    vh.consume("cp", opts("lo", 0), None, lo_s).unwrap();
    let mut o = opts("hi", 2);
    o.priority = 5;
    vh.consume("cp", o, None, hi_s).unwrap();
    for i in 0..3 {
        vh.publish("", msg("cp", &format!("{i}"))).unwrap();
    }
    assert_eq!(bodies(&take(&mut hi, 2).await), vec!["0", "1"]);
    assert_eq!(
        bodies(&take(&mut lo, 1).await),
        vec!["2"],
        "low priority gets messages once high is out of credit"
    );

    vh.declare_queue(
        QueueDecl::transient("sac").arg("x-single-active-consumer", true),
        1,
        false,
    )
    .unwrap();
    let (a_s, mut a) = sink();
    let (b_s, mut bb) = sink();
    let (ca, _) = vh.consume("sac", opts("a", 0), None, a_s).unwrap();
    vh.consume("sac", opts("b", 0), None, b_s).unwrap();
    vh.publish("", msg("sac", "1")).unwrap();
    vh.publish("", msg("sac", "2")).unwrap();
    let got = take(&mut a, 2).await;
    assert_idle(&mut bb);
    let q = classic(&vh, "sac");
    q.cancel(ca, 0);
    q.nack(&got.iter().map(|d| d.id).collect::<Vec<_>>(), true, 0);
    assert_eq!(
        bodies(&take(&mut bb, 2).await),
        vec!["1", "2"],
        "the next consumer takes over in order"
    );
}

#[tokio::test]
async fn exclusive_and_auto_delete_queues() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let vh = vhost(&b);
    let mut d = QueueDecl::transient("mine");
    d.exclusive = true;
    vh.declare_queue(d.clone(), 7, false).unwrap();
    assert!(matches!(
        vh.declare_queue(d, 8, false),
        Err(CoreError::ResourceLocked(_))
    ));
    let (s, _r) = sink();
    let mut o = opts("x", 0);
    o.connection = 8;
    assert!(matches!(
        vh.consume("mine", o, None, s),
        Err(CoreError::ResourceLocked(_))
    ));
    vh.connection_closed(7);
    assert!(
        vh.queue("mine").is_none(),
        "exclusive queue deleted with its connection"
    );

    let mut ad = QueueDecl::transient("auto");
    ad.auto_delete = true;
    vh.declare_queue(ad, 1, false).unwrap();
    let (s, mut r) = sink();
    let (cid, q) = vh.consume("auto", opts("c", 0), None, s).unwrap();
    let QueueRef::Classic(q) = q else { panic!() };
    q.cancel(cid, 0);
    assert!(
        vh.queue("auto").is_none(),
        "auto-delete queue deleted after its last consumer"
    );
    assert_idle(&mut r);
}

#[tokio::test]
async fn deleted_queue_cancels_consumers_and_if_unused_if_empty() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let vh = vhost(&b);
    vh.declare_queue(QueueDecl::transient("q"), 1, false)
        .unwrap();
    vh.publish("", msg("q", "x")).unwrap();
    assert!(matches!(
        vh.delete_queue("q", false, true, 1),
        Err(CoreError::PreconditionFailed(_))
    ));
    let (s, mut r) = sink();
    vh.consume("q", opts("tag1", 0), None, s).unwrap();
    take(&mut r, 1).await;
    assert!(matches!(
        vh.delete_queue("q", true, false, 1),
        Err(CoreError::PreconditionFailed(_))
    ));
    assert_eq!(vh.delete_queue("q", false, false, 1).unwrap(), 0);
    match tokio::time::timeout(DEADLINE, r.recv()).await.unwrap() {
        Some(ferrymq_core::ConsumerEvent::Cancelled { consumer_tag, .. }) => {
            assert_eq!(&*consumer_tag, "tag1")
        }
        other => panic!("expected cancel, got {other:?}"),
    }
}

#[tokio::test]
async fn queue_expires_when_unused() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let vh = vhost(&b);
    vh.declare_queue(
        QueueDecl::transient("tmp").arg("x-expires", 30i64),
        1,
        false,
    )
    .unwrap();
    eventually("queue expiry", || vh.queue("tmp").is_none()).await;
}

#[tokio::test]
async fn delayed_delivery_and_retry_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let vh = vhost(&b);
    vh.declare_queue(QueueDecl::transient("dl"), 1, false)
        .unwrap();
    vh.declare_queue(
        QueueDecl::transient("r")
            .arg("x-retry-initial-delay-ms", 20i64)
            .arg("x-retry-jitter", Value::Float(0.0))
            .arg("x-delivery-limit", 2i64)
            .arg("x-dead-letter-exchange", "")
            .arg("x-dead-letter-routing-key", "dl"),
        1,
        false,
    )
    .unwrap();
    let mut m = msg("r", "later");
    m.headers.insert("x-delay", Value::Int(30));
    let t0 = ferrymq_core::clock::now_ms();
    vh.publish("", m).unwrap();
    let q = classic(&vh, "r");
    assert!(q.get(false, t0).is_none(), "not ready before its delay");
    let (s, mut rx) = sink();
    vh.consume("r", opts("c", 0), None, s).unwrap();
    let d = take(&mut rx, 1).await;
    assert!(
        ferrymq_core::clock::now_ms() - t0 >= 30,
        "delivered no earlier than x-delay"
    );
    let t1 = ferrymq_core::clock::now_ms();
    q.nack(&[d[0].id], true, t1);
    assert_idle(&mut rx);
    let d = take(&mut rx, 1).await;
    assert!(
        ferrymq_core::clock::now_ms() - t1 >= 20,
        "retry waits for backoff"
    );
    assert!(d[0].redelivered);
    let t2 = ferrymq_core::clock::now_ms();
    q.nack(&[d[0].id], true, t2);
    let d = take(&mut rx, 1).await;
    assert!(ferrymq_core::clock::now_ms() - t2 >= 40, "backoff doubles");
    q.nack(&[d[0].id], true, ferrymq_core::clock::now_ms());
    let dlq = classic(&vh, "dl");
    eventually("dead-lettered after the delivery limit", || {
        dlq.message_count() == 1
    })
    .await;
}

#[tokio::test]
async fn get_tracks_unacked_and_requeue() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let vh = vhost(&b);
    vh.declare_queue(QueueDecl::transient("g"), 1, false)
        .unwrap();
    vh.publish("", msg("g", "1")).unwrap();
    vh.publish("", msg("g", "2")).unwrap();
    let q = classic(&vh, "g");
    let (d, left) = q.get(false, 0).unwrap();
    assert_eq!(left, 1);
    assert_eq!(q.info().unacked, 1);
    q.nack(&[d.id], true, 0);
    let (d2, _) = q.get(false, 0).unwrap();
    assert_eq!(d2.message.body, d.message.body);
    assert!(d2.redelivered);
    let _ = GET_CONSUMER;
    assert_eq!(q.purge(), 1);
}

#[tokio::test]
async fn users_permissions_and_vhost_isolation() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let local = Some(std::net::IpAddr::from([127, 0, 0, 1]));
    let remote = Some(std::net::IpAddr::from([192, 0, 2, 7]));
    assert!(b.authenticate("guest", "guest", local).is_ok());
    // Twice: the second check is served by the verification cache.
    assert!(b.authenticate("guest", "guest", local).is_ok());
    assert!(matches!(
        b.authenticate("guest", "nope", local),
        Err(CoreError::AccessRefused(_))
    ));
    assert!(matches!(
        b.authenticate("nobody", "guest", local),
        Err(CoreError::AccessRefused(_))
    ));
    // guest is a loopback-only user, even with the right password.
    let e = b.authenticate("guest", "guest", remote).unwrap_err();
    assert!(e.to_string().contains("only connect via localhost"), "{e}");
    assert!(b
        .authenticate("guest", "guest", Some("::ffff:127.0.0.1".parse().unwrap()))
        .is_ok());
    // A verified certificate's name logs in without a password; same loopback rule.
    assert_eq!(
        b.authenticate_external("guest", local).unwrap().name,
        "guest"
    );
    assert!(matches!(
        b.authenticate_external("nobody", local),
        Err(CoreError::AccessRefused(_))
    ));
    let e = b.authenticate_external("guest", remote).unwrap_err();
    assert!(e.to_string().contains("only connect via localhost"), "{e}");
    // Stored as hashes, never in clear.
    let g = b.user("guest").unwrap();
    assert!(g.password_hash.starts_with("$argon2id$"));
    assert!(g.password.is_none());
    assert!(g.scram_sha256.is_some());
    let defs = serde_json::to_string(&b.export_definitions()).unwrap();
    assert!(!defs.contains("\"password\""), "{defs}");
    let other = b.add_vhost("other").unwrap();
    assert!(matches!(
        b.open_vhost("guest", "other"),
        Err(CoreError::AccessRefused(_))
    ));
    assert!(b.open_vhost("guest", "/").is_ok());
    other
        .declare_queue(QueueDecl::transient("q"), 1, false)
        .unwrap();
    assert!(
        vhost(&b).queue("q").is_none(),
        "vhosts are separate namespaces"
    );
    b.put_user(ferrymq_core::User::with_password("app", "pw", vec![]))
        .unwrap();
    // A changed password takes effect at once, despite the verification cache.
    assert!(b.authenticate("app", "pw", remote).is_ok());
    b.put_user(ferrymq_core::User::with_password("app", "pw2", vec![]))
        .unwrap();
    assert!(b.authenticate("app", "pw", remote).is_err());
    assert!(b.authenticate("app", "pw2", remote).is_ok());
    b.set_permission(ferrymq_core::Permission {
        user: "app".into(),
        vhost: "other".into(),
        configure: ".*".into(),
        write: ".*".into(),
        read: ".*".into(),
    })
    .unwrap();
    assert!(b.open_vhost("app", "other").is_ok());
    assert_eq!(b.user("app").map(|u| u.name), Some("app".to_string()));
    b.delete_permission("app", "other").unwrap();
    assert!(matches!(
        b.open_vhost("app", "other"),
        Err(CoreError::AccessRefused(_))
    ));
    assert!(matches!(
        b.delete_permission("app", "other"),
        Err(CoreError::NotFound(_))
    ));
    other
        .set_limits(ferrymq_core::VhostLimits {
            max_queues: Some(1),
            max_connections: None,
        })
        .unwrap();
    assert!(matches!(
        other.declare_queue(QueueDecl::transient("q2"), 1, false),
        Err(CoreError::LimitReached(_))
    ));
}

#[tokio::test]
async fn flow_control_blocks_above_memory_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.memory_high_watermark_bytes = 1; // any process is above this
    let b = ferrymq_core::Broker::open(c).await.unwrap();
    let mut flow = b.flow();
    tokio::time::timeout(DEADLINE, flow.wait_for(|f| f.blocked()))
        .await
        .unwrap()
        .unwrap();
    assert!(flow.borrow().memory_alarm);
    let dir2 = tempfile::tempdir().unwrap();
    let b2 = open(dir2.path()).await;
    b2.check_resources();
    assert!(
        !b2.flow().borrow().blocked(),
        "a normal watermark is not reached"
    );
}

#[tokio::test]
async fn connections_are_registered_and_exclusive_queues_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let h = b
        .register_connection(ferrymq_core::ConnectionInfo {
            protocol: "test".into(),
            peer: "127.0.0.1:1".into(),
            user: "guest".into(),
            vhost: "/".into(),
        })
        .unwrap();
    let mut d = QueueDecl::transient("excl");
    d.exclusive = true;
    vhost(&b).declare_queue(d, h.id, false).unwrap();
    assert_eq!(b.connections().len(), 1);
    let mut rx = h.close_requested();
    b.close_connection(h.id, "admin says bye").unwrap();
    assert_eq!(rx.borrow_and_update().as_deref(), Some("admin says bye"));
    b.unregister_connection(h.id);
    assert!(b.connections().is_empty());
    assert!(vhost(&b).queue("excl").is_none());
}

#[tokio::test]
async fn batch_publish_reports_each_message() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let vh = vhost(&b);
    vh.declare_queue(
        QueueDecl::durable("lim")
            .arg("x-max-length", 2i64)
            .arg("x-overflow", "reject-publish"),
        1,
        false,
    )
    .unwrap();
    vh.declare_queue(QueueDecl::durable("all"), 1, false)
        .unwrap();
    bind_q(&vh, "amq.fanout", "lim", "");
    bind_q(&vh, "amq.fanout", "all", "");
    let msgs = (0..3).map(|i| persistent("", &format!("b{i}"))).collect();
    let out = vh.publish_batch("amq.fanout", msgs).unwrap();
    let summary: Vec<(usize, usize)> = out
        .outcomes
        .iter()
        .map(|o| (o.routed, o.rejected))
        .collect();
    assert_eq!(summary, vec![(2, 0), (2, 0), (1, 1)]);
    assert!(
        !out.is_durable(),
        "persistent messages in durable queues wait for a commit"
    );
    out.durable().await.unwrap();
    let all: Vec<_> = std::iter::from_fn(|| get_body(&vh, "all")).collect();
    assert_eq!(all, vec!["b0", "b1", "b2"], "batch order kept");
    let direct = vh
        .publish_batch("amq.direct", vec![msg("nobody", "x")])
        .unwrap();
    assert!(direct.outcomes[0].unroutable());
    assert!(direct.is_durable(), "nothing routed: nothing to wait for");
    // Persistent messages in a transient queue (an MQTT clean session's QoS 1) are T0:
    // written nowhere, so nothing to wait for either.
    vh.declare_queue(QueueDecl::transient("mem"), 1, false)
        .unwrap();
    let t0 = vh
        .publish_batch("", vec![persistent("mem", "p"), persistent("mem", "q")])
        .unwrap();
    assert_eq!(t0.outcomes[0].routed, 1);
    assert!(t0.is_durable());
    // One durable destination among them is enough to wait.
    let mixed = vh
        .publish_batch("", vec![persistent("mem", "r"), persistent("all", "s")])
        .unwrap();
    assert!(!mixed.is_durable());
    mixed.durable().await.unwrap();
}

#[tokio::test]
async fn default_exchange_batch_routes_many_queues_in_turn_and_reports_unroutable_keys() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let vh = vhost(&b);
    // More destinations than are found among the batch's groups by name (16), and keys
    // without a queue interleaved, some more than once.
    let names: Vec<String> = (0..20).map(|i| format!("q{i}")).collect();
    for n in &names {
        vh.declare_queue(QueueDecl::transient(n), 1, false).unwrap();
    }
    let mut msgs = Vec::new();
    let mut expect = Vec::new();
    for round in 0..3 {
        for (i, n) in names.iter().enumerate() {
            msgs.push(msg(n, &format!("{n}-{round}")));
            expect.push(true);
            if i % 7 == 0 {
                msgs.push(msg(&format!("none{}", i % 2), "x"));
                expect.push(false);
            }
        }
    }
    let out = vh.publish_batch("", msgs).unwrap();
    let routed: Vec<bool> = out.outcomes.iter().map(|o| o.routed == 1).collect();
    assert_eq!(routed, expect);
    assert!(out
        .outcomes
        .iter()
        .zip(&expect)
        .all(|(o, &e)| e || o.unroutable()));
    for n in &names {
        let got: Vec<_> = std::iter::from_fn(|| get_body(&vh, n)).collect();
        assert_eq!(
            got,
            vec![format!("{n}-0"), format!("{n}-1"), format!("{n}-2")]
        );
    }
    // More distinct unroutable keys than are remembered, each twice: still unroutable.
    let msgs: Vec<_> = (0..80)
        .map(|i| match i % 4 {
            0 => msg("q1", &format!("x{i}")),
            _ => msg(&format!("gone{}", i / 2), "x"),
        })
        .collect();
    let out = vh.publish_batch("", msgs).unwrap();
    for (i, o) in out.outcomes.iter().enumerate() {
        assert_eq!(o.routed == 1, i % 4 == 0, "message {i}");
        assert_eq!(o.unroutable(), i % 4 != 0, "message {i}");
    }
    assert_eq!(std::iter::from_fn(|| get_body(&vh, "q1")).count(), 20);
}

#[tokio::test]
async fn browse_does_not_consume() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let vh = vhost(&b);
    vh.declare_queue(QueueDecl::transient("b"), 1, false)
        .unwrap();
    for i in 0..3 {
        vh.publish("", msg("b", &format!("{i}"))).unwrap();
    }
    let q = classic(&vh, "b");
    let seen: Vec<_> = q
        .browse(2)
        .iter()
        .map(|(m, _)| String::from_utf8_lossy(&m.body).into_owned())
        .collect();
    assert_eq!(seen, vec!["0", "1"]);
    assert_eq!(q.message_count(), 3);
}

#[tokio::test]
async fn publish_to_queue_keeps_the_routing_key() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let vh = vhost(&b);
    vh.declare_queue(QueueDecl::transient("target"), 1, false)
        .unwrap();
    let mut m = msg("orders.created", "x");
    m.exchange = "amq.topic".into();
    let out = vh.publish_to_queue("target", vec![m], 1).unwrap();
    assert_eq!(out.outcomes[0].routed, 1);
    let (d, _) = classic(&vh, "target").get(true, 0).unwrap();
    assert_eq!(d.message.routing_key, "orders.created");
    assert_eq!(d.message.exchange, "amq.topic");
    assert!(matches!(
        vh.publish_to_queue("nope", vec![msg("", "")], 1),
        Err(CoreError::NotFound(_))
    ));
}

#[tokio::test]
async fn ttl_zero_reaches_only_a_waiting_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let vh = vhost(&b);
    vh.declare_queue(
        QueueDecl::transient("now").arg("x-message-ttl", 0i64),
        1,
        false,
    )
    .unwrap();
    vh.publish("", msg("now", "nobody")).unwrap();
    assert_eq!(
        classic(&vh, "now").message_count(),
        0,
        "no consumer: expired at once"
    );
    let (s, mut r) = sink();
    vh.consume("now", opts("c", 0), None, s).unwrap();
    vh.publish("", msg("now", "taken")).unwrap();
    assert_eq!(bodies(&take(&mut r, 1).await), vec!["taken"]);
}

#[tokio::test]
async fn shared_credit_limits_consumers_together() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    let vh = vhost(&b);
    for q in ["a", "b"] {
        vh.declare_queue(QueueDecl::transient(q), 1, false).unwrap();
        for i in 0..3 {
            vh.publish("", msg(q, &format!("{q}{i}"))).unwrap();
        }
    }
    let pool = ferrymq_core::queue::CreditPool::new(3);
    let (s, mut r) = sink();
    let mut o = opts("ca", 0);
    o.shared_credit = Some(pool.clone());
    vh.consume("a", o.clone(), None, s.clone()).unwrap();
    o.tag = "cb".into();
    vh.consume("b", o, None, s).unwrap();
    let first = take(&mut r, 3).await;
    assert_idle(&mut r);
    let on_a: Vec<_> = first
        .iter()
        .filter(|d| &*d.consumer_tag == "ca")
        .map(|d| d.id)
        .collect();
    classic(&vh, "a").ack(&on_a, 0);
    // Credit came back through queue a; queue b may use it once kicked.
    classic(&vh, "b").kick(0);
    classic(&vh, "a").kick(0);
    let more = take(&mut r, on_a.len()).await;
    assert_eq!(more.len(), on_a.len());
    assert_idle(&mut r);
}

#[tokio::test]
async fn passwords_stored_in_clear_by_older_versions_are_hashed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = open(dir.path()).await;
        b.shutdown().await.unwrap();
    }
    // Rewrite the user as an older version stored it: the password in clear.
    let path = dir.path().join(ferrymq_storage::DEFINITIONS_FILE);
    let mut defs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    defs["users"] = serde_json::json!([
        {"name": "guest", "password": "guest", "tags": ["administrator"]},
        {"name": "legacy", "password": "old-secret", "tags": []}
    ]);
    std::fs::write(&path, serde_json::to_vec(&defs).unwrap()).unwrap();
    let b = open(dir.path()).await;
    assert!(b.authenticate("legacy", "old-secret", None).is_ok());
    assert!(b.authenticate("legacy", "guest", None).is_err());
    let on_disk = std::fs::read_to_string(&path).unwrap();
    assert!(!on_disk.contains("old-secret"), "{on_disk}");
    assert!(on_disk.contains("$argon2id$"));
}

#[tokio::test]
async fn permissions_are_regular_expressions_per_kind() {
    use ferrymq_core::Access;
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    b.put_user(ferrymq_core::User::with_password("app", "pw", vec![]))
        .unwrap();
    // No permission on the vhost at all.
    assert!(b.authorize("app", "/", Access::Read, "queue", "q").is_err());
    b.set_permission(ferrymq_core::Permission {
        user: "app".into(),
        vhost: "/".into(),
        configure: "^app\\.".into(),
        write: "".into(),
        read: "orders|app\\..*".into(),
    })
    .unwrap();
    assert!(b
        .authorize("app", "/", Access::Configure, "queue", "app.q")
        .is_ok());
    let e = b
        .authorize("app", "/", Access::Configure, "queue", "other")
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "ACCESS_REFUSED - configure access to queue 'other' in vhost '/' refused for user 'app'"
    );
    // An empty pattern matches nothing; the default exchange is amq.default.
    let e = b
        .authorize("app", "/", Access::Write, "exchange", "")
        .unwrap_err();
    assert!(e.to_string().contains("exchange 'amq.default'"), "{e}");
    // Unanchored, as RabbitMQ matches.
    assert!(b
        .authorize("app", "/", Access::Read, "queue", "my-orders")
        .is_ok());
    assert!(b
        .authorize("app", "/", Access::Read, "queue", "app.x")
        .is_ok());
    assert!(b
        .authorize("app", "/", Access::Read, "queue", "nope")
        .is_err());
    // guest has .* everywhere on its vhost.
    assert!(b
        .authorize("guest", "/", Access::Write, "exchange", "")
        .is_ok());
}

#[tokio::test]
async fn topic_permissions_check_routing_keys_on_topic_exchanges_only() {
    use ferrymq_core::{Access, ExchangeDecl, ExchangeKind, TopicPermission};
    let dir = tempfile::tempdir().unwrap();
    {
        let b = open(dir.path()).await;
        let vh = vhost(&b);
        vh.declare_exchange(ExchangeDecl::new("direct.x", ExchangeKind::Direct), false)
            .unwrap();
        // No topic permission: unrestricted, as RabbitMQ.
        assert!(b
            .authorize_topic("guest", "/", Access::Write, "amq.topic", "any.key", None)
            .is_ok());
        for x in ["amq.topic", "direct.x"] {
            b.set_topic_permission(TopicPermission {
                user: "guest".into(),
                vhost: "/".into(),
                exchange: x.into(),
                write: "^{username}\\.".into(),
                read: "^dev\\.{client_id}$".into(),
            })
            .unwrap();
        }
        assert!(b
            .authorize_topic("guest", "/", Access::Write, "amq.topic", "guest.a", None)
            .is_ok());
        let e = b
            .authorize_topic("guest", "/", Access::Write, "amq.topic", "other.a", None)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "ACCESS_REFUSED - write access to topic 'other.a' in exchange 'amq.topic' in vhost '/' refused for user 'guest'"
        );
        // Only exchanges of type topic are checked.
        assert!(b
            .authorize_topic("guest", "/", Access::Write, "direct.x", "other.a", None)
            .is_ok());
        // {client_id} expands where the protocol has one, and is literal elsewhere.
        assert!(b
            .authorize_topic(
                "guest",
                "/",
                Access::Read,
                "amq.topic",
                "dev.c1",
                Some("c1")
            )
            .is_ok());
        assert!(b
            .authorize_topic(
                "guest",
                "/",
                Access::Read,
                "amq.topic",
                "dev.c2",
                Some("c1")
            )
            .is_err());
        assert!(b
            .authorize_topic("guest", "/", Access::Read, "amq.topic", "dev.c1", None)
            .is_err());
        // Other users are not restricted by guest's entry.
        assert!(b
            .authorize_topic("app", "/", Access::Write, "amq.topic", "other.a", None)
            .is_ok());
        // A bad pattern is rejected when set.
        assert!(b
            .set_topic_permission(TopicPermission {
                user: "guest".into(),
                vhost: "/".into(),
                exchange: "amq.topic".into(),
                write: "(".into(),
                read: ".*".into(),
            })
            .is_err());
        b.delete_topic_permissions("guest", "/", Some("direct.x"))
            .unwrap();
        assert!(b
            .delete_topic_permissions("guest", "/", Some("direct.x"))
            .is_err());
        b.shutdown().await.unwrap();
    }
    // Persisted in the definitions.
    let b = open(dir.path()).await;
    let tps = b.topic_permissions();
    assert_eq!(tps.len(), 1, "{tps:?}");
    assert_eq!(tps[0].exchange, "amq.topic");
    assert!(b
        .authorize_topic("guest", "/", Access::Write, "amq.topic", "other.a", None)
        .is_err());
    assert_eq!(b.export_definitions().topic_permissions, tps);
    b.delete_user("guest").unwrap();
    assert!(b.topic_permissions().is_empty());
}
