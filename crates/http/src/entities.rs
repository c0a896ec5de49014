//! Management of exchanges, queues and bindings: list, get, declare, delete, purge, browse and
//! move (redrive).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use ferrymq_core::{Binding, Destination, ExchangeDecl, ExchangeKind, QueueDecl, QueueRef, VHost};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as JsonValue};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Access, Auth};
use crate::convert::{json_to_table, table_to_json, MessageJson};
use crate::error::{ApiError, ApiErrors, ApiResult};
use crate::json::{ApiJson, ApiPath, ApiQuery};
use crate::pull::classic;
use crate::rates::RatesJson;
use crate::state::AppState;

/// Messages one browse may return.
pub const BROWSE_MAX: usize = 1000;
/// Messages one move may carry.
pub const MOVE_MAX: u64 = 100_000;

// ------------------------------------------------------------------ exchanges

/// An exchange.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ExchangeJson {
    pub vhost: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    #[schema(value_type = Object)]
    pub arguments: Map<String, JsonValue>,
    /// Bindings from this exchange.
    pub bindings: u64,
    /// The policy that applies to it, if any.
    pub policy: Option<String>,
    /// The part of that policy in effect (keys its own arguments set are left out).
    #[schema(value_type = Object)]
    pub effective_policy_definition: Map<String, JsonValue>,
}

fn exchange_json(
    state: &AppState,
    vhost: &str,
    x: &ferrymq_core::exchange::Exchange,
) -> ExchangeJson {
    let policy = state.broker.exchange_policy(vhost, x);
    ExchangeJson {
        policy: policy.name,
        effective_policy_definition: policy.definition,
        vhost: vhost.to_string(),
        name: x.decl.name.clone(),
        kind: x.decl.kind.as_str().to_string(),
        durable: x.decl.durable,
        auto_delete: x.decl.auto_delete,
        internal: x.decl.internal,
        arguments: table_to_json(&x.decl.arguments),
        bindings: x.binding_count() as u64,
    }
}

/// An exchange to declare.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExchangeDeclare {
    /// direct, fanout, topic or headers.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default = "yes")]
    pub durable: bool,
    #[serde(default)]
    pub auto_delete: bool,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub arguments: Map<String, JsonValue>,
}

fn yes() -> bool {
    true
}

impl ExchangeDeclare {
    /// The core's declaration of exchange `name`.
    ///
    /// # Errors
    /// 422 for an unknown type or an argument that does not convert.
    pub fn into_decl(self, name: &str) -> ApiResult<ExchangeDecl> {
        let kind = ExchangeKind::parse(&self.kind).ok_or_else(|| {
            ApiError::invalid(format!(
                "unknown exchange type '{}': use direct, fanout, topic or headers",
                self.kind
            ))
        })?;
        let arguments = json_to_table(&self.arguments)
            .map_err(|e| ApiError::invalid(format!("argument {e}")))?;
        Ok(ExchangeDecl {
            name: name.to_string(),
            kind,
            durable: self.durable,
            auto_delete: self.auto_delete,
            internal: self.internal,
            arguments,
        })
    }
}

/// Conditions of a delete.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    /// Refuse (409) when in use (bindings for exchanges, consumers for queues).
    #[serde(default)]
    pub if_unused: bool,
    /// Queues only: refuse (409) when not empty.
    #[serde(default)]
    pub if_empty: bool,
}

fn visible_vhosts(state: &AppState, auth: &Auth) -> Vec<Arc<VHost>> {
    state
        .broker
        .vhosts()
        .into_iter()
        .filter(|v| auth.sees_vhost(&state.broker, &v.name))
        .collect()
}

