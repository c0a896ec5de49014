//! TLS on every listener against the real binary: AMQPS, MQTTS, Kafka SSL and HTTPS (and MQTT
//! over wss) with a real exchange each, client certificates (the common name as the user,
//! refused without one or from an unknown CA), SIGHUP reload, and the configuration errors.
//! Certificates come from tests/interop/tls/make-certs.sh (the openssl CLI).

mod common;
#[path = "common/mqtt.rs"]
mod mqtt;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{ferrymq, listening, run, Server};
use ferrymq_amqp_codec::{
    decode_frame, encode_frame, ConnectionStartOk, FieldTable, Frame, Method, PROTOCOL_HEADER,
};
use ferrymq_mqtt_codec::{ProtocolVersion, QoS, ReasonCode};
use kafka_protocol::messages::{
    ApiKey, MetadataRequest, MetadataResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use mqtt::{connect_packet, Client};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

const WAIT: Duration = Duration::from_secs(30);

/// The test PKI in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/interop/tls/make-certs.sh")
            .canonicalize()
            .unwrap();
        let ok = Command::new("bash")
            .arg(script)
            .arg(dir.path())
            .status()
            .expect("run make-certs.sh (needs the openssl CLI)");
        assert!(ok.success(), "make-certs.sh failed");
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// A client trusting the test CA, presenting `cert` (`client`, `rogue`, ...) if given.
    fn client(&self, cert: Option<&str>) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.path("ca.pem")).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        #[allow(deprecated)] // the ring provider, as the server's
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let b = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match cert {
            None => b.with_no_client_auth(),
            Some(name) => {
                let chain = CertificateDer::pem_file_iter(self.path(&format!("{name}.pem")))
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                let key = PrivateKeyDer::from_pem_file(self.path(&format!("{name}.key"))).unwrap();
                b.with_client_auth_cert(chain, key).unwrap()
            }
        };
        TlsConnector::from(Arc::new(config))
    }
}

/// Every listener plain and TLS, on ephemeral ports, with `[tls]` from `pki` and `extra`.
fn serve_tls(pki: &Pki, data: &Path, extra: &[&str]) -> Server {
    let mut cmd = ferrymq(pki.dir.path());
    cmd.env("FERRYMQ_AMQP_TLS_PORT", "0")
        .env("FERRYMQ_MQTT_TLS_PORT", "0")
        .env("FERRYMQ_KAFKA_TLS_PORT", "0")
        .env("FERRYMQ_HTTP_TLS_PORT", "0")
        .arg("serve")
        .arg("--data-dir")
        .arg(data);
    for key in ["amqp", "mqtt", "kafka", "http"] {
        cmd.arg("--set").arg(format!("{key}.tls_enabled=true"));
    }
    cmd.args(["--set", &format!("tls.cert_file={}", pki.arg("server.pem"))])
        .args(["--set", &format!("tls.key_file={}", pki.arg("server.key"))])
        .args(["--set", &format!("tls.ca_file={}", pki.arg("ca.pem"))]);
    for e in extra {
        cmd.args(["--set", e]);
    }
    let mut s = Server::start(cmd);
    s.wait_for("FerryMQ ready");
    s
}

async fn tls_connect(
    connector: &TlsConnector,
    addr: std::net::SocketAddr,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .expect("handshake in time")
}

// ------------------------------------------------------------------------------- AMQP

