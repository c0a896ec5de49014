//! `CodecError`: why a frame could not be decoded, and the AMQP reply code that says so.

/// Why bytes from the peer could not be decoded.
///
/// "Need more bytes" is not an error: `decode_frame` returns `Ok(None)` for that. Every variant
/// here is a hard (connection-level) error; the connection state machine answers it with
/// `connection.close` carrying [`CodecError::reply_code`] and then closes the socket.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum CodecError {
    /// The octet after the frame payload was not `FRAME_END` (0xCE).
    #[error("bad frame end octet {0:#x}")]
    FrameEnd(u8),
    /// The frame header announced a payload larger than `frame_max - 8`. `size` is the payload
    /// size from the frame header, `max` the effective frame_max it was checked against.
    #[error("frame of {size} bytes exceeds frame_max {max}")]
    FrameTooLarge { size: u32, max: u32 },
    /// The frame type octet is not one of 1 (method), 2 (header), 3 (body), 8 (heartbeat).
    #[error("unknown frame type {0}")]
    UnknownFrameType(u8),
    /// A method frame named a class/method pair that AMQP 0-9-1 (with RabbitMQ's extensions)
    /// does not define.
    #[error("unknown method {class_id}.{method_id}")]
    UnknownMethod { class_id: u16, method_id: u16 },
    /// A complete frame whose contents do not parse: truncated or trailing arguments, a
    /// string that is not UTF-8, an unknown field-table value type, nesting too deep, ...
    #[error("malformed {0}")]
    Syntax(&'static str),
}

/// AMQP reply code 501: a frame could not be delimited or was of a kind we do not know.
pub const REPLY_FRAME_ERROR: u16 = 501;
/// AMQP reply code 502: a frame's contents did not parse.
pub const REPLY_SYNTAX_ERROR: u16 = 502;
/// AMQP reply code 503: a method the server does not implement (or that does not exist).
pub const REPLY_COMMAND_INVALID: u16 = 503;

impl CodecError {
    /// The reply code for the `connection.close` that answers this error.
    ///
    /// - `FrameEnd`, `FrameTooLarge`, `UnknownFrameType` → 501 FRAME_ERROR (as RabbitMQ).
    /// - `Syntax` → 502 SYNTAX_ERROR. (RabbitMQ itself says 501 with "cannot decode" for
    ///   undecodable method arguments; 502 is the spec's code for "contained illegal values"
    ///   and tells the client more precisely what went wrong.)
    /// - `UnknownMethod` → 503 COMMAND_INVALID. RabbitMQ answers methods it parses but does not
    ///   handle with 503 "unimplemented method", and drops the connection without a close for
    ///   ids it does not know at all; 503 gives the client a proper `connection.close` instead.
    ///   540 NOT_IMPLEMENTED is meant for known-but-unsupported functionality, not for
    ///   undefined method ids.
    pub fn reply_code(&self) -> u16 {
        match self {
            CodecError::FrameEnd(_)
            | CodecError::FrameTooLarge { .. }
            | CodecError::UnknownFrameType(_) => REPLY_FRAME_ERROR,
            CodecError::UnknownMethod { .. } => REPLY_COMMAND_INVALID,
            CodecError::Syntax(_) => REPLY_SYNTAX_ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_codes() {
        assert_eq!(CodecError::FrameEnd(0).reply_code(), 501);
        assert_eq!(
            CodecError::FrameTooLarge { size: 9, max: 8 }.reply_code(),
            501
        );
        assert_eq!(CodecError::UnknownFrameType(9).reply_code(), 501);
        let unknown = CodecError::UnknownMethod {
            class_id: 60,
            method_id: 99,
        };
        assert_eq!(unknown.reply_code(), 503);
        assert_eq!(CodecError::Syntax("x").reply_code(), 502);
    }

    #[test]
    fn messages() {
        assert_eq!(
            CodecError::FrameEnd(0x41).to_string(),
            "bad frame end octet 0x41"
        );
        let e = CodecError::UnknownMethod {
            class_id: 60,
            method_id: 99,
        };
        assert_eq!(e.to_string(), "unknown method 60.99");
        let e = CodecError::FrameTooLarge {
            size: 10,
            max: 4096,
        };
        assert_eq!(e.to_string(), "frame of 10 bytes exceeds frame_max 4096");
    }
}
