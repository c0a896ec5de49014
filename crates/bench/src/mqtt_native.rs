//! The native MQTT 3.1.1 driver (`--mqtt-client native`, the default): a minimal client on
//! the project's own codec (`ferrymq-mqtt-codec`) over a tokio `TcpStream`, so that the load
//! generator costs far less CPU per message than `rumqttc` and the brokers, not the client,
//! are what a run measures.
//!
//! It speaks only what the benchmark needs, as a plain MQTT 3.1.1 client that works unchanged
//! against any broker: CONNECT (keep-alive 0, so no PINGREQ is ever due) / CONNACK, SUBSCRIBE
//! / SUBACK, PUBLISH at QoS 0 and 1, PUBACK both ways, DISCONNECT. TCP_NODELAY is on.
//!
//! - Producers encode a whole batch of due publishes (up to [`BATCH`]) into one buffer and
//!   write it with one `write_all`. Every PUBLISH of a producer has the same size, so the codec
//!   encodes one [`PublishTemplate`] and each message copies it and patches its packet id and
//!   payload in place. At QoS 1 packet ids cycle through 1..=65535 in publish order and a
//!   reader task settles PUBACKs in a [`PubackBook`], which gives each message's confirm
//!   latency and returns its slot of the in-flight window (`--confirm-window`, at most
//!   65,535, so a packet id is never reused while in flight).
//! - At QoS 0 nothing acknowledges a publish, so a broker slower than the publisher would
//!   otherwise let megabytes of publishes pile up in the socket buffers (measuring buffer
//!   delay, and taking minutes to drain after the window at a 1 → 100 fan-out): each write
//!   ends with a PINGREQ, and at most [`PING_WINDOW`] may be unanswered.
//! - Subscribers decode every packet a read returned (partial packets stay buffered until the
//!   rest arrives) and write the PUBACKs of one read together.
//!
//! Whatever the broker sends, a malformed or unexpected packet is an error, never a panic.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use bytes::{Bytes, BytesMut};
use ferrymq_mqtt_codec::{
    decode, Connect, Disconnect, Packet, ProtocolVersion, PubResponse, Publish, QoS, Subscribe,
    Subscription, SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch, Semaphore};

use crate::accounting::{BitSet, Ledger};
use crate::harness::{next_due, ConsumerOut, ProducerOut};
use crate::latency::Latency;
use crate::mqtt::{client_id, topic, MqttUrl};
use crate::payload::{self, Header, Payload};
use crate::rate::Schedule;
use crate::run::{Ctx, Scenario, Window, WindowCount};

/// Most publishes one producer encodes into one write.
pub const BATCH: usize = 256;
/// The protocol version spoken.
const VERSION: ProtocolVersion = ProtocolVersion::V3_1_1;
/// Time allowed to connect and subscribe.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for the broker to close a subscriber's connection after its DISCONNECT.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// QoS 0 flow control: at most this many PINGREQs (one after each write) unanswered. The
/// broker answers them in order, so a PINGRESP means it has read every publish before it, and
/// at most this many writes of QoS 0 publishes sit in the socket buffers.
pub const PING_WINDOW: usize = 16;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 256 * 1024;
/// The largest packet accepted from the broker (payloads are at most `--size` plus a topic).
const fn max_packet(size: usize) -> u32 {
    let n = size + 64 * 1024;
    if n > u32::MAX as usize {
        u32::MAX
    } else {
        n as u32
    }
}

/// The receiving half of a connection: the bytes read so far and the packets in them.
pub struct PacketReader<R> {
    rd: R,
    buf: BytesMut,
    max: u32,
}

impl<R: tokio::io::AsyncRead + Unpin> PacketReader<R> {
    pub fn new(rd: R, max: u32) -> PacketReader<R> {
        PacketReader {
            rd,
            buf: BytesMut::with_capacity(READ_CHUNK),
            max,
        }
    }

    /// The next whole packet already buffered, if any (a partial one stays buffered).
    ///
    /// # Errors
    /// A malformed packet, or one over the size limit.
    pub fn try_next(&mut self) -> Result<Option<Packet>> {
        decode(&mut self.buf, VERSION, self.max).context("malformed MQTT packet from the broker")
    }