/// List exchanges of every vhost the user can see.
#[utoipa::path(get, path = "/api/exchanges", tag = "exchanges",
    responses((status = 200, body = Vec<ExchangeJson>), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn list_exchanges(
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<Json<Vec<ExchangeJson>>> {
    Ok(Json(
        visible_vhosts(&state, &auth)
            .iter()
            .flat_map(|vh| {
                vh.exchanges()
                    .iter()
                    .map(|x| exchange_json(&state, &vh.name, x))
                    .collect::<Vec<_>>()
            })
            .collect(),
    ))
}

/// List the exchanges of a vhost.
#[utoipa::path(get, path = "/api/exchanges/{vhost}", tag = "exchanges", params(("vhost" = String, Path)),
    responses((status = 200, body = Vec<ExchangeJson>), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn list_vhost_exchanges(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(vhost): ApiPath<String>,
) -> ApiResult<Json<Vec<ExchangeJson>>> {
    let vh = auth.vhost(&state, &vhost)?;
    Ok(Json(
        vh.exchanges()
            .iter()
            .map(|x| exchange_json(&state, &vh.name, x))
            .collect(),
    ))
}

/// Get an exchange.
#[utoipa::path(get, path = "/api/exchanges/{vhost}/{name}", tag = "exchanges",
    params(("vhost" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = ExchangeJson), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn get_exchange(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, name)): ApiPath<(String, String)>,
) -> ApiResult<Json<ExchangeJson>> {
    let vh = auth.vhost(&state, &vhost)?;
    let x = vh
        .exchange(&name)
        .ok_or_else(|| ApiError::not_found(format!("no exchange '{name}' in vhost '{vhost}'")))?;
    Ok(Json(exchange_json(&state, &vhost, &x)))
}

/// Declare an exchange (201 when created, 200 when an equivalent one exists).
#[utoipa::path(put, path = "/api/exchanges/{vhost}/{name}", tag = "exchanges",
    params(("vhost" = String, Path), ("name" = String, Path)), request_body = ExchangeDeclare,
    responses((status = 201, body = ExchangeJson), (status = 200, body = ExchangeJson), ApiErrors),
    security(("basic" = []), ("bearer" = [])))]
pub async fn put_exchange(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, name)): ApiPath<(String, String)>,
    ApiJson(d): ApiJson<ExchangeDeclare>,
) -> ApiResult<(StatusCode, Json<ExchangeJson>)> {
    let vh = auth.check(&state, &vhost, Access::Configure, "exchange", &name)?;
    let decl = d.into_decl(&name)?;
    let existed = vh.exchange(&name).is_some();
    let x = vh.declare_exchange(decl, false)?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(exchange_json(&state, &vhost, &x))))
}

/// Delete an exchange and its bindings.
#[utoipa::path(delete, path = "/api/exchanges/{vhost}/{name}", tag = "exchanges",
    params(("vhost" = String, Path), ("name" = String, Path), DeleteQuery),
    responses((status = 204, description = "Deleted"), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn delete_exchange(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, name)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> ApiResult<StatusCode> {
    let vh = auth.check(&state, &vhost, Access::Configure, "exchange", &name)?;
    if vh.exchange(&name).is_none() {
        return Err(ApiError::not_found(format!(
            "no exchange '{name}' in vhost '{vhost}'"
        )));
    }
    vh.delete_exchange(&name, q.if_unused)?;
    Ok(StatusCode::NO_CONTENT)
}

// ------------------------------------------------------------------ queues and streams

/// A queue or stream with its state.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QueueJson {
    pub vhost: String,
    pub name: String,
    /// classic, quorum or stream.
    #[serde(rename = "type")]
    pub kind: String,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    #[schema(value_type = Object)]
    pub arguments: Map<String, JsonValue>,
    /// Depth: ready + unacked + delayed (streams: retained messages).
    pub messages: u64,
    pub messages_ready: u64,
    pub messages_unacked: u64,
    pub messages_delayed: u64,
    pub consumers: u64,
    /// Body bytes held (ready, delayed and unacked); streams: bytes on disk.
    pub bytes: u64,
    /// Streams only: partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<u32>,
    pub published: u64,
    pub delivered: u64,
    pub acked: u64,
    pub redelivered: u64,
    pub dead_lettered: u64,
    /// Per second, over the last sampling interval.
    pub rates: RatesJson,
    /// The policy that applies to it, if any.
    pub policy: Option<String>,
    /// The part of that policy in effect (keys its own `x-` arguments set are left out:
    /// declared arguments win).
    #[schema(value_type = Object)]
    pub effective_policy_definition: Map<String, JsonValue>,
}

