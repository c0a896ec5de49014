//! The server's configuration: typed sections, defaults, layered loading and validation.
//!
//! Effective configuration = defaults < TOML file (`--config`) < `FERRYMQ_*` environment
//! variables < command-line flags. The layers are merged as `toml::Value` tables (see
//! [`layers`]), then deserialized into [`Config`] with unknown keys denied, then checked by
//! [`Config::validate`]. Every error names the key path (`storage.segment_bytes`) and, when the
//! value did not come from the defaults, where it was set.
//!
//! Adding a listener later (say AMQP) means: add an `AmqpConfig { enabled, bind, port }` section
//! here with its defaults (`bind = "127.0.0.1"`, `port = 5672`), validate it, and read it in
//! `serve.rs`. Its env vars (`FERRYMQ_AMQP_PORT`) and `--set amqp.port=...` come for free.

mod layers;

use std::fmt;
use std::path::PathBuf;

use ferrymq_core::BrokerConfig;
use serde::{Deserialize, Serialize};

pub use layers::Origin;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Environment variables that start with `FERRYMQ_` but are not configuration keys.
pub const RESERVED_ENV: &[&str] = &[
    "FERRYMQ_CONFIG",
    // The admin CLI's connection settings (`ferrymq queues list --url ...`).
    "FERRYMQ_URL",
    "FERRYMQ_USER",
    "FERRYMQ_PASSWORD",
];

/// The whole effective configuration of a `ferrymq` process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Root of all persistent state (relative paths are resolved against the current directory).
    pub data_dir: PathBuf,
    pub log: LogConfig,
    pub storage: StorageSection,
    pub limits: LimitsSection,
    pub users: UsersSection,
    pub shutdown: ShutdownSection,
    pub amqp: AmqpSection,
    pub mqtt: MqttSection,
    pub kafka: KafkaSection,
    pub http: HttpSection,
    pub tls: TlsSection,
}

/// `[tls]`: the certificate, key and client verification shared by every TLS listener
/// (`amqp.tls_enabled`, `mqtt.tls_enabled`, `kafka.tls_enabled`, `http.tls_enabled`).
/// Reloaded from disk on SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM file with the server certificate chain (leaf first).
    pub cert_file: String,
    /// PEM file with the server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// PEM file with the CA certificates client certificates must chain to.
    pub ca_file: String,
    /// Client certificates: not asked for, verified when presented, or required.
    pub client_auth: ClientAuth,
    /// A verified client certificate's common name is the user (AMQP EXTERNAL, MQTT
    /// without a user name, Kafka's SSL principal, HTTPS without credentials).
    pub cert_login: bool,
}

/// Whether TLS listeners ask for client certificates (mTLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificate is asked for.
    None,
    /// Asked for; verified against `tls.ca_file` when presented; clients without one pass.
    Optional,
    /// Required and verified: the handshake fails without a valid one.
    Required,
}

/// `[kafka]`: the Kafka wire-protocol listener (topics are streams of `vhost`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    /// Serve the plain (non-TLS) listener on `port`.
    pub enabled: bool,
    /// IP address to listen on (loopback by default).
    pub bind: String,
    /// TCP port (0 = pick a free one; the chosen address is logged).
    pub port: u16,
    /// Serve the TLS listener on `tls_port` (certificate from `[tls]`).
    pub tls_enabled: bool,
    /// TLS listener's TCP port (0 = pick a free one; the chosen address is logged).
    pub tls_port: u16,
    /// Host advertised to clients in Metadata and FindCoordinator ("" = the bind address,
    /// or 127.0.0.1 when binding every interface).
    pub advertised_host: String,
    /// Port advertised to clients (0 = the bound port).
    pub advertised_port: u16,
    /// Port advertised to clients of the TLS listener (0 = its bound port), for a TLS port
    /// that clients reach through a different one (a NAT or a container's port mapping).
    pub advertised_tls_port: u16,
    /// The vhost whose streams are the Kafka topics.
    pub vhost: String,
    /// Metadata requests for unknown topics create them (Kafka's auto.create.topics.enable).
    pub auto_create_topics: bool,
    /// Partitions of auto-created topics and of CreateTopics without a count (num.partitions).
    pub default_partitions: u32,
    /// Largest request accepted, checked on the size prefix (socket.request.max.bytes).
    pub max_request_bytes: u64,
    /// Most record bytes in one Fetch response, whatever the client asks (fetch.max.bytes).
    pub fetch_max_bytes: u64,
    /// How long the first rebalance of a new consumer group waits for more members
    /// (group.initial.rebalance.delay.ms).
    pub group_initial_rebalance_delay_ms: u64,
    /// SASL mechanisms required on the listener, comma-separated ("PLAIN", "SCRAM-SHA-256");
    /// empty = no authentication (connections act as `users.default_user`).
    pub sasl_mechanisms: String,
    /// The cluster id reported to clients.
    pub cluster_id: String,
    /// Time allowed from TCP accept to the first complete request and, with SASL, to the
    /// end of authentication.
    pub handshake_timeout_ms: u64,
    /// Idle time (no request, nothing outstanding, or an answer not read) after which a
    /// connection is closed, as Kafka's `connections.max.idle.ms`; 0 = never.
    pub connections_max_idle_ms: u64,
}

