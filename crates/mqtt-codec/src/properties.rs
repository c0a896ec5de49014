//! MQTT 5 properties (§2.2.2): [`Properties`], one struct for every packet, with the identifier
//! and data type of each property, and [`PropertyContext`], the packet (or will) a property
//! block belongs to, which decides what it may hold.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::Error;
use crate::packet::QoS;
use crate::wire::{put_binary, put_string, put_var_int, Reader, VAR_INT_MAX};

type Result<T> = std::result::Result<T, Error>;

/// Property identifiers (MQTT 5 §2.2.2.2, Table 2-4).
pub mod id {
    /// Byte; PUBLISH, Will Properties.
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    /// Four Byte Integer; PUBLISH, Will Properties.
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    /// UTF-8 Encoded String; PUBLISH, Will Properties.
    pub const CONTENT_TYPE: u8 = 0x03;
    /// UTF-8 Encoded String; PUBLISH, Will Properties.
    pub const RESPONSE_TOPIC: u8 = 0x08;
    /// Binary Data; PUBLISH, Will Properties.
    pub const CORRELATION_DATA: u8 = 0x09;
    /// Variable Byte Integer; PUBLISH (may repeat), SUBSCRIBE.
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    /// Four Byte Integer; CONNECT, CONNACK, DISCONNECT.
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    /// UTF-8 Encoded String; CONNACK.
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    /// Two Byte Integer; CONNACK.
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    /// UTF-8 Encoded String; CONNECT, CONNACK, AUTH.
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    /// Binary Data; CONNECT, CONNACK, AUTH.
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    /// Byte; CONNECT.
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    /// Four Byte Integer; Will Properties.
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    /// Byte; CONNECT.
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    /// UTF-8 Encoded String; CONNACK.
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    /// UTF-8 Encoded String; CONNACK, DISCONNECT.
    pub const SERVER_REFERENCE: u8 = 0x1C;
    /// UTF-8 Encoded String; CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK,
    /// DISCONNECT, AUTH.
    pub const REASON_STRING: u8 = 0x1F;
    /// Two Byte Integer; CONNECT, CONNACK.
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    /// Two Byte Integer; CONNECT, CONNACK.
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    /// Two Byte Integer; PUBLISH.
    pub const TOPIC_ALIAS: u8 = 0x23;
    /// Byte; CONNACK.
    pub const MAXIMUM_QOS: u8 = 0x24;
    /// Byte; CONNACK.
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    /// UTF-8 String Pair; every packet with properties (may repeat).
    pub const USER_PROPERTY: u8 = 0x26;
    /// Four Byte Integer; CONNECT, CONNACK.
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    /// Byte; CONNACK.
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    /// Byte; CONNACK.
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    /// Byte; CONNACK.
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// Where a property block sits: each packet type with properties, and the will properties
/// in CONNECT's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PropertyContext {
    Connect,
    Will,
    Connack,
    Publish,
    Puback,
    Pubrec,
    Pubrel,
    Pubcomp,
    Subscribe,
    Suback,
    Unsubscribe,
    Unsuback,
    Disconnect,
    Auth,
}

