//! Connection admission and limit accounting, shared by every protocol: the global,
//! per-source-address and per-user connection limits, the permit a connection holds for
//! its life, and the counters of refusals by limit and protocol (`/metrics`).
//!
//! Protocol-neutral: an adapter calls [`Admission::admit`] right after accept, refuses
//! with its own protocol's error when it fails, and calls
//! [`ConnectionPermit::authenticated`] once the user is known. Dropping the permit
//! releases every count it holds.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// Connection limits (0 = unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections across every protocol.
    pub connections_max: u64,
    /// Open connections from one source IP address.
    pub connections_per_source_max: u64,
    /// Open connections of one authenticated user.
    pub connections_per_user_max: u64,
    /// Bytes buffered for one connection that its client has not taken (see
    /// [`crate::Outbox`]).
    pub connection_buffer_max_bytes: u64,
}

impl ConnectionLimits {
    /// Body bytes one consumer may have delivered and not yet settled on a connection (0 =
    /// unlimited): half of `connection_buffer_max_bytes`, so that one consumer that falls
    /// behind never fills its connection's buffer alone; `other` (a protocol's own
    /// window, 0 = unlimited) when smaller.
    pub fn consumer_window_bytes(&self, other: u64) -> u64 {
        match (self.connection_buffer_max_bytes / 2, other) {
            (0, w) => w,
            (w, 0) => w.max(1),
            (a, b) => a.max(1).min(b),
        }
    }
}

/// A named limit, as counted in `ferrymq_limit_refusals_total{limit=...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Limit {
    /// `limits.connections_max` (and a protocol's own connection limit).
    Connections,
    /// `limits.connections_per_source_max`.
    ConnectionsPerSource,
    /// `limits.connections_per_user_max`.
    ConnectionsPerUser,
    /// A vhost's `max_connections`.
    VhostConnections,
    /// Channels per connection (AMQP `channel_max`).
    Channels,
    /// Consumers per channel.
    ConsumersPerChannel,
    /// Queues per vhost (`limits.queues_per_vhost_max` or a vhost's `max_queues`).
    QueuesPerVhost,
    /// Message, frame, packet or request size.
    MessageSize,
    /// Time allowed to finish a handshake.
    HandshakeTimeout,
    /// Bytes buffered per connection (`limits.connection_buffer_max_bytes`).
    ConnectionBuffer,
}

impl Limit {
    /// The label value in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Connections => "connections",
            Limit::ConnectionsPerSource => "connections_per_source",
            Limit::ConnectionsPerUser => "connections_per_user",
            Limit::VhostConnections => "vhost_connections",
            Limit::Channels => "channels",
            Limit::ConsumersPerChannel => "consumers_per_channel",
            Limit::QueuesPerVhost => "queues_per_vhost",
            Limit::MessageSize => "message_size",
            Limit::HandshakeTimeout => "handshake_timeout",
            Limit::ConnectionBuffer => "connection_buffer",
        }
    }
}

/// A connection refused by a limit; the message names the limit and its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LimitExceeded {
    pub limit: Limit,
    pub message: String,
}