fn queue_kind(q: &QueueRef) -> &'static str {
    match q {
        QueueRef::Stream(_) => "stream",
        QueueRef::Classic(c) => match c.decl.arguments.get_str("x-queue-type") {
            Some("quorum") => "quorum",
            _ => "classic",
        },
    }
}

/// The management view of a queue or stream.
pub fn queue_json(state: &AppState, vhost: &str, q: &QueueRef) -> QueueJson {
    use std::sync::atomic::Ordering::Relaxed;
    let d = q.decl();
    let rates = state.rates.get(vhost, q.name());
    let policy = state.broker.queue_policy(vhost, q);
    let base = |messages, ready, unacked, delayed, consumers, bytes| QueueJson {
        policy: policy.name.clone(),
        effective_policy_definition: policy.definition.clone(),
        vhost: vhost.to_string(),
        name: d.name.clone(),
        kind: queue_kind(q).to_string(),
        durable: d.durable,
        exclusive: d.exclusive,
        auto_delete: d.auto_delete,
        arguments: table_to_json(&d.arguments),
        messages,
        messages_ready: ready,
        messages_unacked: unacked,
        messages_delayed: delayed,
        consumers,
        bytes,
        partitions: None,
        published: 0,
        delivered: 0,
        acked: 0,
        redelivered: 0,
        dead_lettered: 0,
        rates,
    };
    match q {
        QueueRef::Classic(c) => {
            let i = c.info();
            QueueJson {
                published: i.published,
                delivered: i.delivered,
                acked: i.acked,
                redelivered: i.redelivered,
                dead_lettered: i.dead_lettered,
                ..base(
                    i.ready + i.unacked + i.delayed,
                    i.ready,
                    i.unacked,
                    i.delayed,
                    i.consumers as u64,
                    i.bytes_ready + i.bytes_unacked,
                )
            }
        }
        QueueRef::Stream(s) => {
            let n = s.message_count();
            QueueJson {
                partitions: Some(s.partition_count()),
                published: s.counters.published.load(Relaxed),
                delivered: s.counters.delivered.load(Relaxed),
                ..base(n, n, 0, 0, s.consumer_count() as u64, s.size_bytes())
            }
        }
    }
}

/// A queue or stream to declare.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueDeclare {
    #[serde(default = "yes")]
    pub durable: bool,
    #[serde(default)]
    pub auto_delete: bool,
    /// `x-message-ttl`, `x-max-length`, `x-dead-letter-exchange`, `x-queue-type`, …
    #[serde(default)]
    #[schema(value_type = Object)]
    pub arguments: Map<String, JsonValue>,
}

impl QueueDeclare {
    /// The core's declaration of queue (or, with `force_stream`, stream) `name`.
    ///
    /// # Errors
    /// 422 for an empty name or an argument that does not convert.
    pub fn into_decl(self, name: &str, force_stream: bool) -> ApiResult<QueueDecl> {
        if name.is_empty() {
            return Err(ApiError::invalid("queue name must not be empty"));
        }
        let mut arguments = json_to_table(&self.arguments)
            .map_err(|e| ApiError::invalid(format!("argument {e}")))?;
        if force_stream {
            arguments.insert("x-queue-type", "stream".into());
        }
        Ok(QueueDecl {
            name: name.to_string(),
            durable: self.durable,
            exclusive: false,
            auto_delete: self.auto_delete,
            arguments,
        })
    }
}

fn list_of(state: &AppState, vhs: &[Arc<VHost>], streams: Option<bool>) -> Vec<QueueJson> {
    let mut out = Vec::new();
    for vh in vhs {
        for q in vh.queues() {
            let is_stream = matches!(q, QueueRef::Stream(_));
            if streams.is_none_or(|s| s == is_stream) {
                out.push(queue_json(state, &vh.name, &q));
            }
        }
    }
    out
}