async fn amqp_frame(s: &mut TlsStream<TcpStream>, buf: &mut BytesMut) -> Option<Frame> {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(f) = decode_frame(buf, 1 << 20).expect("a well-formed frame") {
                return Some(f);
            }
            match s.read_buf(buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("a frame or close in time")
}

async fn amqp_send(s: &mut TlsStream<TcpStream>, method: Method) {
    let mut out = BytesMut::new();
    encode_frame(&Frame::Method { channel: 0, method }, &mut out);
    s.write_all(&out).await.unwrap();
}

/// Logs in over AMQPS with `mechanism`; returns the mechanisms offered and whether the
/// server went on to connection.tune (login accepted).
async fn amqp_login(
    connector: &TlsConnector,
    addr: std::net::SocketAddr,
    mechanism: &str,
    response: &[u8],
) -> (String, bool) {
    let mut s = tls_connect(connector, addr).await.expect("AMQPS handshake");
    s.write_all(&PROTOCOL_HEADER).await.unwrap();
    let mut buf = BytesMut::new();
    let offered = match amqp_frame(&mut s, &mut buf).await {
        Some(Frame::Method {
            method: Method::ConnectionStart(start),
            ..
        }) => String::from_utf8_lossy(&start.mechanisms).into_owned(),
        f => panic!("expected connection.start, got {f:?}"),
    };
    amqp_send(
        &mut s,
        Method::ConnectionStartOk(ConnectionStartOk {
            client_properties: FieldTable::default(),
            mechanism: mechanism.into(),
            response: Bytes::copy_from_slice(response),
            locale: "en_US".into(),
        }),
    )
    .await;
    let tuned = matches!(
        amqp_frame(&mut s, &mut buf).await,
        Some(Frame::Method {
            method: Method::ConnectionTune(_),
            ..
        })
    );
    (offered, tuned)
}

// ------------------------------------------------------------------------------- MQTT

/// An MQTT 3.1.1 client over MQTTS, without a user name; its CONNACK code.
async fn mqtts_connect(
    connector: &TlsConnector,
    addr: std::net::SocketAddr,
    id: &str,
) -> (Client<TlsStream<TcpStream>>, ReasonCode) {
    let s = tls_connect(connector, addr).await.expect("MQTTS handshake");
    let c = connect_packet(ProtocolVersion::V3_1_1, id, true);
    let (client, ack) = Client::connect_over(s, c).await;
    (client, ack.reason_code)
}

/// Subscribes to `topic`, publishes `body` to it and receives it back.
async fn round_trip(c: &mut Client<TlsStream<TcpStream>>, topic: &str, body: &[u8]) {
    c.subscribe(1, topic, QoS::AtMostOnce).await;
    c.publish(topic, body, QoS::AtMostOnce, false, 0).await;
    assert_eq!(&c.expect_publish().await.payload[..], body);
}

// ------------------------------------------------------------------------------- Kafka

async fn kafka_metadata(connector: &TlsConnector, addr: std::net::SocketAddr) -> MetadataResponse {
    let mut s = tls_connect(connector, addr)
        .await
        .expect("Kafka SSL handshake");
    let v = 9;
    let header = RequestHeader::default()
        .with_request_api_key(MetadataRequest::KEY)
        .with_request_api_version(v)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("tls-test")));
    let mut b = BytesMut::new();
    header
        .encode(&mut b, ApiKey::Metadata.request_header_version(v))
        .unwrap();
    MetadataRequest::default().encode(&mut b, v).unwrap();
    s.write_all(&(b.len() as i32).to_be_bytes()).await.unwrap();
    s.write_all(&b).await.unwrap();
    let mut len = [0u8; 4];
    tokio::time::timeout(WAIT, s.read_exact(&mut len))
        .await
        .unwrap()
        .expect("a Metadata response");
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).await.unwrap();
    let mut body = Bytes::from(body);
    let h = ResponseHeader::decode(&mut body, MetadataResponse::header_version(v)).unwrap();
    assert_eq!(h.correlation_id, 7);
    MetadataResponse::decode(&mut body, v).unwrap()
}

// ------------------------------------------------------------------------------- HTTP

/// `GET path` over HTTPS; the status and body.
async fn https_get(
    connector: &TlsConnector,
    addr: std::net::SocketAddr,
    path: &str,
    auth: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = tls_connect(connector, addr).await?;
    let auth = auth
        .map(|a| format!("Authorization: Basic {a}\r\n"))
        .unwrap_or_default();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("a response in time")?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

// ------------------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_serves_tls_and_client_certificates_name_the_user() {
    let pki = Pki::new();
    let data = pki.path("data");
    let server = serve_tls(&pki, &data, &["tls.client_auth=optional"]);
    let anon = pki.client(None);
    let guest = pki.client(Some("client"));
    let nobody = pki.client(Some("stranger"));

    // AMQPS: PLAIN without a certificate (no EXTERNAL offered); EXTERNAL with one.
    let amqps = listening(&server, "AMQPS");
    let (offered, ok) = amqp_login(&anon, amqps, "PLAIN", b"\0guest\0guest").await;
    assert_eq!(offered, "PLAIN AMQPLAIN");
    assert!(ok, "PLAIN over AMQPS");
    let (offered, ok) = amqp_login(&guest, amqps, "EXTERNAL", b"").await;
    assert!(offered.split(' ').any(|m| m == "EXTERNAL"), "{offered}");
    assert!(ok, "EXTERNAL as the certificate's CN (guest)");
    let (_, ok) = amqp_login(&nobody, amqps, "EXTERNAL", b"").await;
    assert!(!ok, "EXTERNAL as a CN that is no user");
    // The plain listener still serves, without EXTERNAL.
    let plain = TcpStream::connect(listening(&server, "AMQP"))
        .await
        .unwrap();
    drop(plain);

    // MQTTS: no user name + certificate = the CN; a CN that is no user is refused.
    let mqtts = listening(&server, "MQTTS");
    let (mut c, code) = mqtts_connect(&guest, mqtts, "tls-cert").await;
    assert_eq!(code, ReasonCode::SUCCESS);
    round_trip(&mut c, "tls/mqtts", b"over MQTTS").await;
    let (_, code) = mqtts_connect(&nobody, mqtts, "tls-nobody").await;
    assert_ne!(code, ReasonCode::SUCCESS);

    // Kafka SSL: metadata advertises the SSL listener's own port.
    let ssl = listening(&server, "Kafka SSL");
    let md = kafka_metadata(&anon, ssl).await;
    assert_eq!(md.brokers.len(), 1);
    assert_eq!(md.brokers[0].port, i32::from(ssl.port()));
    let md = kafka_metadata(&guest, ssl).await;
    assert_eq!(md.brokers[0].port, i32::from(ssl.port()));

    // HTTPS: Basic credentials, or the certificate alone.
    let https = listening(&server, "https");
    let (status, body) = https_get(&anon, https, "/api/whoami", Some("Z3Vlc3Q6Z3Vlc3Q="))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, body) = https_get(&guest, https, "/api/whoami", None).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"guest\""), "{body}");
    let (status, _) = https_get(&anon, https, "/api/whoami", None).await.unwrap();
    assert_eq!(status, 401);
    let (status, body) = https_get(&nobody, https, "/api/whoami", None)
        .await
        .unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("nobody"), "{body}");

    // A client that does not trust the server's CA gets no session.
    let stranger_ca = {
        #[allow(deprecated)]
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(pki.path("other-ca.pem")).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        TlsConnector::from(Arc::new(
            ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        ))
    };
    assert!(tls_connect(&stranger_ca, https).await.is_err());
}