/// `[mqtt]`: the MQTT 3.1 / 3.1.1 / 5.0 listener (MQTT over WebSocket is served by the HTTP
/// listener at `/mqtt`) and its limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    /// Serve the plain (non-TLS) listener on `port`.
    pub enabled: bool,
    /// IP address to listen on (loopback by default).
    pub bind: String,
    /// TCP port (0 = pick a free one; the chosen address is logged).
    pub port: u16,
    /// Serve the TLS listener on `tls_port` (certificate from `[tls]`).
    pub tls_enabled: bool,
    /// TLS listener's TCP port (0 = pick a free one; the chosen address is logged).
    pub tls_port: u16,
    /// Serve MQTT over WebSocket on the HTTP listener at `/mqtt` (subprotocol `mqtt`).
    pub websocket: bool,
    /// The vhost MQTT clients use.
    pub vhost: String,
    /// The topic exchange MQTT topics map onto.
    pub exchange: String,
    /// Largest MQTT packet accepted (advertised as Maximum Packet Size), in bytes.
    pub max_packet_size: u32,
    /// Largest keep-alive granted, in seconds (0 = any).
    pub keepalive_max_s: u16,
    /// Longest session expiry granted, in seconds (MQTT 3 persistent sessions get this).
    pub session_expiry_max_s: u32,
    /// Inbound QoS 1/2 publishes in flight per connection (advertised Receive Maximum).
    pub receive_maximum: u16,
    /// Inbound topic aliases per connection (advertised Topic Alias Maximum).
    pub topic_alias_maximum: u16,
    /// Send topic aliases to clients that announce a Topic Alias Maximum.
    pub topic_alias_outbound: bool,
    /// Outbound QoS 1/2 deliveries in flight per connection.
    pub max_inflight: u16,
    /// Retained topics held at most.
    pub retained_max: u64,
    /// Connections without a user name act as `users.default_user`.
    pub allow_anonymous: bool,
    /// Time allowed from TCP accept to a complete CONNECT.
    pub connect_timeout_ms: u64,
}

/// `[http]`: the HTTP API, WebSocket, SSE and metrics listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Serve the plain (non-TLS) listener on `port`.
    pub enabled: bool,
    /// Address to listen on.
    pub bind: String,
    /// TCP port (0 picks a free one; the bound address is logged).
    pub port: u16,
    /// Serve the TLS listener on `tls_port` (certificate from `[tls]`).
    pub tls_enabled: bool,
    /// TLS listener's TCP port (0 = pick a free one; the chosen address is logged).
    pub tls_port: u16,
    /// Time allowed from TCP accept to the end of the first request's head.
    pub handshake_timeout_ms: u64,
    /// A `/api/ws` WebSocket whose client reads nothing, or sends nothing (pings go out
    /// at half of it), for this long is closed (0 = never).
    pub websocket_timeout_ms: u64,
}

/// `[amqp]`: the AMQP 0-9-1 listener and its limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSection {
    /// Serve the plain (non-TLS) listener on `port`.
    pub enabled: bool,
    /// IP address to listen on (loopback by default).
    pub bind: String,
    /// TCP port (0 = pick a free one; the chosen address is logged).
    pub port: u16,
    /// Serve the TLS listener on `tls_port` (certificate from `[tls]`).
    pub tls_enabled: bool,
    /// TLS listener's TCP port (0 = pick a free one; the chosen address is logged).
    pub tls_port: u16,
    /// Highest channel number a client may open.
    pub channel_max: u16,
    /// Largest frame accepted and offered, in bytes.
    pub frame_max: u32,
    /// Heartbeat interval offered to clients, in seconds (0 disables).
    pub heartbeat_s: u16,
    /// Open AMQP connections at once (0 = unlimited).
    pub connections_max: u64,
    /// Consumers per channel (0 = unlimited).
    pub consumers_per_channel_max: u64,
    /// Time allowed from TCP accept to `connection.open-ok`.
    pub handshake_timeout_ms: u64,
}

