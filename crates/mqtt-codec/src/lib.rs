//! FerryMQ's MQTT 3.1 / 3.1.1 / 5.0 codec: bytes in, typed control packets out, and back.
//!
//! Pure: no sockets, no async runtime, no broker types. The MQTT adapter owns the buffers,
//! the sessions and the protocol state, and calls [`decode_connect`] (first packet, version
//! not known yet), then [`decode`] with the negotiated [`ProtocolVersion`], and
//! [`Packet::encode`].
//!
//! ```
//! use bytes::BytesMut;
//! use ferrymq_mqtt_codec::{decode, Packet, ProtocolVersion, PROTOCOL_MAX_PACKET_SIZE};
//!
//! let mut buf = BytesMut::from(&[0xC0u8, 0x00][..]); // PINGREQ
//! let packet = decode(&mut buf, ProtocolVersion::V3_1_1, PROTOCOL_MAX_PACKET_SIZE).unwrap();
//! assert_eq!(packet, Some(Packet::Pingreq));
//! let mut out = BytesMut::new();
//! Packet::Pingresp.encode(ProtocolVersion::V3_1_1, &mut out).unwrap();
//! assert_eq!(&out[..], [0xD0, 0x00]);
//! ```
//!
//! A server's read loop, sketched:
//!
//! ```
//! use bytes::BytesMut;
//! use ferrymq_mqtt_codec::*;
//!
//! let mut out = BytesMut::new();
//! let connect = Connect { protocol_version: ProtocolVersion::V5, ..Connect::default() };
//! Packet::from(connect).encode(ProtocolVersion::V5, &mut out).unwrap();
//! let publish = Publish {
//!     qos: QoS::AtLeastOnce,
//!     topic: "sensors/1".into(),
//!     packet_id: Some(1),
//!     payload: bytes::Bytes::from_static(b"21.5"),
//!     ..Publish::default()
//! };
//! Packet::from(publish).encode(ProtocolVersion::V5, &mut out).unwrap();
//!
//! let mut buf = out; // as read from the socket
//! let max = 1 << 20;
//! let connect = decode_connect(&mut buf, max).unwrap().expect("whole CONNECT");
//! let version = connect.protocol_version;
//! while let Some(packet) = decode(&mut buf, version, max).unwrap_or_else(|e| {
//!     // v5: send DISCONNECT with e.reason_code(), then close.
//!     panic!("{e}: {}", e.reason_code())
//! }) {
//!     if let Packet::Publish(p) = packet {
//!         assert!(topic_matches("sensors/+", &p.topic));
//!         let ack = PubResponse::new(p.packet_id.unwrap());
//!         Packet::Puback(ack).encode(version, &mut BytesMut::new()).unwrap();
//!     }
//! }
//! ```
//!
//! Layers, bottom up (one file each):
//! - `wire`: variable byte integers, a bounds-checked reader, string and binary writers.
//! - `reason`: [`ReasonCode`] (MQTT 5) with each packet's allowed set, [`ConnectReturnCode`]
//!   (MQTT 3).
//! - `properties`: [`Properties`], every MQTT 5 property, checked per [`PropertyContext`].
//! - `packet`: [`Packet`] and one struct per packet kind, with their layouts.
//! - `codec`: the fixed header, [`decode`] / [`decode_slice`] / [`decode_connect`],
//!   [`Packet::encode`].
//! - `topic`: topic name / filter validation, `$share` parsing, [`topic_matches`].
//! - `error`: [`Error`] and its MQTT 5 reason code.
//!
//! Architecture invariants:
//! - Decoding never panics, whatever the input; "need more bytes" (`Ok(None)`) is kept apart
//!   from "malformed" (`Err`).
//! - The packet size is checked against `max_packet_size` from the fixed header alone,
//!   before the rest of the packet is waited for; every length inside a packet is checked
//!   against the bytes present before anything is sliced or allocated.
//! - Encoding checks what decoding checks: whatever encodes decodes to the same packet.

mod codec;
mod error;
mod packet;
mod properties;
mod reason;
mod topic;
mod wire;

pub use codec::{
    decode, decode_connect, decode_fixed_header, decode_slice, FixedHeader,
    PROTOCOL_MAX_PACKET_SIZE,
};
pub use error::Error;
pub use packet::{
    Auth, Connack, Connect, Disconnect, Packet, PacketType, ProtocolVersion, PubResponse, Publish,
    QoS, RetainHandling, Suback, Subscribe, Subscription, SubscriptionOptions, Unsuback,
    Unsubscribe, Will,
};
pub use properties::{id as property_id, Properties, PropertyContext};
pub use reason::{ConnectReturnCode, ReasonCode, ReasonCodeContext};
pub use topic::{
    parse_shared_subscription, topic_matches, validate_topic_filter, validate_topic_name,
    SharedSubscription, TopicError, SHARED_PREFIX,
};
pub use wire::{encode_remaining_length, STRING_LEN_MAX, VAR_INT_MAX};