impl PropertyContext {
    /// The packet's name, for error messages.
    pub fn name(self) -> &'static str {
        match self {
            PropertyContext::Connect => "CONNECT",
            PropertyContext::Will => "will properties",
            PropertyContext::Connack => "CONNACK",
            PropertyContext::Publish => "PUBLISH",
            PropertyContext::Puback => "PUBACK",
            PropertyContext::Pubrec => "PUBREC",
            PropertyContext::Pubrel => "PUBREL",
            PropertyContext::Pubcomp => "PUBCOMP",
            PropertyContext::Subscribe => "SUBSCRIBE",
            PropertyContext::Suback => "SUBACK",
            PropertyContext::Unsubscribe => "UNSUBSCRIBE",
            PropertyContext::Unsuback => "UNSUBACK",
            PropertyContext::Disconnect => "DISCONNECT",
            PropertyContext::Auth => "AUTH",
        }
    }

    /// True if property `id` may appear in this context (MQTT 5 Table 2-4). False for
    /// identifiers the spec does not define.
    pub fn allows(self, property: u8) -> bool {
        use PropertyContext::*;
        match property {
            id::PAYLOAD_FORMAT_INDICATOR
            | id::MESSAGE_EXPIRY_INTERVAL
            | id::CONTENT_TYPE
            | id::RESPONSE_TOPIC
            | id::CORRELATION_DATA => matches!(self, Publish | Will),
            id::SUBSCRIPTION_IDENTIFIER => matches!(self, Publish | Subscribe),
            id::SESSION_EXPIRY_INTERVAL => matches!(self, Connect | Connack | Disconnect),
            id::ASSIGNED_CLIENT_IDENTIFIER | id::SERVER_KEEP_ALIVE => self == Connack,
            id::AUTHENTICATION_METHOD | id::AUTHENTICATION_DATA => {
                matches!(self, Connect | Connack | Auth)
            }
            id::REQUEST_PROBLEM_INFORMATION | id::REQUEST_RESPONSE_INFORMATION => self == Connect,
            id::WILL_DELAY_INTERVAL => self == Will,
            id::RESPONSE_INFORMATION => self == Connack,
            id::SERVER_REFERENCE => matches!(self, Connack | Disconnect),
            id::REASON_STRING => {
                !matches!(self, Connect | Will | Publish | Subscribe | Unsubscribe)
            }
            id::RECEIVE_MAXIMUM | id::TOPIC_ALIAS_MAXIMUM | id::MAXIMUM_PACKET_SIZE => {
                matches!(self, Connect | Connack)
            }
            id::TOPIC_ALIAS => self == Publish,
            id::MAXIMUM_QOS
            | id::RETAIN_AVAILABLE
            | id::WILDCARD_SUBSCRIPTION_AVAILABLE
            | id::SUBSCRIPTION_IDENTIFIER_AVAILABLE
            | id::SHARED_SUBSCRIPTION_AVAILABLE => self == Connack,
            id::USER_PROPERTY => true,
            _ => false,
        }
    }
}

/// The properties of one MQTT 5 packet (or of a will). Every field is absent by default;
/// which ones a packet may carry is in each field's doc ([`PropertyContext::allows`]).
/// Decoding refuses a property the packet may not carry (malformed) and a repeated one
/// (protocol error); encoding refuses the same, so what encodes always decodes.
///
/// MQTT 3 packets have no properties: the codec ignores this struct for them on encode and
/// leaves it empty on decode.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Properties {
    /// 0x01, PUBLISH / will: 0 unspecified bytes, 1 UTF-8 (other values are refused).
    pub payload_format_indicator: Option<u8>,
    /// 0x02, PUBLISH / will: seconds.
    pub message_expiry_interval: Option<u32>,
    /// 0x03, PUBLISH / will.
    pub content_type: Option<String>,
    /// 0x08, PUBLISH / will.
    pub response_topic: Option<String>,
    /// 0x09, PUBLISH / will.
    pub correlation_data: Option<Bytes>,
    /// 0x0B, PUBLISH (any number) / SUBSCRIBE (at most one): each 1..=268,435,455.
    pub subscription_identifiers: Vec<u32>,
    /// 0x11, CONNECT / CONNACK / DISCONNECT: seconds.
    pub session_expiry_interval: Option<u32>,
    /// 0x12, CONNACK.
    pub assigned_client_identifier: Option<String>,
    /// 0x13, CONNACK: seconds.
    pub server_keep_alive: Option<u16>,
    /// 0x15, CONNECT / CONNACK / AUTH.
    pub authentication_method: Option<String>,
    /// 0x16, CONNECT / CONNACK / AUTH.
    pub authentication_data: Option<Bytes>,
    /// 0x17, CONNECT (a byte 0/1 on the wire).
    pub request_problem_information: Option<bool>,
    /// 0x18, will: seconds.
    pub will_delay_interval: Option<u32>,
    /// 0x19, CONNECT (a byte 0/1 on the wire).
    pub request_response_information: Option<bool>,
    /// 0x1A, CONNACK.
    pub response_information: Option<String>,
    /// 0x1C, CONNACK / DISCONNECT.
    pub server_reference: Option<String>,
    /// 0x1F, CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK, DISCONNECT, AUTH.
    pub reason_string: Option<String>,
    /// 0x21, CONNECT / CONNACK: not 0.
    pub receive_maximum: Option<u16>,
    /// 0x22, CONNECT / CONNACK.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23, PUBLISH: not 0.
    pub topic_alias: Option<u16>,
    /// 0x24, CONNACK: QoS 0 or 1 only (a byte on the wire).
    pub maximum_qos: Option<QoS>,
    /// 0x25, CONNACK (a byte 0/1 on the wire).
    pub retain_available: Option<bool>,
    /// 0x26, every packet with properties, and wills: name/value pairs, in wire order,
    /// repeats allowed.
    pub user_properties: Vec<(String, String)>,
    /// 0x27, CONNECT / CONNACK: bytes, not 0.
    pub maximum_packet_size: Option<u32>,
    /// 0x28, CONNACK (a byte 0/1 on the wire).
    pub wildcard_subscription_available: Option<bool>,
    /// 0x29, CONNACK (a byte 0/1 on the wire).
    pub subscription_identifier_available: Option<bool>,
    /// 0x2A, CONNACK (a byte 0/1 on the wire).
    pub shared_subscription_available: Option<bool>,
}

