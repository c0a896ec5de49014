//! Management of vhosts, users, permissions, topic permissions, connections, definitions and
//! tokens, plus the overview and `whoami`.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use ferrymq_core::{Definitions, Permission, TopicPermission, User, VhostLimits};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{valid_pattern, Auth, Via, TOKEN_TTL_SECS_DEFAULT, TOKEN_TTL_SECS_MAX};
use crate::error::{ApiError, ApiErrors, ApiResult};
use crate::json::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;

/// The authenticated user.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    pub name: String,
    pub tags: Vec<String>,
}

/// Who am I?
#[utoipa::path(get, path = "/api/whoami", tag = "admin",
    responses((status = 200, body = WhoAmI), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn whoami(auth: Auth) -> Json<WhoAmI> {
    Json(WhoAmI {
        name: auth.user.name,
        tags: auth.user.tags,
    })
}

/// Broker-wide totals.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Overview {
    pub version: String,
    pub vhosts: u64,
    pub queues: u64,
    pub streams: u64,
    pub exchanges: u64,
    pub connections: u64,
    pub messages: u64,
    pub messages_ready: u64,
    pub messages_unacked: u64,
    /// Messages pulled over HTTP and not yet settled.
    pub http_leases: u64,
    pub memory_alarm: bool,
    pub disk_alarm: bool,
}

/// Totals across what the user can see.
#[utoipa::path(get, path = "/api/overview", tag = "admin",
    responses((status = 200, body = Overview), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn overview(State(state): State<AppState>, auth: Auth) -> Json<Overview> {
    let flow = *state.broker.flow().borrow();
    let mut o = Overview {
        version: env!("CARGO_PKG_VERSION").to_string(),
        vhosts: 0,
        queues: 0,
        streams: 0,
        exchanges: 0,
        connections: state.broker.connections().len() as u64,
        messages: 0,
        messages_ready: 0,
        messages_unacked: 0,
        http_leases: state.leases.len() as u64,
        memory_alarm: flow.memory_alarm,
        disk_alarm: flow.disk_alarm,
    };
    for vh in state.broker.vhosts() {
        if !auth.sees_vhost(&state.broker, &vh.name) {
            continue;
        }
        o.vhosts += 1;
        o.exchanges += vh.exchanges().len() as u64;
        for q in vh.queues() {
            match q {
                ferrymq_core::QueueRef::Classic(c) => {
                    let i = c.info();
                    o.queues += 1;
                    o.messages += i.ready + i.unacked + i.delayed;
                    o.messages_ready += i.ready;
                    o.messages_unacked += i.unacked;
                }
                ferrymq_core::QueueRef::Stream(_) => o.streams += 1,
            }
        }
    }
    Json(o)
}

// ------------------------------------------------------------------ vhosts

/// A virtual host.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VhostJson {
    pub name: String,
    pub queues: u64,
    pub exchanges: u64,
    pub messages: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queues: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u64>,
}

fn vhost_json(vh: &ferrymq_core::VHost) -> VhostJson {
    let qs = vh.queues();
    let l = vh.limits();
    VhostJson {
        name: vh.name.clone(),
        queues: qs.len() as u64,
        exchanges: vh.exchanges().len() as u64,
        messages: qs.iter().map(|q| q.message_count()).sum(),
        max_queues: l.max_queues,
        max_connections: l.max_connections,
    }
}

/// A vhost to create (limits optional).
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VhostCreate {
    #[serde(default)]
    pub max_queues: Option<u64>,
    #[serde(default)]
    pub max_connections: Option<u64>,
}

impl VhostCreate {
    /// The core's limits.
    pub fn limits(&self) -> VhostLimits {
        VhostLimits {
            max_queues: self.max_queues,
            max_connections: self.max_connections,
        }
    }
}

/// List the vhosts the user can see.
#[utoipa::path(get, path = "/api/vhosts", tag = "vhosts",
    responses((status = 200, body = Vec<VhostJson>), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn list_vhosts(State(state): State<AppState>, auth: Auth) -> Json<Vec<VhostJson>> {
    Json(
        state
            .broker
            .vhosts()
            .iter()
            .filter(|v| auth.sees_vhost(&state.broker, &v.name))
            .map(|v| vhost_json(v))
            .collect(),
    )
}

/// Get a vhost.
#[utoipa::path(get, path = "/api/vhosts/{vhost}", tag = "vhosts", params(("vhost" = String, Path)),
    responses((status = 200, body = VhostJson), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn get_vhost(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(vhost): ApiPath<String>,
) -> ApiResult<Json<VhostJson>> {
    let vh = auth.vhost(&state, &vhost)?;
    Ok(Json(vhost_json(&vh)))
}

/// Create a vhost, or set its limits (administrators).
#[utoipa::path(put, path = "/api/vhosts/{vhost}", tag = "vhosts", params(("vhost" = String, Path)),
    request_body = VhostCreate,
    responses((status = 201, body = VhostJson), (status = 200, body = VhostJson), ApiErrors),
    security(("basic" = []), ("bearer" = [])))]