/// List queues and streams of every vhost the user can see.
#[utoipa::path(get, path = "/api/queues", tag = "queues",
    responses((status = 200, body = Vec<QueueJson>), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn list_queues(
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<Json<Vec<QueueJson>>> {
    Ok(Json(list_of(&state, &visible_vhosts(&state, &auth), None)))
}

/// List the queues and streams of a vhost.
#[utoipa::path(get, path = "/api/queues/{vhost}", tag = "queues", params(("vhost" = String, Path)),
    responses((status = 200, body = Vec<QueueJson>), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn list_vhost_queues(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(vhost): ApiPath<String>,
) -> ApiResult<Json<Vec<QueueJson>>> {
    let vh = auth.vhost(&state, &vhost)?;
    Ok(Json(list_of(&state, &[vh], None)))
}

/// List streams of every vhost the user can see.
#[utoipa::path(get, path = "/api/streams", tag = "streams",
    responses((status = 200, body = Vec<QueueJson>), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn list_streams(
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<Json<Vec<QueueJson>>> {
    Ok(Json(list_of(
        &state,
        &visible_vhosts(&state, &auth),
        Some(true),
    )))
}

/// List the streams of a vhost.
#[utoipa::path(get, path = "/api/streams/{vhost}", tag = "streams", params(("vhost" = String, Path)),
    responses((status = 200, body = Vec<QueueJson>), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn list_vhost_streams(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(vhost): ApiPath<String>,
) -> ApiResult<Json<Vec<QueueJson>>> {
    let vh = auth.vhost(&state, &vhost)?;
    Ok(Json(list_of(&state, &[vh], Some(true))))
}

fn find_queue(vh: &VHost, name: &str) -> ApiResult<QueueRef> {
    vh.queue(name)
        .ok_or_else(|| ApiError::not_found(format!("no queue '{name}' in vhost '{}'", vh.name)))
}

/// Get a queue or stream.
#[utoipa::path(get, path = "/api/queues/{vhost}/{name}", tag = "queues",
    params(("vhost" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = QueueJson), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn get_queue(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, name)): ApiPath<(String, String)>,
) -> ApiResult<Json<QueueJson>> {
    let vh = auth.vhost(&state, &vhost)?;
    let q = find_queue(&vh, &name)?;
    Ok(Json(queue_json(&state, &vhost, &q)))
}

/// Get a stream.
#[utoipa::path(get, path = "/api/streams/{vhost}/{name}", tag = "streams",
    params(("vhost" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = QueueJson), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn get_stream(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, name)): ApiPath<(String, String)>,
) -> ApiResult<Json<QueueJson>> {
    let vh = auth.vhost(&state, &vhost)?;
    match vh.queue(&name) {
        Some(q @ QueueRef::Stream(_)) => Ok(Json(queue_json(&state, &vhost, &q))),
        _ => Err(ApiError::not_found(format!(
            "no stream '{name}' in vhost '{vhost}'"
        ))),
    }
}

fn declare(
    state: &AppState,
    auth: &Auth,
    vhost: &str,
    name: &str,
    d: QueueDeclare,
    force_stream: bool,
) -> ApiResult<(StatusCode, Json<QueueJson>)> {
    let vh = auth.check(state, vhost, Access::Configure, "queue", name)?;
    let decl = d.into_decl(name, force_stream)?;
    let existed = vh.queue(name).is_some();
    vh.declare_queue(decl, 0, false).inspect_err(|e| {
        if matches!(e, ferrymq_core::CoreError::LimitReached(_)) {
            state.broker.admission().refused(
                ferrymq_core::Limit::QueuesPerVhost,
                crate::admission::PROTOCOL,
            );
        }
    })?;
    let q = find_queue(&vh, name)?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(queue_json(state, vhost, &q))))
}

/// Declare a queue (or a stream with `x-queue-type: stream`): 201 when created, 200 when an
/// equivalent one exists, 409 when it differs.
#[utoipa::path(put, path = "/api/queues/{vhost}/{name}", tag = "queues",
    params(("vhost" = String, Path), ("name" = String, Path)), request_body = QueueDeclare,
    responses((status = 201, body = QueueJson), (status = 200, body = QueueJson), ApiErrors),
    security(("basic" = []), ("bearer" = [])))]
