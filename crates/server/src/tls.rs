//! TLS for every listener: the `[tls]` certificate, key and client verification loaded into a
//! rustls `ServerConfig` (ring provider), reloaded on SIGHUP, and the handshake the adapters
//! run through `ferrymq_core::transport::Handshake` (bounded by the protocol's handshake
//! timeout). A verified client certificate's common name becomes the connection's identity.
//!
//! Reload: new handshakes take the current `Arc<ServerConfig>`; a reload builds a whole new
//! one from disk and swaps it in, so a failed reload keeps the old certificate and sessions
//! already established keep theirs (TLS sessions never look at the config again).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use ferrymq_core::transport::{Handshake, HandshakeFuture, Io, Secured};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::{ClientAuth, TlsSection};

/// Handshake timeout of the listeners without a protocol handshake timeout (Kafka, HTTPS).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTPS connections secured and waiting for the HTTP server to take them.
const HTTPS_BACKLOG: usize = 64;

/// The TLS settings of the process, shared by every TLS listener.
pub struct Tls {
    section: TlsSection,
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Loads the certificate, key and CA named in `[tls]`.
    ///
    /// # Errors
    /// A file that cannot be read or parsed (naming the key and the path), or a key that
    /// does not match the certificate.
    pub fn load(section: &TlsSection) -> anyhow::Result<Arc<Tls>> {
        let config = build(section)?;
        Ok(Arc::new(Tls {
            section: section.clone(),
            current: RwLock::new(config),
        }))
    }

    /// Reads the files again and uses them for new handshakes. On error the previous
    /// certificate stays in use.
    ///
    /// # Errors
    /// As [`Tls::load`].
    pub fn reload(&self) -> anyhow::Result<()> {
        let config = build(&self.section)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(())
    }

    fn config(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The handshake for a listener whose handshake must finish within `timeout`.
    pub fn handshake(self: &Arc<Self>, timeout: Duration) -> Arc<dyn Handshake> {
        Arc::new(TlsHandshake {
            tls: self.clone(),
            timeout,
        })
    }

    /// Runs a server handshake on `tcp`, bounded by `timeout`.
    async fn accept(&self, tcp: TcpStream, timeout: Duration) -> std::io::Result<Secured> {
        let acceptor = TlsAcceptor::from(self.config());
        let stream = tokio::time::timeout(timeout, acceptor.accept(tcp))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
            })??;
        let identity = if self.section.cert_login {
            stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| common_name(leaf.as_ref()))
        } else {
            None
        };
        Ok(Secured {
            stream: Box::new(stream),
            identity,
        })
    }
}

struct TlsHandshake {
    tls: Arc<Tls>,
    timeout: Duration,
}

impl Handshake for TlsHandshake {
    fn accept(&self, tcp: TcpStream) -> HandshakeFuture {
        let (tls, timeout) = (self.tls.clone(), self.timeout);
        Box::pin(async move { tls.accept(tcp, timeout).await })
    }
}

/// Accepts HTTPS connections on `listener` and secures them concurrently (each handshake
/// bounded by [`HANDSHAKE_TIMEOUT`]); the finished ones are handed to the HTTP server
/// through the returned listener. Stops when the HTTP server drops that listener.
pub fn https_listener(
    listener: TcpListener,
    tls: Arc<Tls>,
    broker: Arc<ferrymq_core::Broker>,
    limits: ferrymq_http::HttpLimits,
) -> std::io::Result<ferrymq_http::SecuredListener> {
    let local = listener.local_addr()?;
    let (tx, rx) = mpsc::channel::<(Box<dyn Io>, ferrymq_http::Peer)>(HTTPS_BACKLOG);
    tokio::spawn(async move {
        loop {
            let (tcp, addr): (TcpStream, SocketAddr) = tokio::select! {
                _ = tx.closed() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "HTTPS accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            // Admitted before the handshake, so that handshakes in progress count against the
            // connection limits; a refused connection is closed without one (a client over its
            // limit keeps reconnecting, and each refusal must not cost a TLS handshake).
            let permit = match broker.admit(ferrymq_http::admission::PROTOCOL, addr.ip()) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(peer = %addr, why = %e, "HTTPS connection refused");
                    continue;
                }
            };
            let (tls, tx, broker) = (tls.clone(), tx.clone(), broker.clone());
            tokio::spawn(async move {
                match tls.accept(tcp, HANDSHAKE_TIMEOUT).await {
                    Ok(s) => {
                        let admitted =
                            ferrymq_http::admission::admitted(&broker, limits, s.stream, permit);
                        let peer = ferrymq_http::Peer {
                            addr,
                            identity: s.identity,
                        };
                        let _ = tx.send((Box::new(admitted) as Box<dyn Io>, peer)).await;
                    }
                    Err(e) => tracing::info!(peer = %addr, error = %e, "HTTPS handshake failed"),
                }
            });
        }
    });
    Ok(ferrymq_http::SecuredListener::new(rx, local))
}

