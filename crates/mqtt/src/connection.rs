//! One MQTT connection over any byte stream: CONNECT (authentication, session takeover,
//! the session queue), then a `select!` loop over socket reads, consumer deliveries,
//! durable-publish completions, resource alarms, takeover and management close requests,
//! shutdown and the keep-alive deadline. All output goes to one buffer, written as the
//! socket takes it without stalling the loop ([`Outbox`]: reads pause while the client
//! does not take its backlog, and a backlog past `limits.connection_buffer_max_bytes` ends
//! the connection); the read buffer is allocated on demand and dropped when large and
//! empty, so an idle connection holds little memory.
//!
//! # QoS 2 state across a restart (persistent sessions)
//!
//! A persistent session's QoS 2 packet ids are written to its record in the keyed log
//! `session::STATE_LOG_KIND` (one snapshot of both sets per read turn that changed them,
//! at the storage's tier, T2 by default). The message goes to the core's queue logs and the
//! id to that record: two logs, so neither order makes them atomic, and each order fails
//! differently when the broker dies between the two writes. The orders below fail towards
//! a duplicate (at-least-once), never towards a loss; the window is one group-commit round.
//!
//! Inbound (MQTT 3.1.1 and 5.0 §4.3.3, the receiver's "Method B": store the id, deliver
//! onward at once, answer a PUBLISH with a stored id as a duplicate until PUBREL):
//! - the id is written **after the message is durable**, and PUBREC is released only once
//!   the id is durable too. An id durable without its message would make the client's
//!   resend look like a duplicate: PUBREC, nothing published, the message lost. A message
//!   durable without its id (a crash between the two) is published again on the resend: a
//!   duplicate. (Writing the id in the same round as the message instead would leave the
//!   order within the round to the sync thread: a loss possible as well.)
//!   `SessionState::inbound_durable` is the part of the in-memory set that is persisted;
//!   within a broker run the registry hands the whole set to the next connection.
//! - at PUBREL the removal is durable **before PUBCOMP**: after PUBCOMP the client may reuse
//!   the id for a new message, which a stale id resurrected by a crash would swallow. A
//!   removal lost before PUBCOMP is harmless: the client resends PUBREL.
//!
//! Outbound (the server sends; the core message is acked when the client PUBRECs):
//! - the PUBREC'd id is durable **before the core ack and before PUBREL**. A core ack
//!   durable without the id would lose the session's promise to send PUBREL: a client that
//!   holds its id until PUBREL (Method A receivers hold the message too) is left waiting,
//!   and its receiver may take our next PUBLISH with that id for a duplicate. An id durable
//!   without the ack (crash in between) means the message comes again under a new id next to
//!   the resent PUBREL: a duplicate. PUBREL after the id is durable also means a client that
//!   saw PUBREL gets it again after a crash until it answers PUBCOMP.
//! - PUBCOMP's removal is written but not waited for: lost, it costs one resent PUBREL
//!   (answered with PUBCOMP, MQTT 5 maybe with 0x92).
//!
//! Mosquitto (with `persistence true`) keeps all of this in memory and writes its database
//! every `autosave_interval` (30 min by default; with `autosave_on_changes`, after that many
//! changes) and at a clean shutdown, so with its defaults a `kill -9` may lose or repeat QoS
//! 2 messages and ids either way.
//! Shared subscriptions are not in the record: their durable copy is the membership
//! bindings from `mqtt.shared-subscriptions`, which go away with the session queue. A
//! session that ends (clean start, expiry 0, expiry passed) has its record deleted; at a
//! CONNECT that does not resume a session, durably before CONNACK.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use ferrymq_core::clock::now_ms;
use ferrymq_core::queue::{ConsumerEvent, ConsumerId, ConsumerOptions, CreditPool, Queue};
use ferrymq_core::{
    Access, Binding, ConnectionHandle, ConnectionInfo, ConnectionPermit, CoreError, Delivery,
    Destination, Limit, LimitExceeded, Message, Outbox, PublishedBatch, QueueDecl, QueueRef,
    TopicCheck, VHost, Value,
};
use ferrymq_mqtt_codec::{
    decode, decode_connect, parse_shared_subscription, topic_matches, validate_topic_filter,
    validate_topic_name, Connack, Connect, Disconnect, Error as CodecError, Packet, Properties,
    ProtocolVersion, PubResponse, Publish, QoS, ReasonCode, Suback, Subscribe, Unsuback,
    Unsubscribe, Will,
};
use ferrymq_storage::Commit;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::alias;
use crate::mapping::{self, Sub};
use crate::session::{Attached, SessionState};
use crate::signals::{Signal, Signals};
use crate::Mqtt;

/// Deliveries taken from the sink per turn at most, so reads are not starved.
const DELIVERY_EVENTS_PER_TURN: usize = 64;
/// Spare read capacity reserved before a read.
const READ_RESERVE: usize = 512;
/// Largest reservation made at once for reads.
const READ_CHUNK_MAX: usize = 256 * 1024;
/// An empty read buffer larger than this is dropped (idle memory stays small).
const READ_KEEP_MAX: usize = 2 * READ_RESERVE;
/// A write buffer larger than this is dropped after a flush.
const WRITE_KEEP_MAX: usize = 64 * 1024;
/// How long the last packets (DISCONNECT) may take to leave once the loop ends.
const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Queue name prefix of session queues (RabbitMQ: `mqtt-subscription-{id}qos1`).
pub const SESSION_QUEUE_PREFIX: &str = "mqtt-subscription-";
/// Queue name prefix of shared-subscription queues.
pub const SHARED_QUEUE_PREFIX: &str = "mqtt-shared-";
/// Subscriptions (plain and shared) per session.
pub const SUBSCRIPTIONS_MAX: usize = 10_000;
/// Retained QoS 1/2 PUBLISHes waiting for room in the client's Receive Maximum.
const OUT_BACKLOG_MAX: usize = 65_536;
/// Session expiry meaning "never".
const EXPIRY_NEVER: u32 = u32::MAX;

/// Where a consumer's deliveries come from.
struct Source {
    queue: Arc<Queue>,
    /// `Some(full $share filter)` for a shared subscription's queue.
    shared: Option<String>,
}

/// An outbound QoS 1/2 delivery awaiting PUBACK / PUBREC.
struct Inflight {
    /// `None` for retained messages sent at subscribe (nothing to ack in the core).
    source: Option<(Arc<Queue>, u64)>,
}

/// A PUBLISH to send to the client.
struct Out {
    topic: String,
    message: Arc<Message>,
    qos: QoS,
    retain: bool,
    dup: bool,
    sub_ids: Vec<u32>,
    /// The queue delivery it carries (`None` for retained messages sent at subscribe).
    source: Option<(Arc<Queue>, u64)>,
}

/// An acknowledgement to send once a publish batch is durable.
struct Ack {
    qos: QoS,
    packet_id: u16,
    reason: ReasonCode,
}

struct AckBatch {
    seq: u64,
    /// `Some(ok)` once resolved.
    done: Option<bool>,
    /// Inbound QoS 2 ids to persist once the batch's messages are durable (persistent
    /// sessions), before their PUBRECs are released.
    confirm: Vec<u16>,
    acks: Vec<Ack>,
}

/// What a connection's spawned tasks report back.
enum Done {
    /// A publish batch (by sequence number) is durable, or failed.
    Publish(u64, bool),
    /// A session-state write (by number) is durable, or failed.
    State(u64, bool),
}

/// What waits for a session-state write to be durable.
enum Waiter {
    /// The acknowledgement batch of this sequence number (PUBRECs, a PUBCOMP).
    Acks(u64),
    /// The PUBREL of an outbound id the client PUBREC'd.
    Pubrel(u16),
}

/// A publish decoded this turn, not yet handed to the core.
struct Pending {
    /// `None` for an answer without a publish (QoS 2 duplicate, refused payload).
    message: Option<Message>,
    ack: Option<Ack>,
    commit: Option<Commit>,
}

enum End {
    /// The client closed the socket, I/O failed or the connection was closed for cause:
    /// the will is published.
    Abnormal,
    /// DISCONNECT 0x00: no will.
    Clean,
    /// Server shutdown: no will (the broker is stopping).
    Shutdown,
}

struct Conn {
    mqtt: Arc<Mqtt>,
    peer: String,
    version: ProtocolVersion,
    client_id: String,
    /// `client_id` shortened for logs.
    log_id: String,
    /// The authenticated user (or the default user), whose permissions are checked.
    user: String,
    /// Whether `user` may write to the exchange, decided once per read turn (see
    /// `may_publish`).
    publish_allowed: Option<bool>,
    /// The topic permission check of a PUBLISH's routing key, decided with
    /// `publish_allowed` (`Some(None)`: no topic permission applies).
    topic_write: Option<Option<TopicCheck>>,
    vhost: Arc<VHost>,
    handle: Arc<ConnectionHandle>,
    generation: u64,
    out: BytesMut,
    keep_alive: Duration,
    session_expiry: u32,
    state: SessionState,
    queue_name: String,
    subs: HashMap<String, Sub>,
    sources: HashMap<ConsumerId, Source>,
    sink: mpsc::UnboundedSender<ConsumerEvent>,
    pool: Arc<CreditPool>,
    prefetch: u32,
    inflight: HashMap<u16, Inflight>,
    /// Messages that were in a resumed session's queue at CONNECT, still to be delivered.
    offline_backlog: u64,
    /// QoS 1/2 deliveries waiting for room in the client's Receive Maximum.
    backlog: VecDeque<Out>,
    client_receive_max: u16,
    /// Core acks collected this turn, one `ack` call per queue (see `flush_acks`).
    to_ack: Vec<(Arc<Queue>, Vec<u64>)>,
    /// QoS 0 deliveries encoded and not yet marked with where they end in the output.
    qos0_encoded: Vec<(Arc<Queue>, u64)>,
    /// QoS 0 deliveries settled once the output reaches their mark (bytes written over the
    /// connection's life): a subscriber that reads slowly holds messages back in its
    /// queue instead of in this connection's buffer.
    qos0_unwritten: VecDeque<(u64, Arc<Queue>, u64)>,
    next_pid: u16,
    client_max_packet: u32,
    aliases_in: alias::Inbound,
    aliases_out: alias::Outbound,
    pending: Vec<Pending>,
    acks: VecDeque<AckBatch>,
    next_seq: u64,
    done_tx: mpsc::UnboundedSender<Done>,
    /// Spawned tasks that have yet to send their `Done`: `done_rx` is polled only while
    /// there are some (a receive per loop turn is not free at a high message rate).
    done_pending: usize,
    /// The session state changed this turn: write its record (persistent sessions).
    state_dirty: bool,
    /// What waits for this turn's state write.
    state_waiters: Vec<Waiter>,
    /// Core deliveries PUBREC'd this turn, acked once their PUBREL'd id is durable.
    state_settles: Vec<(Arc<Queue>, u64)>,
    /// State writes in flight, by number, with what waits for each.
    state_writes: VecDeque<(u64, Vec<Waiter>)>,
    next_write: u64,
    will: Option<Will>,
    published: bool,
    blocked: bool,
    /// Set when the loop must end after this turn's output is written.
    ending: Option<End>,
}

