//! MQTT over WebSocket: the `/mqtt` route mounted on the HTTP listener (subprotocol `mqtt`),
//! and the shim that turns WebSocket binary messages into the byte stream the MQTT
//! adapter's generic connection driver reads and writes.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::ConnectInfo;
use axum::response::Response;
use axum::routing::get;
use axum::Extension;
use axum::Router;
use ferrymq_http::ClientIdentity;
use ferrymq_mqtt::Mqtt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes buffered between the socket and the driver in each direction.
const PIPE_BYTES: usize = 64 * 1024;

/// The `/mqtt` route; `max_message` bounds one WebSocket message (the MQTT packet limit is
/// the driver's).
pub fn routes(mqtt: Arc<Mqtt>, max_message: usize) -> Router {
    Router::new().route(
        "/mqtt",
        get(
            move |ws: WebSocketUpgrade,
                  ConnectInfo(peer): ConnectInfo<SocketAddr>,
                  identity: Option<Extension<ClientIdentity>>| async move {
                let identity = identity.map(|Extension(ClientIdentity(id))| id);
                upgrade(ws, peer, identity, mqtt, max_message)
            },
        ),
    )
}

fn upgrade(
    ws: WebSocketUpgrade,
    peer: SocketAddr,
    identity: Option<String>,
    mqtt: Arc<Mqtt>,
    max: usize,
) -> Response {
    // "mqttv3.1" is what older Paho JavaScript clients ask for (Mosquitto accepts both).
    ws.protocols(["mqtt", "mqttv3.1"])
        .max_message_size(max)
        .on_upgrade(move |socket| bridge(socket, peer, identity, mqtt))
}

/// Pumps bytes between the WebSocket and an in-memory pipe whose other end is an MQTT
/// connection, until either side ends. Over HTTPS, `identity` is the verified client
/// certificate's name (a CONNECT without a user name logs in as it).
async fn bridge(
    mut socket: WebSocket,
    peer: SocketAddr,
    identity: Option<String>,
    mqtt: Arc<Mqtt>,
) {
    let (mut pipe, driver_end) = tokio::io::duplex(PIPE_BYTES);
    let conn = tokio::spawn(mqtt.serve_secured(driver_end, format!("ws:{peer}"), identity, None));
    let mut buf = vec![0u8; PIPE_BYTES];
    loop {
        tokio::select! {
            msg = socket.recv() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    if pipe.write_all(&b).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                // MQTT over WebSocket is binary only (MQTT 5 §6).
                Some(Ok(Message::Text(_))) | Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
            },
            n = pipe.read(&mut buf) => match n {
                Ok(0) | Err(_) => {
                    let _ = socket.send(Message::Close(None)).await;
                    break;
                }
                Ok(n) => {
                    let data = bytes::Bytes::copy_from_slice(&buf[..n]);
                    if socket.send(Message::Binary(data)).await.is_err() {
                        break;
                    }
                }
            },
        }
    }
    // Closing our end ends the driver's reads; it then cleans its session up.
    drop(pipe);
    let _ = conn.await;
}