#[derive(Debug, Default)]
struct Counts {
    total: u64,
    by_protocol: BTreeMap<&'static str, u64>,
    by_source: HashMap<IpAddr, u64>,
    by_user: HashMap<String, u64>,
    refusals: BTreeMap<(Limit, &'static str), u64>,
}

/// The admission component: counts open connections and refusals.
#[derive(Debug)]
pub struct Admission {
    limits: ConnectionLimits,
    counts: Mutex<Counts>,
}

impl Admission {
    pub fn new(limits: ConnectionLimits) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            counts: Mutex::new(Counts::default()),
        })
    }

    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new connection of `protocol` from `source`, or refuses it (and counts the
    /// refusal) when the global or per-source limit is reached.
    ///
    /// # Errors
    /// [`LimitExceeded`] naming the limit.
    pub fn admit(
        self: &Arc<Self>,
        protocol: &'static str,
        source: IpAddr,
    ) -> Result<ConnectionPermit, LimitExceeded> {
        let mut c = self.counts();
        let refused = if over(self.limits.connections_max, c.total) {
            Some(LimitExceeded {
                limit: Limit::Connections,
                message: format!(
                    "connection limit ({}) is reached",
                    self.limits.connections_max
                ),
            })
        } else if over(
            self.limits.connections_per_source_max,
            c.by_source.get(&source).copied().unwrap_or(0),
        ) {
            Some(LimitExceeded {
                limit: Limit::ConnectionsPerSource,
                message: format!(
                    "connection limit per source address ({}) is reached for {source}",
                    self.limits.connections_per_source_max
                ),
            })
        } else {
            None
        };
        if let Some(e) = refused {
            *c.refusals.entry((e.limit, protocol)).or_insert(0) += 1;
            return Err(e);
        }
        c.total += 1;
        *c.by_protocol.entry(protocol).or_insert(0) += 1;
        *c.by_source.entry(source).or_insert(0) += 1;
        Ok(ConnectionPermit {
            admission: Arc::clone(self),
            protocol,
            source: Some(source),
            user: None,
        })
    }

    /// A permit for a session carried by an already admitted connection (MQTT over a
    /// WebSocket of an HTTP connection): it counts only against the per-user limit, the
    /// carrier holds the global and per-source counts.
    pub fn carried(self: &Arc<Self>, protocol: &'static str) -> ConnectionPermit {
        ConnectionPermit {
            admission: Arc::clone(self),
            protocol,
            source: None,
            user: None,
        }
    }

    /// Counts a refusal by a limit enforced elsewhere (channels, consumers, sizes, ...).
    pub fn refused(&self, limit: Limit, protocol: &'static str) {
        *self.counts().refusals.entry((limit, protocol)).or_insert(0) += 1;
    }

    /// Refusals so far, by limit and protocol.
    pub fn refusals(&self) -> Vec<(Limit, &'static str, u64)> {
        self.counts()
            .refusals
            .iter()
            .map(|(&(l, p), &n)| (l, p, n))
            .collect()
    }

    /// Admitted connections open now, by protocol (including those still in their
    /// handshake).
    pub fn open_by_protocol(&self) -> Vec<(&'static str, u64)> {
        self.counts()
            .by_protocol
            .iter()
            .map(|(&p, &n)| (p, n))
            .collect()
    }

    /// Admitted connections open now.
    pub fn open_total(&self) -> u64 {
        self.counts().total
    }
}

/// Whether `n` open connections leave no room under `max` (0 = unlimited).
fn over(max: u64, n: u64) -> bool {
    max > 0 && n >= max
}

/// Held by an admitted connection for its whole life; dropping it releases its counts.
#[derive(Debug)]
pub struct ConnectionPermit {
    admission: Arc<Admission>,
    protocol: &'static str,
    /// `None` for a carried session (not in the global and per-source counts).
    source: Option<IpAddr>,
    user: Option<String>,
}

impl ConnectionPermit {
    pub fn protocol(&self) -> &'static str {
        self.protocol
    }

    /// The user is known (after login): counts the connection against the per-user
    /// limit, or refuses it (and counts the refusal). A second call for the same user
    /// is a no-op; for another user it moves the count.
    ///
    /// # Errors
    /// [`LimitExceeded`] (`ConnectionsPerUser`).
    pub fn authenticated(&mut self, user: &str) -> Result<(), LimitExceeded> {
        if self.user.as_deref() == Some(user) {
            return Ok(());
        }
        let max = self.admission.limits.connections_per_user_max;
        let mut c = self.admission.counts();
        if over(max, c.by_user.get(user).copied().unwrap_or(0)) {
            *c.refusals
                .entry((Limit::ConnectionsPerUser, self.protocol))
                .or_insert(0) += 1;
            return Err(LimitExceeded {
                limit: Limit::ConnectionsPerUser,
                message: format!("connection limit ({max}) of user '{user}' is reached"),
            });
        }
        if let Some(old) = self.user.take() {
            release_user(&mut c, &old);
        }
        *c.by_user.entry(user.to_owned()).or_insert(0) += 1;
        self.user = Some(user.to_owned());
        Ok(())
    }
}

