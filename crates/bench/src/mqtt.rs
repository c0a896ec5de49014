//! The MQTT 3.1.1 run: one connection per producer and per subscriber, driven by the
//! scenario's client: [`crate::mqtt_native`] (the default, on the project's codec) or
//! `rumqttc` (`--mqtt-client rumqttc`, this module's driver).
//!
//! Producer `i` publishes to topic `<prefix>/<i % topics>`, consumer `j` subscribes to
//! `<prefix>/<j % topics>`, so `--topics` = producers = consumers is 1 → 1 with a topic each,
//! and one topic with N consumers is a 1 → N fan-out in which every subscriber is due its own
//! copy of every message (see [`crate::accounting::tally_fanout`]). QoS 0 publishes are
//! "sent" when handed to the client; QoS 1 publishes are confirmed by their PUBACK, and the
//! confirm latency runs from the stamp to the PUBACK. The client's in-flight window
//! (`--confirm-window`, at most 65,535) bounds unacknowledged QoS 1 publishes. `--persistent`
//! uses persistent sessions (clean session off), which are discarded again after the run.
//!
//! [`idle`] opens many idle connections (a hand-written CONNECT, no client library) and
//! reports the broker's resident memory per connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS,
    SubscribeReasonCode,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::accounting::Ledger;
use crate::harness::{drive, ConsumerOut, Driver, ProducerOut};
use crate::latency::Latency;
use crate::payload::{self, Header, Payload};
use crate::rate::Schedule;
use crate::run::{Ctx, MqttClient, Protocol, RunResult, Scenario, Window, WindowCount};

/// Time allowed to connect and subscribe.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests queued between a producer and its event loop.
const REQUEST_CAP: usize = 1024;
/// Most due messages a producer publishes before looking at the clock again.
const BATCH: u64 = 64;

/// Where an `mqtt://[user[:password]@]host[:port]` URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUrl {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl MqttUrl {
    /// # Errors
    /// Not `mqtt://` (or `tcp://`), a bad port, or a path.
    pub fn parse(url: &str) -> Result<MqttUrl> {
        let Some((scheme, rest)) = url.split_once("://") else {
            bail!("not an MQTT URL: {url:?} (mqtt://host:port)");
        };
        if !matches!(scheme.to_ascii_lowercase().as_str(), "mqtt" | "tcp") {
            bail!("{url:?}: only mqtt:// (plain TCP) is supported");
        }
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            bail!("{url:?}: an MQTT URL has no path");
        }
        let (cred, hostport) = match rest.rsplit_once('@') {
            Some((c, h)) => (Some(c), h),
            None => (None, rest),
        };
        let (user, password) = match cred {
            Some(c) => match c.split_once(':') {
                Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
                None => (Some(c.to_string()), None),
            },
            None => (None, None),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .with_context(|| format!("{url:?}: bad port {p:?}"))?,
            ),
            _ => (hostport, 1883),
        };
        if host.is_empty() {
            bail!("{url:?}: no host");
        }
        Ok(MqttUrl {
            host: host.trim_start_matches('[').trim_end_matches(']').into(),
            port,
            user,
            password,
        })
    }

    fn options(&self, client_id: String, clean_session: bool) -> MqttOptions {
        let mut o = MqttOptions::new(client_id, self.host.clone(), self.port);
        o.set_clean_session(clean_session);
        o.set_keep_alive(Duration::from_secs(30));
        if let Some(u) = &self.user {
            o.set_credentials(u.clone(), self.password.clone().unwrap_or_default());
        }
        o
    }
}

