//! AMQP exceptions: channel and connection errors with RabbitMQ's reply codes, and
//! the mapping from core errors.

use ferrymq_core::CoreError;

/// AMQP reply codes used by the adapter.
pub mod code {
    pub const REPLY_SUCCESS: u16 = 200;
    pub const CONTENT_TOO_LARGE: u16 = 311;
    pub const NO_ROUTE: u16 = 312;
    pub const CONNECTION_FORCED: u16 = 320;
    pub const INVALID_PATH: u16 = 402;
    pub const ACCESS_REFUSED: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const RESOURCE_LOCKED: u16 = 405;
    pub const PRECONDITION_FAILED: u16 = 406;
    pub const FRAME_ERROR: u16 = 501;
    pub const SYNTAX_ERROR: u16 = 502;
    pub const COMMAND_INVALID: u16 = 503;
    pub const CHANNEL_ERROR: u16 = 504;
    pub const UNEXPECTED_FRAME: u16 = 505;
    pub const RESOURCE_ERROR: u16 = 506;
    pub const NOT_ALLOWED: u16 = 530;
    pub const NOT_IMPLEMENTED: u16 = 540;
    pub const INTERNAL_ERROR: u16 = 541;
}

/// What went wrong, and whether it closes a channel or the whole connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exception {
    /// True for connection exceptions.
    pub connection: bool,
    pub code: u16,
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
}

/// The reply-text prefix RabbitMQ puts before the message.
fn code_name(code: u16) -> &'static str {
    match code {
        code::CONNECTION_FORCED => "CONNECTION_FORCED",
        code::ACCESS_REFUSED => "ACCESS_REFUSED",
        code::NOT_FOUND => "NOT_FOUND",
        code::RESOURCE_LOCKED => "RESOURCE_LOCKED",
        code::PRECONDITION_FAILED => "PRECONDITION_FAILED",
        code::FRAME_ERROR => "FRAME_ERROR",
        code::SYNTAX_ERROR => "SYNTAX_ERROR",
        code::COMMAND_INVALID => "COMMAND_INVALID",
        code::CHANNEL_ERROR => "CHANNEL_ERROR",
        code::UNEXPECTED_FRAME => "UNEXPECTED_FRAME",
        code::RESOURCE_ERROR => "RESOURCE_ERROR",
        code::NOT_ALLOWED => "NOT_ALLOWED",
        code::NOT_IMPLEMENTED => "NOT_IMPLEMENTED",
        code::INTERNAL_ERROR => "INTERNAL_ERROR",
        _ => "ERROR",
    }
}

impl Exception {
    /// A channel exception; `text` without the code-name prefix.
    pub fn channel(code: u16, text: impl AsRef<str>) -> Self {
        Exception {
            connection: false,
            code,
            text: format!("{} - {}", code_name(code), text.as_ref()),
            class_id: 0,
            method_id: 0,
        }
    }

    /// A connection exception; `text` without the code-name prefix.
    pub fn connection(code: u16, text: impl AsRef<str>) -> Self {
        Exception {
            connection: true,
            ..Exception::channel(code, text)
        }
    }

    /// Records the method that caused it.
    pub fn at(mut self, class_id: u16, method_id: u16) -> Self {
        self.class_id = class_id;
        self.method_id = method_id;
        self
    }

    /// The reply text, cut to fit a shortstr as RabbitMQ does (252 bytes + "...").
    pub fn reply_text(&self) -> String {
        let mut t = self.text.clone();
        if t.len() > 255 {
            let mut cut = 252;
            while !t.is_char_boundary(cut) {
                cut -= 1;
            }
            t.truncate(cut);
            t.push_str("...");
        }
        t
    }
}

impl From<CoreError> for Exception {
    fn from(e: CoreError) -> Self {
        // The core's Display already carries RabbitMQ's prefix; strip it so
        // `channel()` adds the right one.
        let full = e.to_string();
        let strip = |s: &str| {
            full.split_once(" - ")
                .map(|(_, t)| t.to_owned())
                .unwrap_or_else(|| s.to_owned())
        };
        match &e {
            CoreError::NotFound(_) => Exception::channel(code::NOT_FOUND, strip(&full)),
            CoreError::AccessRefused(_) => Exception::channel(code::ACCESS_REFUSED, strip(&full)),
            CoreError::ResourceLocked(_) => Exception::channel(code::RESOURCE_LOCKED, strip(&full)),
            CoreError::PreconditionFailed(_)
            | CoreError::InvalidArgument(_)
            | CoreError::LimitReached(_) => {
                Exception::channel(code::PRECONDITION_FAILED, strip(&full))
            }
            CoreError::NotAllowed(_) => Exception::connection(code::NOT_ALLOWED, strip(&full)),
            CoreError::ShuttingDown => {
                Exception::connection(code::CONNECTION_FORCED, "broker is shutting down")
            }
            CoreError::Storage(_) | CoreError::Codec(_) | CoreError::Internal(_) => {
                Exception::connection(code::INTERNAL_ERROR, full)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_errors_map_to_rabbitmq_codes_and_texts() {
        let e: Exception = CoreError::NotFound("no queue 'q' in vhost '/'".into()).into();
        assert_eq!((e.connection, e.code), (false, 404));
        assert_eq!(e.text, "NOT_FOUND - no queue 'q' in vhost '/'");
        let e: Exception = CoreError::ResourceLocked("x".into()).into();
        assert_eq!(e.code, 405);
        let e: Exception = CoreError::InvalidArgument("bad".into()).into();
        assert_eq!(e.code, 406);
        let e: Exception = CoreError::NotAllowed("no".into()).into();
        assert!(e.connection);
        assert_eq!(e.code, 530);
    }

    #[test]
    fn long_texts_fit_a_shortstr() {
        let e = Exception::channel(406, "é".repeat(300));
        assert!(e.reply_text().len() <= 255);
    }
}
