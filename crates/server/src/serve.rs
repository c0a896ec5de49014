//! `ferrymq serve`: runtime, broker, listeners, signals and graceful shutdown.
//!
//! Lifecycle: install signal handlers, create the data dir, open the broker, bind and spawn the
//! listeners, log `FerryMQ ready`, wait for SIGINT/SIGTERM (or a listener failure), then stop:
//! listeners stop accepting and in-flight work finishes within `shutdown.timeout_ms`, the broker
//! flushes, fsyncs and closes (bounded by the same timeout), exit 0. A second signal at any
//! point of the shutdown exits at once with 128 + the signal number.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferrymq_core::transport::Handshake;
use ferrymq_core::Broker;
use tracing::{error, info, warn};

use crate::config::{self, Config};
use crate::shutdown::TaskSet;

/// Builds the runtime and runs the broker until it has shut down.
pub fn main(config: Config) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ferrymq")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the tokio runtime");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        match serve(config).await {
            Ok(code) => code,
            Err(e) => {
                error!(error = %format!("{e:#}"), "FerryMQ failed");
                ExitCode::FAILURE
            }
        }
    });
    // Connection tasks that outlived the shutdown timeout end here, after the broker closed.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

/// Raises the soft limit on open files to the hard one, as Kafka's and RabbitMQ's operators
/// are told to: every durable queue and stream keeps its active segment open (its data file,
/// a direct-write handle at T2, two index files), sealed segments up to the index cache's
/// size, and every connection a socket; the usual soft default (1024) runs out at a few
/// hundred queues. A failure is logged and the broker goes on with the limit it has.
fn raise_open_files_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return;
    }
    let old = r.rlim_cur;
    if old < r.rlim_max {
        r.rlim_cur = r.rlim_max;
        // SAFETY: setrlimit only reads the struct passed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } == 0 {
            info!(from = old, to = r.rlim_max, "open files limit raised");
        } else {
            warn!(limit = old, hard = r.rlim_max, error = %std::io::Error::last_os_error(),
                "cannot raise the open files limit");
        }
    }
}

