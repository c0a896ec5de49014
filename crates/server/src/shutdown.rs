//! Graceful shutdown plumbing for long-running tasks (after tokio's mini-redis).
//!
//! [`TaskSet`] owns a broadcast sender. Every task it spawns gets a [`Shutdown`]: it waits on
//! [`Shutdown::recv`] to learn that the server is stopping, hands [`Shutdown::child`] to the
//! connection tasks it spawns, and says "done" by dropping it. [`TaskSet::shutdown`] drops the
//! sender and waits, bounded, until every `Shutdown` (listeners and connections) is gone.
//!
//! Architecture Invariant: a task that holds no `Shutdown` is not waited for; every listener
//! and every connection task must hold one for as long as it has in-flight work.

use std::future::Future;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;

/// A task's view of the shutdown: "should I stop?" plus a done token (dropped = done).
#[derive(Debug)]
pub struct Shutdown {
    is_shutdown: bool,
    notify: broadcast::Receiver<()>,
    _done: mpsc::Sender<()>,
}

// The first users are the protocol listeners (later issues); the unit tests use it now.
#[cfg_attr(not(test), allow(dead_code))]
impl Shutdown {
    /// Whether shutdown has been observed through [`Shutdown::recv`].
    pub fn is_shutdown(&self) -> bool {
        self.is_shutdown
    }

    /// Resolves once the server is shutting down.
    ///
    /// # Cancel safety
    /// Cancel safe: use it in `tokio::select!` next to `accept()` or a read.
    pub async fn recv(&mut self) {
        if self.is_shutdown {
            return;
        }
        // Err(Closed) is the signal: the sender is dropped, never used to send.
        let _ = self.notify.recv().await;
        self.is_shutdown = true;
    }

    /// A token for a task spawned by this one (a connection spawned by a listener): shutdown
    /// waits for it too.
    pub fn child(&self) -> Shutdown {
        Shutdown {
            is_shutdown: self.is_shutdown,
            notify: self.notify.resubscribe(),
            _done: self._done.clone(),
        }
    }
}

/// The server's long-running tasks (listeners), their shutdown signal and their completion.
pub struct TaskSet {
    notify: broadcast::Sender<()>,
    done_tx: mpsc::Sender<()>,
    done_rx: mpsc::Receiver<()>,
    tasks: JoinSet<(&'static str, anyhow::Result<()>)>,
}

impl TaskSet {
    pub fn new() -> TaskSet {
        let (notify, _) = broadcast::channel(1);
        let (done_tx, done_rx) = mpsc::channel(1);
        TaskSet {
            notify,
            done_tx,
            done_rx,
            tasks: JoinSet::new(),
        }
    }

    /// Spawns a task that runs until it sees shutdown (or fails, which stops the server).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn spawn<F, Fut>(&mut self, name: &'static str, task: F)
    where
        F: FnOnce(Shutdown) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let fut = task(Shutdown {
            is_shutdown: false,
            notify: self.notify.subscribe(),
            _done: self.done_tx.clone(),
        });
        self.tasks.spawn(async move { (name, fut.await) });
    }

    /// Resolves when a task ends before shutdown was asked for: its name and result. Never
    /// resolves while no task is running.
    ///
    /// # Cancel safety
    /// Cancel safe (`JoinSet::join_next` is).
    pub async fn next_exit(&mut self) -> (&'static str, anyhow::Result<()>) {
        loop {
            match self.tasks.join_next().await {
                Some(Ok(exit)) => return exit,
                Some(Err(e)) => return ("task", Err(anyhow::anyhow!("task panicked: {e}"))),
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// Tells every task to stop and waits up to `timeout` for all of them and their children
    /// to finish. Returns false if some were still running (listener tasks are then aborted;
    /// connection tasks end with the runtime).
    pub async fn shutdown(self, timeout: Duration) -> bool {
        let TaskSet {
            notify,
            done_tx,
            mut done_rx,
            mut tasks,
        } = self;
        drop(notify);
        drop(done_tx);
        // recv() returns None once every Shutdown (every done sender) has been dropped.
        let drained = tokio::time::timeout(timeout, done_rx.recv()).await.is_ok();
        tasks.abort_all();
        while let Some(joined) = tasks.join_next().await {
            if let Ok((name, Err(e))) = joined {
                tracing::warn!(task = name, error = %format!("{e:#}"), "task ended with an error during shutdown");
            }
        }
        drained
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn shutdown_waits_for_tasks_and_their_children() {
        let finished = Arc::new(AtomicBool::new(false));
        let mut set = TaskSet::new();
        let f = finished.clone();
        set.spawn("listener", move |mut sd| async move {
            let mut child = sd.child();
            tokio::spawn(async move {
                child.recv().await;
                assert!(child.is_shutdown());
                tokio::task::yield_now().await;
                f.store(true, Ordering::SeqCst);
            });
            sd.recv().await;
            Ok(())
        });
        assert!(set.shutdown(Duration::from_secs(30)).await);
        assert!(finished.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn shutdown_is_bounded_when_a_task_ignores_it() {
        let mut set = TaskSet::new();
        set.spawn("stuck", |sd| async move {
            let _held = sd;
            std::future::pending::<()>().await;
            Ok(())
        });
        assert!(!set.shutdown(Duration::from_millis(20)).await);
    }

    #[tokio::test]
    async fn a_failing_task_is_reported() {
        let mut set = TaskSet::new();
        set.spawn("amqp", |_sd| async { anyhow::bail!("bind failed") });
        let (name, res) = set.next_exit().await;
        assert_eq!(name, "amqp");
        assert!(res.is_err());
        assert!(set.shutdown(Duration::from_secs(30)).await);
    }

    #[tokio::test]
    async fn an_empty_set_shuts_down_at_once() {
        assert!(TaskSet::new().shutdown(Duration::from_secs(30)).await);
    }
}