fn v5(version: ProtocolVersion) -> bool {
    version.is_v5()
}

fn encode(out: &mut BytesMut, version: ProtocolVersion, p: Packet) {
    if let Err(e) = p.encode(version, out) {
        tracing::warn!(error = %e, "MQTT packet could not be encoded; not sent");
    }
}

/// Runs one connection to its end; `identity` is the peer's verified certificate name.
///
/// `permit` is the connection's admission (see [`ferrymq_core::admission`]): when it was
/// refused, the CONNECT is still read so that the refusal is a CONNACK the client
/// understands (MQTT 5: 0x97 Quota exceeded; MQTT 3: 0x03 Server unavailable).
pub(crate) async fn run<S>(
    mqtt: Arc<Mqtt>,
    stream: S,
    peer: String,
    identity: Option<String>,
    permit: Result<ConnectionPermit, LimitExceeded>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let max = mqtt.config.max_packet_size;
    let mut inbuf = BytesMut::new();
    let deadline = Instant::now() + Duration::from_millis(mqtt.config.connect_timeout_ms.max(1));
    // CONNECT first, within the deadline.
    let connect = loop {
        match decode_connect(&mut inbuf, max) {
            Ok(Some(c)) => break c,
            Ok(None) => {}
            Err(CodecError::UnsupportedProtocolVersion(level)) => {
                tracing::debug!(%peer, level, "unsupported MQTT protocol level");
                // MQTT 3 CONNACK "unacceptable protocol version"; v5 clients read 0x01 too.
                let _ = wr.write_all(&[0x20, 0x02, 0x00, 0x01]).await;
                let _ = wr.shutdown().await;
                return;
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "bad first MQTT packet; closing");
                let _ = wr.shutdown().await;
                return;
            }
        }
        if inbuf.capacity() - inbuf.len() < READ_RESERVE / 2 {
            inbuf.reserve(READ_RESERVE.max(inbuf.len()).min(READ_CHUNK_MAX));
        }
        match tokio::time::timeout_at(deadline, rd.read_buf(&mut inbuf)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return,
            Err(_) => {
                tracing::info!(%peer, "closing MQTT connection: no CONNECT within connect_timeout_ms");
                mqtt.broker
                    .admission()
                    .refused(Limit::HandshakeTimeout, crate::PROTOCOL);
                return;
            }
        }
    };
    let mut permit = match permit {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(%peer, why = %e, "MQTT connection refused");
            let mut out = BytesMut::new();
            refuse(
                &mut out,
                connect.protocol_version,
                ReasonCode::QUOTA_EXCEEDED,
                &e.message,
            );
            let _ = wr.write_all(&out).await;
            let _ = wr.shutdown().await;
            return;
        }
    };
    let stop = mqtt.stop.subscribe();
    if *stop.borrow() {
        return;
    }
    let (sink_tx, mut sink_rx) = mpsc::unbounded_channel::<ConsumerEvent>();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let mut out = BytesMut::new();
    let opened = open_session(
        &mqtt,
        connect,
        (&peer, identity.as_deref()),
        &mut permit,
        sink_tx,
        done_tx,
        &mut out,
    )
    .await;
    let (mut conn, attached) = match opened {
        Ok(x) => x,
        Err(()) => {
            let _ = wr.write_all(&out).await;
            let _ = wr.shutdown().await;
            return;
        }
    };
    let Attached { kicked, done, .. } = attached;
    let mut flow = mqtt.broker.flow();
    conn.blocked = flow.borrow_and_update().blocked();
    let mut signals = Signals::new(flow, conn.handle.close_requested(), kicked, stop);
    let mut last_read = Instant::now();
    let ka = conn.keep_alive;
    let mut read_hint = READ_RESERVE;
    let keepalive = tokio::time::sleep_until(ka_deadline(last_read, ka));
    tokio::pin!(keepalive);
    // Whatever arrived after CONNECT in the same read.
    if !inbuf.is_empty() {
        conn.on_bytes(&mut inbuf);
    }
    let mut outbox = Outbox::new(mqtt.broker.admission().limits().connection_buffer_max_bytes);
    // The client's last sign of life while reads wait for it to take its backlog.
    let mut last_progress = Instant::now();
    loop {
        conn.flush_state();
        conn.flush_acks();
        conn.mark_qos0(outbox.written() + conn.out.len() as u64);
        if outbox.waiting(&conn.out) {
            match outbox.write_now(&mut wr, &mut conn.out).await {
                Ok(n) => {
                    if n > 0 {
                        last_progress = Instant::now();
                        conn.settle_qos0_written(outbox.written());
                    }
                    conn.handle
                        .stats
                        .bytes_out
                        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                }
                Err(_) => {
                    conn.ending.get_or_insert(End::Abnormal);
                    break;
                }
            }
        }
        if conn.out.is_empty() && conn.out.capacity() > WRITE_KEEP_MAX {
            conn.out = BytesMut::new();
        }
        if conn.ending.is_some() {
            break;
        }
        if outbox.exceeded(&conn.out) {
            // A client that does not read what it is sent.
            mqtt.broker
                .admission()
                .refused(Limit::ConnectionBuffer, crate::PROTOCOL);
            let why = format!(
                "more than {} bytes wait for the client to read them (limits.connection_buffer_max_bytes)",
                outbox.limit()
            );
            conn.fail(ReasonCode::QUOTA_EXCEEDED, &why);
            break;
        }
        // Not read: a publisher under a resource alarm, or one whose acknowledgements
        // wait for more durable publishes than the Receive Maximum (backpressure).
        let alarm_paused = (conn.blocked && conn.published)
            || conn.acks_waiting() >= usize::from(conn.mqtt.config.receive_maximum.max(1));
        // Nor while the client does not take what it is sent.
        let backlog_paused = outbox.pause_reads(&conn.out);
        let paused = alarm_paused || backlog_paused;
        if !paused && inbuf.capacity() - inbuf.len() < read_hint / 2 {
            // Small when idle, doubling while reads fill it (a large packet, a burst).
            inbuf.reserve(read_hint.max(inbuf.len()));
        }
        tokio::select! {
            r = outbox.write_some(&mut wr, &mut conn.out), if outbox.waiting(&conn.out) => {
                match r {
                    Ok(n) => {
                        last_progress = Instant::now();
                        conn.handle.stats.bytes_out.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                        conn.settle_qos0_written(outbox.written());
                    }
                    Err(_) => { conn.ending = Some(End::Abnormal); }
                }
            }
            r = rd.read_buf(&mut inbuf), if !paused => {
                match r {
                    Ok(0) | Err(_) => { conn.ending = Some(End::Abnormal); }
                    Ok(n) => {
                        read_hint = next_read_hint(read_hint, n, inbuf.len() == inbuf.capacity());
                        conn.handle.stats.bytes_in.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                        last_read = Instant::now();
                        keepalive.as_mut().reset(ka_deadline(last_read, ka));
                        conn.on_bytes(&mut inbuf);
                        if inbuf.is_empty() && inbuf.capacity() > READ_KEEP_MAX.max(2 * read_hint) {
                            inbuf = BytesMut::new();
                        }
                        // Back of the worker's queue after a read: the deliveries this
                        // read woke (put in the worker's LIFO slot, which no other worker
                        // steals) run next here, while this connection's next read can be
                        // taken by the other worker; without it a 1 -> 1 stream ran
                        // reader and writer on one core (see ARCHITECTURE.md).
                        tokio::task::yield_now().await;
                    }
                }
            }
            Some(ev) = sink_rx.recv() => {
                conn.on_event(ev);
                for _ in 1..DELIVERY_EVENTS_PER_TURN {
                    match sink_rx.try_recv() {
                        Ok(ev) => conn.on_event(ev),
                        Err(_) => break,
                    }
                }
            }
            Some(d) = done_rx.recv(), if conn.done_pending > 0 => {
                // Everything already resolved, so that one state write covers it all.
                let mut next = Some(d);
                while let Some(d) = next {
                    conn.done_pending = conn.done_pending.saturating_sub(1);
                    match d {
                        Done::Publish(seq, ok) => conn.on_done(seq, ok),
                        Done::State(n, ok) => conn.on_state_done(n, ok),
                    }
                    next = done_rx.try_recv().ok();
                }
            }
            signal = signals.next() => match signal {
                Signal::Flow(blocked) => conn.blocked = blocked,
                Signal::Close(reason) => {
                    tracing::info!(peer = %conn.peer, client_id = %conn.log_id, reason, "MQTT connection closed by management");
                    conn.disconnect(ReasonCode::ADMINISTRATIVE_ACTION, Some(format!("Closed via management: {reason}")));
                    conn.ending = Some(End::Abnormal);
                }
                Signal::Kicked => {
                    tracing::info!(peer = %conn.peer, client_id = %conn.log_id, "MQTT session taken over");
                    conn.disconnect(ReasonCode::SESSION_TAKEN_OVER, None);
                    conn.ending = Some(End::Abnormal);
                }
                Signal::Stop => {
                    conn.disconnect(ReasonCode::SERVER_SHUTTING_DOWN, None);
                    conn.ending = Some(End::Shutdown);
                }
            },
            () = &mut keepalive, if !ka.is_zero() => {
                if alarm_paused {
                    // Not reading (resource alarm): the client's silence is ours.
                    keepalive.as_mut().reset(ka_deadline(Instant::now(), ka));
                    continue;
                }
                let due = ka_deadline(last_progress, ka);
                if backlog_paused && due > Instant::now() {
                    // Not reading until the client takes its backlog, which it still does.
                    keepalive.as_mut().reset(due);
                    continue;
                }
                tracing::info!(peer = %conn.peer, client_id = %conn.log_id, "MQTT keep-alive timeout");
                conn.disconnect(ReasonCode::KEEP_ALIVE_TIMEOUT, None);
                conn.ending = Some(End::Abnormal);
            }
        }
    }
    outbox
        .finish(&mut wr, &mut conn.out, FINAL_WRITE_TIMEOUT)
        .await;
    conn.mark_qos0(0);
    conn.settle_qos0_written(u64::MAX);
    // Deliveries still in the channel go back to their queues.
    conn.cancel_consumers();
    sink_rx.close();
    while let Ok(ev) = sink_rx.try_recv() {
        if let ConsumerEvent::Deliver(ds) = ev {
            for d in ds {
                conn.return_delivery(&d);
            }
        }
    }
    conn.cleanup();
    // The connection's admission and registration go before the session is released:
    // a takeover that waits for `done` then finds this connection's slots free (the
    // per-user and per-vhost limits).
    drop(conn);
    drop(permit);
    drop(done);
}