async fn serve(mut config: Config) -> anyhow::Result<ExitCode> {
    // Before anything slow, so that no signal falls back to the default (kill) action.
    let mut signals = Signals::install().context("cannot install signal handlers")?;
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot install the SIGHUP handler")?;

    config.data_dir = prepare_data_dir(&config.data_dir)?;
    raise_open_files_limit();
    let data_dir = config.data_dir.display().to_string();
    info!(
        version = env!("CARGO_PKG_VERSION"),
        data_dir = %data_dir,
        durability = config.storage.durability.as_str(),
        "starting FerryMQ"
    );

    // Stored Kafka record batches decode for every reader of a stream (AMQP, HTTP, MQTT),
    // whether the Kafka listener runs or not.
    ferrymq_kafka::register_record_format(
        ferrymq_kafka::KafkaConfig::default().max_decompressed_bytes,
    );

    // A signal while the broker opens (recovery can take a while) is kept and acted on once
    // it is open; a second one exits at once.
    // Spawned: opening does blocking recovery I/O, and this task must stay free to see signals.
    let mut open = tokio::spawn(Broker::open(config::broker_config(&config)));
    let mut early = None;
    let broker = loop {
        tokio::select! {
            opened = &mut open => {
                break opened
                    .context("opening the broker panicked")?
                    .context("cannot open the broker")?;
            }
            sig = signals.recv() => {
                if early.is_some() {
                    forced_exit(sig);
                }
                info!(signal = sig.name(), "signal received while starting; will stop once open");
                early = Some(sig);
            }
        }
    };

    refuse_public_guest(&config, &broker)?;
    let mut tasks = TaskSet::new();
    // TLS is loaded once for every TLS listener; SIGHUP reloads it.
    let tls = if config.tls_listeners().is_empty() {
        None
    } else {
        Some(crate::tls::Tls::load(&config.tls).context("cannot load the TLS certificate")?)
    };
    spawn_reloader(hup, tls.clone());
    let tls_for = |enabled: bool, timeout_ms: u64| -> Option<Arc<dyn Handshake>> {
        tls.as_ref()
            .filter(|_| enabled)
            .map(|t| t.handshake(Duration::from_millis(timeout_ms.max(1))))
    };
    // Listeners: a plain and a TLS one per protocol section, each switched on by its own key.
    // Each binds before `FerryMQ ready` (a port in use fails startup) and logs
    // "<PROTOCOL> listening on <address>" (tests read it).
    let a = &config.amqp;
    // One adapter behind both listeners (direct reply-to and amqp.connections_max span them).
    let amqp_adapter = ferrymq_amqp::Amqp::new(broker.clone(), config.amqp_config());
    for (on, port, name, label) in [
        (a.enabled, a.port, "amqp", "AMQP"),
        (a.tls_enabled, a.tls_port, "amqps", "AMQPS"),
    ] {
        if !on {
            continue;
        }
        let addr = SocketAddr::new(a.bind.parse().context("amqp.bind")?, port);
        let listener = ferrymq_amqp::bind(addr)
            .await
            .with_context(|| format!("cannot listen for {label} on {addr}"))?;
        let local = listener.local_addr().context("AMQP listener address")?;
        info!("{label} listening on {local}");
        let amqp = amqp_adapter.clone();
        let handshake = tls_for(name == "amqps", a.handshake_timeout_ms);
        spawn_listener(&mut tasks, name, move |stop| {
            ferrymq_amqp::run(listener, amqp, handshake, stop)
        });
    }
    let m = &config.mqtt;
    let mut mqtt = None;
    if m.enabled || m.tls_enabled {
        let adapter = ferrymq_mqtt::Mqtt::open(broker.clone(), config.mqtt_config())
            .context("cannot open the MQTT adapter")?;
        for (on, port, name, label) in [
            (m.enabled, m.port, "mqtt", "MQTT"),
            (m.tls_enabled, m.tls_port, "mqtts", "MQTTS"),
        ] {
            if !on {
                continue;
            }
            let addr = SocketAddr::new(m.bind.parse().context("mqtt.bind")?, port);
            let listener = ferrymq_mqtt::bind(addr)
                .await
                .with_context(|| format!("cannot listen for {label} on {addr}"))?;
            let local = listener.local_addr().context("MQTT listener address")?;
            info!("{label} listening on {local}");
            let (adapter, handshake) = (
                adapter.clone(),
                tls_for(name == "mqtts", m.connect_timeout_ms),
            );
            spawn_listener(&mut tasks, name, move |stop| {
                ferrymq_mqtt::run(listener, adapter, handshake, stop)
            });
        }
        mqtt = Some(adapter);
    }
    let k = &config.kafka;
    if k.enabled || k.tls_enabled {
        let ip = k.bind.parse().context("kafka.bind")?;
        let mut bound = Vec::new();
        for (on, port, label) in [
            (k.enabled, k.port, "Kafka"),
            (k.tls_enabled, k.tls_port, "Kafka SSL"),
        ] {
            if !on {
                continue;
            }
            let addr = SocketAddr::new(ip, port);
            let listener = ferrymq_kafka::bind(addr)
                .await
                .with_context(|| format!("cannot listen for {label} on {addr}"))?;
            let local = listener.local_addr().context("Kafka listener address")?;
            info!("{label} listening on {local}");
            bound.push((label == "Kafka SSL", listener, local));
        }
        // One adapter (one group coordinator) behind both listeners; each advertises its own.
        let plain = bound.iter().find(|b| !b.0).map(|b| b.2);
        let secure = bound.iter().find(|b| b.0).map(|b| b.2);
        let Some(first) = plain.or(secure) else {
            anyhow::bail!("no Kafka listener bound");
        };
        let adapter = ferrymq_kafka::Kafka::new(
            broker.clone(),
            config.kafka_config(first, secure.map(|a| a.port())),
        );
        for (is_tls, listener, _) in bound {
            let adapter = adapter.clone();
            let handshake = tls_for(is_tls, crate::tls::HANDSHAKE_TIMEOUT.as_millis() as u64);
            let name = if is_tls { "kafka-ssl" } else { "kafka" };
            spawn_listener(&mut tasks, name, move |stop| {
                ferrymq_kafka::run(listener, adapter, handshake, stop)
            });
        }
    }
    let h = &config.http;
    for (on, port, secure) in [
        (h.enabled, h.port, false),
        (h.tls_enabled, h.tls_port, true),
    ] {
        if !on {
            continue;
        }
        let listener = ferrymq_http::bind(&h.bind, port).await?;
        let addr = listener.local_addr().context("http listener address")?;
        let scheme = if secure { "https" } else { "http" };
        info!("{scheme} listening on {addr}");
        let mut extra = axum::Router::new();
        if let (Some(m), true) = (&mqtt, config.mqtt.websocket) {
            let max = usize::try_from(config.mqtt.max_packet_size).unwrap_or(usize::MAX);
            extra = crate::mqtt_ws::routes(m.clone(), max);
            let ws = if secure { "wss" } else { "ws" };
            info!("MQTT over WebSocket on {ws}://{addr}/mqtt");
        }
        let broker = broker.clone();
        let ws_mqtt = mqtt.clone();
        let tls = tls.clone().filter(|_| secure);
        let limits = config.http_limits();
        tasks.spawn(scheme, move |mut shutdown| async move {
            // Held until the server has drained, so shutdown waits for in-flight requests.
            let draining = shutdown.child();
            let signal = async move {
                shutdown.recv().await;
                // WebSocket MQTT connections are not drained by the HTTP server: end them.
                if let Some(m) = ws_mqtt {
                    m.stop();
                }
            };
            match tls {
                Some(tls) => {
                    let listener =
                        crate::tls::https_listener(listener, tls, broker.clone(), limits)
                            .context("https listener address")?;
                    ferrymq_http::serve_secured(listener, broker, extra, limits, signal).await?;
                }
                None => {
                    ferrymq_http::serve_with_routes(listener, broker, extra, limits, signal).await?
                }
            }
            drop(draining);
            Ok(())
        });
    }

    let reason = match early {
        Some(sig) => Stop::Signal(sig),
        None => {
            info!(data_dir = %data_dir, "FerryMQ ready");
            tokio::select! {
                sig = signals.recv() => Stop::Signal(sig),
                (task, result) = tasks.next_exit() => Stop::Task(task, result),
            }
        }
    };
    let timeout = Duration::from_millis(config.shutdown.timeout_ms);
    let mut code = ExitCode::SUCCESS;
    match &reason {
        Stop::Signal(sig) => info!(
            signal = sig.name(),
            timeout_ms = config.shutdown.timeout_ms,
            "shutting down: no longer accepting, finishing in-flight work"
        ),
        Stop::Task(task, result) => {
            let error = match result {
                Ok(()) => "ended unexpectedly".to_string(),
                Err(e) => format!("{e:#}"),
            };
            error!(task, error = %error, "a listener stopped; shutting down");
            code = ExitCode::FAILURE;
        }
    }

    match race_second_signal(graceful_shutdown(tasks, &broker, timeout), signals.recv()).await {
        Raced::Done(result) => result?,
        Raced::Signal(sig) => forced_exit(sig),
    }
    info!(data_dir = %data_dir, "FerryMQ stopped");
    Ok(code)
}

