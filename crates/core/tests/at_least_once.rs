//! Property test: random publish / get / ack / nack / restart sequences against a
//! model of at-least-once delivery for persistent messages on a durable queue.

mod common;

use std::collections::{BTreeSet, HashMap};

use common::*;
use ferrymq_core::queue::QueueDecl;
use ferrymq_core::QueueRef;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Publish(u8),
    Get,
    Ack(usize),
    Nack(usize, bool),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..4).prop_map(Op::Publish),
        4 => Just(Op::Get),
        3 => any::<usize>().prop_map(Op::Ack),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(i, r)| Op::Nack(i, r)),
        1 => Just(Op::Restart),
    ]
}

fn queue(b: &ferrymq_core::Broker) -> std::sync::Arc<ferrymq_core::queue::Queue> {
    match vhost(b).queue("q").expect("queue recovered") {
        QueueRef::Classic(q) => q,
        QueueRef::Stream(_) => unreachable!(),
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let mut b = open(dir.path()).await;
        vhost(&b)
            .declare_queue(QueueDecl::durable("q"), 1, false)
            .unwrap();
        let mut next = 0u64;
        // Model: messages published and not yet acked or dropped.
        let mut live: BTreeSet<u64> = BTreeSet::new();
        // Outstanding deliveries: (delivery id, body id).
        let mut outstanding: Vec<(u64, u64)> = Vec::new();
        let mut ever_acked: BTreeSet<u64> = BTreeSet::new();
        let mut deliveries: HashMap<u64, u32> = HashMap::new();
        for op in ops {
            match op {
                Op::Publish(n) => {
                    for _ in 0..n {
                        let body = next.to_string();
                        next += 1;
                        vhost(&b)
                            .publish("", persistent("q", &body))
                            .unwrap()
                            .durable()
                            .await
                            .unwrap();
                        live.insert(next - 1);
                    }
                }
                Op::Get => {
                    if let Some((d, _)) = queue(&b).get(false, 0) {
                        let id: u64 = std::str::from_utf8(&d.message.body)
                            .unwrap()
                            .parse()
                            .unwrap();
                        prop_assert!(
                            live.contains(&id),
                            "delivered {id}, which was acked or never published"
                        );
                        prop_assert!(
                            !outstanding.iter().any(|(_, x)| *x == id),
                            "{id} delivered twice while outstanding"
                        );
                        let count = deliveries.entry(id).or_default();
                        *count += 1;
                        prop_assert_eq!(d.redelivered, *count > 1, "redelivered flag of {}", id);
                        outstanding.push((d.id, id));
                    } else {
                        prop_assert_eq!(
                            live.len(),
                            outstanding.len(),
                            "get-empty while messages are ready"
                        );
                    }
                }
                Op::Ack(i) if !outstanding.is_empty() => {
                    let (did, id) = outstanding.remove(i % outstanding.len());
                    queue(&b).ack(&[did], 0);
                    live.remove(&id);
                    ever_acked.insert(id);
                }
                Op::Nack(i, requeue) if !outstanding.is_empty() => {
                    let (did, id) = outstanding.remove(i % outstanding.len());
                    queue(&b).nack(&[did], requeue, 0);
                    if !requeue {
                        live.remove(&id);
                        ever_acked.insert(id);
                    }
                }
                Op::Restart => {
                    drop(b);
                    b = open(dir.path()).await;
                    outstanding.clear();
                }
                _ => {}
            }
        }
        // Drain: exactly the live messages remain (outstanding ones after a requeue).
        let q = queue(&b);
        let ids: Vec<u64> = outstanding.iter().map(|(d, _)| *d).collect();
        q.nack(&ids, true, 0);
        let mut rest = BTreeSet::new();
        while let Some((d, _)) = q.get(true, 0) {
            let id: u64 = std::str::from_utf8(&d.message.body)
                .unwrap()
                .parse()
                .unwrap();
            prop_assert!(rest.insert(id), "{id} drained twice");
        }
        prop_assert_eq!(rest, live);
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn at_least_once_across_restarts(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}
