//! `/metrics` in the Prometheus text format, and `/health/live` and `/health/ready`.
//!
//! Both are unauthenticated (as scrapers and orchestrators expect); the listener binds to
//! loopback by default.

use std::fmt::Write;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use ferrymq_core::QueueRef;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::state::AppState;

/// Health state.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// ok, or blocked (a resource alarm is raised).
    pub status: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alarms: Vec<String>,
}

/// The process is alive.
#[utoipa::path(get, path = "/health/live", tag = "health", responses((status = 200, body = Health)))]
pub async fn live() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        alarms: Vec::new(),
    })
}

/// The broker accepts publishes (no memory or disk alarm).
#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses((status = 200, body = Health), (status = 503, description = "A resource alarm blocks publishers", body = Health)))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let f = *state.broker.flow().borrow();
    let mut alarms = Vec::new();
    if f.memory_alarm {
        alarms.push("memory".to_string());
    }
    if f.disk_alarm {
        alarms.push("disk".to_string());
    }
    if *state.shutdown.borrow() {
        alarms.push("shutting_down".to_string());
    }
    if alarms.is_empty() {
        (
            StatusCode::OK,
            Json(Health {
                status: "ok".into(),
                alarms,
            }),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "blocked".into(),
                alarms,
            }),
        )
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 4096
}

struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn line(&mut self, name: &str, labels: &str, v: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {v}");
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {v}");
        }
    }
}