/// `[log]`: what the process logs and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A level (`trace`, `debug`, `info`, `warn`, `error`, `off`) or `RUST_LOG`-style
    /// directives such as `info,ferrymq_core=debug`.
    pub level: String,
    pub format: LogFormat,
}

/// Log line format on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// `[storage]`: how queue and stream logs are written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    /// Default durability tier of durable queues and persistent messages.
    pub durability: DurabilityTier,
    /// With `durability = "interval"`: how often logs are fsynced.
    pub fsync_interval_ms: u64,
    /// Size at which a log segment is rolled.
    pub segment_bytes: u64,
    /// Bytes of records between two sparse index entries.
    pub index_interval_bytes: u32,
    /// T2 logs write with direct I/O where the file system has it (no page-cache copy).
    pub direct_writes: bool,
}

/// The tiers of the design notes (§3) a user can choose as the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityTier {
    /// In the page cache before the ack: survives a process crash, not a power loss.
    T1,
    /// fsynced (group commit) before the ack.
    T2,
    /// Acked from the page cache, fsynced every `fsync_interval_ms`.
    Interval,
}

impl DurabilityTier {
    pub fn as_str(self) -> &'static str {
        match self {
            DurabilityTier::T1 => "t1",
            DurabilityTier::T2 => "t2",
            DurabilityTier::Interval => "interval",
        }
    }
}

/// `[limits]`: resource limits and flow-control thresholds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Above this much memory in use, publishers are blocked.
    pub memory_high_watermark_bytes: u64,
    /// Below this much free disk space, publishers are blocked (0 disables the check).
    pub disk_free_limit_bytes: u64,
    /// Largest message body accepted.
    pub message_size_max_bytes: u64,
    /// Open connections across every listener (0 = unlimited).
    pub connections_max: u64,
    /// Open connections from one source IP address, every listener (0 = unlimited).
    pub connections_per_source_max: u64,
    /// Open connections of one user, every protocol (0 = unlimited).
    pub connections_per_user_max: u64,
    /// Queues and streams per vhost, on top of each vhost's own `max_queues` (0 = unlimited).
    pub queues_per_vhost_max: u64,
    /// Body bytes delivered to one AMQP consumer and not yet settled (0 = unlimited).
    pub consumer_window_max_bytes: u64,
    /// Bytes buffered for one connection that its client has not read; past it the
    /// connection is closed with its protocol's error (0 = unlimited).
    pub connection_buffer_max_bytes: u64,
}

/// `[users]`: what is created on first start, and who may log in only from loopback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersSection {
    pub default_user: String,
    pub default_password: String,
    pub default_vhost: String,
    /// Comma-separated users that may connect only from a loopback address (RabbitMQ's
    /// `loopback_users`); empty = none.
    pub loopback_users: String,
}

impl UsersSection {
    pub fn loopback_users(&self) -> Vec<String> {
        self.loopback_users
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(String::from)
            .collect()
    }
}

/// `[shutdown]`: graceful shutdown on SIGINT/SIGTERM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSection {
    /// How long in-flight work may take to finish before connections are cut.
    pub timeout_ms: u64,
}

/// Limits on the values themselves (named, unit last, as everywhere else).
pub mod bounds {
    use super::{GIB, MIB};
    pub const SEGMENT_BYTES_MIN: u64 = MIB;
    pub const SEGMENT_BYTES_MAX: u64 = GIB;
    pub const FSYNC_INTERVAL_MS_MIN: u64 = 1;
    pub const FSYNC_INTERVAL_MS_MAX: u64 = 60_000;
    pub const MEMORY_HIGH_WATERMARK_BYTES_MIN: u64 = 16 * MIB;
    pub const MESSAGE_SIZE_MAX_BYTES_MAX: u64 = 512 * MIB;
    pub const SHUTDOWN_TIMEOUT_MS_MAX: u64 = 3_600_000;
    /// AMQP short strings carry user and vhost names.
    pub const NAME_BYTES_MAX: usize = 255;
    pub const AMQP_FRAME_MAX_MIN: u32 = 4096;
    pub const AMQP_FRAME_MAX_MAX: u32 = 16 * MIB as u32;
    pub const MQTT_PACKET_SIZE_MIN: u64 = 1024;
    /// MQTT's own limit (the remaining length's largest value, plus the fixed header).
    pub const MQTT_PACKET_SIZE_MAX: u32 = 268_435_460;
}

