//! `ApiError`: every error the HTTP API answers with, as a status plus a JSON body, and the
//! one mapping from `CoreError` to HTTP statuses.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ferrymq_core::CoreError;
use serde::Serialize;
use utoipa::ToSchema;

/// The JSON body of every error answer.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    /// A stable machine-readable code, e.g. `not_found`, `access_refused`, `invalid_argument`.
    pub error: String,
    /// What was wrong, for a person.
    pub reason: String,
}

/// An error answer: an HTTP status and an [`ErrorBody`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {code}: {reason}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub reason: String,
}

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, reason: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            reason: reason.into(),
        }
    }
    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", reason)
    }
    pub fn unauthorized(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "not_authorized", reason)
    }
    pub fn forbidden(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "access_refused", reason)
    }
    pub fn not_found(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", reason)
    }
    pub fn conflict(code: &'static str, reason: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, reason)
    }
    pub fn invalid(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_argument", reason)
    }
    pub fn too_many(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "limit_reached", reason)
    }
    pub fn unavailable(code: &'static str, reason: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, reason)
    }
}

/// The one place where core errors become HTTP statuses.
impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        let reason = e.to_string();
        match e {
            CoreError::NotFound(_) => Self::new(StatusCode::NOT_FOUND, "not_found", reason),
            CoreError::AccessRefused(_) => {
                Self::new(StatusCode::FORBIDDEN, "access_refused", reason)
            }
            CoreError::ResourceLocked(_) => {
                Self::new(StatusCode::CONFLICT, "resource_locked", reason)
            }
            CoreError::PreconditionFailed(m) if m.starts_with("message size") => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "message_too_large", reason)
            }
            // Inequivalent redeclarations, "in use", "not empty": the resource's state conflicts.
            CoreError::PreconditionFailed(_) => {
                Self::new(StatusCode::CONFLICT, "precondition_failed", reason)
            }
            CoreError::NotAllowed(_) => Self::new(StatusCode::CONFLICT, "not_allowed", reason),
            CoreError::InvalidArgument(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_argument", reason)
            }
            CoreError::LimitReached(_) => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "limit_reached", reason)
            }
            CoreError::ShuttingDown => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", reason)
            }
            CoreError::Storage(s) if s.is_no_space() => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "disk_full", s.to_string())
            }
            CoreError::Storage(_) | CoreError::Codec(_) | CoreError::Internal(_) => {
                tracing::error!(error = %reason, "internal error answering an HTTP request");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", reason)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code.to_string(),
            reason: self.reason,
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"FerryMQ\""),
            );
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE
            || self.status == StatusCode::TOO_MANY_REQUESTS
        {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// Every error status an operation may answer with, for the OpenAPI document.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // a description for the document, never built
pub enum ApiErrors {
    /// Malformed request (bad JSON syntax, bad path or query)
    #[response(status = 400)]
    BadRequest(#[to_schema] ErrorBody),
    /// No or wrong credentials
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// Authenticated, but not allowed
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// No such vhost, queue, exchange, user, connection, …
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The method is not allowed on this path
    #[response(status = 405)]
    MethodNotAllowed(ErrorBody),
    /// Conflicts with the current state (inequivalent redeclaration, in use, locked)
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// The body or message is larger than allowed
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// The content type is not application/json
    #[response(status = 415)]
    UnsupportedMediaType(ErrorBody),
    /// Well-formed, but a value is invalid
    #[response(status = 422)]
    Unprocessable(ErrorBody),
    /// A limit is reached
    #[response(status = 429)]
    TooMany(ErrorBody),
    /// Shutting down, resource alarm, or disk full: retry later
    #[response(status = 503)]
    Unavailable(ErrorBody),
}
