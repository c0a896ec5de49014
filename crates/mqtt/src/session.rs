//! The session registry: which connection holds each client id (session takeover), and the
//! protocol state a persistent session keeps between connections that is not in the core:
//! QoS 2 packet ids awaiting PUBREL (inbound) and PUBCOMP (outbound), and shared
//! subscriptions. Subscriptions (shared ones as bindings from `mqtt.shared-subscriptions`)
//! and queued messages live in the core, so they survive a broker restart with it. The
//! QoS 2 packet-id sets of a persistent session are also persisted, as one record per
//! client id in the keyed log [`STATE_LOG_KIND`] (see [`SessionState::encode_record`] for
//! the layout, and the `connection` module for when records are written and why in that
//! order).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::watch;

use crate::mapping::Sub;

/// How long a new connection waits for the one it takes over to finish.
const TAKEOVER_WAIT: Duration = Duration::from_secs(10);

/// Storage kind of the logs holding persistent sessions' QoS 2 packet-id sets (key = client
/// id, one record per session whose sets are not empty).
pub const STATE_LOG_KIND: &str = "mqtt-session-state";
/// Version byte of a session-state record.
const STATE_VERSION: u8 = 1;
/// Largest valid session-state record: the version and two lists of at most 65,535 ids.
pub const STATE_RECORD_MAX: usize = 1 + 2 * (2 + 2 * u16::MAX as usize);

/// Protocol state carried from one connection of a persistent session to the next.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SessionState {
    /// Inbound QoS 2 packet ids PUBREC'd (or being stored), awaiting PUBREL.
    pub inbound_qos2: BTreeSet<u16>,
    /// The part of `inbound_qos2` whose message is durable and that is (being) persisted:
    /// only these may be answered as duplicates after a restart.
    pub inbound_durable: BTreeSet<u16>,
    /// Outbound QoS 2 packet ids PUBREC'd by the client, awaiting PUBCOMP.
    pub outbound_pubrel: BTreeSet<u16>,
    /// Shared subscriptions by their full `$share/...` filter (in memory only: their
    /// durable copy is the membership bindings, which go away with the session queue).
    pub shared: Vec<(String, Sub)>,
}

/// Why a session-state record read back from disk was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("session-state record is empty")]
    Empty,
    #[error("session-state record version {0} is not supported")]
    Version(u8),
    #[error("session-state record of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("session-state record is truncated")]
    Truncated,
    #[error("session-state record holds packet id 0 or ids out of order")]
    BadId,
    #[error("session-state record has {0} trailing bytes")]
    Trailing(usize),
}

impl SessionState {
    /// True when nothing needs persisting (a session without a record).
    pub fn persisted_is_empty(&self) -> bool {
        self.inbound_durable.is_empty() && self.outbound_pubrel.is_empty()
    }

    /// The persisted part as a record: `version u8 = 1 | n u16 | n × inbound id u16 |
    /// m u16 | m × outbound id u16`, big-endian, ids strictly increasing and non-zero.
    pub fn encode_record(&self) -> Bytes {
        let n = self.inbound_durable.len() + self.outbound_pubrel.len();
        let mut b = BytesMut::with_capacity(5 + 2 * n);
        b.put_u8(STATE_VERSION);
        for set in [&self.inbound_durable, &self.outbound_pubrel] {
            // A set of u16 ids other than 0 holds at most 65,535 of them.
            let ids: Vec<u16> = set.iter().copied().filter(|&i| i != 0).collect();
            b.put_u16(u16::try_from(ids.len()).unwrap_or(u16::MAX));
            for id in ids.into_iter().take(u16::MAX as usize) {
                b.put_u16(id);
            }
        }
        b.freeze()
    }

    /// Reads a record written by [`SessionState::encode_record`]; `inbound_qos2` is the
    /// durable inbound set. Every count is checked against the bytes present.
    ///
    /// # Errors
    /// A record that is empty, of an unknown version, larger than [`STATE_RECORD_MAX`],
    /// truncated, with trailing bytes, or holding id 0 or unsorted ids.
    pub fn decode_record(b: &[u8]) -> Result<SessionState, StateError> {
        if b.len() > STATE_RECORD_MAX {
            return Err(StateError::TooLarge(b.len()));
        }
        let (&version, mut rest) = b.split_first().ok_or(StateError::Empty)?;
        if version != STATE_VERSION {
            return Err(StateError::Version(version));
        }
        let mut sets: [BTreeSet<u16>; 2] = Default::default();
        for set in &mut sets {
            let n = rest.get(..2).ok_or(StateError::Truncated)?;
            let n = usize::from(u16::from_be_bytes([n[0], n[1]]));
            let ids = rest.get(2..2 + 2 * n).ok_or(StateError::Truncated)?;
            let mut last = 0u16;
            for c in ids.chunks_exact(2) {
                let id = u16::from_be_bytes([c[0], c[1]]);
                if id <= last {
                    return Err(StateError::BadId);
                }
                last = id;
                set.insert(id);
            }
            rest = &rest[2 + 2 * n..];
        }
        if !rest.is_empty() {
            return Err(StateError::Trailing(rest.len()));
        }
        let [inbound, outbound] = sets;
        Ok(SessionState {
            inbound_qos2: inbound.clone(),
            inbound_durable: inbound,
            outbound_pubrel: outbound,
            shared: Vec::new(),
        })
    }
}

