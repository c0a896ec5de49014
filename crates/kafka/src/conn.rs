//! One Kafka connection: size-prefixed frames (bounded before reading), request header,
//! version check, the SASL gate, dispatch to `api`, and pipelining: requests are
//! dispatched in arrival order (so appends keep their order) while responses, which may
//! wait (durable appends, long-poll fetches, group rebalances), are written in request
//! order as Kafka requires.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use ferrymq_core::{ConnectionHandle, ConnectionInfo, ConnectionPermit, Limit};
use futures_util::stream::{FuturesOrdered, StreamExt};
use futures_util::FutureExt;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, Notify};

use crate::api;
use crate::sasl::Mechanism;
use crate::Kafka;

/// A response being produced: the encoded body, or `None` for no response (acks=0).
pub(crate) type Pending = Pin<Box<dyn Future<Output = Option<Body>> + Send>>;

/// A pending response with its correlation id, response header version and the size of
/// its request (held until the response is written).
type Answer = Pin<Box<dyn Future<Output = (i32, i16, Option<Body>, usize)> + Send>>;

/// An encoded response body: buffers written to the socket back to back. One buffer for
/// most responses; a Fetch response's large stored record batches are their own buffers
/// (slices of the storage read, not copied into the response).
#[derive(Debug, Default)]
pub(crate) struct Body(pub(crate) Vec<Bytes>);

impl Body {
    /// Bytes in all the buffers.
    pub(crate) fn len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }

    /// Whether the body has no bytes (a response that did not encode).
    pub(crate) fn is_empty(&self) -> bool {
        self.0.iter().all(Bytes::is_empty)
    }

    /// The body as one buffer (copies when there are several).
    #[cfg(test)]
    pub(crate) fn concat(&self) -> Bytes {
        match self.0.as_slice() {
            [one] => one.clone(),
            parts => parts.concat().into(),
        }
    }
}

impl From<BytesMut> for Body {
    fn from(b: BytesMut) -> Body {
        Body(vec![b.freeze()])
    }
}

/// Why a connection is closed instead of answered (Kafka closes on these).
#[derive(Debug)]
pub(crate) struct Close(pub String);

/// Where the SASL exchange of a connection is.
pub(crate) enum Auth {
    /// No SASL configured: the anonymous user.
    Open,
    /// SASL required; nothing done yet.
    Required,
    /// SaslHandshake chose a mechanism; SaslAuthenticate rounds follow.
    Handshake(Mechanism),
    /// SCRAM first message answered; the final one is next.
    Scram(Box<crate::sasl::ScramServer<crate::api::UserCredentials>>),
    /// Authenticated as this user.
    Done(String),
}

/// State of one connection that handlers may use.
pub(crate) struct ConnState {
    pub peer: String,
    /// Came in on the TLS (SSL) listener: metadata advertises that listener's port.
    pub secure: bool,
    pub client_id: String,
    pub auth: Auth,
    pub handle: Option<Arc<ConnectionHandle>>,
    /// Admission permit, held for the connection's life (per-user count once registered).
    pub permit: ConnectionPermit,
}

/// The protocol label of this adapter in limits and metrics.
pub(crate) const PROTOCOL: &str = "kafka";

impl ConnState {
    /// The client's IP address.
    pub fn peer_ip(&self) -> Option<std::net::IpAddr> {
        self.peer
            .parse::<std::net::SocketAddr>()
            .ok()
            .map(|a| a.ip())
    }

    /// The user requests act as, once authenticated.
    pub fn user(&self, kafka: &Kafka) -> Option<String> {
        match &self.auth {
            Auth::Open => Some(kafka.config.anonymous_user.clone()),
            Auth::Done(u) => Some(u.clone()),
            _ => None,
        }
    }
}

