//! WebSocket at `GET /api/ws?vhost=…`: subscribe to queues (prefetch, acks over the socket),
//! to exchanges with a routing pattern, or to streams from an offset (credit-based flow,
//! consumer-group offset commits), and publish, with JSON text frames.
//!
//! One task per socket owns everything: the socket, the registered broker connection, the
//! subscriptions and their unacked deliveries. All subscriptions share one consumer sink, so
//! a wake-up moves a whole batch. Memory is bounded by `SUBSCRIPTIONS_MAX × PREFETCH_MAX`:
//! the core sends no more than a subscription's prefetch before acks (or, for auto-ack,
//! before `Queue::release` after the frame is written). When the socket ends, consumers are
//! cancelled, unacked and unwritten deliveries go back to their queues, and unregistering
//! the connection deletes the server-named queues of exchange subscriptions.
//!
//! The protocol is documented in docs/http-api.md ("WebSocket").

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use ferrymq_core::queue::Queue;
use ferrymq_core::stream::Stream;
use ferrymq_core::{ConsumerEvent, ConsumerOptions, Delivery, StreamOffset};
use serde::Deserialize;
use serde_json::{json, Map, Value as Json};
use tokio::sync::mpsc;

use crate::auth::{Access, Auth};
use crate::convert::{MessageJson, PublishMessage};
use crate::error::{ApiError, ApiResult};
use crate::json::ApiQuery;
use crate::publish::{check_user_id, direct_target, exchange_name, publish_messages, single};
use crate::pull::HANDLES_MAX;
use crate::state::AppState;
use crate::streams::{check_group, parse_offset, stream};
use crate::subscribe::{
    attach, detach, now_ms, register, Attached, MessageEvent, Peer, Registered, Target,
    PREFETCH_DEFAULT, PREFETCH_MAX,
};

/// Subscriptions one socket may hold at once.
pub const SUBSCRIPTIONS_MAX: usize = 64;
/// Longest client-chosen subscription name.
pub const SUBSCRIPTION_NAME_BYTES_MAX: usize = 128;

/// Query of the upgrade request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WsQuery {
    /// The vhost every operation on this socket uses (default `/`).
    #[serde(default = "default_vhost")]
    pub vhost: String,
    /// A bearer token, for browsers (which cannot set headers on a WebSocket).
    #[serde(default)]
    pub access_token: Option<String>,
}

fn default_vhost() -> String {
    "/".to_string()
}

/// `GET /api/ws`: upgrades to a WebSocket after authenticating and registering the
/// connection (errors are ordinary JSON answers before the upgrade).
pub async fn ws(
    State(state): State<AppState>,
    auth: Auth,
    Peer(peer): Peer,
    ApiQuery(q): ApiQuery<WsQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    auth.vhost(&state, &q.vhost)?;
    let upgrade = upgrade.map_err(|r| {
        ApiError::new(
            r.status(),
            "websocket_upgrade_required",
            format!(
                "{}: open this path as a WebSocket (GET with Upgrade: websocket)",
                r.body_text()
            ),
        )
    })?;
    let reg = register(&state.broker, "websocket", peer, &auth, &q.vhost)?;
    let limit = crate::server::body_limit(state.broker.config());
    let (tx, rx) = mpsc::unbounded_channel();
    let timeout = (state.limits.websocket_timeout_ms > 0)
        .then(|| Duration::from_millis(state.limits.websocket_timeout_ms));
    let session = Session {
        timeout,
        state,
        auth,
        vhost: q.vhost,
        reg,
        tx,
        rx,
        subs: HashMap::new(),
        streams: HashMap::new(),
        by_consumer: HashMap::new(),
        unacked: HashMap::new(),
        next_tag: 1,
        next_sub: 1,
    };
    Ok(upgrade
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| session.run(socket))
        .into_response())
}

