//! Authentication (HTTP Basic and bearer tokens) and authorization against the broker's users
//! and permissions.
//!
//! Basic credentials go through `Broker::authenticate`, as every protocol's do. Over HTTPS
//! with client certificates, a request without credentials acts as the certificate's
//! common name (`Broker::authenticate_external`); credentials, when sent, take precedence. Bearer tokens
//! are issued by `POST /api/tokens` (Basic auth only), kept in memory with an expiry, and lost
//! on restart; a token resolves to its user on every request, so deleting the user revokes
//! it. Browsers cannot set headers on a WebSocket or `EventSource`: there, `?access_token=`
//! in the query is accepted too.
//!
//! Permissions follow RabbitMQ and are the core's (`Broker::authorize`): a user needs a
//! permission entry on the vhost, whose `configure`, `write` and `read` regular expressions
//! (unanchored, as RabbitMQ's) must match the resource name (the default exchange is
//! `amq.default`). The `administrator` tag grants the management operations (users, vhosts,
//! permissions, definitions, connections); `monitoring` grants reading every vhost's state.
//! Neither tag grants anything on a vhost's resources: an administrator declaring a queue or
//! publishing is subject to its vhost permissions, as in RabbitMQ.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ferrymq_core::{Broker, User, VHost};

use crate::error::ApiError;
use crate::state::AppState;

/// Tokens kept at once; beyond it issuing fails with 429 (expired ones are pruned first).
pub const TOKENS_MAX: usize = 10_000;
/// Lifetime of a token when the request does not say.
pub const TOKEN_TTL_SECS_DEFAULT: u64 = 3600;
/// Longest lifetime a token may ask for.
pub const TOKEN_TTL_SECS_MAX: u64 = 86_400;
pub use ferrymq_core::Access;

struct Token {
    user: String,
    expires: Instant,
    expires_at_ms: i64,
}

/// Bearer tokens in memory.
#[derive(Default)]
pub struct Tokens {
    map: Mutex<HashMap<String, Token>>,
}

impl Tokens {
    /// Issues a token for `user` valid for `ttl`. Returns it with its expiry (ms since epoch).
    ///
    /// # Errors
    /// 429 when [`TOKENS_MAX`] live tokens exist; 503 when no randomness is available.
    pub fn issue(&self, user: &str, ttl: Duration) -> Result<(String, i64), ApiError> {
        let token = random_token()?;
        let now = Instant::now();
        let expires_at_ms = now_ms().saturating_add(ttl.as_millis() as i64);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= TOKENS_MAX {
            map.retain(|_, t| t.expires > now);
        }
        if map.len() >= TOKENS_MAX {
            return Err(ApiError::too_many(format!(
                "{TOKENS_MAX} tokens are live; revoke some or wait for them to expire"
            )));
        }
        map.insert(
            token.clone(),
            Token {
                user: user.to_string(),
                expires: now + ttl,
                expires_at_ms,
            },
        );
        Ok((token, expires_at_ms))
    }

    /// The user name of a live token.
    fn lookup(&self, token: &str) -> Option<(String, i64)> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(token) {
            Some(t) if t.expires > Instant::now() => Some((t.user.clone(), t.expires_at_ms)),
            Some(_) => {
                map.remove(token);
                None
            }
            None => None,
        }
    }

    /// Forgets a token; returns whether it existed.
    pub fn revoke(&self, token: &str) -> bool {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token)
            .is_some()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// 32 bytes from the OS random source, hex-encoded.
fn random_token() -> Result<String, ApiError> {
    use std::io::Read;
    let mut buf = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| {
            ApiError::unavailable("no_randomness", format!("cannot read /dev/urandom: {e}"))
        })?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Checks that a pattern compiles (for `PUT /api/permissions`); patterns are matched as
/// RabbitMQ does, unanchored (`Broker::authorize`).
pub fn valid_pattern(pattern: &str) -> Result<(), String> {
    regex_lite::Regex::new(pattern)
        .map(|_| ())
        .map_err(|e| format!("invalid regular expression {pattern:?}: {e}"))
}

/// How the request authenticated.
#[derive(Debug, Clone)]
pub enum Via {
    Basic,
    Bearer {
        token: String,
        expires_at_ms: i64,
    },
    /// A verified TLS client certificate (HTTPS with `tls.client_auth`), no header.
    Certificate,
}

/// An authenticated user. Extracting it answers 401 without valid credentials.
#[derive(Debug, Clone)]
pub struct Auth {
    pub user: User,
    pub via: Via,
}

impl Auth {
    pub fn name(&self) -> &str {
        &self.user.name
    }

    pub fn has_tag(&self, tag: &str) -> bool {
        self.user.tags.iter().any(|t| t == tag)
    }

    pub fn is_admin(&self) -> bool {
        self.has_tag("administrator")
    }

    /// May see every vhost's state.
    pub fn is_monitor(&self) -> bool {
        self.is_admin() || self.has_tag("monitoring")
    }

