//! One AMQP connection: protocol header, handshake (start, SASL, tune, open),
//! the frame loop, heartbeats, flow-control blocking, management close requests
//! and write coalescing (one write per turn of the loop).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferrymq_amqp_codec::{
    decode_frame, encode_frame, AmqpValue, CodecError, FieldTable as AmqpTable, Frame, Method,
    FRAME_MIN_SIZE, PROTOCOL_HEADER,
};
use ferrymq_amqp_codec::{
    ConnectionBlocked, ConnectionClose, ConnectionCloseOk, ConnectionOpenOk, ConnectionStart,
    ConnectionTune, ConnectionUnblocked, ConnectionUpdateSecretOk,
};
use ferrymq_core::clock::now_ms;
use ferrymq_core::queue::ConsumerEvent;
use ferrymq_core::{ConnectionHandle, ConnectionInfo, ConnectionPermit, Limit, Outbox, VHost};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::channel::{Channel, ConfirmDone, Ctx, Release, TxDone};
use crate::error::{code, Exception};
use crate::Shared;

/// Bytes read from the socket per turn at most (bounds work per turn).
const READ_CHUNK: usize = 256 * 1024;
/// Deliveries taken from the sink per turn at most, so reads are not starved.
const DELIVERY_EVENTS_PER_TURN: usize = 64;
/// An empty output buffer larger than this is given back (a burst is over).
const WRITE_KEEP_MAX: usize = 1024 * 1024;
/// How long the last frames (close, close-ok) may take to leave once the loop ends.
const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Events spawned work sends back to the connection task.
pub(crate) enum Completion {
    Confirm(ConfirmDone),
    Tx(TxDone),
}

enum Phase {
    AwaitStartOk,
    AwaitTuneOk,
    AwaitOpen,
    Open,
    /// We sent connection.close and wait for close-ok.
    Closing,
}

/// What ends the loop.
enum End {
    /// Peer closed or I/O failed.
    Io,
    /// Orderly close finished.
    Closed,
}

/// Answers a connection over the limit with connection.close after the header.
pub(crate) async fn refuse<S>(mut stream: S, why: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut header = [0u8; 8];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut header)).await;
    if read.is_err() {
        return;
    }
    let mut out = BytesMut::new();
    let close = Method::ConnectionClose(ConnectionClose {
        reply_code: code::NOT_ALLOWED,
        reply_text: format!("NOT_ALLOWED - {why}"),
        class_id: 0,
        method_id: 0,
    });
    encode_frame(
        &Frame::Method {
            channel: 0,
            method: close,
        },
        &mut out,
    );
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

struct Conn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    out: BytesMut,
    phase: Phase,
    frame_max: u32,
    channel_max: u16,
    heartbeat_s: u16,
    user: String,
    /// The identity the transport verified (TLS client certificate CN): offers `EXTERNAL`.
    identity: Option<String>,
    /// Admission permit, held for the connection's life (per-user count after open).
    permit: ConnectionPermit,
    client_properties: AmqpTable,
    vhost: Option<Arc<VHost>>,
    handle: Option<Arc<ConnectionHandle>>,
    channels: BTreeMap<u16, Channel>,
    ctx: Ctx,
    last_read: Instant,
    last_write: Instant,
    /// A publish has been seen (only publishing connections are blocked).
    published: bool,
    blocked: bool,
    /// Reads wait for the client to take the output backlog ([`Outbox::pause_reads`]).
    reads_paused: bool,
    /// No-ack send windows to give back once the output reaches each mark (bytes written
    /// over the connection's life), in mark order.
    unwritten_no_ack: VecDeque<(u64, Release)>,
}

fn capability(props: &AmqpTable, name: &str) -> bool {
    match props.get("capabilities") {
        Some(AmqpValue::Table(t)) => matches!(t.get(name), Some(AmqpValue::Bool(true))),
        _ => false,
    }
}

