//! FerryMQ's Kafka wire-protocol adapter: a Kafka topic is a FerryMQ stream with N
//! partitions; this crate translates Kafka requests into core stream operations.
//!
//! Layers, inward: `records` (pure record-batch validation and mapping), `group`
//! (consumer-group coordinator), `idempotence` (producer sequence checks), `sasl` (PLAIN,
//! SCRAM), `topics` (topics as core streams), `api` (one handler per request kind),
//! `conn` (the connection driver: framing, header, dispatch, pipelining, SASL gate).

pub mod admin;
pub mod api;
mod authz;
pub mod conn;
pub mod group;
pub mod idempotence;
pub mod records;
pub mod sasl;
pub mod topics;
pub mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ferrymq_core::transport::Handshake;
use ferrymq_core::Broker;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::group::{GroupConfig, GroupCoordinator};
use crate::idempotence::ProducerIds;
use crate::sasl::Mechanism;

/// The format byte FerryMQ's streams store Kafka record batches under (an opaque batch:
/// the producer's bytes as received).
pub const KAFKA_BATCH_FORMAT: u8 = 1;

/// Registers the decoder of stored Kafka batches with the core, so that AMQP, HTTP and
/// MQTT readers of a stream see records produced over Kafka. The server calls it at
/// start, whether the Kafka listener is enabled or not (the data may be there).
pub fn register_record_format(max_decompressed_bytes: usize) {
    ferrymq_core::register_record_format(
        KAFKA_BATCH_FORMAT,
        Arc::new(records::KafkaBatchFormat {
            max_decompressed: max_decompressed_bytes,
        }),
    );
}

/// Settings of the Kafka listener (the server's `[kafka]` section).
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// The vhost whose streams are the Kafka topics.
    pub vhost: String,
    /// Host and port advertised in Metadata and FindCoordinator (port 0: the bound port).
    pub advertised_host: String,
    pub advertised_port: u16,
    /// Port advertised to connections of the TLS (SSL) listener (0: none).
    pub advertised_tls_port: u16,
    /// Metadata requests create unknown topics (with `default_partitions`).
    pub auto_create_topics: bool,
    pub default_partitions: u32,
    /// Largest request accepted (Kafka's `socket.request.max.bytes`), checked on the
    /// size prefix before anything is read.
    pub max_request_bytes: usize,
    /// Largest record batch accepted (Kafka's `message.max.bytes`).
    pub message_max_bytes: usize,
    /// Most record bytes one Fetch response carries, whatever the request asks (Kafka's
    /// `fetch.max.bytes`): bounds what a connection can make the broker read and hold;
    /// the first batch still goes out whole when larger (KIP-74).
    pub fetch_max_bytes: usize,
    /// Largest decompressed record batch (validation and cross-protocol reads).
    pub max_decompressed_bytes: usize,
    /// SASL mechanisms required before any other request; empty: no authentication
    /// (connections act as `anonymous_user`).
    pub sasl_mechanisms: Vec<Mechanism>,
    /// The FerryMQ user unauthenticated connections act as.
    pub anonymous_user: String,
    /// This node's broker id and the cluster id reported to clients.
    pub node_id: i32,
    pub cluster_id: String,
    pub group: GroupConfig,
    /// Responses a connection may have pending (pipelined requests) before it stops
    /// reading more.
    pub max_inflight_requests: usize,
    /// Time allowed from accept to the first complete request and, when SASL is
    /// required, to the end of authentication; the connection is closed past it.
    pub handshake_timeout_ms: u64,
    /// A connection with nothing outstanding and no request for this long, or whose client
    /// does not take an answer for this long, is closed (Kafka's `connections.max.idle.ms`);
    /// 0 = never.
    pub connections_max_idle_ms: u64,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            vhost: "/".into(),
            advertised_host: "127.0.0.1".into(),
            advertised_port: 0,
            advertised_tls_port: 0,
            auto_create_topics: true,
            default_partitions: 1,
            max_request_bytes: 100 << 20,
            message_max_bytes: 1_048_588,
            fetch_max_bytes: 55 << 20,
            max_decompressed_bytes: 64 << 20,
            sasl_mechanisms: Vec::new(),
            anonymous_user: "guest".into(),
            node_id: 0,
            cluster_id: "ferrymq-cluster".into(),
            group: GroupConfig::default(),
            max_inflight_requests: 32,
            handshake_timeout_ms: 10_000,
            connections_max_idle_ms: 600_000,
        }
    }
}