pub async fn put_queue(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, name)): ApiPath<(String, String)>,
    ApiJson(d): ApiJson<QueueDeclare>,
) -> ApiResult<(StatusCode, Json<QueueJson>)> {
    declare(&state, &auth, &vhost, &name, d, false)
}

/// Declare a stream (`x-queue-type: stream` is implied; `x-partitions`, `x-max-age`, …).
#[utoipa::path(put, path = "/api/streams/{vhost}/{name}", tag = "streams",
    params(("vhost" = String, Path), ("name" = String, Path)), request_body = QueueDeclare,
    responses((status = 201, body = QueueJson), (status = 200, body = QueueJson), ApiErrors),
    security(("basic" = []), ("bearer" = [])))]
pub async fn put_stream(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, name)): ApiPath<(String, String)>,
    ApiJson(d): ApiJson<QueueDeclare>,
) -> ApiResult<(StatusCode, Json<QueueJson>)> {
    declare(&state, &auth, &vhost, &name, d, true)
}

/// How many messages a delete or purge removed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CountJson {
    pub messages: u64,
}

fn delete(
    state: &AppState,
    auth: &Auth,
    vhost: &str,
    name: &str,
    q: DeleteQuery,
) -> ApiResult<Json<CountJson>> {
    let vh = auth.check(state, vhost, Access::Configure, "queue", name)?;
    find_queue(&vh, name)?;
    let n = vh.delete_queue(name, q.if_unused, q.if_empty, 0)?;
    Ok(Json(CountJson { messages: n }))
}

/// Delete a queue or stream with its messages.
#[utoipa::path(delete, path = "/api/queues/{vhost}/{name}", tag = "queues",
    params(("vhost" = String, Path), ("name" = String, Path), DeleteQuery),
    responses((status = 200, description = "Deleted; messages it held", body = CountJson), ApiErrors),
    security(("basic" = []), ("bearer" = [])))]
pub async fn delete_queue(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, name)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> ApiResult<Json<CountJson>> {
    delete(&state, &auth, &vhost, &name, q)
}

/// Delete a stream.
#[utoipa::path(delete, path = "/api/streams/{vhost}/{name}", tag = "streams",
    params(("vhost" = String, Path), ("name" = String, Path), DeleteQuery),
    responses((status = 200, description = "Deleted; messages it held", body = CountJson), ApiErrors),
    security(("basic" = []), ("bearer" = [])))]
pub async fn delete_stream(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, name)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> ApiResult<Json<CountJson>> {
    let vh = auth.vhost(&state, &vhost)?;
    if !matches!(vh.queue(&name), Some(QueueRef::Stream(_))) {
        return Err(ApiError::not_found(format!(
            "no stream '{name}' in vhost '{vhost}'"
        )));
    }
    delete(&state, &auth, &vhost, &name, q)
}

/// Remove a queue's ready and delayed messages (unacked ones stay).
#[utoipa::path(delete, path = "/api/queues/{vhost}/{name}/contents", tag = "queues",
    params(("vhost" = String, Path), ("name" = String, Path)),
    responses((status = 200, description = "Purged; messages removed", body = CountJson), ApiErrors),
    security(("basic" = []), ("bearer" = [])))]
pub async fn purge_queue(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, name)): ApiPath<(String, String)>,
) -> ApiResult<Json<CountJson>> {
    let vh = auth.check(&state, &vhost, Access::Read, "queue", &name)?;
    find_queue(&vh, &name)?;
    let n = vh.purge_queue(&name, 0)?;
    Ok(Json(CountJson { messages: n }))
}

/// Browse options.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct BrowseQuery {
    /// Messages from the head (1 to 1000, default 10).
    #[param(minimum = 1, maximum = 1000)]
    pub count: Option<usize>,
    /// Always base64-encode payloads.
    #[serde(default)]
    pub base64: bool,
}

/// A browsed message.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BrowsedMessage {
    pub delivery_count: u32,
    pub message: MessageJson,
}

