//! What WebSocket and SSE subscriptions share: the broker connection a socket or event stream
//! registers, the server-named queue behind an exchange subscription, attaching a consumer,
//! and the JSON of a delivered message.
//!
//! An exchange subscription is RabbitMQ's "temporary queue" pattern: an exclusive,
//! auto-delete, transient, server-named (`amq.gen-…`) queue owned by the socket's registered
//! connection and bound to the exchange with the pattern as routing key. Unregistering the
//! connection when the socket or stream ends deletes it (the core deletes a closed
//! connection's exclusive queues).

use std::sync::Arc;

use ferrymq_core::queue::Queue;
use ferrymq_core::{
    Binding, Broker, ChannelRegistration, ConnectionHandle, ConnectionInfo, ConsumerEvent,
    ConsumerOptions, Delivery, Destination, FieldTable, QueueDecl, QueueRef, VHost,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::auth::{Access, Auth};
use crate::convert::MessageJson;
use crate::error::{ApiError, ApiResult};
use crate::publish::exchange_name;
use crate::pull::classic;
use crate::state::AppState;

/// Default prefetch (unacked deliveries, or the send window for auto-ack) of a subscription.
pub const PREFETCH_DEFAULT: u32 = 100;
/// Largest prefetch of one subscription.
pub const PREFETCH_MAX: u32 = 1000;
/// Longest routing pattern.
pub const PATTERN_BYTES_MAX: usize = 255;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Registers a WebSocket or SSE client as a broker connection (listed by
/// `GET /api/connections`, closable by `DELETE /api/connections/{id}`). Unregister it with
/// [`Registered`]'s drop.
///
/// # Errors
/// 429 when the vhost's connection limit is reached.
pub fn register(
    broker: &Arc<Broker>,
    protocol: &str,
    peer: String,
    auth: &Auth,
    vhost: &str,
) -> ApiResult<Registered> {
    let handle = broker.register_connection(ConnectionInfo {
        protocol: protocol.to_string(),
        peer,
        user: auth.name().to_string(),
        vhost: vhost.to_string(),
    })?;
    Ok(Registered {
        broker: broker.clone(),
        channel: handle.register_channel(CHANNEL),
        handle,
    })
}

/// The one channel a WebSocket or event stream registers: its subscriptions are its
/// consumers (`GET /api/channels`, `GET /api/consumers`).
pub const CHANNEL: u32 = 1;

/// A registered connection; dropping it unregisters it, which deletes its exclusive queues.
pub struct Registered {
    broker: Arc<Broker>,
    pub handle: Arc<ConnectionHandle>,
    /// Its channel; `unacked` is kept up to date by the socket.
    pub channel: ChannelRegistration,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.broker.unregister_connection(self.handle.id);
    }
}

/// What to subscribe to.
#[derive(Debug, Clone)]
pub enum Target {
    /// An existing classic queue.
    Queue(String),
    /// An exchange: a server-named queue bound with `pattern` as its routing key.
    Exchange { exchange: String, pattern: String },
}

impl Target {
    /// From the optional `queue` / `exchange` + `pattern` fields of a request.
    ///
    /// # Errors
    /// 422 unless exactly one of `queue` and `exchange` is given, or the pattern is too long.
    pub fn from_fields(
        queue: Option<String>,
        exchange: Option<String>,
        pattern: Option<String>,
    ) -> ApiResult<Target> {
        match (queue, exchange) {
            (Some(q), None) if pattern.is_none() => Ok(Target::Queue(q)),
            (None, Some(x)) => {
                let pattern = pattern.unwrap_or_else(|| "#".to_string());
                if pattern.len() > PATTERN_BYTES_MAX {
                    return Err(ApiError::invalid(format!(
                        "pattern is longer than {PATTERN_BYTES_MAX} bytes"
                    )));
                }
                Ok(Target::Exchange {
                    exchange: x,
                    pattern,
                })
            }
            (Some(_), None) => Err(ApiError::invalid(
                "pattern goes with exchange, not with queue",
            )),
            _ => Err(ApiError::invalid("give either queue or exchange")),
        }
    }
}

/// A consumer attached for a subscription.
pub struct Attached {
    pub consumer: u64,
    pub queue: Arc<Queue>,
    pub queue_name: String,
    /// True for the server-named queue of an exchange subscription.
    pub temporary: bool,
}

/// Checks permissions, creates the server-named queue for an exchange target, and attaches
/// a consumer sending to `sink`.
///
/// Permissions: read on the queue; for an exchange, read on the exchange (the server-named
/// queue is created on the user's behalf, like RabbitMQ's STOMP and MQTT temporary queues).
///
/// # Errors
/// 403, 404, 409 (a stream, another connection's exclusive queue, an exclusive consumer).
pub fn attach(
    state: &AppState,
    auth: &Auth,
    vhost: &str,
    target: &Target,
    conn: &ConnectionHandle,
    opts: ConsumerOptions,
    sink: mpsc::UnboundedSender<ConsumerEvent>,
) -> ApiResult<Attached> {
    let opts = ConsumerOptions {
        connection: conn.id,
        channel: CHANNEL,
        ..opts
    };
    match target {
        Target::Queue(name) => {
            let vh = auth.check(state, vhost, Access::Read, "queue", name)?;
            classic(&vh, name)?;
            let (consumer, queue) = consume(&vh, name, opts, sink)?;
            Ok(Attached {
                consumer,
                queue,
                queue_name: name.clone(),
                temporary: false,
            })
        }
        Target::Exchange { exchange, pattern } => {
            let x = exchange_name(exchange);
            let vh = auth.check(state, vhost, Access::Read, "exchange", x)?;
            // The pattern is a binding key: the topic permission's read applies.
            auth.check_topic(state, vhost, Access::Read, x, [pattern.as_str()])?;
            if x.is_empty() {
                return Err(ApiError::invalid(
                    "the default exchange cannot be subscribed to; subscribe to the queue",
                ));
            }
            if vh.exchange(x).is_none() {
                return Err(ApiError::not_found(format!(
                    "no exchange '{x}' in vhost '{vhost}'"
                )));
            }
            let decl = QueueDecl {
                name: String::new(),
                durable: false,
                exclusive: true,
                auto_delete: true,
                arguments: FieldTable::new(),
            };
            let name = vh.declare_queue(decl, conn.id, false)?.name;
            let bound = vh.bind(
                Binding {
                    source: x.to_string(),
                    destination: Destination::Queue(name.clone()),
                    routing_key: pattern.clone(),
                    arguments: FieldTable::new(),
                },
                conn.id,
            );
            let attached = bound.and_then(|()| vh.consume(&name, opts, None, sink));
            match attached {
                Ok((consumer, QueueRef::Classic(queue))) => Ok(Attached {
                    consumer,
                    queue,
                    queue_name: name,
                    temporary: true,
                }),
                other => {
                    let _ = vh.delete_queue(&name, false, false, conn.id);
                    match other {
                        Err(e) => Err(e.into()),
                        Ok(_) => Err(ApiError::conflict("is_a_stream", "not a classic queue")),
                    }
                }
            }
        }
    }
}

fn consume(
    vh: &VHost,
    name: &str,
    opts: ConsumerOptions,
    sink: mpsc::UnboundedSender<ConsumerEvent>,
) -> ApiResult<(u64, Arc<Queue>)> {
    match vh.consume(name, opts, None, sink)? {
        (id, QueueRef::Classic(q)) => Ok((id, q)),
        (id, QueueRef::Stream(s)) => {
            s.cancel(id);
            Err(ApiError::conflict(
                "is_a_stream",
                format!(
                    "'{name}' is a stream: read it with GET /api/streams/{{vhost}}/{name}/messages"
                ),
            ))
        }
    }
}

/// Detaches a subscription's consumer; the server-named queue of an exchange subscription
/// goes with it (auto-delete), and is deleted explicitly in case it never had a consumer.
pub fn detach(vh: Option<&VHost>, a: &Attached, conn: u64) {
    a.queue.cancel(a.consumer, now_ms());
    if a.temporary {
        if let Some(vh) = vh {
            let _ = vh.delete_queue(&a.queue_name, false, false, conn);
        }
    }
}

/// A delivered message, as WebSocket frames and SSE events carry it.
#[derive(Debug, Serialize, Deserialize)]
pub struct MessageEvent<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<&'a str>,
    pub queue: &'a str,
    /// Settles this delivery (`ack`/`nack` over the socket); absent for auto-ack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<String>,
    pub redelivered: bool,
    pub delivery_count: u32,
    pub message: MessageJson,
}

impl<'a> MessageEvent<'a> {
    pub fn new(
        subscription: Option<&'a str>,
        queue: &'a str,
        delivery: Option<String>,
        d: &Delivery,
        base64: bool,
    ) -> Self {
        MessageEvent {
            kind: "message",
            subscription,
            queue,
            delivery,
            redelivered: d.redelivered,
            delivery_count: d.delivery_count,
            message: MessageJson::from_core(&d.message, base64),
        }
    }
}

/// The client's address, when the listener records it (empty otherwise).
pub struct Peer(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.to_string())
                .unwrap_or_default(),
        ))
    }
}
