//! Pulling from a queue over HTTP with SQS semantics: receive up to N messages (long polling
//! up to `wait_ms`), each leased under a receipt handle until its ack deadline; ack, nack
//! (requeue, requeue after a delay, or dead-letter) and extend by receipt handle.
//!
//! Long polling without spinning: when the queue is empty, the request attaches a temporary
//! consumer (prefetch = the messages still wanted) and sleeps on its channel until a delivery
//! or the wait ends; it then cancels the consumer and drains what was already sent. The
//! [`TempConsumer`] guard cancels and returns undelivered messages when the client goes away
//! mid-poll. Auto-delete queues are polled every [`POLL_INTERVAL_MS`] instead, because
//! cancelling the last consumer of an auto-delete queue deletes it.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use ferrymq_core::queue::Queue;
use ferrymq_core::{ConsumerEvent, ConsumerOptions, Delivery, QueueRef, VHost};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use utoipa::ToSchema;

use crate::auth::{Access, Auth};
use crate::convert::MessageJson;
use crate::error::{ApiError, ApiErrors, ApiResult};
use crate::json::{ApiJson, ApiPath};
use crate::leases::{settle, Lease};
use crate::state::AppState;

/// Messages one pull may return.
pub const PULL_MESSAGES_MAX: u32 = 1000;
/// Longest long poll.
pub const WAIT_MS_MAX: u64 = 20_000;
/// Default ack deadline (visibility timeout).
pub const VISIBILITY_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Shortest and longest ack deadline.
pub const VISIBILITY_TIMEOUT_MS_MIN: u64 = 100;
pub const VISIBILITY_TIMEOUT_MS_MAX: u64 = 12 * 3_600_000;
/// Receipt handles in one ack, nack or extend.
pub const HANDLES_MAX: usize = 1000;
/// Poll period for auto-delete queues.
pub const POLL_INTERVAL_MS: u64 = 50;
/// Longest delay of a nack with requeue after a delay.
pub const NACK_DELAY_MS_MAX: u64 = 24 * 3_600_000;

fn one() -> u32 {
    1
}
fn vis_default() -> u64 {
    VISIBILITY_TIMEOUT_MS_DEFAULT
}
fn yes() -> bool {
    true
}

/// What to pull.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    /// 1 to 1000.
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 1000, default = 1)]
    pub max_messages: u32,
    /// Long poll: wait up to this long (0 to 20000 ms) for a first message.
    #[serde(default)]
    #[schema(maximum = 20000)]
    pub wait_ms: u64,
    /// Ack deadline (100 ms to 12 h): unsettled messages return to the queue after it.
    #[serde(default = "vis_default")]
    #[schema(minimum = 100, maximum = 43200000, default = 30000)]
    pub visibility_timeout_ms: u64,
    /// Settle on delivery (at most once): no receipt handles.
    #[serde(default)]
    pub auto_ack: bool,
    /// Always base64-encode payloads.
    #[serde(default)]
    pub base64: bool,
}

/// A pulled message.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PulledMessage {
    /// Settles this delivery (absent with `auto_ack`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_handle: Option<String>,
    /// When the message returns to the queue unless acked or extended (ms since epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<i64>,
    pub delivery_count: u32,
    pub redelivered: bool,
    pub message: MessageJson,
}

/// The answer to a pull.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PullResponse {
    pub messages: Vec<PulledMessage>,
}

/// Receipt handles to ack.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    pub receipt_handles: Vec<String>,
}

/// Receipt handles to nack.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NackRequest {
    pub receipt_handles: Vec<String>,
    /// Back to the queue (true, default) or dead-lettered / dropped (false).
    #[serde(default = "yes")]
    pub requeue: bool,
    /// With requeue: ready again only after this many ms.
    #[serde(default)]
    #[schema(maximum = 86400000)]
    pub delay_ms: Option<u64>,
}

/// Receipt handles whose deadline to move.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    pub receipt_handles: Vec<String>,
    /// New deadline, counted from now.
    #[schema(minimum = 100, maximum = 43200000)]
    pub visibility_timeout_ms: u64,
}