/// What `ferrymq config show` prints in place of a secret.
pub const REDACTED: &str = "<redacted>";

impl Config {
    /// The built-in defaults. The memory watermark depends on the machine (40% of its RAM).
    pub fn defaults() -> Config {
        Config {
            data_dir: PathBuf::from("./ferrymq-data"),
            log: LogConfig {
                level: "info".into(),
                format: LogFormat::Text,
            },
            storage: StorageSection {
                durability: DurabilityTier::T2,
                fsync_interval_ms: 100,
                segment_bytes: 64 * MIB,
                index_interval_bytes: 4 * KIB as u32,
                direct_writes: true,
            },
            limits: LimitsSection {
                memory_high_watermark_bytes: default_memory_high_watermark_bytes(),
                disk_free_limit_bytes: 50_000_000,
                message_size_max_bytes: 128 * MIB,
                connections_max: 0,
                connections_per_source_max: 0,
                connections_per_user_max: 0,
                queues_per_vhost_max: 0,
                consumer_window_max_bytes: 128 * MIB,
                connection_buffer_max_bytes: 256 * MIB,
            },
            users: UsersSection {
                default_user: "guest".into(),
                default_password: "guest".into(),
                default_vhost: "/".into(),
                loopback_users: "guest".into(),
            },
            shutdown: ShutdownSection { timeout_ms: 10_000 },
            amqp: AmqpSection {
                enabled: true,
                bind: "127.0.0.1".into(),
                port: 5672,
                tls_enabled: false,
                tls_port: 5671,
                channel_max: 2047,
                frame_max: 131_072,
                heartbeat_s: 60,
                connections_max: 0,
                consumers_per_channel_max: 0,
                handshake_timeout_ms: 10_000,
            },
            mqtt: MqttSection {
                enabled: true,
                bind: "127.0.0.1".into(),
                port: 1883,
                tls_enabled: false,
                tls_port: 8883,
                websocket: true,
                vhost: "/".into(),
                exchange: "amq.topic".into(),
                max_packet_size: MIB as u32,
                keepalive_max_s: 65_535,
                session_expiry_max_s: 86_400,
                receive_maximum: 1024,
                topic_alias_maximum: 64,
                topic_alias_outbound: true,
                max_inflight: 1024,
                retained_max: 100_000,
                allow_anonymous: true,
                connect_timeout_ms: 10_000,
            },
            kafka: KafkaSection {
                enabled: true,
                bind: "127.0.0.1".into(),
                port: 9092,
                tls_enabled: false,
                tls_port: 9093,
                advertised_host: String::new(),
                advertised_port: 0,
                advertised_tls_port: 0,
                vhost: "/".into(),
                auto_create_topics: true,
                default_partitions: 1,
                max_request_bytes: 100 * MIB,
                fetch_max_bytes: 55 * MIB,
                group_initial_rebalance_delay_ms: 3000,
                sasl_mechanisms: String::new(),
                cluster_id: "ferrymq-cluster".into(),
                handshake_timeout_ms: 10_000,
                connections_max_idle_ms: 600_000,
            },
            http: HttpSection {
                enabled: true,
                bind: "127.0.0.1".into(),
                port: 15672,
                tls_enabled: false,
                tls_port: 15671,
                handshake_timeout_ms: 10_000,
                websocket_timeout_ms: 60_000,
            },
            tls: TlsSection {
                cert_file: String::new(),
                key_file: String::new(),
                ca_file: String::new(),
                client_auth: ClientAuth::None,
                cert_login: true,
            },
        }
    }

