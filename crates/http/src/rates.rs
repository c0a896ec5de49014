//! Message rates for management: a background task samples every queue's and stream's
//! counters every [`SAMPLE_INTERVAL_MS`] and keeps the per-second rate over the last interval.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrymq_core::{Broker, QueueRef};
use serde::Serialize;
use tokio::sync::watch;
use utoipa::ToSchema;

/// How often counters are sampled.
pub const SAMPLE_INTERVAL_MS: u64 = 5_000;

/// Messages per second over the last sampling interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize, ToSchema)]
pub struct RatesJson {
    pub publish: f64,
    pub deliver: f64,
    pub ack: f64,
    pub redeliver: f64,
    pub dead_letter: f64,
}

#[derive(Clone, Copy, Default)]
struct Counts([u64; 5]);

struct Sample {
    at: Instant,
    counts: Counts,
    rates: RatesJson,
}

/// Latest rates per (vhost, queue or stream).
#[derive(Default)]
pub struct Rates {
    map: Mutex<HashMap<(String, String), Sample>>,
}

fn counts(q: &QueueRef) -> Counts {
    match q {
        QueueRef::Classic(c) => {
            let k = &c.counters;
            Counts([
                k.published.load(Ordering::Relaxed),
                k.delivered.load(Ordering::Relaxed),
                k.acked.load(Ordering::Relaxed),
                k.redelivered.load(Ordering::Relaxed),
                k.dead_lettered.load(Ordering::Relaxed),
            ])
        }
        QueueRef::Stream(s) => Counts([
            s.counters.published.load(Ordering::Relaxed),
            s.counters.delivered.load(Ordering::Relaxed),
            0,
            0,
            0,
        ]),
    }
}

impl Rates {
    /// The latest rates of a queue or stream (zero before two samples exist).
    pub fn get(&self, vhost: &str, name: &str) -> RatesJson {
        self.map
            .lock()
            .ok()
            .and_then(|m| {
                m.get(&(vhost.to_string(), name.to_string()))
                    .map(|s| s.rates)
            })
            .unwrap_or_default()
    }

    /// Takes one sample of every queue and stream.
    pub fn sample(&self, broker: &Broker) {
        let now = Instant::now();
        let mut seen = HashMap::new();
        for vh in broker.vhosts() {
            for q in vh.queues() {
                seen.insert((vh.name.clone(), q.name().to_string()), counts(&q));
            }
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|k, _| seen.contains_key(k));
        for (k, c) in seen {
            match map.get_mut(&k) {
                Some(s) => {
                    let dt = now.duration_since(s.at).as_secs_f64().max(0.001);
                    let r = |i: usize| c.0[i].saturating_sub(s.counts.0[i]) as f64 / dt;
                    s.rates = RatesJson {
                        publish: r(0),
                        deliver: r(1),
                        ack: r(2),
                        redeliver: r(3),
                        dead_letter: r(4),
                    };
                    s.at = now;
                    s.counts = c;
                }
                None => {
                    map.insert(
                        k,
                        Sample {
                            at: now,
                            counts: c,
                            rates: RatesJson::default(),
                        },
                    );
                }
            }
        }
    }

    /// Samples until `stop` turns true.
    pub async fn run(self: Arc<Self>, broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
        loop {
            self.sample(&broker);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(SAMPLE_INTERVAL_MS)) => {}
                _ = stop.changed() => return,
            }
        }
    }
}