fn server_properties() -> AmqpTable {
    let mut caps = AmqpTable::default();
    for c in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
        "consumer_priorities",
    ] {
        caps.insert(c, AmqpValue::Bool(true));
    }
    let s = |v: &str| AmqpValue::LongString(Bytes::copy_from_slice(v.as_bytes()));
    let mut p = AmqpTable::default();
    p.insert("capabilities", AmqpValue::Table(caps));
    p.insert("product", s("FerryMQ"));
    p.insert("version", s(env!("CARGO_PKG_VERSION")));
    p.insert("platform", s("Rust"));
    p.insert("copyright", s("The FerryMQ authors"));
    p.insert("information", s("Licensed under Apache-2.0"));
    p.insert("cluster_name", s("ferrymq"));
    p
}

/// Parses a SASL response: PLAIN is `authzid\0user\0password`; AMQPLAIN is a
/// field table (without its length prefix) with LOGIN and PASSWORD.
fn parse_sasl(mechanism: &str, response: &[u8]) -> Option<(String, String)> {
    match mechanism {
        "PLAIN" => {
            let mut parts = response.split(|b| *b == 0);
            let _authzid = parts.next()?;
            let user = std::str::from_utf8(parts.next()?).ok()?.to_owned();
            let pass = std::str::from_utf8(parts.next()?).ok()?.to_owned();
            Some((user, pass))
        }
        "AMQPLAIN" => {
            // A field table body without its length prefix; only long strings matter.
            let (mut login, mut password) = (None, None);
            let mut rest = response;
            while !rest.is_empty() {
                let klen = *rest.first()? as usize;
                let key = rest.get(1..1 + klen)?;
                rest = &rest[1 + klen..];
                if rest.first() != Some(&b'S') {
                    return None;
                }
                let len = u32::from_be_bytes(rest.get(1..5)?.try_into().ok()?) as usize;
                let val = std::str::from_utf8(rest.get(5..5usize.checked_add(len)?)?).ok()?;
                rest = &rest[5 + len..];
                match key {
                    b"LOGIN" => login = Some(val.to_owned()),
                    b"PASSWORD" => password = Some(val.to_owned()),
                    _ => {}
                }
            }
            Some((login?, password?))
        }
        _ => None,
    }
}

