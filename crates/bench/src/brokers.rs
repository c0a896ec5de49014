//! Starting and stopping the brokers that `compare` measures: FerryMQ (its release binary),
//! RabbitMQ and Mosquitto (Debian's packages), each on free loopback ports with a temporary
//! data directory. A [`Broker`] stops its processes when dropped, so they go on success, error,
//! panic and Ctrl-C alike.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Time a broker gets to start.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// Time a broker gets to stop before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Which broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    FerryMq,
    RabbitMq,
    Mosquitto,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::FerryMq => "FerryMQ",
            Kind::RabbitMq => "RabbitMQ",
            Kind::Mosquitto => "Mosquitto",
        }
    }
}

/// A running broker that this process started.
#[derive(Debug)]
pub struct Broker {
    pub kind: Kind,
    /// AMQP URL with the default user and vhost (Mosquitto: its MQTT URL).
    pub url: String,
    /// FerryMQ: `mqtt://` URL when it logged `MQTT listening on <addr>`; Mosquitto: its URL.
    pub mqtt_url: Option<String>,
    /// FerryMQ: `http://guest:guest@<addr>` when its HTTP listener is on.
    pub http_url: Option<String>,
    /// FerryMQ: `kafka://<addr>` when it logged `Kafka listening on <addr>`.
    pub kafka_url: Option<String>,
    /// Root of the process tree to measure.
    pub pid: u32,
    pub version: String,
    child: Option<Child>,
    /// For RabbitMQ: environment shared by the server and `rabbitmqctl`.
    rabbit_env: Vec<(String, String)>,
    log: Arc<Mutex<Vec<String>>>,
    dir: Option<tempfile::TempDir>,
}

/// A free TCP port on loopback (closed again at once; a small race that tests accept too).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A scratch directory on the same disk as `near` (not a tmpfs, so fsync means something).
pub fn scratch_dir(near: &Path, prefix: &str) -> Result<tempfile::TempDir> {
    std::fs::create_dir_all(near).with_context(|| format!("creating {}", near.display()))?;
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(near)
        .with_context(|| format!("temporary directory in {}", near.display()))
}

fn pipe_lines(
    r: impl std::io::Read + Send + 'static,
    log: Arc<Mutex<Vec<String>>>,
    tx: Option<mpsc::Sender<String>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if let Some(tx) = &tx {
                let _ = tx.send(line.clone());
            }
            let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
            l.push(line);
            if l.len() > 200 {
                l.remove(0);
            }
        }
    });
}

