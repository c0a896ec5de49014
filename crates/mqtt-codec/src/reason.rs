//! Reason codes: MQTT 5's [`ReasonCode`] (with the set each packet type may carry) and MQTT 3's
//! CONNACK [`ConnectReturnCode`].

use std::fmt;

/// An MQTT 5 reason code (§2.4). Values below 0x80 are successes, 0x80 and up failures.
///
/// A plain byte with named constants, because several names share a value (0x00 is Success,
/// Normal disconnection and Granted QoS 0). Which values a packet may carry is checked by the
/// codec on decode and encode.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ReasonCode(pub u8);

macro_rules! reason_codes {
    ($($name:ident = $value:expr, $text:expr;)*) => {
        impl ReasonCode {
            $(
                #[doc = $text]
                pub const $name: ReasonCode = ReasonCode($value);
            )*

            /// The spec's name for this value (the first one, where names share a value), or
            /// "Unknown".
            #[allow(unreachable_patterns)]
            pub fn name(self) -> &'static str {
                match self.0 {
                    $($value => $text,)*
                    _ => "Unknown",
                }
            }
        }
    };
}

reason_codes! {
    SUCCESS = 0x00, "Success";
    NORMAL_DISCONNECTION = 0x00, "Normal disconnection";
    GRANTED_QOS_0 = 0x00, "Granted QoS 0";
    GRANTED_QOS_1 = 0x01, "Granted QoS 1";
    GRANTED_QOS_2 = 0x02, "Granted QoS 2";
    DISCONNECT_WITH_WILL_MESSAGE = 0x04, "Disconnect with Will Message";
    NO_MATCHING_SUBSCRIBERS = 0x10, "No matching subscribers";
    NO_SUBSCRIPTION_EXISTED = 0x11, "No subscription existed";
    CONTINUE_AUTHENTICATION = 0x18, "Continue authentication";
    RE_AUTHENTICATE = 0x19, "Re-authenticate";
    UNSPECIFIED_ERROR = 0x80, "Unspecified error";
    MALFORMED_PACKET = 0x81, "Malformed Packet";
    PROTOCOL_ERROR = 0x82, "Protocol Error";
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83, "Implementation specific error";
    UNSUPPORTED_PROTOCOL_VERSION = 0x84, "Unsupported Protocol Version";
    CLIENT_IDENTIFIER_NOT_VALID = 0x85, "Client Identifier not valid";
    BAD_USER_NAME_OR_PASSWORD = 0x86, "Bad User Name or Password";
    NOT_AUTHORIZED = 0x87, "Not authorized";
    SERVER_UNAVAILABLE = 0x88, "Server unavailable";
    SERVER_BUSY = 0x89, "Server busy";
    BANNED = 0x8A, "Banned";
    SERVER_SHUTTING_DOWN = 0x8B, "Server shutting down";
    BAD_AUTHENTICATION_METHOD = 0x8C, "Bad authentication method";
    KEEP_ALIVE_TIMEOUT = 0x8D, "Keep Alive timeout";
    SESSION_TAKEN_OVER = 0x8E, "Session taken over";
    TOPIC_FILTER_INVALID = 0x8F, "Topic Filter invalid";
    TOPIC_NAME_INVALID = 0x90, "Topic Name invalid";
    PACKET_IDENTIFIER_IN_USE = 0x91, "Packet Identifier in use";
    PACKET_IDENTIFIER_NOT_FOUND = 0x92, "Packet Identifier not found";
    RECEIVE_MAXIMUM_EXCEEDED = 0x93, "Receive Maximum exceeded";
    TOPIC_ALIAS_INVALID = 0x94, "Topic Alias invalid";
    PACKET_TOO_LARGE = 0x95, "Packet too large";
    MESSAGE_RATE_TOO_HIGH = 0x96, "Message rate too high";
    QUOTA_EXCEEDED = 0x97, "Quota exceeded";
    ADMINISTRATIVE_ACTION = 0x98, "Administrative action";
    PAYLOAD_FORMAT_INVALID = 0x99, "Payload format invalid";
    RETAIN_NOT_SUPPORTED = 0x9A, "Retain not supported";
    QOS_NOT_SUPPORTED = 0x9B, "QoS not supported";
    USE_ANOTHER_SERVER = 0x9C, "Use another server";
    SERVER_MOVED = 0x9D, "Server moved";
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E, "Shared Subscriptions not supported";
    CONNECTION_RATE_EXCEEDED = 0x9F, "Connection rate exceeded";
    MAXIMUM_CONNECT_TIME = 0xA0, "Maximum connect time";
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1, "Subscription Identifiers not supported";
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2, "Wildcard Subscriptions not supported";
}