fn bool_byte(r: &mut Reader, property: u8) -> Result<bool> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(Error::InvalidPropertyValue(property)),
    }
}

fn set<T>(slot: &mut Option<T>, value: T, property: u8) -> Result<()> {
    if slot.is_some() {
        return Err(Error::DuplicateProperty(property));
    }
    *slot = Some(value);
    Ok(())
}

impl Properties {
    /// True when no property is set.
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }

    /// The identifiers of the properties that are set, ascending (repeats not repeated).
    pub fn present_ids(&self) -> Vec<u8> {
        let flags = [
            (
                id::PAYLOAD_FORMAT_INDICATOR,
                self.payload_format_indicator.is_some(),
            ),
            (
                id::MESSAGE_EXPIRY_INTERVAL,
                self.message_expiry_interval.is_some(),
            ),
            (id::CONTENT_TYPE, self.content_type.is_some()),
            (id::RESPONSE_TOPIC, self.response_topic.is_some()),
            (id::CORRELATION_DATA, self.correlation_data.is_some()),
            (
                id::SUBSCRIPTION_IDENTIFIER,
                !self.subscription_identifiers.is_empty(),
            ),
            (
                id::SESSION_EXPIRY_INTERVAL,
                self.session_expiry_interval.is_some(),
            ),
            (
                id::ASSIGNED_CLIENT_IDENTIFIER,
                self.assigned_client_identifier.is_some(),
            ),
            (id::SERVER_KEEP_ALIVE, self.server_keep_alive.is_some()),
            (
                id::AUTHENTICATION_METHOD,
                self.authentication_method.is_some(),
            ),
            (id::AUTHENTICATION_DATA, self.authentication_data.is_some()),
            (
                id::REQUEST_PROBLEM_INFORMATION,
                self.request_problem_information.is_some(),
            ),
            (id::WILL_DELAY_INTERVAL, self.will_delay_interval.is_some()),
            (
                id::REQUEST_RESPONSE_INFORMATION,
                self.request_response_information.is_some(),
            ),
            (
                id::RESPONSE_INFORMATION,
                self.response_information.is_some(),
            ),
            (id::SERVER_REFERENCE, self.server_reference.is_some()),
            (id::REASON_STRING, self.reason_string.is_some()),
            (id::RECEIVE_MAXIMUM, self.receive_maximum.is_some()),
            (id::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum.is_some()),
            (id::TOPIC_ALIAS, self.topic_alias.is_some()),
            (id::MAXIMUM_QOS, self.maximum_qos.is_some()),
            (id::RETAIN_AVAILABLE, self.retain_available.is_some()),
            (id::USER_PROPERTY, !self.user_properties.is_empty()),
            (id::MAXIMUM_PACKET_SIZE, self.maximum_packet_size.is_some()),
            (
                id::WILDCARD_SUBSCRIPTION_AVAILABLE,
                self.wildcard_subscription_available.is_some(),
            ),
            (
                id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
                self.subscription_identifier_available.is_some(),
            ),
            (
                id::SHARED_SUBSCRIPTION_AVAILABLE,
                self.shared_subscription_available.is_some(),
            ),
        ];
        flags
            .iter()
            .filter(|(_, present)| *present)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Checks these properties for a packet of kind `ctx`: each one allowed there, at most one
    /// subscription identifier outside PUBLISH, and values the spec permits. The decoder runs
    /// this on what it read; the encoder on what it is asked to write.
    ///
    /// # Errors
    /// `PropertyNotAllowed` (malformed), `DuplicateProperty` and `InvalidPropertyValue`
    /// (protocol errors).
    pub fn validate(&self, ctx: PropertyContext) -> Result<()> {
        for property in self.present_ids() {
            if !ctx.allows(property) {
                return Err(Error::PropertyNotAllowed {
                    id: property,
                    packet: ctx.name(),
                });
            }
        }
        if ctx != PropertyContext::Publish && self.subscription_identifiers.len() > 1 {
            return Err(Error::DuplicateProperty(id::SUBSCRIPTION_IDENTIFIER));
        }
        if self
            .subscription_identifiers
            .iter()
            .any(|&v| v == 0 || v > VAR_INT_MAX)
        {
            return Err(Error::InvalidPropertyValue(id::SUBSCRIPTION_IDENTIFIER));
        }
        if matches!(self.payload_format_indicator, Some(v) if v > 1) {
            return Err(Error::InvalidPropertyValue(id::PAYLOAD_FORMAT_INDICATOR));
        }
        if self.receive_maximum == Some(0) {
            return Err(Error::InvalidPropertyValue(id::RECEIVE_MAXIMUM));
        }
        if self.topic_alias == Some(0) {
            return Err(Error::InvalidPropertyValue(id::TOPIC_ALIAS));
        }
        if self.maximum_packet_size == Some(0) {
            return Err(Error::InvalidPropertyValue(id::MAXIMUM_PACKET_SIZE));
        }
        if self.maximum_qos == Some(QoS::ExactlyOnce) {
            return Err(Error::InvalidPropertyValue(id::MAXIMUM_QOS));
        }
        Ok(())
    }

    /// Reads a property block (length, then properties) for a packet of kind `ctx`.
    pub(crate) fn read(r: &mut Reader, ctx: PropertyContext) -> Result<Properties> {
        let len = r.var_int()?;
        let len = usize::try_from(len).map_err(|_| Error::Malformed("property length"))?;
        if len > r.remaining() {
            return Err(Error::Malformed(
                "property length runs past the end of the packet",
            ));
        }
        let mut r = Reader::new(r.take(len)?);
        let mut p = Properties::default();
        while !r.is_empty() {
            let raw = r.var_int()?;
            let property = u8::try_from(raw).unwrap_or(u8::MAX);
            if !(PropertyContext::Connect.allows(property)
                || PropertyContext::Will.allows(property)
                || PropertyContext::Connack.allows(property)
                || PropertyContext::Publish.allows(property))
            {
                return Err(Error::UnknownProperty(property));
            }
            if !ctx.allows(property) {
                return Err(Error::PropertyNotAllowed {
                    id: property,
                    packet: ctx.name(),
                });
            }
            match property {
                id::PAYLOAD_FORMAT_INDICATOR => {
                    let v = r.u8()?;
                    set(&mut p.payload_format_indicator, v, property)?
                }
                id::MESSAGE_EXPIRY_INTERVAL => {
                    let v = r.u32()?;
                    set(&mut p.message_expiry_interval, v, property)?
                }
                id::CONTENT_TYPE => {
                    let v = r.string()?;
                    set(&mut p.content_type, v, property)?
                }
                id::RESPONSE_TOPIC => {
                    let v = r.string()?;
                    set(&mut p.response_topic, v, property)?
                }
                id::CORRELATION_DATA => {
                    let v = r.binary()?;
                    set(&mut p.correlation_data, v, property)?
                }
                id::SUBSCRIPTION_IDENTIFIER => {
                    let v = r.var_int()?;
                    if ctx != PropertyContext::Publish && !p.subscription_identifiers.is_empty() {
                        return Err(Error::DuplicateProperty(property));
                    }
                    p.subscription_identifiers.push(v);
                }
                id::SESSION_EXPIRY_INTERVAL => {
                    let v = r.u32()?;
                    set(&mut p.session_expiry_interval, v, property)?
                }
                id::ASSIGNED_CLIENT_IDENTIFIER => {
                    let v = r.string()?;
                    set(&mut p.assigned_client_identifier, v, property)?
                }
                id::SERVER_KEEP_ALIVE => {
                    let v = r.u16()?;
                    set(&mut p.server_keep_alive, v, property)?
                }
                id::AUTHENTICATION_METHOD => {
                    let v = r.string()?;
                    set(&mut p.authentication_method, v, property)?
                }
                id::AUTHENTICATION_DATA => {
                    let v = r.binary()?;
                    set(&mut p.authentication_data, v, property)?
                }
                id::REQUEST_PROBLEM_INFORMATION => {
                    let v = bool_byte(&mut r, property)?;
                    set(&mut p.request_problem_information, v, property)?
                }
                id::WILL_DELAY_INTERVAL => {
                    let v = r.u32()?;
                    set(&mut p.will_delay_interval, v, property)?
                }
                id::REQUEST_RESPONSE_INFORMATION => {
                    let v = bool_byte(&mut r, property)?;
                    set(&mut p.request_response_information, v, property)?
                }
                id::RESPONSE_INFORMATION => {
                    let v = r.string()?;
                    set(&mut p.response_information, v, property)?
                }
                id::SERVER_REFERENCE => {
                    let v = r.string()?;
                    set(&mut p.server_reference, v, property)?
                }
                id::REASON_STRING => {
                    let v = r.string()?;
                    set(&mut p.reason_string, v, property)?
                }
                id::RECEIVE_MAXIMUM => {
                    let v = r.u16()?;
                    set(&mut p.receive_maximum, v, property)?
                }
                id::TOPIC_ALIAS_MAXIMUM => {
                    let v = r.u16()?;
                    set(&mut p.topic_alias_maximum, v, property)?
                }
                id::TOPIC_ALIAS => {
                    let v = r.u16()?;
                    set(&mut p.topic_alias, v, property)?
                }
                id::MAXIMUM_QOS => {
                    let v = match r.u8()? {
                        0 => QoS::AtMostOnce,
                        1 => QoS::AtLeastOnce,
                        _ => return Err(Error::InvalidPropertyValue(property)),
                    };
                    set(&mut p.maximum_qos, v, property)?
                }
                id::RETAIN_AVAILABLE => {
                    let v = bool_byte(&mut r, property)?;
                    set(&mut p.retain_available, v, property)?
                }
                id::USER_PROPERTY => {
                    let name = r.string()?;
                    let value = r.string()?;
                    p.user_properties.push((name, value));
                }
                id::MAXIMUM_PACKET_SIZE => {
                    let v = r.u32()?;
                    set(&mut p.maximum_packet_size, v, property)?
                }
                id::WILDCARD_SUBSCRIPTION_AVAILABLE => {
                    let v = bool_byte(&mut r, property)?;
                    set(&mut p.wildcard_subscription_available, v, property)?
                }
                id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                    let v = bool_byte(&mut r, property)?;
                    set(&mut p.subscription_identifier_available, v, property)?
                }
                id::SHARED_SUBSCRIPTION_AVAILABLE => {
                    let v = bool_byte(&mut r, property)?;
                    set(&mut p.shared_subscription_available, v, property)?
                }
                _ => return Err(Error::UnknownProperty(property)),
            }
        }
        p.validate(ctx)?;
        Ok(p)
    }

    /// Writes the property block (length, then properties in identifier order) after
    /// checking it with [`Properties::validate`].
    pub(crate) fn write(&self, ctx: PropertyContext, out: &mut BytesMut) -> Result<()> {
        self.validate(ctx)?;
        let mut b = BytesMut::new();
        if let Some(v) = self.payload_format_indicator {
            b.put_u8(id::PAYLOAD_FORMAT_INDICATOR);
            b.put_u8(v);
        }
        if let Some(v) = self.message_expiry_interval {
            b.put_u8(id::MESSAGE_EXPIRY_INTERVAL);
            b.put_u32(v);
        }
        put_opt_string(&mut b, id::CONTENT_TYPE, &self.content_type)?;
        put_opt_string(&mut b, id::RESPONSE_TOPIC, &self.response_topic)?;
        put_opt_binary(&mut b, id::CORRELATION_DATA, &self.correlation_data)?;
        for &v in &self.subscription_identifiers {
            b.put_u8(id::SUBSCRIPTION_IDENTIFIER);
            put_var_int(&mut b, v);
        }
        if let Some(v) = self.session_expiry_interval {
            b.put_u8(id::SESSION_EXPIRY_INTERVAL);
            b.put_u32(v);
        }
        put_opt_string(
            &mut b,
            id::ASSIGNED_CLIENT_IDENTIFIER,
            &self.assigned_client_identifier,
        )?;
        if let Some(v) = self.server_keep_alive {
            b.put_u8(id::SERVER_KEEP_ALIVE);
            b.put_u16(v);
        }
        put_opt_string(
            &mut b,
            id::AUTHENTICATION_METHOD,
            &self.authentication_method,
        )?;
        put_opt_binary(&mut b, id::AUTHENTICATION_DATA, &self.authentication_data)?;
        put_opt_bool(
            &mut b,
            id::REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information,
        );
        if let Some(v) = self.will_delay_interval {
            b.put_u8(id::WILL_DELAY_INTERVAL);
            b.put_u32(v);
        }
        put_opt_bool(
            &mut b,
            id::REQUEST_RESPONSE_INFORMATION,
            self.request_response_information,
        );
        put_opt_string(&mut b, id::RESPONSE_INFORMATION, &self.response_information)?;
        put_opt_string(&mut b, id::SERVER_REFERENCE, &self.server_reference)?;
        put_opt_string(&mut b, id::REASON_STRING, &self.reason_string)?;
        for (property, value) in [
            (id::RECEIVE_MAXIMUM, self.receive_maximum),
            (id::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum),
            (id::TOPIC_ALIAS, self.topic_alias),
        ] {
            if let Some(v) = value {
                b.put_u8(property);
                b.put_u16(v);
            }
        }
        if let Some(v) = self.maximum_qos {
            b.put_u8(id::MAXIMUM_QOS);
            b.put_u8(v as u8);
        }
        put_opt_bool(&mut b, id::RETAIN_AVAILABLE, self.retain_available);
        for (name, value) in &self.user_properties {
            b.put_u8(id::USER_PROPERTY);
            put_string(&mut b, name)?;
            put_string(&mut b, value)?;
        }
        if let Some(v) = self.maximum_packet_size {
            b.put_u8(id::MAXIMUM_PACKET_SIZE);
            b.put_u32(v);
        }
        put_opt_bool(
            &mut b,
            id::WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available,
        );
        put_opt_bool(
            &mut b,
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifier_available,
        );
        put_opt_bool(
            &mut b,
            id::SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available,
        );
        let len = u32::try_from(b.len())
            .ok()
            .filter(|&len| len <= VAR_INT_MAX)
            .ok_or(Error::Malformed("property block too long"))?;
        put_var_int(out, len);
        out.put_slice(&b);
        Ok(())
    }
}

