//! Publishing over HTTP: one message or a batch, to an exchange with a routing key or straight
//! to a queue or stream, as a JSON envelope or a raw body. Answers only once the messages are
//! durable at the tier their destinations require (`Published::durable`).

use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use ferrymq_core::{Message, VHost};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Access, Auth};
use crate::convert::{message_from_raw, PublishMessage};
use crate::error::{ApiError, ApiErrors, ApiResult};
use crate::json::{ApiJson, ApiPath, ApiQuery, RawBody};
use crate::state::AppState;

/// Messages in one batch publish.
pub const BATCH_MESSAGES_MAX: usize = 1000;
/// How long a publish waits for a resource alarm to clear before answering 503.
pub const BLOCKED_WAIT_MS_MAX: u64 = 5_000;

/// The answer to a single publish.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PublishResult {
    /// At least one queue or stream took the message.
    pub routed: bool,
    /// How many queues and streams took it.
    pub routed_to: u64,
}

/// One message's fate within a batch.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchOutcome {
    pub routed_to: u64,
    /// Queues that refused it (`x-overflow: reject-publish`).
    pub rejected: u64,
}

/// The answer to a batch publish.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchResult {
    pub published: u64,
    /// Messages taken by at least one queue or stream.
    pub routed: u64,
    /// Messages no queue took or refused.
    pub unroutable: u64,
    /// Messages refused by at least one queue.
    pub rejected: u64,
    pub outcomes: Vec<BatchOutcome>,
}

/// A batch of messages.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishBatch {
    pub messages: Vec<PublishMessage>,
}

/// Query of a raw-body publish.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RawQuery {
    /// Routing key (exchanges only).
    #[serde(default)]
    pub routing_key: String,
    /// Ignored here: accepted so browsers can authenticate.
    #[serde(default)]
    pub access_token: Option<String>,
}

/// Waits (bounded) while a resource alarm blocks publishers.
async fn wait_unblocked(state: &AppState) -> ApiResult<()> {
    let mut flow = state.broker.flow();
    if !flow.borrow().blocked() {
        return Ok(());
    }
    let waited = tokio::time::timeout(
        Duration::from_millis(BLOCKED_WAIT_MS_MAX),
        flow.wait_for(|f| !f.blocked()),
    )
    .await
    .map(|r| r.is_ok());
    match waited {
        Ok(true) => Ok(()),
        _ => Err(ApiError::unavailable(
            "resource_alarm",
            "publishing is blocked by a memory or disk alarm; retry later",
        )),
    }
}

/// The exchange name as the core knows it (`amq.default` is the default exchange).
pub fn exchange_name(name: &str) -> &str {
    if name == "amq.default" {
        ""
    } else {
        name
    }
}

pub(crate) fn check_user_id(auth: &Auth, m: &Message) -> ApiResult<()> {
    match &m.properties.user_id {
        Some(u) if u != auth.name() => Err(ApiError::invalid(format!(
            "user_id property '{u}' does not match the authenticated user '{}'",
            auth.name()
        ))),
        _ => Ok(()),
    }
}

/// Publishes and waits until durable; the one publish path of the HTTP adapter.
///
/// # Errors
/// Routing and storage errors, 503 while blocked.
pub async fn publish_messages(
    state: &AppState,
    vh: &VHost,
    exchange: &str,
    msgs: Vec<Message>,
) -> ApiResult<Vec<BatchOutcome>> {
    wait_unblocked(state).await?;
    let batch = vh.publish_batch(exchange, msgs)?;
    let outcomes = batch
        .outcomes
        .iter()
        .map(|o| BatchOutcome {
            routed_to: o.routed as u64,
            rejected: o.rejected as u64,
        })
        .collect();
    batch.durable().await?;
    Ok(outcomes)
}

/// Puts messages straight into one queue or stream, keeping their exchange and routing key
/// (moves and redrives), and waits until durable; like [`publish_messages`] otherwise.
///
/// # Errors
/// 404, 409 (another connection's exclusive queue), storage errors, 503 while blocked.
pub async fn publish_to_queue(
    state: &AppState,
    vh: &VHost,
    queue: &str,
    msgs: Vec<Message>,
) -> ApiResult<Vec<BatchOutcome>> {
    wait_unblocked(state).await?;
    let batch = vh.publish_to_queue(queue, msgs, 0)?;
    let outcomes = batch
        .outcomes
        .iter()
        .map(|o| BatchOutcome {
            routed_to: o.routed as u64,
            rejected: o.rejected as u64,
        })
        .collect();
    batch.durable().await?;
    Ok(outcomes)
}

