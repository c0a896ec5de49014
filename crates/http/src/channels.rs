//! Channel and consumer listings, as RabbitMQ's management API: `GET /api/channels`,
//! `GET /api/vhosts/{vhost}/channels`, `GET /api/connections/{id}/channels`,
//! `GET /api/consumers[/{vhost}]`. Adapters register channels on their connections and
//! consumers carry their connection and channel, all in the core's registry.
//!
//! Visibility follows connections': `monitoring` (and `administrator`) users see everything,
//! others only what belongs to their own connections.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use ferrymq_core::{ChannelHandle, ConnectionHandle, ConsumerInfo};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Auth;
use crate::error::{ApiError, ApiErrors, ApiResult};
use crate::json::ApiPath;
use crate::state::AppState;

/// An open channel.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChannelJson {
    /// `"<connection> (<number>)"`, as RabbitMQ names channels.
    pub name: String,
    /// The connection's id (`GET /api/connections/{id}`).
    pub connection: u64,
    pub number: u32,
    pub protocol: String,
    pub peer: String,
    pub user: String,
    pub vhost: String,
    pub opened_at_ms: i64,
    /// Per-consumer prefetch (0 = unlimited, or set per subscription).
    pub prefetch_count: u32,
    /// Channel-wide prefetch shared by its consumers (AMQP `basic.qos` global; 0 = none).
    pub global_prefetch_count: u32,
    /// Deliveries not yet acknowledged.
    pub messages_unacknowledged: u64,
    pub consumer_count: u64,
    /// Publisher confirms on.
    pub confirm: bool,
    pub transactional: bool,
}

/// A consumer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConsumerJson {
    pub vhost: String,
    pub queue: String,
    pub consumer_tag: String,
    /// The connection's id (0: the broker itself, e.g. an HTTP long poll).
    pub connection: u64,
    pub channel: u32,
    /// `"<connection> (<channel>)"`.
    pub channel_name: String,
    /// The connection's protocol (`amqp`, `websocket`, `sse`, …; empty for the broker's own).
    pub protocol: String,
    /// False for auto-ack (no-ack) consumers.
    pub ack_required: bool,
    pub prefetch_count: u32,
    /// Deliveries to it not yet acknowledged (auto-ack: not yet written out).
    pub messages_unacknowledged: u32,
    pub priority: i32,
    pub exclusive: bool,
    /// False while waiting behind a single active consumer.
    pub active: bool,
}

fn may_see(auth: &Auth, c: &ConnectionHandle) -> bool {
    auth.is_monitor() || c.info.user == auth.user.name
}

fn channel_json(c: &ConnectionHandle, ch: &ChannelHandle, consumers: u64) -> ChannelJson {
    ChannelJson {
        name: format!("{} ({})", c.id, ch.number),
        connection: c.id,
        number: ch.number,
        protocol: c.info.protocol.clone(),
        peer: c.info.peer.clone(),
        user: c.info.user.clone(),
        vhost: c.info.vhost.clone(),
        opened_at_ms: ch.opened_at_ms,
        prefetch_count: ch.prefetch_count.load(Relaxed),
        global_prefetch_count: ch.global_prefetch_count.load(Relaxed),
        messages_unacknowledged: ch.unacked.load(Relaxed),
        consumer_count: consumers,
        confirm: ch.confirm.load(Relaxed),
        transactional: ch.transactional.load(Relaxed),
    }
}

