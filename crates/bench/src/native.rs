//! The native AMQP 0-9-1 driver (`--client native`, the default): a minimal client written
//! on the project's own codec (`ferrymq-amqp-codec`) over a tokio `TcpStream`, so that the
//! load generator costs far less CPU per message than a general-purpose client library and
//! the brokers, not the client, are what a run measures.
//!
//! It speaks only what the benchmark needs: the connection handshake (SASL PLAIN, no
//! heartbeats), one channel (number 1) per connection, `queue.declare` / `queue.delete`,
//! `confirm.select`, `basic.qos`, `basic.publish` and `basic.consume` with `basic.ack`.
//!
//! - Producers encode a whole batch of due messages (method + header + body frames, up to
//!   [`BATCH`] messages) into one buffer and write it with one `write_all`; a reader task per
//!   producer decodes the broker's `basic.ack` / `basic.nack` (usually with `multiple`) and
//!   settles them in a [`ConfirmBook`], which gives the confirm latency of each message and
//!   returns its slot of the confirm window.
//! - Consumers decode every frame a read returned ([`DeliveryAssembler`] puts deliveries
//!   back together), ack every N deliveries with `multiple` ([`AckBatcher`]) and write the
//!   acks of one read together.
//!
//! Whatever the broker sends, a malformed or unexpected answer is an error, never a panic.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use bytes::{Bytes, BytesMut};
use ferrymq_amqp_codec::{
    decode_frame, encode_content, encode_frame, AmqpValue, BasicAck, BasicConsume, BasicProperties,
    BasicPublish, BasicQos, ChannelOpen, ConfirmSelect, ConnectionClose, ConnectionOpen,
    ConnectionStartOk, ConnectionTuneOk, FieldTable, Frame, Method, QueueDeclare, QueueDelete,
    FRAME_MIN_SIZE, PROTOCOL_HEADER,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};

use crate::accounting::Ledger;
use crate::amqp::queue_name;
use crate::harness::{next_due, ConsumerOut, ProducerOut};
use crate::latency::Latency;
use crate::payload::{self, Header, Payload, HEADER_BYTES};
use crate::rate::Schedule;
use crate::run::{Ctx, Scenario, Window, WindowCount};

/// Most messages one producer encodes into one write.
pub const BATCH: usize = 256;
/// The channel every connection of this driver uses.
const CHANNEL: u16 = 1;
/// The largest frame we accept or send (the broker's limit if lower).
const FRAME_MAX: u32 = 131_072;
/// Time allowed to connect, shake hands and declare.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for the broker to answer `connection.close` at the end of a run.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 64 * 1024;

/// The parts of an `amqp://user:pass@host:port/vhost` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpUrl {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub vhost: String,
}

fn percent_decode(s: &str) -> Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .ok_or_else(|| anyhow!("bad percent escape in {s:?}"))?;
            out.push(u8::from_str_radix(hex, 16).with_context(|| format!("bad escape in {s:?}"))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).with_context(|| format!("{s:?} is not UTF-8 once decoded"))
}

/// Parses an AMQP URL the way RabbitMQ's clients do: user and password default to `guest`,
/// the port to 5672, and the vhost (the path, percent-decoded) to `/`.
///
/// # Errors
/// Another scheme than `amqp://` (TLS is not supported by this driver), a bad port or escape.
pub fn parse_url(url: &str) -> Result<AmqpUrl> {
    let rest = url
        .strip_prefix("amqp://")
        .ok_or_else(|| anyhow!("{url:?}: the native client speaks amqp:// only (no TLS)"))?;
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (rest, None),
    };
    let (cred, hostport) = match authority.rsplit_once('@') {
        Some((c, h)) => (Some(c), h),
        None => (None, authority),
    };
    let (user, password) = match cred {
        Some(c) => match c.split_once(':') {
            Some((u, p)) => (percent_decode(u)?, percent_decode(p)?),
            None => (percent_decode(c)?, String::new()),
        },
        None => ("guest".to_string(), "guest".to_string()),
    };
    let (host, port) = match hostport.strip_prefix('[') {
        // [v6 address] or [v6 address]:port
        Some(v6) => {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| anyhow!("unclosed [ in {url:?}"))?;
            match after.strip_prefix(':') {
                Some(p) => (h, p),
                None if after.is_empty() => (h, ""),
                None => bail!("bad host in {url:?}"),
            }
        }
        None => hostport.rsplit_once(':').unwrap_or((hostport, "")),
    };
    let port = if port.is_empty() {
        5672
    } else {
        port.parse::<u16>()
            .with_context(|| format!("bad port in {url:?}"))?
    };
    if host.is_empty() {
        bail!("no host in {url:?}");
    }
    let vhost = match path {
        None | Some("") => "/".to_string(),
        Some(p) => percent_decode(p)?,
    };
    Ok(AmqpUrl {
        host: host.to_string(),
        port,
        user,
        password,
        vhost,
    })
}