    /// Loads the effective configuration from the given layers.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key (or file, variable or flag) and the problem.
    pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
        layers::load(Config::defaults(), sources)
    }

    /// The configuration as TOML, as `ferrymq config show` prints it (loadable with `--config`).
    ///
    /// # Errors
    /// Only if a value cannot be represented in TOML (e.g. a non-UTF-8 data_dir).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// A copy with every secret replaced by [`REDACTED`], for printing.
    #[must_use]
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        c.users.default_password = REDACTED.into();
        c
    }

    /// Checks every value; returns the first problem as `(key path, problem)`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        use bounds::*;
        if self.data_dir.as_os_str().is_empty() {
            return Err(("data_dir", "must not be empty".into()));
        }
        if let Err(problem) = crate::logging::parse_filter(&self.log.level) {
            return Err(("log.level", problem));
        }
        let s = &self.storage;
        in_range(
            "storage.fsync_interval_ms",
            s.fsync_interval_ms,
            FSYNC_INTERVAL_MS_MIN,
            FSYNC_INTERVAL_MS_MAX,
        )?;
        in_range(
            "storage.segment_bytes",
            s.segment_bytes,
            SEGMENT_BYTES_MIN,
            SEGMENT_BYTES_MAX,
        )?;
        in_range(
            "storage.index_interval_bytes",
            u64::from(s.index_interval_bytes),
            1,
            s.segment_bytes,
        )
        .map_err(|(k, p)| (k, format!("{p} (storage.segment_bytes)")))?;
        let l = &self.limits;
        in_range(
            "limits.memory_high_watermark_bytes",
            l.memory_high_watermark_bytes,
            MEMORY_HIGH_WATERMARK_BYTES_MIN,
            i64::MAX as u64,
        )?;
        in_range(
            "limits.disk_free_limit_bytes",
            l.disk_free_limit_bytes,
            0,
            i64::MAX as u64,
        )?;
        in_range(
            "limits.message_size_max_bytes",
            l.message_size_max_bytes,
            1,
            MESSAGE_SIZE_MAX_BYTES_MAX,
        )?;
        if l.connection_buffer_max_bytes != 0 && l.connection_buffer_max_bytes < 64 * KIB {
            return Err((
                "limits.connection_buffer_max_bytes",
                format!(
                    "must be 0 (unlimited) or at least 65536, got {}",
                    l.connection_buffer_max_bytes
                ),
            ));
        }
        let u = &self.users;
        name("users.default_user", &u.default_user)?;
        name("users.default_vhost", &u.default_vhost)?;
        if u.default_password.is_empty() {
            return Err(("users.default_password", "must not be empty".into()));
        }
        in_range(
            "shutdown.timeout_ms",
            self.shutdown.timeout_ms,
            0,
            SHUTDOWN_TIMEOUT_MS_MAX,
        )?;
        let a = &self.amqp;
        if a.bind.parse::<std::net::IpAddr>().is_err() {
            return Err((
                "amqp.bind",
                format!("must be an IP address, got {:?}", a.bind),
            ));
        }
        in_range(
            "amqp.frame_max",
            a.frame_max as u64,
            AMQP_FRAME_MAX_MIN as u64,
            AMQP_FRAME_MAX_MAX as u64,
        )?;
        if a.channel_max == 0 {
            return Err(("amqp.channel_max", "must be at least 1".into()));
        }
        if a.handshake_timeout_ms == 0 {
            return Err(("amqp.handshake_timeout_ms", "must be at least 1".into()));
        }
        let m = &self.mqtt;
        if m.bind.parse::<std::net::IpAddr>().is_err() {
            return Err((
                "mqtt.bind",
                format!("must be an IP address, got {:?}", m.bind),
            ));
        }
        name("mqtt.vhost", &m.vhost)?;
        name("mqtt.exchange", &m.exchange)?;
        in_range(
            "mqtt.max_packet_size",
            u64::from(m.max_packet_size),
            MQTT_PACKET_SIZE_MIN,
            u64::from(MQTT_PACKET_SIZE_MAX),
        )?;
        if m.receive_maximum == 0 {
            return Err(("mqtt.receive_maximum", "must be at least 1".into()));
        }
        if m.max_inflight == 0 {
            return Err(("mqtt.max_inflight", "must be at least 1".into()));
        }
        if m.connect_timeout_ms == 0 {
            return Err(("mqtt.connect_timeout_ms", "must be at least 1".into()));
        }
        let k = &self.kafka;
        if k.bind.parse::<std::net::IpAddr>().is_err() {
            return Err((
                "kafka.bind",
                format!("must be an IP address, got {:?}", k.bind),
            ));
        }
        name("kafka.vhost", &k.vhost)?;
        in_range(
            "kafka.default_partitions",
            u64::from(k.default_partitions),
            1,
            10_000,
        )?;
        in_range(
            "kafka.max_request_bytes",
            k.max_request_bytes,
            1024,
            2 * 1024 * MIB,
        )?;
        in_range("kafka.fetch_max_bytes", k.fetch_max_bytes, 1024, 1024 * MIB)?;
        self.kafka_mechanisms()
            .map_err(|e| ("kafka.sasl_mechanisms", e))?;
        if k.handshake_timeout_ms == 0 {
            return Err(("kafka.handshake_timeout_ms", "must be at least 1".into()));
        }
        if self.http.handshake_timeout_ms == 0 {
            return Err(("http.handshake_timeout_ms", "must be at least 1".into()));
        }
        if (1..100).contains(&self.http.websocket_timeout_ms) {
            return Err((
                "http.websocket_timeout_ms",
                "must be 0 (never) or at least 100".into(),
            ));
        }
        if self.http.bind.trim().is_empty() {
            return Err(("http.bind", "must not be empty".into()));
        }
        self.validate_tls()
    }

    /// The enabled TLS listeners' switches (`amqp.tls_enabled`, ...).
    pub fn tls_listeners(&self) -> Vec<&'static str> {
        [
            ("amqp.tls_enabled", self.amqp.tls_enabled),
            ("mqtt.tls_enabled", self.mqtt.tls_enabled),
            ("kafka.tls_enabled", self.kafka.tls_enabled),
            ("http.tls_enabled", self.http.tls_enabled),
        ]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(key, _)| key)
        .collect()
    }

    /// A TLS listener needs a certificate and key; client verification needs a CA.
    fn validate_tls(&self) -> Result<(), (&'static str, String)> {
        let Some(first) = self.tls_listeners().first().copied() else {
            return Ok(());
        };
        let t = &self.tls;
        if t.cert_file.trim().is_empty() {
            return Err(("tls.cert_file", format!("must be set when {first} = true")));
        }
        if t.key_file.trim().is_empty() {
            return Err(("tls.key_file", format!("must be set when {first} = true")));
        }
        if t.client_auth != ClientAuth::None && t.ca_file.trim().is_empty() {
            return Err((
                "tls.ca_file",
                "must be set when tls.client_auth is \"optional\" or \"required\"".into(),
            ));
        }
        Ok(())
    }

    fn kafka_mechanisms(&self) -> Result<Vec<ferrymq_kafka::sasl::Mechanism>, String> {
        self.kafka
            .sasl_mechanisms
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(|m| {
                ferrymq_kafka::sasl::Mechanism::from_name(m)
                    .ok_or_else(|| format!("unknown SASL mechanism {m:?} (PLAIN, SCRAM-SHA-256)"))
            })
            .collect()
    }

    /// The Kafka adapter's settings; `bound` is a listener's address (the plain one's when it
    /// runs), `tls_bound` the TLS listener's port when it runs.
    pub fn kafka_config(
        &self,
        bound: std::net::SocketAddr,
        tls_bound: Option<u16>,
    ) -> ferrymq_kafka::KafkaConfig {
        let k = &self.kafka;
        let host = if !k.advertised_host.is_empty() {
            k.advertised_host.clone()
        } else if bound.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            bound.ip().to_string()
        };
        let group = ferrymq_kafka::group::GroupConfig {
            initial_rebalance_delay_ms: k.group_initial_rebalance_delay_ms,
            ..Default::default()
        };
        ferrymq_kafka::KafkaConfig {
            vhost: k.vhost.clone(),
            advertised_host: host,
            advertised_port: if k.advertised_port == 0 {
                bound.port()
            } else {
                k.advertised_port
            },
            advertised_tls_port: match tls_bound {
                Some(_) if k.advertised_tls_port != 0 => k.advertised_tls_port,
                Some(p) => p,
                None => 0,
            },
            auto_create_topics: k.auto_create_topics,
            default_partitions: k.default_partitions,
            max_request_bytes: usize::try_from(k.max_request_bytes).unwrap_or(usize::MAX),
            fetch_max_bytes: usize::try_from(k.fetch_max_bytes).unwrap_or(usize::MAX),
            message_max_bytes: usize::try_from(self.limits.message_size_max_bytes)
                .unwrap_or(usize::MAX),
            sasl_mechanisms: self.kafka_mechanisms().unwrap_or_default(),
            anonymous_user: self.users.default_user.clone(),
            cluster_id: k.cluster_id.clone(),
            handshake_timeout_ms: k.handshake_timeout_ms,
            connections_max_idle_ms: k.connections_max_idle_ms,
            group,
            ..Default::default()
        }
    }

    /// The MQTT adapter's settings.
    pub fn mqtt_config(&self) -> ferrymq_mqtt::MqttConfig {
        let m = &self.mqtt;
        ferrymq_mqtt::MqttConfig {
            vhost: m.vhost.clone(),
            exchange: m.exchange.clone(),
            // A packet carries one message plus its topic and properties: never more.
            max_packet_size: m.max_packet_size.min(
                u32::try_from(self.limits.message_size_max_bytes + 64 * KIB).unwrap_or(u32::MAX),
            ),
            keepalive_max_s: m.keepalive_max_s,
            session_expiry_max_s: m.session_expiry_max_s,
            receive_maximum: m.receive_maximum,
            topic_alias_maximum: m.topic_alias_maximum,
            topic_alias_outbound: m.topic_alias_outbound,
            max_inflight: m.max_inflight,
            retained_max: usize::try_from(m.retained_max).unwrap_or(usize::MAX),
            allow_anonymous: m.allow_anonymous,
            default_user: self.users.default_user.clone(),
            connect_timeout_ms: m.connect_timeout_ms,
        }
    }

    /// The AMQP listener's settings as the adapter takes them.
    /// The HTTP listener's limits.
    pub fn http_limits(&self) -> ferrymq_http::HttpLimits {
        ferrymq_http::HttpLimits {
            handshake_timeout_ms: self.http.handshake_timeout_ms,
            websocket_timeout_ms: self.http.websocket_timeout_ms,
        }
    }

    pub fn amqp_config(&self) -> ferrymq_amqp::AmqpConfig {
        let a = &self.amqp;
        ferrymq_amqp::AmqpConfig {
            channel_max: a.channel_max,
            frame_max: a.frame_max,
            heartbeat_s: a.heartbeat_s,
            connections_max: usize::try_from(a.connections_max).unwrap_or(usize::MAX),
            consumers_per_channel_max: usize::try_from(a.consumers_per_channel_max)
                .unwrap_or(usize::MAX),
            handshake_timeout_ms: a.handshake_timeout_ms,
            consumer_window_max_bytes: self.limits.consumer_window_max_bytes,
        }
    }
}

