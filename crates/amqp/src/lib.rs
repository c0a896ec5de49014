//! FerryMQ's AMQP 0-9-1 adapter: a listener whose connections speak RabbitMQ's
//! dialect of AMQP 0-9-1 and translate every method into the protocol-neutral
//! broker core. Wire types stop here; the core never sees them.
//!
//! Layers:
//! - [`convert`]: wire values and properties ⇄ the core's message model;
//! - [`error`]: channel/connection exceptions and their reply codes;
//! - `connection`: one task per TCP (or TLS) connection — handshake, frames, heartbeats,
//!   flow control, write coalescing;
//! - `channel`: per-channel state — publishing (confirms, transactions,
//!   mandatory returns), consuming (credit, delivery tags, acks), declarations.

mod channel;
mod connection;
pub mod convert;
pub mod error;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ferrymq_core::queue::{ConsumerId, ConsumerSink};
use ferrymq_core::transport::Handshake;
use ferrymq_core::{Broker, ConnectionPermit, Limit};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Limits and negotiated defaults of the AMQP listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpConfig {
    /// Highest channel number a client may open (`channel_max` offered in tune).
    pub channel_max: u16,
    /// Largest frame the server accepts and offers (`frame_max` in tune).
    pub frame_max: u32,
    /// Heartbeat interval offered, in seconds (0 disables).
    pub heartbeat_s: u16,
    /// Open connections accepted at once (0 = unlimited).
    pub connections_max: usize,
    /// Consumers per channel (0 = unlimited).
    pub consumers_per_channel_max: usize,
    /// Time allowed from TCP accept to `connection.open-ok`.
    pub handshake_timeout_ms: u64,
    /// Body bytes one consumer may have delivered and not yet settled (for no-ack
    /// consumers: handed to the connection and not yet released); 0 = unlimited. At least
    /// one message always passes.
    pub consumer_window_max_bytes: u64,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            channel_max: 2047,
            frame_max: 131_072,
            heartbeat_s: 60,
            connections_max: 0,
            consumers_per_channel_max: 0,
            handshake_timeout_ms: 10_000,
            consumer_window_max_bytes: 0,
        }
    }
}

/// A direct reply-to consumer (`amq.rabbitmq.reply-to`).
#[derive(Clone)]
pub(crate) struct ReplyTarget {
    pub sink: ConsumerSink,
    pub consumer: ConsumerId,
    pub tag: Arc<str>,
}

/// The AMQP adapter: what every connection of its listeners (plain and AMQPS) shares —
/// direct reply-to consumers, and the open-connection count `amqp.connections_max` applies
/// to. One for both listeners, so a reply crosses between them and the limit is one limit.
#[derive(Clone)]
pub struct Amqp(Arc<Shared>);

impl Amqp {
    /// The adapter over `broker`.
    pub fn new(broker: Arc<Broker>, config: AmqpConfig) -> Amqp {
        Amqp(Arc::new(Shared {
            broker,
            config,
            reply_to: Mutex::new(HashMap::new()),
            open_connections: AtomicUsize::new(0),
        }))
    }
}

/// State shared by every connection of the adapter's listeners.
pub(crate) struct Shared {
    pub broker: Arc<Broker>,
    pub config: AmqpConfig,
    /// Direct reply-to consumers by token.
    pub reply_to: Mutex<HashMap<String, ReplyTarget>>,
    pub open_connections: AtomicUsize,
}

/// Accepts AMQP connections until `stop` turns true, then asks every connection
/// to close (`connection.close` 320 CONNECTION_FORCED) and returns once all of
/// them have ended. With `tls`, every connection is secured by it first (AMQPS): the
/// handshake runs in the connection's task, and a failed one ends only that connection.
///
/// # Cancel safety
/// Not cancel safe: drive it to completion so connections end cleanly.
pub async fn run(
    listener: TcpListener,
    amqp: Amqp,
    tls: Option<Arc<dyn Handshake>>,
    mut stop: watch::Receiver<bool>,
) {
    let shared = amqp.0;
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let admitted = admit(&shared, peer);
                    if let Err(why) = &admitted {
                        tracing::warn!(%peer, why = %why, "AMQP connection refused");
                    }
                    // `admit` counted an admitted connection in `open_connections`.
                    let counted = admitted.is_ok();
                    let (s, st, tls) = (shared.clone(), stop.clone(), tls.clone());
                    conns.spawn(async move {
                        serve(&s, stream, peer, tls, admitted, st).await;
                        if counted {
                            s.open_connections.fetch_sub(1, Ordering::AcqRel);
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "AMQP accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            r = stop.changed() => if r.is_err() || *stop.borrow() { break },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    while conns.join_next().await.is_some() {}
}

/// One accepted connection: over a limit, `connection.close` with the text (plain AMQP) or a
/// close before any handshake (AMQPS); else the TLS handshake if any, then the protocol.
async fn serve(
    shared: &Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<dyn Handshake>>,
    admitted: Result<ConnectionPermit, String>,
    stop: watch::Receiver<bool>,
) {
    let Some(tls) = tls else {
        match admitted {
            Ok(permit) => connection::run(shared.clone(), tcp, peer, None, stop, permit).await,
            Err(why) => connection::refuse(tcp, &why).await,
        }
        return;
    };
    // On AMQPS a refused connection is closed before the handshake: a client over its limit
    // is the one that keeps reconnecting, and each refusal must not cost a TLS handshake.
    let Ok(permit) = admitted else {
        return;
    };
    let secured = match tls.accept(tcp).await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(%peer, error = %e, "AMQPS handshake failed");
            return;
        }
    };
    connection::run(
        shared.clone(),
        secured.stream,
        peer,
        secured.identity,
        stop,
        permit,
    )
    .await;
}

/// Admits a new connection: the listener's own `connections_max`, then the broker-wide
/// limits (global, per source address). An admitted connection is counted in
/// `open_connections` (checked and counted in one step, so the AMQP and AMQPS listeners'
/// loops cannot both take the last slot); the caller uncounts it when it ends. On refusal,
/// the text for `connection.close`.
fn admit(shared: &Shared, peer: SocketAddr) -> Result<ConnectionPermit, String> {
    let max = shared.config.connections_max;
    let took = shared
        .open_connections
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (max == 0 || n < max).then_some(n + 1)
        });
    if took.is_err() {
        shared
            .broker
            .admission()
            .refused(Limit::Connections, PROTOCOL);
        return Err(format!("AMQP connection limit ({max}) is reached"));
    }
    shared.broker.admit(PROTOCOL, peer.ip()).map_err(|e| {
        shared.open_connections.fetch_sub(1, Ordering::AcqRel);
        e.message
    })
}

/// The protocol label of this adapter in limits and metrics.
pub(crate) const PROTOCOL: &str = "amqp";

/// Binds the AMQP listener.
///
/// # Errors
/// The bind error (address in use, permission denied).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