/// Runs one connection to its end; `identity` is the peer's verified certificate name.
pub(crate) async fn run<S>(
    shared: Arc<Shared>,
    mut stream: S,
    peer: SocketAddr,
    identity: Option<String>,
    mut stop: watch::Receiver<bool>,
    permit: ConnectionPermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Protocol header, within the handshake deadline.
    let deadline = Duration::from_millis(shared.config.handshake_timeout_ms.max(1));
    let mut header = [0u8; 8];
    match tokio::time::timeout(deadline, stream.read_exact(&mut header)).await {
        Ok(Ok(_)) if header == PROTOCOL_HEADER => {}
        Ok(Ok(_)) => {
            tracing::debug!(%peer, ?header, "wrong AMQP protocol header");
            let _ = stream.write_all(&PROTOCOL_HEADER).await;
            let _ = stream.shutdown().await;
            return;
        }
        Ok(Err(_)) => return,
        Err(_) => {
            tracing::info!(%peer, "closing AMQP connection: handshake timeout");
            shared
                .broker
                .admission()
                .refused(Limit::HandshakeTimeout, crate::PROTOCOL);
            return;
        }
    }
    let (sink_tx, mut sink_rx) = mpsc::unbounded_channel::<ConsumerEvent>();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Completion>();
    let now = Instant::now();
    let mut conn = Conn {
        ctx: Ctx::new(shared.clone(), sink_tx, done_tx),
        shared: shared.clone(),
        peer,
        out: BytesMut::with_capacity(16 * 1024),
        phase: Phase::AwaitStartOk,
        frame_max: shared.config.frame_max.max(FRAME_MIN_SIZE),
        channel_max: shared.config.channel_max,
        heartbeat_s: 0,
        user: String::new(),
        identity,
        permit,
        client_properties: AmqpTable::default(),
        vhost: None,
        handle: None,
        channels: BTreeMap::new(),
        last_read: now,
        last_write: now,
        published: false,
        blocked: false,
        reads_paused: false,
        unwritten_no_ack: VecDeque::new(),
    };
    conn.send(
        0,
        Method::ConnectionStart(ConnectionStart {
            version_major: 0,
            version_minor: 9,
            server_properties: server_properties(),
            // EXTERNAL only with a verified client certificate (rabbitmq_auth_mechanism_ssl).
            mechanisms: if conn.identity.is_some() {
                Bytes::from_static(b"EXTERNAL PLAIN AMQPLAIN")
            } else {
                Bytes::from_static(b"PLAIN AMQPLAIN")
            },
            locales: Bytes::from_static(b"en_US"),
        }),
    );
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut inbuf = BytesMut::with_capacity(16 * 1024);
    let mut flow = shared.broker.flow();
    let mut close_req: Option<watch::Receiver<Option<String>>> = None;
    let handshake_deadline = Instant::now() + deadline;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut outbox = Outbox::new(
        shared
            .broker
            .admission()
            .limits()
            .connection_buffer_max_bytes,
    );
    let end = loop {
        for ch in conn.channels.values() {
            ch.sync_registration();
        }
        if outbox.waiting(&conn.out) {
            match outbox.write_now(&mut wr, &mut conn.out).await {
                Ok(0) => {}
                Ok(_) => {
                    conn.last_write = Instant::now();
                    conn.release_written(outbox.written());
                }
                Err(_) => break End::Io,
            }
        }
        if outbox.exceeded(&conn.out) {
            // A client that does not read what it is sent (deliveries, answers).
            shared
                .broker
                .admission()
                .refused(Limit::ConnectionBuffer, crate::PROTOCOL);
            let limit = outbox.limit();
            conn.close_with(Exception::connection(
                code::RESOURCE_ERROR,
                format!("more than {limit} bytes wait for the client to read them (limits.connection_buffer_max_bytes)"),
            ));
            break End::Io;
        }
        if conn.out.is_empty() && conn.out.capacity() > WRITE_KEEP_MAX {
            conn.out = BytesMut::with_capacity(16 * 1024);
        }
        conn.reads_paused = outbox.pause_reads(&conn.out);
        let paused = (conn.blocked && conn.published) || conn.reads_paused;
        tokio::select! {
            r = outbox.write_some(&mut wr, &mut conn.out), if outbox.waiting(&conn.out) => {
                match r {
                    Ok(0) => {}
                    Ok(_) => {
                        conn.last_write = Instant::now();
                        conn.release_written(outbox.written());
                    }
                    Err(_) => break End::Io,
                }
            }
            r = rd.read_buf(&mut inbuf), if !paused && inbuf.len() < READ_CHUNK => {
                match r {
                    Ok(0) | Err(_) => break End::Io,
                    Ok(_) => {
                        conn.last_read = Instant::now();
                        match conn.on_bytes(&mut inbuf) {
                            Ok(true) => {}
                            Ok(false) => break End::Closed,
                            Err(()) => break End::Closed,
                        }
                        if close_req.is_none() {
                            close_req = conn.handle.as_ref().map(|h| h.close_requested());
                        }
                    }
                }
            }
            Some(ev) = sink_rx.recv() => {
                conn.on_consumer_event(ev);
                for _ in 1..DELIVERY_EVENTS_PER_TURN {
                    match sink_rx.try_recv() {
                        Ok(ev) => conn.on_consumer_event(ev),
                        Err(_) => break,
                    }
                }
                let end = outbox.written() + conn.out.len() as u64;
                for r in conn.ctx.take_encoded_no_ack() {
                    conn.unwritten_no_ack.push_back((end, r));
                }
            }
            Some(done) = done_rx.recv() => conn.on_completion(done),
            Ok(()) = flow.changed() => {
                let state = *flow.borrow_and_update();
                conn.on_flow(state.blocked(), state.memory_alarm);
            }
            Some(Ok(())) = async { match close_req.as_mut() { Some(rx) => Some(rx.changed().await), None => None } } => {
                let reason = close_req.as_ref().and_then(|rx| rx.borrow().clone()).unwrap_or_default();
                conn.close_with(Exception::connection(code::CONNECTION_FORCED, format!("Closed via management plugin: {reason}")));
            }
            Ok(()) = stop.changed() => {
                if *stop.borrow() {
                    conn.close_with(Exception::connection(code::CONNECTION_FORCED, "broker forced connection closure with reason 'shutdown'"));
                }
            }
            _ = tick.tick() => {
                if let Err(why) = conn.on_tick(handshake_deadline) {
                    tracing::info!(peer = %conn.peer, why, "closing AMQP connection");
                    break End::Io;
                }
            }
        }
    };
    outbox
        .finish(&mut wr, &mut conn.out, FINAL_WRITE_TIMEOUT)
        .await;
    // Deliveries still in the sink go back to their queues (later ones are undone by the
    // queues themselves once the sink is closed).
    sink_rx.close();
    while let Ok(ev) = sink_rx.try_recv() {
        if let ConsumerEvent::Deliver(ds) = ev {
            conn.ctx.return_undelivered(ds);
        }
    }
    conn.cleanup();
    if let End::Io = end {
        tracing::debug!(peer = %conn.peer, "AMQP connection ended by peer");
    }
}