fn in_range(key: &'static str, v: u64, min: u64, max: u64) -> Result<(), (&'static str, String)> {
    if v < min {
        Err((key, format!("must be at least {min}, got {v}")))
    } else if v > max {
        Err((key, format!("must be at most {max}, got {v}")))
    } else {
        Ok(())
    }
}

fn name(key: &'static str, v: &str) -> Result<(), (&'static str, String)> {
    if v.is_empty() {
        Err((key, "must not be empty".into()))
    } else if v.len() > bounds::NAME_BYTES_MAX {
        Err((
            key,
            format!(
                "must be at most {} bytes, got {}",
                bounds::NAME_BYTES_MAX,
                v.len()
            ),
        ))
    } else if v.chars().any(char::is_control) {
        Err((key, "must not contain control characters".into()))
    } else {
        Ok(())
    }
}

/// Where the layers above the defaults come from. Env and flags are passed in (not read from
/// the process here) so that tests are hermetic.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// `--config PATH`.
    pub file: Option<PathBuf>,
    /// The process environment; only `FERRYMQ_*` names are looked at.
    pub env: Vec<(String, String)>,
    /// Flag overrides as `(key path, raw value, flag name)`, applied in order.
    pub overrides: Vec<Override>,
}

/// One flag that sets a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub key: String,
    pub value: String,
    /// How the user spelled it, for error messages (`--data-dir`, `--set`).
    pub flag: &'static str,
}