/// The next read reservation: doubled after a read that filled the buffer, halved after
/// one that used less than a quarter of it, between [`READ_RESERVE`] and [`READ_CHUNK_MAX`].
fn next_read_hint(hint: usize, read: usize, filled: bool) -> usize {
    if filled {
        (hint * 2).min(READ_CHUNK_MAX)
    } else if read < hint / 4 {
        (hint / 2).max(READ_RESERVE)
    } else {
        hint
    }
}

fn ka_deadline(from: Instant, ka: Duration) -> Instant {
    // 1.5 × the keep-alive (MQTT 3.1.1 §3.1.2.10); far away when disabled.
    if ka.is_zero() {
        from + Duration::from_secs(86_400 * 365)
    } else {
        from + ka + ka / 2
    }
}

/// Refuses a CONNECT with `code` (CONNACK, then close).
fn refuse(out: &mut BytesMut, version: ProtocolVersion, code: ReasonCode, why: &str) {
    let mut properties = Properties::default();
    if v5(version) {
        properties.reason_string = Some(why.to_owned());
    }
    encode(
        out,
        version,
        Packet::Connack(Connack {
            session_present: false,
            reason_code: code,
            properties,
        }),
    );
}

/// A client id as logs show it: at most 64 characters (ids may hold 65,535 bytes).
pub(crate) fn log_id(id: &str) -> String {
    match id.char_indices().nth(64) {
        Some((i, _)) => format!("{}…", &id[..i]),
        None => id.to_owned(),
    }
}

fn assigned_id() -> String {
    format!(
        "ferrymq-{:016x}{:08x}",
        fastrand::u64(..),
        fastrand::u32(..)
    )
}