impl Conn {
    fn send(&mut self, channel: u16, method: Method) {
        encode_frame(&Frame::Method { channel, method }, &mut self.out);
    }

    /// Sends connection.close and waits for close-ok (frames other than close and
    /// close-ok are then ignored, as the spec says).
    fn close_with(&mut self, e: Exception) {
        if matches!(self.phase, Phase::Closing) {
            return;
        }
        tracing::info!(peer = %self.peer, code = e.code, text = %e.text, "closing AMQP connection");
        self.ctx
            .flush_publishes(&mut self.channels, &mut self.out, self.frame_max);
        self.send(
            0,
            Method::ConnectionClose(ConnectionClose {
                reply_code: e.code,
                reply_text: e.reply_text(),
                class_id: e.class_id,
                method_id: e.method_id,
            }),
        );
        self.phase = Phase::Closing;
    }

    /// Decodes and handles every complete frame. Ok(false) ends the connection.
    fn on_bytes(&mut self, inbuf: &mut BytesMut) -> Result<bool, ()> {
        loop {
            let max = if matches!(self.phase, Phase::Open | Phase::Closing) {
                self.frame_max
            } else {
                FRAME_MIN_SIZE.max(self.frame_max)
            };
            match decode_frame(inbuf, max) {
                Ok(None) => break,
                Ok(Some(frame)) => match self.on_frame(frame) {
                    Ok(true) => {}
                    Ok(false) => return Ok(false),
                    Err(e) => self.exception(e),
                },
                Err(e) => {
                    self.codec_error(e);
                    // The stream can't be resynchronised after a framing error.
                    inbuf.clear();
                    return Ok(false);
                }
            }
        }
        // One batch publish for everything this read completed.
        self.ctx
            .flush_publishes(&mut self.channels, &mut self.out, self.frame_max);
        Ok(true)
    }

    fn codec_error(&mut self, e: CodecError) {
        let reply = e.reply_code();
        tracing::info!(peer = %self.peer, error = %e, "malformed AMQP input");
        self.phase = Phase::Open; // allow close_with to send
        self.close_with(Exception::connection(reply, e.to_string()));
    }

    /// A connection exception (channel ones are handled where the channel is known).
    fn exception(&mut self, e: Exception) {
        self.close_with(e);
    }