/// The receiving half of a connection: a buffer of bytes read and the frames in it.
pub struct FrameReader {
    rd: OwnedReadHalf,
    buf: BytesMut,
    frame_max: u32,
}

impl FrameReader {
    /// The next whole frame already buffered, if any.
    ///
    /// # Errors
    /// A malformed frame.
    pub fn try_next(&mut self) -> Result<Option<Frame>> {
        decode_frame(&mut self.buf, self.frame_max).context("malformed frame from the broker")
    }

    /// Reads more bytes from the socket (cancel-safe).
    ///
    /// # Errors
    /// A socket error, or the broker closing the connection.
    pub async fn fill(&mut self) -> Result<()> {
        self.buf.reserve(READ_CHUNK);
        let n = self
            .rd
            .read_buf(&mut self.buf)
            .await
            .context("reading from the broker")?;
        if n == 0 {
            bail!("the broker closed the connection");
        }
        Ok(())
    }

    /// The next frame, reading as needed.
    ///
    /// # Errors
    /// As [`FrameReader::try_next`] and [`FrameReader::fill`].
    pub async fn next(&mut self) -> Result<Frame> {
        loop {
            if let Some(f) = self.try_next()? {
                return Ok(f);
            }
            self.fill().await?;
        }
    }
}

/// The sending half: frames are encoded into a buffer and written together by `flush`.
pub struct FrameWriter {
    wr: OwnedWriteHalf,
    buf: BytesMut,
    frame_max: u32,
}