/// Runs an adapter's accept loop until shutdown, then tells it to stop and waits for it.
fn spawn_listener<F, Fut>(tasks: &mut TaskSet, name: &'static str, run: F)
where
    F: FnOnce(tokio::sync::watch::Receiver<bool>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tasks.spawn(name, move |mut shutdown| async move {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let run = run(stop_rx);
        tokio::pin!(run);
        tokio::select! {
            _ = &mut run => {}
            _ = shutdown.recv() => {
                let _ = stop_tx.send(true);
                run.await;
            }
        }
        Ok(())
    });
}

/// SIGHUP reloads the TLS certificate, key and CA for new handshakes; open connections keep
/// theirs. A failed reload keeps the previous certificate.
fn spawn_reloader(mut hup: tokio::signal::unix::Signal, tls: Option<Arc<crate::tls::Tls>>) {
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let Some(tls) = &tls else {
                info!("SIGHUP received; no TLS listener, nothing to reload");
                continue;
            };
            let tls = tls.clone();
            // Blocking file reads: off the runtime's workers.
            match tokio::task::spawn_blocking(move || tls.reload()).await {
                Ok(Ok(())) => info!("TLS certificates reloaded"),
                Ok(Err(e)) => error!(
                    error = %format!("{e:#}"),
                    "TLS reload failed; keeping the previous certificate"
                ),
                Err(e) => {
                    error!(error = %e, "TLS reload panicked; keeping the previous certificate")
                }
            }
        }
    });
}

