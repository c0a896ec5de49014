//! The control packets: [`Packet`] and one struct per packet kind, the protocol version and
//! QoS types, and the variable header + payload layout of each (the fixed header is in
//! `codec`).

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::Error;
use crate::properties::{Properties, PropertyContext};
use crate::reason::{ConnectReturnCode, ReasonCode, ReasonCodeContext};
use crate::topic::{validate_topic_name, SHARED_PREFIX};
use crate::wire::{put_binary, put_string, Reader};

type Result<T> = std::result::Result<T, Error>;

/// The protocol level a CONNECT asks for; it decides the layout of every later packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum ProtocolVersion {
    /// MQTT 3.1: protocol name "MQIsdp", level 3. Decoded and encoded like 3.1.1.
    V3_1 = 3,
    /// MQTT 3.1.1: protocol name "MQTT", level 4.
    V3_1_1 = 4,
    /// MQTT 5.0: protocol name "MQTT", level 5.
    V5 = 5,
}

impl ProtocolVersion {
    /// The protocol level byte of CONNECT.
    pub fn level(self) -> u8 {
        self as u8
    }

    /// The protocol name of CONNECT.
    pub fn protocol_name(self) -> &'static str {
        match self {
            ProtocolVersion::V3_1 => "MQIsdp",
            ProtocolVersion::V3_1_1 | ProtocolVersion::V5 => "MQTT",
        }
    }

    /// True for MQTT 5 (properties, reason codes, AUTH).
    pub fn is_v5(self) -> bool {
        self == ProtocolVersion::V5
    }

    /// The version for a CONNECT's protocol name and level.
    ///
    /// # Errors
    /// `InvalidProtocolName` for a name other than "MQTT" / "MQIsdp";
    /// `UnsupportedProtocolVersion` for a level the name does not go with.
    pub fn from_name_and_level(name: &str, level: u8) -> Result<ProtocolVersion> {
        match (name, level) {
            ("MQTT", 4) => Ok(ProtocolVersion::V3_1_1),
            ("MQTT", 5) => Ok(ProtocolVersion::V5),
            ("MQIsdp", 3) => Ok(ProtocolVersion::V3_1),
            ("MQTT" | "MQIsdp", _) => Err(Error::UnsupportedProtocolVersion(level)),
            _ => Err(Error::InvalidProtocolName),
        }
    }
}

/// Quality of service level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum QoS {
    /// 0: at most once.
    #[default]
    AtMostOnce = 0,
    /// 1: at least once.
    AtLeastOnce = 1,
    /// 2: exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for 0, 1, 2; `None` for anything else (3 is a malformed packet on the wire).
    pub fn from_u8(value: u8) -> Option<QoS> {
        match value {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

impl TryFrom<u8> for QoS {
    type Error = Error;
    fn try_from(value: u8) -> Result<QoS> {
        QoS::from_u8(value).ok_or(Error::InvalidQos)
    }
}

/// The control packet type: the high nibble of the first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    Connect = 1,
    Connack = 2,
    Publish = 3,
    Puback = 4,
    Pubrec = 5,
    Pubrel = 6,
    Pubcomp = 7,
    Subscribe = 8,
    Suback = 9,
    Unsubscribe = 10,
    Unsuback = 11,
    Pingreq = 12,
    Pingresp = 13,
    Disconnect = 14,
    /// MQTT 5 only.
    Auth = 15,
}

impl PacketType {
    /// The type for a nibble value; `None` for 0 (reserved) and values above 15.
    pub fn from_u8(value: u8) -> Option<PacketType> {
        use PacketType::*;
        Some(match value {
            1 => Connect,
            2 => Connack,
            3 => Publish,
            4 => Puback,
            5 => Pubrec,
            6 => Pubrel,
            7 => Pubcomp,
            8 => Subscribe,
            9 => Suback,
            10 => Unsubscribe,
            11 => Unsuback,
            12 => Pingreq,
            13 => Pingresp,
            14 => Disconnect,
            15 => Auth,
            _ => return None,
        })
    }

    /// The spec's name in capitals ("CONNECT", "PUBLISH", ...).
    pub fn name(self) -> &'static str {
        use PacketType::*;
        match self {
            Connect => "CONNECT",
            Connack => "CONNACK",
            Publish => "PUBLISH",
            Puback => "PUBACK",
            Pubrec => "PUBREC",
            Pubrel => "PUBREL",
            Pubcomp => "PUBCOMP",
            Subscribe => "SUBSCRIBE",
            Suback => "SUBACK",
            Unsubscribe => "UNSUBSCRIBE",
            Unsuback => "UNSUBACK",
            Pingreq => "PINGREQ",
            Pingresp => "PINGRESP",
            Disconnect => "DISCONNECT",
            Auth => "AUTH",
        }
    }
}

