//! Output a connection owes its client, written without stalling the connection's loop,
//! and the `limits.connection_buffer_max_bytes` rule over it ("bytes buffered per
//! connection"): an adapter encodes into a `BytesMut`, writes what the socket takes now,
//! keeps serving its other events while the rest waits, stops reading requests while the
//! backlog is large (backpressure), and ends the connection with its protocol's error
//! once the backlog passes the limit (a client that does not read what it asked for).
//!
//! Protocol-neutral: bytes in, bytes out; no wire type.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Backlog above which a connection stops reading requests until the client reads.
pub const PAUSE_READS_AT: usize = 256 * 1024;

/// The write side of one connection: its buffer limit and whether the stream holds
/// bytes it has accepted but not yet sent (a TLS session's records).
#[derive(Debug)]
pub struct Outbox {
    limit: usize,
    unflushed: bool,
    written: u64,
}

impl Outbox {
    /// `limit` is `limits.connection_buffer_max_bytes` (0 = unlimited).
    pub fn new(limit: u64) -> Outbox {
        Outbox {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            unflushed: false,
            written: 0,
        }
    }

    /// The configured limit in bytes (0 = unlimited).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes the stream has taken over the connection's life. With the backlog's length it
    /// marks where something just encoded ends: it has left once `written` reaches
    /// `written() + out.len()` as taken at encoding.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Whether anything is left to write or flush.
    pub fn waiting(&self, out: &BytesMut) -> bool {
        !out.is_empty() || self.unflushed
    }

    /// Whether the connection should stop reading requests: their answers would only add
    /// to a backlog the client is not taking.
    pub fn pause_reads(&self, out: &BytesMut) -> bool {
        let at = match self.limit {
            0 => PAUSE_READS_AT,
            l => PAUSE_READS_AT.min(l / 2),
        };
        !out.is_empty() && out.len() >= at.max(1)
    }

    /// Whether the backlog has passed the limit.
    pub fn exceeded(&self, out: &BytesMut) -> bool {
        self.limit != 0 && out.len() > self.limit
    }

    /// Writes what the stream takes now, without waiting; returns the bytes written.
    pub async fn write_now<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        out: &mut BytesMut,
    ) -> io::Result<usize> {
        poll_fn(|cx| match self.poll_progress(cx, w, out) {
            Poll::Pending => Poll::Ready(Ok(0)),
            done => done,
        })
        .await
    }

    /// Waits until the stream takes some of the backlog (or finishes a flush), and writes
    /// as much as it takes; returns the bytes written. Cancel-safe: bytes leave `out` only
    /// once the stream has accepted them, so it can be a `select!` branch.
    pub async fn write_some<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        out: &mut BytesMut,
    ) -> io::Result<usize> {
        poll_fn(|cx| self.poll_progress(cx, w, out)).await
    }

    /// Ends the write side: what is still owed (the last words: a close, a DISCONNECT) for
    /// a client that reads, then the shutdown, each within `within`.
    pub async fn finish<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        out: &mut BytesMut,
        within: std::time::Duration,
    ) {
        if self.waiting(out) {
            let _ = tokio::time::timeout(within, async {
                while self.waiting(out) {
                    self.write_some(w, out).await?;
                }
                io::Result::Ok(())
            })
            .await;
        }
        let _ = tokio::time::timeout(within, w.shutdown()).await;
    }

    fn poll_progress<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        w: &mut W,
        out: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        let mut written = 0;
        while !out.is_empty() {
            match Pin::new(&mut *w).poll_write(cx, out) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    out.advance(n);
                    written += n;
                    self.written += n as u64;
                    self.unflushed = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if written > 0 => return Poll::Ready(Ok(written)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.unflushed {
            // A TLS stream may keep the tail of what it accepted until flushed.
            match Pin::new(&mut *w).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if written > 0 => return Poll::Ready(Ok(written)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(written))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn writes_what_the_pipe_takes_and_keeps_the_rest() {
        // A 1 KiB pipe: the first write takes 1 KiB, the rest waits for the reader.
        let (mut client, mut server) = tokio::io::duplex(1024);
        let mut ob = Outbox::new(0);
        let mut out = BytesMut::from(&vec![7u8; 4096][..]);
        let n = ob.write_now(&mut server, &mut out).await.unwrap();
        assert_eq!(n, 1024);
        assert_eq!(out.len(), 3072);
        assert_eq!(ob.written(), 1024);
        assert!(ob.waiting(&out));
        // Nothing more fits until the client reads.
        assert_eq!(ob.write_now(&mut server, &mut out).await.unwrap(), 0);
        let mut got = vec![0u8; 4096];
        let reader = tokio::spawn(async move {
            client.read_exact(&mut got).await.unwrap();
            got
        });
        while ob.waiting(&out) {
            ob.write_some(&mut server, &mut out).await.unwrap();
        }
        assert_eq!(reader.await.unwrap(), vec![7u8; 4096]);
    }

    #[tokio::test]
    async fn write_some_is_cancel_safe() {
        let (mut client, mut server) = tokio::io::duplex(16);
        let mut ob = Outbox::new(0);
        let mut out = BytesMut::from(&b"0123456789abcdefXYZ"[..]);
        ob.write_now(&mut server, &mut out).await.unwrap();
        assert_eq!(&out[..], b"XYZ");
        // The pipe is full: a write_some dropped before completing takes nothing.
        tokio::select! {
            biased;
            _ = ob.write_some(&mut server, &mut out) => panic!("the pipe is full"),
            _ = tokio::task::yield_now() => {}
        }
        assert_eq!(&out[..], b"XYZ");
        let mut got = [0u8; 16];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(ob.write_some(&mut server, &mut out).await.unwrap(), 3);
        let mut tail = [0u8; 3];
        client.read_exact(&mut tail).await.unwrap();
        assert_eq!(&tail, b"XYZ");
    }

    #[test]
    fn limits_and_read_pause() {
        let ob = Outbox::new(1000);
        let mut out = BytesMut::new();
        assert!(!ob.pause_reads(&out) && !ob.exceeded(&out));
        out.extend_from_slice(&[0u8; 500]);
        assert!(ob.pause_reads(&out), "half the limit pauses reads");
        assert!(!ob.exceeded(&out));
        out.extend_from_slice(&[0u8; 501]);
        assert!(ob.exceeded(&out));
        let unlimited = Outbox::new(0);
        let big = BytesMut::from(&vec![0u8; PAUSE_READS_AT][..]);
        assert!(unlimited.pause_reads(&big) && !unlimited.exceeded(&big));
        assert!(!unlimited.pause_reads(&BytesMut::from(&b"x"[..])));
    }
}