fn qos(s: &Scenario) -> QoS {
    if s.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// The topic of producer or consumer `i`.
pub fn topic(s: &Scenario, i: usize) -> String {
    format!("{}/{}", s.queue_prefix, i % s.queues)
}

pub(crate) fn client_id(s: &Scenario, role: &str, i: usize) -> String {
    format!("{}-{role}{i}", s.queue_prefix)
}

/// An event loop with its TCP nodelay on and a packet size limit that fits the payloads.
fn client(s: &Scenario, id: String, clean: bool, cap: usize) -> Result<(AsyncClient, EventLoop)> {
    let url = MqttUrl::parse(&s.url)?;
    let mut o = url.options(id, clean);
    let packet = s.size + s.queue_prefix.len() + 64;
    o.set_max_packet_size(packet.max(10 * 1024), packet.max(10 * 1024));
    o.set_inflight(s.confirm_window.clamp(1, usize::from(u16::MAX)) as u16);
    let (c, mut el) = AsyncClient::new(o, cap);
    let mut net = el.network_options();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(SETUP_TIMEOUT.as_secs());
    el.set_network_options(net);
    Ok((c, el))
}

/// Polls until the CONNACK.
async fn connected(el: &mut EventLoop, what: &str) -> Result<()> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(anyhow::Error::new(e).context(format!("{what}: connecting"))),
            Err(_) => bail!("{what}: no CONNACK within {SETUP_TIMEOUT:?}"),
        }
    }
}

/// Maps QoS 1 publishes to their PUBACKs: the producer queues each publish's (sequence, stamp)
/// before handing it to the client; the client assigns packet ids in that order (reported as
/// `Outgoing::Publish(pkid)`), and the broker acks by packet id, in any order.
#[derive(Debug, Default)]
pub struct PubackTracker {
    queued: std::collections::VecDeque<(u64, u64)>,
    in_flight: std::collections::HashMap<u16, (u64, u64)>,
}

impl PubackTracker {
    /// The producer is about to publish message `seq`, stamped `stamp`.
    pub fn queued(&mut self, seq: u64, stamp: u64) {
        self.queued.push_back((seq, stamp));
    }

    /// The client wrote the oldest queued publish with packet id `pkid`.
    pub fn sent(&mut self, pkid: u16) {
        if let Some(x) = self.queued.pop_front() {
            self.in_flight.insert(pkid, x);
        }
    }

    /// The PUBACK of `pkid`: the (sequence, stamp) it confirms, once.
    pub fn acked(&mut self, pkid: u16) -> Option<(u64, u64)> {
        self.in_flight.remove(&pkid)
    }
}

/// What a producer's event loop task hands back.
struct Acks {
    ledger: Ledger,
    confirm: Latency,
    error: Option<ConnectionError>,
}

/// Drives a producer's event loop: maps each outgoing QoS 1 publish's packet id to its
/// (sequence, stamp), in the order the producer queued them, and settles them on PUBACK.
async fn producer_events(
    ctx: Arc<Ctx>,
    mut el: EventLoop,
    mut queued: mpsc::UnboundedReceiver<(u64, u64)>,
    acked: Arc<AtomicU64>,
) -> Acks {
    let mut out = Acks {
        ledger: Ledger::default(),
        confirm: Latency::new(),
        error: None,
    };
    let mut pending = PubackTracker::default();
    let w = ctx.window();
    loop {
        match el.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) if pkid != 0 => {
                // Queued before the publish was handed to the client, so already here.
                while let Ok((seq, stamp)) = queued.try_recv() {
                    pending.queued(seq, stamp);
                }
                pending.sent(pkid);
            }
            Ok(Event::Incoming(Packet::PubAck(a))) => {
                if let Some((seq, stamp)) = pending.acked(a.pkid) {
                    let now = ctx.now_ns();
                    out.ledger.confirmed.set(seq);
                    ctx.confirmed.fetch_add(1, Ordering::Relaxed);
                    acked.fetch_add(1, Ordering::Relaxed);
                    if w.contains(stamp) {
                        out.confirm.record(now.saturating_sub(stamp));
                    }
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(e) => {
                out.error = Some(e);
                break;
            }
        }
    }
    out
}