/// A will message, from CONNECT's payload.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Will {
    /// A topic name: non-empty, no wildcards.
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 will properties ([`PropertyContext::Will`]); empty for MQTT 3.
    pub properties: Properties,
}

/// CONNECT: the first packet of a connection. Self-describing: its protocol name and level
/// give [`Connect::protocol_version`], and the codec reads and writes it by that version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol_version: ProtocolVersion,
    /// Clean Session (MQTT 3) / Clean Start (MQTT 5).
    pub clean_start: bool,
    /// Seconds; 0 turns keep alive off.
    pub keep_alive: u16,
    /// May be empty (the server then assigns one, or refuses).
    pub client_id: String,
    pub will: Option<Will>,
    pub username: Option<String>,
    /// Binary data. MQTT 3 allows a password only together with a user name.
    pub password: Option<Bytes>,
    /// MQTT 5 ([`PropertyContext::Connect`]); empty for MQTT 3.
    pub properties: Properties,
}

impl Default for Connect {
    fn default() -> Self {
        Connect {
            protocol_version: ProtocolVersion::V5,
            clean_start: true,
            keep_alive: 60,
            client_id: String::new(),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        }
    }
}

/// CONNACK.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Connack {
    /// Must be false when `reason_code` is a failure. MQTT 3.1 has no such flag: it is
    /// written as 0 and decodes as false.
    pub session_present: bool,
    /// MQTT 5 reason code. For MQTT 3 it travels as a [`ConnectReturnCode`]: on encode
    /// through [`ConnectReturnCode::from_reason_code`] (lossy for codes without a v3
    /// counterpart), on decode through [`ConnectReturnCode::reason_code`].
    pub reason_code: ReasonCode,
    /// MQTT 5 ([`PropertyContext::Connack`]).
    pub properties: Properties,
}

/// PUBLISH. The payload is zero-copy: it shares the decoded buffer's memory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Publish {
    /// Must be false for QoS 0.
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// No wildcards; may be empty in MQTT 5 only when a topic alias is set.
    pub topic: String,
    /// `Some` (non-zero) exactly when `qos` is 1 or 2.
    pub packet_id: Option<u16>,
    /// MQTT 5 ([`PropertyContext::Publish`]).
    pub properties: Properties,
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP: the QoS 1 / 2 acknowledgements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubResponse {
    /// Non-zero.
    pub packet_id: u16,
    /// MQTT 5; written only when not Success or when there are properties (the short form
    /// of remaining length 2 otherwise). Ignored for MQTT 3, which decodes as Success.
    pub reason_code: ReasonCode,
    /// MQTT 5 (reason string and user properties).
    pub properties: Properties,
}

impl PubResponse {
    /// A Success response without properties.
    pub fn new(packet_id: u16) -> Self {
        PubResponse {
            packet_id,
            reason_code: ReasonCode::SUCCESS,
            properties: Properties::default(),
        }
    }
}

/// What to do with retained messages when a subscription is made (MQTT 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum RetainHandling {
    /// 0: send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// 1: send them only if the subscription does not already exist.
    SendAtSubscribeIfNew = 1,
    /// 2: do not send them.
    DoNotSend = 2,
}

