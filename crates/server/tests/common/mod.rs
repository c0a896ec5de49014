//! Helpers for tests that run the real `ferrymq` binary in a temporary directory.
#![allow(dead_code)] // each test file uses a different subset

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Generous: debug builds on a loaded two-core machine.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The binary, run in `dir`, with an empty environment (no stray FERRYMQ_*, RUST_LOG, NO_COLOR)
/// but for ephemeral listener ports, so that tests run in parallel (the chosen addresses are
/// logged as "<PROTOCOL> listening on <address>").
pub fn ferrymq(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrymq"));
    cmd.current_dir(dir)
        .env_clear()
        .env("FERRYMQ_AMQP_PORT", "0")
        .env("FERRYMQ_HTTP_PORT", "0")
        .env("FERRYMQ_MQTT_PORT", "0")
        .env("FERRYMQ_KAFKA_PORT", "0");
    cmd
}

/// Starts `ferrymq serve --data-dir <data>` in `dir` and waits until it is ready.
pub fn serve(dir: &Path, data: &Path, args: &[&str]) -> Server {
    let mut cmd = ferrymq(dir);
    cmd.arg("serve").arg("--data-dir").arg(data).args(args);
    let mut s = Server::start(cmd);
    s.wait_for("FerryMQ ready");
    s
}

/// The address a listener logged ("AMQP listening on 127.0.0.1:PORT").
pub fn listening(server: &Server, protocol: &str) -> std::net::SocketAddr {
    let marker = format!("{protocol} listening on ");
    let line = server
        .seen
        .iter()
        .find(|l| l.contains(&marker))
        .unwrap_or_else(|| panic!("no {marker:?} line:\n{}", server.log()));
    let rest = &line[line.find(&marker).map_or(0, |i| i + marker.len())..];
    let addr = rest.split_whitespace().next().unwrap_or_default();
    let addr = addr.trim_end_matches(|c: char| !c.is_ascii_digit());
    addr.parse()
        .unwrap_or_else(|e| panic!("bad address {addr:?} in {line:?}: {e}"))
}

/// Output of a short-lived command.
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(cmd: &mut Command) -> Ran {
    let out = cmd.stdin(Stdio::null()).output().expect("run ferrymq");
    Ran {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A running `ferrymq serve`, its stderr read line by line on a thread. Killed on drop.
pub struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every stderr line seen so far.
    pub seen: Vec<String>,
}

impl Server {
    pub fn start(mut cmd: Command) -> Server {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ferrymq");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Server {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads stderr until a line contains `marker`; panics with everything seen on timeout or EOF.
    pub fn wait_for(&mut self, marker: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(marker) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no {marker:?} on stderr ({e}); saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits");
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig})");
    }

    /// Reads stderr to EOF (the process closed it by exiting), then reaps the process.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("ferrymq did not exit; saw:\n{}", self.seen.join("\n"))
                }
            }
        }
        self.child.wait().expect("wait for ferrymq")
    }

    pub fn count(&self, needle: &str) -> usize {
        self.seen.iter().filter(|l| l.contains(needle)).count()
    }

    pub fn log(&self) -> String {
        self.seen.join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