    /// Reads more bytes from the socket (cancel-safe).
    ///
    /// # Errors
    /// A socket error, or the broker closing the connection (`Ok(false)` for the latter).
    pub async fn fill(&mut self) -> Result<bool> {
        self.buf.reserve(READ_CHUNK);
        let n = self
            .rd
            .read_buf(&mut self.buf)
            .await
            .context("reading from the broker")?;
        Ok(n > 0)
    }

    /// The next packet, reading as needed.
    ///
    /// # Errors
    /// As [`PacketReader::try_next`]; the connection closing.
    pub async fn next(&mut self) -> Result<Packet> {
        loop {
            if let Some(p) = self.try_next()? {
                return Ok(p);
            }
            if !self.fill().await? {
                bail!("the broker closed the connection");
            }
        }
    }
}

/// The sending half: packets are encoded into a buffer and written together by `flush`.
pub struct PacketWriter {
    wr: OwnedWriteHalf,
    buf: BytesMut,
}

impl PacketWriter {
    /// Appends `p` to the buffer.
    ///
    /// # Errors
    /// A packet the codec will not encode (a bad topic, an oversized field).
    pub fn packet(&mut self, p: &Packet) -> Result<()> {
        p.encode(VERSION, &mut self.buf)
            .map(|_| ())
            .map_err(|e| anyhow!("encoding {:?}: {e}", p.packet_type()))
    }

    /// Writes everything buffered in one `write_all`.
    ///
    /// # Errors
    /// A socket error.
    pub async fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.wr
                .write_all(&self.buf)
                .await
                .context("writing to the broker")?;
            self.buf.clear();
        }
        Ok(())
    }
}

/// Encodes a PUBLISH packet by copying one the codec encoded and patching its packet id and
/// payload: every publish of a producer has the same topic, QoS and payload size.
#[derive(Debug, Clone)]
pub struct PublishTemplate {
    bytes: Vec<u8>,
    /// Where the packet id sits (QoS 1), and where the payload starts.
    pkid_at: Option<usize>,
    payload_at: usize,
}

impl PublishTemplate {
    /// # Errors
    /// A topic or payload the codec will not encode.
    pub fn new(topic: &str, qos: QoS, size: usize) -> Result<PublishTemplate> {
        let p = Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.to_string(),
            packet_id: (qos != QoS::AtMostOnce).then_some(1),
            properties: Default::default(),
            payload: Bytes::from(vec![0u8; size]),
        });
        let mut out = BytesMut::new();
        p.encode(VERSION, &mut out)
            .map_err(|e| anyhow!("encoding a PUBLISH to {topic:?}: {e}"))?;
        let payload_at = out.len() - size;
        Ok(PublishTemplate {
            bytes: out.to_vec(),
            pkid_at: (qos != QoS::AtMostOnce).then_some(payload_at - 2),
            payload_at,
        })
    }

    /// Appends the PUBLISH of `payload` (exactly the template's size) with packet id `pkid`
    /// (ignored at QoS 0) to `out`.
    pub fn put(&self, out: &mut BytesMut, pkid: u16, payload: &[u8]) {
        let at = out.len();
        out.extend_from_slice(&self.bytes);
        if let Some(k) = self.pkid_at {
            out[at + k..at + k + 2].copy_from_slice(&pkid.to_be_bytes());
        }
        let p = at + self.payload_at;
        let n = payload.len().min(out.len() - p);
        out[p..p + n].copy_from_slice(&payload[..n]);
    }
}

/// A PINGREQ: fixed header only.
const PINGREQ: [u8; 2] = [0xC0, 0x00];

/// The packet id of the `seq`th QoS 1 publish of a connection: 1..=65535, cyclically.
pub fn packet_id(seq: u64) -> u16 {
    (seq % u64::from(u16::MAX)) as u16 + 1
}

/// QoS 1 publishes awaiting their PUBACK, by packet id: (sequence, stamp).
#[derive(Debug)]
pub struct PubackBook {
    slots: Vec<Option<(u64, u64)>>,
    outstanding: usize,
}

impl Default for PubackBook {
    fn default() -> Self {
        PubackBook {
            slots: vec![None; usize::from(u16::MAX) + 1],
            outstanding: 0,
        }
    }
}