/// The subscription options byte (MQTT 5 §3.8.3.1); MQTT 3 has only the QoS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS.
    pub qos: QoS,
    /// MQTT 5: do not forward the connection's own publications.
    pub no_local: bool,
    /// MQTT 5: keep the RETAIN flag as published.
    pub retain_as_published: bool,
    /// MQTT 5.
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    /// Options with this QoS and MQTT 5's defaults for the rest.
    pub fn qos(qos: QoS) -> Self {
        SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        }
    }
}

/// One topic filter of a SUBSCRIBE with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// As sent: not validated by the codec (an invalid filter gets its own failure code in
    /// SUBACK); see [`crate::validate_topic_filter`] and [`crate::parse_shared_subscription`].
    pub filter: String,
    pub options: SubscriptionOptions,
}

/// SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Non-zero.
    pub packet_id: u16,
    /// MQTT 5: at most one subscription identifier, and user properties.
    pub properties: Properties,
    /// At least one.
    pub subscriptions: Vec<Subscription>,
}

/// SUBACK: one reason code per subscription, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suback {
    pub packet_id: u16,
    pub properties: Properties,
    /// At least one. MQTT 3 has only Granted QoS 0/1/2 and 0x80 (every MQTT 5 failure code
    /// is written as 0x80 for MQTT 3, and 0x80 decodes as Unspecified error).
    pub reason_codes: Vec<ReasonCode>,
}

/// UNSUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    /// MQTT 5: user properties only.
    pub properties: Properties,
    /// At least one; as sent, not validated.
    pub filters: Vec<String>,
}

/// UNSUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsuback {
    pub packet_id: u16,
    pub properties: Properties,
    /// MQTT 5: one per filter of the UNSUBSCRIBE. MQTT 3 has none: ignored on encode and
    /// empty on decode.
    pub reason_codes: Vec<ReasonCode>,
}

/// DISCONNECT. For MQTT 3 it has no content: the reason code and properties are ignored on
/// encode and default on decode.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    pub reason_code: ReasonCode,
    pub properties: Properties,
}

/// AUTH (MQTT 5 only).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    pub reason_code: ReasonCode,
    pub properties: Properties,
}

/// Any MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// Boxed: with two property blocks it is by far the largest, and comes once per
    /// connection.
    Connect(Box<Connect>),
    Connack(Connack),
    Publish(Publish),
    Puback(PubResponse),
    Pubrec(PubResponse),
    Pubrel(PubResponse),
    Pubcomp(PubResponse),
    Subscribe(Subscribe),
    Suback(Suback),
    Unsubscribe(Unsubscribe),
    Unsuback(Unsuback),
    Pingreq,
    Pingresp,
    Disconnect(Disconnect),
    Auth(Auth),
}