/// A client request. `publish` is parsed apart (its message fields are flattened).
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Request {
    Subscribe {
        #[serde(default)]
        id: Option<Json>,
        #[serde(default)]
        subscription: Option<String>,
        #[serde(default)]
        queue: Option<String>,
        #[serde(default)]
        exchange: Option<String>,
        #[serde(default)]
        pattern: Option<String>,
        #[serde(default)]
        prefetch: Option<u32>,
        #[serde(default)]
        auto_ack: Option<bool>,
        #[serde(default)]
        base64: bool,
        /// A stream to read (instead of queue or exchange).
        #[serde(default)]
        stream: Option<String>,
        /// Streams: `first`, `last`, `next` (default) or an offset number.
        #[serde(default)]
        offset: Option<Json>,
        /// Streams: start at the first record at or after this time; overrides `offset`.
        #[serde(default)]
        timestamp_ms: Option<i64>,
        /// Streams: a consumer group; start at its committed offset if it has one.
        #[serde(default)]
        group: Option<String>,
        #[serde(default)]
        partition: Option<u32>,
        /// Streams: messages the server may send before the client grants more.
        #[serde(default)]
        credit: Option<u32>,
    },
    /// Streams: grant a subscription more credit.
    Credit {
        #[serde(default)]
        id: Option<Json>,
        subscription: String,
        credit: u32,
    },
    /// Streams: commit the subscription's group offset (default: after the last message sent).
    Commit {
        #[serde(default)]
        id: Option<Json>,
        subscription: String,
        #[serde(default)]
        offset: Option<u64>,
    },
    Unsubscribe {
        #[serde(default)]
        id: Option<Json>,
        subscription: String,
    },
    Ack {
        #[serde(default)]
        id: Option<Json>,
        #[serde(default)]
        delivery: Option<String>,
        #[serde(default)]
        deliveries: Vec<String>,
    },
    Nack {
        #[serde(default)]
        id: Option<Json>,
        #[serde(default)]
        delivery: Option<String>,
        #[serde(default)]
        deliveries: Vec<String>,
        #[serde(default = "yes")]
        requeue: bool,
    },
}

fn yes() -> bool {
    true
}

/// Where a stream subscription starts.
struct StreamFrom {
    offset: Option<Json>,
    timestamp_ms: Option<i64>,
    group: Option<String>,
    partition: u32,
}

struct Sub {
    name: String,
    attached: Attached,
    auto_ack: bool,
    base64: bool,
}

/// A stream subscription: a consumer of one partition with credit.
struct StreamSub {
    name: String,
    stream: Arc<Stream>,
    consumer: u64,
    partition: u32,
    group: Option<String>,
    base64: bool,
    /// Credit granted and not yet used (at most `PREFETCH_MAX`).
    credit: u32,
    /// The offset after the last message sent (what `commit` commits by default).
    next_offset: u64,
}

/// An unacked delivery: its subscription's queue and the message id there.
struct Unacked {
    queue: Arc<Queue>,
    consumer: u64,
    id: u64,
}

/// The longest the closing frame may wait for the client.
const CLOSE_WRITE_MAX: Duration = Duration::from_secs(5);

/// Why the loop ended.
enum End {
    /// The client closed or the socket failed: nothing more to send.
    Gone,
    /// The server ends it: send a close frame with this reason.
    Close(String),
}

struct Session {
    /// `http.websocket_timeout_ms`: the longest a send may wait for the client to read,
    /// and the longest the client may stay silent (pings are sent at half of it).
    timeout: Option<Duration>,
    state: AppState,
    auth: Auth,
    vhost: String,
    reg: Registered,
    tx: mpsc::UnboundedSender<ConsumerEvent>,
    rx: mpsc::UnboundedReceiver<ConsumerEvent>,
    subs: HashMap<String, Sub>,
    streams: HashMap<String, StreamSub>,
    by_consumer: HashMap<u64, String>,
    unacked: HashMap<u64, Unacked>,
    next_tag: u64,
    next_sub: u64,
}

type Sent = Result<(), axum::Error>;

/// Sends a JSON frame; a client that does not take it within `limit` fails the send.
async fn send(socket: &mut WebSocket, limit: Option<Duration>, v: &impl serde::Serialize) -> Sent {
    let text = serde_json::to_string(v).unwrap_or_else(|_| "{}".to_string());
    send_within(socket, limit, WsMessage::text(text)).await
}

async fn send_within(socket: &mut WebSocket, limit: Option<Duration>, m: WsMessage) -> Sent {
    match limit {
        None => socket.send(m).await,
        Some(d) => tokio::time::timeout(d, socket.send(m))
            .await
            .unwrap_or_else(|_| {
                Err(axum::Error::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client did not read within http.websocket_timeout_ms",
                )))
            }),
    }
}