/// Copies of ready messages from the head of a queue, without consuming them.
#[utoipa::path(get, path = "/api/queues/{vhost}/{name}/browse", tag = "queues",
    params(("vhost" = String, Path), ("name" = String, Path), BrowseQuery),
    responses((status = 200, body = Vec<BrowsedMessage>), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn browse_queue(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, name)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<BrowseQuery>,
) -> ApiResult<Json<Vec<BrowsedMessage>>> {
    let count = q.count.unwrap_or(10);
    if count == 0 || count > BROWSE_MAX {
        return Err(ApiError::invalid(format!(
            "count must be 1 to {BROWSE_MAX}"
        )));
    }
    let vh = auth.check(&state, &vhost, Access::Read, "queue", &name)?;
    let queue = classic(&vh, &name)?;
    Ok(Json(
        queue
            .browse(count)
            .into_iter()
            .map(|(m, n)| BrowsedMessage {
                delivery_count: n,
                message: MessageJson::from_core(&m, q.base64),
            })
            .collect(),
    ))
}

/// What to move.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    /// Target queue (same vhost). Absent: each message goes back to the queue it was
    /// dead-lettered from (`x-first-death-queue`) — a dead-letter queue redrive.
    #[serde(default)]
    pub destination: Option<String>,
    /// At most this many messages (1 to 100000, default all ready ones up to the limit).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100000)]
    pub count: Option<u64>,
}

impl MoveRequest {
    /// How many messages to move at most.
    ///
    /// # Errors
    /// 422 for a count out of range.
    pub fn count(&self) -> ApiResult<u64> {
        let count = self.count.unwrap_or(MOVE_MAX);
        if count == 0 || count > MOVE_MAX {
            return Err(ApiError::invalid(format!("count must be 1 to {MOVE_MAX}")));
        }
        Ok(count)
    }
}

/// What a move did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MoveResult {
    pub moved: u64,
    /// Messages left in place (no destination known, or not routable).
    pub skipped: u64,
}

/// Move messages from one queue to another (or redrive a dead-letter queue to each message's
/// source), keeping headers, properties, exchange and routing key (they bypass routing). Each message is published durably to its target
/// before it is acked in the source: at least once.
#[utoipa::path(post, path = "/api/queues/{vhost}/{name}/move", tag = "queues",
    params(("vhost" = String, Path), ("name" = String, Path)), request_body = MoveRequest,
    responses((status = 200, body = MoveResult), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn move_messages(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, name)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<MoveRequest>,
) -> ApiResult<Json<MoveResult>> {
    let count = req.count()?;
    let vh = auth.check(&state, &vhost, Access::Read, "queue", &name)?;
    let src = classic(&vh, &name)?;
    if let Some(d) = &req.destination {
        if d == &name {
            return Err(ApiError::invalid(
                "destination must differ from the source queue",
            ));
        }
        // Moves bypass routing: write on the destination queue (not on an exchange).
        auth.check(&state, &vhost, Access::Write, "queue", d)?;
        find_queue(&vh, d)?;
    }
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    };
    let mut moved = 0u64;
    let mut skipped_ids = Vec::new();
    // In chunks: one durable batch per chunk, then ack the chunk.
    const CHUNK: usize = 256;
    let mut left = count;
    while left > 0 {
        let mut taken = Vec::new();
        while (taken.len() as u64) < left.min(CHUNK as u64) {
            match src.get(false, now()) {
                Some((d, _)) => taken.push(d),
                None => break,
            }
        }
        if taken.is_empty() {
            break;
        }
        left -= taken.len() as u64;
        let mut ids = Vec::new();
        let mut by_target: Vec<(String, Vec<ferrymq_core::Message>, Vec<u64>)> = Vec::new();
        for d in taken {
            let target = req
                .destination
                .clone()
                .or_else(|| {
                    d.message
                        .headers
                        .get_str("x-first-death-queue")
                        .map(str::to_string)
                })
                .filter(|t| t != &name && vh.queue(t).is_some());
            let Some(t) = target else {
                skipped_ids.push(d.id);
                continue;
            };
            let m = (*d.message).clone();
            match by_target.iter_mut().find(|(n, _, _)| n == &t) {
                Some((_, ms, is)) => {
                    ms.push(m);
                    is.push(d.id);
                }
                None => by_target.push((t, vec![m], vec![d.id])),
            }
        }
        // A redrive's targets come from the messages: write on each is checked before any
        // of this chunk is published, and a refusal returns the whole chunk to the source.
        if let Some(e) = by_target
            .iter()
            .find_map(|(t, _, _)| auth.check(&state, &vhost, Access::Write, "queue", t).err())
        {
            let mut back: Vec<u64> = by_target.iter().flat_map(|(_, _, is)| is.clone()).collect();
            back.extend(&skipped_ids);
            src.nack(&back, true, now());
            return Err(e);
        }
        let mut targets = by_target.into_iter();
        while let Some((t, msgs, is)) = targets.next() {
            match crate::publish::publish_to_queue(&state, &vh, &t, msgs).await {
                Ok(outcomes) => {
                    for (o, id) in outcomes.iter().zip(&is) {
                        if o.routed_to > 0 {
                            ids.push(*id);
                        } else {
                            skipped_ids.push(*id);
                        }
                    }
                }
                Err(e) => {
                    src.ack(&ids, now());
                    let mut back = is.clone();
                    // The targets not reached yet go back too.
                    back.extend(targets.by_ref().flat_map(|(_, _, is)| is));
                    back.extend(&skipped_ids);
                    src.nack(&back, true, now());
                    return Err(e);
                }
            }
        }
        moved += ids.len() as u64;
        src.ack(&ids, now());
    }
    let skipped = skipped_ids.len() as u64;
    if !skipped_ids.is_empty() {
        src.nack(&skipped_ids, true, now());
    }
    Ok(Json(MoveResult { moved, skipped }))
}