/// Why the server stops.
enum Stop {
    Signal(Sig),
    Task(&'static str, anyhow::Result<()>),
}

/// Stop accepting, drain in-flight work (bounded), then flush, fsync and close the broker
/// (bounded by the same timeout).
async fn graceful_shutdown(
    tasks: TaskSet,
    broker: &Arc<Broker>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let timeout_ms = timeout.as_millis();
    if !tasks.shutdown(timeout).await {
        warn!(timeout_ms, "in-flight work did not finish within shutdown.timeout_ms; closing the remaining connections");
    }
    // Spawned: the flush blocks on fsync, and the timeout and a second signal must still fire.
    let broker = Arc::clone(broker);
    let close = tokio::spawn(async move { broker.shutdown().await });
    tokio::time::timeout(timeout, close)
        .await
        .map_err(|_| anyhow::anyhow!("the broker did not flush and close within {timeout_ms} ms"))?
        .context("broker shutdown panicked")?
        .context("broker shutdown failed")
}

enum Raced<T> {
    Done(T),
    Signal(Sig),
}

/// Runs `work` unless a signal arrives first.
async fn race_second_signal<T>(
    work: impl Future<Output = T>,
    signal: impl Future<Output = Sig>,
) -> Raced<T> {
    tokio::select! {
        biased;
        sig = signal => Raced::Signal(sig),
        done = work => Raced::Done(done),
    }
}

/// A second signal: the operator wants out now. Nothing more is flushed.
fn forced_exit(sig: Sig) -> ! {
    error!(
        signal = sig.name(),
        "second signal received during shutdown; exiting immediately"
    );
    std::process::exit(128 + sig.number())
}

/// Creates the data directory and returns it as an absolute path (for logs and the core).
fn prepare_data_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    std::path::absolute(dir)
        .with_context(|| format!("cannot resolve data directory {}", dir.display()))
}

/// A shutdown signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sig {
    Int,
    Term,
}

impl Sig {
    fn name(self) -> &'static str {
        match self {
            Sig::Int => "SIGINT",
            Sig::Term => "SIGTERM",
        }
    }

    fn number(self) -> i32 {
        match self {
            Sig::Int => 2,
            Sig::Term => 15,
        }
    }
}

/// SIGINT and SIGTERM as a stream. Once installed, they no longer kill the process.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// The next signal.
    ///
    /// # Cancel safety
    /// Cancel safe: a signal is not lost if this future is dropped.
    async fn recv(&mut self) -> Sig {
        tokio::select! {
            Some(()) = self.int.recv() => Sig::Int,
            Some(()) = self.term.recv() => Sig::Term,
            else => std::future::pending().await,
        }
    }
}

/// Refuses to listen beyond loopback while the `guest` user still has the password
/// `guest`: anyone could log in as an administrator. Says how to fix it.
fn refuse_public_guest(config: &Config, broker: &Broker) -> anyhow::Result<()> {
    let listeners = [
        (
            "amqp.bind",
            config.amqp.enabled || config.amqp.tls_enabled,
            config.amqp.bind.as_str(),
        ),
        (
            "mqtt.bind",
            config.mqtt.enabled || config.mqtt.tls_enabled,
            config.mqtt.bind.as_str(),
        ),
        (
            "kafka.bind",
            config.kafka.enabled || config.kafka.tls_enabled,
            config.kafka.bind.as_str(),
        ),
        (
            "http.bind",
            config.http.enabled || config.http.tls_enabled,
            config.http.bind.as_str(),
        ),
    ];
    let public: Vec<String> = listeners
        .iter()
        .filter(|(_, enabled, bind)| {
            *enabled
                && !(*bind == "localhost"
                    || bind
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback()))
        })
        .map(|(key, _, bind)| format!("{key} = {bind}"))
        .collect();
    if public.is_empty() || broker.authenticate("guest", "guest", None).is_err() {
        return Ok(());
    }
    anyhow::bail!(
        "refusing to listen on a non-loopback address ({}) while user 'guest' has the default password 'guest'. \
         Change it first with the listeners on 127.0.0.1 \
         (`ferrymq users declare guest --new-password NEW --tags administrator`, or PUT /api/users/guest), \
         or delete the user, or set users.default_password before the data directory's first start",
        public.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn second_signal_wins_over_a_stuck_shutdown() {
        let stuck = std::future::pending::<()>();
        let r = race_second_signal(stuck, async { Sig::Term }).await;
        assert!(matches!(r, Raced::Signal(Sig::Term)));
    }

    #[tokio::test]
    async fn finished_shutdown_is_returned() {
        let r = race_second_signal(async { 7 }, std::future::pending()).await;
        assert!(matches!(r, Raced::Done(7)));
    }

    #[test]
    fn data_dir_is_created_and_absolute() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        let abs = prepare_data_dir(&dir).unwrap();
        assert!(abs.is_absolute() && abs.is_dir());
    }
}
