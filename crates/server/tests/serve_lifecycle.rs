//! Issue #3: `ferrymq serve` starts with no configuration, reports readiness once, and shuts
//! down cleanly on SIGTERM and SIGINT.

mod common;

use common::{ferrymq, Server};

fn serve_in(dir: &std::path::Path, args: &[&str]) -> Server {
    let mut cmd = ferrymq(dir);
    cmd.arg("serve").args(args);
    Server::start(cmd)
}

#[test]
fn starts_with_no_configuration_in_an_empty_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = serve_in(tmp.path(), &[]);
    let ready = server.wait_for("FerryMQ ready");
    assert!(
        ready.contains("ferrymq-data"),
        "ready line names the data dir: {ready}"
    );
    assert!(tmp.path().join("ferrymq-data").is_dir());
    server.signal(libc::SIGTERM);
    let status = server.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", server.log());
    assert_eq!(server.count("FerryMQ ready"), 1, "{}", server.log());
}

/// The soft limit on open files a server starts with is raised to the hard one.
#[test]
fn the_open_files_limit_is_raised_to_the_hard_limit() {
    use std::os::unix::process::CommandExt;
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = ferrymq(tmp.path());
    cmd.arg("serve");
    // SAFETY: between fork and exec, only setrlimit (async-signal-safe) runs.
    unsafe {
        cmd.pre_exec(|| {
            let mut r = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            r.rlim_cur = r.rlim_max.min(256);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut server = Server::start(cmd);
    server.wait_for("FerryMQ ready");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let f: Vec<&str> = line.split_whitespace().collect();
    // "Max open files <soft> <hard> files"
    let (soft, hard) = (f[3], f[4]);
    assert_eq!(soft, hard, "{line}");
    if hard != "256" {
        assert!(
            server.log().contains("open files limit raised"),
            "{}",
            server.log()
        );
    }
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0), "{}", server.log());
}

fn clean_exit_on(sig: libc::c_int, name: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = serve_in(tmp.path(), &[]);
    server.wait_for("FerryMQ ready");
    server.signal(sig);
    let status = server.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", server.log());
    let log = server.log();
    assert!(
        server
            .seen
            .iter()
            .any(|l| l.contains("shutting down") && l.contains(name)),
        "no shutdown line naming {name}:\n{log}"
    );
    assert_eq!(server.count("FerryMQ stopped"), 1, "{log}");
    assert!(!log.contains("ERROR"), "{log}");
}

#[test]
fn sigterm_shuts_down_cleanly() {
    clean_exit_on(libc::SIGTERM, "SIGTERM");
}

#[test]
fn sigint_shuts_down_cleanly() {
    clean_exit_on(libc::SIGINT, "SIGINT");
}

#[test]
fn json_logs_and_data_dir_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = serve_in(
        tmp.path(),
        &["--log-format", "json", "--data-dir", "custom/data"],
    );
    let ready = server.wait_for("FerryMQ ready");
    let v: serde_json::Value = serde_json::from_str(&ready).expect("ready line is JSON");
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["fields"]["message"], "FerryMQ ready");
    let dir = v["fields"]["data_dir"].as_str().expect("data_dir field");
    assert!(dir.ends_with("custom/data"), "{dir}");
    assert!(tmp.path().join("custom/data").is_dir());
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0), "{}", server.log());
    for line in &server.seen {
        serde_json::from_str::<serde_json::Value>(line).expect("every line is JSON");
    }
}

#[test]
fn env_configures_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = ferrymq(tmp.path());
    cmd.arg("serve")
        .env("FERRYMQ_DATA_DIR", "from-env")
        .env("FERRYMQ_LOG_LEVEL", "warn,ferrymq=info");
    let mut server = Server::start(cmd);
    server.wait_for("FerryMQ ready");
    assert!(tmp.path().join("from-env").is_dir());
    server.signal(libc::SIGINT);
    assert_eq!(server.wait_exit().code(), Some(0), "{}", server.log());
}

#[test]
fn invalid_configuration_exits_2_before_touching_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = serve_in(tmp.path(), &["--set", "storage.segment_bytes=12"]);
    let status = server.wait_exit();
    assert_eq!(status.code(), Some(2), "{}", server.log());
    assert!(
        server.log().contains(
            "invalid configuration: storage.segment_bytes: must be at least 1048576, got 12"
        ),
        "{}",
        server.log()
    );
    assert!(!tmp.path().join("ferrymq-data").exists());
}

#[test]
fn a_second_server_on_the_same_data_dir_fails_with_status_1() {
    let tmp = tempfile::tempdir().unwrap();
    let mut first = serve_in(tmp.path(), &[]);
    first.wait_for("FerryMQ ready");
    let mut second = serve_in(tmp.path(), &[]);
    let status = second.wait_exit();
    assert_eq!(status.code(), Some(1), "{}", second.log());
    assert!(
        second.log().contains("cannot open the broker"),
        "{}",
        second.log()
    );
    assert_eq!(second.count("FerryMQ ready"), 0);
    first.signal(libc::SIGTERM);
    assert_eq!(first.wait_exit().code(), Some(0), "{}", first.log());
}