/// Handles CONNECT: authentication, takeover, the session queue, CONNACK.
async fn open_session(
    mqtt: &Arc<Mqtt>,
    c: Connect,
    (peer, identity): (&str, Option<&str>),
    permit: &mut ConnectionPermit,
    sink: mpsc::UnboundedSender<ConsumerEvent>,
    done_tx: mpsc::UnboundedSender<Done>,
    out: &mut BytesMut,
) -> Result<(Conn, Attached), ()> {
    let cfg = &mqtt.config;
    let version = c.protocol_version;
    let p = &c.properties;
    if p.authentication_method.is_some() {
        refuse(
            out,
            version,
            ReasonCode::BAD_AUTHENTICATION_METHOD,
            "no enhanced authentication method is configured",
        );
        return Err(());
    }
    // Client identifier.
    let mut client_id = c.client_id.clone();
    let mut assigned = None;
    if client_id.is_empty() {
        let allowed = match version {
            ProtocolVersion::V5 => true,
            ProtocolVersion::V3_1_1 => c.clean_start,
            _ => false,
        };
        if !allowed {
            refuse(
                out,
                version,
                ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                "empty client identifier",
            );
            return Err(());
        }
        client_id = assigned_id();
        assigned = Some(client_id.clone());
    }
    // Authentication and vhost permission.
    let user = match (&c.username, &c.password) {
        (Some(u), pw) => {
            let pw = pw
                .as_ref()
                .and_then(|b| std::str::from_utf8(b).ok())
                .unwrap_or("");
            match mqtt.broker.authenticate(u, pw, peer_ip(peer)) {
                Ok(u) => u.name,
                Err(_) => {
                    tracing::info!(%peer, user = %u, "MQTT login refused");
                    refuse(
                        out,
                        version,
                        ReasonCode::BAD_USER_NAME_OR_PASSWORD,
                        "bad user name or password",
                    );
                    return Err(());
                }
            }
        }
        // No user name over TLS with a verified client certificate: the certificate's
        // common name is the user (RabbitMQ's ssl_cert_login, Mosquitto's
        // use_identity_as_username), whatever allow_anonymous says.
        (None, _) if identity.is_some() => {
            let id = identity.unwrap_or_default();
            match mqtt.broker.authenticate_external(id, peer_ip(peer)) {
                Ok(u) => u.name,
                Err(e) => {
                    tracing::info!(%peer, user = %id, error = %e, "MQTT certificate login refused");
                    refuse(out, version, ReasonCode::NOT_AUTHORIZED, &e.to_string());
                    return Err(());
                }
            }
        }
        (None, _) if cfg.allow_anonymous => {
            if let Err(e) = mqtt.broker.check_loopback(&cfg.default_user, peer_ip(peer)) {
                refuse(out, version, ReasonCode::NOT_AUTHORIZED, &e.to_string());
                return Err(());
            }
            cfg.default_user.clone()
        }
        (None, _) => {
            refuse(
                out,
                version,
                ReasonCode::BAD_USER_NAME_OR_PASSWORD,
                "anonymous connections are not allowed",
            );
            return Err(());
        }
    };
    let vhost = match mqtt.broker.open_vhost(&user, &cfg.vhost) {
        Ok(v) => v,
        Err(e) => {
            refuse(out, version, ReasonCode::NOT_AUTHORIZED, &e.to_string());
            return Err(());
        }
    };
    // Will: its topic must be valid (the codec checked the syntax).
    if let Some(w) = &c.will {
        if validate_topic_name(&w.topic).is_err() {
            refuse(
                out,
                version,
                ReasonCode::TOPIC_NAME_INVALID,
                "invalid will topic",
            );
            return Err(());
        }
        // Publishing it needs write on the exchange (RabbitMQ refuses such a CONNECT too).
        if !authorized(mqtt, &user, Access::Write, "exchange", &cfg.exchange) {
            refuse(
                out,
                version,
                ReasonCode::NOT_AUTHORIZED,
                "the will may not be published: no write access to the exchange",
            );
            return Err(());
        }
        // And its topic must pass the topic permission (Mosquitto and RabbitMQ check the
        // will's ACL at CONNECT: CONNACK not authorized, 0x87 / MQTT 3 code 5).
        if !topic_authorized(
            mqtt,
            &user,
            Access::Write,
            &mapping::topic_to_key(&w.topic),
            &client_id,
        ) {
            refuse(
                out,
                version,
                ReasonCode::NOT_AUTHORIZED,
                "the will may not be published: no write access to its topic",
            );
            return Err(());
        }
    }
    // Session expiry.
    let requested = if v5(version) {
        p.session_expiry_interval.unwrap_or(0)
    } else if c.clean_start {
        0
    } else {
        EXPIRY_NEVER
    };
    let session_expiry = requested.min(cfg.session_expiry_max_s);
    // Keep-alive.
    let mut keep_alive = c.keep_alive;
    let mut server_keep_alive = None;
    if cfg.keepalive_max_s > 0 && keep_alive > cfg.keepalive_max_s {
        keep_alive = cfg.keepalive_max_s;
        server_keep_alive = v5(version).then_some(keep_alive);
    } else if cfg.keepalive_max_s > 0 && keep_alive == 0 && v5(version) {
        // MQTT 5 can be told a keep-alive (Mosquitto's max_keepalive); MQTT 3 keeps 0.
        keep_alive = cfg.keepalive_max_s;
        server_keep_alive = Some(keep_alive);
    }
    // Creating the session queue needs configure on it (RabbitMQ's MQTT plugin); checked
    // before the takeover, so a refused client does not end the session's holder. A
    // session that is resumed keeps its queue and needs no configure.
    let queue_name = mapping::queue_name(SESSION_QUEUE_PREFIX, &client_id);
    let creates = c.clean_start
        || vhost.queue(&queue_name).is_none()
        || mqtt
            .session_ends
            .get(&client_id)
            .is_some_and(|r| r.expired(now_ms()));
    if creates && !authorized(mqtt, &user, Access::Configure, "queue", &queue_name) {
        refuse(
            out,
            version,
            ReasonCode::NOT_AUTHORIZED,
            &format!("configure access to queue '{queue_name}' refused"),
        );
        return Err(());
    }
    // The per-user connection limit, before the takeover so that a refused client does
    // not end the session's holder. A reconnect of a client id that a connection of the
    // same user holds is let through: its takeover ends that connection, which frees the
    // slot (a device whose old TCP connection is half-open must be able to come back),
    // and it is counted once the old connection has released its permit.
    let count_after_takeover = mqtt.sessions.held_by(&client_id, &user);
    if !count_after_takeover {
        if let Err(e) = permit.authenticated(&user) {
            refuse(out, version, ReasonCode::QUOTA_EXCEEDED, &e.message);
            return Err(());
        }
    }
    // Takeover, then the registry's state of a persistent session.
    let (mut attached, took_over) = mqtt.sessions.attach(&client_id, &user).await;
    if took_over {
        tracing::info!(%peer, client_id = %log_id(&client_id), "MQTT session takeover");
    }
    if count_after_takeover {
        if let Err(e) = permit.authenticated(&user) {
            // Another connection of the user took the freed slot meanwhile.
            mqtt.sessions
                .detach(&client_id, attached.generation, attached.state.take());
            refuse(out, version, ReasonCode::QUOTA_EXCEEDED, &e.message);
            return Err(());
        }
    }
    let info = ConnectionInfo {
        protocol: "mqtt".into(),
        peer: peer.to_owned(),
        user: user.clone(),
        vhost: vhost.name.clone(),
    };
    let handle = match mqtt.broker.register_connection(info) {
        Ok(h) => h,
        Err(e) => {
            mqtt.broker
                .admission()
                .refused(Limit::VhostConnections, crate::PROTOCOL);
            mqtt.sessions.detach(&client_id, attached.generation, None);
            refuse(out, version, ReasonCode::QUOTA_EXCEEDED, &e.to_string());
            return Err(());
        }
    };
    // A persistent session that went offline longer ago than its expiry (the broker may
    // have been down meanwhile) is gone; either way its offline record ends here.
    let expired = mqtt
        .session_ends
        .get(&client_id)
        .is_some_and(|r| r.expired(now_ms()));
    if let Err(e) = mqtt.session_ends.set(&client_id, None) {
        tracing::warn!(client_id = %log_id(&client_id), error = %e, "clearing the session's offline record failed");
    }
    if expired && !c.clean_start && vhost.queue(&queue_name).is_some() {
        if let Err(e) = vhost.delete_queue(&queue_name, false, false, handle.id) {
            tracing::warn!(queue = %queue_name, error = %e, "deleting an expired session queue failed");
        }
    }
    if c.clean_start {
        attached.state = None;
        mqtt.sessions.clear_state(&client_id);
        if vhost.queue(&queue_name).is_some() {
            if let Err(e) = vhost.delete_queue(&queue_name, false, false, handle.id) {
                tracing::warn!(queue = %queue_name, error = %e, "deleting the old session queue failed");
            }
        }
    }
    let existing = vhost.queue(&queue_name);
    let session_present = !c.clean_start && existing.is_some();
    let queue = match existing {
        Some(QueueRef::Classic(q)) => Ok(q),
        Some(QueueRef::Stream(_)) => Err(CoreError::PreconditionFailed(format!(
            "'{queue_name}' is a stream"
        ))),
        None => {
            let mut decl = if session_expiry > 0 {
                QueueDecl::durable(queue_name.clone())
            } else {
                QueueDecl {
                    name: queue_name.clone(),
                    durable: false,
                    exclusive: true,
                    auto_delete: false,
                    arguments: Default::default(),
                }
            };
            if session_expiry > 0 && session_expiry != EXPIRY_NEVER {
                decl.arguments.insert(
                    "x-expires",
                    Value::Int(i64::from(session_expiry).saturating_mul(1000).max(1)),
                );
            }
            vhost.declare_queue(decl, handle.id, false).and_then(|_| {
                match vhost.queue(&queue_name) {
                    Some(QueueRef::Classic(q)) => Ok(q),
                    _ => Err(CoreError::NotFound(queue_name.clone())),
                }
            })
        }
    };
    let queue = match queue {
        Ok(q) => q,
        Err(e) => {
            tracing::warn!(%peer, client_id = %log_id(&client_id), error = %e, "MQTT session queue unavailable");
            mqtt.broker.unregister_connection(handle.id);
            mqtt.sessions.detach(&client_id, attached.generation, None);
            // The vhost's queue limit leaves no room for the session queue: a quota.
            let code = if matches!(e, CoreError::LimitReached(_)) {
                mqtt.broker
                    .admission()
                    .refused(Limit::QueuesPerVhost, crate::PROTOCOL);
                ReasonCode::QUOTA_EXCEEDED
            } else {
                ReasonCode::CLIENT_IDENTIFIER_NOT_VALID
            };
            refuse(out, version, code, &e.to_string());
            return Err(());
        }
    };
    // Subscriptions of a resumed session are its queue's bindings.
    let mut subs = HashMap::new();
    if session_present {
        if let Some(x) = vhost.exchange(&cfg.exchange) {
            for b in x.bindings() {
                if b.destination == Destination::Queue(queue_name.clone()) {
                    if let Some(s) = mapping::Sub::from_args(&b.arguments) {
                        subs.insert(s.filter.clone(), s);
                    }
                }
            }
        }
    }
    let client_receive_max = if v5(version) {
        p.receive_maximum.unwrap_or(u16::MAX)
    } else {
        u16::MAX
    };
    let prefetch = u32::from(client_receive_max.min(cfg.max_inflight).max(1));
    // The QoS 2 state of a resumed session: the previous connection's (this broker run),
    // else its persisted record (after a restart). A session not resumed has none; its old
    // record goes first, durably, so that a crash cannot bring back stale ids.
    let state = if session_present {
        attached
            .state
            .take()
            .or_else(|| mqtt.load_state(&client_id))
            .unwrap_or_default()
    } else {
        match mqtt.session_state.set(&client_id, None) {
            Ok(Some(c)) => {
                if let Err(e) = c.await {
                    tracing::warn!(client_id = %log_id(&client_id), error = %e, "deleting the MQTT session state failed");
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(client_id = %log_id(&client_id), error = %e, "deleting the MQTT session state failed")
            }
        }
        SessionState::default()
    };
    let mut conn = Conn {
        mqtt: mqtt.clone(),
        peer: peer.to_owned(),
        version,
        client_id: client_id.clone(),
        log_id: log_id(&client_id),
        user: user.clone(),
        publish_allowed: None,
        topic_write: None,
        vhost,
        handle,
        generation: attached.generation,
        out: std::mem::take(out),
        keep_alive: Duration::from_secs(u64::from(keep_alive)),
        session_expiry,
        state,
        queue_name,
        subs,
        sources: HashMap::new(),
        sink,
        pool: CreditPool::new(prefetch),
        prefetch,
        inflight: HashMap::new(),
        backlog: VecDeque::new(),
        offline_backlog: 0,
        client_receive_max,
        to_ack: Vec::new(),
        qos0_encoded: Vec::new(),
        qos0_unwritten: VecDeque::new(),
        next_pid: 1,
        client_max_packet: if v5(version) {
            p.maximum_packet_size.unwrap_or(u32::MAX)
        } else {
            u32::MAX
        },
        aliases_in: alias::Inbound::new(if v5(version) {
            cfg.topic_alias_maximum
        } else {
            0
        }),
        aliases_out: alias::Outbound::new(if v5(version) && cfg.topic_alias_outbound {
            p.topic_alias_maximum.unwrap_or(0)
        } else {
            0
        }),
        pending: Vec::new(),
        acks: VecDeque::new(),
        next_seq: 0,
        done_tx,
        done_pending: 0,
        state_dirty: false,
        state_waiters: Vec::new(),
        state_settles: Vec::new(),
        state_writes: VecDeque::new(),
        next_write: 0,
        will: c.will.clone(),
        published: false,
        blocked: false,
        ending: None,
    };
    // CONNACK.
    let mut props = Properties::default();
    if v5(version) {
        props.receive_maximum = Some(cfg.receive_maximum.max(1));
        props.retain_available = Some(true);
        props.maximum_packet_size = Some(cfg.max_packet_size);
        props.topic_alias_maximum = Some(cfg.topic_alias_maximum);
        props.wildcard_subscription_available = Some(true);
        props.subscription_identifier_available = Some(true);
        props.shared_subscription_available = Some(true);
        props.assigned_client_identifier = assigned;
        props.server_keep_alive = server_keep_alive;
        if session_expiry != requested {
            props.session_expiry_interval = Some(session_expiry);
        }
    }
    encode(
        &mut conn.out,
        version,
        Packet::Connack(Connack {
            session_present,
            reason_code: ReasonCode::SUCCESS,
            properties: props,
        }),
    );
    // Resume: PUBRELs not yet completed, then deliveries (unacked ones come back
    // redelivered, so with DUP).
    let pubrels: Vec<u16> = conn.state.outbound_pubrel.iter().copied().collect();
    for pid in pubrels {
        encode(
            &mut conn.out,
            version,
            Packet::Pubrel(PubResponse::new(pid)),
        );
    }
    // What waits in a resumed session's queue was queued while it was offline.
    conn.offline_backlog = if session_present {
        queue.message_count()
    } else {
        0
    };
    conn.consume(queue, None);
    // Shared subscriptions of a resumed session: its membership bindings (they outlive a
    // broker restart; the registry's copy would not).
    conn.state.shared.clear();
    let mut shared = Vec::new();
    if session_present {
        if let Some(x) = conn.vhost.exchange(crate::SHARED_EXCHANGE) {
            for b in x.bindings() {
                if b.destination == Destination::Queue(conn.queue_name.clone()) {
                    if let Some(s) = mapping::Sub::from_args(&b.arguments) {
                        shared.push((b.routing_key.clone(), s));
                    }
                }
            }
        }
    }
    for (full, sub) in shared {
        // Joining the group's queue needs the permissions of a new SUBSCRIBE (its queue is
        // created again); a refused membership is dropped from the session.
        if conn.may_subscribe_shared(&full) {
            conn.subscribe_shared(&full, sub);
        } else {
            let b = conn.membership(&full, &sub);
            let _ = conn.vhost.unbind(&b, conn.handle.id);
        }
    }
    Ok((conn, attached))
}

impl Conn {
    fn v5(&self) -> bool {
        v5(self.version)
    }

    fn send(&mut self, p: Packet) {
        encode(&mut self.out, self.version, p);
    }

    /// MQTT 5: DISCONNECT with a reason; MQTT 3 just closes.
    fn disconnect(&mut self, code: ReasonCode, why: Option<String>) {
        if self.v5() {
            let properties = Properties {
                reason_string: why,
                ..Properties::default()
            };
            self.send(Packet::Disconnect(Disconnect {
                reason_code: code,
                properties,
            }));
        }
    }

    fn fail(&mut self, code: ReasonCode, why: &str) {
        tracing::info!(peer = %self.peer, client_id = %self.log_id, code = code.0, why, "closing MQTT connection");
        self.disconnect(code, Some(why.to_owned()));
        self.ending = Some(End::Abnormal);
    }

    /// `Broker::authorize` for this connection's user, logging a refusal.
    fn authorized(&self, access: Access, kind: &str, name: &str) -> bool {
        authorized(&self.mqtt, &self.user, access, kind, name)
    }

    /// Write on the exchange (PUBLISH), checked once per read turn: one check covers the
    /// whole batch of publishes a read decodes.
    fn may_publish(&mut self) -> bool {
        if let Some(ok) = self.publish_allowed {
            return ok;
        }
        let x = self.mqtt.config.exchange.clone();
        let ok = self.authorized(Access::Write, "exchange", &x);
        self.publish_allowed = Some(ok);
        ok
    }

    /// The topic permission (write) on the PUBLISH's topic as a routing key (`/` as `.`);
    /// resolved once per read turn, and without a topic permission nothing is mapped.
    fn may_publish_topic(&mut self, topic: &str) -> bool {
        if self.topic_write.is_none() {
            let x = &self.mqtt.config.exchange;
            let check = self.mqtt.broker.topic_check(
                &self.user,
                &self.mqtt.config.vhost,
                Access::Write,
                x,
                Some(&self.client_id),
            );
            self.topic_write = Some(match check {
                Ok(c) => c,
                Err(e) => {
                    tracing::info!(user = %self.user, error = %e, "MQTT publish refused");
                    self.publish_allowed = Some(false);
                    return false;
                }
            });
        }
        let Some(Some(check)) = &self.topic_write else {
            return true;
        };
        match check.check(&mapping::topic_to_key(topic)) {
            Ok(()) => true,
            Err(e) => {
                tracing::info!(user = %self.user, error = %e, "MQTT publish refused");
                false
            }
        }
    }

    /// The topic permission (read) on a subscription's filter as a binding key (`/` as
    /// `.`, `+` as `*`), as RabbitMQ's MQTT plugin checks it.
    fn may_read_topic(&self, filter: &str) -> bool {
        topic_authorized(
            &self.mqtt,
            &self.user,
            Access::Read,
            &mapping::filter_to_key(filter),
            &self.client_id,
        )
    }

    /// The permissions a subscription needs (RabbitMQ's MQTT plugin): read on the exchange
    /// and write on the queue it binds (a binding), plus configure on the queue when the
    /// subscription creates it (shared subscriptions; a session queue was checked at
    /// CONNECT).
    fn may_subscribe(&self, queue: &str, creates: bool) -> bool {
        let x = &self.mqtt.config.exchange;
        self.authorized(Access::Read, "exchange", x)
            && self.authorized(Access::Write, "queue", queue)
            && (!creates || self.authorized(Access::Configure, "queue", queue))
    }

    /// `may_subscribe` for a shared subscription's queue (configure when it does not exist).
    fn may_subscribe_shared(&self, full: &str) -> bool {
        let name = Self::shared_queue_name(full);
        let creates = self.vhost.queue(&name).is_none();
        self.may_subscribe(&name, creates)
    }

    fn consume(&mut self, queue: Arc<Queue>, shared: Option<String>) -> bool {
        let opts = ConsumerOptions {
            tag: format!("mqtt-{}", self.client_id),
            no_ack: false,
            prefetch_count: self.prefetch,
            // Bounds what waits for a client that does not read, in bytes (issue #9).
            prefetch_bytes: self
                .mqtt
                .broker
                .admission()
                .limits()
                .consumer_window_bytes(0),
            shared_credit: Some(self.pool.clone()),
            connection: self.handle.id,
            ..ConsumerOptions::default()
        };
        match self
            .vhost
            .consume(queue.name(), opts, None, self.sink.clone())
        {
            Ok((id, _)) => {
                self.sources.insert(id, Source { queue, shared });
                true
            }
            Err(e) => {
                tracing::warn!(queue = %queue.name(), error = %e, "MQTT consume failed");
                false
            }
        }
    }

    // ------------------------------------------------------------------ input

    fn on_bytes(&mut self, inbuf: &mut BytesMut) {
        let max = self.mqtt.config.max_packet_size;
        // Permissions may change while connected: decided afresh each read turn.
        self.publish_allowed = None;
        self.topic_write = None;
        while self.ending.is_none() {
            match decode(inbuf, self.version, max) {
                Ok(None) => break,
                Ok(Some(p)) => self.on_packet(p),
                Err(e) => {
                    tracing::info!(peer = %self.peer, client_id = %self.log_id, error = %e, "malformed MQTT input");
                    if matches!(e, CodecError::PacketTooLarge { .. }) {
                        self.mqtt
                            .broker
                            .admission()
                            .refused(Limit::MessageSize, crate::PROTOCOL);
                    }
                    inbuf.clear();
                    self.fail(e.reason_code(), &e.to_string());
                }
            }
        }
        self.flush_publishes();
    }

    fn on_packet(&mut self, p: Packet) {
        match p {
            Packet::Publish(p) => self.on_publish(p),
            Packet::Puback(r) => {
                if let Some(f) = self.inflight.remove(&r.packet_id) {
                    self.settle(f);
                }
            }
            Packet::Pubrec(r) => {
                if let Some(f) = self.inflight.remove(&r.packet_id) {
                    if r.reason_code.is_error() {
                        self.settle(f);
                    } else if self.session_expiry > 0 {
                        // Persistent: the id is durable before the core ack and the PUBREL
                        // (see the module doc).
                        self.state.outbound_pubrel.insert(r.packet_id);
                        self.state_dirty = true;
                        self.state_waiters.push(Waiter::Pubrel(r.packet_id));
                        if let Some(src) = f.source {
                            self.state_settles.push(src);
                        }
                        self.drain_backlog();
                    } else {
                        self.settle(f);
                        self.state.outbound_pubrel.insert(r.packet_id);
                        self.send(Packet::Pubrel(PubResponse::new(r.packet_id)));
                    }
                } else if self.state.outbound_pubrel.contains(&r.packet_id) {
                    self.send(Packet::Pubrel(PubResponse::new(r.packet_id)));
                } else {
                    // Unknown id: MQTT 5 says so; MQTT 3 answers anyway (as Mosquitto).
                    let mut rel = PubResponse::new(r.packet_id);
                    if self.v5() {
                        rel.reason_code = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                    }
                    self.send(Packet::Pubrel(rel));
                }
            }
            Packet::Pubcomp(r) => {
                // Not waited for: a removal lost in a crash only means one more PUBREL.
                if self.state.outbound_pubrel.remove(&r.packet_id) && self.session_expiry > 0 {
                    self.state_dirty = true;
                }
            }
            Packet::Pubrel(r) => {
                // Earlier acks first, so PUBCOMP never overtakes this id's PUBREC.
                self.flush_publishes();
                let mut comp = PubResponse::new(r.packet_id);
                if !self.state.inbound_qos2.remove(&r.packet_id) && self.v5() {
                    comp.reason_code = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                }
                // A persisted id's removal is durable before PUBCOMP: after PUBCOMP the
                // client may reuse the id for a new message, which a stale id would swallow.
                let persisted = self.state.inbound_durable.remove(&r.packet_id);
                if self.acks.is_empty() && !persisted {
                    self.send(Packet::Pubcomp(comp));
                } else {
                    let seq = if persisted {
                        self.state_dirty = true;
                        let seq = self.next_seq;
                        self.next_seq += 1;
                        self.state_waiters.push(Waiter::Acks(seq));
                        seq
                    } else {
                        u64::MAX
                    };
                    self.acks.push_back(AckBatch {
                        seq,
                        done: (!persisted).then_some(true),
                        confirm: Vec::new(),
                        acks: vec![Ack {
                            qos: QoS::AtMostOnce, // marks a PUBCOMP
                            packet_id: comp.packet_id,
                            reason: comp.reason_code,
                        }],
                    });
                }
            }
            Packet::Subscribe(s) => self.on_subscribe(s),
            Packet::Unsubscribe(u) => self.on_unsubscribe(u),
            Packet::Pingreq => self.send(Packet::Pingresp),
            Packet::Disconnect(d) => {
                if let Some(e) = d.properties.session_expiry_interval {
                    if self.session_expiry == 0 && e > 0 {
                        self.fail(
                            ReasonCode::PROTOCOL_ERROR,
                            "session expiry set on DISCONNECT after 0 at CONNECT",
                        );
                        return;
                    }
                    self.session_expiry = e.min(self.mqtt.config.session_expiry_max_s);
                }
                self.ending = Some(
                    if d.reason_code == ReasonCode::DISCONNECT_WITH_WILL_MESSAGE {
                        End::Abnormal
                    } else {
                        End::Clean
                    },
                );
            }
            Packet::Auth(_) => self.fail(
                ReasonCode::BAD_AUTHENTICATION_METHOD,
                "enhanced authentication is not supported",
            ),
            Packet::Connect(_) => self.fail(ReasonCode::PROTOCOL_ERROR, "second CONNECT"),
            Packet::Connack(_) | Packet::Suback(_) | Packet::Unsuback(_) | Packet::Pingresp => self
                .fail(
                    ReasonCode::PROTOCOL_ERROR,
                    "server-to-client packet from the client",
                ),
        }
    }

    fn on_publish(&mut self, mut p: Publish) {
        let v5 = self.v5();
        // Topic alias.
        if v5 {
            match self.aliases_in.resolve(&p.topic, p.properties.topic_alias) {
                Ok(t) => p.topic = t,
                Err(alias::AliasError::OutOfRange) => {
                    return self.fail(ReasonCode::TOPIC_ALIAS_INVALID, "topic alias out of range")
                }
                Err(alias::AliasError::Unknown) => {
                    return self.fail(ReasonCode::PROTOCOL_ERROR, "unknown topic alias")
                }
            }
            p.properties.topic_alias = None;
        }
        if validate_topic_name(&p.topic).is_err() {
            return self.fail(ReasonCode::TOPIC_NAME_INVALID, "invalid topic name");
        }
        let pid = p.packet_id.unwrap_or(0);
        // Write on the exchange. Refused: QoS 0 is dropped (Mosquitto, RabbitMQ); MQTT 5
        // answers PUBACK/PUBREC 0x87; MQTT 3 has no failure code in PUBACK/PUBREC, so the
        // connection is closed, as RabbitMQ does. A QoS 2 resend of an id already stored
        // was authorized when it was stored, and is answered as a duplicate below.
        let duplicate = p.qos == QoS::ExactlyOnce && self.state.inbound_qos2.contains(&pid);
        let allowed = duplicate || (self.may_publish() && self.may_publish_topic(&p.topic));
        if !allowed {
            match p.qos {
                QoS::AtMostOnce => {}
                _ if v5 => self.pending.push(Pending {
                    message: None,
                    ack: Some(Ack {
                        qos: p.qos,
                        packet_id: pid,
                        reason: ReasonCode::NOT_AUTHORIZED,
                    }),
                    commit: None,
                }),
                _ => self.fail(
                    ReasonCode::NOT_AUTHORIZED,
                    "publish refused: no write access to the exchange or topic",
                ),
            }
            return;
        }
        self.published = true;
        self.handle
            .stats
            .messages_in
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // QoS 2 duplicate: already stored, answer again without publishing.
        if p.qos == QoS::ExactlyOnce {
            if self.state.inbound_qos2.contains(&pid) {
                self.pending.push(Pending {
                    message: None,
                    ack: Some(Ack {
                        qos: QoS::ExactlyOnce,
                        packet_id: pid,
                        reason: ReasonCode::SUCCESS,
                    }),
                    commit: None,
                });
                return;
            }
            if self.state.inbound_qos2.len() >= usize::from(self.mqtt.config.receive_maximum.max(1))
            {
                return self.fail(
                    ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                    "receive maximum exceeded",
                );
            }
            self.state.inbound_qos2.insert(pid);
        }
        // MQTT 5: a payload declared UTF-8 must be UTF-8.
        if v5
            && p.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&p.payload).is_err()
        {
            if p.qos != QoS::AtMostOnce {
                self.state.inbound_qos2.remove(&pid);
                self.pending.push(Pending {
                    message: None,
                    ack: Some(Ack {
                        qos: p.qos,
                        packet_id: pid,
                        reason: ReasonCode::PAYLOAD_FORMAT_INVALID,
                    }),
                    commit: None,
                });
            }
            return;
        }
        let message = mapping::publish_to_message(&p, &self.client_id);
        let mut commit = None;
        if p.retain {
            let r = if p.payload.is_empty() {
                self.mqtt.retained.set(&p.topic, None)
            } else {
                let mut stored = message.clone();
                stored.exchange = self.mqtt.config.exchange.clone();
                self.mqtt.retained.set(&p.topic, Some(stored))
            };
            match r {
                Ok(c) => commit = c,
                Err(e) => {
                    tracing::warn!(topic = %p.topic, error = %e, "retained message not stored")
                }
            }
        }
        let ack = (p.qos != QoS::AtMostOnce).then_some(Ack {
            qos: p.qos,
            packet_id: pid,
            reason: ReasonCode::SUCCESS,
        });
        self.pending.push(Pending {
            message: Some(message),
            ack,
            commit,
        });
    }

    /// Publishes what this turn decoded as one core batch; acks follow once it is durable.
    fn flush_publishes(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let mut acks = Vec::new();
        let mut commits = Vec::new();
        let mut msgs = Vec::new();
        let mut slots = Vec::new(); // index into acks for each message, if any
        for p in pending {
            if let Some(c) = p.commit {
                commits.push(c);
            }
            let slot = p.ack.map(|a| {
                acks.push(a);
                acks.len() - 1
            });
            if let Some(m) = p.message {
                msgs.push(m);
                slots.push(slot);
            }
        }
        let mut batch: Option<PublishedBatch> = None;
        if !msgs.is_empty() {
            match self.vhost.publish_batch(&self.mqtt.config.exchange, msgs) {
                Ok(b) => {
                    if self.v5() {
                        for (o, slot) in b.outcomes.iter().zip(&slots) {
                            if let Some(i) = slot {
                                if o.rejected > 0 {
                                    acks[*i].reason = ReasonCode::QUOTA_EXCEEDED;
                                } else if o.unroutable() {
                                    acks[*i].reason = ReasonCode::NO_MATCHING_SUBSCRIBERS;
                                }
                            }
                        }
                    }
                    batch = Some(b);
                }
                Err(e) => {
                    tracing::warn!(peer = %self.peer, client_id = %self.log_id, error = %e, "MQTT publish failed");
                    if !self.v5() {
                        self.ending = Some(End::Abnormal);
                        return;
                    }
                    for i in slots.into_iter().flatten() {
                        acks[i].reason = ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR;
                    }
                }
            }
        }
        if acks.is_empty() {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let confirm = if self.session_expiry > 0 {
            acks.iter()
                .filter(|a| a.qos == QoS::ExactlyOnce && !a.reason.is_error())
                .map(|a| a.packet_id)
                .collect()
        } else {
            Vec::new()
        };
        self.acks.push_back(AckBatch {
            seq,
            done: None,
            confirm,
            acks,
        });
        // Nothing to wait for (QoS 1 to transient session queues, T0): acked this turn,
        // without a task and a wake-up per publish.
        let batch = batch.filter(|b| !b.is_durable());
        if batch.is_none() && commits.is_empty() {
            self.on_done(seq, true);
            return;
        }
        let done = self.done_tx.clone();
        self.done_pending += 1;
        tokio::spawn(async move {
            let mut ok = true;
            if let Some(b) = batch {
                ok &= b.durable().await.is_ok();
            }
            for c in commits {
                ok &= c.await.is_ok();
            }
            let _ = done.send(Done::Publish(seq, ok));
        });
    }

    /// Writes the session's QoS 2 state record if it changed this turn (one write per
    /// turn); what waits for it is released once it is durable. Sessions that do not
    /// persist write nothing and release at once.
    fn flush_state(&mut self) {
        if !self.state_dirty {
            return;
        }
        self.state_dirty = false;
        let n = self.next_write;
        self.next_write += 1;
        let waiters = std::mem::take(&mut self.state_waiters);
        let settles = std::mem::take(&mut self.state_settles);
        let commit = if self.session_expiry > 0 {
            self.mqtt.store_state(&self.client_id, &self.state)
        } else {
            Ok(None)
        };
        self.state_writes.push_back((n, waiters));
        match commit {
            Ok(None) => {
                for (q, id) in settles {
                    self.ack_later(&q, id);
                }
                self.on_state_done(n, true);
            }
            Ok(Some(c)) => {
                let done = self.done_tx.clone();
                self.done_pending += 1;
                tokio::spawn(async move {
                    let ok = c.await.is_ok();
                    // The deliveries' ids are durable: ack them in the core, whether or not
                    // the connection is still there.
                    ack_grouped(settles);
                    let _ = done.send(Done::State(n, ok));
                });
            }
            Err(e) => {
                tracing::warn!(client_id = %self.log_id, error = %e, "MQTT session state not persisted");
                for (q, id) in settles {
                    self.ack_later(&q, id);
                }
                self.on_state_done(n, false);
            }
        }
    }

    /// A state write is durable (or failed): release what waited for it.
    fn on_state_done(&mut self, n: u64, ok: bool) {
        if !ok {
            tracing::warn!(client_id = %self.log_id, "MQTT session state write failed");
        }
        let Some(pos) = self.state_writes.iter().position(|(w, _)| *w == n) else {
            return;
        };
        let Some((_, waiters)) = self.state_writes.remove(pos) else {
            return;
        };
        for w in waiters {
            match w {
                Waiter::Acks(seq) => {
                    if let Some(b) = self.acks.iter_mut().find(|b| b.seq == seq) {
                        b.done = Some(ok);
                    }
                }
                Waiter::Pubrel(pid) => {
                    if self.state.outbound_pubrel.contains(&pid) {
                        self.send(Packet::Pubrel(PubResponse::new(pid)));
                    }
                }
            }
        }
        // Credit freed by the core acks is shared across this connection's queues.
        if self.sources.len() > 1 {
            let now = now_ms();
            for s in self.sources.values() {
                s.queue.kick(now);
            }
        }
        self.release_acks();
    }

    /// Acknowledgements not yet sent (publishes awaiting durability, and what queues
    /// behind them).
    fn acks_waiting(&self) -> usize {
        self.acks.iter().map(|b| b.acks.len()).sum()
    }

    /// A publish batch is durable (or failed): persist its QoS 2 ids (persistent session),
    /// or release acks in order.
    fn on_done(&mut self, seq: u64, ok: bool) {
        if let Some(b) = self.acks.iter_mut().find(|b| b.seq == seq) {
            let mut persist = false;
            if ok {
                for id in std::mem::take(&mut b.confirm) {
                    // Not if a PUBREL already removed it (a client that did not wait).
                    if self.state.inbound_qos2.contains(&id) {
                        persist |= self.state.inbound_durable.insert(id);
                    }
                }
            }
            if persist {
                self.state_dirty = true;
                self.state_waiters.push(Waiter::Acks(seq));
            } else {
                b.done = Some(ok);
            }
        }
        self.release_acks();
    }

    /// Sends the acknowledgements whose batches are resolved, in order.
    fn release_acks(&mut self) {
        while let Some(Some(ok)) = self.acks.front().map(|b| b.done) {
            let Some(b) = self.acks.pop_front() else {
                break;
            };
            if !ok && !self.v5() {
                self.fail(ReasonCode::UNSPECIFIED_ERROR, "publish not durable");
                return;
            }
            for a in b.acks {
                let mut r = PubResponse::new(a.packet_id);
                r.reason_code = if ok {
                    a.reason
                } else {
                    ReasonCode::UNSPECIFIED_ERROR
                };
                match a.qos {
                    // PUBCOMP has no failure code: without a durable removal, close instead;
                    // the client sends PUBREL again on its next connection.
                    QoS::AtMostOnce if !ok => {
                        self.fail(ReasonCode::UNSPECIFIED_ERROR, "session state not durable");
                        return;
                    }
                    QoS::AtMostOnce => self.send(Packet::Pubcomp(r)),
                    QoS::AtLeastOnce => self.send(Packet::Puback(r)),
                    QoS::ExactlyOnce => {
                        if r.reason_code.is_error() {
                            self.state.inbound_qos2.remove(&a.packet_id);
                            if self.state.inbound_durable.remove(&a.packet_id) {
                                self.state_dirty = true;
                            }
                        }
                        self.send(Packet::Pubrec(r));
                    }
                }
            }
        }
    }

    fn on_subscribe(&mut self, s: Subscribe) {
        let sub_id = s.properties.subscription_identifiers.first().copied();
        let mut codes = Vec::with_capacity(s.subscriptions.len());
        let mut retained = Vec::new();
        // A malformed filter makes the packet malformed (MQTT 5 §4.7.3; Mosquitto closes).
        if s.subscriptions
            .iter()
            .any(|i| validate_topic_filter(&i.filter).is_err())
        {
            return self.fail(ReasonCode::MALFORMED_PACKET, "invalid topic filter");
        }
        for item in s.subscriptions {
            let sub = Sub::new(&item.filter, &item.options, sub_id);
            let code = match parse_shared_subscription(&item.filter) {
                Err(e) => e.reason_code(),
                // Refused: 0x87 Not authorized (MQTT 3: 0x80 Failure); no binding, so no
                // retained messages either.
                Ok(Some(_)) if !self.may_subscribe_shared(&item.filter) => {
                    ReasonCode::NOT_AUTHORIZED
                }
                Ok(None) if !self.may_subscribe(&self.queue_name, false) => {
                    ReasonCode::NOT_AUTHORIZED
                }
                // The topic permission on the filter: only this filter is refused.
                Ok(shared)
                    if !self.may_read_topic(shared.map_or(item.filter.as_str(), |s| s.filter)) =>
                {
                    ReasonCode::NOT_AUTHORIZED
                }
                Ok(Some(_)) => {
                    if self.subscribe_shared(&item.filter, sub) {
                        ReasonCode(mapping::qos_u8(item.options.qos))
                    } else {
                        ReasonCode::UNSPECIFIED_ERROR
                    }
                }
                Ok(None)
                    if !self.subs.contains_key(&item.filter)
                        && self.subs.len() + self.state.shared.len() >= SUBSCRIPTIONS_MAX =>
                {
                    tracing::info!(client_id = %self.log_id, max = SUBSCRIPTIONS_MAX, "MQTT subscription limit reached");
                    if self.v5() {
                        ReasonCode::QUOTA_EXCEEDED
                    } else {
                        ReasonCode::UNSPECIFIED_ERROR
                    }
                }
                Ok(None) => {
                    let existed = self.subs.contains_key(&item.filter);
                    if self.bind(&sub) {
                        if mapping::send_retained(item.options.retain_handling, existed) {
                            retained.push(sub.clone());
                        }
                        self.subs.insert(item.filter.clone(), sub);
                        ReasonCode(mapping::qos_u8(item.options.qos))
                    } else {
                        ReasonCode::UNSPECIFIED_ERROR
                    }
                }
            };
            codes.push(code);
        }
        self.send(Packet::Suback(Suback {
            packet_id: s.packet_id,
            properties: Properties::default(),
            reason_codes: codes,
        }));
        for sub in retained {
            for (topic, r) in self.mqtt.retained.matching(&sub.filter) {
                let qos = mapping::message_qos(&r.message).min(sub.qos);
                self.deliver(Out {
                    topic,
                    message: r.message,
                    qos,
                    retain: true,
                    dup: false,
                    sub_ids: sub.id.into_iter().collect(),
                    source: None,
                });
            }
        }
    }

    /// Binds (or rebinds with new options) a plain subscription to the session queue.
    fn bind(&mut self, sub: &Sub) -> bool {
        let x = self.mqtt.config.exchange.clone();
        if let Some(old) = self.subs.get(&sub.filter) {
            let b = Binding {
                source: x.clone(),
                destination: Destination::Queue(self.queue_name.clone()),
                routing_key: mapping::filter_to_key(&old.filter),
                arguments: old.to_args(),
            };
            let _ = self.vhost.unbind(&b, self.handle.id);
        }
        let b = Binding {
            source: x,
            destination: Destination::Queue(self.queue_name.clone()),
            routing_key: mapping::filter_to_key(&sub.filter),
            arguments: sub.to_args(),
        };
        match self.vhost.bind(b, self.handle.id) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(filter = %sub.filter, error = %e, "MQTT subscribe failed");
                false
            }
        }
    }

    fn shared_queue_name(full: &str) -> String {
        let rest = full
            .get(ferrymq_mqtt_codec::SHARED_PREFIX.len()..)
            .unwrap_or(full);
        mapping::queue_name(SHARED_QUEUE_PREFIX, rest)
    }

    /// Joins a shared subscription: its queue (one per group and filter), bound once,
    /// consumed by every member.
    fn subscribe_shared(&mut self, full: &str, mut sub: Sub) -> bool {
        let Ok(Some(shared)) = parse_shared_subscription(full) else {
            return false;
        };
        let filter = shared.filter.to_owned();
        let name = Self::shared_queue_name(full);
        sub.filter = filter.clone();
        if self
            .sources
            .values()
            .any(|s| s.shared.as_deref() == Some(full))
        {
            // Already a member: new options.
            self.remember_shared(full, sub);
            return true;
        }
        let decl = QueueDecl {
            name: name.clone(),
            durable: false,
            exclusive: false,
            auto_delete: true,
            arguments: Default::default(),
        };
        let queue = self
            .vhost
            .declare_queue(decl, self.handle.id, false)
            .and_then(|_| match self.vhost.queue(&name) {
                Some(QueueRef::Classic(q)) => Ok(q),
                _ => Err(CoreError::NotFound(name.clone())),
            });
        let queue = match queue {
            Ok(q) => q,
            Err(e) => {
                tracing::warn!(filter = %full, error = %e, "MQTT shared subscribe failed");
                return false;
            }
        };
        let mut args = sub.to_args();
        // The queue's binding is the group's, not one member's options.
        args.0.retain(|(k, _)| k == mapping::ARG_FILTER);
        let b = Binding {
            source: self.mqtt.config.exchange.clone(),
            destination: Destination::Queue(name.clone()),
            routing_key: mapping::filter_to_key(&filter),
            arguments: args,
        };
        if let Err(e) = self.vhost.bind(b, self.handle.id) {
            tracing::warn!(filter = %full, error = %e, "MQTT shared subscribe failed");
            return false;
        }
        if !self.consume(queue, Some(full.to_owned())) {
            return false;
        }
        self.remember_shared(full, sub);
        true
    }

    /// The membership binding of a shared subscription (`SHARED_EXCHANGE` → the session
    /// queue, key = the full `$share/...` filter, the member's options as arguments).
    fn membership(&self, full: &str, sub: &Sub) -> Binding {
        Binding {
            source: crate::SHARED_EXCHANGE.to_owned(),
            destination: Destination::Queue(self.queue_name.clone()),
            routing_key: full.to_owned(),
            arguments: sub.to_args(),
        }
    }

    /// Records a shared subscription in the session: in memory, and for a persistent
    /// session as a durable binding, so it is restored after a broker restart.
    fn remember_shared(&mut self, full: &str, sub: Sub) {
        self.forget_shared(full);
        if self.session_expiry > 0 {
            let b = self.membership(full, &sub);
            if let Err(e) = self.vhost.bind(b, self.handle.id) {
                tracing::warn!(filter = %full, error = %e, "MQTT shared subscription not persisted");
            }
        }
        self.state.shared.push((full.to_owned(), sub));
    }

    fn forget_shared(&mut self, full: &str) {
        if let Some(pos) = self.state.shared.iter().position(|(f, _)| f == full) {
            let (_, old) = self.state.shared.remove(pos);
            let b = self.membership(full, &old);
            let _ = self.vhost.unbind(&b, self.handle.id);
        }
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) {
        if u.filters.iter().any(|f| validate_topic_filter(f).is_err()) {
            return self.fail(ReasonCode::MALFORMED_PACKET, "invalid topic filter");
        }
        let mut codes = Vec::with_capacity(u.filters.len());
        for f in u.filters {
            let found = if f.starts_with(ferrymq_mqtt_codec::SHARED_PREFIX) {
                let id = self
                    .sources
                    .iter()
                    .find(|(_, s)| s.shared.as_deref() == Some(f.as_str()))
                    .map(|(id, _)| *id);
                if let Some(id) = id {
                    if let Some(s) = self.sources.remove(&id) {
                        s.queue.cancel(id, now_ms());
                    }
                }
                self.forget_shared(&f);
                id.is_some()
            } else if let Some(old) = self.subs.remove(&f) {
                let b = Binding {
                    source: self.mqtt.config.exchange.clone(),
                    destination: Destination::Queue(self.queue_name.clone()),
                    routing_key: mapping::filter_to_key(&old.filter),
                    arguments: old.to_args(),
                };
                let _ = self.vhost.unbind(&b, self.handle.id);
                true
            } else {
                false
            };
            codes.push(if found {
                ReasonCode::SUCCESS
            } else {
                ReasonCode::NO_SUBSCRIPTION_EXISTED
            });
        }
        self.send(Packet::Unsuback(Unsuback {
            packet_id: u.packet_id,
            properties: Properties::default(),
            reason_codes: codes,
        }));
    }

    // ------------------------------------------------------------------ output

    fn on_event(&mut self, ev: ConsumerEvent) {
        match ev {
            ConsumerEvent::Deliver(ds) => {
                for d in ds {
                    self.on_delivery(d);
                }
            }
            ConsumerEvent::Cancelled { consumer, .. } => {
                // The queue was deleted (management): the session is gone with it.
                if let Some(src) = self.sources.remove(&consumer) {
                    if src.shared.is_none() {
                        self.fail(ReasonCode::ADMINISTRATIVE_ACTION, "session queue deleted");
                    }
                }
            }
        }
    }

    fn on_delivery(&mut self, d: Delivery) {
        let Some(src) = self.sources.get(&d.consumer) else {
            return;
        };
        let queue = src.queue.clone();
        let topic = mapping::message_topic(&d.message);
        // Match against the subscriptions this queue serves, with MQTT's rules.
        let mut granted: Option<QoS> = None;
        let mut ids = Vec::new();
        let mut rap = false;
        let publisher = d.message.headers.get_str(mapping::HEADER_PUBLISHER);
        let is_local = publisher == Some(self.client_id.as_str());
        let mut consider = |s: &Sub| {
            if !topic_matches(&s.filter, &topic) {
                return;
            }
            if s.no_local && is_local {
                return;
            }
            granted = Some(granted.map_or(s.qos, |g| g.max(s.qos)));
            ids.extend(s.id);
            rap |= s.retain_as_published;
        };
        match &src.shared {
            Some(full) => {
                if let Some((_, s)) = self.state.shared.iter().find(|(f, _)| f == full) {
                    consider(s);
                }
            }
            None => self.subs.values().for_each(&mut consider),
        }
        let Some(granted) = granted else {
            // Routed by the coarser key match only (or No Local): not for this client.
            self.ack_later(&queue, d.id);
            return;
        };
        let qos = mapping::message_qos(&d.message).min(granted);
        if src.shared.is_none() && self.offline_backlog > 0 {
            self.offline_backlog -= 1;
            if qos == QoS::AtMostOnce {
                // QoS 0 messages are not kept for offline sessions (Mosquitto's default,
                // `queue_qos0_messages false`).
                self.ack_later(&queue, d.id);
                return;
            }
        }
        let retain = rap && mapping::message_retained(&d.message);
        self.deliver(Out {
            topic,
            message: d.message,
            qos,
            retain,
            dup: d.redelivered,
            sub_ids: ids,
            source: Some((queue, d.id)),
        });
    }

    fn alloc_pid(&mut self) -> Option<u16> {
        for _ in 0..=u16::MAX {
            let pid = self.next_pid;
            self.next_pid = self.next_pid.checked_add(1).unwrap_or(1);
            if pid != 0
                && !self.inflight.contains_key(&pid)
                && !self.state.outbound_pubrel.contains(&pid)
            {
                return Some(pid);
            }
        }
        None
    }

    fn deliver(&mut self, o: Out) {
        if o.qos != QoS::AtMostOnce && self.inflight.len() >= usize::from(self.client_receive_max) {
            // The client's Receive Maximum is reached (retained messages at subscribe can
            // add to the queues' window): wait for an acknowledgement.
            if o.source.is_none() && self.backlog.len() >= OUT_BACKLOG_MAX {
                // Bounded: retained copies beyond it are dropped (the client can subscribe
                // again). Queue deliveries are bounded by the consumer's prefetch already.
                return;
            }
            self.backlog.push_back(o);
            return;
        }
        let Out {
            mut topic,
            message: m,
            qos,
            retain,
            dup,
            sub_ids,
            source,
        } = o;
        let mut properties = Properties::default();
        // MQTT 3 has no topic aliases: the topic goes on the wire as it is, not copied.
        let mut wire_topic = if self.v5() {
            topic.clone()
        } else {
            std::mem::take(&mut topic)
        };
        let mut new_alias = false;
        if self.v5() {
            properties = mapping::message_to_props(&m, now_ms());
            properties.subscription_identifiers = sub_ids;
            let (alias, with_topic) = self.aliases_out.assign(&topic);
            properties.topic_alias = alias;
            new_alias = alias.is_some() && with_topic;
            if !with_topic {
                wire_topic.clear();
            }
        }
        let packet_id = if qos == QoS::AtMostOnce {
            None
        } else {
            match self.alloc_pid() {
                Some(p) => Some(p),
                None => {
                    // No free packet id: give the message back for later.
                    if new_alias {
                        self.aliases_out.forget(&topic);
                    }
                    if let Some((q, id)) = source {
                        q.nack(&[id], true, now_ms());
                    }
                    return;
                }
            }
        };
        let p = Publish {
            dup: dup && qos != QoS::AtMostOnce,
            qos,
            retain,
            topic: wire_topic,
            packet_id,
            properties,
            payload: m.body.clone(),
        };
        let before = self.out.len();
        let written = Packet::Publish(p).encode(self.version, &mut self.out);
        let too_large = match written {
            Ok(n) => n as u64 > u64::from(self.client_max_packet),
            Err(_) => true,
        };
        if too_large {
            // Larger than the client accepts (or not encodable): dropped, as MQTT 5 says.
            self.out.truncate(before);
            if new_alias {
                self.aliases_out.forget(&topic);
            }
            if let Some((q, id)) = source {
                self.ack_later(&q, id);
            }
            return;
        }
        self.handle
            .stats
            .messages_out
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match packet_id {
            None => {
                if let Some(src) = source {
                    self.qos0_encoded.push(src);
                }
            }
            Some(pid) => {
                self.inflight.insert(pid, Inflight { source });
            }
        }
    }

    /// Sends what waited for room in the client's Receive Maximum.
    fn drain_backlog(&mut self) {
        while self.inflight.len() < usize::from(self.client_receive_max) {
            let Some(o) = self.backlog.pop_front() else {
                break;
            };
            self.deliver(o);
        }
    }

    /// Marks the QoS 0 deliveries encoded so far with `end`, where the output holding
    /// them ends (bytes written over the connection's life).
    fn mark_qos0(&mut self, end: u64) {
        for (q, id) in self.qos0_encoded.drain(..) {
            self.qos0_unwritten.push_back((end, q, id));
        }
    }

    /// Settles the QoS 0 deliveries the socket has taken (all of them once the connection
    /// ends: at most once, as sent).
    fn settle_qos0_written(&mut self, written: u64) {
        while self
            .qos0_unwritten
            .front()
            .is_some_and(|(end, _, _)| *end <= written)
        {
            if let Some((_, q, id)) = self.qos0_unwritten.pop_front() {
                self.ack_later(&q, id);
            }
        }
        self.flush_acks();
    }

    fn ack_later(&mut self, q: &Arc<Queue>, id: u64) {
        match self.to_ack.iter_mut().find(|(x, _)| Arc::ptr_eq(x, q)) {
            Some((_, ids)) => ids.push(id),
            None => self.to_ack.push((q.clone(), vec![id])),
        }
    }

    /// Settles this turn's acks: one call (one lock, one journal write) per queue.
    fn flush_acks(&mut self) {
        if self.to_ack.is_empty() {
            return;
        }
        let now = now_ms();
        let acked: Vec<(Arc<Queue>, Vec<u64>)> = std::mem::take(&mut self.to_ack);
        for (q, ids) in &acked {
            q.ack(ids, now);
        }
        // Credit is shared across this connection's queues: let the others use it.
        if self.sources.len() > 1 {
            for s in self.sources.values() {
                if !acked.iter().any(|(q, _)| Arc::ptr_eq(q, &s.queue)) {
                    s.queue.kick(now);
                }
            }
        }
    }

    /// The client acknowledged a delivery.
    fn settle(&mut self, f: Inflight) {
        if let Some((q, id)) = f.source {
            self.ack_later(&q, id);
        }
        self.drain_backlog();
    }

    fn return_delivery(&self, d: &Delivery) {
        if let Some(src) = self.sources.get(&d.consumer) {
            src.queue.nack(&[d.id], true, now_ms());
        } else if let Some(QueueRef::Classic(q)) = self.vhost.queue(&self.queue_name) {
            q.nack(&[d.id], true, now_ms());
        }
    }

    fn cancel_consumers(&mut self) {
        let now = now_ms();
        for (id, s) in &self.sources {
            s.queue.cancel(*id, now);
        }
    }

    // ------------------------------------------------------------------ end

    fn cleanup(&mut self) {
        // The last state change: written (its core acks follow its commit even though the
        // connection is gone), or released at once if the session does not persist.
        self.flush_state();
        if self.session_expiry == 0 {
            self.mqtt.drop_state(&self.client_id);
        }
        self.flush_acks();
        let now = now_ms();
        // Unacked deliveries go back (redelivered: DUP on the next connection).
        for (_, f) in self.inflight.drain() {
            if let Some((q, id)) = f.source {
                q.nack(&[id], true, now);
            }
        }
        for o in self.backlog.drain(..) {
            if let Some((q, id)) = o.source {
                q.nack(&[id], true, now);
            }
        }
        self.sources.clear();
        let end = self.ending.take().unwrap_or(End::Abnormal);
        if self.session_expiry == 0 {
            if let Some(QueueRef::Classic(q)) = self.vhost.queue(&self.queue_name) {
                if q.owner.is_none() {
                    let _ = self
                        .vhost
                        .delete_queue(&self.queue_name, false, false, self.handle.id);
                }
            }
        }
        self.mqtt.broker.unregister_connection(self.handle.id);
        if self.session_expiry > 0 && self.session_expiry != EXPIRY_NEVER {
            // Persisted before the session is released, so that a takeover's attach (which
            // clears it) comes after; not waited for: a lost record only means the queue's
            // own `x-expires` ends the session after a restart.
            let mut marker = ferrymq_core::Message::new(String::new(), bytes::Bytes::new());
            marker.properties.expiration_ms = Some(u64::from(self.session_expiry) * 1000);
            if let Err(e) = self.mqtt.session_ends.set(&self.client_id, Some(marker)) {
                tracing::warn!(client_id = %self.log_id, error = %e, "recording the session's disconnect failed");
            }
        }
        let state = (self.session_expiry > 0).then(|| std::mem::take(&mut self.state));
        self.mqtt
            .sessions
            .detach(&self.client_id, self.generation, state);
        if let (End::Abnormal, Some(w)) = (end, self.will.take()) {
            let delay = w.properties.will_delay_interval.unwrap_or(0);
            let delay = delay.min(self.session_expiry);
            let mqtt = self.mqtt.clone();
            let client_id = self.client_id.clone();
            let user = self.user.clone();
            let generation = self.generation;
            if delay == 0 {
                publish_will(&mqtt, &user, &client_id, w);
            } else {
                tokio::spawn(async move {
                    let mut stop = mqtt.stop.subscribe();
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(u64::from(delay))) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    if mqtt.sessions.still_detached(&client_id, generation) {
                        publish_will(&mqtt, &user, &client_id, w);
                    }
                });
            }
        }
        tracing::debug!(peer = %self.peer, client_id = %self.log_id, "MQTT connection ended");
    }
}

