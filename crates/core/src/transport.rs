//! Transport security seen from the adapters: a [`Handshake`] that turns an accepted TCP
//! stream into a secured byte stream plus the peer's verified identity (a TLS client
//! certificate's common name). The TLS implementation lives in the server binary; adapters
//! only see this trait, so no TLS type enters the core or a protocol crate.

use std::future::Future;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A bidirectional byte stream (a TLS session over TCP).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A secured connection, ready for the protocol.
pub struct Secured {
    pub stream: Box<dyn Io>,
    /// The identity the transport verified (the client certificate's common name), if any.
    pub identity: Option<String>,
}

/// The result of a handshake.
pub type HandshakeFuture = Pin<Box<dyn Future<Output = std::io::Result<Secured>> + Send>>;

/// Secures accepted connections (a TLS server handshake, bounded in time by the implementor).
pub trait Handshake: Send + Sync {
    /// Runs the handshake on `tcp`. An error ends the connection before the protocol starts.
    fn accept(&self, tcp: TcpStream) -> HandshakeFuture;
}