/// How long a closing connection waits for its last buffered answers to be taken (as the
/// AMQP and MQTT adapters' `FINAL_WRITE_TIMEOUT`).
const FINAL_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves one connection until the client closes it, it misbehaves, or the adapter stops.
/// `identity` is the TLS client certificate's verified common name: without SASL on the
/// listener it is the connection's principal (Kafka's SSL principal); a name that is no
/// user ends the connection before any request.
///
/// `secure` says the stream is the TLS listener's. `permit` is the connection's admission,
/// held for its life.
pub async fn serve<S>(
    kafka: Arc<Kafka>,
    stream: S,
    peer: String,
    secure: bool,
    identity: Option<String>,
    permit: ConnectionPermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut auth = if kafka.config.sasl_mechanisms.is_empty() {
        Auth::Open
    } else {
        Auth::Required
    };
    if let (Some(id), Auth::Open) = (identity, &auth) {
        let ip = peer.parse::<std::net::SocketAddr>().ok().map(|a| a.ip());
        match kafka.broker.authenticate_external(&id, ip) {
            Ok(u) => auth = Auth::Done(u.name),
            Err(e) => {
                tracing::info!(%peer, user = %id, error = %e, "Kafka SSL principal refused");
                return;
            }
        }
    }
    let (rd, wr) = tokio::io::split(stream);
    let max = kafka.config.max_request_bytes;
    let (tx, mut frames) = mpsc::channel::<Result<Bytes, BadSize>>(4);
    // Bytes held for this connection (`limits.connection_buffer_max_bytes`): requests
    // read and not yet answered, and the responses being written.
    let buffer = Arc::new(Buffered {
        limit: usize::try_from(
            kafka
                .broker
                .admission()
                .limits()
                .connection_buffer_max_bytes,
        )
        .unwrap_or(usize::MAX),
        held: AtomicUsize::new(0),
        over: Notify::new(),
    });
    let reader = tokio::spawn(read_frames(rd, max, buffer.clone(), tx));
    let mut out = BufWriter::with_capacity(64 << 10, wr);
    let mut state = ConnState {
        peer: peer.clone(),
        secure,
        client_id: String::new(),
        auth,
        handle: None,
        permit,
    };
    let mut stop = kafka.stopped();
    // Slowloris: the first request, and SASL when required, must complete in time.
    let handshake = tokio::time::sleep(std::time::Duration::from_millis(
        kafka.config.handshake_timeout_ms.max(1),
    ));
    tokio::pin!(handshake);
    let mut handshaking = true;
    let mut pending: FuturesOrdered<Answer> = FuturesOrdered::new();
    let mut close_requested = None;
    let limit = kafka.config.max_inflight_requests.max(1);
    // `kafka.connections_max_idle_ms` (Kafka's `connections.max.idle.ms`): no request and no
    // answer for that long, with nothing outstanding, closes the connection; so does an
    // answer the client does not take for that long. The timer is re-armed only when it
    // fires: activity just moves `last_active`.
    let idle_ms = kafka.config.connections_max_idle_ms;
    let idle = std::time::Duration::from_millis(idle_ms);
    let mut last_active = tokio::time::Instant::now();
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(idle_timer);
    let reason: String = 'conn: loop {
        let mut closed_rx = close_requested.take();
        tokio::select! {
            biased;
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    break 'conn "broker stopping".into();
                }
            }
            () = buffer.over.notified() => {
                break 'conn buffer.refuse(&kafka);
            }
            Some(first) = pending.next(), if !pending.is_empty() => {
                // Write this response and every one already done behind it, then flush: a
                // client that keeps its pipeline full must get its answers now, not when the
                // pipeline next drains (it may never, and the client's window fills up).
                let mut next = Some(first);
                let written = async {
                    while let Some((corr, hv, body, request_len)) = next.take() {
                        if let Some(body) = body {
                            if body.is_empty() {
                                return Err("a response did not encode".to_string());
                            }
                            let n = body.len();
                            buffer.held.fetch_add(n, Ordering::Relaxed);
                            let r = write_response(&mut out, corr, hv, &body).await;
                            buffer.held.fetch_sub(n, Ordering::Relaxed);
                            r.map_err(|e| format!("write failed: {e}"))?;
                        }
                        buffer.held.fetch_sub(request_len, Ordering::Relaxed);
                        if !pending.is_empty() {
                            next = pending.next().now_or_never().flatten();
                        }
                    }
                    out.flush().await.map_err(|e| format!("write failed: {e}"))
                };
                // A client that sends requests and does not read the answers: the reader
                // gives up on it (`over`) while this write waits.
                tokio::select! {
                    r = written => if let Err(why) = r {
                        break 'conn why;
                    },
                    () = buffer.over.notified() => break 'conn buffer.refuse(&kafka),
                    () = tokio::time::sleep(idle), if idle_ms > 0 => {
                        break 'conn format!("answers not read by the client for {idle_ms} ms (kafka.connections_max_idle_ms)");
                    }
                }
                last_active = tokio::time::Instant::now();
            }
            () = &mut idle_timer, if idle_ms > 0 && pending.is_empty() => {
                let due = last_active + idle;
                if tokio::time::Instant::now() >= due {
                    tracing::debug!(%peer, idle_ms, "closing idle Kafka connection");
                    break 'conn format!("idle for {idle_ms} ms (kafka.connections_max_idle_ms)");
                }
                idle_timer.as_mut().reset(due);
            }
            _ = wait_close(&mut closed_rx) => {
                break 'conn "closed by management".into();
            }
            () = &mut handshake, if handshaking => {
                kafka.broker.admission().refused(Limit::HandshakeTimeout, PROTOCOL);
                tracing::info!(%peer, "closing Kafka connection: handshake timeout");
                break 'conn "handshake timeout (first request or SASL not completed in time)".into();
            }
            frame = frames.recv(), if pending.len() < limit => {
                let frame = match frame {
                    None => break 'conn "client closed the connection".into(),
                    Some(Err(e)) => {
                        // Only a request over the limit is a size refusal; a negative or
                        // too-small size is a malformed frame.
                        if e.oversize {
                            kafka.broker.admission().refused(Limit::MessageSize, PROTOCOL);
                        }
                        break 'conn e.why;
                    }
                    Some(Ok(f)) => f,
                };
                let request_len = frame.len();
                last_active = tokio::time::Instant::now();
                match handle_frame(&kafka, &mut state, frame) {
                    Ok((corr, hv, fut)) => {
                        pending.push_back(Box::pin(async move { (corr, hv, fut.await, request_len) }));
                    }
                    Err(Close(why)) => break 'conn why,
                }
                handshaking = !matches!(state.auth, Auth::Open | Auth::Done(_));
                if closed_rx.is_none() {
                    closed_rx = state.handle.as_ref().map(|h| h.close_requested());
                }
            }
        }
        close_requested = closed_rx;
    };
    tracing::debug!(%peer, %reason, "Kafka connection closed");
    reader.abort();
    // A last answer (an error the loop queued) goes out if the client takes it soon; one that
    // does not read must not hold the connection, and its admission permit, open: without
    // this bound, a connection closed for unread answers waited here for ever.
    let _ = tokio::time::timeout(FINAL_WRITE_TIMEOUT, out.flush()).await;
    if let Some(h) = state.handle.take() {
        kafka.broker.unregister_connection(h.id);
    }
}