impl Packet {
    /// This packet's type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::Connack(_) => PacketType::Connack,
            Packet::Publish(_) => PacketType::Publish,
            Packet::Puback(_) => PacketType::Puback,
            Packet::Pubrec(_) => PacketType::Pubrec,
            Packet::Pubrel(_) => PacketType::Pubrel,
            Packet::Pubcomp(_) => PacketType::Pubcomp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::Suback(_) => PacketType::Suback,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::Unsuback(_) => PacketType::Unsuback,
            Packet::Pingreq => PacketType::Pingreq,
            Packet::Pingresp => PacketType::Pingresp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }

    /// The fixed header's low nibble for this packet.
    pub(crate) fn flags(&self) -> u8 {
        match self {
            Packet::Publish(p) => {
                (u8::from(p.dup) << 3) | ((p.qos as u8) << 1) | u8::from(p.retain)
            }
            Packet::Pubrel(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => 0b0010,
            _ => 0,
        }
    }

    /// Writes the variable header and payload into `b`. A PUBLISH payload is returned
    /// instead of copied, for the caller to write after the fixed header.
    pub(crate) fn encode_body<'a>(
        &'a self,
        version: ProtocolVersion,
        b: &mut BytesMut,
    ) -> Result<Option<&'a Bytes>> {
        let v5 = version.is_v5();
        match self {
            Packet::Connect(c) => c.write(b)?,
            Packet::Connack(c) => {
                if c.session_present && c.reason_code.is_error() {
                    return Err(Error::Protocol(
                        "session present with a failure reason code",
                    ));
                }
                // MQTT 3.1 has no Session Present flag (the byte is reserved).
                b.put_u8(u8::from(
                    c.session_present && version != ProtocolVersion::V3_1,
                ));
                if v5 {
                    check_reason(c.reason_code, ReasonCodeContext::Connack)?;
                    b.put_u8(c.reason_code.0);
                    c.properties.write(PropertyContext::Connack, b)?;
                } else {
                    b.put_u8(ConnectReturnCode::from_reason_code(c.reason_code) as u8);
                }
            }
            Packet::Publish(p) => {
                check_publish_topic(&p.topic, &p.properties, version)?;
                if p.dup && p.qos == QoS::AtMostOnce {
                    return Err(Error::Protocol("DUP set on a QoS 0 PUBLISH"));
                }
                put_string(b, &p.topic)?;
                match (p.qos, p.packet_id) {
                    (QoS::AtMostOnce, None) => {}
                    (QoS::AtMostOnce, Some(_)) => {
                        return Err(Error::Protocol("packet identifier on a QoS 0 PUBLISH"))
                    }
                    (_, None) => {
                        return Err(Error::Protocol(
                            "QoS 1/2 PUBLISH without a packet identifier",
                        ))
                    }
                    (_, Some(0)) => return Err(Error::ZeroPacketId),
                    (_, Some(id)) => b.put_u16(id),
                }
                if v5 {
                    p.properties.write(PropertyContext::Publish, b)?;
                }
                return Ok(Some(&p.payload));
            }
            Packet::Puback(r) => r.write(version, ReasonCodeContext::Puback, b)?,
            Packet::Pubrec(r) => r.write(version, ReasonCodeContext::Pubrec, b)?,
            Packet::Pubrel(r) => r.write(version, ReasonCodeContext::Pubrel, b)?,
            Packet::Pubcomp(r) => r.write(version, ReasonCodeContext::Pubcomp, b)?,
            Packet::Subscribe(s) => {
                put_packet_id(b, s.packet_id)?;
                if v5 {
                    s.properties.write(PropertyContext::Subscribe, b)?;
                }
                if s.subscriptions.is_empty() {
                    return Err(Error::Protocol("SUBSCRIBE without topic filters"));
                }
                for sub in &s.subscriptions {
                    put_string(b, &sub.filter)?;
                    let o = sub.options;
                    if v5 {
                        check_no_local(&sub.filter, o)?;
                    }
                    let mut byte = o.qos as u8;
                    if v5 {
                        byte |= u8::from(o.no_local) << 2
                            | u8::from(o.retain_as_published) << 3
                            | (o.retain_handling as u8) << 4;
                    }
                    b.put_u8(byte);
                }
            }
            Packet::Suback(s) => {
                put_packet_id(b, s.packet_id)?;
                if v5 {
                    s.properties.write(PropertyContext::Suback, b)?;
                }
                if s.reason_codes.is_empty() {
                    return Err(Error::Protocol("SUBACK without reason codes"));
                }
                for &code in &s.reason_codes {
                    check_reason(code, ReasonCodeContext::Suback)?;
                    b.put_u8(if !v5 && code.is_error() { 0x80 } else { code.0 });
                }
            }
            Packet::Unsubscribe(u) => {
                put_packet_id(b, u.packet_id)?;
                if v5 {
                    u.properties.write(PropertyContext::Unsubscribe, b)?;
                }
                if u.filters.is_empty() {
                    return Err(Error::Protocol("UNSUBSCRIBE without topic filters"));
                }
                for f in &u.filters {
                    put_string(b, f)?;
                }
            }
            Packet::Unsuback(u) => {
                put_packet_id(b, u.packet_id)?;
                if v5 {
                    u.properties.write(PropertyContext::Unsuback, b)?;
                    for &code in &u.reason_codes {
                        check_reason(code, ReasonCodeContext::Unsuback)?;
                        b.put_u8(code.0);
                    }
                }
            }
            Packet::Pingreq | Packet::Pingresp => {}
            Packet::Disconnect(d) => {
                if v5 {
                    check_reason(d.reason_code, ReasonCodeContext::Disconnect)?;
                    if d.reason_code != ReasonCode::SUCCESS || !d.properties.is_empty() {
                        b.put_u8(d.reason_code.0);
                        if !d.properties.is_empty() {
                            d.properties.write(PropertyContext::Disconnect, b)?;
                        }
                    }
                }
            }
            Packet::Auth(a) => {
                if !v5 {
                    return Err(Error::Protocol("AUTH needs MQTT 5"));
                }
                check_reason(a.reason_code, ReasonCodeContext::Auth)?;
                if a.reason_code != ReasonCode::SUCCESS || !a.properties.is_empty() {
                    b.put_u8(a.reason_code.0);
                    a.properties.write(PropertyContext::Auth, b)?;
                }
            }
        }
        Ok(None)
    }

    /// Reads the variable header and payload of a packet whose fixed header was checked
    /// (type valid for `version`, flags valid for the type).
    pub(crate) fn decode_body(
        packet_type: PacketType,
        flags: u8,
        body: Bytes,
        version: ProtocolVersion,
    ) -> Result<Packet> {
        let v5 = version.is_v5();
        let mut r = Reader::new(body);
        let packet = match packet_type {
            PacketType::Connect => Packet::Connect(Box::new(Connect::read(&mut r)?)),
            PacketType::Connack => {
                let ack_flags = r.u8()?;
                // MQTT 3.1 has no flags here: the byte is reserved and not used.
                let session_present = if version == ProtocolVersion::V3_1 {
                    false
                } else if ack_flags & 0xFE != 0 {
                    return Err(Error::Malformed("reserved CONNACK flag bits set"));
                } else {
                    ack_flags & 1 == 1
                };
                let code = r.u8()?;
                let (reason_code, properties) = if v5 {
                    let code = ReasonCode(code);
                    check_reason(code, ReasonCodeContext::Connack)?;
                    (code, Properties::read(&mut r, PropertyContext::Connack)?)
                } else {
                    let rc = ConnectReturnCode::from_u8(code).ok_or(Error::InvalidReasonCode {
                        code,
                        packet: "CONNACK",
                    })?;
                    (rc.reason_code(), Properties::default())
                };
                if session_present && reason_code.is_error() {
                    return Err(Error::Protocol(
                        "session present with a failure reason code",
                    ));
                }
                Packet::Connack(Connack {
                    session_present,
                    reason_code,
                    properties,
                })
            }
            PacketType::Publish => {
                let qos = QoS::from_u8((flags >> 1) & 0b11).ok_or(Error::InvalidQos)?;
                let topic = r.string()?;
                let packet_id = if qos == QoS::AtMostOnce {
                    None
                } else {
                    Some(read_packet_id(&mut r)?)
                };
                let properties = if v5 {
                    Properties::read(&mut r, PropertyContext::Publish)?
                } else {
                    Properties::default()
                };
                check_publish_topic(&topic, &properties, version)?;
                Packet::Publish(Publish {
                    dup: flags & 0b1000 != 0,
                    qos,
                    retain: flags & 1 != 0,
                    topic,
                    packet_id,
                    properties,
                    payload: r.rest(),
                })
            }
            PacketType::Puback => Packet::Puback(PubResponse::read(
                &mut r,
                version,
                ReasonCodeContext::Puback,
            )?),
            PacketType::Pubrec => Packet::Pubrec(PubResponse::read(
                &mut r,
                version,
                ReasonCodeContext::Pubrec,
            )?),
            PacketType::Pubrel => Packet::Pubrel(PubResponse::read(
                &mut r,
                version,
                ReasonCodeContext::Pubrel,
            )?),
            PacketType::Pubcomp => Packet::Pubcomp(PubResponse::read(
                &mut r,
                version,
                ReasonCodeContext::Pubcomp,
            )?),
            PacketType::Subscribe => {
                let packet_id = read_packet_id(&mut r)?;
                let properties = if v5 {
                    Properties::read(&mut r, PropertyContext::Subscribe)?
                } else {
                    Properties::default()
                };
                let mut subscriptions = Vec::new();
                while !r.is_empty() {
                    let filter = r.string()?;
                    let options = read_subscription_options(r.u8()?, v5)?;
                    check_no_local(&filter, options)?;
                    subscriptions.push(Subscription { filter, options });
                }
                if subscriptions.is_empty() {
                    return Err(Error::Protocol("SUBSCRIBE without topic filters"));
                }
                Packet::Subscribe(Subscribe {
                    packet_id,
                    properties,
                    subscriptions,
                })
            }
            PacketType::Suback => {
                let packet_id = read_packet_id(&mut r)?;
                let properties = if v5 {
                    Properties::read(&mut r, PropertyContext::Suback)?
                } else {
                    Properties::default()
                };
                let mut reason_codes = Vec::with_capacity(r.remaining());
                while !r.is_empty() {
                    let code = r.u8()?;
                    if !v5 && !matches!(code, 0 | 1 | 2 | 0x80) {
                        return Err(Error::InvalidReasonCode {
                            code,
                            packet: "SUBACK",
                        });
                    }
                    let code = ReasonCode(code);
                    check_reason(code, ReasonCodeContext::Suback)?;
                    reason_codes.push(code);
                }
                if reason_codes.is_empty() {
                    return Err(Error::Protocol("SUBACK without reason codes"));
                }
                Packet::Suback(Suback {
                    packet_id,
                    properties,
                    reason_codes,
                })
            }
            PacketType::Unsubscribe => {
                let packet_id = read_packet_id(&mut r)?;
                let properties = if v5 {
                    Properties::read(&mut r, PropertyContext::Unsubscribe)?
                } else {
                    Properties::default()
                };
                let mut filters = Vec::new();
                while !r.is_empty() {
                    filters.push(r.string()?);
                }
                if filters.is_empty() {
                    return Err(Error::Protocol("UNSUBSCRIBE without topic filters"));
                }
                Packet::Unsubscribe(Unsubscribe {
                    packet_id,
                    properties,
                    filters,
                })
            }
            PacketType::Unsuback => {
                let packet_id = read_packet_id(&mut r)?;
                let mut properties = Properties::default();
                let mut reason_codes = Vec::new();
                if v5 {
                    properties = Properties::read(&mut r, PropertyContext::Unsuback)?;
                    reason_codes.reserve(r.remaining());
                    while !r.is_empty() {
                        let code = ReasonCode(r.u8()?);
                        check_reason(code, ReasonCodeContext::Unsuback)?;
                        reason_codes.push(code);
                    }
                }
                Packet::Unsuback(Unsuback {
                    packet_id,
                    properties,
                    reason_codes,
                })
            }
            PacketType::Pingreq => Packet::Pingreq,
            PacketType::Pingresp => Packet::Pingresp,
            PacketType::Disconnect => {
                let mut d = Disconnect::default();
                if v5 && !r.is_empty() {
                    d.reason_code = ReasonCode(r.u8()?);
                    check_reason(d.reason_code, ReasonCodeContext::Disconnect)?;
                    if !r.is_empty() {
                        d.properties = Properties::read(&mut r, PropertyContext::Disconnect)?;
                    }
                }
                Packet::Disconnect(d)
            }
            PacketType::Auth => {
                let mut a = Auth::default();
                if !r.is_empty() {
                    a.reason_code = ReasonCode(r.u8()?);
                    check_reason(a.reason_code, ReasonCodeContext::Auth)?;
                    if !r.is_empty() {
                        a.properties = Properties::read(&mut r, PropertyContext::Auth)?;
                    }
                }
                Packet::Auth(a)
            }
        };
        if !r.is_empty() {
            return Err(Error::Malformed(
                "trailing bytes after the packet's content",
            ));
        }
        Ok(packet)
    }
}

