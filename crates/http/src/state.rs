//! `AppState`: what every handler shares — the broker, tokens, leases, rates and the
//! shutdown signal.

use std::ops::Deref;
use std::sync::Arc;

use ferrymq_core::Broker;
use tokio::sync::watch;

use crate::admission::HttpLimits;
use crate::auth::Tokens;
use crate::leases::Leases;
use crate::rates::Rates;

/// Shared state, cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub broker: Arc<Broker>,
    pub tokens: Tokens,
    pub leases: Arc<Leases>,
    pub rates: Arc<Rates>,
    /// Turns true when the server shuts down; long polls, WebSockets and SSE streams end.
    pub shutdown: watch::Receiver<bool>,
    /// The listener's limits (the WebSocket timeout).
    pub limits: HttpLimits,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(broker: Arc<Broker>, shutdown: watch::Receiver<bool>, limits: HttpLimits) -> Self {
        AppState(Arc::new(Inner {
            broker,
            tokens: Tokens::default(),
            leases: Arc::new(Leases::default()),
            rates: Arc::new(Rates::default()),
            shutdown,
            limits,
        }))
    }
}
