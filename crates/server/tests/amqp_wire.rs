//! Issue #4: raw AMQP bytes on a real socket — a wrong protocol header, garbage and
//! oversized frames get the protocol's answer, end only that connection, and never
//! take the server down.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{listening, serve, Server};

const HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

fn connect(server: &Server) -> TcpStream {
    let s = TcpStream::connect(listening(server, "AMQP")).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// Reads until the server closes the socket.
fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// Finds a connection.close (class 10, method 50) on channel 0 and returns its reply code.
fn close_code(bytes: &[u8]) -> Option<u16> {
    let mut i = 0;
    while i + 7 <= bytes.len() {
        let kind = bytes[i];
        let size = u32::from_be_bytes(bytes[i + 3..i + 7].try_into().ok()?) as usize;
        let payload = bytes.get(i + 7..i + 7 + size)?;
        if kind == 1 && payload.len() >= 6 && payload[0..4] == [0, 10, 0, 50] {
            return Some(u16::from_be_bytes([payload[4], payload[5]]));
        }
        i += 7 + size + 1;
    }
    None
}

fn still_serving(server: &Server) {
    let mut s = connect(server);
    s.write_all(HEADER).unwrap();
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf)
        .expect("connection.start frame header");
    assert_eq!(buf[0], 1, "a method frame (connection.start)");
}

#[test]
fn wrong_protocol_header_gets_the_supported_one() {
    let tmp = tempfile::tempdir().unwrap();
    let server = serve(tmp.path(), &tmp.path().join("data"), &[]);
    let mut s = connect(&server);
    s.write_all(b"AMQP\x01\x01\x00\x0a").unwrap();
    assert_eq!(read_to_end(&mut s), HEADER);
    let mut s = connect(&server);
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(read_to_end(&mut s), HEADER);
    still_serving(&server);
}

#[test]
fn garbage_and_oversized_frames_close_with_frame_error() {
    let tmp = tempfile::tempdir().unwrap();
    let server = serve(tmp.path(), &tmp.path().join("data"), &[]);

    // A frame with a bad end octet.
    let mut s = connect(&server);
    s.write_all(HEADER).unwrap();
    s.write_all(&[1, 0, 0, 0, 0, 0, 4, 0, 10, 0, 11, 0x00])
        .unwrap();
    assert_eq!(close_code(&read_to_end(&mut s)), Some(501));

    // A frame claiming 2 GiB: refused from its header, without waiting for the payload.
    let mut s = connect(&server);
    s.write_all(HEADER).unwrap();
    s.write_all(&[1, 0, 0, 0x80, 0, 0, 0]).unwrap();
    assert_eq!(close_code(&read_to_end(&mut s)), Some(501));

    // An unknown frame type.
    let mut s = connect(&server);
    s.write_all(HEADER).unwrap();
    s.write_all(&[42, 0, 0, 0, 0, 0, 0, 0xCE]).unwrap();
    assert!(close_code(&read_to_end(&mut s)).is_some_and(|c| (501..=505).contains(&c)));

    // Random bytes.
    let mut s = connect(&server);
    s.write_all(HEADER).unwrap();
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let _ = s.write_all(&noise);
    let _ = read_to_end(&mut s);

    still_serving(&server);
}

#[test]
fn a_silent_client_is_dropped_after_the_handshake_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let server = serve(
        tmp.path(),
        &tmp.path().join("data"),
        &["--set", "amqp.handshake_timeout_ms=300"],
    );
    let mut s = connect(&server);
    // Say nothing at all: the server hangs up (slowloris protection).
    assert!(read_to_end(&mut s).is_empty());
    still_serving(&server);
}

fn method_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![1, 0, 0];
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f.push(0xCE);
    f
}

fn shortstr(out: &mut Vec<u8>, s: &str) {
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// Reads one frame: (type, payload).
fn read_frame(s: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 7];
    s.read_exact(&mut h)?;
    let size = u32::from_be_bytes([h[3], h[4], h[5], h[6]]) as usize;
    let mut p = vec![0u8; size + 1];
    s.read_exact(&mut p)?;
    p.pop();
    Ok((h[0], p))
}

/// Handshake by hand with the given heartbeat; returns after connection.open-ok.
fn open_with_heartbeat(server: &Server, heartbeat: u16) -> TcpStream {
    let mut s = connect(server);
    s.write_all(HEADER).unwrap();
    let (_, start) = read_frame(&mut s).unwrap();
    assert_eq!(&start[0..4], &[0, 10, 0, 10], "connection.start");
    let mut p = vec![0, 10, 0, 11, 0, 0, 0, 0];
    shortstr(&mut p, "PLAIN");
    let resp = b"\0guest\0guest";
    p.extend_from_slice(&(resp.len() as u32).to_be_bytes());
    p.extend_from_slice(resp);
    shortstr(&mut p, "en_US");
    s.write_all(&method_frame(&p)).unwrap();
    let (_, tune) = read_frame(&mut s).unwrap();
    assert_eq!(&tune[0..4], &[0, 10, 0, 30], "connection.tune");
    let mut p = vec![0, 10, 0, 31, 0x07, 0xFF];
    p.extend_from_slice(&131_072u32.to_be_bytes());
    p.extend_from_slice(&heartbeat.to_be_bytes());
    s.write_all(&method_frame(&p)).unwrap();
    let mut p = vec![0, 10, 0, 40];
    shortstr(&mut p, "/");
    shortstr(&mut p, "");
    p.push(0);
    s.write_all(&method_frame(&p)).unwrap();
    let (_, ok) = read_frame(&mut s).unwrap();
    assert_eq!(&ok[0..4], &[0, 10, 0, 41], "connection.open-ok");
    s
}

#[test]
fn heartbeats_are_sent_and_a_silent_client_is_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let server = serve(tmp.path(), &tmp.path().join("data"), &[]);
    let mut s = open_with_heartbeat(&server, 1);
    // Stay silent: the server sends heartbeats, then closes after two missed intervals.
    let mut heartbeats = 0;
    loop {
        match read_frame(&mut s) {
            Ok((8, _)) => heartbeats += 1,
            Ok((t, p)) => panic!("unexpected frame {t} {p:?}"),
            Err(_) => break,
        }
    }
    assert!(
        heartbeats >= 1,
        "the server sent heartbeats while we were silent"
    );
    still_serving(&server);
}

#[test]
fn a_client_sending_heartbeats_stays_connected() {
    let tmp = tempfile::tempdir().unwrap();
    let server = serve(tmp.path(), &tmp.path().join("data"), &[]);
    let mut s = open_with_heartbeat(&server, 1);
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let start = std::time::Instant::now();
    // For three intervals, answer with heartbeats; the connection must stay open.
    while start.elapsed() < Duration::from_millis(3200) {
        s.write_all(&[8, 0, 0, 0, 0, 0, 0, 0xCE]).unwrap();
        match read_frame(&mut s) {
            Ok((8, _)) => {}
            Ok((t, p)) => panic!("unexpected frame {t} {p:?}"),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("connection dropped although we sent heartbeats: {e}"),
        }
    }
}