macro_rules! packet_from {
    ($($ty:ident => $variant:ident),*) => {
        $(impl From<$ty> for Packet {
            fn from(p: $ty) -> Packet {
                Packet::$variant(p)
            }
        })*
    };
}

packet_from!(
    Connack => Connack,
    Publish => Publish,
    Subscribe => Subscribe,
    Suback => Suback,
    Unsubscribe => Unsubscribe,
    Unsuback => Unsuback,
    Disconnect => Disconnect,
    Auth => Auth
);

impl From<Connect> for Packet {
    fn from(c: Connect) -> Packet {
        Packet::Connect(Box::new(c))
    }
}

fn check_reason(code: ReasonCode, ctx: ReasonCodeContext) -> Result<()> {
    if code.is_valid_for(ctx) {
        Ok(())
    } else {
        Err(Error::InvalidReasonCode {
            code: code.0,
            packet: ctx.packet_name(),
        })
    }
}

fn read_packet_id(r: &mut Reader) -> Result<u16> {
    match r.u16()? {
        0 => Err(Error::ZeroPacketId),
        id => Ok(id),
    }
}

fn put_packet_id(b: &mut BytesMut, id: u16) -> Result<()> {
    if id == 0 {
        return Err(Error::ZeroPacketId);
    }
    b.put_u16(id);
    Ok(())
}