/// Which handles were settled and which were not known (expired, settled, or another queue's).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SettleResponse {
    pub settled: Vec<String>,
    pub unknown: Vec<String>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The classic queue `name`.
///
/// # Errors
/// 404, or 409 for a stream.
pub fn classic(vh: &VHost, name: &str) -> ApiResult<Arc<Queue>> {
    match vh.queue(name) {
        Some(QueueRef::Classic(q)) => Ok(q),
        Some(QueueRef::Stream(_)) => Err(ApiError::conflict(
            "is_a_stream",
            format!(
                "'{name}' is a stream: read it with GET /api/streams/{{vhost}}/{name}/messages"
            ),
        )),
        None => Err(ApiError::not_found(format!(
            "no queue '{name}' in vhost '{}'",
            vh.name
        ))),
    }
}

/// A consumer attached for one long poll. Dropping it (client gone) cancels the consumer and
/// returns what it received to the queue.
pub struct TempConsumer {
    queue: Arc<Queue>,
    id: u64,
    rx: mpsc::UnboundedReceiver<ConsumerEvent>,
    got: Vec<Delivery>,
    no_ack: bool,
    done: bool,
}

impl TempConsumer {
    /// Attaches a consumer with room for `prefetch` messages.
    ///
    /// # Errors
    /// As `VHost::consume`.
    pub fn attach(vh: &VHost, name: &str, prefetch: u32, no_ack: bool) -> ApiResult<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let opts = ConsumerOptions {
            tag: format!("http-pull-{:08x}", fastrand::u32(..)),
            no_ack,
            prefetch_count: prefetch,
            ..Default::default()
        };
        let (id, q) = vh.consume(name, opts, None, tx)?;
        let QueueRef::Classic(queue) = q else {
            return Err(ApiError::conflict(
                "is_a_stream",
                format!("'{name}' is a stream"),
            ));
        };
        Ok(TempConsumer {
            queue,
            id,
            rx,
            got: Vec::new(),
            no_ack,
            done: false,
        })
    }

    fn take(&mut self, ev: ConsumerEvent) -> bool {
        match ev {
            ConsumerEvent::Deliver(ds) => {
                self.got.extend(ds);
                true
            }
            _ => false,
        }
    }

    /// Waits up to `wait` for a first batch (or shutdown).
    ///
    /// # Cancel safety
    /// Cancel safe: deliveries stay in the channel or in `self`, and dropping `self` returns
    /// them to the queue.
    pub async fn wait(
        &mut self,
        wait: Duration,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) {
        if *shutdown.borrow() {
            return;
        }
        tokio::select! {
            ev = self.rx.recv() => {
                if let Some(ev) = ev {
                    self.take(ev);
                }
            }
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
    }

    fn stop(&mut self) {
        self.queue.cancel(self.id, now_ms());
        while let Ok(ev) = self.rx.try_recv() {
            self.take(ev);
        }
    }

    /// Cancels the consumer and returns everything it received (in unacked under `GET`
    /// semantics unless `no_ack`).
    pub fn finish(mut self) -> (Arc<Queue>, Vec<Delivery>) {
        self.stop();
        self.done = true;
        (self.queue.clone(), std::mem::take(&mut self.got))
    }
}

impl Drop for TempConsumer {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.stop();
        if !self.no_ack && !self.got.is_empty() {
            let ids: Vec<u64> = self.got.iter().map(|d| d.id).collect();
            self.queue.nack(&ids, true, now_ms());
        }
    }
}

/// Receive up to N messages, long polling up to `wait_ms`; each is leased until its deadline.
#[utoipa::path(post, path = "/api/queues/{vhost}/{name}/get", tag = "consume",
    params(("vhost" = String, Path), ("name" = String, Path)),
    request_body = PullRequest,
    responses((status = 200, description = "Zero or more messages", body = PullResponse), ApiErrors),
    security(("basic" = []), ("bearer" = [])))]
