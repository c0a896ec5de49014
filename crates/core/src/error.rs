//! The core's error type: what an adapter needs to pick its protocol's error code.

use ferrymq_storage::StorageError;

/// Errors returned by core operations. Each variant corresponds to a class of
/// protocol error (AMQP reply codes in brackets) so that adapters can map them.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A named entity does not exist (404 NOT_FOUND).
    #[error("NOT_FOUND - {0}")]
    NotFound(String),
    /// A redeclaration does not match, or an operation's precondition fails
    /// (406 PRECONDITION_FAILED).
    #[error("PRECONDITION_FAILED - {0}")]
    PreconditionFailed(String),
    /// The caller may not do this (403 ACCESS_REFUSED).
    #[error("ACCESS_REFUSED - {0}")]
    AccessRefused(String),
    /// An exclusive resource is held by another connection (405 RESOURCE_LOCKED).
    #[error("RESOURCE_LOCKED - {0}")]
    ResourceLocked(String),
    /// The operation is not allowed in this state (530 NOT_ALLOWED).
    #[error("NOT_ALLOWED - {0}")]
    NotAllowed(String),
    /// A configured limit was reached (406 / 506 RESOURCE_ERROR depending on context).
    #[error("RESOURCE_ERROR - {0}")]
    LimitReached(String),
    /// An argument has an invalid type or value (406 PRECONDITION_FAILED in AMQP).
    #[error("PRECONDITION_FAILED - {0}")]
    InvalidArgument(String),
    /// The broker is shutting down.
    #[error("broker is shutting down")]
    ShuttingDown,
    /// The storage engine failed (541 INTERNAL_ERROR).
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// A stored message could not be decoded (541 INTERNAL_ERROR).
    #[error("stored message is damaged: {0}")]
    Codec(#[from] crate::codec::CodecError),
    /// A stored batch in another format could not be decoded (541 INTERNAL_ERROR).
    #[error("INTERNAL_ERROR - {0}")]
    Internal(String),
}

/// Result alias for core operations.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;
