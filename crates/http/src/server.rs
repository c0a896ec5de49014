//! The router and the listener: every route in one table, and `serve` with graceful
//! shutdown (stop accepting, let requests finish, end long polls and sockets).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::serve::{IncomingStream, Listener};
use axum::Router;
use ferrymq_core::transport::Io;
use ferrymq_core::{Broker, BrokerConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admission::{AdmittingListener, HttpLimits};
use crate::error::ApiError;
use crate::state::AppState;
use crate::{
    admin, channels, entities, metrics, openapi, policies, publish, pull, sse, streams, ws,
};

/// Why the listener failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("http server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// Binds the listener (port 0 picks a free port; read it with `local_addr`).
///
/// # Errors
/// [`HttpError::Bind`] naming the address.
pub async fn bind(host: &str, port: u16) -> Result<TcpListener, HttpError> {
    let addr = format!("{host}:{port}");
    TcpListener::bind(&addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })
}

/// Slack over the largest message for JSON envelopes (base64 grows bodies by 4/3).
const BODY_SLACK_BYTES: u64 = 64 << 10;

/// The largest request body (and WebSocket message): a batch may hold many messages, so 4/3
/// of the largest message (base64) plus slack, at least 16 MiB, at most 1 GiB.
pub fn body_limit(config: &BrokerConfig) -> usize {
    let max = config.message_size_max_bytes;
    (max / 3 * 4 + BODY_SLACK_BYTES).clamp(16 << 20, 1 << 30) as usize
}

/// Reads the whole request body before routing, so that no answer (401, 404, 405, 415, …)
/// leaves an unread body on the connection. hyper closes an HTTP/1.1 connection whose request
/// body was not read — without `Connection: close`, so a keep-alive client that reuses it
/// sees "peer disconnected". A body over the limit is refused here with an explicit
/// `Connection: close`, since it is not drained.
async fn read_body_first(State(limit): State<usize>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return closing(too_large(limit));
    }
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        // `to_bytes` reports the limit as http-body-util's `LengthLimitError`.
        Err(e) if e.to_string().contains("length limit") => closing(too_large(limit)),
        Err(e) => closing(ApiError::bad_request(format!(
            "cannot read the request body: {e}"
        ))),
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("request bodies are limited to {limit} bytes"),
    )
}