// ------------------------------------------------------------------ bindings

/// A binding.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BindingJson {
    pub vhost: String,
    pub source: String,
    pub destination: String,
    /// queue or exchange.
    pub destination_type: String,
    pub routing_key: String,
    #[schema(value_type = Object)]
    pub arguments: Map<String, JsonValue>,
}

fn binding_json(vhost: &str, b: &Binding) -> BindingJson {
    let (destination_type, destination) = match &b.destination {
        Destination::Queue(q) => ("queue", q),
        Destination::Exchange(x) => ("exchange", x),
    };
    BindingJson {
        vhost: vhost.to_string(),
        source: b.source.clone(),
        destination: destination.clone(),
        destination_type: destination_type.to_string(),
        routing_key: b.routing_key.clone(),
        arguments: table_to_json(&b.arguments),
    }
}

/// List bindings of every vhost the user can see.
#[utoipa::path(get, path = "/api/bindings", tag = "bindings",
    responses((status = 200, body = Vec<BindingJson>), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn list_bindings(
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<Json<Vec<BindingJson>>> {
    Ok(Json(
        visible_vhosts(&state, &auth)
            .iter()
            .flat_map(|vh| {
                vh.bindings()
                    .iter()
                    .map(|b| binding_json(&vh.name, b))
                    .collect::<Vec<_>>()
            })
            .collect(),
    ))
}

/// List the bindings of a vhost.
#[utoipa::path(get, path = "/api/bindings/{vhost}", tag = "bindings", params(("vhost" = String, Path)),
    responses((status = 200, body = Vec<BindingJson>), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn list_vhost_bindings(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(vhost): ApiPath<String>,
) -> ApiResult<Json<Vec<BindingJson>>> {
    let vh = auth.vhost(&state, &vhost)?;
    Ok(Json(
        vh.bindings()
            .iter()
            .map(|b| binding_json(&vhost, b))
            .collect(),
    ))
}

/// A binding's key and arguments.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BindingCreate {
    #[serde(default)]
    pub routing_key: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub arguments: Map<String, JsonValue>,
}

impl BindingCreate {
    /// The core's binding from `source` to `destination`.
    ///
    /// # Errors
    /// 422 for an argument that does not convert.
    pub fn into_binding(self, source: String, destination: Destination) -> ApiResult<Binding> {
        let arguments = json_to_table(&self.arguments)
            .map_err(|e| ApiError::invalid(format!("argument {e}")))?;
        Ok(Binding {
            source,
            destination,
            routing_key: self.routing_key,
            arguments,
        })
    }
}

/// Identifies a binding to delete.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct BindingQuery {
    #[serde(default)]
    pub routing_key: String,
    /// The binding's arguments as a JSON object (headers bindings).
    #[serde(default)]
    pub arguments: Option<String>,
}

fn destination(kind: &str, name: String) -> ApiResult<Destination> {
    match kind {
        "q" => Ok(Destination::Queue(name)),
        "e" => Ok(Destination::Exchange(name)),
        other => Err(ApiError::not_found(format!(
            "destination type '{other}' is neither 'q' (queue) nor 'e' (exchange)"
        ))),
    }
}

fn check_bind(
    state: &AppState,
    auth: &Auth,
    vhost: &str,
    source: &str,
    dest: &Destination,
    routing_key: &str,
) -> ApiResult<Arc<VHost>> {
    // RabbitMQ's order: write on the destination, then read on the source exchange, then
    // read on the binding key if the source is a topic exchange with a topic permission.
    let kind = match dest {
        Destination::Queue(_) => "queue",
        Destination::Exchange(_) => "exchange",
    };
    auth.check(state, vhost, Access::Write, kind, dest.name())?;
    let vh = auth.check(state, vhost, Access::Read, "exchange", source)?;
    auth.check_topic(state, vhost, Access::Read, source, [routing_key])?;
    Ok(vh)
}

/// Bind a queue (`q`) or exchange (`e`) to an exchange.
#[utoipa::path(post, path = "/api/bindings/{vhost}/e/{source}/{dtype}/{destination}", tag = "bindings",
    params(("vhost" = String, Path), ("source" = String, Path), ("dtype" = String, Path, description = "q or e"), ("destination" = String, Path)),
    request_body = BindingCreate,
    responses((status = 201, body = BindingJson), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn create_binding(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, source, dtype, dest)): ApiPath<(String, String, String, String)>,
    ApiJson(b): ApiJson<BindingCreate>,
) -> ApiResult<(StatusCode, Json<BindingJson>)> {
    let destination = destination(&dtype, dest)?;
    let vh = check_bind(&state, &auth, &vhost, &source, &destination, &b.routing_key)?;
    let binding = b.into_binding(source, destination)?;
    vh.bind(binding.clone(), 0)?;
    Ok((StatusCode::CREATED, Json(binding_json(&vhost, &binding))))
}