pub async fn put_vhost(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(vhost): ApiPath<String>,
    ApiJson(body): ApiJson<VhostCreate>,
) -> ApiResult<(StatusCode, Json<VhostJson>)> {
    auth.require_admin()?;
    let existed = state.broker.vhost(&vhost).is_some();
    let vh = state.broker.add_vhost(&vhost)?;
    if !existed {
        // As RabbitMQ's management API: the creator gets full permissions on a new vhost
        // (tags grant nothing on a vhost's resources).
        state.broker.set_permission(Permission {
            user: auth.name().to_string(),
            vhost: vhost.clone(),
            configure: ".*".into(),
            write: ".*".into(),
            read: ".*".into(),
        })?;
    }
    vh.set_limits(body.limits())?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(vhost_json(&vh))))
}

/// Delete a vhost with everything in it (administrators).
#[utoipa::path(delete, path = "/api/vhosts/{vhost}", tag = "vhosts", params(("vhost" = String, Path)),
    responses((status = 204, description = "Deleted"), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn delete_vhost(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(vhost): ApiPath<String>,
) -> ApiResult<StatusCode> {
    auth.require_admin()?;
    state.broker.delete_vhost(&vhost)?;
    Ok(StatusCode::NO_CONTENT)
}

// ------------------------------------------------------------------ users

/// A user (without the password).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserJson {
    pub name: String,
    pub tags: Vec<String>,
}

/// A user to create or replace: a password (stored as an argon2id hash) or, to restore a
/// backup, a `password_hash` from a definitions export (argon2 PHC string, or RabbitMQ's
/// `rabbit_password_hashing_sha256`).
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPut {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    /// Accepted for RabbitMQ compatibility; the hash's own format decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashing_algorithm: Option<String>,
    /// e.g. administrator, monitoring.
    #[serde(default)]
    pub tags: Vec<String>,
}

impl UserPut {
    /// The core's user `name`.
    ///
    /// # Errors
    /// 422 unless exactly one of a non-empty password or hash is given and the name is 1 to
    /// 255 bytes without control characters.
    pub fn into_user(self, name: &str) -> ApiResult<User> {
        let (password, password_hash) = match (self.password, self.password_hash) {
            (Some(p), None) if !p.is_empty() => (Some(p), String::new()),
            (None, Some(h)) if !h.is_empty() => (None, h),
            _ => {
                return Err(ApiError::invalid(
                    "give exactly one of a non-empty password or password_hash",
                ))
            }
        };
        if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "user name must be 1 to 255 bytes without control characters",
            ));
        }
        Ok(User {
            name: name.to_string(),
            password_hash,
            scram_sha256: None,
            tags: self.tags,
            password,
        })
    }
}

/// List users (administrators).
#[utoipa::path(get, path = "/api/users", tag = "users",
    responses((status = 200, body = Vec<UserJson>), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn list_users(
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<Json<Vec<UserJson>>> {
    auth.require_admin()?;
    Ok(Json(
        state
            .broker
            .users()
            .into_iter()
            .map(|u| UserJson {
                name: u.name,
                tags: u.tags,
            })
            .collect(),
    ))
}

/// Get a user (administrators, or the user itself).
#[utoipa::path(get, path = "/api/users/{name}", tag = "users", params(("name" = String, Path)),
    responses((status = 200, body = UserJson), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn get_user(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<UserJson>> {
    if auth.name() != name {
        auth.require_admin()?;
    }
    let u = state
        .broker
        .user(&name)
        .ok_or_else(|| ApiError::not_found(format!("no user '{name}'")))?;
    Ok(Json(UserJson {
        name: u.name,
        tags: u.tags,
    }))
}

/// Create or replace a user (administrators).
#[utoipa::path(put, path = "/api/users/{name}", tag = "users", params(("name" = String, Path)),
    request_body = UserPut,
    responses((status = 201, body = UserJson), (status = 200, body = UserJson), ApiErrors),
    security(("basic" = []), ("bearer" = [])))]
pub async fn put_user(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<UserPut>,
) -> ApiResult<(StatusCode, Json<UserJson>)> {
    auth.require_admin()?;
    let tags = body.tags.clone();
    let user = body.into_user(&name)?;
    let existed = state.broker.user(&name).is_some();
    state.broker.put_user(user)?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(UserJson { name, tags })))
}

