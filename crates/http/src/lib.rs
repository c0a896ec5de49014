//! FerryMQ's HTTP adapter: publish and consume over REST, WebSocket and Server-Sent Events;
//! manage everything through a REST management API; `/metrics` for Prometheus; health
//! checks; an OpenAPI document generated from the code.
//!
//! Layers, one file each (outermost first):
//! - [`server`]: the router and the listener (HTTP/1.1 keep-alive and HTTP/2 cleartext);
//! - [`publish`], [`pull`], [`streams`], [`ws`], [`sse`]: the data plane;
//! - [`entities`], [`admin`], [`policies`], [`channels`] (channels and consumers): management; [`metrics`]: metrics and health; [`openapi`];
//! - [`auth`]: Basic and bearer authentication, permissions; [`json`]: extractors that
//!   answer JSON errors; [`error`]: the one mapping from core errors to statuses;
//! - [`convert`]: HTTP/JSON ⇄ neutral `Message`; [`leases`]: pulled messages and their
//!   ack deadlines; [`subscribe`]: what WebSocket and SSE subscriptions share; [`rates`]:
//!   message rates sampled from counters; [`state`].
//!
//! Architecture Invariant: this crate talks to the broker only through `ferrymq-core`'s
//! public API; it never touches storage files.

pub mod admin;
pub mod admission;
pub mod auth;
pub mod channels;
pub mod convert;
pub mod entities;
pub mod error;
/// The body check of the `http_json` fuzz target (feature `fuzzing`, and tests).
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod json;
pub mod leases;
pub mod metrics;
pub mod openapi;
pub mod policies;
pub mod publish;
pub mod pull;
pub mod rates;
pub mod server;
pub mod sse;
pub mod state;
pub mod streams;
pub mod subscribe;
pub mod ws;

pub use admission::HttpLimits;
pub use error::{ApiError, ErrorBody};
pub use server::{
    bind, router, serve, serve_secured, serve_with_routes, ClientIdentity, HttpError, Peer,
    SecuredListener,
};