pub(crate) fn single(mut outcomes: Vec<BatchOutcome>) -> ApiResult<Json<PublishResult>> {
    let o = outcomes.pop().unwrap_or(BatchOutcome {
        routed_to: 0,
        rejected: 0,
    });
    if o.rejected > 0 {
        return Err(ApiError::conflict(
            "rejected",
            format!(
                "{} queue(s) refused the message (x-overflow reject-publish); {} took it",
                o.rejected, o.routed_to
            ),
        ));
    }
    Ok(Json(PublishResult {
        routed: o.routed_to > 0,
        routed_to: o.routed_to,
    }))
}

fn batch_result(outcomes: Vec<BatchOutcome>) -> Json<BatchResult> {
    Json(BatchResult {
        published: outcomes.len() as u64,
        routed: outcomes.iter().filter(|o| o.routed_to > 0).count() as u64,
        unroutable: outcomes
            .iter()
            .filter(|o| o.routed_to == 0 && o.rejected == 0)
            .count() as u64,
        rejected: outcomes.iter().filter(|o| o.rejected > 0).count() as u64,
        outcomes,
    })
}

impl PublishBatch {
    /// The neutral messages, checked as a batch publish checks them before routing.
    ///
    /// # Errors
    /// 422 for an empty or oversized batch, or a message [`PublishMessage::into_message`]
    /// refuses.
    pub fn into_messages(self) -> ApiResult<Vec<Message>> {
        if self.messages.is_empty() || self.messages.len() > BATCH_MESSAGES_MAX {
            return Err(ApiError::invalid(format!(
                "a batch holds 1 to {BATCH_MESSAGES_MAX} messages, got {}",
                self.messages.len()
            )));
        }
        self.messages
            .into_iter()
            .map(PublishMessage::into_message)
            .collect()
    }
}

fn convert_batch(auth: &Auth, b: PublishBatch) -> ApiResult<Vec<Message>> {
    let msgs = b.into_messages()?;
    for m in &msgs {
        check_user_id(auth, m)?;
    }
    Ok(msgs)
}

/// The queue (or stream) to publish to straight, checked to exist.
pub(crate) fn direct_target(
    state: &AppState,
    auth: &Auth,
    vhost: &str,
    queue: &str,
) -> ApiResult<std::sync::Arc<VHost>> {
    let vh = auth.check(state, vhost, Access::Write, "exchange", "")?;
    if vh.queue(queue).is_none() {
        return Err(ApiError::not_found(format!(
            "no queue or stream '{queue}' in vhost '{vhost}'"
        )));
    }
    Ok(vh)
}

/// Publish one message (JSON envelope) to an exchange.
#[utoipa::path(post, path = "/api/exchanges/{vhost}/{name}/publish", tag = "publish",
    params(("vhost" = String, Path), ("name" = String, Path, description = "exchange (`amq.default` for the default exchange)")),
    request_body = PublishMessage,
    responses((status = 200, description = "Durable at its tier", body = PublishResult), ApiErrors),
    security(("basic" = []), ("bearer" = [])))]
pub async fn exchange_publish(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, name)): ApiPath<(String, String)>,
    ApiJson(msg): ApiJson<PublishMessage>,
) -> ApiResult<Json<PublishResult>> {
    let x = exchange_name(&name);
    let vh = auth.check(&state, &vhost, Access::Write, "exchange", x)?;
    let m = msg.into_message()?;
    check_user_id(&auth, &m)?;
    auth.check_topic(&state, &vhost, Access::Write, x, [m.routing_key.as_str()])?;
    single(publish_messages(&state, &vh, x, vec![m]).await?)
}

/// Publish a batch of messages (JSON envelopes) to an exchange; one durability wait covers all.
#[utoipa::path(post, path = "/api/exchanges/{vhost}/{name}/publish/batch", tag = "publish",
    params(("vhost" = String, Path), ("name" = String, Path)),
    request_body = PublishBatch,
    responses((status = 200, description = "All durable at their tier", body = BatchResult), ApiErrors),
    security(("basic" = []), ("bearer" = [])))]