impl FrameWriter {
    pub fn method(&mut self, channel: u16, method: impl Into<Method>) {
        encode_frame(
            &Frame::Method {
                channel,
                method: method.into(),
            },
            &mut self.buf,
        );
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

/// The error a `connection.close` or `channel.close` from the broker means, if it is one.
fn close_error(m: &Method) -> Option<anyhow::Error> {
    match m {
        Method::ConnectionClose(c) => Some(anyhow!(
            "the broker closed the connection: {} {} (after {})",
            c.reply_code,
            c.reply_text,
            ferrymq_amqp_codec::method_name(c.class_id, c.method_id).unwrap_or("-")
        )),
        Method::ChannelClose(c) => Some(anyhow!(
            "the broker closed the channel: {} {} (after {})",
            c.reply_code,
            c.reply_text,
            ferrymq_amqp_codec::method_name(c.class_id, c.method_id).unwrap_or("-")
        )),
        _ => None,
    }
}

/// The next method frame, skipping heartbeats; a close from the broker is an error.
async fn next_method(r: &mut FrameReader) -> Result<(u16, Method)> {
    loop {
        match r.next().await? {
            Frame::Method { channel, method } => {
                if let Some(e) = close_error(&method) {
                    return Err(e);
                }
                return Ok((channel, method));
            }
            Frame::Heartbeat { .. } => {}
            f => bail!("unexpected content frame from the broker: {f:?}"),
        }
    }
}

/// Sends a synchronous method and waits for its answer, which must be `expect`.
async fn rpc(
    r: &mut FrameReader,
    w: &mut FrameWriter,
    channel: u16,
    method: impl Into<Method>,
    expect: &str,
) -> Result<Method> {
    let method = method.into();
    let asked = method.name();
    w.method(channel, method);
    w.flush().await?;
    let (ch, m) = next_method(r).await?;
    if ch != channel || m.name() != expect {
        bail!(
            "{asked} on channel {channel}: expected {expect}, got {} on channel {ch}",
            m.name()
        );
    }
    Ok(m)
}

/// An open connection with channel 1 open.
pub struct Session {
    pub r: FrameReader,
    pub w: FrameWriter,
}

/// Connects, shakes hands (PLAIN, no heartbeats) and opens channel 1.
///
/// # Errors
/// Connection refused, authentication refused, an unexpected answer, a timeout.
pub async fn open(url: &str) -> Result<Session> {
    tokio::time::timeout(SETUP_TIMEOUT, open_inner(url))
        .await
        .map_err(|_| anyhow!("connecting to {}: timed out", crate::run::redact(url)))?
        .with_context(|| format!("connecting to {}", crate::run::redact(url)))
}

async fn open_inner(url: &str) -> Result<Session> {
    let u = parse_url(url)?;
    let stream = TcpStream::connect((u.host.as_str(), u.port)).await?;
    stream.set_nodelay(true)?;
    let (rd, wr) = stream.into_split();
    let mut r = FrameReader {
        rd,
        buf: BytesMut::with_capacity(READ_CHUNK),
        frame_max: FRAME_MIN_SIZE,
    };
    let mut w = FrameWriter {
        wr,
        buf: BytesMut::with_capacity(READ_CHUNK),
        frame_max: FRAME_MIN_SIZE,
    };
    w.buf.extend_from_slice(&PROTOCOL_HEADER);
    w.flush().await?;
    let start = match r.next().await {
        Ok(Frame::Method {
            channel: 0,
            method: Method::ConnectionStart(s),
        }) => s,
        Ok(f) => bail!("expected connection.start, got {f:?}"),
        Err(e) => {
            // A broker that does not speak 0-9-1 answers with its own protocol header.
            if r.buf.starts_with(b"AMQP") {
                bail!(
                    "the broker refused AMQP 0-9-1 (it answered {:?})",
                    &r.buf[..]
                );
            }
            return Err(e);
        }
    };
    if !start
        .mechanisms
        .split(|&b| b == b' ')
        .any(|m| m == b"PLAIN")
    {
        bail!(
            "the broker does not offer SASL PLAIN (offers {:?})",
            String::from_utf8_lossy(&start.mechanisms)
        );
    }
    let mut response = Vec::with_capacity(u.user.len() + u.password.len() + 2);
    response.push(0);
    response.extend_from_slice(u.user.as_bytes());
    response.push(0);
    response.extend_from_slice(u.password.as_bytes());
    w.method(
        0,
        ConnectionStartOk {
            client_properties: FieldTable(vec![
                (
                    "product".into(),
                    AmqpValue::LongString(Bytes::from_static(b"ferrymq-bench")),
                ),
                (
                    "platform".into(),
                    AmqpValue::LongString(Bytes::from_static(b"Rust, ferrymq-amqp-codec")),
                ),
            ]),
            mechanism: "PLAIN".into(),
            response: Bytes::from(response),
            locale: "en_US".into(),
        },
    );
    w.flush().await?;
    let tune = match next_method(&mut r).await? {
        (0, Method::ConnectionTune(t)) => t,
        (_, Method::ConnectionSecure(_)) => bail!("the broker asked for a SASL challenge"),
        (ch, m) => bail!("expected connection.tune, got {} on channel {ch}", m.name()),
    };
    let frame_max = match tune.frame_max {
        0 => FRAME_MAX,
        n => n.min(FRAME_MAX),
    };
    let channel_max = match tune.channel_max {
        0 => 2047,
        n => n.min(2047),
    };
    w.method(
        0,
        ConnectionTuneOk {
            channel_max,
            frame_max,
            heartbeat: 0,
        },
    );
    r.frame_max = frame_max;
    w.frame_max = frame_max;
    rpc(
        &mut r,
        &mut w,
        0,
        ConnectionOpen {
            virtual_host: u.vhost.clone(),
        },
        "connection.open-ok",
    )
    .await
    .with_context(|| format!("opening vhost {:?}", u.vhost))?;
    rpc(&mut r, &mut w, CHANNEL, ChannelOpen {}, "channel.open-ok").await?;
    Ok(Session { r, w })
}

impl Session {
    /// Declares a queue (durable or not) and waits for `queue.declare-ok`.
    ///
    /// # Errors
    /// The broker refusing it.
    pub async fn declare_queue(&mut self, name: &str, durable: bool) -> Result<()> {
        rpc(
            &mut self.r,
            &mut self.w,
            CHANNEL,
            QueueDeclare {
                queue: name.into(),
                durable,
                ..Default::default()
            },
            "queue.declare-ok",
        )
        .await
        .map(drop)
        .with_context(|| format!("declaring queue {name}"))
    }

    /// Deletes a queue and waits for `queue.delete-ok`.
    ///
    /// # Errors
    /// The broker refusing it.
    pub async fn delete_queue(&mut self, name: &str) -> Result<()> {
        rpc(
            &mut self.r,
            &mut self.w,
            CHANNEL,
            QueueDelete {
                queue: name.into(),
                ..Default::default()
            },
            "queue.delete-ok",
        )
        .await
        .map(drop)
    }

    /// Sends `connection.close` and waits (briefly) for `connection.close-ok`, discarding
    /// whatever arrives before it. Errors are ignored: the run is over.
    pub async fn close(mut self) {
        send_close(&mut self.w).await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, await_close_ok(&mut self.r)).await;
    }
}

async fn send_close(w: &mut FrameWriter) {
    w.method(
        0,
        ConnectionClose {
            reply_code: 200,
            reply_text: "bench done".into(),
            class_id: 0,
            method_id: 0,
        },
    );
    let _ = w.flush().await;
}

/// Reads until `connection.close-ok` (or the socket closes).
async fn await_close_ok(r: &mut FrameReader) -> Result<()> {
    loop {
        if let Frame::Method {
            method: Method::ConnectionCloseOk(_) | Method::ConnectionClose(_),
            ..
        } = r.next().await?
        {
            return Ok(());
        }
    }
}

/// Publisher-confirm bookkeeping of one channel: delivery tags are 1, 2, 3… in publish
/// order; the broker settles them one by one or with `multiple` (all up to a tag), in any
/// order for single tags.
#[derive(Debug)]
pub struct ConfirmBook {
    /// The delivery tag of `slots[0]`.
    base: u64,
    /// Send stamp of each published message from `base` on; `None` once settled.
    slots: VecDeque<Option<u64>>,
    outstanding: usize,
}

impl Default for ConfirmBook {
    fn default() -> Self {
        ConfirmBook::new()
    }
}

impl ConfirmBook {
    pub fn new() -> ConfirmBook {
        ConfirmBook {
            base: 1,
            slots: VecDeque::new(),
            outstanding: 0,
        }
    }