async fn wait_close(rx: &mut Option<tokio::sync::watch::Receiver<Option<String>>>) {
    match rx {
        Some(rx) => loop {
            if rx.borrow().is_some() {
                return;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        },
        None => std::future::pending().await,
    }
}

/// A request size prefix out of bounds: why, and whether it was over the limit (counted as
/// a size refusal) rather than malformed.
struct BadSize {
    why: String,
    oversize: bool,
}

/// What one connection holds in memory for its client, against
/// `limits.connection_buffer_max_bytes` (0 = unlimited).
struct Buffered {
    limit: usize,
    held: AtomicUsize,
    /// Raised by the reader when a request would take `held` past `limit`.
    over: Notify,
}

impl Buffered {
    /// Whether `n` more bytes fit; raises `over` when they don't.
    fn admit(&self, n: usize) -> bool {
        let held = self.held.fetch_add(n, Ordering::Relaxed) + n;
        if self.limit != 0 && held > self.limit {
            self.over.notify_one();
            return false;
        }
        true
    }

    /// Counts the refusal; the reason the connection closes (Kafka has no error for it).
    fn refuse(&self, kafka: &Kafka) -> String {
        kafka
            .broker
            .admission()
            .refused(Limit::ConnectionBuffer, PROTOCOL);
        let why = format!(
            "more than {} bytes of requests and answers held for a client that does not read its answers (limits.connection_buffer_max_bytes)",
            self.limit
        );
        tracing::info!(why, "closing Kafka connection");
        why
    }
}

/// Reads size-prefixed frames; the size is checked against `max` before the body is
/// read (and before any allocation for it), and against what the connection may still
/// hold (`buffer`).
async fn read_frames<R: AsyncRead + Unpin>(
    mut rd: R,
    max: usize,
    buffer: Arc<Buffered>,
    tx: mpsc::Sender<Result<Bytes, BadSize>>,
) {
    let mut rd = tokio::io::BufReader::with_capacity(64 << 10, &mut rd);
    loop {
        let mut len = [0u8; 4];
        if rd.read_exact(&mut len).await.is_err() {
            return;
        }
        let n = i32::from_be_bytes(len);
        let n = match usize::try_from(n) {
            Ok(n) if (8..=max).contains(&n) => n,
            _ => {
                let _ = tx
                    .send(Err(BadSize {
                        why: format!(
                            "request size {n} outside 8..={max} bytes (socket.request.max.bytes)"
                        ),
                        oversize: usize::try_from(n).is_ok_and(|n| n > max),
                    }))
                    .await;
                return;
            }
        };
        if !buffer.admit(n) {
            return;
        }
        // Read into spare capacity (no zero-fill of what the socket overwrites anyway).
        let mut buf = BytesMut::with_capacity(n);
        while buf.len() < n {
            let want = (n - buf.len()) as u64;
            match (&mut rd).take(want).read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        if tx.send(Ok(buf.freeze())).await.is_err() {
            return;
        }
    }
}

async fn write_response<W: AsyncWrite + Unpin>(
    out: &mut W,
    correlation_id: i32,
    header_version: i16,
    body: &Body,
) -> std::io::Result<()> {
    let mut head = BytesMut::with_capacity(16);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    if header.encode(&mut head, header_version).is_err() {
        return Err(std::io::Error::other("response header does not encode"));
    }
    let len = i32::try_from(head.len() + body.len())
        .map_err(|_| std::io::Error::other("response larger than 2 GiB"))?;
    out.write_all(&len.to_be_bytes()).await?;
    out.write_all(&head).await?;
    // Through the 64 KiB buffer: small parts are gathered, a part at least as large as the
    // buffer goes to the socket directly.
    for part in &body.0 {
        out.write_all(part).await?;
    }
    Ok(())
}

/// Decodes the header of one request and dispatches it. Returns the correlation id,
/// the response header version and the pending response.
fn handle_frame(
    kafka: &Arc<Kafka>,
    state: &mut ConnState,
    frame: Bytes,
) -> Result<(i32, i16, Pending), Close> {
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let Ok(api_key) = ApiKey::try_from(key) else {
        return Err(Close(format!("unknown API key {key}")));
    };
    let Some((min, max)) = api::supported(api_key) else {
        return Err(Close(format!("API {api_key:?} is not supported")));
    };
    if version < min || version > max {
        if api_key == ApiKey::ApiVersions {
            // KIP-511: answer in v0 with UNSUPPORTED_VERSION and what we support, so the
            // client can retry with a version we know.
            let body = api::api_versions_fallback();
            return Ok((
                correlation_id,
                0,
                Box::pin(async move { Some(Body::from(body)) }),
            ));
        }
        return Err(Close(format!(
            "{api_key:?} v{version} is not supported (v{min}..=v{max})"
        )));
    }
    let mut buf = frame;
    let header = RequestHeader::decode(&mut buf, api_key.request_header_version(version))
        .map_err(|e| Close(format!("malformed request header: {e}")))?;
    if let Some(c) = &header.client_id {
        if state.client_id.is_empty() {
            state.client_id = c.as_str().to_string();
        }
    }
    let hv = api_key.response_header_version(version);
    // SASL gate: until authenticated only the handshake APIs are allowed.
    let authenticated = matches!(state.auth, Auth::Open | Auth::Done(_));
    if !authenticated
        && !matches!(
            api_key,
            ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
        )
    {
        return Err(Close(format!(
            "{api_key:?} before SASL authentication completed"
        )));
    }
    if authenticated && state.handle.is_none() {
        register(kafka, state)?;
    }
    let pending = api::dispatch(kafka, state, api_key, version, &header, buf)?;
    Ok((correlation_id, hv, pending))
}

fn register(kafka: &Kafka, state: &mut ConnState) -> Result<(), Close> {
    let Some(user) = state.user(kafka) else {
        return Ok(());
    };
    // The per-user limit: Kafka has no error for it, so the connection is closed.
    if let Err(e) = state.permit.authenticated(&user) {
        return Err(Close(format!("connection refused: {e}")));
    }
    let info = ConnectionInfo {
        protocol: "kafka".into(),
        peer: state.peer.clone(),
        user,
        vhost: kafka.config.vhost.clone(),
    };
    match kafka.broker.register_connection(info) {
        Ok(h) => {
            state.handle = Some(h);
            Ok(())
        }
        Err(e) => {
            kafka
                .broker
                .admission()
                .refused(Limit::VhostConnections, PROTOCOL);
            Err(Close(format!("connection refused: {e}")))
        }
    }
}

/// Decodes a request body, closing the connection if it is malformed (as Kafka does).
pub(crate) fn decode<T: Decodable>(mut body: Bytes, version: i16) -> Result<T, Close> {
    T::decode(&mut body, version).map_err(|e| Close(format!("malformed request: {e}")))
}

/// Encodes a response body. A response that does not encode at its version is a FerryMQ
/// bug: it is logged and answered with an empty body, on which the connection is closed
/// (the client reconnects and retries instead of waiting for an answer forever).
pub(crate) fn encode<T: Encodable>(r: &T, version: i16) -> Option<Body> {
    let mut b = BytesMut::new();
    match r.encode(&mut b, version) {
        Ok(()) => Some(b.into()),
        Err(e) => {
            tracing::error!(error = %e, version, response = std::any::type_name::<T>(), "Kafka response does not encode");
            Some(Body::default())
        }
    }
}

/// A ready response.
pub(crate) fn ready(body: Option<Body>) -> Pending {
    Box::pin(async move { body })
}