/// A PUBLISH topic: no wildcards, no U+0000; empty only in MQTT 5 with a topic alias.
fn check_publish_topic(
    topic: &str,
    properties: &Properties,
    version: ProtocolVersion,
) -> Result<()> {
    if topic.is_empty() {
        if version.is_v5() && properties.topic_alias.is_some() {
            return Ok(());
        }
        if version.is_v5() {
            return Err(Error::Protocol("empty topic name without a topic alias"));
        }
        return Err(Error::TopicNameInvalid);
    }
    validate_topic_name(topic).map_err(|_| Error::TopicNameInvalid)
}

/// No Local on a shared subscription is a protocol error (MQTT-3.8.3-4).
fn check_no_local(filter: &str, options: SubscriptionOptions) -> Result<()> {
    if options.no_local && filter.starts_with(SHARED_PREFIX) {
        return Err(Error::Protocol("No Local on a shared subscription"));
    }
    Ok(())
}

fn read_subscription_options(byte: u8, v5: bool) -> Result<SubscriptionOptions> {
    let reserved = if v5 { 0b1100_0000 } else { 0b1111_1100 };
    if byte & reserved != 0 {
        return Err(Error::Malformed("reserved subscription option bits set"));
    }
    let qos = QoS::from_u8(byte & 0b11).ok_or(Error::InvalidQos)?;
    let retain_handling = match (byte >> 4) & 0b11 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendAtSubscribeIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(Error::Protocol("retain handling 3")),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & 0b0100 != 0,
        retain_as_published: byte & 0b1000 != 0,
        retain_handling,
    })
}