    /// Records a publish stamped `stamp`; returns its delivery tag.
    pub fn publish(&mut self, stamp: u64) -> u64 {
        self.slots.push_back(Some(stamp));
        self.outstanding += 1;
        self.base + self.slots.len() as u64 - 1
    }

    /// Published, not yet settled.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Settles `tag` (and every earlier one with `multiple`; tag 0 with `multiple` = all),
    /// calling `f(sequence number, stamp)` for each message settled (sequence number =
    /// tag − 1). Returns how many were settled.
    ///
    /// # Errors
    /// A tag never published, or a single tag settled twice: the broker is broken.
    pub fn settle(
        &mut self,
        tag: u64,
        multiple: bool,
        mut f: impl FnMut(u64, u64),
    ) -> Result<usize> {
        let published = self.base + self.slots.len() as u64 - 1;
        if tag > published {
            bail!("the broker confirmed delivery tag {tag}, but only {published} were published");
        }
        let mut settled = 0;
        if multiple {
            let upto = if tag == 0 { published } else { tag };
            let n = upto.saturating_sub(self.base - 1) as usize;
            for (i, slot) in self.slots.iter_mut().take(n).enumerate() {
                if let Some(stamp) = slot.take() {
                    f(self.base + i as u64 - 1, stamp);
                    settled += 1;
                }
            }
        } else {
            let stamp = tag
                .checked_sub(self.base)
                .and_then(|i| self.slots.get_mut(i as usize))
                .and_then(Option::take)
                .ok_or_else(|| anyhow!("the broker confirmed delivery tag {tag} twice"))?;
            f(tag - 1, stamp);
            settled = 1;
        }
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.base += 1;
        }
        self.outstanding -= settled;
        Ok(settled)
    }
}

/// Consumer acknowledgement policy: one `basic.ack` with `multiple` every `every` deliveries.
#[derive(Debug, Clone, Copy)]
pub struct AckBatcher {
    every: u32,
    unacked: u32,
    last: u64,
}

impl AckBatcher {
    /// `every` = 0 means automatic acknowledgement: never ack.
    pub fn new(every: u32) -> AckBatcher {
        AckBatcher {
            every,
            unacked: 0,
            last: 0,
        }
    }

    /// A delivery arrived; returns the tag to ack (with `multiple`) if one is due.
    pub fn delivered(&mut self, tag: u64) -> Option<u64> {
        if self.every == 0 {
            return None;
        }
        self.unacked += 1;
        self.last = tag;
        if self.unacked >= self.every {
            self.unacked = 0;
            Some(tag)
        } else {
            None
        }
    }

    /// What is left to ack at the end.
    pub fn rest(&mut self) -> Option<u64> {
        if self.unacked > 0 {
            self.unacked = 0;
            Some(self.last)
        } else {
            None
        }
    }
}

/// What a consumer's frames amount to.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// A whole delivery: its tag and the benchmark header of its body (`None` if too short).
    Delivery { tag: u64, header: Option<Header> },
    /// Any other method.
    Method(Method),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asm {
    Idle,
    NeedHeader { tag: u64 },
    NeedBody { tag: u64, remaining: u64 },
}

/// Puts `basic.deliver` + content header + body frames back together. Only the first
/// [`HEADER_BYTES`] of a body are kept: that is all the benchmark reads.
#[derive(Debug)]
pub struct DeliveryAssembler {
    state: Asm,
    head: [u8; HEADER_BYTES],
    head_len: usize,
}

impl Default for DeliveryAssembler {
    fn default() -> Self {
        DeliveryAssembler::new()
    }
}

impl DeliveryAssembler {
    pub fn new() -> DeliveryAssembler {
        DeliveryAssembler {
            state: Asm::Idle,
            head: [0; HEADER_BYTES],
            head_len: 0,
        }
    }

