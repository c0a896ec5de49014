//! Connection limits of the HTTP listener: a listener that admits each accepted
//! connection through the core's admission (global and per-source limits), answers one
//! over a limit with `503 Service Unavailable` and a JSON body, and closes a connection
//! whose first request head is not complete within the handshake timeout (slowloris).
//!
//! Keep-alive connections, WebSocket, SSE and MQTT-over-WebSocket sessions all ride an
//! admitted connection and hold its permit until they end.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ferrymq_core::transport::Io;
use ferrymq_core::{Broker, ConnectionPermit, Limit};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::Sleep;

use crate::server::Peer;

/// The protocol label of the HTTP listener in limits and metrics.
pub const PROTOCOL: &str = "http";

/// Bytes of a refused connection's request read (and ignored) before the 503.
const REFUSED_HEAD_BYTES_MAX: usize = 16 * 1024;
/// How long a refused connection's request is waited for before the 503.
const REFUSED_READ_MS: u64 = 1000;

/// Limits of the HTTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Time allowed from accept to the end of the first request head.
    pub handshake_timeout_ms: u64,
    /// A WebSocket (`/api/ws`) whose client reads nothing for this long, or sends nothing
    /// (not even a pong to the pings sent at half of it), is closed; 0 = never.
    pub websocket_timeout_ms: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            handshake_timeout_ms: 10_000,
            websocket_timeout_ms: 60_000,
        }
    }
}

/// A TCP listener whose connections are admitted by the broker (see the module docs).
pub struct AdmittingListener {
    inner: TcpListener,
    broker: Arc<Broker>,
    limits: HttpLimits,
}

impl AdmittingListener {
    pub fn new(inner: TcpListener, broker: Arc<Broker>, limits: HttpLimits) -> Self {
        AdmittingListener {
            inner,
            broker,
            limits,
        }
    }
}

impl axum::serve::Listener for AdmittingListener {
    type Io = Admitted;
    type Addr = Peer;

    async fn accept(&mut self) -> (Admitted, Peer) {
        loop {
            let (stream, peer) = match self.inner.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            if let Some(admitted) = admit(&self.broker, self.limits, Box::new(stream), peer) {
                return (
                    admitted,
                    Peer {
                        addr: peer,
                        identity: None,
                    },
                );
            }
        }
    }

    fn local_addr(&self) -> io::Result<Peer> {
        Ok(Peer {
            addr: self.inner.local_addr()?,
            identity: None,
        })
    }
}

/// Admits an accepted connection (plain, or HTTPS once its TLS handshake is done) through
/// the broker's admission: the connection with its permit and first-request deadline, or
/// `None` after spawning the 503 answer of a refusal.
pub fn admit(
    broker: &Arc<Broker>,
    limits: HttpLimits,
    io: Box<dyn Io>,
    peer: SocketAddr,
) -> Option<Admitted> {
    match broker.admit(PROTOCOL, peer.ip()) {
        Ok(permit) => Some(admitted(broker, limits, io, permit)),
        Err(e) => {
            tracing::warn!(%peer, why = %e, "HTTP connection refused");
            tokio::spawn(refuse(io, e.message));
            None
        }
    }
}

/// A connection admitted earlier with `permit` (HTTPS admits at accept, before its TLS
/// handshake, and wraps the secured stream here), with its first-request deadline.
pub fn admitted(
    broker: &Arc<Broker>,
    limits: HttpLimits,
    io: Box<dyn Io>,
    permit: ConnectionPermit,
) -> Admitted {
    let timeout = Duration::from_millis(limits.handshake_timeout_ms.max(1));
    Admitted {
        io,
        _permit: permit,
        head: Some(HeadTimer {
            sleep: Box::pin(tokio::time::sleep(timeout)),
            matched: 0,
            broker: Arc::clone(broker),
        }),
    }
}

/// Answers a connection over a limit: reads (a bounded part of) its request, then
/// `503` with `Retry-After` and the JSON error body of every other API error, and closes.
async fn refuse(mut stream: Box<dyn Io>, why: String) {
    let mut buf = vec![0u8; REFUSED_HEAD_BYTES_MAX];
    let mut n = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(REFUSED_READ_MS);
    while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf[n..])).await {
            Ok(Ok(m)) if m > 0 => n += m,
            _ => break,
        }
    }
    let body = serde_json::json!({"error": "limit_reached", "reason": why}).to_string();
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The deadline of the first request head, and where the scan for its end is.
struct HeadTimer {
    sleep: Pin<Box<Sleep>>,
    /// Bytes of `\r\n\r\n` matched so far.
    matched: u8,
    broker: Arc<Broker>,
}

/// Scans bytes just read for the end of a request head (`\r\n\r\n`), `matched` bytes of
/// which were seen before; true once it is complete.
fn head_end(matched: &mut u8, bytes: &[u8]) -> bool {
    const END: &[u8; 4] = b"\r\n\r\n";
    for &b in bytes {
        *matched = if b == END[usize::from(*matched)] {
            *matched + 1
        } else if b == b'\r' {
            1
        } else {
            0
        };
        if *matched == 4 {
            return true;
        }
    }
    false
}

/// An admitted HTTP connection: the stream, its permit (released on drop) and, until the
/// first request head is complete, its deadline.
pub struct Admitted {
    io: Box<dyn Io>,
    _permit: ConnectionPermit,
    head: Option<HeadTimer>,
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(h) = this.head.as_mut() {
            if h.sleep.as_mut().poll(cx).is_ready() {
                h.broker
                    .admission()
                    .refused(Limit::HandshakeTimeout, PROTOCOL);
                this.head = None;
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request head not complete within http.handshake_timeout_ms",
                )));
            }
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(h)) = (&r, this.head.as_mut()) {
            if head_end(&mut h.matched, &buf.filled()[before..]) {
                this.head = None;
            }
        }
        r
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_end_is_found_across_reads() {
        let mut m = 0;
        assert!(!head_end(&mut m, b"GET / HTTP/1.1\r\nHost: x\r\n\r"));
        assert!(head_end(&mut m, b"\n"));
        let mut m = 0;
        assert!(!head_end(&mut m, b"a\r\n\r\r\nb"));
        assert!(!head_end(&mut m, b"\r\n"));
        assert!(head_end(&mut m, b"\r\n"));
    }
}