/// Acks core deliveries, one call per queue.
fn ack_grouped(settles: Vec<(Arc<Queue>, u64)>) {
    if settles.is_empty() {
        return;
    }
    let now = now_ms();
    let mut by_queue: Vec<(Arc<Queue>, Vec<u64>)> = Vec::new();
    for (q, id) in settles {
        match by_queue.iter_mut().find(|(x, _)| Arc::ptr_eq(x, &q)) {
            Some((_, ids)) => ids.push(id),
            None => by_queue.push((q, vec![id])),
        }
    }
    for (q, ids) in by_queue {
        q.ack(&ids, now);
    }
}

/// `Broker::authorize` on the MQTT vhost, logging a refusal.
fn authorized(mqtt: &Mqtt, user: &str, access: Access, kind: &str, name: &str) -> bool {
    match mqtt
        .broker
        .authorize(user, &mqtt.config.vhost, access, kind, name)
    {
        Ok(()) => true,
        Err(e) => {
            tracing::info!(%user, error = %e, "MQTT operation refused");
            false
        }
    }
}

/// `Broker::authorize_topic` on the MQTT vhost and exchange for a routing or binding key,
/// with `{client_id}` expanded, logging a refusal.
fn topic_authorized(mqtt: &Mqtt, user: &str, access: Access, key: &str, client_id: &str) -> bool {
    match mqtt.broker.authorize_topic(
        user,
        &mqtt.config.vhost,
        access,
        &mqtt.config.exchange,
        key,
        Some(client_id),
    ) {
        Ok(()) => true,
        Err(e) => {
            tracing::info!(%user, error = %e, "MQTT operation refused");
            false
        }
    }
}