    /// Feeds one frame.
    ///
    /// # Errors
    /// Frames out of the spec's order (content without a deliver, a method inside content,
    /// more body than announced).
    pub fn push(&mut self, frame: Frame) -> Result<Option<Event>> {
        match (self.state, frame) {
            (_, Frame::Heartbeat { .. }) => Ok(None),
            (
                Asm::Idle,
                Frame::Method {
                    method: Method::BasicDeliver(d),
                    ..
                },
            ) => {
                self.state = Asm::NeedHeader {
                    tag: d.delivery_tag,
                };
                Ok(None)
            }
            (Asm::Idle, Frame::Method { method, .. }) => Ok(Some(Event::Method(method))),
            (Asm::NeedHeader { tag }, Frame::Header { body_size, .. }) => {
                self.head_len = 0;
                if body_size == 0 {
                    self.state = Asm::Idle;
                    return Ok(Some(Event::Delivery { tag, header: None }));
                }
                self.state = Asm::NeedBody {
                    tag,
                    remaining: body_size,
                };
                Ok(None)
            }
            (Asm::NeedBody { tag, remaining }, Frame::Body { payload, .. }) => {
                let len = payload.len() as u64;
                if len > remaining {
                    bail!("body frame of {len} bytes where {remaining} were left of the message");
                }
                let take = (HEADER_BYTES - self.head_len).min(payload.len());
                self.head[self.head_len..self.head_len + take].copy_from_slice(&payload[..take]);
                self.head_len += take;
                if len == remaining {
                    self.state = Asm::Idle;
                    let header = payload::decode(&self.head[..self.head_len]);
                    return Ok(Some(Event::Delivery { tag, header }));
                }
                self.state = Asm::NeedBody {
                    tag,
                    remaining: remaining - len,
                };
                Ok(None)
            }
            (state, f) => bail!("unexpected frame from the broker in state {state:?}: {f:?}"),
        }
    }
}

/// Publishes as scheduled, `BATCH` due messages per write; a reader task settles confirms.
pub(crate) async fn producer(
    ctx: Arc<Ctx>,
    s: Arc<Scenario>,
    id: usize,
    schedule: Schedule,
    quota: Option<u64>,
) -> Result<ProducerOut> {
    let queue = queue_name(&s, id);
    let Session { mut r, mut w } = open(&s.url).await?;
    if s.confirms {
        rpc(
            &mut r,
            &mut w,
            CHANNEL,
            ConfirmSelect { nowait: false },
            "confirm.select-ok",
        )
        .await?;
    }
    let window = Arc::new(Semaphore::new(s.confirm_window));
    let book = Arc::new(Mutex::new(ConfirmBook::new()));
    let reader = tokio::spawn(confirm_reader(ctx.clone(), r, book.clone(), window.clone()));
    let publish = Method::BasicPublish(BasicPublish {
        exchange: String::new(),
        routing_key: queue.clone(),
        mandatory: false,
        immediate: false,
    });
    let props = BasicProperties {
        delivery_mode: Some(if s.persistent { 2 } else { 1 }),
        ..Default::default()
    };
    let mut payload = Payload::new(s.size);
    let mut published = WindowCount::default();
    let mut seq = 0u64;
    let w_ = ctx.window();
    // Producers start together at the window's start (a fast handshake must not stamp
    // messages before it: they would fall outside the window).
    if w_.producers_start_ns != u64::MAX {
        tokio::time::sleep_until(ctx.at(w_.producers_start_ns).into()).await;
    }
    let mut error: Option<anyhow::Error> = None;
    while let Some(due) = next_due(&ctx, &schedule, seq, quota, BATCH).await {
        let mut n = due;
        if s.confirms {
            match take_window(&window, n).await {
                Some(k) => n = k,
                None => break, // the reader ended: its error is reported below
            }
        }
        {
            let mut book = if s.confirms {
                Some(book.lock().unwrap_or_else(|e| e.into_inner()))
            } else {
                None
            };
            for k in 0..n {
                let i = seq + k as u64;
                let stamp = schedule.stamp_ns(i, ctx.now_ns());
                if let Some(b) = book.as_mut() {
                    b.publish(stamp);
                }
                let body = payload.stamp(Header {
                    producer: id as u32,
                    seq: i,
                    send_ns: stamp,
                });
                encode_content(CHANNEL, &publish, &props, body, w.frame_max, &mut w.buf);
            }
        }
        if let Err(e) = w.flush().await {
            error = Some(e);
            break;
        }
        let after = ctx.now_ns();
        ctx.sent.fetch_add(n as u64, Ordering::Relaxed);
        if w_.contains(after) {
            published.add(n as u64, after);
        }
        seq += n as u64;
    }
    if error.is_none() && s.confirms {
        // Wait for every confirm: the whole window free again, or the reader gone.
        let all = u32::try_from(s.confirm_window).unwrap_or(u32::MAX);
        if let Ok(p) = window.acquire_many(all).await {
            p.forget();
        }
    }
    send_close(&mut w).await;
    let read = match tokio::time::timeout(SETUP_TIMEOUT, reader).await {
        Ok(joined) => joined?,
        Err(_) => Err(anyhow!("no connection.close-ok from the broker")),
    };
    let (confirmed, nacked, confirm) = match read {
        Ok(v) => v,
        Err(e) => {
            error.get_or_insert(e);
            (Default::default(), 0, Latency::new())
        }
    };
    if let Some(e) = error {
        ctx.stop.store(true, Ordering::Relaxed);
        return Err(e.context(format!("producer {id} publishing to {queue}")));
    }
    Ok(ProducerOut {
        ledger: Ledger {
            sent: seq,
            confirmed,
            nacked,
            failed: 0,
        },
        confirm,
        published,
    })
}

