//! FerryMQ broker core: the protocol-neutral model (messages, virtual hosts,
//! exchanges, bindings, queues, streams, consumers), routing, message lifecycle,
//! flow control and definitions. No wire type enters this crate; protocol
//! adapters translate at their boundary and depend on it, never the reverse.
//!
//! Layers, inward to outward:
//! - [`message`]: the neutral message and typed header values;
//! - [`codec`]: the message's own storage encoding (pure);
//! - [`routing`]: topic and headers matching (pure);
//! - [`exchange`]: exchanges and bindings;
//! - [`queue`]: queues with consumers, credit, acks and lifecycle;
//! - [`stream`]: partitioned append-only streams and their consumers;
//! - [`vhost`]: namespaces, the publish path, dead-lettering;
//! - [`policy`]: policies (pattern, apply-to, priority, definition) and how they
//!   combine with declared arguments;
//! - [`admission`]: connection limits (global, per source, per user) and refusal counts;
//! - [`topicperm`]: topic permissions (RabbitMQ's topic authorisation) and their checks;
//! - [`broker`]: opening, recovery, users, connections, flow control, shutdown;
//! - [`transport`]: the handshake trait through which adapters get secured streams
//!   (TLS) and the peer's verified identity.

pub mod admission;
pub mod auth;
pub mod broker;
pub mod clock;
pub mod codec;
pub mod config;
pub mod error;
pub mod exchange;
pub mod message;
pub mod outbox;
pub mod policy;
pub mod queue;
pub mod routing;
pub mod stream;
mod timer;
pub mod topicperm;
pub mod transport;
pub mod vhost;

pub use admission::{Admission, ConnectionLimits, ConnectionPermit, Limit, LimitExceeded};
pub use broker::{
    Access, Broker, ChannelHandle, ChannelRegistration, ConnectionHandle, ConnectionInfo,
    Definitions, FlowState, Permission, User,
};
pub use config::{BrokerConfig, VhostLimits};
pub use error::{CoreError, Result};
pub use exchange::{Binding, Destination, ExchangeDecl, ExchangeKind};
pub use message::{FieldTable, Message, Properties, Value};
pub use outbox::Outbox;
pub use policy::{AppliedPolicy, ApplyTo, Policy};
pub use queue::{ConsumerEvent, ConsumerInfo, ConsumerOptions, Delivery, QueueDecl};
pub use stream::{decode_batch, register_record_format, RecordFormat, StreamOffset};
pub use topicperm::{TopicCheck, TopicPermission};
pub use vhost::{DeclareOk, PublishOutcome, Published, PublishedBatch, QueueRef, VHost};
