//! Issue #9, users: the server refuses a public listener while `guest` keeps its default
//! password, `guest` logs in only from loopback (here over HTTP and AMQP), and other users
//! from anywhere.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use base64::Engine;
use common::{ferrymq, listening, serve, Server};

/// This machine's address on its default route, if it has one that is not loopback
/// (connecting a UDP socket sends nothing).
fn non_loopback_ip() -> Option<IpAddr> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// Status of `GET path` with Basic credentials, sent to `addr`.
fn get_status(addr: SocketAddr, path: &str, user: &str, password: &str) -> u16 {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {out:?}"))
}

#[test]
fn a_public_listener_is_refused_while_guest_has_the_default_password() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = ferrymq(tmp.path());
    cmd.args(["serve", "--data-dir"])
        .arg(tmp.path().join("data"))
        .args(["--set", "amqp.bind=0.0.0.0"]);
    let mut server = Server::start(cmd);
    let status = server.wait_exit();
    assert!(!status.success(), "{}", server.log());
    let log = server.log();
    assert!(
        log.contains("refusing to listen on a non-loopback address (amqp.bind = 0.0.0.0)")
            && log.contains("'guest' has the default password")
            && log.contains("--new-password"),
        "{log}"
    );
    assert_eq!(server.count("FerryMQ ready"), 0);
}

#[test]
fn guest_logs_in_only_from_loopback_other_users_from_anywhere() {
    let tmp = tempfile::tempdir().unwrap();
    // Not the default password: the server may listen on every interface.
    let server = serve(
        tmp.path(),
        &tmp.path().join("data"),
        &[
            "--set",
            "users.default_password=s3cret-pw",
            "--set",
            "http.bind=0.0.0.0",
        ],
    );
    let http = listening(&server, "http");
    let local = SocketAddr::from(([127, 0, 0, 1], http.port()));
    assert_eq!(get_status(local, "/api/whoami", "guest", "s3cret-pw"), 200);
    assert_eq!(get_status(local, "/api/whoami", "guest", "guest"), 401);
    // A user of our own, created through the API from loopback.
    let mut s = TcpStream::connect(local).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("guest:s3cret-pw");
    let body = r#"{"password":"app-pw","tags":[]}"#;
    write!(
        s,
        "PUT /api/users/app HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 201"), "{out}");
    assert_eq!(get_status(local, "/api/whoami", "app", "app-pw"), 200);
    if let Some(ip) = non_loopback_ip() {
        let remote = SocketAddr::new(ip, http.port());
        assert_eq!(
            get_status(remote, "/api/whoami", "guest", "s3cret-pw"),
            401,
            "guest is loopback-only"
        );
        assert_eq!(get_status(remote, "/api/whoami", "app", "app-pw"), 200);
    }
}