/// The Kafka adapter: shared by all its connections.
pub struct Kafka {
    pub(crate) broker: Arc<Broker>,
    pub(crate) config: KafkaConfig,
    pub(crate) groups: GroupCoordinator,
    pub(crate) producer_ids: ProducerIds,
    /// Idempotent-producer state per (topic, partition), with the stream it was built for
    /// (a stream deleted and declared again, or reconfigured, gets its state rebuilt from
    /// its log); held while a batch is checked, appended and recorded, so the three are one
    /// step.
    pub(crate) producers: Mutex<HashMap<(String, u32), api::ProducerState>>,
    stop: watch::Sender<bool>,
}

impl Kafka {
    /// The adapter over `broker`. `config.advertised_port` 0 must have been replaced by
    /// the bound port (see [`bind`]). Must be called within a tokio runtime (the group
    /// coordinator's timer task). Groups with committed offsets are registered, so
    /// ListGroups and DeleteGroups see them after a restart.
    pub fn new(broker: Arc<Broker>, config: KafkaConfig) -> Arc<Kafka> {
        let groups = GroupCoordinator::new(config.group.clone());
        let k = Arc::new(Kafka {
            broker,
            groups,
            producer_ids: ProducerIds::from_clock_ms(ferrymq_core::clock::now_ms()),
            producers: Mutex::new(HashMap::new()),
            stop: watch::channel(false).0,
            config,
        });
        for t in k.topic_streams() {
            for g in t.offset_groups() {
                let _ = k.groups.register_group(&g);
            }
        }
        k
    }

    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    /// Ends every connection (shutdown).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    pub(crate) fn stopped(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }
}

/// Binds the Kafka listener.
///
/// # Errors
/// The bind error (address in use, permission denied).
pub async fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Accepts connections until `stop` turns true, then ends them all. With `tls`, every
/// connection is secured by it first (the SSL listener); a verified client certificate's
/// common name is then the connection's principal.
pub async fn run(
    listener: TcpListener,
    kafka: Arc<Kafka>,
    tls: Option<Arc<dyn Handshake>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    // Kafka has no refusal code: over a limit, the connection is closed
                    // (as Kafka does for max.connections and max.connections.per.ip),
                    // before any TLS handshake.
                    match (kafka.broker.admit(conn::PROTOCOL, peer.ip()), tls.clone()) {
                        (Err(e), _) => tracing::warn!(%peer, why = %e, "Kafka connection refused"),
                        (Ok(permit), None) => {
                            conns.spawn(conn::serve(
                                kafka.clone(),
                                stream,
                                peer.to_string(),
                                false,
                                None,
                                permit,
                            ));
                        }
                        (Ok(permit), Some(tls)) => {
                            let kafka = kafka.clone();
                            conns.spawn(async move {
                                match tls.accept(stream).await {
                                    Ok(s) => {
                                        conn::serve(kafka, s.stream, peer.to_string(), true, s.identity, permit)
                                            .await;
                                    }
                                    Err(e) => {
                                        tracing::info!(%peer, error = %e, "Kafka SSL handshake failed");
                                    }
                                }
                            });
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Kafka accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            r = stop.changed() => if r.is_err() || *stop.borrow() { break },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    kafka.stop();
    while conns.join_next().await.is_some() {}
}
