//! The adapter's errors: what can fail outside a connection's protocol handling.

use ferrymq_core::CoreError;
use ferrymq_storage::StorageError;

/// Errors of the MQTT adapter's shared state (retained store, sessions).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Core(#[from] CoreError),
    /// `retained_max` topics already hold a retained message.
    #[error("retained message limit ({0}) reached")]
    RetainedFull(usize),
    #[error("vhost '{0}' not found")]
    NoVhost(String),
}
