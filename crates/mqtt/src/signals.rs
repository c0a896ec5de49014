//! The rare events a connection waits for beside its socket and its queues (resource alarm
//! changes, a management close, a session takeover, server shutdown), as one wait that is
//! registered once and costs next to nothing on the many loop turns where none fires.
//!
//! A `tokio::select!` over `watch::Receiver::changed()` futures creates, registers and
//! unregisters every one of them on each turn of the connection loop: two locks per receiver
//! per turn, two of them on broker-wide `watch` channels that every connection shares. At a
//! 1 → 100 fan-out that was about 8 % of the broker's CPU (issue #6: latency at equal load).
//! Here each wait lives in a [`FuturesUnordered`], which polls a wait only after its own
//! wake-up, and is re-armed after it fires.

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

/// One receiver, waiting or just fired.
enum Watch {
    Flow(watch::Receiver<FlowState>),
    Close(watch::Receiver<Option<String>>),
    Kicked(watch::Receiver<bool>),
    Stop(watch::Receiver<bool>),
}

/// A wait for one receiver's next change: `None` once its sender is gone.
type Wait = Pin<Box<dyn Future<Output = Option<Watch>> + Send>>;

/// The connection's control signals.
pub(crate) struct Signals {
    waits: FuturesUnordered<Wait>,
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
            waits: FuturesUnordered::new(),
        };
        for w in [
            Watch::Flow(flow),
            Watch::Close(close),
            Watch::Kicked(kicked),
            Watch::Stop(stop),
        ] {
            s.arm(w);
        }
        s
    }

    fn arm(&mut self, w: Watch) {
        self.waits.push(Box::pin(async move {
            match w {
                Watch::Flow(mut r) => r.changed().await.ok().map(|()| Watch::Flow(r)),
                Watch::Close(mut r) => r.changed().await.ok().map(|()| Watch::Close(r)),
                Watch::Kicked(mut r) => r.changed().await.ok().map(|()| Watch::Kicked(r)),
                Watch::Stop(mut r) => r.changed().await.ok().map(|()| Watch::Stop(r)),
            }
        }));
    }

    /// The next signal. A takeover or stop flag that changed back to false is no signal; a
    /// receiver whose sender is gone is not waited on again, and once none is left this
    /// never resolves.
    ///
    /// # Cancel safety
    /// Cancel-safe: a change not yet returned stays pending in its receiver.
    pub(crate) async fn next(&mut self) -> Signal {
        loop {
            let Some(fired) = self.waits.next().await else {
                return std::future::pending().await;
            };
            let Some(w) = fired else {
                continue; // that sender is gone
            };
            let signal = match &w {
                Watch::Flow(r) => Some(Signal::Flow(r.borrow().blocked())),
                Watch::Close(r) => Some(Signal::Close(r.borrow().clone().unwrap_or_default())),
                Watch::Kicked(r) => (*r.borrow()).then_some(Signal::Kicked),
                Watch::Stop(r) => (*r.borrow()).then_some(Signal::Stop),
            };
            self.arm(w);
            if let Some(s) = signal {
                return s;
            }
        }
    }
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