    /// Handles one frame. Ok(false) = the connection is done.
    fn on_frame(&mut self, frame: Frame) -> Result<bool, Exception> {
        if let Frame::Heartbeat { .. } = frame {
            return Ok(true);
        }
        match self.phase {
            Phase::Closing => {
                // Only close and close-ok matter now.
                return Ok(match frame {
                    Frame::Method {
                        channel: 0,
                        method: Method::ConnectionCloseOk(_),
                    } => false,
                    Frame::Method {
                        channel: 0,
                        method: Method::ConnectionClose(_),
                    } => {
                        self.send(0, Method::ConnectionCloseOk(ConnectionCloseOk {}));
                        false
                    }
                    _ => true,
                });
            }
            Phase::Open => {}
            _ => return self.handshake(frame),
        }
        match frame {
            Frame::Method { channel: 0, method } => self.connection_method(method),
            Frame::Method { channel, method } => {
                if channel > self.channel_max {
                    self.shared
                        .broker
                        .admission()
                        .refused(Limit::Channels, crate::PROTOCOL);
                    return Err(Exception::connection(
                        code::CHANNEL_ERROR,
                        format!(
                            "channel {channel} is above channel_max {}",
                            self.channel_max
                        ),
                    ));
                }
                let r = self.ctx.on_method(
                    &mut self.channels,
                    channel,
                    method,
                    &mut self.out,
                    self.frame_max,
                    &mut self.published,
                );
                self.channel_result(channel, r)
            }
            Frame::Header {
                channel,
                class_id,
                body_size,
                properties,
            } => {
                let r = self.ctx.on_header(
                    &mut self.channels,
                    channel,
                    class_id,
                    body_size,
                    properties,
                );
                self.channel_result(channel, r)
            }
            Frame::Body { channel, payload } => {
                let r = self.ctx.on_body(&mut self.channels, channel, payload);
                self.channel_result(channel, r)
            }
            Frame::Heartbeat { .. } => Ok(true),
        }
    }

    fn channel_result(
        &mut self,
        channel: u16,
        r: Result<(), Exception>,
    ) -> Result<bool, Exception> {
        match r {
            Ok(()) => Ok(true),
            Err(e) if e.connection => Err(e),
            Err(e) => {
                self.ctx.channel_exception(
                    &mut self.channels,
                    channel,
                    e,
                    &mut self.out,
                    self.frame_max,
                );
                Ok(true)
            }
        }
    }

