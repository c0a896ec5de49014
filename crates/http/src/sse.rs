//! Server-Sent Events: read-only subscriptions to a queue
//! (`GET /api/queues/{vhost}/{name}/events`) or to an exchange with a routing pattern
//! (`GET /api/exchanges/{vhost}/{name}/events?pattern=…`).
//!
//! The first event is `subscribed` (naming the queue); then one `message` event per
//! delivery, and `cancelled` if the queue is deleted. A queue's deliveries are **acked as
//! they are handed to the connection** (at most once): the consumer holds at most `prefetch`
//! unacked deliveries, each acked when its event is yielded to the response body, and what
//! was not yet yielded when the client goes away returns to the queue. The stream's state
//! lives in [`EventStream`], whose `Drop` does that cleanup and unregisters the connection
//! (deleting an exchange subscription's server-named queue).

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, KeepAliveStream, Sse};
use ferrymq_core::{ConsumerEvent, ConsumerOptions, Delivery};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::auth::Auth;
use crate::error::{ApiError, ApiResult};
use crate::json::{ApiPath, ApiQuery};
use crate::state::AppState;
use crate::subscribe::{
    attach, detach, now_ms, register, Attached, MessageEvent, Peer, Registered, Target,
    PREFETCH_DEFAULT, PREFETCH_MAX,
};

/// Query of a queue event stream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueEventsQuery {
    /// Deliveries buffered ahead of the connection (1 to 1000, default 100).
    #[serde(default)]
    pub prefetch: Option<u32>,
    /// Always base64-encode payloads.
    #[serde(default)]
    pub base64: bool,
    /// A bearer token (browsers' `EventSource` cannot set headers).
    #[serde(default)]
    pub access_token: Option<String>,
}

/// Query of an exchange event stream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeEventsQuery {
    /// Binding key of the server-named queue (default `#`; for a fanout exchange it is ignored).
    #[serde(default)]
    pub pattern: Option<String>,
    #[serde(default)]
    pub prefetch: Option<u32>,
    #[serde(default)]
    pub base64: bool,
    #[serde(default)]
    pub access_token: Option<String>,
}

type EventSse = Sse<KeepAliveStream<BoxedEvents>>;
type BoxedEvents = std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>>;

/// `GET /api/queues/{vhost}/{name}/events`.
pub async fn queue_events(
    State(state): State<AppState>,
    auth: Auth,
    Peer(peer): Peer,
    ApiPath((vhost, name)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<QueueEventsQuery>,
) -> ApiResult<EventSse> {
    start(
        state,
        &auth,
        peer,
        vhost,
        Target::Queue(name),
        q.prefetch,
        q.base64,
    )
}

/// `GET /api/exchanges/{vhost}/{name}/events?pattern=…`.
pub async fn exchange_events(
    State(state): State<AppState>,
    auth: Auth,
    Peer(peer): Peer,
    ApiPath((vhost, name)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<ExchangeEventsQuery>,
) -> ApiResult<EventSse> {
    let target = Target::from_fields(None, Some(name), q.pattern)?;
    start(state, &auth, peer, vhost, target, q.prefetch, q.base64)
}

fn start(
    state: AppState,
    auth: &Auth,
    peer: String,
    vhost: String,
    target: Target,
    prefetch: Option<u32>,
    base64: bool,
) -> ApiResult<EventSse> {
    let prefetch = prefetch.unwrap_or(PREFETCH_DEFAULT);
    if prefetch == 0 || prefetch > PREFETCH_MAX {
        return Err(ApiError::invalid(format!(
            "prefetch must be 1 to {PREFETCH_MAX}"
        )));
    }
    auth.vhost(&state, &vhost)?;
    let reg = register(&state.broker, "sse", peer, auth, &vhost)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let opts = ConsumerOptions {
        tag: format!("sse-{}", reg.handle.id),
        no_ack: false,
        prefetch_count: prefetch,
        // What waits for this response is bounded in bytes too (backpressure).
        prefetch_bytes: state.broker.admission().limits().consumer_window_bytes(0),
        ..Default::default()
    };
    let attached = attach(&state, auth, &vhost, &target, &reg.handle, opts, tx)?;
    let shutdown = state.shutdown.clone();
    let close = reg.handle.close_requested();
    let s = EventStream {
        state,
        vhost,
        attached,
        rx,
        buf: VecDeque::new(),
        shutdown,
        close,
        base64,
        started: false,
        done: false,
        reg,
    };
    let stream = futures_util::stream::unfold(s, |mut s| async move {
        let ev = s.next_event().await?;
        Some((Ok(ev), s))
    });
    Ok(Sse::new(Box::pin(stream) as BoxedEvents).keep_alive(KeepAlive::default()))
}

/// One event stream's state; dropping it (stream ended or client gone) cleans up.
struct EventStream {
    state: AppState,
    vhost: String,
    attached: Attached,
    rx: mpsc::UnboundedReceiver<ConsumerEvent>,
    buf: VecDeque<Delivery>,
    shutdown: watch::Receiver<bool>,
    close: watch::Receiver<Option<String>>,
    base64: bool,
    started: bool,
    done: bool,
    /// Last field: dropped after `Drop::drop` ran, so the consumer is cancelled first.
    reg: Registered,
}

impl EventStream {
    async fn next_event(&mut self) -> Option<Event> {
        if !self.started {
            self.started = true;
            let data = json!({"queue": self.attached.queue_name}).to_string();
            return Some(Event::default().event("subscribed").data(data));
        }
        loop {
            if self.done {
                return None;
            }
            if let Some(d) = self.buf.pop_front() {
                self.attached.queue.ack(&[d.id], now_ms());
                let ev = MessageEvent::new(None, &self.attached.queue_name, None, &d, self.base64);
                let data = serde_json::to_string(&ev).unwrap_or_else(|_| "{}".into());
                let stats = &self.reg.handle.stats;
                stats
                    .messages_out
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Some(Event::default().event("message").data(data));
            }
            if *self.shutdown.borrow() || self.close.borrow().is_some() {
                return None;
            }
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => return None,
                r = self.close.changed() => {
                    if r.is_err() || self.close.borrow().is_some() {
                        return None;
                    }
                }
                ev = self.rx.recv() => match ev {
                    Some(ConsumerEvent::Deliver(ds)) => self.buf.extend(ds),
                    Some(ConsumerEvent::Cancelled { .. }) | None => {
                        self.done = true;
                        let data = json!({"queue": self.attached.queue_name,
                            "reason": "the queue was deleted"}).to_string();
                        return Some(Event::default().event("cancelled").data(data));
                    }
                },
            }
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        let vh = self.state.broker.vhost(&self.vhost);
        detach(vh.as_deref(), &self.attached, self.reg.handle.id);
        let mut ids: Vec<u64> = self.buf.drain(..).map(|d| d.id).collect();
        while let Ok(ev) = self.rx.try_recv() {
            if let ConsumerEvent::Deliver(ds) = ev {
                ids.extend(ds.iter().map(|d| d.id));
            }
        }
        if !ids.is_empty() {
            self.attached.queue.nack(&ids, true, now_ms());
        }
    }
}