/// Takes slots of a confirm window for a batch of up to `n` (at least 1) messages: waits for
/// the first free slot, then takes what else is free now. `None` once the window is closed
/// (its reader ended).
pub(crate) async fn take_window(window: &Semaphore, n: usize) -> Option<usize> {
    window.acquire().await.ok()?.forget();
    let more = window.available_permits().min(n.saturating_sub(1));
    if more > 0
        && window
            .try_acquire_many(more as u32)
            .map(|p| p.forget())
            .is_ok()
    {
        return Some(1 + more);
    }
    Some(1)
}

type Confirmed = (crate::accounting::BitSet, u64, Latency);

/// Reads the producer connection until `connection.close-ok`: settles acks and nacks, frees
/// their window slots. Closes the window on the way out so the writer never waits for it.
async fn confirm_reader(
    ctx: Arc<Ctx>,
    mut r: FrameReader,
    book: Arc<Mutex<ConfirmBook>>,
    window: Arc<Semaphore>,
) -> Result<Confirmed> {
    let out = confirm_loop(&ctx, &mut r, &book, &window).await;
    window.close();
    out
}

async fn confirm_loop(
    ctx: &Ctx,
    r: &mut FrameReader,
    book: &Mutex<ConfirmBook>,
    window: &Semaphore,
) -> Result<Confirmed> {
    let mut confirmed = crate::accounting::BitSet::default();
    let (mut nacked, mut lat) = (0u64, Latency::new());
    let mut w: Option<Window> = None;
    loop {
        r.fill().await?;
        let (mut acked, mut freed) = (0u64, 0usize);
        while let Some(f) = r.try_next()? {
            let (tag, multiple, ack) = match f {
                Frame::Method {
                    method: Method::BasicAck(a),
                    ..
                } => (a.delivery_tag, a.multiple, true),
                Frame::Method {
                    method: Method::BasicNack(n),
                    ..
                } => (n.delivery_tag, n.multiple, false),
                Frame::Method {
                    method: Method::ConnectionCloseOk(_),
                    ..
                } => return Ok((confirmed, nacked, lat)),
                Frame::Method { method, .. } => match close_error(&method) {
                    Some(e) => return Err(e),
                    None => continue,
                },
                _ => continue,
            };
            let now = ctx.now_ns();
            let win = *w.get_or_insert_with(|| ctx.window());
            let mut b = book.lock().unwrap_or_else(|e| e.into_inner());
            freed += b.settle(tag, multiple, |seq, stamp| {
                if ack {
                    confirmed.set(seq);
                    acked += 1;
                    if win.contains(stamp) {
                        lat.record(now.saturating_sub(stamp));
                    }
                } else {
                    nacked += 1;
                }
            })?;
        }
        if acked > 0 {
            ctx.confirmed.fetch_add(acked, Ordering::Relaxed);
        }
        if freed > 0 {
            window.add_permits(freed);
        }
    }
}

/// Consumes one queue until told to stop; acks every `ack_every` deliveries with `multiple`.
pub(crate) async fn consumer(
    ctx: Arc<Ctx>,
    s: Arc<Scenario>,
    id: usize,
    ready: tokio::sync::oneshot::Sender<()>,
    mut stop: watch::Receiver<bool>,
) -> Result<ConsumerOut> {
    let queue = queue_name(&s, id);
    let Session { mut r, mut w } = open(&s.url).await?;
    if s.prefetch > 0 {
        rpc(
            &mut r,
            &mut w,
            CHANNEL,
            BasicQos {
                prefetch_size: 0,
                prefetch_count: s.prefetch,
                global: false,
            },
            "basic.qos-ok",
        )
        .await?;
    }
    rpc(
        &mut r,
        &mut w,
        CHANNEL,
        BasicConsume {
            queue: queue.clone(),
            consumer_tag: format!("bench-consumer-{id}"),
            no_ack: s.ack_every == 0,
            ..Default::default()
        },
        "basic.consume-ok",
    )
    .await
    .with_context(|| format!("consuming from {queue}"))?;
    let _ = ready.send(());
    let mut out = ConsumerOut::new(&s);
    let mut asm = DeliveryAssembler::new();
    let mut acks = AckBatcher::new(s.ack_every);
    let mut win: Option<Window> = None;
    loop {
        tokio::select! {
            biased;
            f = r.fill() => f.with_context(|| format!("consumer {id}"))?,
            _ = stop.changed() => break,
        }
        let now = ctx.now_ns();
        let mut n = 0u64;
        while let Some(f) = r.try_next()? {
            match asm.push(f)? {
                None => {}
                Some(Event::Delivery { tag, header }) => {
                    n += 1;
                    let wnd = win.get_or_insert_with(|| ctx.window());
                    out.delivered(&s, wnd, header, now);
                    if let Some(t) = acks.delivered(tag) {
                        w_ack(&mut w, t);
                    }
                }
                Some(Event::Method(m)) => {
                    if let Some(e) = close_error(&m) {
                        return Err(e.context(format!("consumer {id}")));
                    }
                    if let Method::BasicCancel(_) = m {
                        bail!("consumer {id}: the broker cancelled the consumer on {queue}");
                    }
                }
            }
        }
        if n > 0 {
            ctx.received.fetch_add(n, Ordering::Relaxed);
        }
        w.flush().await?;
    }
    if let Some(t) = acks.rest() {
        w_ack(&mut w, t);
    }
    Session { r, w }.close().await;
    Ok(out)
}