    fn handshake(&mut self, frame: Frame) -> Result<bool, Exception> {
        let Frame::Method { channel: 0, method } = frame else {
            return Err(Exception::connection(
                code::UNEXPECTED_FRAME,
                "expected a connection method during the handshake",
            ));
        };
        match (&self.phase, method) {
            (Phase::AwaitStartOk, Method::ConnectionStartOk(ok)) => {
                self.client_properties = ok.client_properties.clone();
                let login = match (&*ok.mechanism, &self.identity) {
                    ("EXTERNAL", Some(id)) => {
                        let id = id.clone();
                        self.shared
                            .broker
                            .authenticate_external(&id, Some(self.peer.ip()))
                            .map(|_| id)
                    }
                    (mechanism, _) => {
                        let Some((user, pass)) = parse_sasl(mechanism, &ok.response) else {
                            return Err(Exception::connection(
                                code::ACCESS_REFUSED,
                                format!("unsupported or malformed SASL mechanism {mechanism}"),
                            )
                            .at(10, 11));
                        };
                        self.shared
                            .broker
                            .authenticate(&user, &pass, Some(self.peer.ip()))
                            .map(|_| user)
                    }
                };
                let user = match login {
                    Ok(user) => user,
                    Err(e) => {
                        let text = e.to_string();
                        let text = text
                            .split_once(" - ")
                            .map(|(_, t)| t.to_owned())
                            .unwrap_or(text);
                        return Err(Exception::connection(code::ACCESS_REFUSED, text).at(10, 11));
                    }
                };
                self.user = user;
                self.phase = Phase::AwaitTuneOk;
                self.send(
                    0,
                    Method::ConnectionTune(ConnectionTune {
                        channel_max: self.shared.config.channel_max,
                        frame_max: self.shared.config.frame_max,
                        heartbeat: self.shared.config.heartbeat_s,
                    }),
                );
                Ok(true)
            }
            (Phase::AwaitTuneOk, Method::ConnectionTuneOk(t)) => {
                let ours = self.shared.config.frame_max;
                if t.frame_max != 0 && t.frame_max < FRAME_MIN_SIZE {
                    return Err(Exception::connection(
                        code::NOT_ALLOWED,
                        format!("frame_max={} < {FRAME_MIN_SIZE} min size", t.frame_max),
                    )
                    .at(10, 31));
                }
                if t.frame_max > ours && ours != 0 {
                    return Err(Exception::connection(
                        code::NOT_ALLOWED,
                        format!("frame_max={} > {ours} max size", t.frame_max),
                    )
                    .at(10, 31));
                }
                self.frame_max = if t.frame_max == 0 { ours } else { t.frame_max };
                let cm = self.shared.config.channel_max;
                self.channel_max = if t.channel_max == 0 {
                    cm
                } else {
                    t.channel_max.min(cm)
                };
                self.heartbeat_s = t.heartbeat;
                self.phase = Phase::AwaitOpen;
                Ok(true)
            }
            (Phase::AwaitOpen, Method::ConnectionOpen(open)) => {
                let vh = match self
                    .shared
                    .broker
                    .open_vhost(&self.user, &open.virtual_host)
                {
                    Ok(vh) => vh,
                    Err(e) => {
                        let text = e.to_string();
                        let text = text
                            .split_once(" - ")
                            .map(|(_, t)| t.to_owned())
                            .unwrap_or(text);
                        return Err(Exception::connection(code::NOT_ALLOWED, text).at(10, 40));
                    }
                };
                // The per-user limit, checked where RabbitMQ checks its user and vhost
                // connection limits (connection.open, 530 NOT_ALLOWED).
                if let Err(e) = self.permit.authenticated(&self.user) {
                    return Err(Exception::connection(code::NOT_ALLOWED, e.message).at(10, 40));
                }
                let info = ConnectionInfo {
                    protocol: "amqp-0-9-1".into(),
                    peer: self.peer.to_string(),
                    user: self.user.clone(),
                    vhost: vh.name.clone(),
                };
                let handle = self.shared.broker.register_connection(info).map_err(|e| {
                    self.shared
                        .broker
                        .admission()
                        .refused(Limit::VhostConnections, crate::PROTOCOL);
                    let e: Exception = e.into();
                    Exception::connection(code::NOT_ALLOWED, e.text).at(10, 40)
                })?;
                self.ctx.open(
                    vh.clone(),
                    handle.clone(),
                    self.user.clone(),
                    capability(&self.client_properties, "consumer_cancel_notify"),
                );
                self.vhost = Some(vh);
                self.handle = Some(handle);
                self.phase = Phase::Open;
                self.send(0, Method::ConnectionOpenOk(ConnectionOpenOk {}));
                // Tell a newly opened connection about an active alarm.
                let state = *self.shared.broker.flow().borrow();
                self.on_flow(state.blocked(), state.memory_alarm);
                Ok(true)
            }
            (_, Method::ConnectionClose(_)) => {
                self.send(0, Method::ConnectionCloseOk(ConnectionCloseOk {}));
                Ok(false)
            }
            (_, m) => Err(Exception::connection(
                code::COMMAND_INVALID,
                format!("unexpected {} during the handshake", m.name()),
            )
            .at(m.class_id(), m.method_id())),
        }
    }