impl PubackBook {
    /// Publish `seq` stamped `stamp` goes out with packet id [`packet_id`]`(seq)`.
    ///
    /// # Errors
    /// That packet id still in flight (a window over 65,535).
    pub fn publish(&mut self, seq: u64, stamp: u64) -> Result<u16> {
        let id = packet_id(seq);
        let slot = &mut self.slots[usize::from(id)];
        if slot.is_some() {
            bail!("packet id {id} is still awaiting its PUBACK");
        }
        *slot = Some((seq, stamp));
        self.outstanding += 1;
        Ok(id)
    }

    /// The PUBACK of `id`: the (sequence, stamp) it settles, once; `None` for an id not in
    /// flight (a duplicate PUBACK).
    pub fn acked(&mut self, id: u16) -> Option<(u64, u64)> {
        let x = self.slots[usize::from(id)].take();
        if x.is_some() {
            self.outstanding -= 1;
        }
        x
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding
    }
}

/// A connected session: CONNECT sent and CONNACK accepted.
pub struct Session {
    pub r: PacketReader<OwnedReadHalf>,
    pub w: PacketWriter,
}

/// Connects to `url` with client id `id`: keep-alive 0 (the broker never expects a PINGREQ).
///
/// # Errors
/// Connection failures, a refused CONNECT, no CONNACK in time.
pub async fn connect(url: &MqttUrl, id: &str, clean: bool, size: usize) -> Result<Session> {
    tokio::time::timeout(SETUP_TIMEOUT, connect_inner(url, id, clean, size))
        .await
        .map_err(|_| anyhow!("{id}: no CONNACK within {SETUP_TIMEOUT:?}"))?
        .with_context(|| format!("{id}: connecting to {}:{}", url.host, url.port))
}

async fn connect_inner(url: &MqttUrl, id: &str, clean: bool, size: usize) -> Result<Session> {
    let sock = TcpStream::connect((url.host.as_str(), url.port)).await?;
    sock.set_nodelay(true)?;
    let (rd, wr) = sock.into_split();
    let mut r = PacketReader::new(rd, max_packet(size));
    let mut w = PacketWriter {
        wr,
        buf: BytesMut::with_capacity(64 * 1024),
    };
    w.packet(&Packet::Connect(Box::new(Connect {
        protocol_version: VERSION,
        clean_start: clean,
        keep_alive: 0,
        client_id: id.to_string(),
        will: None,
        username: url.user.clone(),
        password: url
            .password
            .clone()
            .filter(|_| url.user.is_some())
            .map(Bytes::from),
        properties: Default::default(),
    })))?;
    w.flush().await?;
    match r.next().await? {
        Packet::Connack(c) if !c.reason_code.is_error() => Ok(Session { r, w }),
        Packet::Connack(c) => bail!("the broker refused the connection: {}", c.reason_code),
        p => bail!("expected CONNACK, got {:?}", p.packet_type()),
    }
}

/// Sends DISCONNECT and waits (a little) for the broker to close the connection.
async fn disconnect(mut s: Session) {
    if s.w
        .packet(&Packet::Disconnect(Disconnect::default()))
        .is_ok()
        && s.w.flush().await.is_ok()
    {
        let _ = s.w.wr.shutdown().await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while let Ok(true) = s.r.fill().await {
                s.r.buf.clear();
            }
        })
        .await;
    }
}