impl Broker {
    /// Starts `ferrymq serve` with a fresh data directory under `data_root`, AMQP on a free
    /// port, HTTP and MQTT off, defaults otherwise (durability T2), plus `extra` `--set` pairs.
    ///
    /// # Errors
    /// The binary fails to start or never says it is ready.
    pub fn ferrymq(bin: &Path, data_root: &Path, extra: &[&str]) -> Result<Broker> {
        let dir = scratch_dir(data_root, "ferrymq-bench-")?;
        let version = Command::new(bin)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--set", "amqp.port=0", "--set", "http.enabled=false"])
            .args([
                "--set",
                "mqtt.enabled=false",
                "--set",
                "kafka.enabled=false",
            ]);
        for kv in extra {
            cmd.args(["--set", kv]);
        }
        // The server rejects unknown FERRYMQ_* variables, and known ones would change what is
        // measured: it gets none of the caller's.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("FERRYMQ_") {
                cmd.env_remove(&k);
            }
        }
        cmd.env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        pipe_lines(child.stderr.take().expect("piped"), log.clone(), Some(tx));
        let pid = child.id();
        let mut b = Broker {
            kind: Kind::FerryMq,
            url: String::new(),
            pid,
            version,
            child: Some(child),
            rabbit_env: Vec::new(),
            log,
            dir: Some(dir),
            mqtt_url: None,
            http_url: None,
            kafka_url: None,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let mut addr = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => bail!("FerryMQ did not become ready:\n{}", b.log_tail()),
            };
            if let Some(a) = listening_on(&line, "AMQP listening on ") {
                addr = Some(a);
            }
            if let Some(a) = listening_on(&line, "MQTT listening on ") {
                b.mqtt_url = Some(format!("mqtt://guest:guest@{a}"));
            }
            if let Some(a) = listening_on(&line, "http listening on ") {
                b.http_url = Some(format!("http://guest:guest@{a}"));
            }
            if let Some(a) = listening_on(&line, "Kafka listening on ") {
                b.kafka_url = Some(format!("kafka://{a}"));
            }
            if line.contains("FerryMQ ready") {
                break;
            }
        }
        let addr =
            addr.with_context(|| format!("FerryMQ logged no AMQP address:\n{}", b.log_tail()))?;
        b.url = format!("amqp://guest:guest@{addr}/%2f");
        Ok(b)
    }

    /// Starts RabbitMQ from Debian's package (installing it with apt-get when `install` and it
    /// is missing) as its own node on free ports, with its own epmd, data and log directories.
    ///
    /// # Errors
    /// Not installed (and not installable), or it never accepts an AMQP connection.
    pub async fn rabbitmq(data_root: &Path, install: bool) -> Result<Broker> {
        let server = PathBuf::from("/usr/lib/rabbitmq/bin/rabbitmq-server");
        if !server.exists() {
            if !install {
                bail!("RabbitMQ is not installed (apt-get install rabbitmq-server), and --install false");
            }
            install_rabbitmq()?;
        }
        let dir = scratch_dir(data_root, "rabbitmq-bench-")?;
        let d = dir.path();
        std::fs::write(d.join("enabled_plugins"), "[].\n")?;
        std::fs::write(d.join("rabbitmq.conf"), "loopback_users.guest = true\n")?;
        let port = free_port()?;
        let env: Vec<(String, String)> = vec![
            ("HOME".into(), d.display().to_string()),
            (
                "RABBITMQ_NODENAME".into(),
                format!("ferrymq-bench-{}@localhost", std::process::id()),
            ),
            ("RABBITMQ_NODE_IP_ADDRESS".into(), "127.0.0.1".into()),
            ("RABBITMQ_NODE_PORT".into(), port.to_string()),
            ("RABBITMQ_DIST_PORT".into(), free_port()?.to_string()),
            ("ERL_EPMD_PORT".into(), free_port()?.to_string()),
            ("ERL_EPMD_ADDRESS".into(), "127.0.0.1".into()),
            (
                "RABBITMQ_MNESIA_BASE".into(),
                d.join("mnesia").display().to_string(),
            ),
            (
                "RABBITMQ_LOG_BASE".into(),
                d.join("log").display().to_string(),
            ),
            (
                "RABBITMQ_CONFIG_FILE".into(),
                d.join("rabbitmq").display().to_string(),
            ),
            (
                "RABBITMQ_ENABLED_PLUGINS_FILE".into(),
                d.join("enabled_plugins").display().to_string(),
            ),
            (
                "RABBITMQ_PID_FILE".into(),
                d.join("rabbitmq.pid").display().to_string(),
            ),
            // Schedulers that sleep instead of spinning: the load generator shares the cores.
            (
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS".into(),
                "+sbwt none +sbwtdcpu none +sbwtdio none".into(),
            ),
        ];
        let mut cmd = Command::new(&server);
        cmd.current_dir(d)
            .envs(env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().context("starting rabbitmq-server")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        pipe_lines(child.stdout.take().expect("piped"), log.clone(), None);
        pipe_lines(child.stderr.take().expect("piped"), log.clone(), None);
        let pid = child.id();
        let version = Command::new("dpkg-query")
            .args(["-W", "-f", "${Version}", "rabbitmq-server"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let mut b = Broker {
            kind: Kind::RabbitMq,
            url: format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            pid,
            version: format!("RabbitMQ {version} (Debian package)"),
            child: Some(child),
            rabbit_env: env,
            log,
            dir: Some(dir),
            mqtt_url: None,
            http_url: None,
            kafka_url: None,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(st) = b.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("rabbitmq-server exited with {st}:\n{}", b.log_tail());
            }
            let conn = tokio::time::timeout(
                Duration::from_secs(2),
                lapin::Connection::connect(&b.url, lapin::ConnectionProperties::default()),
            )
            .await;
            if let Ok(Ok(c)) = conn {
                let _ = c.close(200, "ready".into()).await;
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "RabbitMQ did not accept AMQP connections in {START_TIMEOUT:?}:\n{}",
                    b.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(b)
    }

    /// Starts Mosquitto from Debian's package (installing it with apt-get when `install` and it
    /// is missing) on a free loopback port with a temporary configuration: one listener,
    /// anonymous clients allowed, persistence off (Mosquitto's default: QoS 1 messages and
    /// sessions live in memory, tier T0).
    ///
    /// # Errors
    /// Not installed (and not installable), or it never accepts an MQTT connection.
    pub async fn mosquitto(data_root: &Path, install: bool) -> Result<Broker> {
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file());
        let bin = match bin {
            Some(b) => b,
            None if install => {
                apt_install("mosquitto", Some("mosquitto"))?;
                PathBuf::from("/usr/sbin/mosquitto")
            }
            None => {
                bail!("Mosquitto is not installed (apt-get install mosquitto), and --install false")
            }
        };
        let dir = scratch_dir(data_root, "mosquitto-bench-")?;
        let port = free_port()?;
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_connections -1\nlog_dest stderr\n"),
        )?;
        let mut cmd = Command::new(&bin);
        cmd.arg("-c")
            .arg(&conf)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().context("starting mosquitto")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        pipe_lines(child.stdout.take().expect("piped"), log.clone(), None);
        pipe_lines(child.stderr.take().expect("piped"), log.clone(), None);
        let pid = child.id();
        let version = Command::new("dpkg-query")
            .args(["-W", "-f", "${Version}", "mosquitto"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let url = format!("mqtt://127.0.0.1:{port}");
        let mut b = Broker {
            kind: Kind::Mosquitto,
            url: url.clone(),
            pid,
            version: format!("Mosquitto {version} (Debian package)"),
            child: Some(child),
            rabbit_env: Vec::new(),
            log,
            dir: Some(dir),
            mqtt_url: Some(url),
            http_url: None,
            kafka_url: None,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(st) = b.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("mosquitto exited with {st}:\n{}", b.log_tail());
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "Mosquitto did not listen in {START_TIMEOUT:?}:\n{}",
                    b.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(b)
    }

    /// The last lines the broker printed.
    pub fn log_tail(&self) -> String {
        let l = self.log.lock().unwrap_or_else(|e| e.into_inner());
        l[l.len().saturating_sub(30)..].join("\n")
    }

    /// Stops the broker: SIGTERM (FerryMQ) or `rabbitmqctl stop` (RabbitMQ), then SIGKILL to
    /// its process group after [`STOP_TIMEOUT`]; RabbitMQ's epmd is stopped too.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pgid = child.id() as i32;
        match self.kind {
            Kind::FerryMq | Kind::Mosquitto => {
                // SAFETY: plain kill(2) on our own child's process group.
                unsafe { libc::kill(-pgid, libc::SIGTERM) };
            }
            Kind::RabbitMq => {
                let node = self.env("RABBITMQ_NODENAME");
                let _ = Command::new("/usr/lib/rabbitmq/bin/rabbitmqctl")
                    .args(["-n", &node, "stop"])
                    .envs(self.rabbit_env.iter().cloned())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .and_then(|mut c| wait_timeout(&mut c, STOP_TIMEOUT));
                unsafe { libc::kill(-pgid, libc::SIGTERM) };
            }
        }
        if wait_timeout(&mut child, STOP_TIMEOUT).is_err() {
            // SAFETY: as above.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.wait();
        }
        if self.kind == Kind::RabbitMq {
            // The node's epmd (on its own port) daemonized out of the process group.
            let _ = Command::new("epmd")
                .arg("-kill")
                .envs(self.rabbit_env.iter().cloned())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        drop(self.dir.take());
    }

    fn env(&self, k: &str) -> String {
        self.rabbit_env
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_timeout(c: &mut Child, t: Duration) -> std::io::Result<()> {
    let deadline = Instant::now() + t;
    loop {
        if c.try_wait()?.is_some() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "still running",
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The address after `marker` in a log line (`… MQTT listening on 127.0.0.1:1883`).
pub fn listening_on(line: &str, marker: &str) -> Option<String> {
    let i = line.find(marker)?;
    let a = line[i + marker.len()..].split_whitespace().next()?;
    let a = a.trim_end_matches(|c: char| !c.is_ascii_digit());
    (!a.is_empty()).then(|| a.to_string())
}

fn install_rabbitmq() -> Result<()> {
    apt_install("rabbitmq-server", Some("rabbitmq-server"))
}

/// `apt-get install <package>` (after `apt-get update`), as root; the package's own service
/// is stopped again if its install script started one.
fn apt_install(package: &str, service: Option<&str>) -> Result<()> {
    eprintln!("installing {package} from Debian's packages (apt-get)…");
    let ok = |c: &mut Command| c.status().map(|s| s.success()).unwrap_or(false);
    let env = [("DEBIAN_FRONTEND", "noninteractive")];
    if !ok(Command::new("apt-get").arg("update").envs(env)) {
        bail!("apt-get update failed (root and network to Debian's mirror needed)");
    }
    if !ok(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", package])
        .envs(env))
    {
        bail!("apt-get install {package} failed");
    }
    // Without systemd the package's script may have started the system service: stop it.
    if let Some(service) = service {
        let _ = Command::new("invoke-rc.d")
            .args([service, "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_addresses_from_log_lines() {
        let l = "2026-12-06T20:23:42Z  INFO ferrymq::serve: MQTT listening on 127.0.0.1:41883";
        assert_eq!(
            listening_on(l, "MQTT listening on ").as_deref(),
            Some("127.0.0.1:41883")
        );
        let json = r#"{"fields":{"message":"http listening on 127.0.0.1:9000"}}"#;
        assert_eq!(
            listening_on(json, "http listening on ").as_deref(),
            Some("127.0.0.1:9000")
        );
        assert_eq!(listening_on(l, "AMQP listening on "), None);
    }
}
