//! FerryMQ's MQTT 3.1 / 3.1.1 / 5.0 adapter: sessions, retained messages and a connection
//! driver over any byte stream (TCP here, WebSocket through the server's shim), translating
//! MQTT onto the protocol-neutral core with RabbitMQ's conventions (topics on `amq.topic`,
//! one queue per session). Wire types stop here; the core never sees them.
//!
//! Layers (one file each):
//! - [`mapping`]: topics/filters ⇄ routing/binding keys, PUBLISH ⇄ `Message`, subscription
//!   options ⇄ binding arguments (pure);
//! - [`alias`]: topic alias tables, both directions (pure);
//! - [`retained`]: the per-vhost retained store, persisted as a log of set/clear records;
//! - [`session`]: the session registry (takeover, QoS 2 state across reconnects) and the
//!   persisted record of a persistent session's QoS 2 packet ids;
//! - `connection`: one task per connection — CONNECT, the packet loop, publishing with
//!   durable acks, deliveries with packet ids, keep-alive, wills, flow control;
//! - `signals`: the connection's rare wake-ups (resource alarm, management close, takeover,
//!   shutdown) as one wait registered once;
//! - [`error`]: the adapter's errors.

pub mod alias;
mod connection;
pub mod error;
pub mod mapping;
pub mod retained;
pub mod session;
mod signals;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ferrymq_core::transport::Handshake;
use ferrymq_core::{Broker, ConnectionPermit, LimitExceeded, VHost};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use error::Error;

/// The internal exchange whose bindings to session queues record the shared subscriptions
/// of persistent sessions (nothing is ever published to it).
pub const SHARED_EXCHANGE: &str = "mqtt.shared-subscriptions";

/// The protocol label of this adapter in limits and metrics.
pub(crate) const PROTOCOL: &str = "mqtt";

/// Limits and defaults of the MQTT listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttConfig {
    /// The vhost MQTT clients live in.
    pub vhost: String,
    /// The topic exchange MQTT topics map onto.
    pub exchange: String,
    /// Largest packet accepted (and advertised as Maximum Packet Size), in bytes.
    pub max_packet_size: u32,
    /// Largest keep-alive granted, in seconds (larger or zero requests get this as Server
    /// Keep Alive; 0 = no limit).
    pub keepalive_max_s: u16,
    /// Longest session expiry granted, in seconds (also the expiry of MQTT 3 persistent
    /// sessions).
    pub session_expiry_max_s: u32,
    /// Inbound QoS 1/2 publishes in flight per connection (advertised Receive Maximum).
    pub receive_maximum: u16,
    /// Inbound topic aliases per connection (advertised Topic Alias Maximum).
    pub topic_alias_maximum: u16,
    /// Use topic aliases toward clients that announce a Topic Alias Maximum.
    pub topic_alias_outbound: bool,
    /// Outbound QoS 1/2 deliveries in flight per connection (capped by the client's
    /// Receive Maximum).
    pub max_inflight: u16,
    /// Retained topics held at most.
    pub retained_max: usize,
    /// Connections without a user name act as `default_user`.
    pub allow_anonymous: bool,
    pub default_user: String,
    /// Time allowed from accept to a complete CONNECT.
    pub connect_timeout_ms: u64,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            vhost: "/".into(),
            exchange: "amq.topic".into(),
            max_packet_size: 1 << 20,
            keepalive_max_s: 0,
            session_expiry_max_s: 86_400,
            receive_maximum: 1024,
            topic_alias_maximum: 64,
            topic_alias_outbound: true,
            max_inflight: 1024,
            retained_max: 100_000,
            allow_anonymous: true,
            default_user: "guest".into(),
            connect_timeout_ms: 10_000,
        }
    }
}