fn release_user(c: &mut Counts, user: &str) {
    if let Some(n) = c.by_user.get_mut(user) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            c.by_user.remove(user);
        }
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut c = self.admission.counts();
        if let Some(source) = self.source {
            c.total = c.total.saturating_sub(1);
            if let Some(n) = c.by_protocol.get_mut(self.protocol) {
                *n = n.saturating_sub(1);
            }
            if let Some(n) = c.by_source.get_mut(&source) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    c.by_source.remove(&source);
                }
            }
        }
        if let Some(u) = self.user.take() {
            release_user(&mut c, &u);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn consumer_window_is_half_the_connection_buffer_or_smaller() {
        let l = |b| super::ConnectionLimits {
            connection_buffer_max_bytes: b,
            ..Default::default()
        };
        assert_eq!(l(0).consumer_window_bytes(0), 0);
        assert_eq!(l(0).consumer_window_bytes(500), 500);
        assert_eq!(l(1000).consumer_window_bytes(0), 500);
        assert_eq!(l(1000).consumer_window_bytes(100), 100);
        assert_eq!(l(1000).consumer_window_bytes(800), 500);
    }

    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn global_limit_counts_every_protocol_and_releases_on_drop() {
        let a = Admission::new(ConnectionLimits {
            connections_max: 2,
            ..Default::default()
        });
        let p1 = a.admit("amqp", A).unwrap();
        let _p2 = a.admit("mqtt", B).unwrap();
        let e = a.admit("kafka", A).unwrap_err();
        assert_eq!(e.limit, Limit::Connections);
        assert_eq!(a.refusals(), vec![(Limit::Connections, "kafka", 1)]);
        drop(p1);
        assert!(a.admit("kafka", A).is_ok());
        assert_eq!(a.open_total(), 1);
        assert_eq!(
            a.open_by_protocol(),
            vec![("amqp", 0), ("kafka", 0), ("mqtt", 1)]
        );
    }

    #[test]
    fn per_source_limit_is_per_address() {
        let a = Admission::new(ConnectionLimits {
            connections_per_source_max: 1,
            ..Default::default()
        });
        let _p = a.admit("amqp", A).unwrap();
        assert_eq!(
            a.admit("http", A).unwrap_err().limit,
            Limit::ConnectionsPerSource
        );
        assert!(a.admit("http", B).is_ok());
    }

    #[test]
    fn per_user_limit_applies_after_login_and_is_released() {
        let a = Admission::new(ConnectionLimits {
            connections_per_user_max: 1,
            ..Default::default()
        });
        let mut p1 = a.admit("amqp", A).unwrap();
        p1.authenticated("alice").unwrap();
        p1.authenticated("alice").unwrap();
        let mut p2 = a.admit("mqtt", A).unwrap();
        let e = p2.authenticated("alice").unwrap_err();
        assert_eq!(e.limit, Limit::ConnectionsPerUser);
        assert!(e.message.contains("alice"));
        p2.authenticated("bob").unwrap();
        drop(p1);
        p2.authenticated("alice").unwrap();
        let mut p3 = a.admit("kafka", B).unwrap();
        p3.authenticated("bob").unwrap();
        // A carried session counts only for its user.
        let mut carried = a.carried("mqtt");
        assert_eq!(
            carried.authenticated("alice").unwrap_err().limit,
            Limit::ConnectionsPerUser
        );
        assert_eq!(a.open_total(), 2);
        drop(carried);
        assert_eq!(a.open_total(), 2);
        assert_eq!(a.refusals(), vec![(Limit::ConnectionsPerUser, "mqtt", 2)]);
    }
}