/// Builds a server config from the files named in `section`.
fn build(section: &TlsSection) -> anyhow::Result<Arc<ServerConfig>> {
    // ring, as decided for the project (aws-lc-rs needs cmake and a long C build); rustls
    // deprecates it for lacking post-quantum key exchange, which FerryMQ does not offer.
    #[allow(deprecated)]
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let certs = read_certs("tls.cert_file", &section.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&section.key_file).with_context(|| {
        format!(
            "tls.key_file: cannot read a private key from {}",
            section.key_file
        )
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match section.client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional | ClientAuth::Required => {
            let mut roots = RootCertStore::empty();
            for ca in read_certs("tls.ca_file", &section.ca_file)? {
                roots.add(ca).with_context(|| {
                    format!("tls.ca_file: bad CA certificate in {}", section.ca_file)
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if section.client_auth == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .context("tls.ca_file: cannot verify client certificates")?,
            )
        }
    };
    let config = builder.with_single_cert(certs, key).with_context(|| {
        format!(
            "tls.cert_file / tls.key_file: {} and {} do not make a usable certificate",
            section.cert_file, section.key_file
        )
    })?;
    Ok(Arc::new(config))
}

fn read_certs(key: &str, path: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(Path::new(path))
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("{key}: cannot read certificates from {path}"))?;
    if certs.is_empty() {
        anyhow::bail!("{key}: no certificate in {path}");
    }
    Ok(certs)
}

/// One DER element at the start of `d`: (tag, contents, rest). `None` when malformed.
fn tlv(d: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, d) = d.split_first()?;
    let (&first, d) = d.split_first()?;
    let (len, d) = if first < 0x80 {
        (usize::from(first), d)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || d.len() < n {
            return None;
        }
        let len = d[..n].iter().fold(0usize, |l, &b| l << 8 | usize::from(b));
        (len, &d[n..])
    };
    (d.len() >= len).then(|| (tag, &d[..len], &d[len..]))
}

/// The subject's common name (the last one, the most specific, if there are several) of a
/// DER X.509 certificate.
pub fn common_name(cert: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    let (SEQUENCE, cert, _) = tlv(cert)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = tlv(cert)? else {
        return None;
    };
    let mut fields = tbs;
    // [0] version (optional), serial, signature algorithm, issuer, validity, then subject.
    if fields.first() == Some(&0xa0) {
        fields = tlv(fields)?.2;
    }
    for _ in 0..4 {
        fields = tlv(fields)?.2;
    }
    let (SEQUENCE, mut rdns, _) = tlv(fields)? else {
        return None;
    };
    let mut found = None;
    while !rdns.is_empty() {
        let (_, set, rest) = tlv(rdns)?;
        rdns = rest;
        let mut attrs = set;
        while !attrs.is_empty() {
            let (_, attr, rest) = tlv(attrs)?;
            attrs = rest;
            let (0x06, oid, value) = tlv(attr)? else {
                continue;
            };
            if oid != CN {
                continue;
            }
            let (tag, v, _) = tlv(value)?;
            found = match tag {
                // UTF8String, PrintableString, IA5String, TeletexString (ASCII in practice).
                0x0c | 0x13 | 0x16 | 0x14 => std::str::from_utf8(v).ok().map(String::from),
                // BMPString: UTF-16BE.
                0x1e if v.len() % 2 == 0 => String::from_utf16(
                    &v.chunks_exact(2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .collect::<Vec<_>>(),
                )
                .ok(),
                _ => None,
            }
            .or(found);
        }
    }
    found.filter(|cn| !cn.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if content.len() < 0x80 {
            out.push(content.len() as u8);
        } else {
            out.push(0x82);
            out.extend_from_slice(&(content.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(content);
        out
    }

    fn name(attrs: &[(&[u8], u8, &[u8])]) -> Vec<u8> {
        let rdns: Vec<u8> = attrs
            .iter()
            .flat_map(|(oid, tag, v)| {
                der(0x31, &der(0x30, &[der(0x06, oid), der(*tag, v)].concat()))
            })
            .collect();
        der(0x30, &rdns)
    }

    fn cert(subject: Vec<u8>, with_version: bool) -> Vec<u8> {
        let mut tbs = Vec::new();
        if with_version {
            tbs.extend(der(0xa0, &der(0x02, &[2])));
        }
        tbs.extend(der(0x02, &[1; 20])); // serial
        tbs.extend(der(0x30, &der(0x06, &[0x2a, 0x86, 0x48]))); // algorithm
        tbs.extend(name(&[(&[0x55, 0x04, 0x03], 0x0c, b"issuer CA")]));
        tbs.extend(der(
            0x30,
            &[der(0x17, b"250101000000Z"), der(0x17, b"350101000000Z")].concat(),
        ));
        tbs.extend(subject);
        tbs.extend(der(0x30, &[0u8; 200])); // a long element: two-byte length
        der(
            0x30,
            &[der(0x30, &tbs), der(0x30, &[]), der(0x03, &[0])].concat(),
        )
    }

    const O: &[u8] = &[0x55, 0x04, 0x0a];
    const CN: &[u8] = &[0x55, 0x04, 0x03];

    #[test]
    fn the_subject_common_name_is_read_not_the_issuers() {
        let subject = name(&[(O, 0x0c, b"Acme"), (CN, 0x0c, b"alice")]);
        assert_eq!(
            common_name(&cert(subject.clone(), true)).as_deref(),
            Some("alice")
        );
        assert_eq!(common_name(&cert(subject, false)).as_deref(), Some("alice"));
    }

    #[test]
    fn string_types_and_several_names() {
        let bmp: Vec<u8> = "bob".encode_utf16().flat_map(u16::to_be_bytes).collect();
        let s = name(&[(CN, 0x13, b"first"), (CN, 0x1e, &bmp)]);
        assert_eq!(common_name(&cert(s, true)).as_deref(), Some("bob"));
    }

    #[test]
    fn no_common_name_or_malformed_input_is_none() {
        assert_eq!(common_name(&cert(name(&[(O, 0x0c, b"Acme")]), true)), None);
        assert_eq!(common_name(&cert(name(&[(CN, 0x0c, b"")]), true)), None);
        let good = cert(name(&[(CN, 0x0c, b"alice")]), true);
        for cut in 0..good.len() {
            assert_eq!(common_name(&good[..cut]), None, "cut at {cut}");
        }
        assert_eq!(common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(common_name(&[]), None);
    }
}