/// Remove a binding, identified by routing key and arguments.
#[utoipa::path(delete, path = "/api/bindings/{vhost}/e/{source}/{dtype}/{destination}", tag = "bindings",
    params(("vhost" = String, Path), ("source" = String, Path), ("dtype" = String, Path, description = "q or e"), ("destination" = String, Path), BindingQuery),
    responses((status = 204, description = "Removed"), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn delete_binding(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, source, dtype, dest)): ApiPath<(String, String, String, String)>,
    ApiQuery(q): ApiQuery<BindingQuery>,
) -> ApiResult<StatusCode> {
    let destination = destination(&dtype, dest)?;
    let vh = check_bind(&state, &auth, &vhost, &source, &destination, &q.routing_key)?;
    let arguments = match q.arguments.as_deref() {
        None | Some("") => Default::default(),
        Some(s) => {
            let m: Map<String, JsonValue> = serde_json::from_str(s)
                .map_err(|e| ApiError::invalid(format!("arguments is not a JSON object: {e}")))?;
            json_to_table(&m).map_err(|e| ApiError::invalid(format!("argument {e}")))?
        }
    };
    let binding = Binding {
        source,
        destination,
        routing_key: q.routing_key,
        arguments,
    };
    let exists = vh
        .exchange(&binding.source)
        .is_some_and(|x| x.bindings().contains(&binding));
    if !exists {
        return Err(ApiError::not_found("no such binding"));
    }
    vh.unbind(&binding, 0)?;
    Ok(StatusCode::NO_CONTENT)
}