fn qos(s: &Scenario) -> QoS {
    if s.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// What a producer's PUBACK reader hands back.
#[derive(Default)]
struct Acks {
    confirmed: BitSet,
    confirm: Latency,
}

/// Publishes as scheduled, up to `BATCH` due messages per write; at QoS 1 a reader task
/// settles PUBACKs and the in-flight window bounds the unacknowledged.
pub(crate) async fn producer(
    ctx: Arc<Ctx>,
    s: Arc<Scenario>,
    id: usize,
    schedule: Schedule,
    quota: Option<u64>,
) -> Result<ProducerOut> {
    let url = MqttUrl::parse(&s.url)?;
    let topic = topic(&s, id);
    let what = format!("MQTT producer {id}");
    let Session { r, mut w } = connect(&url, &client_id(&s, "p", id), true, s.size).await?;
    let qos = qos(&s);
    let track = qos != QoS::AtMostOnce;
    let window_n = s.confirm_window.clamp(1, usize::from(u16::MAX));
    let window = Arc::new(Semaphore::new(window_n));
    let pings = Arc::new(Semaphore::new(PING_WINDOW));
    let book = Arc::new(Mutex::new(PubackBook::default()));
    let closing = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn(puback_reader(
        ctx.clone(),
        r,
        book.clone(),
        [window.clone(), pings.clone()],
        closing.clone(),
        acked.clone(),
    ));
    let template = PublishTemplate::new(&topic, qos, s.size)?;
    let mut payload = Payload::new(s.size);
    let mut published = WindowCount::default();
    let mut seq = 0u64;
    let win = ctx.window();
    if win.producers_start_ns != u64::MAX {
        tokio::time::sleep_until(ctx.at(win.producers_start_ns).into()).await;
    }
    let mut error: Option<anyhow::Error> = None;
    while let Some(due) = next_due(&ctx, &schedule, seq, quota, BATCH).await {
        let mut n = due;
        if track {
            match crate::native::take_window(&window, n).await {
                Some(k) => n = k,
                None => break, // the reader ended: its error is reported below
            }
        } else {
            match pings.acquire().await {
                Ok(p) => p.forget(),
                Err(_) => break, // the reader ended: its error is reported below
            }
        }
        {
            let mut book = track.then(|| book.lock().unwrap_or_else(|e| e.into_inner()));
            for k in 0..n {
                let i = seq + k as u64;
                let stamp = schedule.stamp_ns(i, ctx.now_ns());
                let pkid = match book.as_mut() {
                    Some(b) => match b.publish(i, stamp) {
                        Ok(id) => id,
                        Err(e) => {
                            error = Some(e);
                            break;
                        }
                    },
                    None => 0,
                };
                let body = payload.stamp(Header {
                    producer: id as u32,
                    seq: i,
                    send_ns: stamp,
                });
                template.put(&mut w.buf, pkid, body);
            }
        }
        if error.is_some() {
            break;
        }
        if !track {
            w.buf.extend_from_slice(&PINGREQ);
        }
        if let Err(e) = w.flush().await {
            error = Some(e);
            break;
        }
        let after = ctx.now_ns();
        ctx.sent.fetch_add(n as u64, Ordering::Relaxed);
        if win.contains(after) {
            published.add(n as u64, after);
        }
        seq += n as u64;
    }
    if error.is_none() && track {
        // Wait for every PUBACK: the whole window free again, the reader gone, or no PUBACK
        // for `drain_idle`.
        let all = window_n as u32;
        let mut last = acked.load(Ordering::Relaxed);
        loop {
            match tokio::time::timeout(s.drain_idle, window.acquire_many(all)).await {
                Ok(Ok(p)) => {
                    p.forget();
                    break;
                }
                Ok(Err(_)) => break,
                Err(_) => {
                    let a = acked.load(Ordering::Relaxed);
                    if a == last {
                        break;
                    }
                    last = a;
                }
            }
        }
    }
    closing.store(true, Ordering::Relaxed);
    let _ = w.packet(&Packet::Disconnect(Disconnect::default()));
    if let Err(e) = w.flush().await {
        error.get_or_insert(e);
    }
    let _ = w.wr.shutdown().await;
    // The broker closes once it has read everything before the DISCONNECT: at QoS 0 and the
    // maximum rate that can be several MB of publishes still in the socket buffers.
    let read = match tokio::time::timeout(SETUP_TIMEOUT, reader).await {
        Ok(joined) => joined?,
        Err(_) => Err(anyhow!(
            "the broker did not close the connection after DISCONNECT"
        )),
    };
    let acks = match read {
        Ok(a) => a,
        Err(e) => {
            error.get_or_insert(e);
            Acks::default()
        }
    };
    if let Some(e) = error {
        ctx.stop.store(true, Ordering::Relaxed);
        return Err(e.context(format!("{what} publishing to {topic}")));
    }
    Ok(ProducerOut {
        ledger: Ledger {
            sent: seq,
            confirmed: acks.confirmed,
            nacked: 0,
            failed: 0,
        },
        confirm: acks.confirm,
        published,
    })
}

/// Reads the producer's connection until it closes after our DISCONNECT: settles PUBACKs,
/// frees their window slots. Closes the window on the way out so the writer never waits.
async fn puback_reader(
    ctx: Arc<Ctx>,
    mut r: PacketReader<OwnedReadHalf>,
    book: Arc<Mutex<PubackBook>>,
    windows: [Arc<Semaphore>; 2],
    closing: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> Result<Acks> {
    let [window, pings] = windows;
    let out = puback_loop(&ctx, &mut r, &book, [&window, &pings], &closing, &acked).await;
    window.close();
    pings.close();
    out
}

async fn puback_loop(
    ctx: &Ctx,
    r: &mut PacketReader<OwnedReadHalf>,
    book: &Mutex<PubackBook>,
    [window, pings]: [&Semaphore; 2],
    closing: &AtomicBool,
    acked: &AtomicU64,
) -> Result<Acks> {
    let mut out = Acks::default();
    let mut w: Option<Window> = None;
    loop {
        let open = match r.fill().await {
            Ok(open) => open,
            // A reset after our DISCONNECT is a close like any other.
            Err(_) if closing.load(Ordering::Relaxed) => false,
            Err(e) => return Err(e),
        };
        let mut freed = 0usize;
        while let Some(p) = r.try_next()? {
            let id = match p {
                Packet::Puback(a) => a.packet_id,
                Packet::Pingresp => {
                    pings.add_permits(1);
                    continue;
                }
                p => bail!("unexpected {:?} from the broker", p.packet_type()),
            };
            let now = ctx.now_ns();
            let win = *w.get_or_insert_with(|| ctx.window());
            let settled = book.lock().unwrap_or_else(|e| e.into_inner()).acked(id);
            if let Some((seq, stamp)) = settled {
                out.confirmed.set(seq);
                freed += 1;
                if win.contains(stamp) {
                    out.confirm.record(now.saturating_sub(stamp));
                }
            }
        }
        if freed > 0 {
            ctx.confirmed.fetch_add(freed as u64, Ordering::Relaxed);
            acked.fetch_add(freed as u64, Ordering::Relaxed);
            window.add_permits(freed);
        }
        if !open {
            if closing.load(Ordering::Relaxed) {
                return Ok(out);
            }
            bail!("the broker closed the connection");
        }
    }
}

/// What one read's packets hold for a subscriber: PUBLISH payloads and PUBACKs to send.
/// Unit-testable without a socket.
pub fn on_packet(p: Packet, acks: &mut Vec<u16>) -> Result<Option<Bytes>> {
    match p {
        Packet::Publish(p) => {
            if let (QoS::AtLeastOnce, Some(id)) = (p.qos, p.packet_id) {
                acks.push(id);
            } else if p.qos == QoS::ExactlyOnce {
                bail!("a QoS 2 PUBLISH on a subscription of at most QoS 1");
            }
            Ok(Some(p.payload))
        }
        Packet::Pingresp => Ok(None),
        p => bail!("unexpected {:?} from the broker", p.packet_type()),
    }
}

fn write_acks(w: &mut PacketWriter, acks: &mut Vec<u16>) -> Result<()> {
    for id in acks.drain(..) {
        w.packet(&Packet::Puback(PubResponse::new(id)))?;
    }
    Ok(())
}

/// Subscribes to its topic, then consumes until told to stop; acks QoS 1 deliveries.
pub(crate) async fn consumer(
    ctx: Arc<Ctx>,
    s: Arc<Scenario>,
    id: usize,
    ready: oneshot::Sender<()>,
    mut stop: watch::Receiver<bool>,
) -> Result<ConsumerOut> {
    let url = MqttUrl::parse(&s.url)?;
    let topic = topic(&s, id);
    let what = format!("MQTT subscriber {id}");
    let mut sess = connect(&url, &client_id(&s, "c", id), !s.persistent, s.size).await?;
    sess.w.packet(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Default::default(),
        subscriptions: vec![Subscription {
            filter: topic.clone(),
            options: SubscriptionOptions::qos(qos(&s)),
        }],
    }))?;
    sess.w.flush().await?;
    let mut acks = Vec::new();
    // Messages of an earlier persistent session may come before the SUBACK: acked, not counted.
    let suback = tokio::time::timeout(SETUP_TIMEOUT, async {
        loop {
            match sess.r.next().await? {
                Packet::Suback(a) => return Ok::<_, anyhow::Error>(a),
                p => {
                    on_packet(p, &mut acks)?;
                }
            }
        }
    })
    .await
    .map_err(|_| anyhow!("{what}: no SUBACK within {SETUP_TIMEOUT:?}"))??;
    if suback.reason_codes.iter().any(|c| c.is_error()) {
        bail!("{what}: the broker refused the subscription to {topic}");
    }
    write_acks(&mut sess.w, &mut acks)?;
    sess.w.flush().await?;
    let _ = ready.send(());
    let mut out = ConsumerOut::new(&s);
    let mut win: Option<Window> = None;
    let Session { mut r, mut w } = sess;
    loop {
        let open = tokio::select! {
            biased;
            f = r.fill() => f.with_context(|| what.clone())?,
            _ = stop.changed() => break,
        };
        let now = ctx.now_ns();
        let mut n = 0u64;
        while let Some(p) = r.try_next().with_context(|| what.clone())? {
            let Some(body) = on_packet(p, &mut acks).with_context(|| what.clone())? else {
                continue;
            };
            n += 1;
            let wnd = win.get_or_insert_with(|| ctx.window());
            out.delivered(&s, wnd, payload::decode(&body), now);
        }
        if n > 0 {
            ctx.received.fetch_add(n, Ordering::Relaxed);
        }
        write_acks(&mut w, &mut acks)?;
        w.flush().await.with_context(|| what.clone())?;
        if !open {
            ctx.stop.store(true, Ordering::Relaxed);
            bail!("{what}: the broker closed the connection");
        }
    }
    disconnect(Session { r, w }).await;
    Ok(out)
}