impl ReasonCode {
    /// True for failures (0x80 and up).
    pub fn is_error(self) -> bool {
        self.0 >= 0x80
    }

    /// True if the spec allows this value in a packet of the given kind (MQTT 5 §2.4 and
    /// each packet's reason code table).
    pub fn is_valid_for(self, kind: ReasonCodeContext) -> bool {
        kind.allowed().contains(&self.0)
    }
}

impl fmt::Debug for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReasonCode({:#04x} {})", self.0, self.name())
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:#04x})", self.name(), self.0)
    }
}

impl From<u8> for ReasonCode {
    fn from(value: u8) -> Self {
        ReasonCode(value)
    }
}

impl From<ReasonCode> for u8 {
    fn from(value: ReasonCode) -> Self {
        value.0
    }
}

/// The packet kinds that carry reason codes, each with its own allowed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasonCodeContext {
    Connack,
    Puback,
    Pubrec,
    Pubrel,
    Pubcomp,
    Suback,
    Unsuback,
    Disconnect,
    Auth,
}

impl ReasonCodeContext {
    /// The reason code values this packet kind may carry in MQTT 5.
    pub fn allowed(self) -> &'static [u8] {
        match self {
            ReasonCodeContext::Connack => &[
                0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90,
                0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
            ],
            ReasonCodeContext::Puback | ReasonCodeContext::Pubrec => {
                &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99]
            }
            ReasonCodeContext::Pubrel | ReasonCodeContext::Pubcomp => &[0x00, 0x92],
            ReasonCodeContext::Suback => &[
                0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
            ],
            ReasonCodeContext::Unsuback => &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91],
            ReasonCodeContext::Disconnect => &[
                0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93,
                0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1,
                0xA2,
            ],
            ReasonCodeContext::Auth => &[0x00, 0x18, 0x19],
        }
    }

    /// The packet name, for error messages.
    pub fn packet_name(self) -> &'static str {
        match self {
            ReasonCodeContext::Connack => "CONNACK",
            ReasonCodeContext::Puback => "PUBACK",
            ReasonCodeContext::Pubrec => "PUBREC",
            ReasonCodeContext::Pubrel => "PUBREL",
            ReasonCodeContext::Pubcomp => "PUBCOMP",
            ReasonCodeContext::Suback => "SUBACK",
            ReasonCodeContext::Unsuback => "UNSUBACK",
            ReasonCodeContext::Disconnect => "DISCONNECT",
            ReasonCodeContext::Auth => "AUTH",
        }
    }
}

/// An MQTT 3.1 / 3.1.1 CONNACK return code (3.1.1 §3.2.2.3).
///
/// The codec's [`crate::Connack`] always holds a [`ReasonCode`]; for MQTT 3 it is converted
/// with [`ConnectReturnCode::from_reason_code`] on encode and [`ConnectReturnCode::reason_code`]
/// on decode, so one code path serves every protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ConnectReturnCode {
    /// 0: connection accepted.
    Accepted = 0,
    /// 1: the server does not support the requested protocol level.
    UnacceptableProtocolVersion = 1,
    /// 2: the client identifier is not allowed.
    IdentifierRejected = 2,
    /// 3: the MQTT service is unavailable.
    ServerUnavailable = 3,
    /// 4: the user name or password is malformed.
    BadUserNameOrPassword = 4,
    /// 5: the client is not authorized to connect.
    NotAuthorized = 5,
}