pub async fn pull(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, name)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<PullRequest>,
) -> ApiResult<Json<PullResponse>> {
    req.validate()?;
    let vh = auth.check(&state, &vhost, Access::Read, "queue", &name)?;
    let q = classic(&vh, &name)?;
    let max = req.max_messages as usize;
    if !req.auto_ack && !state.leases.has_room(max) {
        return Err(ApiError::too_many(format!(
            "{} messages are leased over HTTP; ack some first",
            crate::leases::LEASES_MAX
        )));
    }
    let mut got: Vec<Delivery> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(req.wait_ms);
    let mut shutdown = state.shutdown.clone();
    loop {
        let now = now_ms();
        while got.len() < max {
            match q.get(req.auto_ack, now) {
                Some((d, _)) => got.push(d),
                None => break,
            }
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !got.is_empty() || left.is_zero() || *shutdown.borrow() {
            break;
        }
        if q.decl.auto_delete {
            tokio::select! {
                _ = tokio::time::sleep(left.min(Duration::from_millis(POLL_INTERVAL_MS))) => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        let mut c = TempConsumer::attach(&vh, &name, req.max_messages, req.auto_ack)?;
        c.wait(left, &mut shutdown).await;
        let (_, ds) = c.finish();
        got.extend(ds);
        break;
    }
    let now = now_ms();
    let deadline_ms = now.saturating_add(req.visibility_timeout_ms as i64);
    let messages = got
        .into_iter()
        .map(|d| {
            let (receipt_handle, deadline) = if req.auto_ack {
                (None, None)
            } else {
                let h = state.leases.add(Lease {
                    vhost: vhost.clone(),
                    queue_name: name.clone(),
                    queue: q.clone(),
                    id: d.id,
                    deadline_ms,
                });
                (Some(h), Some(deadline_ms))
            };
            PulledMessage {
                receipt_handle,
                deadline_ms: deadline,
                delivery_count: d.delivery_count,
                redelivered: d.redelivered,
                message: MessageJson::from_core(&d.message, req.base64),
            }
        })
        .collect();
    Ok(Json(PullResponse { messages }))
}

fn check_visibility(ms: u64) -> ApiResult<()> {
    if !(VISIBILITY_TIMEOUT_MS_MIN..=VISIBILITY_TIMEOUT_MS_MAX).contains(&ms) {
        return Err(ApiError::invalid(format!(
            "visibility_timeout_ms must be {VISIBILITY_TIMEOUT_MS_MIN} to {VISIBILITY_TIMEOUT_MS_MAX}"
        )));
    }
    Ok(())
}

impl PullRequest {
    /// The bounds a pull checks before touching the queue.
    ///
    /// # Errors
    /// 422 for a value out of its range.
    pub fn validate(&self) -> ApiResult<()> {
        if self.max_messages == 0 || self.max_messages > PULL_MESSAGES_MAX {
            return Err(ApiError::invalid(format!(
                "max_messages must be 1 to {PULL_MESSAGES_MAX}"
            )));
        }
        if self.wait_ms > WAIT_MS_MAX {
            return Err(ApiError::invalid(format!(
                "wait_ms must be at most {WAIT_MS_MAX}"
            )));
        }
        check_visibility(self.visibility_timeout_ms)
    }
}

impl AckRequest {
    /// The bounds an ack checks before settling.
    ///
    /// # Errors
    /// 422 for no or too many handles.
    pub fn validate(&self) -> ApiResult<()> {
        check_handles(&self.receipt_handles)
    }
}

impl NackRequest {
    /// The bounds a nack checks before settling.
    ///
    /// # Errors
    /// 422 for no or too many handles, a delay out of range or without requeue.
    pub fn validate(&self) -> ApiResult<()> {
        check_handles(&self.receipt_handles)?;
        if self.delay_ms.is_some_and(|d| d > NACK_DELAY_MS_MAX) {
            return Err(ApiError::invalid(format!(
                "delay_ms must be at most {NACK_DELAY_MS_MAX}"
            )));
        }
        if self.delay_ms.is_some() && !self.requeue {
            return Err(ApiError::invalid("delay_ms needs requeue: true"));
        }
        Ok(())
    }
}

impl ExtendRequest {
    /// The bounds an extend checks before moving deadlines.
    ///
    /// # Errors
    /// 422 for no or too many handles, or a deadline out of range.
    pub fn validate(&self) -> ApiResult<()> {
        check_handles(&self.receipt_handles)?;
        check_visibility(self.visibility_timeout_ms)
    }
}

fn check_handles(h: &[String]) -> ApiResult<()> {
    if h.is_empty() || h.len() > HANDLES_MAX {
        return Err(ApiError::invalid(format!(
            "receipt_handles must hold 1 to {HANDLES_MAX} handles"
        )));
    }
    Ok(())
}

/// Ack pulled messages by receipt handle.
#[utoipa::path(post, path = "/api/queues/{vhost}/{name}/ack", tag = "consume",
    params(("vhost" = String, Path), ("name" = String, Path)),
    request_body = AckRequest,
    responses((status = 200, description = "Settled and unknown handles", body = SettleResponse), ApiErrors),
    security(("basic" = []), ("bearer" = [])))]
pub async fn ack(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, name)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<AckRequest>,
) -> ApiResult<Json<SettleResponse>> {
    req.validate()?;
    auth.check(&state, &vhost, Access::Read, "queue", &name)?;
    let (leases, unknown) = state.leases.take(&vhost, &name, &req.receipt_handles);
    let settled = settled_handles(&req.receipt_handles, &unknown);
    let now = now_ms();
    settle(leases, |q, ids| q.ack(ids, now));
    Ok(Json(SettleResponse { settled, unknown }))
}