impl PubResponse {
    fn read(r: &mut Reader, version: ProtocolVersion, ctx: ReasonCodeContext) -> Result<Self> {
        let mut resp = PubResponse::new(read_packet_id(r)?);
        if version.is_v5() && !r.is_empty() {
            resp.reason_code = ReasonCode(r.u8()?);
            check_reason(resp.reason_code, ctx)?;
            if !r.is_empty() {
                resp.properties = Properties::read(r, pub_property_context(ctx))?;
            }
        }
        Ok(resp)
    }

    fn write(
        &self,
        version: ProtocolVersion,
        ctx: ReasonCodeContext,
        b: &mut BytesMut,
    ) -> Result<()> {
        put_packet_id(b, self.packet_id)?;
        if version.is_v5() {
            check_reason(self.reason_code, ctx)?;
            if self.reason_code != ReasonCode::SUCCESS || !self.properties.is_empty() {
                b.put_u8(self.reason_code.0);
                if !self.properties.is_empty() {
                    self.properties.write(pub_property_context(ctx), b)?;
                }
            }
        }
        Ok(())
    }
}

fn pub_property_context(ctx: ReasonCodeContext) -> PropertyContext {
    match ctx {
        ReasonCodeContext::Puback => PropertyContext::Puback,
        ReasonCodeContext::Pubrec => PropertyContext::Pubrec,
        ReasonCodeContext::Pubrel => PropertyContext::Pubrel,
        _ => PropertyContext::Pubcomp,
    }
}

