//! The HTTP driver (FerryMQ's HTTP API only), on `ureq` with keep-alive, one blocking thread
//! per producer and per consumer.
//!
//! Producers publish to queue `<prefix>-<i % queues>`: one message per request as a raw body
//! (`POST …/messages`, `x-ferrymq-persistent` from `--persistent`) or `--http-batch N`
//! messages per request as JSON (`POST …/publish/batch`, base64 payloads). A 2xx answer means
//! stored at its tier, so every message is confirmed by its answer and the confirm latency runs
//! from the stamp to the answer; one request is in flight per producer. Consumers long-poll
//! `POST …/get` (up to `--prefetch` messages, at most 1,000) and ack every pulled batch with
//! one `POST …/ack` (`--ack-every 0`: `auto_ack`, no acks). Queues are declared with `PUT` and
//! deleted with `DELETE` (unless `--keep-queues`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Deserialize;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::accounting::Ledger;
use crate::harness::{drive, ConsumerOut, Driver, ProducerOut};
use crate::latency::Latency;
use crate::payload::{self, Header, Payload};
use crate::rate::Schedule;
use crate::run::{Ctx, Protocol, RunResult, Scenario, Window, WindowCount};

/// Longest time one request may take (a long poll asks for [`POLL_WAIT_MS`]).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Long-poll wait of a pull: short, so that a consumer notices the end of the run quickly.
const POLL_WAIT_MS: u64 = 500;
/// Visibility timeout of pulled messages.
const VISIBILITY_MS: u64 = 30_000;
/// Most receipt handles per ack request (the API's limit).
const HANDLES_MAX: usize = 1000;
/// Largest answer body read (a pull of 1,000 large messages, base64).
const BODY_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// Where an `http://[user:password@]host[:port][/vhost]` URL points; credentials default to
/// guest:guest and the vhost to `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// `http://host:port`, no trailing slash.
    pub base: String,
    /// Percent-encoded vhost, as it goes into paths.
    pub vhost: String,
    /// The `Authorization` header value.
    pub authorization: String,
}

impl HttpUrl {
    /// # Errors
    /// Not `http://` (no TLS in this build), or no host.
    pub fn parse(url: &str) -> Result<HttpUrl> {
        let Some((scheme, rest)) = url.split_once("://") else {
            bail!("not an HTTP URL: {url:?} (http://user:pass@host:port)");
        };
        if !scheme.eq_ignore_ascii_case("http") {
            bail!("{url:?}: only http:// is supported (the bench is built without TLS)");
        }
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, p.trim_end_matches('/')),
            None => (rest, ""),
        };
        let (cred, host) = match authority.rsplit_once('@') {
            Some((c, h)) => (c, h),
            None => ("guest:guest", authority),
        };
        if host.is_empty() {
            bail!("{url:?}: no host");
        }
        let (user, pass) = cred.split_once(':').unwrap_or((cred, ""));
        Ok(HttpUrl {
            base: format!("http://{host}"),
            vhost: if path.is_empty() {
                "%2F".into()
            } else {
                path.to_string()
            },
            authorization: format!("Basic {}", B64.encode(format!("{user}:{pass}"))),
        })
    }

    fn queue(&self, name: &str) -> String {
        format!("{}/api/queues/{}/{}", self.base, self.vhost, encode(name))
    }
}

/// Percent-encodes a name for a path segment.
fn encode(name: &str) -> String {
    let mut o = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(REQUEST_TIMEOUT))
        .build()
        .into()
}