fn settled_handles(all: &[String], unknown: &[String]) -> Vec<String> {
    all.iter()
        .filter(|h| !unknown.contains(h))
        .cloned()
        .collect()
}

/// Nack pulled messages: requeue (optionally after a delay) or dead-letter.
#[utoipa::path(post, path = "/api/queues/{vhost}/{name}/nack", tag = "consume",
    params(("vhost" = String, Path), ("name" = String, Path)),
    request_body = NackRequest,
    responses((status = 200, description = "Settled and unknown handles", body = SettleResponse), ApiErrors),
    security(("basic" = []), ("bearer" = [])))]
pub async fn nack(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, name)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<NackRequest>,
) -> ApiResult<Json<SettleResponse>> {
    req.validate()?;
    auth.check(&state, &vhost, Access::Read, "queue", &name)?;
    let (leases, unknown) = state.leases.take(&vhost, &name, &req.receipt_handles);
    let settled = settled_handles(&req.receipt_handles, &unknown);
    let now = now_ms();
    settle(leases, |q, ids| match req.delay_ms {
        Some(d) => q.nack_with_delay(ids, true, Some(d), now),
        None => q.nack(ids, req.requeue, now),
    });
    Ok(Json(SettleResponse { settled, unknown }))
}

/// Move the ack deadline of pulled messages.
#[utoipa::path(post, path = "/api/queues/{vhost}/{name}/extend", tag = "consume",
    params(("vhost" = String, Path), ("name" = String, Path)),
    request_body = ExtendRequest,
    responses((status = 200, description = "Extended and unknown handles", body = SettleResponse), ApiErrors),
    security(("basic" = []), ("bearer" = [])))]
pub async fn extend(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, name)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<ExtendRequest>,
) -> ApiResult<Json<SettleResponse>> {
    req.validate()?;
    auth.check(&state, &vhost, Access::Read, "queue", &name)?;
    let deadline = now_ms().saturating_add(req.visibility_timeout_ms as i64);
    let (settled, unknown) = state
        .leases
        .extend(&vhost, &name, &req.receipt_handles, deadline);
    Ok(Json(SettleResponse { settled, unknown }))
}
