//! Issue #4: AMQP 0-9-1 against the real `ferrymq` binary with the `lapin` client —
//! publish/consume with properties, confirms, mandatory returns, get, nack and
//! dead-lettering, error codes, and durability across `kill -9`.

mod common;

use std::time::Duration;

use common::{listening, serve, Server};
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};

const DEADLINE: Duration = Duration::from_secs(30);

async fn connect(server: &Server) -> Connection {
    let addr = listening(server, "AMQP");
    let uri = format!("amqp://guest:guest@{addr}/%2f");
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

async fn next_delivery(c: &mut lapin::Consumer) -> lapin::message::Delivery {
    tokio::time::timeout(DEADLINE, c.next())
        .await
        .expect("a delivery in time")
        .expect("consumer open")
        .expect("delivery ok")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_consume_with_properties_and_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let server = serve(tmp.path(), &tmp.path().join("data"), &[]);
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            s(""),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert!(
        q.name().as_str().starts_with("amq.gen-"),
        "server-named queue"
    );
    let mut headers = FieldTable::default();
    headers.insert(s("str"), AMQPValue::LongString("v".into()));
    headers.insert(s("int"), AMQPValue::LongLongInt(-42));
    headers.insert(s("yes"), AMQPValue::Boolean(true));
    let props = BasicProperties::default()
        .with_content_type(s("application/json"))
        .with_correlation_id(s("corr-1"))
        .with_reply_to(s("replies"))
        .with_message_id(s("m-1"))
        .with_priority(3)
        .with_delivery_mode(2)
        .with_timestamp(1_700_000_000)
        .with_type(s("order.created"))
        .with_app_id(s("tests"))
        .with_headers(headers.clone());
    ch.basic_publish(
        s(""),
        q.name().clone(),
        BasicPublishOptions::default(),
        b"{\"a\":1}",
        props,
    )
    .await
    .unwrap();
    let mut consumer = ch
        .basic_consume(
            q.name().clone(),
            s("c1"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let d = next_delivery(&mut consumer).await;
    assert_eq!(d.data, b"{\"a\":1}");
    assert!(!d.redelivered);
    let p = &d.properties;
    assert_eq!(
        p.content_type().as_ref().map(|v| v.as_str()),
        Some("application/json")
    );
    assert_eq!(
        p.correlation_id().as_ref().map(|v| v.as_str()),
        Some("corr-1")
    );
    assert_eq!(p.reply_to().as_ref().map(|v| v.as_str()), Some("replies"));
    assert_eq!(p.message_id().as_ref().map(|v| v.as_str()), Some("m-1"));
    assert_eq!(*p.priority(), Some(3));
    assert_eq!(*p.delivery_mode(), Some(2));
    assert_eq!(*p.timestamp(), Some(1_700_000_000));
    assert_eq!(p.kind().as_ref().map(|v| v.as_str()), Some("order.created"));
    let got = p.headers().as_ref().expect("headers");
    assert_eq!(
        got.inner().get("str"),
        Some(&AMQPValue::LongString("v".into()))
    );
    assert_eq!(got.inner().get("int"), Some(&AMQPValue::LongLongInt(-42)));
    assert_eq!(got.inner().get("yes"), Some(&AMQPValue::Boolean(true)));
    d.ack(BasicAckOptions::default()).await.unwrap();
    conn.close(200, s("bye")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirms_returns_get_and_dead_letters() {
    let tmp = tempfile::tempdir().unwrap();
    let server = serve(tmp.path(), &tmp.path().join("data"), &[]);
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.exchange_declare(
        s("dlx"),
        lapin::ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        s("dead"),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        s("dead"),
        s("dlx"),
        s(""),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        s("x-dead-letter-exchange"),
        AMQPValue::LongString("dlx".into()),
    );
    ch.queue_declare(
        s("work"),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();

    // A confirmed publish, and a mandatory one nobody can take (returned, then acked).
    let confirm = ch
        .basic_publish(
            s(""),
            s("work"),
            BasicPublishOptions::default(),
            b"job",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    let confirm = ch
        .basic_publish(
            s(""),
            s("nowhere"),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"lost",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let returned = confirm.take_message().expect("mandatory message returned");
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.data, b"lost");

    // basic.get, reject without requeue -> dead-lettered with x-death.
    let got = ch
        .basic_get(s("work"), BasicGetOptions::default())
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(got.delivery.data, b"job");
    assert_eq!(got.message_count, 0);
    got.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let dead = loop {
        if let Some(m) = ch
            .basic_get(s("dead"), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let headers = dead.delivery.properties.headers().clone().expect("headers");
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        panic!("x-death: {headers:?}")
    };
    let Some(AMQPValue::FieldTable(first)) = deaths.as_slice().first() else {
        panic!("x-death entry")
    };
    assert_eq!(
        first.inner().get("reason"),
        Some(&AMQPValue::LongString("rejected".into()))
    );
    assert_eq!(
        first.inner().get("queue"),
        Some(&AMQPValue::LongString("work".into()))
    );
    assert!(
        ch.basic_get(s("work"), BasicGetOptions::default())
            .await
            .unwrap()
            .is_none(),
        "get-empty"
    );
    conn.close(200, s("bye")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_close_the_channel_with_rabbitmq_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let server = serve(tmp.path(), &tmp.path().join("data"), &[]);
    let conn = connect(&server).await;

    let ch = conn.create_channel().await.unwrap();
    let err = ch
        .queue_declare(
            s("missing"),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("404") || format!("{err:?}").contains("NOT_FOUND"),
        "{err:?}"
    );

    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        s("q1"),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let err = ch
        .queue_declare(
            s("q1"),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert!(
        format!("{err:?}").contains("PRECONDITION_FAILED"),
        "{err:?}"
    );

    let ch = conn.create_channel().await.unwrap();
    let err = ch
        .exchange_declare(
            s("amq.mine"),
            lapin::ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("ACCESS_REFUSED"), "{err:?}");

    // The connection survives channel errors.
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        s("q2"),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    conn.close(200, s("bye")).await.unwrap();

    // Wrong password: refused at login.
    let addr = listening(&server, "AMQP");
    let bad = Connection::connect(
        &format!("amqp://guest:wrong@{addr}/%2f"),
        ConnectionProperties::default(),
    )
    .await;
    assert!(bad.is_err(), "bad password refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_fair_dispatch_and_requeue() {
    let tmp = tempfile::tempdir().unwrap();
    let server = serve(tmp.path(), &tmp.path().join("data"), &[]);
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        s("tasks"),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    for i in 0..4 {
        ch.basic_publish(
            s(""),
            s("tasks"),
            BasicPublishOptions::default(),
            format!("t{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    let c1 = conn.create_channel().await.unwrap();
    c1.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut k1 = c1
        .basic_consume(
            s("tasks"),
            s("k1"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let d = next_delivery(&mut k1).await;
    assert_eq!(d.data, b"t0");
    // Requeue: comes back redelivered, to the same (only) consumer once credit returns.
    d.nack(BasicNackOptions {
        requeue: true,
        multiple: false,
    })
    .await
    .unwrap();
    let d = next_delivery(&mut k1).await;
    assert_eq!(d.data, b"t0");
    assert!(d.redelivered);
    d.ack(BasicAckOptions::default()).await.unwrap();
    let d = next_delivery(&mut k1).await;
    assert_eq!(d.data, b"t1");
    d.ack(BasicAckOptions::default()).await.unwrap();
    conn.close(200, s("bye")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_persistent_messages_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut server = serve(tmp.path(), &data, &[]);
    {
        let conn = connect(&server).await;
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        ch.queue_declare(
            s("durable"),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        let mut confirms = Vec::new();
        for i in 0..100 {
            let c = ch
                .basic_publish(
                    s(""),
                    s("durable"),
                    BasicPublishOptions::default(),
                    format!("m{i}").as_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .unwrap();
            confirms.push(c);
        }
        for c in confirms {
            assert!(c.await.unwrap().is_ack());
        }
        // Consume 10: ack the first 5, leave 5 unacked.
        let cc = conn.create_channel().await.unwrap();
        cc.basic_qos(10, BasicQosOptions::default()).await.unwrap();
        let mut k = cc
            .basic_consume(
                s("durable"),
                s("k"),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut ds = Vec::new();
        for _ in 0..10 {
            ds.push(next_delivery(&mut k).await);
        }
        // Cancel first, so that the acks free no credit for further deliveries.
        cc.basic_cancel(s("k"), BasicCancelOptions::default())
            .await
            .unwrap();
        for d in &ds[..5] {
            d.ack(BasicAckOptions::default()).await.unwrap();
        }
        // basic.ack has no answer: a round trip on the same channel orders it before the kill.
        cc.basic_qos(10, BasicQosOptions::default()).await.unwrap();
        server.signal(libc::SIGKILL);
        server.wait_exit();
    }
    let server = serve(tmp.path(), &data, &[]);
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            s("durable"),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        q.message_count(),
        95,
        "every confirmed message but the 5 acked ones"
    );
    ch.basic_qos(200, BasicQosOptions::default()).await.unwrap();
    let mut k = ch
        .basic_consume(
            s("durable"),
            s("k"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 5..100 {
        let d = next_delivery(&mut k).await;
        assert_eq!(d.data, format!("m{i}").as_bytes());
        assert_eq!(
            d.redelivered,
            i < 10,
            "m{i}: only the unacked deliveries are redelivered"
        );
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    conn.close(200, s("bye")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_refused_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let server = serve(
        tmp.path(),
        &tmp.path().join("data"),
        &[
            "--set",
            "amqp.connections_max=1",
            "--set",
            "limits.message_size_max_bytes=1000",
            "--set",
            "amqp.channel_max=4",
        ],
    );
    let conn = connect(&server).await;
    // A second connection is refused while the first is open.
    let addr = listening(&server, "AMQP");
    let second = Connection::connect(
        &format!("amqp://guest:guest@{addr}/%2f"),
        ConnectionProperties::default(),
    )
    .await;
    assert!(
        second.is_err(),
        "connections_max=1 refuses the second connection"
    );
    // A message over the size limit closes the channel with 406. The reply
    // code is observed through the pending publisher confirm, which lapin
    // fails with the channel.close error; a later call on the channel could
    // race with lapin's own closing state instead.
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.queue_declare(
        s("big"),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let err = match ch
        .basic_publish(
            s(""),
            s("big"),
            BasicPublishOptions::default(),
            &[0u8; 2000],
            BasicProperties::default(),
        )
        .await
    {
        Ok(confirm) => confirm.await.unwrap_err(),
        Err(err) => err,
    };
    assert!(
        format!("{err:?}").contains("PRECONDITION_FAILED") || format!("{err:?}").contains("406"),
        "{err:?}"
    );
    // The connection (and the server) still work.
    let ch = conn.create_channel().await.unwrap();
    ch.basic_publish(
        s(""),
        s("big"),
        BasicPublishOptions::default(),
        &[0u8; 500],
        BasicProperties::default(),
    )
    .await
    .unwrap();
    let got = ch
        .basic_get(s("big"), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the small one");
    assert_eq!(got.delivery.data.len(), 500);
    conn.close(200, s("bye")).await.unwrap();
    // Its slot is free once the connection has ended on the server (and only one is
    // admitted again).
    let deadline = std::time::Instant::now() + DEADLINE;
    let again = loop {
        match Connection::connect(
            &format!("amqp://guest:guest@{addr}/%2f"),
            ConnectionProperties::default(),
        )
        .await
        {
            Ok(c) => break c,
            Err(e) => assert!(std::time::Instant::now() < deadline, "never admitted: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let third = Connection::connect(
        &format!("amqp://guest:guest@{addr}/%2f"),
        ConnectionProperties::default(),
    )
    .await;
    assert!(third.is_err(), "still one connection at most");
    again.close(200, s("bye")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_are_blocked_under_a_resource_alarm() {
    let tmp = tempfile::tempdir().unwrap();
    // No disk has this much free space: the disk alarm is raised at once.
    let server = serve(
        tmp.path(),
        &tmp.path().join("data"),
        &["--set", "limits.disk_free_limit_bytes=9000000000000000000"],
    );
    let conn = connect(&server).await;
    let deadline = std::time::Instant::now() + DEADLINE;
    while !conn.status().blocked() {
        assert!(
            std::time::Instant::now() < deadline,
            "connection.blocked never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // lapin holds its own frames while blocked, as clients should; the server keeps
    // the connection open (a consumer on it would keep draining).
    assert!(conn.status().connected());
}