fn error_json(id: &Option<Json>, e: &ApiError) -> Json {
    json!({"type": "error", "id": id, "status": e.status.as_u16(), "error": e.code, "reason": e.reason})
}

impl Session {
    async fn run(mut self, mut socket: WebSocket) {
        let end = self.serve(&mut socket).await;
        if let End::Close(reason) = end {
            let mut reason = reason;
            reason.truncate(120); // a close frame's reason is at most 123 bytes
            let frame = CloseFrame {
                code: 1001,
                reason: reason.into(),
            };
            let limit = Some(self.timeout.unwrap_or(CLOSE_WRITE_MAX).min(CLOSE_WRITE_MAX));
            let _ = send_within(&mut socket, limit, WsMessage::Close(Some(frame))).await;
        }
        self.finish();
    }

    async fn serve(&mut self, socket: &mut WebSocket) -> End {
        let mut shutdown = self.state.shutdown.clone();
        let mut close = self.reg.handle.close_requested();
        // Pings at half the timeout; any frame from the client (a pong included) is a sign
        // of life, and a client silent for the whole timeout is gone (a half-open TCP
        // connection would otherwise hold its unacked deliveries for ever).
        let period = self.timeout.map_or(Duration::from_secs(3600), |t| t / 2);
        let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heard = tokio::time::Instant::now();
        loop {
            self.reg.channel.unacked.store(
                self.unacked.len() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            if *shutdown.borrow() {
                return End::Close("server shutting down".into());
            }
            tokio::select! {
                biased;
                _ = shutdown.changed() => return End::Close("server shutting down".into()),
                r = close.changed() => {
                    let why = close.borrow().clone();
                    match (r, why) {
                        (Ok(()), Some(why)) => return End::Close(format!("closed by management: {why}")),
                        (Ok(()), None) => continue,
                        (Err(_), _) => return End::Close("connection closed".into()),
                    }
                }
                _ = pings.tick(), if self.timeout.is_some() => {
                    if self.timeout.is_some_and(|t| heard.elapsed() >= t) {
                        tracing::info!(peer = %self.reg.handle.info.peer, "WebSocket client silent for http.websocket_timeout_ms: closing");
                        return End::Close("no frame from the client within the timeout".into());
                    }
                    if send_within(socket, self.timeout, WsMessage::Ping(Default::default())).await.is_err() {
                        return End::Gone;
                    }
                }
                msg = socket.recv() => {
                    heard = tokio::time::Instant::now();
                    let text = match msg {
                        Some(Ok(WsMessage::Text(t))) => t.as_str().to_string(),
                        Some(Ok(WsMessage::Binary(b))) => match String::from_utf8(b.to_vec()) {
                            Ok(s) => s,
                            Err(_) => {
                                let e = ApiError::bad_request("binary frames must hold UTF-8 JSON");
                                if send(socket, self.timeout, &error_json(&None, &e)).await.is_err() {
                                    return End::Gone;
                                }
                                continue;
                            }
                        },
                        Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                        Some(Ok(WsMessage::Close(_)) | Err(_)) | None => return End::Gone,
                    };
                    if self.request(&text, socket).await.is_err() {
                        return End::Gone;
                    }
                }
                ev = self.rx.recv() => {
                    // `self.tx` keeps the channel open, so `None` never comes.
                    if let Some(ev) = ev {
                        if self.event(ev, socket, None).await.is_err() {
                            return End::Gone;
                        }
                    }
                }
            }
        }
    }

    /// Handles one client frame; an invalid one is answered with an error frame.
    async fn request(&mut self, text: &str, socket: &mut WebSocket) -> Sent {
        let v: Json = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                let e = ApiError::bad_request(format!("not JSON: {e}"));
                return send(socket, self.timeout, &error_json(&None, &e)).await;
            }
        };
        let id = v.get("id").cloned();
        let answer = if v.get("op").and_then(Json::as_str) == Some("publish") {
            self.publish(v, &id).await
        } else {
            match serde_json::from_value::<Request>(v) {
                Ok(r) => self.dispatch(r, socket).await,
                Err(e) => Err(ApiError::invalid(format!(
                    "bad request: {e} (ops: subscribe, unsubscribe, ack, nack, credit, commit, publish)"
                ))),
            }
        };
        match answer {
            Ok(Some(reply)) => send(socket, self.timeout, &reply).await,
            Ok(None) => Ok(()),
            Err(e) => send(socket, self.timeout, &error_json(&id, &e)).await,
        }
    }

    async fn dispatch(&mut self, r: Request, socket: &mut WebSocket) -> ApiResult<Option<Json>> {
        match r {
            Request::Subscribe {
                id,
                subscription,
                queue,
                exchange,
                pattern,
                prefetch,
                auto_ack,
                base64,
                stream,
                offset,
                timestamp_ms,
                group,
                partition,
                credit,
            } => {
                if let Some(name) = stream {
                    if queue.is_some() || exchange.is_some() || pattern.is_some() {
                        return Err(ApiError::invalid("give one of queue, exchange and stream"));
                    }
                    if prefetch.is_some() || auto_ack.is_some() {
                        return Err(ApiError::invalid(
                            "streams take credit, not prefetch or auto_ack (stream reads are not acked)",
                        ));
                    }
                    let from = StreamFrom {
                        offset,
                        timestamp_ms,
                        group,
                        partition: partition.unwrap_or(0),
                    };
                    let (sub, start) =
                        self.subscribe_stream(subscription, name, from, credit, base64)?;
                    let s = &self.streams[&sub];
                    return Ok(Some(
                        json!({"type": "subscribed", "id": id, "subscription": sub,
                        "stream": s.stream.name(), "partition": s.partition, "offset": start,
                        "credit": s.credit, "group": s.group}),
                    ));
                }
                if offset.is_some()
                    || timestamp_ms.is_some()
                    || group.is_some()
                    || partition.is_some()
                    || credit.is_some()
                {
                    return Err(ApiError::invalid(
                        "offset, timestamp_ms, group, partition and credit go with stream",
                    ));
                }
                let target = Target::from_fields(queue, exchange, pattern)?;
                let sub = self.subscribe(subscription, target, prefetch, auto_ack, base64)?;
                let s = &self.subs[&sub];
                Ok(Some(
                    json!({"type": "subscribed", "id": id, "subscription": sub,
                    "queue": s.attached.queue_name, "auto_ack": s.auto_ack}),
                ))
            }
            Request::Credit {
                id,
                subscription,
                credit,
            } => self.grant(id, &subscription, credit),
            Request::Commit {
                id,
                subscription,
                offset,
            } => self.commit(id, &subscription, offset).await,
            Request::Unsubscribe { id, subscription } => {
                self.unsubscribe(&subscription, socket).await?;
                Ok(Some(
                    json!({"type": "unsubscribed", "id": id, "subscription": subscription}),
                ))
            }
            Request::Ack {
                id,
                delivery,
                deliveries,
            } => self.settle(id, delivery, deliveries, None),
            Request::Nack {
                id,
                delivery,
                deliveries,
                requeue,
            } => self.settle(id, delivery, deliveries, Some(requeue)),
        }
    }

    fn subscribe(
        &mut self,
        name: Option<String>,
        target: Target,
        prefetch: Option<u32>,
        auto_ack: Option<bool>,
        base64: bool,
    ) -> ApiResult<String> {
        let prefetch = prefetch.unwrap_or(PREFETCH_DEFAULT);
        if prefetch == 0 || prefetch > PREFETCH_MAX {
            return Err(ApiError::invalid(format!(
                "prefetch must be 1 to {PREFETCH_MAX}"
            )));
        }
        let name = self.new_subscription(name)?;
        // Topic subscriptions are fire-and-forget by default; queues are acked.
        let auto_ack = auto_ack.unwrap_or(matches!(target, Target::Exchange { .. }));
        let opts = ConsumerOptions {
            tag: format!("ws-{}-{name}", self.reg.handle.id),
            no_ack: auto_ack,
            prefetch_count: prefetch,
            // What waits for this socket is bounded in bytes too (backpressure).
            prefetch_bytes: self
                .state
                .broker
                .admission()
                .limits()
                .consumer_window_bytes(0),
            ..Default::default()
        };
        let attached = attach(
            &self.state,
            &self.auth,
            &self.vhost,
            &target,
            &self.reg.handle,
            opts,
            self.tx.clone(),
        )?;
        self.by_consumer.insert(attached.consumer, name.clone());
        self.subs.insert(
            name.clone(),
            Sub {
                name: name.clone(),
                attached,
                auto_ack,
                base64,
            },
        );
        Ok(name)
    }

    /// Checks the subscription limit and picks (or checks) the subscription's name.
    fn new_subscription(&mut self, name: Option<String>) -> ApiResult<String> {
        if self.subs.len() + self.streams.len() >= SUBSCRIPTIONS_MAX {
            return Err(ApiError::too_many(format!(
                "a socket holds at most {SUBSCRIPTIONS_MAX} subscriptions"
            )));
        }
        let taken = |s: &Self, n: &str| s.subs.contains_key(n) || s.streams.contains_key(n);
        let name = match name {
            Some(n) if n.is_empty() || n.len() > SUBSCRIPTION_NAME_BYTES_MAX => {
                return Err(ApiError::invalid(format!(
                    "subscription names are 1 to {SUBSCRIPTION_NAME_BYTES_MAX} bytes"
                )))
            }
            Some(n) => n,
            None => loop {
                let n = format!("s{}", self.next_sub);
                self.next_sub += 1;
                if !taken(self, &n) {
                    break n;
                }
            },
        };
        if taken(self, &name) {
            return Err(ApiError::conflict(
                "subscription_exists",
                format!("this socket already has a subscription '{name}'"),
            ));
        }
        Ok(name)
    }

    /// Subscribes to a stream partition from an offset, a timestamp or a group's committed
    /// offset; returns the subscription's name and the offset it starts at.
    fn subscribe_stream(
        &mut self,
        name: Option<String>,
        stream_name: String,
        from: StreamFrom,
        credit: Option<u32>,
        base64: bool,
    ) -> ApiResult<(String, u64)> {
        let credit = credit.unwrap_or(PREFETCH_DEFAULT);
        if credit == 0 || credit > PREFETCH_MAX {
            return Err(ApiError::invalid(format!(
                "credit must be 1 to {PREFETCH_MAX}"
            )));
        }
        let vh = self.auth.check(
            &self.state,
            &self.vhost,
            Access::Read,
            "queue",
            &stream_name,
        )?;
        let s = stream(&vh, &stream_name)?;
        if from.partition >= s.partition_count() {
            return Err(ApiError::not_found(format!(
                "stream '{stream_name}' has no partition {} (it has {})",
                from.partition,
                s.partition_count()
            )));
        }
        let mut at = match (from.timestamp_ms, &from.offset) {
            (Some(ts), _) => StreamOffset::Timestamp(ts),
            (None, None) => StreamOffset::Next,
            (None, Some(Json::String(o))) => parse_offset(o)?,
            (None, Some(Json::Number(n))) => StreamOffset::Offset(n.as_u64().ok_or_else(|| {
                ApiError::invalid("offset must be first, last, next or a non-negative number")
            })?),
            (None, Some(_)) => {
                return Err(ApiError::invalid(
                    "offset must be first, last, next or a number",
                ))
            }
        };
        if let Some(g) = &from.group {
            check_group(g)?;
            if let Some(o) = s.committed_offset(g, from.partition)? {
                at = StreamOffset::Offset(o);
            }
        }
        let start = s.resolve(from.partition, at)?;
        let name = self.new_subscription(name)?;
        let opts = ConsumerOptions {
            tag: format!("ws-{}-{name}", self.reg.handle.id),
            no_ack: true,
            prefetch_count: credit,
            connection: self.reg.handle.id,
            channel: crate::subscribe::CHANNEL,
            ..Default::default()
        };
        let (consumer, s) = vh.consume_stream(
            &stream_name,
            opts,
            from.partition,
            StreamOffset::Offset(start),
            self.tx.clone(),
        )?;
        self.by_consumer.insert(consumer, name.clone());
        self.streams.insert(
            name.clone(),
            StreamSub {
                name: name.clone(),
                stream: s,
                consumer,
                partition: from.partition,
                group: from.group,
                base64,
                credit,
                next_offset: start,
            },
        );
        Ok((name, start))
    }

    /// Grants a stream subscription more credit (outstanding credit stays ≤ `PREFETCH_MAX`).
    fn grant(&mut self, id: Option<Json>, name: &str, n: u32) -> ApiResult<Option<Json>> {
        let s = self.streams.get_mut(name).ok_or_else(|| {
            ApiError::not_found(format!("this socket has no stream subscription '{name}'"))
        })?;
        if n == 0 || s.credit.saturating_add(n) > PREFETCH_MAX {
            return Err(ApiError::invalid(format!(
                "credit must be at least 1, and outstanding credit at most {PREFETCH_MAX} (now {})",
                s.credit
            )));
        }
        s.credit += n;
        s.stream.credit(s.consumer, n);
        if id.is_none() {
            return Ok(None);
        }
        Ok(Some(
            json!({"type": "credit", "id": id, "subscription": name, "credit": s.credit}),
        ))
    }

    /// Commits a stream subscription's group offset; answers once it is durable.
    async fn commit(
        &mut self,
        id: Option<Json>,
        name: &str,
        offset: Option<u64>,
    ) -> ApiResult<Option<Json>> {
        let s = self.streams.get(name).ok_or_else(|| {
            ApiError::not_found(format!("this socket has no stream subscription '{name}'"))
        })?;
        let group = s
            .group
            .clone()
            .ok_or_else(|| ApiError::invalid("subscribe with a group to commit offsets"))?;
        let offset = offset.unwrap_or(s.next_offset);
        let commit = s.stream.commit_offset(&group, s.partition, offset)?;
        let partition = s.partition;
        commit
            .await
            .map_err(|e| ApiError::from(ferrymq_core::CoreError::Storage(e)))?;
        Ok(Some(
            json!({"type": "committed", "id": id, "subscription": name, "group": group,
                   "partition": partition, "offset": offset}),
        ))
    }

    /// Cancels a subscription; its unacked and not yet written deliveries return to the queue.
    async fn unsubscribe(&mut self, name: &str, socket: &mut WebSocket) -> ApiResult<()> {
        if let Some(s) = self.streams.remove(name) {
            // Nothing to return: what is still in the channel for it is dropped as it comes.
            self.by_consumer.remove(&s.consumer);
            s.stream.cancel(s.consumer);
            return Ok(());
        }
        let sub = self.subs.remove(name).ok_or_else(|| {
            ApiError::not_found(format!("this socket has no subscription '{name}'"))
        })?;
        self.by_consumer.remove(&sub.attached.consumer);
        let vh = self.state.broker.vhost(&self.vhost);
        detach(vh.as_deref(), &sub.attached, self.reg.handle.id);
        // After `cancel` the core sends this consumer nothing more: what it sent before is in
        // the channel. Drain it now (writing other subscriptions' deliveries).
        while let Ok(ev) = self.rx.try_recv() {
            if self.event(ev, socket, Some(&sub)).await.is_err() {
                break;
            }
        }
        let consumer = sub.attached.consumer;
        let ids: Vec<u64> = self
            .unacked
            .extract_if_compat(|u| u.consumer == consumer)
            .map(|u| u.id)
            .collect();
        if !ids.is_empty() {
            sub.attached.queue.nack(&ids, true, now_ms());
        }
        Ok(())
    }

    fn settle(
        &mut self,
        id: Option<Json>,
        delivery: Option<String>,
        mut deliveries: Vec<String>,
        nack: Option<bool>,
    ) -> ApiResult<Option<Json>> {
        deliveries.extend(delivery);
        if deliveries.is_empty() || deliveries.len() > HANDLES_MAX {
            return Err(ApiError::invalid(format!(
                "give 1 to {HANDLES_MAX} deliveries (delivery or deliveries)"
            )));
        }
        let mut settled = Vec::new();
        let mut unknown = Vec::new();
        let mut by_queue: Vec<(Arc<Queue>, Vec<u64>)> = Vec::new();
        for d in deliveries {
            match d.parse::<u64>().ok().and_then(|t| self.unacked.remove(&t)) {
                Some(u) => {
                    match by_queue.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &u.queue)) {
                        Some((_, ids)) => ids.push(u.id),
                        None => by_queue.push((u.queue, vec![u.id])),
                    }
                    settled.push(d);
                }
                None => unknown.push(d),
            }
        }
        let now = now_ms();
        for (q, ids) in by_queue {
            match nack {
                None => q.ack(&ids, now),
                Some(requeue) => q.nack(&ids, requeue, now),
            }
        }
        if id.is_none() && unknown.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            json!({"type": "settled", "id": id, "settled": settled, "unknown": unknown}),
        ))
    }

    async fn publish(&mut self, v: Json, id: &Option<Json>) -> ApiResult<Option<Json>> {
        let Json::Object(mut m) = v else {
            return Err(ApiError::invalid("a request is a JSON object"));
        };
        m.remove("op");
        m.remove("id");
        let text = |m: &mut Map<String, Json>, k: &str| -> ApiResult<Option<String>> {
            match m.remove(k) {
                None | Some(Json::Null) => Ok(None),
                Some(Json::String(s)) => Ok(Some(s)),
                Some(_) => Err(ApiError::invalid(format!("{k} must be a string"))),
            }
        };
        let exchange = text(&mut m, "exchange")?;
        let queue = text(&mut m, "queue")?;
        let msg: PublishMessage = serde_json::from_value(Json::Object(m))
            .map_err(|e| ApiError::invalid(format!("bad message: {e}")))?;
        let mut msg = msg.into_message()?;
        check_user_id(&self.auth, &msg)?;
        let outcomes = match (exchange, queue) {
            (Some(x), None) => {
                let x = exchange_name(&x);
                let vh = self
                    .auth
                    .check(&self.state, &self.vhost, Access::Write, "exchange", x)?;
                self.auth.check_topic(
                    &self.state,
                    &self.vhost,
                    Access::Write,
                    x,
                    [msg.routing_key.as_str()],
                )?;
                publish_messages(&self.state, &vh, x, vec![msg]).await?
            }
            (None, Some(q)) => {
                let vh = direct_target(&self.state, &self.auth, &self.vhost, &q)?;
                msg.routing_key = q;
                publish_messages(&self.state, &vh, "", vec![msg]).await?
            }
            _ => return Err(ApiError::invalid("give either exchange or queue")),
        };
        let stats = &self.reg.handle.stats;
        stats
            .messages_in
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let r = single(outcomes)?.0;
        Ok(Some(
            json!({"type": "published", "id": id, "routed": r.routed, "routed_to": r.routed_to}),
        ))
    }

    /// Writes deliveries (or a cancel notice) to the socket. Deliveries of `retiring` (a
    /// subscription being cancelled) go back to their queue instead.
    async fn event(
        &mut self,
        ev: ConsumerEvent,
        socket: &mut WebSocket,
        retiring: Option<&Sub>,
    ) -> Sent {
        match ev {
            ConsumerEvent::Deliver(ds) => self.deliver(ds, socket, retiring).await,
            ConsumerEvent::Cancelled { consumer, .. } => {
                let Some(name) = self.by_consumer.remove(&consumer) else {
                    return Ok(());
                };
                if let Some(s) = self.streams.remove(&name) {
                    return send(
                        socket,
                        self.timeout,
                        &json!({"type": "cancelled", "subscription": name,
                            "stream": s.stream.name(), "reason": "the stream was deleted"}),
                    )
                    .await;
                }
                let sub = self.subs.remove(&name);
                let queue = sub.as_ref().map(|s| s.attached.queue_name.clone());
                self.unacked.retain(|_, u| u.consumer != consumer);
                send(
                    socket,
                    self.timeout,
                    &json!({"type": "cancelled", "subscription": name, "queue": queue,
                        "reason": "the queue was deleted"}),
                )
                .await
            }
        }
    }

    async fn deliver(
        &mut self,
        ds: Vec<Delivery>,
        socket: &mut WebSocket,
        retiring: Option<&Sub>,
    ) -> Sent {
        let mut released: Vec<(Arc<Queue>, u64, u32, u64)> = Vec::new();
        let mut requeue: Vec<(Arc<Queue>, u64)> = Vec::new();
        let mut out = Ok(());
        let stats = &self.reg.handle.stats;
        for d in ds {
            let stream_sub = self
                .by_consumer
                .get(&d.consumer)
                .and_then(|n| self.streams.get_mut(n));
            if let Some(s) = stream_sub {
                // A stream record: sent with its offset, paid for with one unit of credit.
                if out.is_err() {
                    continue;
                }
                s.credit = s.credit.saturating_sub(1);
                s.next_offset = d.id + 1;
                let ev = json!({"type": "message", "subscription": s.name,
                    "stream": s.stream.name(), "partition": s.partition, "offset": d.id,
                    "message": MessageJson::from_core(&d.message, s.base64)});
                out = send(socket, self.timeout, &ev).await;
                stats
                    .messages_out
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                stats.bytes_out.fetch_add(
                    d.message.body.len() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
                continue;
            }
            let sub = match self.by_consumer.get(&d.consumer) {
                Some(name) => self.subs.get(name),
                None => retiring.filter(|s| s.attached.consumer == d.consumer),
            };
            let Some(sub) = sub else { continue };
            let retired = retiring.is_some_and(|s| s.attached.consumer == d.consumer);
            if out.is_err() || retired {
                if !sub.auto_ack {
                    requeue.push((sub.attached.queue.clone(), d.id));
                }
                continue;
            }
            let delivery = if sub.auto_ack {
                None
            } else {
                let tag = self.next_tag;
                self.next_tag += 1;
                self.unacked.insert(
                    tag,
                    Unacked {
                        queue: sub.attached.queue.clone(),
                        consumer: d.consumer,
                        id: d.id,
                    },
                );
                Some(tag.to_string())
            };
            let ev = MessageEvent::new(
                Some(&sub.name),
                &sub.attached.queue_name,
                delivery,
                &d,
                sub.base64,
            );
            let bytes = d.message.body.len() as u64;
            out = send(socket, self.timeout, &ev).await;
            stats
                .messages_out
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            stats
                .bytes_out
                .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
            if sub.auto_ack {
                match released.iter_mut().find(|r| r.1 == d.consumer) {
                    Some(r) => {
                        r.2 += 1;
                        r.3 += bytes;
                    }
                    None => released.push((sub.attached.queue.clone(), d.consumer, 1, bytes)),
                }
            }
        }
        let now = now_ms();
        for (q, consumer, n, bytes) in released {
            q.release(consumer, n, bytes, now);
        }
        for (q, id) in requeue {
            q.nack(&[id], true, now);
        }
        out
    }

    /// Cancels every consumer and returns unacked and unwritten deliveries to their queues.
    /// Dropping `self.reg` afterwards unregisters the connection (deleting server-named queues).
    fn finish(mut self) {
        let vh = self.state.broker.vhost(&self.vhost);
        for sub in self.subs.values() {
            detach(vh.as_deref(), &sub.attached, self.reg.handle.id);
        }
        for s in self.streams.values() {
            s.stream.cancel(s.consumer);
        }
        let now = now_ms();
        while let Ok(ev) = self.rx.try_recv() {
            if let ConsumerEvent::Deliver(ds) = ev {
                for d in ds {
                    let sub = self
                        .by_consumer
                        .get(&d.consumer)
                        .and_then(|n| self.subs.get(n));
                    if let Some(sub) = sub.filter(|s| !s.auto_ack) {
                        sub.attached.queue.nack(&[d.id], true, now);
                    }
                }
            }
        }
        for (_, u) in self.unacked.drain() {
            u.queue.nack(&[u.id], true, now);
        }
    }
}

/// `HashMap::extract_if` is not stable on our MSRV: remove and return matching values.
trait ExtractIfCompat<V> {
    fn extract_if_compat(&mut self, f: impl Fn(&V) -> bool) -> std::vec::IntoIter<V>;
}

impl<K: std::hash::Hash + Eq + Copy, V> ExtractIfCompat<V> for HashMap<K, V> {
    fn extract_if_compat(&mut self, f: impl Fn(&V) -> bool) -> std::vec::IntoIter<V> {
        let keys: Vec<K> = self.iter().filter(|(_, v)| f(v)).map(|(k, _)| *k).collect();
        let out: Vec<V> = keys.iter().filter_map(|k| self.remove(k)).collect();
        out.into_iter()
    }
}