impl ConnectReturnCode {
    /// The return code for a wire value, `None` for 6..=255 (reserved).
    pub fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            0 => ConnectReturnCode::Accepted,
            1 => ConnectReturnCode::UnacceptableProtocolVersion,
            2 => ConnectReturnCode::IdentifierRejected,
            3 => ConnectReturnCode::ServerUnavailable,
            4 => ConnectReturnCode::BadUserNameOrPassword,
            5 => ConnectReturnCode::NotAuthorized,
            _ => return None,
        })
    }

    /// The MQTT 5 reason code with the same meaning.
    pub fn reason_code(self) -> ReasonCode {
        match self {
            ConnectReturnCode::Accepted => ReasonCode::SUCCESS,
            ConnectReturnCode::UnacceptableProtocolVersion => {
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
            }
            ConnectReturnCode::IdentifierRejected => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            ConnectReturnCode::ServerUnavailable => ReasonCode::SERVER_UNAVAILABLE,
            ConnectReturnCode::BadUserNameOrPassword => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            ConnectReturnCode::NotAuthorized => ReasonCode::NOT_AUTHORIZED,
        }
    }

    /// The closest MQTT 3 return code for an MQTT 5 reason code: the five with a direct
    /// counterpart map to it, Banned / Bad authentication method to NotAuthorized, and every
    /// other failure to ServerUnavailable. (Success stays Accepted.)
    pub fn from_reason_code(code: ReasonCode) -> Self {
        match code {
            ReasonCode::SUCCESS => ConnectReturnCode::Accepted,
            ReasonCode::UNSUPPORTED_PROTOCOL_VERSION => {
                ConnectReturnCode::UnacceptableProtocolVersion
            }
            ReasonCode::CLIENT_IDENTIFIER_NOT_VALID => ConnectReturnCode::IdentifierRejected,
            ReasonCode::BAD_USER_NAME_OR_PASSWORD => ConnectReturnCode::BadUserNameOrPassword,
            ReasonCode::NOT_AUTHORIZED
            | ReasonCode::BANNED
            | ReasonCode::BAD_AUTHENTICATION_METHOD => ConnectReturnCode::NotAuthorized,
            _ => ConnectReturnCode::ServerUnavailable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_errors() {
        assert_eq!(ReasonCode::SUCCESS.name(), "Success");
        assert_eq!(ReasonCode(0x95).name(), "Packet too large");
        assert_eq!(ReasonCode(0x7f).name(), "Unknown");
        assert!(ReasonCode::UNSPECIFIED_ERROR.is_error());
        assert!(!ReasonCode::NO_MATCHING_SUBSCRIBERS.is_error());
        assert_eq!(
            ReasonCode::MALFORMED_PACKET.to_string(),
            "Malformed Packet (0x81)"
        );
    }

    #[test]
    fn allowed_sets() {
        assert!(ReasonCode::NO_MATCHING_SUBSCRIBERS.is_valid_for(ReasonCodeContext::Puback));
        assert!(!ReasonCode::NO_MATCHING_SUBSCRIBERS.is_valid_for(ReasonCodeContext::Pubrel));
        assert!(ReasonCode::PACKET_IDENTIFIER_NOT_FOUND.is_valid_for(ReasonCodeContext::Pubcomp));
        assert!(
            ReasonCode::DISCONNECT_WITH_WILL_MESSAGE.is_valid_for(ReasonCodeContext::Disconnect)
        );
        assert!(!ReasonCode::DISCONNECT_WITH_WILL_MESSAGE.is_valid_for(ReasonCodeContext::Connack));
        assert!(ReasonCode::CONTINUE_AUTHENTICATION.is_valid_for(ReasonCodeContext::Auth));
        assert!(ReasonCode::GRANTED_QOS_2.is_valid_for(ReasonCodeContext::Suback));
        assert!(!ReasonCode::GRANTED_QOS_2.is_valid_for(ReasonCodeContext::Unsuback));
    }

    #[test]
    fn connect_return_codes_map_both_ways() {
        for v in 0..=5u8 {
            let rc = ConnectReturnCode::from_u8(v).unwrap();
            assert_eq!(rc as u8, v);
            assert_eq!(ConnectReturnCode::from_reason_code(rc.reason_code()), rc);
        }
        assert_eq!(ConnectReturnCode::from_u8(6), None);
        assert_eq!(
            ConnectReturnCode::from_reason_code(ReasonCode::BANNED),
            ConnectReturnCode::NotAuthorized
        );
        assert_eq!(
            ConnectReturnCode::from_reason_code(ReasonCode::QUOTA_EXCEEDED),
            ConnectReturnCode::ServerUnavailable
        );
    }
}