struct Active {
    /// The user the holding connection logged in as.
    user: String,
    kick: watch::Sender<bool>,
    done: watch::Receiver<()>,
}

#[derive(Default)]
struct Entry {
    generation: u64,
    active: Option<Active>,
    state: Option<SessionState>,
}

/// What a connection gets when it attaches to its client id.
pub struct Attached {
    pub generation: u64,
    /// Turns true when another connection takes the session over.
    pub kicked: watch::Receiver<bool>,
    /// Dropped when the connection has fully released the session.
    pub done: watch::Sender<()>,
    /// The state left by the previous connection of a persistent session.
    pub state: Option<SessionState>,
}

/// Client id → session.
#[derive(Default)]
pub struct Registry {
    entries: Mutex<HashMap<String, Entry>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a connection of `user` holds `client_id` now (a reconnect of that client
    /// would take it over, freeing that user's connection slot).
    pub fn held_by(&self, client_id: &str, user: &str) -> bool {
        self.lock()
            .get(client_id)
            .and_then(|e| e.active.as_ref())
            .is_some_and(|a| a.user == user)
    }

    /// Attaches a connection of `user` to `client_id`, ending (and waiting for) a
    /// connection that holds it. Returns whether one was taken over.
    pub async fn attach(&self, client_id: &str, user: &str) -> (Attached, bool) {
        let mut took_over = false;
        loop {
            let waiting = {
                let mut m = self.lock();
                let e = m.entry(client_id.to_owned()).or_default();
                match e.active.take() {
                    Some(a) => {
                        let _ = a.kick.send(true);
                        Some(a.done)
                    }
                    None => {
                        e.generation += 1;
                        let (kick, kicked) = watch::channel(false);
                        let (done, done_rx) = watch::channel(());
                        e.active = Some(Active {
                            user: user.to_owned(),
                            kick,
                            done: done_rx,
                        });
                        return (
                            Attached {
                                generation: e.generation,
                                kicked,
                                done,
                                state: e.state.take(),
                            },
                            took_over,
                        );
                    }
                }
            };
            if let Some(mut done) = waiting {
                took_over = true;
                // Ends with Err once the old connection dropped its `done` sender.
                let _ = tokio::time::timeout(TAKEOVER_WAIT, async {
                    while done.changed().await.is_ok() {}
                })
                .await;
            }
        }
    }

    /// Detaches the connection of `generation`, keeping `state` for the next connection of
    /// a persistent session (`None` forgets the session).
    pub fn detach(&self, client_id: &str, generation: u64, state: Option<SessionState>) {
        let mut m = self.lock();
        let Some(e) = m.get_mut(client_id) else {
            return;
        };
        if e.generation != generation {
            // Taken over: the new holder's attach already removed us; keep our state for it
            // only if it has not started yet (it took `state` at attach).
            return;
        }
        e.active = None;
        match state {
            Some(s) => e.state = Some(s),
            None => {
                m.remove(client_id);
            }
        }
    }

    /// Forgets a session's state (clean start).
    pub fn clear_state(&self, client_id: &str) {
        if let Some(e) = self.lock().get_mut(client_id) {
            e.state = None;
        }
    }

    /// True when no connection has attached to `client_id` since `generation` left.
    pub fn still_detached(&self, client_id: &str, generation: u64) -> bool {
        match self.lock().get(client_id) {
            Some(e) => e.generation == generation && e.active.is_none(),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(inbound: &[u16], outbound: &[u16]) -> SessionState {
        let inbound: BTreeSet<u16> = inbound.iter().copied().collect();
        SessionState {
            inbound_qos2: inbound.clone(),
            inbound_durable: inbound,
            outbound_pubrel: outbound.iter().copied().collect(),
            shared: Vec::new(),
        }
    }

    #[test]
    fn state_records_round_trip() {
        for st in [
            state(&[], &[]),
            state(&[1], &[]),
            state(&[], &[65_535]),
            state(&[1, 2, 300, 65_535], &[7, 9]),
        ] {
            let rec = st.encode_record();
            assert_eq!(SessionState::decode_record(&rec), Ok(st));
        }
        // Golden layout.
        assert_eq!(
            &state(&[1, 258], &[3]).encode_record()[..],
            &[1, 0, 2, 0, 1, 1, 2, 0, 1, 0, 3]
        );
        // Only the durable part of the inbound set is written.
        let mut st = state(&[], &[]);
        st.inbound_qos2.insert(5);
        assert!(st.persisted_is_empty());
        assert_eq!(&st.encode_record()[..], &[1, 0, 0, 0, 0]);
        // The largest possible record is within the limit.
        let all: Vec<u16> = (1..=u16::MAX).collect();
        let big = state(&all, &all).encode_record();
        assert_eq!(big.len(), STATE_RECORD_MAX);
        assert_eq!(
            SessionState::decode_record(&big)
                .unwrap()
                .inbound_durable
                .len(),
            65_535
        );
    }

    #[test]
    fn damaged_state_records_are_refused_without_panic() {
        let rec = state(&[1, 2, 300], &[7, 9]).encode_record();
        // Every truncation.
        for n in 0..rec.len() {
            assert!(
                SessionState::decode_record(&rec[..n]).is_err(),
                "cut at {n}"
            );
        }
        assert_eq!(SessionState::decode_record(&[]), Err(StateError::Empty));
        assert_eq!(
            SessionState::decode_record(&[9, 0, 0, 0, 0]),
            Err(StateError::Version(9))
        );
        // Counts larger than the bytes present.
        assert_eq!(
            SessionState::decode_record(&[1, 0xff, 0xff, 0, 1]),
            Err(StateError::Truncated)
        );
        assert_eq!(
            SessionState::decode_record(&[1, 0, 0, 0, 0, 0]),
            Err(StateError::Trailing(1))
        );
        assert_eq!(
            SessionState::decode_record(&[1, 0, 1, 0, 0, 0, 0]),
            Err(StateError::BadId)
        );
        assert_eq!(
            SessionState::decode_record(&[1, 0, 2, 0, 5, 0, 5, 0, 0]),
            Err(StateError::BadId)
        );
        let huge = vec![1u8; STATE_RECORD_MAX + 1];
        assert_eq!(
            SessionState::decode_record(&huge),
            Err(StateError::TooLarge(STATE_RECORD_MAX + 1))
        );
        // Every single-byte corruption decodes to something or an error, never a panic.
        for i in 0..rec.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut b = rec.to_vec();
                b[i] = v;
                let _ = SessionState::decode_record(&b);
            }
        }
    }

    #[test]
    fn state_records_survive_reopen_in_their_own_log() {
        use crate::retained::RetainedStore;
        use ferrymq_storage::{Storage, StorageConfig};
        let tmp = tempfile::tempdir().unwrap();
        let st = state(&[4, 5], &[9]);
        {
            let s = Storage::open(tmp.path(), StorageConfig::default()).unwrap();
            let log = RetainedStore::open_kind(s, STATE_LOG_KIND, "/", usize::MAX).unwrap();
            let m = ferrymq_core::Message::new(String::new(), st.encode_record());
            log.set("dev", Some(m)).unwrap().unwrap().wait().unwrap();
            let m = ferrymq_core::Message::new(String::new(), Bytes::from_static(&[1, 0xff]));
            log.set("bad", Some(m)).unwrap().unwrap().wait().unwrap();
        }
        let s = Storage::open(tmp.path(), StorageConfig::default()).unwrap();
        let log = RetainedStore::open_kind(s.clone(), STATE_LOG_KIND, "/", usize::MAX).unwrap();
        let back = log.get("dev").unwrap();
        assert_eq!(SessionState::decode_record(&back.message.body), Ok(st));
        let bad = log.get("bad").unwrap();
        assert_eq!(
            SessionState::decode_record(&bad.message.body),
            Err(StateError::Truncated)
        );
        // Apart from the other keyed logs of the vhost.
        assert!(crate::retained::RetainedStore::open(s, "/", 10)
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn takeover_kicks_and_waits_for_the_old_connection() {
        let r = std::sync::Arc::new(Registry::default());
        let (mut a, took) = r.attach("c", "u").await;
        assert!(!took);
        assert!(r.held_by("c", "u"));
        assert!(!r.held_by("c", "other"), "held by u, not by other");
        assert!(!r.held_by("d", "u"));
        a.state = None;
        let r2 = r.clone();
        let second = tokio::spawn(async move { r2.attach("c", "u").await });
        a.kicked.changed().await.unwrap();
        assert!(*a.kicked.borrow());
        let mut st = SessionState::default();
        st.inbound_qos2.insert(7);
        r.detach("c", a.generation, Some(st));
        drop(a.done);
        let (b, took) = second.await.unwrap();
        assert!(took);
        assert_eq!(b.generation, 2);
        // the old connection detached before it finished: its state goes to the new one
        assert!(b.state.unwrap().inbound_qos2.contains(&7));
        assert!(!r.still_detached("c", b.generation));
        r.detach("c", b.generation, None);
        assert!(r.still_detached("c", b.generation));
        assert!(!r.held_by("c", "u"), "a detached session has no holder");
    }

    #[tokio::test]
    async fn state_is_handed_to_the_next_connection() {
        let r = Registry::default();
        let (a, _) = r.attach("c", "u").await;
        let mut st = SessionState::default();
        st.outbound_pubrel.insert(3);
        r.detach("c", a.generation, Some(st));
        drop(a);
        assert!(r.still_detached("c", 1));
        let (b, took) = r.attach("c", "u").await;
        assert!(!took);
        assert!(b.state.unwrap().outbound_pubrel.contains(&3));
    }
}
