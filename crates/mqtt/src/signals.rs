//! The rare events a connection waits for beside its socket and its queues (resource alarm
//! changes, a management close, a session takeover, server shutdown), as one wait that is
//! registered once and costs next to nothing on the many loop turns where none fires.
//!
//! A `tokio::select!` over `watch::Receiver::changed()` futures creates, registers and
//! unregisters every one of them on each turn of the connection loop: two locks per receiver
//! per turn, two of them on broker-wide `watch` channels that every connection shares. At a
//! 1 → 100 fan-out that was about 8 % of the broker's CPU (issue #6: latency at equal load).
//! Here one wait on all four lives in a [`FuturesUnordered`], which polls it only after its
//! own wake-up, and is re-armed after it fires.

use std::future::Future;
use std::pin::Pin;

use ferrymq_core::FlowState;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::watch;

/// What woke the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Signal {
    /// The broker's resource alarm changed: whether publishers are now blocked.
    Flow(bool),
    /// Management asked for the connection to close, for this reason.
    Close(String),
    /// Another connection took the session over.
    Kicked,
    /// The server is stopping.
    Stop,
}

/// The four receivers, and which still have a sender.
struct Receivers {
    flow: watch::Receiver<FlowState>,
    close: watch::Receiver<Option<String>>,
    kicked: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
    /// Open senders: flow, close, kicked, stop.
    open: [bool; 4],
}

/// A wait for the next change of any receiver, which hands the receivers back.
type Wait = Pin<Box<dyn Future<Output = (Option<Signal>, Receivers)> + Send>>;

/// The connection's control signals.
pub(crate) struct Signals {
    /// One wait at a time (re-armed after it fires). A `FuturesUnordered` polls it only after
    /// its own wake-up, so the connection loop's other wake-ups do not touch the receivers.
    /// One boxed wait for all four keeps an idle connection's cost to one allocation.
    wait: FuturesUnordered<Wait>,
}

impl Signals {
    /// Waits on the four receivers; each reports only changes after this call's version
    /// (what `changed()` does).
    pub(crate) fn new(
        flow: watch::Receiver<FlowState>,
        close: watch::Receiver<Option<String>>,
        kicked: watch::Receiver<bool>,
        stop: watch::Receiver<bool>,
    ) -> Signals {
        let mut s = Signals {
            wait: FuturesUnordered::new(),
        };
        s.arm(Receivers {
            flow,
            close,
            kicked,
            stop,
            open: [true; 4],
        });
        s
    }

    fn arm(&mut self, r: Receivers) {
        self.wait.push(Box::pin(changed(r)));
    }

    /// The next signal. A takeover or stop flag that changed back to false is no signal; a
    /// receiver whose sender is gone is not waited on again, and once none is left this
    /// never resolves.
    ///
    /// # Cancel safety
    /// Cancel-safe: a change not yet returned stays pending in its receiver.
    pub(crate) async fn next(&mut self) -> Signal {
        loop {
            let Some((signal, r)) = self.wait.next().await else {
                return std::future::pending().await;
            };
            if r.open.iter().any(|o| *o) {
                self.arm(r);
            }
            if let Some(s) = signal {
                return s;
            }
        }
    }
}

/// The next change of any open receiver, as a signal (`None`: a change that is no signal, or
/// a sender gone), and the receivers.
async fn changed(mut r: Receivers) -> (Option<Signal>, Receivers) {
    let [f, c, k, s] = r.open;
    let signal = tokio::select! {
        x = r.flow.changed(), if f => match x {
            Ok(()) => Some(Signal::Flow(r.flow.borrow_and_update().blocked())),
            Err(_) => { r.open[0] = false; None }
        },
        x = r.close.changed(), if c => match x {
            Ok(()) => Some(Signal::Close(r.close.borrow_and_update().clone().unwrap_or_default())),
            Err(_) => { r.open[1] = false; None }
        },
        x = r.kicked.changed(), if k => match x {
            Ok(()) => (*r.kicked.borrow_and_update()).then_some(Signal::Kicked),
            Err(_) => { r.open[2] = false; None }
        },
        x = r.stop.changed(), if s => match x {
            Ok(()) => (*r.stop.borrow_and_update()).then_some(Signal::Stop),
            Err(_) => { r.open[3] = false; None }
        },
        else => None,
    };
    (signal, r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    struct Senders {
        flow: watch::Sender<FlowState>,
        close: watch::Sender<Option<String>>,
        kicked: watch::Sender<bool>,
        stop: watch::Sender<bool>,
    }

    fn signals() -> (Signals, Senders) {
        let (flow, f) = watch::channel(FlowState::default());
        let (close, c) = watch::channel(None);
        let (kicked, k) = watch::channel(false);
        let (stop, s) = watch::channel(false);
        (
            Signals::new(f, c, k, s),
            Senders {
                flow,
                close,
                kicked,
                stop,
            },
        )
    }

    /// `next()` resolves within a short time (it should be at once) or not at all.
    async fn next_soon(s: &mut Signals) -> Option<Signal> {
        tokio::time::timeout(Duration::from_millis(50), s.next())
            .await
            .ok()
    }

    #[tokio::test]
    async fn each_change_is_reported_once_and_the_waits_rearm() {
        let (mut s, tx) = signals();
        assert_eq!(next_soon(&mut s).await, None, "nothing changed yet");
        tx.close.send_replace(Some("bye".into()));
        assert_eq!(next_soon(&mut s).await, Some(Signal::Close("bye".into())));
        assert_eq!(next_soon(&mut s).await, None, "reported once");
        tx.close.send_replace(None);
        assert_eq!(next_soon(&mut s).await, Some(Signal::Close(String::new())));
        tx.kicked.send_replace(true);
        assert_eq!(next_soon(&mut s).await, Some(Signal::Kicked));
        tx.stop.send_replace(true);
        assert_eq!(next_soon(&mut s).await, Some(Signal::Stop));
        let blocked = FlowState {
            memory_alarm: true,
            ..FlowState::default()
        };
        assert!(blocked.blocked());
        tx.flow.send_replace(blocked);
        assert_eq!(next_soon(&mut s).await, Some(Signal::Flow(true)));
        tx.flow.send_replace(FlowState::default());
        assert_eq!(next_soon(&mut s).await, Some(Signal::Flow(false)));
        assert_eq!(next_soon(&mut s).await, None);
    }

    #[tokio::test]
    async fn flags_turning_false_and_gone_senders_are_no_signal() {
        let (mut s, tx) = signals();
        tx.kicked.send_replace(false);
        tx.stop.send_replace(false);
        assert_eq!(next_soon(&mut s).await, None);
        let Senders {
            flow,
            close,
            kicked,
            stop,
        } = tx;
        drop((flow, close, kicked));
        assert_eq!(
            next_soon(&mut s).await,
            None,
            "dropped senders end their waits"
        );
        stop.send_replace(true);
        assert_eq!(next_soon(&mut s).await, Some(Signal::Stop));
        drop(stop);
        assert_eq!(
            next_soon(&mut s).await,
            None,
            "no wait left: pending forever"
        );
    }

    #[tokio::test]
    async fn a_cancelled_wait_loses_no_change() {
        let (mut s, tx) = signals();
        // Polled and dropped, as a `select!` whose other branch won does.
        assert_eq!(next_soon(&mut s).await, None);
        tx.stop.send_replace(true);
        assert_eq!(next_soon(&mut s).await, Some(Signal::Stop));
    }
}