fn w_ack(w: &mut FrameWriter, tag: u64) {
    w.method(
        CHANNEL,
        BasicAck {
            delivery_tag: tag,
            multiple: true,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrymq_amqp_codec::BasicDeliver;

    #[test]
    fn urls() {
        let u = parse_url("amqp://guest:gu%40st@127.0.0.1:5673/%2f").unwrap();
        assert_eq!(
            u,
            AmqpUrl {
                host: "127.0.0.1".into(),
                port: 5673,
                user: "guest".into(),
                password: "gu@st".into(),
                vhost: "/".into(),
            }
        );
        let u = parse_url("amqp://localhost").unwrap();
        assert_eq!(
            (u.port, u.user.as_str(), u.vhost.as_str()),
            (5672, "guest", "/")
        );
        assert_eq!(parse_url("amqp://h/v1").unwrap().vhost, "v1");
        assert_eq!(parse_url("amqp://[::1]:5999/").unwrap().host, "::1");
        assert!(parse_url("amqps://h").is_err());
        assert!(parse_url("amqp://h:99999").is_err());
        assert!(parse_url("amqp://h/%zz").is_err());
        assert!(parse_url("amqp://:5672").is_err());
    }

    #[test]
    fn confirms_single_multiple_and_out_of_order() {
        let mut b = ConfirmBook::new();
        for i in 0..10 {
            assert_eq!(b.publish(100 + i), i + 1);
        }
        let mut seen = Vec::new();
        // Multiple up to 3: sequence numbers 0, 1, 2.
        assert_eq!(b.settle(3, true, |s, t| seen.push((s, t))).unwrap(), 3);
        assert_eq!(seen, vec![(0, 100), (1, 101), (2, 102)]);
        // Single 6 out of order, then multiple 7 settles 4, 5 and 7 only.
        let mut seqs = Vec::new();
        assert_eq!(b.settle(6, false, |s, _| seqs.push(s)).unwrap(), 1);
        assert_eq!(b.settle(7, true, |s, _| seqs.push(s)).unwrap(), 3);
        assert_eq!(seqs, vec![5, 3, 4, 6]);
        assert_eq!(b.outstanding(), 3);
        // A repeated multiple is harmless; a repeated single or an unknown tag is an error.
        assert_eq!(b.settle(7, true, |_, _| {}).unwrap(), 0);
        assert!(b.settle(6, false, |_, _| {}).is_err());
        assert!(b.settle(2, false, |_, _| {}).is_err());
        assert!(b.settle(11, false, |_, _| {}).is_err());
        assert!(b.settle(11, true, |_, _| {}).is_err());
        // Tag 0 with multiple: everything outstanding.
        assert_eq!(b.settle(0, true, |_, _| {}).unwrap(), 3);
        assert_eq!(b.outstanding(), 0);
        assert_eq!(b.publish(0), 11);
        assert_eq!(b.settle(11, false, |s, _| assert_eq!(s, 10)).unwrap(), 1);
        assert!(b.slots.is_empty() && b.base == 12);
    }

    #[test]
    fn acks_every_n_with_the_rest_at_the_end() {
        let mut a = AckBatcher::new(3);
        let due: Vec<_> = (1..=8).map(|t| a.delivered(t)).collect();
        assert_eq!(
            due,
            vec![None, None, Some(3), None, None, Some(6), None, None]
        );
        assert_eq!(a.rest(), Some(8));
        assert_eq!(a.rest(), None);
        let mut auto = AckBatcher::new(0);
        assert_eq!(auto.delivered(1), None);
        assert_eq!(auto.rest(), None);
    }

    fn deliver_bytes(tag: u64, body: &[u8], frame_max: u32) -> BytesMut {
        let mut out = BytesMut::new();
        encode_content(
            CHANNEL,
            &Method::BasicDeliver(BasicDeliver {
                consumer_tag: "c".into(),
                delivery_tag: tag,
                redelivered: false,
                exchange: String::new(),
                routing_key: "q".into(),
            }),
            &BasicProperties::default(),
            body,
            frame_max,
            &mut out,
        );
        out
    }

    fn events(mut buf: BytesMut, frame_max: u32) -> Vec<Event> {
        let mut asm = DeliveryAssembler::new();
        let mut out = Vec::new();
        while let Some(f) = decode_frame(&mut buf, frame_max).unwrap() {
            if let Some(e) = asm.push(f).unwrap() {
                out.push(e);
            }
        }
        assert!(buf.is_empty());
        out
    }

    #[test]
    fn deliveries_are_reassembled_across_frames() {
        let mut p = Payload::new(10_000);
        let h = Header {
            producer: 3,
            seq: 42,
            send_ns: 7,
        };
        let body = p.stamp(h).to_vec();
        // Split over 3 body frames (4,096-byte frames), followed by a small one and a heartbeat.
        let mut buf = deliver_bytes(9, &body, 4096);
        let mut small = Payload::new(16);
        buf.extend_from_slice(&deliver_bytes(10, small.stamp(h), 4096));
        encode_frame(&Frame::Heartbeat { channel: 0 }, &mut buf);
        buf.extend_from_slice(&deliver_bytes(11, b"short", 4096));
        buf.extend_from_slice(&deliver_bytes(12, b"", 4096));
        assert_eq!(
            events(buf, 4096),
            vec![
                Event::Delivery {
                    tag: 9,
                    header: Some(h)
                },
                Event::Delivery {
                    tag: 10,
                    header: Some(h)
                },
                Event::Delivery {
                    tag: 11,
                    header: None
                },
                Event::Delivery {
                    tag: 12,
                    header: None
                },
            ]
        );
    }

    #[test]
    fn frames_out_of_order_are_errors_not_panics() {
        let mut asm = DeliveryAssembler::new();
        let body = Frame::Body {
            channel: 1,
            payload: Bytes::from_static(b"0123456789abcdef"),
        };
        assert!(asm.push(body.clone()).is_err());
        let mut asm = DeliveryAssembler::new();
        let mut buf = deliver_bytes(1, b"0123456789abcdef", 4096);
        let deliver = decode_frame(&mut buf, 4096).unwrap().unwrap();
        let header = decode_frame(&mut buf, 4096).unwrap().unwrap();
        assert_eq!(asm.push(deliver.clone()).unwrap(), None);
        // A method where the header should be.
        assert!(asm.push(deliver.clone()).is_err());
        let mut asm = DeliveryAssembler::new();
        asm.push(deliver).unwrap();
        asm.push(header).unwrap();
        // More body than announced.
        assert!(asm
            .push(Frame::Body {
                channel: 1,
                payload: Bytes::from_static(b"0123456789abcdefX"),
            })
            .is_err());
        // Other methods pass through.
        let mut asm = DeliveryAssembler::new();
        let ok = Method::BasicQosOk(Default::default());
        assert_eq!(
            asm.push(Frame::Method {
                channel: 1,
                method: ok.clone()
            })
            .unwrap(),
            Some(Event::Method(ok))
        );
    }

    #[test]
    fn publishes_coalesce_into_one_buffer_of_whole_frames() {
        // What the producer writes for a batch decodes back to method + header + body per
        // message, in order, with the stamps in place.
        let mut buf = BytesMut::new();
        let publish = Method::BasicPublish(BasicPublish {
            exchange: String::new(),
            routing_key: "q".into(),
            mandatory: false,
            immediate: false,
        });
        let props = BasicProperties {
            delivery_mode: Some(2),
            ..Default::default()
        };
        let mut p = Payload::new(1024);
        for seq in 0..BATCH as u64 {
            let body = p.stamp(Header {
                producer: 0,
                seq,
                send_ns: seq * 10,
            });
            encode_content(CHANNEL, &publish, &props, body, FRAME_MAX, &mut buf);
        }
        let mut n = 0u64;
        while let Some(f) = decode_frame(&mut buf, FRAME_MAX).unwrap() {
            match (n % 3, f) {
                (0, Frame::Method { method, .. }) => assert_eq!(method, publish),
                (
                    1,
                    Frame::Header {
                        properties,
                        body_size,
                        ..
                    },
                ) => {
                    assert_eq!((properties.delivery_mode, body_size), (Some(2), 1024));
                }
                (2, Frame::Body { payload, .. }) => {
                    let h = payload::decode(&payload).unwrap();
                    assert_eq!((h.seq, h.send_ns), (n / 3, n / 3 * 10));
                }
                (_, f) => panic!("frame {n}: {f:?}"),
            }
            n += 1;
        }
        assert_eq!(n, 3 * BATCH as u64);
    }
}