impl Sources {
    /// `FERRYMQ_*` variables of this process. A non-UTF-8 value is reported, not ignored.
    ///
    /// # Errors
    /// [`ConfigError::EnvNotUnicode`] for a `FERRYMQ_*` variable whose value is not UTF-8.
    pub fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
        let mut out = Vec::new();
        for (k, v) in std::env::vars_os() {
            let Some(k) = k.to_str() else { continue };
            if !k.starts_with(layers::ENV_PREFIX) {
                continue;
            }
            match v.into_string() {
                Ok(v) => out.push((k.to_string(), v)),
                Err(_) => return Err(ConfigError::EnvNotUnicode { var: k.to_string() }),
            }
        }
        Ok(out)
    }
}

/// Why a configuration was rejected. `main` prints it as `invalid configuration: {self}` and
/// exits with status 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("{key}: unknown key{origin}; expected one of: {expected}")]
    UnknownKey {
        key: String,
        origin: Origin,
        expected: String,
    },
    #[error("{key}: expected {expected}, got {found}{origin}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
        origin: Origin,
    },
    #[error("{key}: {problem}{origin}")]
    Invalid {
        key: String,
        problem: String,
        origin: Origin,
    },
    #[error("{var}: environment variable does not match any configuration key (known: {known})")]
    UnknownEnv { var: String, known: String },
    #[error("{var}: value is not valid UTF-8")]
    EnvNotUnicode { var: String },
    #[error("--set {arg:?}: expected KEY=VALUE, e.g. --set storage.durability=t1")]
    BadSet { arg: String },
    #[error("cannot represent the configuration as TOML: {0}")]
    Serialize(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => Ok(()),
            Origin::File(p) => write!(f, " (set in {})", p.display()),
            Origin::Env(var) => write!(f, " (set by {var})"),
            Origin::Flag(flag) => write!(f, " (set by {flag})"),
        }
    }
}