pub async fn exchange_publish_batch(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, name)): ApiPath<(String, String)>,
    ApiJson(b): ApiJson<PublishBatch>,
) -> ApiResult<Json<BatchResult>> {
    let x = exchange_name(&name);
    let vh = auth.check(&state, &vhost, Access::Write, "exchange", x)?;
    let msgs = convert_batch(&auth, b)?;
    // Every key is checked before anything is published: a refused batch stores nothing.
    let keys = msgs.iter().map(|m| m.routing_key.as_str());
    auth.check_topic(&state, &vhost, Access::Write, x, keys)?;
    Ok(batch_result(publish_messages(&state, &vh, x, msgs).await?))
}

/// Publish the raw request body as one message to an exchange.
///
/// `Content-Type` and `Content-Encoding` are kept as properties; `x-ferrymq-correlation-id`,
/// `-reply-to`, `-message-id`, `-timestamp-ms`, `-expiration-ms`, `-priority`, `-persistent`,
/// `-type`, `-user-id`, `-app-id` and `-key` set the others; `x-ferrymq-header-NAME: value`
/// sets message header NAME.
#[utoipa::path(post, path = "/api/exchanges/{vhost}/{name}/messages", tag = "publish",
    params(("vhost" = String, Path), ("name" = String, Path), RawQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, description = "Durable at its tier", body = PublishResult), ApiErrors),
    security(("basic" = []), ("bearer" = [])))]
pub async fn exchange_publish_raw(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, name)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<RawQuery>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> ApiResult<Json<PublishResult>> {
    let x = exchange_name(&name);
    let vh = auth.check(&state, &vhost, Access::Write, "exchange", x)?;
    let mut m = message_from_raw(&headers, body)?;
    m.routing_key = q.routing_key;
    check_user_id(&auth, &m)?;
    auth.check_topic(&state, &vhost, Access::Write, x, [m.routing_key.as_str()])?;
    single(publish_messages(&state, &vh, x, vec![m]).await?)
}

/// Publish one message (JSON envelope) straight to a queue or stream.
#[utoipa::path(post, path = "/api/queues/{vhost}/{name}/publish", tag = "publish",
    params(("vhost" = String, Path), ("name" = String, Path, description = "queue or stream")),
    request_body = PublishMessage,
    responses((status = 200, description = "Durable at its tier", body = PublishResult), ApiErrors),
    security(("basic" = []), ("bearer" = [])))]
pub async fn queue_publish(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, name)): ApiPath<(String, String)>,
    ApiJson(msg): ApiJson<PublishMessage>,
) -> ApiResult<Json<PublishResult>> {
    let vh = direct_target(&state, &auth, &vhost, &name)?;
    let mut m = msg.into_message()?;
    check_user_id(&auth, &m)?;
    m.routing_key = name;
    single(publish_messages(&state, &vh, "", vec![m]).await?)
}

/// Publish a batch straight to a queue or stream.
#[utoipa::path(post, path = "/api/queues/{vhost}/{name}/publish/batch", tag = "publish",
    params(("vhost" = String, Path), ("name" = String, Path)),
    request_body = PublishBatch,
    responses((status = 200, description = "All durable at their tier", body = BatchResult), ApiErrors),
    security(("basic" = []), ("bearer" = [])))]
pub async fn queue_publish_batch(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, name)): ApiPath<(String, String)>,
    ApiJson(b): ApiJson<PublishBatch>,
) -> ApiResult<Json<BatchResult>> {
    let vh = direct_target(&state, &auth, &vhost, &name)?;
    let mut msgs = convert_batch(&auth, b)?;
    for m in &mut msgs {
        m.routing_key = name.clone();
    }
    Ok(batch_result(publish_messages(&state, &vh, "", msgs).await?))
}

/// Publish the raw request body straight to a queue or stream (headers as for exchanges).
#[utoipa::path(post, path = "/api/queues/{vhost}/{name}/messages", tag = "publish",
    params(("vhost" = String, Path), ("name" = String, Path), RawQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, description = "Durable at its tier", body = PublishResult), ApiErrors),
    security(("basic" = []), ("bearer" = [])))]
pub async fn queue_publish_raw(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, name)): ApiPath<(String, String)>,
    ApiQuery(_q): ApiQuery<RawQuery>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> ApiResult<Json<PublishResult>> {
    let vh = direct_target(&state, &auth, &vhost, &name)?;
    let mut m = message_from_raw(&headers, body)?;
    check_user_id(&auth, &m)?;
    m.routing_key = name;
    single(publish_messages(&state, &vh, "", vec![m]).await?)
}