/// Discards the persistent sessions of a `--persistent` run: a clean-session CONNECT with each
/// subscriber's client id, then DISCONNECT.
pub(crate) async fn discard_sessions(s: &Scenario) {
    let Ok(url) = MqttUrl::parse(&s.url) else {
        return;
    };
    for id in 0..s.consumers {
        match connect(&url, &client_id(s, "c", id), true, s.size).await {
            Ok(sess) => disconnect(sess).await,
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(p: &Packet) -> Vec<u8> {
        p.to_bytes(VERSION).unwrap().to_vec()
    }

    fn publish(topic: &str, qos: QoS, id: Option<u16>, payload: &[u8]) -> Packet {
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.into(),
            packet_id: id,
            properties: Default::default(),
            payload: Bytes::copy_from_slice(payload),
        })
    }

    #[test]
    fn the_template_encodes_what_the_codec_encodes() {
        for (qos, id) in [(QoS::AtMostOnce, None), (QoS::AtLeastOnce, Some(0x1234))] {
            for size in [16usize, 200, 1024] {
                let body: Vec<u8> = (0..size).map(|i| i as u8).collect();
                let t = PublishTemplate::new("bench/7", qos, size).unwrap();
                let mut out = BytesMut::from(&b"x"[..]);
                t.put(&mut out, id.unwrap_or(0), &body);
                assert_eq!(&out[1..], encode(&publish("bench/7", qos, id, &body)));
            }
        }
    }

    #[test]
    fn the_qos_0_flow_control_ping_is_the_codecs_pingreq() {
        assert_eq!(PINGREQ.to_vec(), encode(&Packet::Pingreq));
    }

    #[test]
    fn packet_ids_cycle_through_1_to_65535() {
        assert_eq!(packet_id(0), 1);
        assert_eq!(packet_id(65_534), 65_535);
        assert_eq!(packet_id(65_535), 1);
        let mut b = PubackBook::default();
        assert_eq!(b.publish(0, 10).unwrap(), 1);
        assert_eq!(b.publish(1, 11).unwrap(), 2);
        // The same id again while in flight is refused, not overwritten.
        assert!(b.publish(65_535, 12).is_err());
        // Out of order, duplicate and unknown PUBACKs.
        assert_eq!(b.acked(2), Some((1, 11)));
        assert_eq!(b.acked(2), None);
        assert_eq!(b.acked(9), None);
        assert_eq!(b.outstanding(), 1);
        assert_eq!(b.acked(1), Some((0, 10)));
        assert_eq!(b.publish(65_535, 12).unwrap(), 1);
        assert_eq!(b.outstanding(), 1);
    }

    /// Feeds `bytes` to a reader in the given chunk sizes; returns the packets decoded after
    /// each chunk.
    async fn read_in_chunks(bytes: &[u8], chunks: &[usize]) -> Vec<Vec<Packet>> {
        let chunks = split_at_sizes(bytes, chunks);
        let (rd, mut wr) = tokio::io::duplex(1 << 20);
        let mut r = PacketReader::new(rd, max_packet(2048));
        let mut out = Vec::new();
        for c in chunks {
            wr.write_all(&c).await.unwrap();
            assert!(r.fill().await.unwrap());
            let mut got = Vec::new();
            while let Some(p) = r.try_next().unwrap() {
                got.push(p);
            }
            out.push(got);
        }
        drop(wr);
        assert!(!r.fill().await.unwrap(), "end of stream");
        out
    }

    fn split_at_sizes(bytes: &[u8], chunks: &[usize]) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        let mut at = 0;
        for &c in chunks {
            v.push(bytes[at..at + c].to_vec());
            at += c;
        }
        assert_eq!(at, bytes.len());
        v
    }

    #[tokio::test]
    async fn partial_packets_wait_for_the_rest_and_several_come_out_of_one_read() {
        let body: Vec<u8> = (0..1024).map(|i| (i % 251) as u8).collect();
        let a = encode(&publish("t/0", QoS::AtLeastOnce, Some(7), &body));
        let b = encode(&publish("t/0", QoS::AtMostOnce, None, &body[..16]));
        let c = encode(&Packet::Puback(PubResponse::new(9)));
        let all = [a.clone(), b.clone(), c.clone()].concat();
        // One byte (the fixed header's first byte alone), most of the first packet, its last
        // byte together with the whole second and third.
        let got = read_in_chunks(&all, &[1, a.len() - 2, 1 + b.len() + c.len()]).await;
        assert!(got[0].is_empty() && got[1].is_empty());
        assert_eq!(got[2].len(), 3);
        assert_eq!(encode(&got[2][0]), a);
        assert_eq!(encode(&got[2][1]), b);
        assert_eq!(got[2][2], Packet::Puback(PubResponse::new(9)));
        // A split inside the remaining length's bytes (1 KiB needs two).
        let got = read_in_chunks(&a, &[2, a.len() - 2]).await;
        assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), [0, 1]);
    }

    #[tokio::test]
    async fn malformed_input_is_an_error_not_a_panic() {
        let (rd, mut wr) = tokio::io::duplex(1024);
        let mut r = PacketReader::new(rd, max_packet(16));
        // Packet type 0 is reserved.
        wr.write_all(&[0x00, 0x00]).await.unwrap();
        r.fill().await.unwrap();
        assert!(r.try_next().is_err());
        // A PUBLISH longer than the limit is refused from its fixed header alone.
        let (rd, mut wr) = tokio::io::duplex(1024);
        let mut r = PacketReader::new(rd, 100);
        wr.write_all(&[0x30, 0xff, 0xff, 0x03]).await.unwrap();
        r.fill().await.unwrap();
        assert!(r.try_next().is_err());
    }

    #[test]
    fn subscribers_ack_qos_1_and_refuse_what_a_subscriber_never_gets() {
        let mut acks = Vec::new();
        let p = on_packet(publish("t", QoS::AtLeastOnce, Some(5), b"x"), &mut acks).unwrap();
        assert_eq!(p.as_deref(), Some(&b"x"[..]));
        assert!(
            on_packet(publish("t", QoS::AtMostOnce, None, b"y"), &mut acks)
                .unwrap()
                .is_some()
        );
        assert_eq!(acks, [5]);
        assert!(on_packet(Packet::Pingresp, &mut acks).unwrap().is_none());
        assert!(on_packet(Packet::Puback(PubResponse::new(1)), &mut acks).is_err());
    }
}
