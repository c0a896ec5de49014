//! Broker configuration as the core sees it (the server maps its TOML onto this).

use std::path::PathBuf;

use ferrymq_storage::StorageConfig;

use crate::admission::ConnectionLimits;
use crate::queue::MemoryBudget;

/// Everything the core needs to open a broker over a data directory.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Root of all persistent state.
    pub data_dir: PathBuf,
    /// Storage engine settings, including the default durability tier.
    pub storage: StorageConfig,
    /// Above this resident set size, publishers are blocked.
    pub memory_high_watermark_bytes: u64,
    /// Below this much free disk, publishers are blocked.
    pub disk_free_limit_bytes: u64,
    /// Largest message body accepted.
    pub message_size_max_bytes: u64,
    /// Virtual host created on first start.
    pub default_vhost: String,
    /// User created on first start, with full permissions on the default vhost.
    pub default_user: String,
    pub default_password: String,
    /// Users that may log in only from a loopback address (RabbitMQ's `loopback_users`).
    pub loopback_users: Vec<String>,
    /// How often the flow-control monitor samples memory and disk.
    pub resource_check_interval_ms: u64,
    /// Limits applied to every new virtual host unless overridden.
    pub vhost_limits: VhostLimits,
    /// Queues (and streams) per vhost, on top of each vhost's own `max_queues`
    /// (0 = unlimited).
    pub queues_per_vhost_max: u64,
    /// Connection limits across every protocol (see [`crate::admission`]).
    pub connection_limits: ConnectionLimits,
    /// Per durable queue: how much of the backlog stays in memory; the rest is read
    /// back from disk when needed.
    pub queue_memory: MemoryBudget,
}

/// Per-virtual-host limits (`None` = unlimited).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VhostLimits {
    pub max_queues: Option<u64>,
    pub max_connections: Option<u64>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            data_dir: PathBuf::from("./ferrymq-data"),
            storage: StorageConfig::default(),
            memory_high_watermark_bytes: 4 << 30,
            disk_free_limit_bytes: 50_000_000,
            message_size_max_bytes: 128 << 20,
            default_vhost: "/".into(),
            default_user: "guest".into(),
            default_password: "guest".into(),
            loopback_users: vec!["guest".into()],
            resource_check_interval_ms: 1000,
            vhost_limits: VhostLimits::default(),
            queues_per_vhost_max: 0,
            connection_limits: ConnectionLimits::default(),
            queue_memory: MemoryBudget::default(),
        }
    }
}