    fn connection_method(&mut self, method: Method) -> Result<bool, Exception> {
        match method {
            Method::ConnectionClose(_) => {
                self.ctx
                    .flush_publishes(&mut self.channels, &mut self.out, self.frame_max);
                self.send(0, Method::ConnectionCloseOk(ConnectionCloseOk {}));
                Ok(false)
            }
            Method::ConnectionCloseOk(_) => Ok(false),
            Method::ConnectionUpdateSecret(_) => {
                // No token-based authentication yet: the secret is accepted as is.
                self.send(
                    0,
                    Method::ConnectionUpdateSecretOk(ConnectionUpdateSecretOk {}),
                );
                Ok(true)
            }
            Method::ConnectionBlocked(_) | Method::ConnectionUnblocked(_) => Ok(true),
            // RabbitMQ's answer to a non-connection method on channel 0.
            m if m.class_id() != 10 => Err(Exception::connection(
                code::CHANNEL_ERROR,
                "unexpected method in connection state running",
            )
            .at(m.class_id(), m.method_id())),
            m => Err(
                Exception::connection(code::COMMAND_INVALID, "unimplemented method")
                    .at(m.class_id(), m.method_id()),
            ),
        }
    }

    /// Gives back the send window of no-ack deliveries the socket has now taken.
    fn release_written(&mut self, written: u64) {
        if self
            .unwritten_no_ack
            .front()
            .is_none_or(|(end, _)| *end > written)
        {
            return;
        }
        let now = now_ms();
        while let Some((end, _)) = self.unwritten_no_ack.front() {
            if *end > written {
                break;
            }
            if let Some((_, r)) = self.unwritten_no_ack.pop_front() {
                r.apply(now);
            }
        }
    }

    fn on_consumer_event(&mut self, ev: ConsumerEvent) {
        self.ctx
            .on_consumer_event(&mut self.channels, ev, &mut self.out, self.frame_max);
    }

    fn on_completion(&mut self, done: Completion) {
        match done {
            Completion::Confirm(c) => {
                self.ctx
                    .on_confirm_done(&mut self.channels, c, &mut self.out)
            }
            Completion::Tx(t) => self.ctx.on_tx_done(&mut self.channels, t, &mut self.out),
        }
    }

    fn on_flow(&mut self, blocked: bool, memory: bool) {
        if blocked == self.blocked || !matches!(self.phase, Phase::Open) {
            self.blocked = blocked;
            return;
        }
        self.blocked = blocked;
        if !capability(&self.client_properties, "connection.blocked") {
            return;
        }
        if blocked {
            let reason = if memory {
                "low on memory"
            } else {
                "low on disk"
            };
            self.send(
                0,
                Method::ConnectionBlocked(ConnectionBlocked {
                    reason: reason.into(),
                }),
            );
        } else {
            self.send(0, Method::ConnectionUnblocked(ConnectionUnblocked {}));
        }
    }

    /// Heartbeats and deadlines. Err = drop the connection.
    fn on_tick(&mut self, handshake_deadline: Instant) -> Result<(), &'static str> {
        let now = Instant::now();
        if !matches!(self.phase, Phase::Open | Phase::Closing) {
            if now > handshake_deadline {
                self.shared
                    .broker
                    .admission()
                    .refused(Limit::HandshakeTimeout, crate::PROTOCOL);
                return Err("handshake timeout");
            }
            return Ok(());
        }
        if self.heartbeat_s == 0 {
            return Ok(());
        }
        let hb = Duration::from_secs(self.heartbeat_s as u64);
        let paused = self.blocked && self.published;
        // While reads wait for the client to take its backlog, the client's liveness is
        // its reading: progress on our writes.
        let heard = if self.reads_paused {
            self.last_write
        } else {
            self.last_read
        };
        if !paused && now.duration_since(heard) > hb * 2 {
            return Err("missed heartbeats from client");
        }
        if now.duration_since(self.last_write) >= hb / 2 && self.out.is_empty() {
            encode_frame(&Frame::Heartbeat { channel: 0 }, &mut self.out);
        }
        Ok(())
    }

    /// Cancels consumers, requeues unacked deliveries, unregisters the connection
    /// (deleting its exclusive queues).
    fn cleanup(&mut self) {
        let ids: Vec<u16> = self.channels.keys().copied().collect();
        for id in ids {
            self.ctx.close_channel(&mut self.channels, id);
        }
        if let Some(h) = self.handle.take() {
            self.shared.broker.unregister_connection(h.id);
        }
    }
}