/// Parses `--set KEY=VALUE`.
///
/// # Errors
/// [`ConfigError::BadSet`] without `=` or with an empty key.
pub fn parse_set(arg: &str) -> Result<Override, ConfigError> {
    match arg.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok(Override {
            key: k.trim().to_string(),
            value: v.to_string(),
            flag: "--set",
        }),
        _ => Err(ConfigError::BadSet { arg: arg.into() }),
    }
}

/// Maps the server's configuration onto what the core needs. The one place to adapt when the
/// core or storage API changes.
pub fn broker_config(config: &Config) -> BrokerConfig {
    use ferrymq_storage::{Durability, StorageConfig};
    let s = &config.storage;
    let default_durability = match s.durability {
        DurabilityTier::T1 => Durability::T1,
        DurabilityTier::T2 => Durability::T2,
        DurabilityTier::Interval => {
            Durability::Interval(std::time::Duration::from_millis(s.fsync_interval_ms))
        }
    };
    let storage_defaults = StorageConfig::default();
    // A message is stored as one batch: let the largest allowed message (plus headers) fit.
    let batch_bytes_max = u32::try_from(config.limits.message_size_max_bytes + 64 * KIB)
        .unwrap_or(u32::MAX)
        .max(storage_defaults.batch_bytes_max);
    BrokerConfig {
        data_dir: config.data_dir.clone(),
        storage: StorageConfig {
            default_durability,
            segment_bytes: s.segment_bytes,
            index_interval_bytes: s.index_interval_bytes,
            direct_writes: s.direct_writes,
            batch_bytes_max,
            ..storage_defaults
        },
        memory_high_watermark_bytes: config.limits.memory_high_watermark_bytes,
        disk_free_limit_bytes: config.limits.disk_free_limit_bytes,
        message_size_max_bytes: config.limits.message_size_max_bytes,
        default_vhost: config.users.default_vhost.clone(),
        default_user: config.users.default_user.clone(),
        default_password: config.users.default_password.clone(),
        loopback_users: config.users.loopback_users(),
        queues_per_vhost_max: config.limits.queues_per_vhost_max,
        connection_limits: ferrymq_core::ConnectionLimits {
            connections_max: config.limits.connections_max,
            connections_per_source_max: config.limits.connections_per_source_max,
            connections_per_user_max: config.limits.connections_per_user_max,
            connection_buffer_max_bytes: config.limits.connection_buffer_max_bytes,
        },
        ..BrokerConfig::default()
    }
}

/// 40% of the memory available to this process: the smaller of `MemTotal` in `/proc/meminfo`
/// and a cgroup memory limit. 1 GiB when neither can be read (non-Linux).
pub fn default_memory_high_watermark_bytes() -> u64 {
    let total = physical_memory_bytes().unwrap_or(1 << 30);
    let limit = cgroup_memory_limit_bytes().map_or(total, |c| c.min(total));
    (limit / 10 * 4).max(bounds::MEMORY_HIGH_WATERMARK_BYTES_MIN)
}

fn physical_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo_total(&meminfo)
}

fn parse_meminfo_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut parts = line["MemTotal:".len()..].split_whitespace();
    let n: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => n.checked_mul(1024),
        None => Some(n),
        Some(_) => None,
    }
}

fn cgroup_memory_limit_bytes() -> Option<u64> {
    // cgroup v2, then v1 (where "unlimited" is a huge number, harmless under min()).
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse().ok())
}

#[cfg(test)]
mod tests;