/// An answer's status and body.
fn answer(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<(u16, Vec<u8>)> {
    let mut r = r?;
    let status = r.status().as_u16();
    let body = r
        .body_mut()
        .with_config()
        .limit(BODY_BYTES_MAX)
        .read_to_vec()?;
    Ok((status, body))
}

fn check(what: &str, (status, body): (u16, Vec<u8>)) -> Result<Vec<u8>> {
    if !(200..300).contains(&status) {
        bail!(
            "{what}: HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(500)])
        );
    }
    Ok(body)
}

fn queue_name(s: &Scenario, i: usize) -> String {
    crate::amqp::queue_name(s, i)
}

/// Blocks until `at_ns` on the run's clock.
fn sleep_until(ctx: &Ctx, at_ns: u64) {
    let now = ctx.now_ns();
    if at_ns > now {
        std::thread::sleep(Duration::from_nanos(at_ns - now));
    }
}

/// Where a producer publishes.
struct Target {
    agent: ureq::Agent,
    u: HttpUrl,
    /// The queue's URL.
    url: String,
}

/// One publish request of `n` messages from `seq`; returns their stamps.
fn publish(
    t: &Target,
    s: &Scenario,
    ctx: &Ctx,
    (id, seq, n): (usize, u64, usize),
    schedule: &Schedule,
    buf: &mut Payload,
) -> Result<Vec<u64>> {
    let mut stamps = Vec::with_capacity(n);
    let mut stamp = |i: u64, buf: &mut Payload| {
        let st = schedule.stamp_ns(i, ctx.now_ns());
        stamps.push(st);
        buf.stamp(Header {
            producer: id as u32,
            seq: i,
            send_ns: st,
        })
        .to_vec()
    };
    let persistent = if s.persistent { "true" } else { "false" };
    let (agent, u, url) = (&t.agent, &t.u, &t.url);
    let res = if n == 1 {
        let body = stamp(seq, buf);
        agent
            .post(&format!("{url}/messages"))
            .header("authorization", &u.authorization)
            .header("content-type", "application/octet-stream")
            .header("x-ferrymq-persistent", persistent)
            .send(&body[..])
    } else {
        let mut json = String::with_capacity(n * (s.size * 4 / 3 + 96) + 16);
        json.push_str("{\"messages\":[");
        for k in 0..n {
            let body = stamp(seq + k as u64, buf);
            if k > 0 {
                json.push(',');
            }
            json.push_str("{\"payload\":\"");
            B64.encode_string(&body, &mut json);
            json.push_str("\",\"payload_encoding\":\"base64\",\"properties\":{\"persistent\":");
            json.push_str(persistent);
            json.push_str("}}");
        }
        json.push_str("]}");
        agent
            .post(&format!("{url}/publish/batch"))
            .header("authorization", &u.authorization)
            .header("content-type", "application/json")
            .send(json.as_bytes())
    };
    check("publish", answer(res)?)?;
    Ok(stamps)
}

fn producer(
    ctx: Arc<Ctx>,
    s: Arc<Scenario>,
    id: usize,
    schedule: Schedule,
    quota: Option<u64>,
) -> Result<ProducerOut> {
    let u = HttpUrl::parse(&s.url)?;
    let queue = queue_name(&s, id);
    let target = Target {
        agent: agent(),
        url: u.queue(&queue),
        u,
    };
    let mut buf = Payload::new(s.size);
    let mut ledger = Ledger::default();
    let mut confirm = Latency::new();
    let mut published = WindowCount::default();
    let mut seq = 0u64;
    let w = ctx.window();
    if w.producers_start_ns != u64::MAX {
        sleep_until(&ctx, w.producers_start_ns);
    }
    let mut error = None;
    loop {
        let now = ctx.now_ns();
        if ctx.stopping() || (quota.is_none() && now >= w.end_ns) || quota.is_some_and(|q| seq >= q)
        {
            break;
        }
        let due = schedule.due(now);
        if due <= seq {
            sleep_until(&ctx, schedule.intended_ns(seq).unwrap_or(now));
            continue;
        }
        let mut n = (due - seq).min(s.http_batch as u64);
        if let Some(q) = quota {
            n = n.min(q - seq);
        }
        let n = n as usize;
        match publish(&target, &s, &ctx, (id, seq, n), &schedule, &mut buf) {
            Ok(stamps) => {
                let after = ctx.now_ns();
                for (k, st) in stamps.iter().enumerate() {
                    ledger.confirmed.set(seq + k as u64);
                    if w.contains(*st) {
                        confirm.record(after.saturating_sub(*st));
                    }
                }
                ctx.sent.fetch_add(n as u64, Ordering::Relaxed);
                ctx.confirmed.fetch_add(n as u64, Ordering::Relaxed);
                if w.contains(after) {
                    published.add(n as u64, after);
                }
                seq += n as u64;
            }
            Err(e) => {
                // Unknown outcome: counted as sent, not confirmed.
                ledger.failed += n as u64;
                seq += n as u64;
                error = Some(e);
                break;
            }
        }
    }
    ledger.sent = seq;
    if let Some(e) = error {
        ctx.stop.store(true, Ordering::Relaxed);
        return Err(e.context(format!("HTTP producer {id} publishing to {queue}")));
    }
    Ok(ProducerOut {
        ledger,
        confirm,
        published,
    })
}

#[derive(Deserialize)]
struct Pulled {
    messages: Vec<PulledMessage>,
}

#[derive(Deserialize)]
struct PulledMessage {
    #[serde(default)]
    receipt_handle: Option<String>,
    message: PulledBody,
}

#[derive(Deserialize)]
struct PulledBody {
    payload: String,
    #[serde(default)]
    payload_encoding: String,
}

impl PulledBody {
    fn bytes(&self) -> Option<Vec<u8>> {
        if self.payload_encoding == "base64" {
            B64.decode(&self.payload).ok()
        } else {
            Some(self.payload.as_bytes().to_vec())
        }
    }
}

fn consumer(
    ctx: Arc<Ctx>,
    s: Arc<Scenario>,
    id: usize,
    ready: oneshot::Sender<()>,
    stop: watch::Receiver<bool>,
) -> Result<ConsumerOut> {
    let what = format!("HTTP consumer {id}");
    let u = HttpUrl::parse(&s.url)?;
    let agent = agent();
    let queue = queue_name(&s, id);
    let url = u.queue(&queue);
    let auto_ack = s.ack_every == 0;
    let pull = serde_json::json!({
        "max_messages": pull_max(s.prefetch),
        "wait_ms": POLL_WAIT_MS,
        "visibility_timeout_ms": VISIBILITY_MS,
        "auto_ack": auto_ack,
        "base64": true,
    })
    .to_string();
    let _ = ready.send(());
    let mut out = ConsumerOut::new(&s);
    let mut w: Option<Window> = None;
    while !*stop.borrow() {
        let res = agent
            .post(&format!("{url}/get"))
            .header("authorization", &u.authorization)
            .header("content-type", "application/json")
            .send(pull.as_bytes());
        let body = check(&what, answer(res).with_context(|| what.clone())?)?;
        let pulled: Pulled =
            serde_json::from_slice(&body).with_context(|| format!("{what}: a pull's answer"))?;
        let now = ctx.now_ns();
        let w = *w.get_or_insert_with(|| ctx.window());
        let mut handles = Vec::with_capacity(pulled.messages.len());
        for m in pulled.messages {
            ctx.received.fetch_add(1, Ordering::Relaxed);
            match m.message.bytes().as_deref().and_then(payload::decode) {
                Some(h) => {
                    out.rx.record(h.producer, h.seq);
                    if w.contains(h.send_ns) {
                        out.latency(&s, h.send_ns, now);
                    }
                }
                None => out.rx.foreign += 1,
            }
            if w.contains(now) || (w.end_ns == u64::MAX && now >= w.start_ns) {
                out.received.add(1, now);
            }
            handles.extend(m.receipt_handle);
        }
        for chunk in handles.chunks(HANDLES_MAX) {
            let body = serde_json::json!({ "receipt_handles": chunk }).to_string();
            let res = agent
                .post(&format!("{url}/ack"))
                .header("authorization", &u.authorization)
                .header("content-type", "application/json")
                .send(body.as_bytes());
            check(&format!("{what}: ack"), answer(res)?)?;
        }
    }
    Ok(out)
}

/// Messages per pull: `--prefetch`, 0 (unlimited) and anything above the API's 1,000 = 1,000.
pub fn pull_max(prefetch: u16) -> u16 {
    if prefetch == 0 {
        1000
    } else {
        prefetch.min(1000)
    }
}

struct HttpDriver;

impl Driver for HttpDriver {
    fn protocol(&self) -> Protocol {
        Protocol::Http
    }

    fn producer(
        &self,
        ctx: Arc<Ctx>,
        s: Arc<Scenario>,
        id: usize,
        schedule: Schedule,
        quota: Option<u64>,
    ) -> JoinHandle<Result<ProducerOut>> {
        tokio::task::spawn_blocking(move || producer(ctx, s, id, schedule, quota))
    }

    fn consumer(
        &self,
        ctx: Arc<Ctx>,
        s: Arc<Scenario>,
        id: usize,
        ready: oneshot::Sender<()>,
        stop: watch::Receiver<bool>,
    ) -> JoinHandle<Result<ConsumerOut>> {
        tokio::task::spawn_blocking(move || {
            let r = consumer(ctx.clone(), s, id, ready, stop);
            if r.is_err() {
                ctx.stop.store(true, Ordering::Relaxed);
            }
            r
        })
    }
}

/// Declares (`PUT`) or deletes (`DELETE`) the scenario's queues.
fn queues(s: &Scenario, declare: bool) -> Result<()> {
    let u = HttpUrl::parse(&s.url)?;
    let agent = agent();
    for q in 0..s.queues {
        let name = queue_name(s, q);
        let url = u.queue(&name);
        if declare {
            let body = serde_json::json!({ "durable": s.persistent, "auto_delete": false });
            let res = agent
                .put(&url)
                .header("authorization", &u.authorization)
                .header("content-type", "application/json")
                .send(body.to_string().as_bytes());
            check(
                &format!("declaring queue {name}"),
                answer(res).with_context(|| format!("declaring queue {name} at {}", u.base))?,
            )?;
        } else {
            let res = agent
                .delete(&url)
                .header("authorization", &u.authorization)
                .call();
            check(&format!("deleting queue {name}"), answer(res)?)?;
        }
    }
    Ok(())
}

/// Runs one HTTP scenario to the end.
///
/// # Errors
/// Queue declaration, publish or pull failures; the queues are deleted anyway when possible.
pub async fn run(scenario: Scenario, ctx: Arc<Ctx>) -> Result<RunResult> {
    scenario.validate()?;
    HttpUrl::parse(&scenario.url)?;
    let s = Arc::new(scenario);
    {
        let s = s.clone();
        tokio::task::spawn_blocking(move || queues(&s, true)).await??;
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let result = drive(&HttpDriver, &s, &ctx, &stop_tx, stop_rx).await;
    let _ = stop_tx.send(true);
    if !s.keep_queues {
        let s = s.clone();
        let _ = tokio::task::spawn_blocking(move || queues(&s, false)).await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = HttpUrl::parse("http://guest:guest@127.0.0.1:15672").unwrap();
        assert_eq!(u.base, "http://127.0.0.1:15672");
        assert_eq!(u.vhost, "%2F");
        assert_eq!(u.authorization, "Basic Z3Vlc3Q6Z3Vlc3Q=");
        assert_eq!(
            u.queue("a b/c"),
            "http://127.0.0.1:15672/api/queues/%2F/a%20b%2Fc"
        );
        let u = HttpUrl::parse("http://localhost:8080/prod/").unwrap();
        assert_eq!(
            (u.base.as_str(), u.vhost.as_str()),
            ("http://localhost:8080", "prod")
        );
        assert_eq!(
            u.authorization,
            HttpUrl::parse("http://x").unwrap().authorization
        );
        assert!(HttpUrl::parse("https://x").is_err());
        assert!(HttpUrl::parse("http://u:p@").is_err());
    }

    #[test]
    fn pull_sizes() {
        assert_eq!((pull_max(0), pull_max(1), pull_max(5000)), (1000, 1, 1000));
    }

    #[test]
    fn pulled_payloads_decode_either_encoding() {
        let b = PulledBody {
            payload: B64.encode([1u8, 2, 255]),
            payload_encoding: "base64".into(),
        };
        assert_eq!(b.bytes(), Some(vec![1, 2, 255]));
        let b = PulledBody {
            payload: "hi".into(),
            payload_encoding: "string".into(),
        };
        assert_eq!(b.bytes(), Some(b"hi".to_vec()));
        let b = PulledBody {
            payload: "!!".into(),
            payload_encoding: "base64".into(),
        };
        assert_eq!(b.bytes(), None);
    }
}