/// The adapter's shared state: one per server, shared by the TCP listener and the
/// WebSocket endpoint.
pub struct Mqtt {
    pub(crate) broker: Arc<Broker>,
    pub(crate) config: MqttConfig,
    pub(crate) retained: retained::RetainedStore,
    /// When each persistent session with a finite expiry went offline, persisted, so that a
    /// session that expired while the broker was down is not resumed after a restart (a
    /// queue's `x-expires` lease restarts with the broker, as in RabbitMQ).
    pub(crate) session_ends: retained::RetainedStore,
    /// Persistent sessions' QoS 2 packet-id sets (`session::STATE_LOG_KIND`, key = client
    /// id, body = `SessionState::encode_record`), for exactly-once across a restart.
    pub(crate) session_state: retained::RetainedStore,
    pub(crate) sessions: session::Registry,
    pub(crate) stop: watch::Sender<bool>,
    open: AtomicUsize,
}

impl Mqtt {
    /// Opens the adapter: checks the vhost and exchange, rebuilds the retained store.
    ///
    /// # Errors
    /// A missing vhost or exchange, storage errors.
    pub fn open(broker: Arc<Broker>, config: MqttConfig) -> Result<Arc<Mqtt>, Error> {
        let vh = broker
            .vhost(&config.vhost)
            .ok_or_else(|| Error::NoVhost(config.vhost.clone()))?;
        if vh.exchange(&config.exchange).is_none() {
            return Err(Error::Core(ferrymq_core::CoreError::NotFound(format!(
                "no exchange '{}' in vhost '{}'",
                config.exchange, config.vhost
            ))));
        }
        vh.declare_exchange(
            ferrymq_core::ExchangeDecl {
                name: SHARED_EXCHANGE.into(),
                kind: ferrymq_core::ExchangeKind::Direct,
                durable: true,
                auto_delete: false,
                internal: true,
                arguments: Default::default(),
            },
            false,
        )?;
        let retained = retained::RetainedStore::open(
            broker.storage().clone(),
            &config.vhost,
            config.retained_max,
        )?;
        let session_ends = retained::RetainedStore::open_kind(
            broker.storage().clone(),
            retained::SESSIONS_LOG_KIND,
            &config.vhost,
            usize::MAX,
        )?;
        let session_state = retained::RetainedStore::open_kind(
            broker.storage().clone(),
            session::STATE_LOG_KIND,
            &config.vhost,
            usize::MAX,
        )?;
        // Sessions that expired while the broker was down end now.
        for client_id in session_ends.expired_keys(ferrymq_core::clock::now_ms()) {
            let queue = mapping::queue_name(connection::SESSION_QUEUE_PREFIX, &client_id);
            if vh.queue(&queue).is_some() {
                if let Err(e) = vh.delete_queue(&queue, false, false, 0) {
                    tracing::warn!(%queue, error = %e, "deleting an expired session's queue failed");
                    continue;
                }
            }
            drop(session_ends.set(&client_id, None)?);
            drop(session_state.set(&client_id, None)?);
        }
        // The state of a session whose queue is gone (expired through its `x-expires`,
        // deleted by management) is not resumed by anyone.
        for client_id in session_state.keys() {
            let queue = mapping::queue_name(connection::SESSION_QUEUE_PREFIX, &client_id);
            if vh.queue(&queue).is_none() {
                drop(session_state.set(&client_id, None)?);
            }
        }
        let (stop, _) = watch::channel(false);
        Ok(Arc::new(Mqtt {
            broker,
            config,
            retained,
            session_ends,
            session_state,
            sessions: session::Registry::default(),
            stop,
            open: AtomicUsize::new(0),
        }))
    }

    pub(crate) fn vhost(&self) -> Option<Arc<VHost>> {
        self.broker.vhost(&self.config.vhost)
    }