/// Channels of the connections `keep` selects, with their consumer counts.
fn channels_of(
    state: &AppState,
    auth: &Auth,
    keep: impl Fn(&ConnectionHandle) -> bool,
) -> Vec<ChannelJson> {
    let conns: Vec<Arc<ConnectionHandle>> = state
        .broker
        .connections()
        .into_iter()
        .filter(|c| may_see(auth, c) && keep(c))
        .collect();
    if conns.is_empty() {
        return Vec::new();
    }
    let mut counts: HashMap<(u64, u32), u64> = HashMap::new();
    for (_, c) in state.broker.consumers(None) {
        *counts.entry((c.connection, c.channel)).or_default() += 1;
    }
    conns
        .iter()
        .flat_map(|c| {
            c.channels()
                .iter()
                .map(|ch| {
                    let n = counts.get(&(c.id, ch.number)).copied().unwrap_or(0);
                    channel_json(c, ch, n)
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// List channels (monitoring sees all; others those of their own connections).
#[utoipa::path(get, path = "/api/channels", tag = "connections",
    responses((status = 200, body = Vec<ChannelJson>), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn list_channels(State(state): State<AppState>, auth: Auth) -> Json<Vec<ChannelJson>> {
    Json(channels_of(&state, &auth, |_| true))
}

/// List the channels of a vhost's connections.
#[utoipa::path(get, path = "/api/vhosts/{vhost}/channels", tag = "connections",
    params(("vhost" = String, Path)),
    responses((status = 200, body = Vec<ChannelJson>), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn list_vhost_channels(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(vhost): ApiPath<String>,
) -> ApiResult<Json<Vec<ChannelJson>>> {
    auth.vhost(&state, &vhost)?;
    Ok(Json(channels_of(&state, &auth, |c| c.info.vhost == vhost)))
}

/// List the channels of a connection.
#[utoipa::path(get, path = "/api/connections/{id}/channels", tag = "connections",
    params(("id" = u64, Path)),
    responses((status = 200, body = Vec<ChannelJson>), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn list_connection_channels(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<u64>,
) -> ApiResult<Json<Vec<ChannelJson>>> {
    let known = state
        .broker
        .connections()
        .iter()
        .any(|c| c.id == id && may_see(&auth, c));
    if !known {
        return Err(ApiError::not_found(format!("no connection {id}")));
    }
    Ok(Json(channels_of(&state, &auth, |c| c.id == id)))
}

fn consumers_of(state: &AppState, auth: &Auth, vhost: Option<&str>) -> Vec<ConsumerJson> {
    let conns: HashMap<u64, Arc<ConnectionHandle>> = state
        .broker
        .connections()
        .into_iter()
        .map(|c| (c.id, c))
        .collect();
    let visible = |c: &ConsumerInfo| match conns.get(&c.connection) {
        Some(conn) => may_see(auth, conn),
        None => auth.is_monitor(),
    };
    state
        .broker
        .consumers(vhost)
        .into_iter()
        .filter(|(v, c)| auth.sees_vhost(&state.broker, v) && visible(c))
        .map(|(vhost, c)| ConsumerJson {
            vhost,
            channel_name: format!("{} ({})", c.connection, c.channel),
            protocol: conns
                .get(&c.connection)
                .map(|h| h.info.protocol.clone())
                .unwrap_or_default(),
            queue: c.queue,
            consumer_tag: c.tag,
            connection: c.connection,
            channel: c.channel,
            ack_required: c.ack_required,
            prefetch_count: c.prefetch_count,
            messages_unacknowledged: c.unacked,
            priority: c.priority,
            exclusive: c.exclusive,
            active: c.active,
        })
        .collect()
}

/// List consumers of every queue and stream (monitoring sees all; others those of their own
/// connections).
#[utoipa::path(get, path = "/api/consumers", tag = "connections",
    responses((status = 200, body = Vec<ConsumerJson>), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn list_consumers(State(state): State<AppState>, auth: Auth) -> Json<Vec<ConsumerJson>> {
    Json(consumers_of(&state, &auth, None))
}

/// List the consumers of a vhost's queues and streams.
#[utoipa::path(get, path = "/api/consumers/{vhost}", tag = "connections",
    params(("vhost" = String, Path)),
    responses((status = 200, body = Vec<ConsumerJson>), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn list_vhost_consumers(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(vhost): ApiPath<String>,
) -> ApiResult<Json<Vec<ConsumerJson>>> {
    auth.vhost(&state, &vhost)?;
    Ok(Json(consumers_of(&state, &auth, Some(&vhost))))
}