    /// 403 unless the user is an administrator.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "user '{}' needs the administrator tag for this operation",
                self.user.name
            )))
        }
    }

    /// The vhost, if it exists and the user may see it (any permission on it, or monitoring).
    ///
    /// # Errors
    /// 404 (no such vhost), 403.
    pub fn vhost(&self, state: &AppState, name: &str) -> Result<Arc<VHost>, ApiError> {
        let broker = &state.broker;
        let vh = broker
            .vhost(name)
            .ok_or_else(|| ApiError::not_found(format!("vhost '{name}' not found")))?;
        if self.is_monitor() || broker.permission(&self.user.name, name).is_some() {
            Ok(vh)
        } else {
            Err(ApiError::forbidden(format!(
                "access to vhost '{name}' refused for user '{}'",
                self.user.name
            )))
        }
    }

    /// Whether the user may see this vhost in listings.
    pub fn sees_vhost(&self, broker: &Broker, vhost: &str) -> bool {
        self.is_monitor() || broker.permission(&self.user.name, vhost).is_some()
    }

    /// Checks a permission on a resource (`kind` is `queue` or `exchange`; streams are
    /// queues) of a vhost, with the core's check and RabbitMQ's wording. Tags grant nothing
    /// here.
    ///
    /// # Errors
    /// 404 (no such vhost), 403 naming the access, resource, vhost and user.
    pub fn check(
        &self,
        state: &AppState,
        vhost: &str,
        access: Access,
        kind: &str,
        resource: &str,
    ) -> Result<Arc<VHost>, ApiError> {
        let vh = state
            .broker
            .vhost(vhost)
            .ok_or_else(|| ApiError::not_found(format!("vhost '{vhost}' not found")))?;
        state
            .broker
            .authorize(&self.user.name, vhost, access, kind, resource)?;
        Ok(vh)
    }

    /// Checks routing (or binding) keys against the user's topic permission on an exchange
    /// (RabbitMQ's topic authorisation: only a topic exchange the user has a topic
    /// permission on restricts anything); the pattern is resolved once for all the keys.
    ///
    /// # Errors
    /// 403 naming the access, key, exchange, vhost and user.
    pub fn check_topic<'k>(
        &self,
        state: &AppState,
        vhost: &str,
        access: Access,
        exchange: &str,
        keys: impl IntoIterator<Item = &'k str>,
    ) -> Result<(), ApiError> {
        if let Some(c) = state
            .broker
            .topic_check(&self.user.name, vhost, access, exchange, None)?
        {
            for k in keys {
                c.check(k)?;
            }
        }
        Ok(())
    }
}

fn user_named(broker: &Broker, name: &str) -> Option<User> {
    broker.user(name)
}

/// The client's IP address, when the server recorded it.
fn peer_ip(parts: &Parts) -> Option<std::net::IpAddr> {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

/// Resolves credentials from the `Authorization` header or an `access_token` query parameter.
///
/// # Errors
/// 401 with a reason.
pub fn authenticate(state: &AppState, parts: &Parts) -> Result<Auth, ApiError> {
    let header = parts
        .headers
        .get(header::AUTHORIZATION)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::unauthorized("Authorization header is not visible ASCII"))
        })
        .transpose()?;
    let query_token = parts.uri.query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "access_token")
            .map(|(_, v)| v.to_string())
    });
    let (scheme, rest) = match (header, query_token) {
        (Some(h), _) => h.split_once(' ').unwrap_or((h, "")),
        (None, Some(t)) => return bearer(state, &t),
        (None, None) => {
            if let Some(crate::server::ClientIdentity(id)) = parts.extensions.get() {
                let user = state
                    .broker
                    .authenticate_external(id, peer_ip(parts))
                    .map_err(|e| ApiError::unauthorized(e.to_string()))?;
                return Ok(Auth {
                    user,
                    via: Via::Certificate,
                });
            }
            return Err(ApiError::unauthorized(
                "credentials required: HTTP Basic or a bearer token from POST /api/tokens",
            ));
        }
    };
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = B64
            .decode(rest.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| ApiError::unauthorized("malformed Basic credentials"))?;
        let (user, pass) = decoded
            .split_once(':')
            .ok_or_else(|| ApiError::unauthorized("malformed Basic credentials: no ':'"))?;
        let user = state
            .broker
            .authenticate(user, pass, peer_ip(parts))
            .map_err(|_| ApiError::unauthorized(format!("login refused for user '{user}'")))?;
        Ok(Auth {
            user,
            via: Via::Basic,
        })
    } else if scheme.eq_ignore_ascii_case("bearer") {
        bearer(state, rest.trim())
    } else {
        Err(ApiError::unauthorized(format!(
            "unsupported authorization scheme '{scheme}' (use Basic or Bearer)"
        )))
    }
}

fn bearer(state: &AppState, token: &str) -> Result<Auth, ApiError> {
    let (name, expires_at_ms) = state
        .tokens
        .lookup(token)
        .ok_or_else(|| ApiError::unauthorized("unknown or expired bearer token"))?;
    let user = user_named(&state.broker, &name).ok_or_else(|| {
        ApiError::unauthorized(format!("the token's user '{name}' no longer exists"))
    })?;
    Ok(Auth {
        user,
        via: Via::Bearer {
            token: token.to_string(),
            expires_at_ms,
        },
    })
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authenticate(state, parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_checked_for_syntax() {
        assert!(valid_pattern("^app\\.").is_ok());
        assert!(valid_pattern("").is_ok());
        assert!(valid_pattern("(").is_err());
    }

    #[test]
    fn tokens_expire_and_revoke() {
        let t = Tokens::default();
        let (a, _) = t.issue("u", Duration::from_secs(60)).unwrap();
        assert_eq!(t.lookup(&a).map(|x| x.0).as_deref(), Some("u"));
        assert!(t.revoke(&a));
        assert!(t.lookup(&a).is_none());
        let (b, _) = t.issue("u", Duration::from_millis(0)).unwrap();
        assert!(t.lookup(&b).is_none());
    }
}