    /// The persisted QoS 2 state of a persistent session, if it has a readable record.
    pub(crate) fn load_state(&self, client_id: &str) -> Option<session::SessionState> {
        let r = self.session_state.get(client_id)?;
        match session::SessionState::decode_record(&r.message.body) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(client_id = %connection::log_id(client_id), error = %e, "unreadable MQTT session state ignored");
                None
            }
        }
    }

    /// Persists (or, when its persisted part is empty, deletes) the record of a persistent
    /// session's QoS 2 state. Returns the commit to await before acting on it.
    ///
    /// # Errors
    /// Storage errors.
    pub(crate) fn store_state(
        &self,
        client_id: &str,
        state: &session::SessionState,
    ) -> Result<Option<ferrymq_storage::Commit>, Error> {
        let rec = (!state.persisted_is_empty())
            .then(|| ferrymq_core::Message::new(String::new(), state.encode_record()));
        self.session_state.set(client_id, rec)
    }

    /// Deletes the QoS 2 state record of a session that ended (clean or expired).
    pub(crate) fn drop_state(&self, client_id: &str) {
        if let Err(e) = self.session_state.set(client_id, None) {
            tracing::warn!(client_id = %connection::log_id(client_id), error = %e, "deleting the MQTT session state failed");
        }
    }

    /// Asks every connection to end (MQTT 5: DISCONNECT 0x8B Server shutting down).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Open connections (TCP and WebSocket).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Runs one MQTT connection over any byte stream until it ends.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropping it skips the session's cleanup (wills, queue release).
    ///
    /// `permit` is the connection's admission from [`Broker::admit`] (a refusal is answered
    /// with a CONNACK); `None` for a connection admitted by its carrier (MQTT over
    /// WebSocket rides an admitted HTTP connection), which then counts only against the
    /// per-user limit.
    pub async fn serve_stream<S>(
        self: Arc<Self>,
        stream: S,
        peer: String,
        permit: Option<Result<ConnectionPermit, LimitExceeded>>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.serve_secured(stream, peer, None, permit).await;
    }

    /// [`Mqtt::serve_stream`] for a stream whose transport verified the peer's identity (a
    /// TLS client certificate's common name): a CONNECT without a user name logs in as it.
    ///
    /// # Cancel safety
    /// As [`Mqtt::serve_stream`].
    pub async fn serve_secured<S>(
        self: Arc<Self>,
        stream: S,
        peer: String,
        identity: Option<String>,
        permit: Option<Result<ConnectionPermit, LimitExceeded>>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let permit = permit.unwrap_or_else(|| Ok(self.broker.admission().carried(PROTOCOL)));
        self.open.fetch_add(1, Ordering::Relaxed);
        connection::run(self.clone(), stream, peer, identity, permit).await;
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts MQTT connections until `stop` turns true, then ends every connection and
/// returns once all of them have ended. With `tls`, every connection is secured by it
/// first (MQTTS); the handshake runs in the connection's task.
///
/// # Cancel safety
/// Not cancel safe: drive it to completion so connections end cleanly.
pub async fn run(
    listener: TcpListener,
    mqtt: Arc<Mqtt>,
    tls: Option<Arc<dyn Handshake>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let mqtt = mqtt.clone();
                    // Admitted at accept; a refusal is answered with a CONNACK on the plain
                    // listener. On MQTTS it is closed before the handshake: a client over its
                    // limit keeps reconnecting, and each refusal must not cost a handshake.
                    let permit = mqtt.broker.admit(PROTOCOL, peer.ip());
                    match tls.clone() {
                        None => {
                            conns.spawn(mqtt.serve_stream(stream, peer.to_string(), Some(permit)));
                        }
                        Some(_) if permit.is_err() => {
                            if let Err(e) = &permit {
                                tracing::warn!(%peer, why = %e, "MQTTS connection refused");
                            }
                        }
                        Some(tls) => {
                            conns.spawn(async move {
                                match tls.accept(stream).await {
                                    Ok(s) => {
                                        mqtt.serve_secured(s.stream, peer.to_string(), s.identity, Some(permit))
                                            .await;
                                    }
                                    Err(e) => {
                                        tracing::info!(%peer, error = %e, "MQTTS handshake failed");
                                    }
                                }
                            });
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "MQTT accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            r = stop.changed() => if r.is_err() || *stop.borrow() { break },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    mqtt.stop();
    while conns.join_next().await.is_some() {}
}

/// Binds the MQTT listener.
///
/// # Errors
/// The bind error (address in use, permission denied).
pub async fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