fn closing(e: ApiError) -> Response {
    let mut r = e.into_response();
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let limit = body_limit(state.broker.config());
    Router::new()
        .route("/api/ws", get(ws::ws))
        .route("/api/queues/{vhost}/{name}/events", get(sse::queue_events))
        .route(
            "/api/exchanges/{vhost}/{name}/events",
            get(sse::exchange_events),
        )
        .route("/health/live", get(metrics::live))
        .route("/health/ready", get(metrics::ready))
        .route("/metrics", get(metrics::metrics))
        .route("/api/openapi.json", get(openapi::serve))
        .route("/api/whoami", get(admin::whoami))
        .route("/api/overview", get(admin::overview))
        .route("/api/tokens", post(admin::issue_token))
        .route("/api/tokens/current", delete(admin::revoke_token))
        .route("/api/vhosts", get(admin::list_vhosts))
        .route(
            "/api/vhosts/{vhost}",
            get(admin::get_vhost)
                .put(admin::put_vhost)
                .delete(admin::delete_vhost),
        )
        .route("/api/users", get(admin::list_users))
        .route(
            "/api/users/{name}",
            get(admin::get_user)
                .put(admin::put_user)
                .delete(admin::delete_user),
        )
        .route("/api/permissions", get(admin::list_permissions))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(admin::get_permission)
                .put(admin::put_permission)
                .delete(admin::delete_permission),
        )
        .route("/api/topic-permissions", get(admin::list_topic_permissions))
        .route(
            "/api/topic-permissions/{vhost}",
            get(admin::list_vhost_topic_permissions),
        )
        .route(
            "/api/topic-permissions/{vhost}/{user}",
            get(admin::get_topic_permissions)
                .put(admin::put_topic_permission)
                .delete(admin::delete_topic_permissions),
        )
        .route("/api/connections", get(admin::list_connections))
        .route(
            "/api/connections/{id}",
            get(admin::get_connection).delete(admin::close_connection),
        )
        .route(
            "/api/connections/{id}/channels",
            get(channels::list_connection_channels),
        )
        .route("/api/channels", get(channels::list_channels))
        .route(
            "/api/vhosts/{vhost}/channels",
            get(channels::list_vhost_channels),
        )
        .route("/api/consumers", get(channels::list_consumers))
        .route(
            "/api/consumers/{vhost}",
            get(channels::list_vhost_consumers),
        )
        .route(
            "/api/definitions",
            get(admin::export_definitions).post(admin::import_definitions),
        )
        .route("/api/exchanges", get(entities::list_exchanges))
        .route(
            "/api/exchanges/{vhost}",
            get(entities::list_vhost_exchanges),
        )
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(entities::get_exchange)
                .put(entities::put_exchange)
                .delete(entities::delete_exchange),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/publish",
            post(publish::exchange_publish),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/publish/batch",
            post(publish::exchange_publish_batch),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/messages",
            post(publish::exchange_publish_raw),
        )
        .route("/api/queues", get(entities::list_queues))
        .route("/api/queues/{vhost}", get(entities::list_vhost_queues))
        .route(
            "/api/queues/{vhost}/{name}",
            get(entities::get_queue)
                .put(entities::put_queue)
                .delete(entities::delete_queue),
        )
        .route(
            "/api/queues/{vhost}/{name}/contents",
            delete(entities::purge_queue),
        )
        .route(
            "/api/queues/{vhost}/{name}/browse",
            get(entities::browse_queue),
        )
        .route(
            "/api/queues/{vhost}/{name}/move",
            post(entities::move_messages),
        )
        .route(
            "/api/queues/{vhost}/{name}/publish",
            post(publish::queue_publish),
        )
        .route(
            "/api/queues/{vhost}/{name}/publish/batch",
            post(publish::queue_publish_batch),
        )
        .route(
            "/api/queues/{vhost}/{name}/messages",
            post(publish::queue_publish_raw),
        )
        .route("/api/queues/{vhost}/{name}/get", post(pull::pull))
        .route("/api/queues/{vhost}/{name}/ack", post(pull::ack))
        .route("/api/queues/{vhost}/{name}/nack", post(pull::nack))
        .route("/api/queues/{vhost}/{name}/extend", post(pull::extend))
        .route("/api/streams", get(entities::list_streams))
        .route("/api/streams/{vhost}", get(entities::list_vhost_streams))
        .route(
            "/api/streams/{vhost}/{name}",
            get(entities::get_stream)
                .put(entities::put_stream)
                .delete(entities::delete_stream),
        )
        .route("/api/streams/{vhost}/{name}/messages", get(streams::read))
        .route(
            "/api/streams/{vhost}/{name}/offsets/{group}",
            get(streams::get_offset).put(streams::commit_offset),
        )
        .route("/api/policies", get(policies::list_policies))
        .route("/api/policies/{vhost}", get(policies::list_vhost_policies))
        .route(
            "/api/policies/{vhost}/{name}",
            get(policies::get_policy)
                .put(policies::put_policy)
                .delete(policies::delete_policy),
        )
        .route("/api/bindings", get(entities::list_bindings))
        .route("/api/bindings/{vhost}", get(entities::list_vhost_bindings))
        .route(
            "/api/bindings/{vhost}/e/{source}/{dtype}/{destination}",
            post(entities::create_binding).delete(entities::delete_binding),
        )
        .fallback(|| async { ApiError::not_found("no such route; see /api/openapi.json") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this path; see /api/openapi.json",
            )
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(limit, read_body_first))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` resolves, then stops accepting, ends long
/// polls and sockets, and waits for in-flight requests.
///
/// # Errors
/// [`HttpError::Serve`] when accepting fails fatally.
///
/// # Cancel safety
/// Not cancel safe: dropping the future drops open connections.
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    serve_with_routes(
        listener,
        broker,
        Router::new(),
        HttpLimits::default(),
        shutdown,
    )
    .await
}

/// Who is at the other end of an HTTP connection: its address and, over HTTPS with a
/// verified client certificate, the certificate's common name.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub identity: Option<String>,
}

/// A request's verified client-certificate name (set only by a TLS listener); a request
/// without credentials authenticates as it.
#[derive(Debug, Clone)]
pub struct ClientIdentity(pub String);

impl Connected<IncomingStream<'_, AdmittingListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, AdmittingListener>) -> Self {
        stream.remote_addr().clone()
    }
}

impl Connected<IncomingStream<'_, SecuredListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, SecuredListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// A listener fed with connections secured elsewhere (the server's TLS acceptor does the
/// handshakes concurrently, each bounded, and sends the finished ones here), so that a slow
/// handshake never holds up the accept loop.
pub struct SecuredListener {
    incoming: tokio::sync::mpsc::Receiver<(Box<dyn Io>, Peer)>,
    local: SocketAddr,
}

impl SecuredListener {
    /// A listener on `local` that serves what arrives on `incoming`.
    pub fn new(
        incoming: tokio::sync::mpsc::Receiver<(Box<dyn Io>, Peer)>,
        local: SocketAddr,
    ) -> SecuredListener {
        SecuredListener { incoming, local }
    }
}

impl Listener for SecuredListener {
    type Io = Box<dyn Io>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Peer) {
        match self.incoming.recv().await {
            Some(conn) => conn,
            // The acceptor ended (shutdown): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Peer> {
        Ok(Peer {
            addr: self.local,
            identity: None,
        })
    }
}

/// Exposes the connection's address as `ConnectInfo<SocketAddr>` (what handlers read) and its
/// verified identity as [`ClientIdentity`].
async fn peer_extensions(mut req: Request, next: Next) -> Response {
    if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<Peer>>().cloned() {
        req.extensions_mut().insert(ConnectInfo(peer.addr));
        if let Some(id) = peer.identity {
            req.extensions_mut().insert(ClientIdentity(id));
        }
    }
    next.run(req).await
}

/// [`serve`] with extra routes merged into the router: how the server crate mounts
/// endpoints of other adapters (MQTT over WebSocket at `/mqtt`) without this crate
/// depending on them. `extra` must not set a fallback or reuse a path of [`router`].
///
/// # Errors
/// As [`serve`].
///
/// # Cancel safety
/// Not cancel safe: dropping the future drops open connections.
pub async fn serve_with_routes(
    listener: TcpListener,
    broker: Arc<Broker>,
    extra: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    let listener = AdmittingListener::new(listener, broker.clone(), limits);
    serve_listener(listener, broker, extra, limits, shutdown).await
}

/// [`serve_with_routes`] on connections secured by the caller (HTTPS): each comes with its
/// [`Peer`], whose identity (a verified client certificate's name) authenticates requests
/// that carry no credentials.
///
/// # Errors
/// As [`serve`].
///
/// # Cancel safety
/// Not cancel safe: dropping the future drops open connections.
pub async fn serve_secured(
    listener: SecuredListener,
    broker: Arc<Broker>,
    extra: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    serve_listener(listener, broker, extra, limits, shutdown).await
}

async fn serve_listener<L>(
    listener: L,
    broker: Arc<Broker>,
    extra: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError>
where
    L: Listener<Addr = Peer>,
    Peer: for<'a> Connected<IncomingStream<'a, L>>,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let state = AppState::new(broker.clone(), stop_rx.clone(), limits);
    let reaper = tokio::spawn(state.leases.clone().run_reaper(stop_rx.clone()));
    let sampler = tokio::spawn(state.rates.clone().run(broker, stop_rx));
    let app = router(state)
        .merge(extra)
        .layer(middleware::from_fn(peer_extensions))
        .into_make_service_with_connect_info::<Peer>();
    let signal = async move {
        shutdown.await;
        stop_tx.send_replace(true);
    };
    let r = axum::serve(listener, app)
        .with_graceful_shutdown(signal)
        .await
        .map_err(HttpError::Serve);
    let _ = reaper.await;
    let _ = sampler.await;
    r
}