async fn producer(
    ctx: Arc<Ctx>,
    s: Arc<Scenario>,
    id: usize,
    schedule: Schedule,
    quota: Option<u64>,
) -> Result<ProducerOut> {
    let what = format!("MQTT producer {id}");
    let (client, mut el) = client(&s, client_id(&s, "p", id), true, REQUEST_CAP)?;
    connected(&mut el, &what).await?;
    let qos = qos(&s);
    let track = qos != QoS::AtMostOnce;
    let (tx, rx) = mpsc::unbounded_channel();
    let acked = Arc::new(AtomicU64::new(0));
    let events = tokio::spawn(producer_events(ctx.clone(), el, rx, acked.clone()));
    let topic = topic(&s, id);
    let mut buf = Payload::new(s.size);
    let mut published = WindowCount::default();
    let (mut seq, mut failed) = (0u64, 0u64);
    let w = ctx.window();
    if w.producers_start_ns != u64::MAX {
        tokio::time::sleep_until(ctx.at(w.producers_start_ns).into()).await;
    }
    let mut error = None;
    'run: loop {
        let now = ctx.now_ns();
        if ctx.stopping() || (quota.is_none() && now >= w.end_ns) || quota.is_some_and(|q| seq >= q)
        {
            break;
        }
        let due = schedule.due(now);
        if due <= seq {
            let next = schedule.intended_ns(seq).unwrap_or(now);
            tokio::time::sleep_until(ctx.at(next).into()).await;
            continue;
        }
        let mut n = (due - seq).min(BATCH);
        if let Some(q) = quota {
            n = n.min(q - seq);
        }
        for _ in 0..n {
            let stamp = schedule.stamp_ns(seq, ctx.now_ns());
            let body = buf
                .stamp(Header {
                    producer: id as u32,
                    seq,
                    send_ns: stamp,
                })
                .to_vec();
            if track {
                let _ = tx.send((seq, stamp));
            }
            if let Err(e) = client.publish(topic.as_str(), qos, false, body).await {
                failed += 1;
                seq += 1;
                error = Some(anyhow::Error::new(e));
                break 'run;
            }
            seq += 1;
            ctx.sent.fetch_add(1, Ordering::Relaxed);
            let after = ctx.now_ns();
            if w.contains(after) {
                published.add(1, after);
            }
        }
    }
    // QoS 1: wait for the PUBACKs (or for the connection to fail, or `drain_idle` without one).
    if track {
        let mut last = (acked.load(Ordering::Relaxed), Instant::now());
        while !events.is_finished() {
            let a = acked.load(Ordering::Relaxed);
            if a >= seq - failed {
                break;
            }
            if a != last.0 {
                last = (a, Instant::now());
            } else if last.1.elapsed() > s.drain_idle {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let _ = client.try_disconnect();
    let acks = match tokio::time::timeout(SETUP_TIMEOUT, events).await {
        Ok(r) => r?,
        Err(_) => bail!("{what}: its event loop did not end after DISCONNECT"),
    };
    let mut ledger = acks.ledger;
    ledger.sent = seq;
    ledger.failed = failed;
    if let Some(e) = acks.error {
        error.get_or_insert(anyhow::Error::new(e));
    }
    if let Some(e) = error {
        ctx.stop.store(true, Ordering::Relaxed);
        return Err(e.context(format!("{what} publishing to {topic}")));
    }
    Ok(ProducerOut {
        ledger,
        confirm: acks.confirm,
        published,
    })
}

async fn consumer(
    ctx: Arc<Ctx>,
    s: Arc<Scenario>,
    id: usize,
    ready: oneshot::Sender<()>,
    mut stop: watch::Receiver<bool>,
) -> Result<ConsumerOut> {
    let what = format!("MQTT subscriber {id}");
    let (client, mut el) = client(&s, client_id(&s, "c", id), !s.persistent, 64)?;
    connected(&mut el, &what).await?;
    let topic = topic(&s, id);
    client
        .subscribe(topic.as_str(), qos(&s))
        .await
        .with_context(|| format!("{what}: subscribing to {topic}"))?;
    let deadline = Instant::now() + SETUP_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(a)))) => {
                if a.return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    bail!("{what}: the broker refused the subscription to {topic}");
                }
                break;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(anyhow::Error::new(e).context(format!("{what}: subscribing"))),
            Err(_) => bail!("{what}: no SUBACK within {SETUP_TIMEOUT:?}"),
        }
    }
    let _ = ready.send(());
    let mut out = ConsumerOut::new(&s);
    let mut w: Option<Window> = None;
    loop {
        let ev = tokio::select! {
            biased;
            _ = stop.changed() => break,
            ev = el.poll() => ev,
        };
        let p = match ev {
            Ok(Event::Incoming(Packet::Publish(p))) => p,
            Ok(_) => continue,
            Err(e) => {
                ctx.stop.store(true, Ordering::Relaxed);
                return Err(anyhow::Error::new(e).context(what));
            }
        };
        let now = ctx.now_ns();
        let w = w.get_or_insert_with(|| ctx.window());
        ctx.received.fetch_add(1, Ordering::Relaxed);
        out.delivered(&s, w, payload::decode(&p.payload), now);
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(ev) = el.poll().await {
            if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
    Ok(out)
}

/// Discards the persistent sessions of a `--persistent` run: a clean-session CONNECT with each
/// subscriber's client id, then DISCONNECT.
async fn discard_sessions(s: &Scenario) {
    for id in 0..s.consumers {
        let Ok((client, mut el)) = client(s, client_id(s, "c", id), true, 8) else {
            return;
        };
        if connected(&mut el, "session cleanup").await.is_err() {
            return;
        }
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(ev) = el.poll().await {
                if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// The MQTT producers and subscribers of the scenario's client.
struct MqttDriver {
    client: MqttClient,
}

impl Driver for MqttDriver {
    fn protocol(&self) -> Protocol {
        Protocol::Mqtt
    }

    fn producer(
        &self,
        ctx: Arc<Ctx>,
        s: Arc<Scenario>,
        id: usize,
        schedule: Schedule,
        quota: Option<u64>,
    ) -> JoinHandle<Result<ProducerOut>> {
        match self.client {
            MqttClient::Native => {
                tokio::spawn(crate::mqtt_native::producer(ctx, s, id, schedule, quota))
            }
            MqttClient::Rumqttc => tokio::spawn(producer(ctx, s, id, schedule, quota)),
        }
    }

    fn consumer(
        &self,
        ctx: Arc<Ctx>,
        s: Arc<Scenario>,
        id: usize,
        ready: oneshot::Sender<()>,
        stop: watch::Receiver<bool>,
    ) -> JoinHandle<Result<ConsumerOut>> {
        match self.client {
            MqttClient::Native => {
                tokio::spawn(crate::mqtt_native::consumer(ctx, s, id, ready, stop))
            }
            MqttClient::Rumqttc => tokio::spawn(consumer(ctx, s, id, ready, stop)),
        }
    }

    fn fanout(&self) -> bool {
        true
    }
}

/// Runs one MQTT scenario to the end.
///
/// # Errors
/// Connection, subscription or publish failures.
pub async fn run(scenario: Scenario, ctx: Arc<Ctx>) -> Result<RunResult> {
    scenario.validate()?;
    MqttUrl::parse(&scenario.url)?;
    let s = Arc::new(scenario);
    let (stop_tx, stop_rx) = watch::channel(false);
    let driver = MqttDriver {
        client: s.mqtt_client,
    };
    let result = drive(&driver, &s, &ctx, &stop_tx, stop_rx).await;
    let _ = stop_tx.send(true);
    if s.persistent && !s.keep_queues {
        match s.mqtt_client {
            MqttClient::Native => crate::mqtt_native::discard_sessions(&s).await,
            MqttClient::Rumqttc => discard_sessions(&s).await,
        }
    }
    result
}

/// The broker's memory for idle MQTT connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdleResult {
    /// Connections asked for.
    pub connections: usize,
    /// Connections that got a successful CONNACK and were held open.
    pub connected: usize,
    pub pid: u32,
    /// The broker's resident memory (process tree) before connecting and with every
    /// connection open (after a settling pause).
    pub rss_before_bytes: u64,
    pub rss_after_bytes: u64,
    /// `(after - before) / connected`.
    pub bytes_per_connection: f64,
    /// Time to open them all.
    pub connect_s: f64,
    /// The first failure, if any connection failed.
    pub error: Option<String>,
}

/// Connections opened at once by [`idle`].
const IDLE_PARALLEL: usize = 64;
/// Pause between the last CONNACK and the memory sample.
const IDLE_SETTLE: Duration = Duration::from_secs(2);

/// An MQTT 3.1.1 CONNECT: clean session, keep-alive 0 (the broker never times it out).
pub fn connect_packet(client_id: &str, user: Option<&str>, password: Option<&str>) -> Vec<u8> {
    let mut var = Vec::with_capacity(32 + client_id.len());
    var.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4]);
    let mut flags = 0x02u8;
    if user.is_some() {
        flags |= 0x80;
        if password.is_some() {
            flags |= 0x40;
        }
    }
    var.push(flags);
    var.extend_from_slice(&[0, 0]);
    for f in [Some(client_id), user, password.filter(|_| user.is_some())]
        .into_iter()
        .flatten()
    {
        let b = &f.as_bytes()[..f.len().min(usize::from(u16::MAX))];
        var.extend_from_slice(&(b.len() as u16).to_be_bytes());
        var.extend_from_slice(b);
    }
    let mut p = vec![0x10];
    let mut len = var.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        p.push(byte);
        if len == 0 {
            break;
        }
    }
    p.extend_from_slice(&var);
    p
}