fn put_opt_string(out: &mut BytesMut, property: u8, value: &Option<String>) -> Result<()> {
    if let Some(v) = value {
        out.put_u8(property);
        put_string(out, v)?;
    }
    Ok(())
}

fn put_opt_binary(out: &mut BytesMut, property: u8, value: &Option<Bytes>) -> Result<()> {
    if let Some(v) = value {
        out.put_u8(property);
        put_binary(out, v)?;
    }
    Ok(())
}

fn put_opt_bool(out: &mut BytesMut, property: u8, value: Option<bool>) {
    if let Some(v) = value {
        out.put_u8(property);
        out.put_u8(u8::from(v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &'static [u8], ctx: PropertyContext) -> Result<Properties> {
        Properties::read(&mut Reader::new(Bytes::from_static(bytes)), ctx)
    }

    #[test]
    fn every_defined_identifier_is_allowed_somewhere() {
        let all = [
            PropertyContext::Connect,
            PropertyContext::Will,
            PropertyContext::Connack,
            PropertyContext::Publish,
            PropertyContext::Puback,
            PropertyContext::Pubrec,
            PropertyContext::Pubrel,
            PropertyContext::Pubcomp,
            PropertyContext::Subscribe,
            PropertyContext::Suback,
            PropertyContext::Unsubscribe,
            PropertyContext::Unsuback,
            PropertyContext::Disconnect,
            PropertyContext::Auth,
        ];
        let defined: Vec<u8> = (0..=255u8)
            .filter(|&p| all.iter().any(|c| c.allows(p)))
            .collect();
        assert_eq!(
            defined,
            [
                0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x11, 0x12, 0x13, 0x15, 0x16, 0x17, 0x18, 0x19,
                0x1A, 0x1C, 0x1F, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2A
            ]
        );
        for c in all {
            assert!(c.allows(id::USER_PROPERTY));
        }
        assert!(!PropertyContext::Unsubscribe.allows(id::REASON_STRING));
        assert!(PropertyContext::Unsuback.allows(id::REASON_STRING));
    }

    #[test]
    fn empty_block() {
        assert_eq!(
            read(b"\x00", PropertyContext::Publish),
            Ok(Properties::default())
        );
        let mut out = BytesMut::new();
        Properties::default()
            .write(PropertyContext::Connect, &mut out)
            .unwrap();
        assert_eq!(&out[..], b"\x00");
    }

    #[test]
    fn session_expiry_from_the_spec_example() {
        // MQTT 5 §3.1.2.12 example: properties length 5, Session Expiry Interval 10.
        let p = read(b"\x05\x11\x00\x00\x00\x0A", PropertyContext::Connect).unwrap();
        assert_eq!(p.session_expiry_interval, Some(10));
    }

    #[test]
    fn user_properties_and_subscription_ids_repeat() {
        let p = read(
            b"\x0F\x26\x00\x01a\x00\x01b\x26\x00\x01a\x00\x00\x0B\x01",
            PropertyContext::Publish,
        )
        .unwrap();
        assert_eq!(
            p.user_properties,
            [("a".into(), "b".into()), ("a".into(), String::new())]
        );
        assert_eq!(p.subscription_identifiers, [1]);
        let p = read(b"\x05\x0B\x01\x0B\x80\x01", PropertyContext::Publish).unwrap();
        assert_eq!(p.subscription_identifiers, [1, 128]);
    }

    #[test]
    fn malformed_blocks() {
        // Duplicate session expiry interval.
        assert_eq!(
            read(
                b"\x0A\x11\x00\x00\x00\x01\x11\x00\x00\x00\x02",
                PropertyContext::Connect
            ),
            Err(Error::DuplicateProperty(0x11))
        );
        // Two subscription identifiers in SUBSCRIBE.
        assert_eq!(
            read(b"\x04\x0B\x01\x0B\x02", PropertyContext::Subscribe),
            Err(Error::DuplicateProperty(0x0B))
        );
        // Topic alias in CONNECT.
        assert_eq!(
            read(b"\x03\x23\x00\x01", PropertyContext::Connect),
            Err(Error::PropertyNotAllowed {
                id: 0x23,
                packet: "CONNECT"
            })
        );
        assert_eq!(
            read(b"\x02\x7F\x00", PropertyContext::Connect),
            Err(Error::UnknownProperty(0x7F))
        );
        // Length longer than the packet.
        assert!(read(b"\x09\x11\x00", PropertyContext::Connect).is_err());
        // Property value cut by the block's own length.
        assert!(read(b"\x02\x11\x00\x00\x00\x00", PropertyContext::Connect).is_err());
        // Values the spec forbids.
        assert_eq!(
            read(b"\x03\x21\x00\x00", PropertyContext::Connect),
            Err(Error::InvalidPropertyValue(0x21))
        );
        assert_eq!(
            read(b"\x02\x17\x02", PropertyContext::Connect),
            Err(Error::InvalidPropertyValue(0x17))
        );
        assert_eq!(
            read(b"\x02\x0B\x00", PropertyContext::Publish),
            Err(Error::InvalidPropertyValue(0x0B))
        );
        assert_eq!(
            read(b"\x02\x24\x02", PropertyContext::Connack),
            Err(Error::InvalidPropertyValue(0x24))
        );
        assert_eq!(
            read(b"\x05\x27\x00\x00\x00\x00", PropertyContext::Connack),
            Err(Error::InvalidPropertyValue(0x27))
        );
        // A string property with U+0000.
        assert_eq!(
            read(b"\x05\x1F\x00\x02a\x00", PropertyContext::Puback),
            Err(Error::NullCharacter)
        );
    }

    #[test]
    fn write_refuses_what_read_refuses() {
        let mut out = BytesMut::new();
        let p = Properties {
            topic_alias: Some(3),
            ..Properties::default()
        };
        assert!(matches!(
            p.write(PropertyContext::Connect, &mut out),
            Err(Error::PropertyNotAllowed { id: 0x23, .. })
        ));
        let p = Properties {
            subscription_identifiers: vec![1, 2],
            ..Properties::default()
        };
        assert_eq!(
            p.write(PropertyContext::Subscribe, &mut out),
            Err(Error::DuplicateProperty(0x0B))
        );
        p.write(PropertyContext::Publish, &mut out).unwrap();
        assert_eq!(&out[..], b"\x04\x0B\x01\x0B\x02");
    }
}