/// With `client_auth = required`, a connection without a certificate or with one from
/// another CA gets nothing (TLS 1.3 reports it on the first read); the right one works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_client_certificates_refuse_none_and_unknown_ca() {
    let pki = Pki::new();
    let data = pki.path("data");
    let mut server = serve_tls(&pki, &data, &["tls.client_auth=required"]);
    let https = listening(&server, "https");
    for refused in [pki.client(None), pki.client(Some("rogue"))] {
        let r = https_get(&refused, https, "/api/whoami", Some("Z3Vlc3Q6Z3Vlc3Q=")).await;
        assert!(
            matches!(&r, Err(_) | Ok((0, _))),
            "expected no HTTP answer, got {r:?}"
        );
    }
    let (status, _) = https_get(&pki.client(Some("client")), https, "/api/whoami", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    // The refusals are logged, and the server goes on.
    tokio::task::block_in_place(|| server.wait_for("HTTPS handshake failed"));
}

/// SIGHUP: new connections get the new certificate, an open one keeps working; a broken
/// certificate file is refused and the previous certificate stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_without_dropping_connections() {
    let pki = Pki::new();
    let data = pki.path("data");
    let mut server = serve_tls(&pki, &data, &[]);
    let mqtts = listening(&server, "MQTTS");
    let https = listening(&server, "https");
    let client = pki.client(None);
    let served = |s: &TlsStream<TcpStream>| s.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let first = tls_connect(&client, https).await.unwrap();
    let old_cert = served(&first);
    let (mut open, code) = mqtts_connect(&client, mqtts, "before-reload").await;
    assert_eq!(code, ReasonCode::SUCCESS);

    std::fs::copy(pki.path("server2.pem"), pki.path("server.pem")).unwrap();
    std::fs::copy(pki.path("server2.key"), pki.path("server.key")).unwrap();
    let new_cert = CertificateDer::pem_file_iter(pki.path("server2.pem"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec();
    assert_ne!(old_cert, new_cert);
    server.signal(libc::SIGHUP);
    tokio::task::block_in_place(|| server.wait_for("TLS certificates reloaded"));
    let second = tls_connect(&client, https).await.unwrap();
    assert_eq!(served(&second), new_cert);
    // The connection made before the reload still works.
    round_trip(&mut open, "tls/reload", b"still here").await;

    // A broken file: logged, and the certificate loaded last is still served.
    std::fs::write(pki.path("server.pem"), "not a certificate").unwrap();
    server.signal(libc::SIGHUP);
    tokio::task::block_in_place(|| server.wait_for("TLS reload failed"));
    let third = tls_connect(&client, https).await.unwrap();
    assert_eq!(served(&third), new_cert);
    let (status, _) = https_get(&client, https, "/api/whoami", Some("Z3Vlc3Q6Z3Vlc3Q="))
        .await
        .unwrap();
    assert_eq!(status, 200);
}

#[test]
fn a_tls_listener_needs_a_certificate_key_and_for_client_auth_a_ca() {
    let pki = Pki::new();
    let data = pki.arg("data");
    let cases: [(&[&str], &str); 3] = [
        (&["--set", "amqp.tls_enabled=true"], "tls.cert_file"),
        (
            &[
                "--set",
                "http.tls_enabled=true",
                "--set",
                "tls.cert_file=server.pem",
            ],
            "tls.key_file",
        ),
        (
            &[
                "--set",
                "mqtt.tls_enabled=true",
                "--set",
                "tls.cert_file=server.pem",
                "--set",
                "tls.key_file=server.key",
                "--set",
                "tls.client_auth=required",
            ],
            "tls.ca_file",
        ),
    ];
    for (args, key) in cases {
        let r = run(ferrymq(pki.dir.path())
            .args(["serve", "--data-dir", &data])
            .args(args));
        assert_eq!(r.status.code(), Some(2), "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(key), "{args:?}: {}", r.stderr);
    }
    // A file that is not there fails the start, naming the key and the path.
    let r = run(ferrymq(pki.dir.path()).args([
        "serve",
        "--data-dir",
        &data,
        "--set",
        "kafka.tls_enabled=true",
        "--set",
        "tls.cert_file=missing.pem",
        "--set",
        "tls.key_file=server.key",
    ]));
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("tls.cert_file") && r.stderr.contains("missing.pem"),
        "{}",
        r.stderr
    );
}

/// `/metrics` over plain HTTP once a connection is admitted again; (body, refusals of
/// `limit` per protocol).
async fn metrics_when_served(addr: std::net::SocketAddr) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut text = Vec::new();
        let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut text)).await;
        let text = String::from_utf8_lossy(&text).into_owned();
        if text.starts_with("HTTP/1.1 200") {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/metrics never served: {text}"
        );
        tokio::task::yield_now().await;
    }
}