async fn idle_one(url: &MqttUrl, id: String) -> Result<TcpStream> {
    let mut sock = TcpStream::connect((url.host.as_str(), url.port)).await?;
    sock.write_all(&connect_packet(
        &id,
        url.user.as_deref(),
        url.password.as_deref(),
    ))
    .await?;
    let mut ack = [0u8; 4];
    sock.read_exact(&mut ack).await?;
    if ack[0] != 0x20 || ack[1] != 2 || ack[3] != 0 {
        bail!("refused: CONNACK {ack:02x?}");
    }
    Ok(sock)
}

/// Raises this process's open-file soft limit to at least `want` (up to the hard limit);
/// returns the new soft limit.
pub fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a valid, owned struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            let _ = libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}

/// Opens `n` idle MQTT connections to `url` (`IDLE_PARALLEL` at a time), waits
/// `IDLE_SETTLE`, and reports the broker's resident memory per connection; closes them all.
///
/// # Errors
/// A bad URL, or the broker's memory cannot be read.
pub async fn idle(url: &str, n: usize, pid: u32) -> Result<IdleResult> {
    let u = MqttUrl::parse(url)?;
    let limit = raise_nofile(n as u64 + 256);
    if limit < n as u64 + 64 {
        eprintln!("warning: the open-file limit is {limit}: fewer than {n} connections may open");
    }
    let rss = || crate::procstat::sample(pid).map(|s| s.rss_bytes);
    let before = rss().with_context(|| format!("reading the memory of pid {pid}"))?;
    let t0 = Instant::now();
    let prefix = format!("ferrymq-bench-idle-{}", std::process::id());
    let mut held = Vec::with_capacity(n);
    let mut error = None;
    let mut next = 0;
    while next < n && error.is_none() {
        let k = IDLE_PARALLEL.min(n - next);
        let tasks: Vec<_> = (next..next + k)
            .map(|i| {
                let (u, id) = (u.clone(), format!("{prefix}-{i}"));
                tokio::spawn(
                    async move { tokio::time::timeout(SETUP_TIMEOUT, idle_one(&u, id)).await },
                )
            })
            .collect();
        for t in tasks {
            match t.await {
                Ok(Ok(Ok(sock))) => held.push(sock),
                Ok(Ok(Err(e))) => {
                    error.get_or_insert(format!("connection {}: {e:#}", held.len()));
                }
                Ok(Err(_)) => {
                    error.get_or_insert(format!("connection {}: timed out", held.len()));
                }
                Err(e) => {
                    error.get_or_insert(format!("{e}"));
                }
            }
        }
        next += k;
    }
    let connect_s = t0.elapsed().as_secs_f64();
    tokio::time::sleep(IDLE_SETTLE).await;
    let after = rss().with_context(|| format!("reading the memory of pid {pid}"))?;
    let connected = held.len();
    drop(held);
    Ok(IdleResult {
        connections: n,
        connected,
        pid,
        rss_before_bytes: before,
        rss_after_bytes: after,
        bytes_per_connection: if connected > 0 {
            after.saturating_sub(before) as f64 / connected as f64
        } else {
            0.0
        },
        connect_s,
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            MqttUrl::parse("mqtt://127.0.0.1:1884").unwrap(),
            MqttUrl {
                host: "127.0.0.1".into(),
                port: 1884,
                user: None,
                password: None
            }
        );
        let u = MqttUrl::parse("mqtt://guest:secret@localhost").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("localhost", 1883));
        assert_eq!(
            (u.user.as_deref(), u.password.as_deref()),
            (Some("guest"), Some("secret"))
        );
        assert_eq!(MqttUrl::parse("mqtt://[::1]:1883/").unwrap().host, "::1");
        assert!(MqttUrl::parse("mqtts://x:8883").is_err());
        assert!(MqttUrl::parse("mqtt://x:port").is_err());
        assert!(MqttUrl::parse("mqtt://x:1883/topic").is_err());
    }

    #[test]
    fn topics_give_one_to_one_and_fan_out() {
        let mut s = Scenario::new("mqtt://x");
        s.queue_prefix = "b".into();
        s.queues = 2;
        assert_eq!(topic(&s, 0), "b/0");
        assert_eq!(topic(&s, 3), "b/1");
        s.consumers = 5;
        s.producers = 2;
        // Topic 0 has consumers 0, 2, 4; topic 1 has 1, 3.
        assert_eq!(crate::harness::copies_of(&s, true, 0), 3);
        assert_eq!(crate::harness::copies_of(&s, true, 1), 2);
        assert_eq!(crate::harness::copies_of(&s, false, 1), 1);
        s.consumers = 0;
        assert_eq!(crate::harness::copies_of(&s, true, 0), 0);
    }

    #[test]
    fn pubacks_settle_the_publish_of_their_packet_id_once() {
        let mut t = PubackTracker::default();
        for seq in 0..3 {
            t.queued(seq, 100 + seq);
        }
        t.sent(1);
        t.sent(2);
        // Acks out of order, a duplicate ack, an unknown id.
        assert_eq!(t.acked(2), Some((1, 101)));
        assert_eq!(t.acked(2), None);
        assert_eq!(t.acked(9), None);
        assert_eq!(t.acked(1), Some((0, 100)));
        // Packet id 1 reused for the next publish.
        t.sent(1);
        assert_eq!(t.acked(1), Some((2, 102)));
        // A packet id with nothing queued (should not happen) maps to nothing.
        t.sent(3);
        assert_eq!(t.acked(3), None);
    }

    #[test]
    fn connect_packet_layout() {
        // Golden bytes of MQTT 3.1.1 section 3.1: "MQTT", level 4, clean session, keep-alive 0.
        assert_eq!(
            connect_packet("ab", None, None),
            [0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0, 0, 2, b'a', b'b']
        );
        let p = connect_packet("c", Some("u"), Some("p"));
        assert_eq!(p[9], 0xc2);
        assert_eq!(&p[12..], &[0, 1, b'c', 0, 1, b'u', 0, 1, b'p']);
        // A long client id needs a two-byte remaining length.
        let long = "x".repeat(200);
        let p = connect_packet(&long, None, None);
        assert_eq!((p[1], p[2]), (0x80 | (212 % 128) as u8, 1));
        assert_eq!(p.len(), 3 + 212);
    }
}