/// Publishes a will message (and stores it when it is retained), if its user may still
/// write to the exchange and the will's topic (checked at CONNECT, and again here:
/// permissions may have changed meanwhile; a refused will is dropped, as a refused QoS 0
/// publish is).
fn publish_will(mqtt: &Mqtt, user: &str, client_id: &str, w: Will) {
    let Some(vh) = mqtt.vhost() else { return };
    if !authorized(mqtt, user, Access::Write, "exchange", &mqtt.config.exchange)
        || !topic_authorized(
            mqtt,
            user,
            Access::Write,
            &mapping::topic_to_key(&w.topic),
            client_id,
        )
    {
        return;
    }
    let p = Publish {
        dup: false,
        qos: w.qos,
        retain: w.retain,
        topic: w.topic.clone(),
        packet_id: (w.qos != QoS::AtMostOnce).then_some(1),
        properties: w.properties.clone(),
        payload: w.payload.clone(),
    };
    let mut m = mapping::publish_to_message(&p, client_id);
    m.properties.expiration_ms = w
        .properties
        .message_expiry_interval
        .map(|s| u64::from(s) * 1000);
    if w.retain {
        let stored = (!w.payload.is_empty()).then(|| {
            let mut s = m.clone();
            s.exchange = mqtt.config.exchange.clone();
            s
        });
        if let Err(e) = mqtt.retained.set(&w.topic, stored) {
            tracing::warn!(topic = %w.topic, error = %e, "retained will not stored");
        }
    }
    match vh.publish(&mqtt.config.exchange, m) {
        Ok(_) => {
            tracing::debug!(client_id = %log_id(client_id), topic = %w.topic, "MQTT will published")
        }
        Err(e) => {
            tracing::warn!(client_id = %log_id(client_id), error = %e, "MQTT will not published")
        }
    }
}

/// The client's IP address from the connection's peer label (`ADDR` or `ws:ADDR`).
fn peer_ip(peer: &str) -> Option<std::net::IpAddr> {
    peer.trim_start_matches("ws:")
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_hint_grows_under_load_and_shrinks_when_idle() {
        let mut h = READ_RESERVE;
        for _ in 0..20 {
            h = next_read_hint(h, h, true);
        }
        assert_eq!(h, READ_CHUNK_MAX);
        for _ in 0..20 {
            h = next_read_hint(h, 2, false);
        }
        assert_eq!(h, READ_RESERVE);
        assert_eq!(next_read_hint(4096, 2048, false), 4096);
    }
}
