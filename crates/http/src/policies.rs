//! Policies over HTTP, as RabbitMQ's management API: `GET /api/policies[/{vhost}[/{name}]]`,
//! `PUT` and `DELETE /api/policies/{vhost}/{name}`. The core validates and applies them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use ferrymq_core::{ApplyTo, Policy};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as JsonValue};
use utoipa::ToSchema;

use crate::auth::Auth;
use crate::error::{ApiError, ApiErrors, ApiResult};
use crate::json::{ApiJson, ApiPath};
use crate::state::AppState;

/// Which entities a policy applies to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApplyToJson {
    #[default]
    All,
    Queues,
    ClassicQueues,
    QuorumQueues,
    Streams,
    Exchanges,
}

impl From<ApplyTo> for ApplyToJson {
    fn from(a: ApplyTo) -> Self {
        match a {
            ApplyTo::All => ApplyToJson::All,
            ApplyTo::Queues => ApplyToJson::Queues,
            ApplyTo::ClassicQueues => ApplyToJson::ClassicQueues,
            ApplyTo::QuorumQueues => ApplyToJson::QuorumQueues,
            ApplyTo::Streams => ApplyToJson::Streams,
            ApplyTo::Exchanges => ApplyToJson::Exchanges,
        }
    }
}

impl From<ApplyToJson> for ApplyTo {
    fn from(a: ApplyToJson) -> Self {
        match a {
            ApplyToJson::All => ApplyTo::All,
            ApplyToJson::Queues => ApplyTo::Queues,
            ApplyToJson::ClassicQueues => ApplyTo::ClassicQueues,
            ApplyToJson::QuorumQueues => ApplyTo::QuorumQueues,
            ApplyToJson::Streams => ApplyTo::Streams,
            ApplyToJson::Exchanges => ApplyTo::Exchanges,
        }
    }
}

/// A policy.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PolicyJson {
    pub vhost: String,
    pub name: String,
    /// Regular expression over queue/stream/exchange names (unanchored).
    pub pattern: String,
    #[serde(rename = "apply-to")]
    pub apply_to: ApplyToJson,
    pub priority: i32,
    /// `message-ttl`, `expires`, `max-length`, `max-length-bytes`, `overflow`,
    /// `dead-letter-exchange`, `dead-letter-routing-key`, `delivery-limit`, `max-age`,
    /// `retry-*`, `alternate-exchange`.
    #[schema(value_type = Object)]
    pub definition: Map<String, JsonValue>,
}

fn policy_json(p: Policy) -> PolicyJson {
    PolicyJson {
        vhost: p.vhost,
        name: p.name,
        pattern: p.pattern,
        apply_to: p.apply_to.into(),
        priority: p.priority,
        definition: p.definition,
    }
}

/// A policy to create or replace.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyPut {
    pub pattern: String,
    #[serde(rename = "apply-to", default)]
    pub apply_to: ApplyToJson,
    #[serde(default)]
    pub priority: i32,
    #[schema(value_type = Object)]
    pub definition: Map<String, JsonValue>,
    /// Accepted for RabbitMQ clients that send it; must match the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<String>,
    /// Accepted for RabbitMQ clients that send it; must match the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl PolicyPut {
    /// The core's policy `name` of `vhost`.
    ///
    /// # Errors
    /// 422 when the body names another vhost or policy than the path.
    pub fn into_policy(self, vhost: String, name: String) -> ApiResult<Policy> {
        if self.vhost.as_ref().is_some_and(|v| *v != vhost)
            || self.name.as_ref().is_some_and(|n| *n != name)
        {
            return Err(ApiError::invalid(
                "the body's vhost and name must match the path",
            ));
        }
        Ok(Policy {
            vhost,
            name,
            pattern: self.pattern,
            apply_to: self.apply_to.into(),
            priority: self.priority,
            definition: self.definition,
        })
    }
}

/// 403 unless the user may manage policies (`administrator` or `policymaker`, as RabbitMQ).
fn require_policymaker(auth: &Auth) -> ApiResult<()> {
    if auth.is_admin() || auth.has_tag("policymaker") {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "user '{}' needs the administrator or policymaker tag to manage policies",
            auth.name()
        )))
    }
}

/// List the policies of every vhost the user can see.
#[utoipa::path(get, path = "/api/policies", tag = "policies",
    responses((status = 200, body = Vec<PolicyJson>), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn list_policies(
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<Json<Vec<PolicyJson>>> {
    Ok(Json(
        state
            .broker
            .policies()
            .into_iter()
            .filter(|p| auth.sees_vhost(&state.broker, &p.vhost))
            .map(policy_json)
            .collect(),
    ))
}

/// List the policies of a vhost.
#[utoipa::path(get, path = "/api/policies/{vhost}", tag = "policies", params(("vhost" = String, Path)),
    responses((status = 200, body = Vec<PolicyJson>), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn list_vhost_policies(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(vhost): ApiPath<String>,
) -> ApiResult<Json<Vec<PolicyJson>>> {
    auth.vhost(&state, &vhost)?;
    Ok(Json(
        state
            .broker
            .policies()
            .into_iter()
            .filter(|p| p.vhost == vhost)
            .map(policy_json)
            .collect(),
    ))
}

/// Get a policy.
#[utoipa::path(get, path = "/api/policies/{vhost}/{name}", tag = "policies",
    params(("vhost" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = PolicyJson), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn get_policy(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, name)): ApiPath<(String, String)>,
) -> ApiResult<Json<PolicyJson>> {
    auth.vhost(&state, &vhost)?;
    state
        .broker
        .policy(&vhost, &name)
        .map(|p| Json(policy_json(p)))
        .ok_or_else(|| ApiError::not_found(format!("no policy '{name}' in vhost '{vhost}'")))
}

/// Create or replace a policy (administrators and policymakers). It applies at once to the
/// vhost's matching queues, streams and exchanges, and to those declared later.
#[utoipa::path(put, path = "/api/policies/{vhost}/{name}", tag = "policies",
    params(("vhost" = String, Path), ("name" = String, Path)), request_body = PolicyPut,
    responses((status = 200, body = PolicyJson), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn put_policy(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, name)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<PolicyPut>,
) -> ApiResult<Json<PolicyJson>> {
    require_policymaker(&auth)?;
    auth.vhost(&state, &vhost)?;
    let p = body.into_policy(vhost, name)?;
    state.broker.put_policy(p.clone())?;
    Ok(Json(policy_json(p)))
}

/// Delete a policy (administrators and policymakers); what it applied to falls back to
/// the next matching policy or its own arguments.
#[utoipa::path(delete, path = "/api/policies/{vhost}/{name}", tag = "policies",
    params(("vhost" = String, Path), ("name" = String, Path)),
    responses((status = 204, description = "Deleted"), ApiErrors), security(("basic" = []), ("bearer" = [])))]
pub async fn delete_policy(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((vhost, name)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    require_policymaker(&auth)?;
    auth.vhost(&state, &vhost)?;
    state.broker.delete_policy(&vhost, &name)?;
    Ok(StatusCode::NO_CONTENT)
}
