//! The in-memory session registry: which connection holds each client id (session
//! takeover), and the protocol state a persistent session keeps between connections that
//! is not in the core: QoS 2 packet ids awaiting PUBREL (inbound) and PUBCOMP (outbound),
//! and shared subscriptions. Subscriptions and queued messages live in the core (the
//! session queue and its bindings), so they also survive a broker restart; this state does
//! not (see ARCHITECTURE.md).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use crate::mapping::Sub;

/// How long a new connection waits for the one it takes over to finish.
const TAKEOVER_WAIT: Duration = Duration::from_secs(10);

/// Protocol state carried from one connection of a persistent session to the next.
#[derive(Debug, Default, Clone)]
pub struct SessionState {
    /// Inbound QoS 2 packet ids PUBREC'd (or being stored), awaiting PUBREL.
    pub inbound_qos2: BTreeSet<u16>,
    /// Outbound QoS 2 packet ids PUBREL'd, awaiting PUBCOMP.
    pub outbound_pubrel: BTreeSet<u16>,
    /// Shared subscriptions by their full `$share/...` filter.
    pub shared: Vec<(String, Sub)>,
}

struct Active {
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

    /// Attaches a connection to `client_id`, ending (and waiting for) a connection that
    /// holds it. Returns whether one was taken over.
    pub async fn attach(&self, client_id: &str) -> (Attached, bool) {
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

    #[tokio::test]
    async fn takeover_kicks_and_waits_for_the_old_connection() {
        let r = std::sync::Arc::new(Registry::default());
        let (mut a, took) = r.attach("c").await;
        assert!(!took);
        a.state = None;
        let r2 = r.clone();
        let second = tokio::spawn(async move { r2.attach("c").await });
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
    }

    #[tokio::test]
    async fn state_is_handed_to_the_next_connection() {
        let r = Registry::default();
        let (a, _) = r.attach("c").await;
        let mut st = SessionState::default();
        st.outbound_pubrel.insert(3);
        r.detach("c", a.generation, Some(st));
        drop(a);
        assert!(r.still_detached("c", 1));
        let (b, took) = r.attach("c").await;
        assert!(!took);
        assert!(b.state.unwrap().outbound_pubrel.contains(&3));
    }
}