const FLAG_CLEAN: u8 = 0b0000_0010;
const FLAG_WILL: u8 = 0b0000_0100;
const FLAG_WILL_RETAIN: u8 = 0b0010_0000;
const FLAG_PASSWORD: u8 = 0b0100_0000;
const FLAG_USERNAME: u8 = 0b1000_0000;

impl Connect {
    fn read(r: &mut Reader) -> Result<Connect> {
        let name = r.string()?;
        let level = r.u8()?;
        let protocol_version = ProtocolVersion::from_name_and_level(&name, level)?;
        let v5 = protocol_version.is_v5();
        let flags = r.u8()?;
        if flags & 1 != 0 {
            return Err(Error::Malformed("reserved CONNECT flag set"));
        }
        let will_flag = flags & FLAG_WILL != 0;
        let will_qos = QoS::from_u8((flags >> 3) & 0b11).ok_or(Error::InvalidQos)?;
        let will_retain = flags & FLAG_WILL_RETAIN != 0;
        if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
            return Err(Error::Malformed("will QoS or retain set without a will"));
        }
        let has_password = flags & FLAG_PASSWORD != 0;
        let has_username = flags & FLAG_USERNAME != 0;
        if !v5 && has_password && !has_username {
            return Err(Error::Malformed("password without a user name"));
        }
        let keep_alive = r.u16()?;
        let properties = if v5 {
            Properties::read(r, PropertyContext::Connect)?
        } else {
            Properties::default()
        };
        let client_id = r.string()?;
        let will = if will_flag {
            let properties = if v5 {
                Properties::read(r, PropertyContext::Will)?
            } else {
                Properties::default()
            };
            let topic = r.string()?;
            validate_topic_name(&topic).map_err(|_| Error::TopicNameInvalid)?;
            let payload = r.binary()?;
            Some(Will {
                topic,
                payload,
                qos: will_qos,
                retain: will_retain,
                properties,
            })
        } else {
            None
        };
        let username = if has_username {
            Some(r.string()?)
        } else {
            None
        };
        let password = if has_password {
            Some(r.binary()?)
        } else {
            None
        };
        Ok(Connect {
            protocol_version,
            clean_start: flags & FLAG_CLEAN != 0,
            keep_alive,
            client_id,
            will,
            username,
            password,
            properties,
        })
    }

    fn write(&self, b: &mut BytesMut) -> Result<()> {
        let v5 = self.protocol_version.is_v5();
        if !v5 && self.password.is_some() && self.username.is_none() {
            return Err(Error::Protocol(
                "MQTT 3 allows a password only with a user name",
            ));
        }
        put_string(b, self.protocol_version.protocol_name())?;
        b.put_u8(self.protocol_version.level());
        let mut flags = 0;
        if self.clean_start {
            flags |= FLAG_CLEAN;
        }
        if let Some(w) = &self.will {
            flags |= FLAG_WILL | (w.qos as u8) << 3;
            if w.retain {
                flags |= FLAG_WILL_RETAIN;
            }
        }
        if self.password.is_some() {
            flags |= FLAG_PASSWORD;
        }
        if self.username.is_some() {
            flags |= FLAG_USERNAME;
        }
        b.put_u8(flags);
        b.put_u16(self.keep_alive);
        if v5 {
            self.properties.write(PropertyContext::Connect, b)?;
        }
        put_string(b, &self.client_id)?;
        if let Some(w) = &self.will {
            if v5 {
                w.properties.write(PropertyContext::Will, b)?;
            }
            validate_topic_name(&w.topic).map_err(|_| Error::TopicNameInvalid)?;
            put_string(b, &w.topic)?;
            put_binary(b, &w.payload)?;
        }
        if let Some(u) = &self.username {
            put_string(b, u)?;
        }
        if let Some(p) = &self.password {
            put_binary(b, p)?;
        }
        Ok(())
    }
}
