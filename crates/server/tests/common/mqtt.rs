//! A raw-socket MQTT test client built on the codec (no client library).
#![allow(dead_code)] // each test file uses a different subset

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferrymq_mqtt_codec::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub const WAIT: Duration = Duration::from_secs(30);

/// Over TCP by default; any byte stream (a TLS session) with [`Client::connect_over`].
pub struct Client<S = TcpStream> {
    pub s: S,
    pub buf: BytesMut,
    pub v: ProtocolVersion,
}

pub fn connect_packet(v: ProtocolVersion, id: &str, clean: bool) -> Connect {
    Connect {
        protocol_version: v,
        clean_start: clean,
        keep_alive: 0,
        client_id: id.into(),
        ..Connect::default()
    }
}

impl Client {
    /// Connects and returns the client with its CONNACK.
    pub async fn connect(addr: SocketAddr, c: Connect) -> (Client, Connack) {
        let s = TcpStream::connect(addr).await.expect("tcp connect");
        Client::connect_over(s, c).await
    }

    pub async fn v311(addr: SocketAddr, id: &str, clean: bool) -> Client {
        let (c, a) = Self::connect(addr, connect_packet(ProtocolVersion::V3_1_1, id, clean)).await;
        assert_eq!(a.reason_code, ReasonCode::SUCCESS);
        c
    }

    pub async fn v5(addr: SocketAddr, id: &str, clean: bool) -> Client {
        let (c, a) = Self::connect(addr, connect_packet(ProtocolVersion::V5, id, clean)).await;
        assert_eq!(a.reason_code, ReasonCode::SUCCESS);
        c
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Sends CONNECT over an established stream and returns the client with its CONNACK.
    pub async fn connect_over(s: S, c: Connect) -> (Client<S>, Connack) {
        let v = c.protocol_version;
        let mut cl = Client {
            s,
            buf: BytesMut::new(),
            v,
        };
        cl.send(Packet::Connect(Box::new(c))).await;
        match cl.recv().await {
            Packet::Connack(a) => (cl, a),
            p => panic!("expected CONNACK, got {p:?}"),
        }
    }

    pub async fn send(&mut self, p: Packet) {
        let mut out = BytesMut::new();
        p.encode(self.v, &mut out).expect("encode");
        self.s.write_all(&out).await.expect("write");
    }

    pub async fn send_raw(&mut self, b: &[u8]) {
        self.s.write_all(b).await.expect("write");
    }

    /// The next packet, or None if the server closed the connection (within `WAIT`).
    pub async fn next(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(p) = decode(&mut self.buf, self.v, PROTOCOL_MAX_PACKET_SIZE)
                    .expect("server sent a malformed packet")
                {
                    return Some(p);
                }
                match self.s.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("a packet or close in time")
    }

    pub async fn recv(&mut self) -> Packet {
        self.next().await.expect("connection open")
    }

    /// The next packet if one arrives within `d`.
    pub async fn next_within(&mut self, d: Duration) -> Option<Packet> {
        tokio::time::timeout(d, self.next()).await.ok().flatten()
    }

    /// Nothing arrives within `d` (a short negative check).
    pub async fn quiet(&mut self, d: Duration) -> bool {
        tokio::time::timeout(d, self.next()).await.is_err()
    }

    pub async fn subscribe(&mut self, pid: u16, filter: &str, qos: QoS) -> Suback {
        self.subscribe_opts(
            pid,
            filter,
            SubscriptionOptions::qos(qos),
            Properties::default(),
        )
        .await
    }

    pub async fn subscribe_opts(
        &mut self,
        pid: u16,
        filter: &str,
        options: SubscriptionOptions,
        properties: Properties,
    ) -> Suback {
        self.send(Packet::Subscribe(Subscribe {
            packet_id: pid,
            properties,
            subscriptions: vec![Subscription {
                filter: filter.into(),
                options,
            }],
        }))
        .await;
        match self.recv().await {
            Packet::Suback(s) => {
                assert_eq!(s.packet_id, pid);
                s
            }
            p => panic!("expected SUBACK, got {p:?}"),
        }
    }

    /// Publishes and completes the QoS flow.
    pub async fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS, retain: bool, pid: u16) {
        self.publish_props(topic, payload, qos, retain, pid, Properties::default())
            .await
    }

    pub async fn publish_props(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        pid: u16,
        properties: Properties,
    ) {
        self.send(Packet::Publish(Publish {
            dup: false,
            qos,
            retain,
            topic: topic.into(),
            packet_id: (qos != QoS::AtMostOnce).then_some(pid),
            properties,
            payload: Bytes::copy_from_slice(payload),
        }))
        .await;
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => match self.recv().await {
                Packet::Puback(a) => assert_eq!(a.packet_id, pid),
                p => panic!("expected PUBACK, got {p:?}"),
            },
            QoS::ExactlyOnce => {
                match self.recv().await {
                    Packet::Pubrec(a) => assert_eq!(a.packet_id, pid),
                    p => panic!("expected PUBREC, got {p:?}"),
                }
                self.send(Packet::Pubrel(PubResponse::new(pid))).await;
                match self.recv().await {
                    Packet::Pubcomp(a) => assert_eq!(a.packet_id, pid),
                    p => panic!("expected PUBCOMP, got {p:?}"),
                }
            }
        }
    }

    /// The next PUBLISH, acknowledged as its QoS requires.
    pub async fn expect_publish(&mut self) -> Publish {
        let p = match self.recv().await {
            Packet::Publish(p) => p,
            p => panic!("expected PUBLISH, got {p:?}"),
        };
        self.ack(&p).await;
        p
    }

    pub async fn ack(&mut self, p: &Publish) {
        match (p.qos, p.packet_id) {
            (QoS::AtLeastOnce, Some(id)) => self.send(Packet::Puback(PubResponse::new(id))).await,
            (QoS::ExactlyOnce, Some(id)) => {
                self.send(Packet::Pubrec(PubResponse::new(id))).await;
                match self.recv().await {
                    Packet::Pubrel(r) => assert_eq!(r.packet_id, id),
                    p => panic!("expected PUBREL, got {p:?}"),
                }
                self.send(Packet::Pubcomp(PubResponse::new(id))).await;
            }
            _ => {}
        }
    }

    /// A round trip: everything sent before is handled by the server.
    pub async fn ping(&mut self) {
        self.send(Packet::Pingreq).await;
        match self.recv().await {
            Packet::Pingresp => {}
            p => panic!("expected PINGRESP, got {p:?}"),
        }
    }

    pub async fn disconnect(mut self) {
        self.send(Packet::Disconnect(Disconnect::default())).await;
        let _ = self.s.shutdown().await;
        // Wait until the server closed its side: the session is released.
        let mut b = [0u8; 64];
        let _ = tokio::time::timeout(WAIT, async {
            while let Ok(n) = self.s.read(&mut b).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }
}