fn refusals(metrics: &str, limit: &str, protocol: &str) -> u64 {
    let key = format!("ferrymq_limit_refusals_total{{limit=\"{limit}\",protocol=\"{protocol}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The plain and TLS listeners of AMQP are one adapter: `amqp.connections_max` counts both.
/// And every TLS listener admits at accept: a connection over a limit is closed before its
/// handshake (no handshake work for a client that keeps reconnecting), and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listeners_admit_before_the_handshake_and_share_the_protocol_limit() {
    let pki = Pki::new();
    let anon = pki.client(None);

    // amqp.connections_max = 1, held by a plain AMQP connection: AMQPS is refused too.
    let data = pki.path("data-a");
    let server = serve_tls(&pki, &data, &["amqp.connections_max=1"]);
    let mut plain = TcpStream::connect(listening(&server, "AMQP"))
        .await
        .unwrap();
    plain.write_all(&PROTOCOL_HEADER).await.unwrap();
    let mut first = [0u8; 8];
    tokio::time::timeout(WAIT, plain.read_exact(&mut first))
        .await
        .expect("connection.start in time")
        .expect("the plain connection is served");
    assert_eq!(first[0], 1, "a method frame (connection.start)");
    let amqps = listening(&server, "AMQPS");
    assert!(
        tls_connect(&anon, amqps).await.is_err(),
        "AMQPS over the shared limit: closed before the handshake"
    );
    drop(plain);
    // Once the plain connection is gone, AMQPS is served.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(mut s) = tls_connect(&anon, amqps).await {
            s.write_all(&PROTOCOL_HEADER).await.unwrap();
            let mut buf = BytesMut::new();
            if matches!(
                amqp_frame(&mut s, &mut buf).await,
                Some(Frame::Method {
                    method: Method::ConnectionStart(_),
                    ..
                })
            ) {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "AMQPS never served again"
        );
        tokio::task::yield_now().await;
    }
    drop(server);

    // One connection per source address, held over AMQPS: MQTTS, Kafka SSL and HTTPS are
    // closed before their handshakes, and every refusal is counted.
    let data = pki.path("data-b");
    let server = serve_tls(&pki, &data, &["limits.connections_per_source_max=1"]);
    let held = tls_connect(&anon, listening(&server, "AMQPS"))
        .await
        .expect("the first connection is admitted");
    for label in ["MQTTS", "Kafka SSL", "https"] {
        let addr = listening(&server, label);
        assert!(
            tls_connect(&anon, addr).await.is_err(),
            "{label} over the per-source limit: closed before the handshake"
        );
    }
    drop(held);
    let m = metrics_when_served(listening(&server, "http")).await;
    for protocol in ["mqtt", "kafka", "http"] {
        assert!(
            refusals(&m, "connections_per_source", protocol) >= 1,
            "{protocol} refusal counted:\n{m}"
        );
    }
}