/// Renders every metric.
pub fn render(state: &AppState) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = String::with_capacity(8192);
    let mut f = Family { out: &mut out };
    let broker = &state.broker;
    let mut queues = Vec::new();
    let mut streams = Vec::new();
    for vh in broker.vhosts() {
        for q in vh.queues() {
            let labels = format!("vhost=\"{}\",queue=\"{}\"", esc(&vh.name), esc(q.name()));
            match q {
                QueueRef::Classic(c) => queues.push((labels, c.info())),
                QueueRef::Stream(s) => streams.push((labels, s)),
            }
        }
    }
    type QField = fn(&ferrymq_core::queue::QueueInfo) -> u64;
    let qgauges: [(&str, &str, QField); 6] = [
        (
            "ferrymq_queue_messages",
            "Depth: ready + unacked + delayed",
            |i| i.ready + i.unacked + i.delayed,
        ),
        (
            "ferrymq_queue_messages_ready",
            "Messages ready for delivery",
            |i| i.ready,
        ),
        (
            "ferrymq_queue_messages_unacked",
            "Messages delivered and not yet settled",
            |i| i.unacked,
        ),
        (
            "ferrymq_queue_messages_delayed",
            "Messages waiting for their not-before time",
            |i| i.delayed,
        ),
        ("ferrymq_queue_bytes", "Body bytes held by the queue", |i| {
            i.bytes_ready + i.bytes_unacked
        }),
        ("ferrymq_queue_consumers", "Attached consumers", |i| {
            i.consumers as u64
        }),
    ];
    for (name, help, get) in qgauges {
        f.head(name, "gauge", help);
        for (l, i) in &queues {
            f.line(name, l, get(i));
        }
    }
    let qcounters: [(&str, &str, QField); 5] = [
        ("ferrymq_queue_published_total", "Messages enqueued", |i| {
            i.published
        }),
        (
            "ferrymq_queue_delivered_total",
            "Deliveries (consumers and gets)",
            |i| i.delivered,
        ),
        (
            "ferrymq_queue_acked_total",
            "Messages settled by acks",
            |i| i.acked,
        ),
        ("ferrymq_queue_redelivered_total", "Redeliveries", |i| {
            i.redelivered
        }),
        (
            "ferrymq_queue_dead_lettered_total",
            "Messages dead-lettered out of the queue",
            |i| i.dead_lettered,
        ),
    ];
    for (name, help, get) in qcounters {
        f.head(name, "counter", help);
        for (l, i) in &queues {
            f.line(name, l, get(i));
        }
    }
    f.head(
        "ferrymq_stream_messages",
        "gauge",
        "Messages retained by the stream",
    );
    for (l, s) in &streams {
        f.line("ferrymq_stream_messages", l, s.message_count());
    }
    f.head(
        "ferrymq_stream_bytes",
        "gauge",
        "Bytes of the stream's logs on disk",
    );
    for (l, s) in &streams {
        f.line("ferrymq_stream_bytes", l, s.size_bytes());
    }
    f.head(
        "ferrymq_stream_consumers",
        "gauge",
        "Attached stream consumers",
    );
    for (l, s) in &streams {
        f.line("ferrymq_stream_consumers", l, s.consumer_count());
    }
    f.head(
        "ferrymq_stream_published_total",
        "counter",
        "Messages appended",
    );
    for (l, s) in &streams {
        f.line(
            "ferrymq_stream_published_total",
            l,
            s.counters.published.load(Relaxed),
        );
    }
    f.head(
        "ferrymq_stream_delivered_total",
        "counter",
        "Messages delivered to stream consumers",
    );
    for (l, s) in &streams {
        f.line(
            "ferrymq_stream_delivered_total",
            l,
            s.counters.delivered.load(Relaxed),
        );
    }

    let mut by_proto: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for c in broker.connections() {
        *by_proto.entry(c.info.protocol.clone()).or_default() += 1;
    }
    f.head(
        "ferrymq_connections",
        "gauge",
        "Open client connections by protocol",
    );
    for (p, n) in &by_proto {
        f.line(
            "ferrymq_connections",
            &format!("protocol=\"{}\"", esc(p)),
            n,
        );
    }
    let admission = broker.admission();
    f.head(
        "ferrymq_listener_connections",
        "gauge",
        "Connections admitted and open by listener, including those still in their handshake",
    );
    for (p, n) in admission.open_by_protocol() {
        f.line(
            "ferrymq_listener_connections",
            &format!("protocol=\"{p}\""),
            n,
        );
    }
    f.head(
        "ferrymq_limit_refusals_total",
        "counter",
        "Connections, requests and declarations refused by a configured limit",
    );
    for (limit, p, n) in admission.refusals() {
        f.line(
            "ferrymq_limit_refusals_total",
            &format!("limit=\"{}\",protocol=\"{p}\"", limit.as_str()),
            n,
        );
    }
    f.head(
        "ferrymq_http_leases",
        "gauge",
        "Messages pulled over HTTP and not yet settled",
    );
    f.line("ferrymq_http_leases", "", state.leases.len());

    let m = broker.storage().metrics();
    f.head(
        "ferrymq_fsync_duration_seconds",
        "histogram",
        "fdatasync latency",
    );
    let mut cumulative = 0u64;
    for (le, n) in &m.fsync_latency_buckets {
        cumulative += n;
        let le = le.map_or("+Inf".to_string(), |v| format!("{v}"));
        f.line(
            "ferrymq_fsync_duration_seconds_bucket",
            &format!("le=\"{le}\""),
            cumulative,
        );
    }
    f.line(
        "ferrymq_fsync_duration_seconds_sum",
        "",
        m.fsync_seconds_total,
    );
    f.line("ferrymq_fsync_duration_seconds_count", "", m.fsync_count);
    let storage: [(&str, &str, u64); 9] = [
        (
            "ferrymq_fsync_errors_total",
            "Failed fsyncs",
            m.fsync_errors,
        ),
        (
            "ferrymq_storage_sync_rounds_total",
            "Group-commit rounds",
            m.sync_rounds,
        ),
        (
            "ferrymq_storage_bytes_written_total",
            "Bytes appended to logs",
            m.bytes_written,
        ),
        (
            "ferrymq_storage_bytes_read_total",
            "Bytes read from logs",
            m.bytes_read,
        ),
        (
            "ferrymq_storage_batches_written_total",
            "Batches appended",
            m.batches_written,
        ),
        (
            "ferrymq_storage_append_errors_total",
            "Failed appends",
            m.append_errors,
        ),
        (
            "ferrymq_storage_corrupt_batches_total",
            "Batches that failed verification",
            m.corrupt_batches_total,
        ),
        (
            "ferrymq_storage_segments_created_total",
            "Segments created",
            m.segments_created,
        ),
        (
            "ferrymq_storage_tail_cache_hits_total",
            "Stream reads served from the tail cache (no disk read)",
            m.tail_cache_hits,
        ),
    ];
    for (name, help, v) in storage {
        f.head(name, "counter", help);
        f.line(name, "", v);
    }
    f.head(
        "ferrymq_storage_tail_cache_bytes",
        "gauge",
        "Bytes of recent stream batches held in memory",
    );
    f.line("ferrymq_storage_tail_cache_bytes", "", m.tail_cache_bytes);
    f.head(
        "ferrymq_process_resident_memory_bytes",
        "gauge",
        "Resident set size",
    );
    f.line(
        "ferrymq_process_resident_memory_bytes",
        "",
        resident_bytes(),
    );
    f.head(
        "ferrymq_disk_free_bytes",
        "gauge",
        "Free space on the data directory's file system",
    );
    f.line(
        "ferrymq_disk_free_bytes",
        "",
        broker.storage().disk_free_bytes().unwrap_or(0),
    );
    let flow = *broker.flow().borrow();
    f.head(
        "ferrymq_alarm",
        "gauge",
        "1 while a resource alarm blocks publishers",
    );
    f.line(
        "ferrymq_alarm",
        "resource=\"memory\"",
        u8::from(flow.memory_alarm),
    );
    f.line(
        "ferrymq_alarm",
        "resource=\"disk\"",
        u8::from(flow.disk_alarm),
    );
    out
}

/// Prometheus metrics (text format 0.0.4).
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&state),
    )
}