/// Delete a user and its permissions (administrators).
#[utoipa::path(delete, path = "/api/users/{name}", tag = "users", params(("name" = String, Path)),
    responses((status = 204, description = "Deleted"), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn delete_user(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    auth.require_admin()?;
    state.broker.delete_user(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

// ------------------------------------------------------------------ permissions

/// A user's permissions on a vhost (anchored regular expressions over resource names).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PermissionJson {
    pub user: String,
    pub vhost: String,
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// Permissions to set.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PermissionPut {
    pub configure: String,
    pub write: String,
    pub read: String,
}

impl PermissionPut {
    /// Each pattern must compile.
    ///
    /// # Errors
    /// 422 for a pattern that does not.
    pub fn validate(&self) -> ApiResult<()> {
        for p in [&self.configure, &self.write, &self.read] {
            valid_pattern(p).map_err(ApiError::invalid)?;
        }
        Ok(())
    }
}

fn perm_json(p: Permission) -> PermissionJson {
    PermissionJson {
        user: p.user,
        vhost: p.vhost,
        configure: p.configure,
        write: p.write,
        read: p.read,
    }
}

/// List every permission (administrators).
#[utoipa::path(get, path = "/api/permissions", tag = "permissions",
    responses((status = 200, body = Vec<PermissionJson>), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn list_permissions(
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<Json<Vec<PermissionJson>>> {
    auth.require_admin()?;
    Ok(Json(
        state
            .broker
            .permissions()
            .into_iter()
            .map(perm_json)
            .collect(),
    ))
}

/// Get a user's permissions on a vhost (administrators, or the user itself).
#[utoipa::path(get, path = "/api/permissions/{vhost}/{user}", tag = "permissions",
    params(("vhost" = String, Path), ("user" = String, Path)),
    responses((status = 200, body = PermissionJson), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn get_permission(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, user)): ApiPath<(String, String)>,
) -> ApiResult<Json<PermissionJson>> {
    if auth.name() != user {
        auth.require_admin()?;
    }
    let p = state.broker.permission(&user, &vhost).ok_or_else(|| {
        ApiError::not_found(format!(
            "user '{user}' has no permissions on vhost '{vhost}'"
        ))
    })?;
    Ok(Json(perm_json(p)))
}

/// Set a user's permissions on a vhost (administrators).
#[utoipa::path(put, path = "/api/permissions/{vhost}/{user}", tag = "permissions",
    params(("vhost" = String, Path), ("user" = String, Path)), request_body = PermissionPut,
    responses((status = 200, body = PermissionJson), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn put_permission(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, user)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<PermissionPut>,
) -> ApiResult<Json<PermissionJson>> {
    auth.require_admin()?;
    body.validate()?;
    if state.broker.user(&user).is_none() {
        return Err(ApiError::not_found(format!("no user '{user}'")));
    }
    let p = Permission {
        user,
        vhost,
        configure: body.configure,
        write: body.write,
        read: body.read,
    };
    state.broker.set_permission(p.clone())?;
    Ok(Json(perm_json(p)))
}

/// Remove a user's permissions on a vhost (administrators).
#[utoipa::path(delete, path = "/api/permissions/{vhost}/{user}", tag = "permissions",
    params(("vhost" = String, Path), ("user" = String, Path)),
    responses((status = 204, description = "Removed"), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn delete_permission(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, user)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    auth.require_admin()?;
    if state.broker.user(&user).is_none() {
        return Err(ApiError::not_found(format!("no user '{user}'")));
    }
    if state.broker.vhost(&vhost).is_none() {
        return Err(ApiError::not_found(format!("vhost '{vhost}' not found")));
    }
    state.broker.delete_permission(&user, &vhost)?;
    Ok(StatusCode::NO_CONTENT)
}

// ------------------------------------------------------------------ topic permissions

/// A user's topic permission on a topic exchange of a vhost (RabbitMQ's): unanchored regular
/// expressions over routing keys for publishing (`write`) and binding keys for binding and
/// subscribing (`read`); `{username}`, `{vhost}` and `{client_id}` (MQTT) are expanded.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TopicPermissionJson {
    pub user: String,
    pub vhost: String,
    pub exchange: String,
    pub write: String,
    pub read: String,
}

/// A topic permission to set (RabbitMQ's body).
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopicPermissionPut {
    /// A topic exchange of the vhost (it need not exist yet).
    #[schema(min_length = 1)]
    pub exchange: String,
    pub write: String,
    pub read: String,
}

/// Which topic permission to remove.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TopicPermissionQuery {
    /// Only the one on this exchange (default: all of the user's on the vhost).
    #[serde(default)]
    pub exchange: Option<String>,
}

fn topic_json(p: TopicPermission) -> TopicPermissionJson {
    TopicPermissionJson {
        user: p.user,
        vhost: p.vhost,
        exchange: p.exchange,
        write: p.write,
        read: p.read,
    }
}

/// 422 (as `PUT /api/permissions`) for a pattern that does not compile or no exchange.
fn valid_topic_permission(p: &TopicPermission) -> ApiResult<()> {
    p.validate().map_err(|e| match e {
        ferrymq_core::CoreError::InvalidArgument(m) => ApiError::invalid(m),
        e => e.into(),
    })
}

fn topic_list(
    state: &AppState,
    keep: impl Fn(&TopicPermission) -> bool,
) -> Json<Vec<TopicPermissionJson>> {
    Json(
        state
            .broker
            .topic_permissions()
            .into_iter()
            .filter(keep)
            .map(topic_json)
            .collect(),
    )
}

/// List every topic permission (administrators).
#[utoipa::path(get, path = "/api/topic-permissions", tag = "permissions",
    responses((status = 200, body = Vec<TopicPermissionJson>), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn list_topic_permissions(
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<Json<Vec<TopicPermissionJson>>> {
    auth.require_admin()?;
    Ok(topic_list(&state, |_| true))
}

/// List the topic permissions of a vhost (administrators).
#[utoipa::path(get, path = "/api/topic-permissions/{vhost}", tag = "permissions",
    params(("vhost" = String, Path)),
    responses((status = 200, body = Vec<TopicPermissionJson>), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn list_vhost_topic_permissions(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(vhost): ApiPath<String>,
) -> ApiResult<Json<Vec<TopicPermissionJson>>> {
    auth.require_admin()?;
    if state.broker.vhost(&vhost).is_none() {
        return Err(ApiError::not_found(format!("vhost '{vhost}' not found")));
    }
    Ok(topic_list(&state, |p| p.vhost == vhost))
}

/// List a user's topic permissions on a vhost, one per exchange (administrators, or the
/// user itself); 404 when there are none.
#[utoipa::path(get, path = "/api/topic-permissions/{vhost}/{user}", tag = "permissions",
    params(("vhost" = String, Path), ("user" = String, Path)),
    responses((status = 200, body = Vec<TopicPermissionJson>), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn get_topic_permissions(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, user)): ApiPath<(String, String)>,
) -> ApiResult<Json<Vec<TopicPermissionJson>>> {
    if auth.name() != user {
        auth.require_admin()?;
    }
    let list = topic_list(&state, |p| p.vhost == vhost && p.user == user);
    if list.is_empty() {
        return Err(ApiError::not_found(format!(
            "user '{user}' has no topic permissions on vhost '{vhost}'"
        )));
    }
    Ok(list)
}

/// Set a user's topic permission on an exchange of a vhost, replacing the one there
/// (administrators).
#[utoipa::path(put, path = "/api/topic-permissions/{vhost}/{user}", tag = "permissions",
    params(("vhost" = String, Path), ("user" = String, Path)), request_body = TopicPermissionPut,
    responses((status = 200, body = TopicPermissionJson), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn put_topic_permission(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, user)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<TopicPermissionPut>,
) -> ApiResult<Json<TopicPermissionJson>> {
    auth.require_admin()?;
    if state.broker.user(&user).is_none() {
        return Err(ApiError::not_found(format!("no user '{user}'")));
    }
    let p = TopicPermission {
        user,
        vhost,
        exchange: body.exchange,
        write: body.write,
        read: body.read,
    };
    valid_topic_permission(&p)?;
    state.broker.set_topic_permission(p.clone())?;
    Ok(Json(topic_json(p)))
}

/// Remove a user's topic permissions on a vhost: all of them, or the one on `exchange`
/// (administrators).
#[utoipa::path(delete, path = "/api/topic-permissions/{vhost}/{user}", tag = "permissions",
    params(("vhost" = String, Path), ("user" = String, Path), TopicPermissionQuery),
    responses((status = 204, description = "Removed"), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn delete_topic_permissions(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, user)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<TopicPermissionQuery>,
) -> ApiResult<StatusCode> {
    auth.require_admin()?;
    state
        .broker
        .delete_topic_permissions(&user, &vhost, q.exchange.as_deref())?;
    Ok(StatusCode::NO_CONTENT)
}

// ------------------------------------------------------------------ connections

/// A client connection (any protocol).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConnectionJson {
    pub id: u64,
    pub protocol: String,
    pub peer: String,
    pub user: String,
    pub vhost: String,
    pub connected_at_ms: i64,
    /// Channels open now (AMQP channels; 1 for a WebSocket or event stream).
    pub channels: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

fn conn_json(c: &ferrymq_core::ConnectionHandle) -> ConnectionJson {
    use std::sync::atomic::Ordering::Relaxed;
    ConnectionJson {
        id: c.id,
        protocol: c.info.protocol.clone(),
        peer: c.info.peer.clone(),
        user: c.info.user.clone(),
        vhost: c.info.vhost.clone(),
        connected_at_ms: c.connected_at_ms,
        channels: c.channels().len() as u64,
        messages_in: c.stats.messages_in.load(Relaxed),
        messages_out: c.stats.messages_out.load(Relaxed),
        bytes_in: c.stats.bytes_in.load(Relaxed),
        bytes_out: c.stats.bytes_out.load(Relaxed),
    }
}

fn may_see_conn(auth: &Auth, c: &ferrymq_core::ConnectionHandle) -> bool {
    auth.is_monitor() || c.info.user == auth.user.name
}

/// List connections (monitoring sees all; others their own).
#[utoipa::path(get, path = "/api/connections", tag = "connections",
    responses((status = 200, body = Vec<ConnectionJson>), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn list_connections(
    State(state): State<AppState>,
    auth: Auth,
) -> Json<Vec<ConnectionJson>> {
    Json(
        state
            .broker
            .connections()
            .iter()
            .filter(|c| may_see_conn(&auth, c))
            .map(|c| conn_json(c))
            .collect(),
    )
}

fn find_conn(state: &AppState, auth: &Auth, id: u64) -> ApiResult<ConnectionJson> {
    state
        .broker
        .connections()
        .iter()
        .find(|c| c.id == id && may_see_conn(auth, c))
        .map(|c| conn_json(c))
        .ok_or_else(|| ApiError::not_found(format!("no connection {id}")))
}

/// Get a connection.
#[utoipa::path(get, path = "/api/connections/{id}", tag = "connections", params(("id" = u64, Path)),
    responses((status = 200, body = ConnectionJson), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn get_connection(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<u64>,
) -> ApiResult<Json<ConnectionJson>> {
    Ok(Json(find_conn(&state, &auth, id)?))
}

/// Close a connection (administrators, or the connection's own user).
#[utoipa::path(delete, path = "/api/connections/{id}", tag = "connections", params(("id" = u64, Path)),
    responses((status = 204, description = "Close requested"), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn close_connection(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<u64>,
) -> ApiResult<StatusCode> {
    let c = find_conn(&state, &auth, id)?;
    if c.user != auth.user.name {
        auth.require_admin()?;
    }
    state.broker.close_connection(
        id,
        &format!("Closed via management API by user '{}'", auth.name()),
    )?;
    Ok(StatusCode::NO_CONTENT)
}

// ------------------------------------------------------------------ definitions

/// Export every durable definition (vhosts, users, permissions, topic permissions, exchanges, queues,
/// bindings, policies) as one JSON document (administrators).
#[utoipa::path(get, path = "/api/definitions", tag = "definitions",
    responses((status = 200, description = "The definitions document", body = Object), ApiErrors),
    security(("basic" = []), ("bearer" = [])))]
pub async fn export_definitions(
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<Json<Definitions>> {
    auth.require_admin()?;
    Ok(Json(state.broker.export_definitions()))
}

/// What an import did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ImportResult {
    pub vhosts: u64,
    pub users: u64,
    pub permissions: u64,
    pub topic_permissions: u64,
    pub exchanges: u64,
    pub queues: u64,
    pub bindings: u64,
    pub policies: u64,
}

/// The checks an import makes before handing the document to the broker: every permission
/// pattern compiles, every user has a name and a password or hash. Returns what it holds.
///
/// # Errors
/// 422 for a pattern or user that fails.
pub fn check_definitions(d: &Definitions) -> ApiResult<ImportResult> {
    for p in &d.permissions {
        for pat in [&p.configure, &p.write, &p.read] {
            valid_pattern(pat).map_err(ApiError::invalid)?;
        }
    }
    for p in &d.topic_permissions {
        valid_topic_permission(p)?;
    }
    for u in &d.users {
        let has_password = u.password.as_deref().is_some_and(|p| !p.is_empty());
        if u.name.is_empty() || (!has_password && u.password_hash.is_empty()) {
            return Err(ApiError::invalid(
                "users need a non-empty name and a password or password_hash",
            ));
        }
    }
    Ok(ImportResult {
        vhosts: d.vhosts.len() as u64,
        users: d.users.len() as u64,
        permissions: d.permissions.len() as u64,
        topic_permissions: d.topic_permissions.len() as u64,
        exchanges: d.exchanges.len() as u64,
        queues: d.queues.len() as u64,
        bindings: d.bindings.len() as u64,
        policies: d.policies.len() as u64,
    })
}

/// Import a definitions document: everything in it is created; existing equivalent entities
/// are kept (administrators).
#[utoipa::path(post, path = "/api/definitions", tag = "definitions",
    request_body(content = Object, description = "A document as GET /api/definitions returns"),
    responses((status = 200, body = ImportResult), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn import_definitions(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(d): ApiJson<Definitions>,
) -> ApiResult<Json<ImportResult>> {
    auth.require_admin()?;
    let r = check_definitions(&d)?;
    state.broker.import_definitions(d)?;
    Ok(Json(r))
}

// ------------------------------------------------------------------ tokens

/// A token request.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Lifetime in seconds (1 to 86400, default 3600).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 86400)]
    pub ttl_seconds: Option<u64>,
}

impl TokenRequest {
    /// The token's lifetime in seconds.
    ///
    /// # Errors
    /// 422 for a lifetime out of range.
    pub fn ttl(&self) -> ApiResult<u64> {
        let ttl = self.ttl_seconds.unwrap_or(TOKEN_TTL_SECS_DEFAULT);
        if ttl == 0 || ttl > TOKEN_TTL_SECS_MAX {
            return Err(ApiError::invalid(format!(
                "ttl_seconds must be 1 to {TOKEN_TTL_SECS_MAX}"
            )));
        }
        Ok(ttl)
    }
}

/// An issued bearer token.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenJson {
    pub token: String,
    pub user: String,
    pub expires_at_ms: i64,
}

/// Issue a bearer token (requires HTTP Basic). Tokens live in memory until they expire, are
/// revoked, or the server restarts.
#[utoipa::path(post, path = "/api/tokens", tag = "auth", request_body = TokenRequest,
    responses((status = 201, body = TokenJson), ApiErrors), security(("basic" = [])))]
pub async fn issue_token(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<TokenRequest>,
) -> ApiResult<(StatusCode, Json<TokenJson>)> {
    if !matches!(auth.via, Via::Basic) {
        return Err(ApiError::forbidden(
            "tokens are issued only against HTTP Basic credentials",
        ));
    }
    let ttl = req.ttl()?;
    let (token, expires_at_ms) = state.tokens.issue(auth.name(), Duration::from_secs(ttl))?;
    Ok((
        StatusCode::CREATED,
        Json(TokenJson {
            token,
            user: auth.user.name,
            expires_at_ms,
        }),
    ))
}

/// Revoke the bearer token this request carries.
#[utoipa::path(delete, path = "/api/tokens/current", tag = "auth",
    responses((status = 204, description = "Revoked"), ApiErrors), security(("bearer" = [])))]
pub async fn revoke_token(State(state): State<AppState>, auth: Auth) -> ApiResult<StatusCode> {
    match auth.via {
        Via::Bearer { token, .. } => {
            state.tokens.revoke(&token);
            Ok(StatusCode::NO_CONTENT)
        }
        Via::Basic | Via::Certificate => {
            Err(ApiError::invalid("this request carries no bearer token"))
        }
    }
}
