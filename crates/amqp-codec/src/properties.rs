//! `BasicProperties`: the basic class's content properties and their flag-prefixed codec.
//!
//! A content header's property list starts with a 16-bit flags word: bit 15 says whether the
//! first property (content-type) is present, bit 14 the second, ... bit 2 the fourteenth
//! (cluster-id). Bit 0 says another flags word follows. Only present properties are written,
//! in flag order.

use bytes::{BufMut, BytesMut};

use crate::error::CodecError;
use crate::value::{read_table, write_table, FieldTable};
use crate::wire::{put_shortstr, Reader};

/// The basic class's content properties, all optional, in the spec's flag order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BasicProperties {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub headers: Option<FieldTable>,
    /// 1 = non-persistent, 2 = persistent.
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    pub expiration: Option<String>,
    pub message_id: Option<String>,
    /// Seconds since the Unix epoch.
    pub timestamp: Option<u64>,
    /// The spec's `type`.
    pub kind: Option<String>,
    pub user_id: Option<String>,
    pub app_id: Option<String>,
    pub cluster_id: Option<String>,
}

const CONTENT_TYPE: u16 = 1 << 15;
const CONTENT_ENCODING: u16 = 1 << 14;
const HEADERS: u16 = 1 << 13;
const DELIVERY_MODE: u16 = 1 << 12;
const PRIORITY: u16 = 1 << 11;
const CORRELATION_ID: u16 = 1 << 10;
const REPLY_TO: u16 = 1 << 9;
const EXPIRATION: u16 = 1 << 8;
const MESSAGE_ID: u16 = 1 << 7;
const TIMESTAMP: u16 = 1 << 6;
const KIND: u16 = 1 << 5;
const USER_ID: u16 = 1 << 4;
const APP_ID: u16 = 1 << 3;
const CLUSTER_ID: u16 = 1 << 2;
/// Bit 1 would be a fifteenth basic property; the basic class has none.
const UNDEFINED: u16 = 1 << 1;
const CONTINUATION: u16 = 1;

type Result<T> = std::result::Result<T, CodecError>;

fn shortstr_if(r: &mut Reader<'_>, flags: u16, bit: u16) -> Result<Option<String>> {
    if flags & bit == 0 {
        return Ok(None);
    }
    r.shortstr().map(Some)
}

/// Reads a flags word (and any continuation words) and the properties it announces.
///
/// # Errors
/// `Syntax` for truncated properties, invalid UTF-8, or a flag for a property the basic class
/// does not define (bit 1, or any bit in a continuation word).
pub(crate) fn read_properties(r: &mut Reader<'_>) -> Result<BasicProperties> {
    const UNKNOWN: CodecError = CodecError::Syntax("content header flags an unknown property");
    let flags = r.u16()?;
    if flags & UNDEFINED != 0 {
        return Err(UNKNOWN);
    }
    let mut more = flags & CONTINUATION != 0;
    while more {
        // Each word takes two bytes, so this loop is bounded by the input.
        let next = r.u16()?;
        if next & !CONTINUATION != 0 {
            return Err(UNKNOWN);
        }
        more = next & CONTINUATION != 0;
    }
    Ok(BasicProperties {
        content_type: shortstr_if(r, flags, CONTENT_TYPE)?,
        content_encoding: shortstr_if(r, flags, CONTENT_ENCODING)?,
        headers: if flags & HEADERS != 0 {
            Some(read_table(r)?)
        } else {
            None
        },
        delivery_mode: if flags & DELIVERY_MODE != 0 {
            Some(r.u8()?)
        } else {
            None
        },
        priority: if flags & PRIORITY != 0 {
            Some(r.u8()?)
        } else {
            None
        },
        correlation_id: shortstr_if(r, flags, CORRELATION_ID)?,
        reply_to: shortstr_if(r, flags, REPLY_TO)?,
        expiration: shortstr_if(r, flags, EXPIRATION)?,
        message_id: shortstr_if(r, flags, MESSAGE_ID)?,
        timestamp: if flags & TIMESTAMP != 0 {
            Some(r.u64()?)
        } else {
            None
        },
        kind: shortstr_if(r, flags, KIND)?,
        user_id: shortstr_if(r, flags, USER_ID)?,
        app_id: shortstr_if(r, flags, APP_ID)?,
        cluster_id: shortstr_if(r, flags, CLUSTER_ID)?,
    })
}

/// Writes the flags word and the present properties. Shortstr properties longer than 255
/// bytes are truncated at a char boundary.
pub(crate) fn write_properties(out: &mut BytesMut, p: &BasicProperties) {
    let mut flags = 0u16;
    let mut flag = |present: bool, bit: u16| {
        if present {
            flags |= bit;
        }
    };
    flag(p.content_type.is_some(), CONTENT_TYPE);
    flag(p.content_encoding.is_some(), CONTENT_ENCODING);
    flag(p.headers.is_some(), HEADERS);
    flag(p.delivery_mode.is_some(), DELIVERY_MODE);
    flag(p.priority.is_some(), PRIORITY);
    flag(p.correlation_id.is_some(), CORRELATION_ID);
    flag(p.reply_to.is_some(), REPLY_TO);
    flag(p.expiration.is_some(), EXPIRATION);
    flag(p.message_id.is_some(), MESSAGE_ID);
    flag(p.timestamp.is_some(), TIMESTAMP);
    flag(p.kind.is_some(), KIND);
    flag(p.user_id.is_some(), USER_ID);
    flag(p.app_id.is_some(), APP_ID);
    flag(p.cluster_id.is_some(), CLUSTER_ID);
    out.put_u16(flags);
    let put = |out: &mut BytesMut, s: &Option<String>| {
        if let Some(s) = s {
            put_shortstr(out, s);
        }
    };
    put(out, &p.content_type);
    put(out, &p.content_encoding);
    if let Some(h) = &p.headers {
        write_table(out, h);
    }
    if let Some(v) = p.delivery_mode {
        out.put_u8(v);
    }
    if let Some(v) = p.priority {
        out.put_u8(v);
    }
    put(out, &p.correlation_id);
    put(out, &p.reply_to);
    put(out, &p.expiration);
    put(out, &p.message_id);
    if let Some(v) = p.timestamp {
        out.put_u64(v);
    }
    put(out, &p.kind);
    put(out, &p.user_id);
    put(out, &p.app_id);
    put(out, &p.cluster_id);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::value::AmqpValue;
    use proptest::prelude::*;

    pub(crate) fn full() -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert("x-trace", AmqpValue::LongString("abc".into()));
        BasicProperties {
            content_type: Some("application/json".into()),
            content_encoding: Some("gzip".into()),
            headers: Some(headers),
            delivery_mode: Some(2),
            priority: Some(9),
            correlation_id: Some("corr".into()),
            reply_to: Some("amq.rabbitmq.reply-to".into()),
            expiration: Some("60000".into()),
            message_id: Some("m-1".into()),
            timestamp: Some(1_700_000_000),
            kind: Some("order.created".into()),
            user_id: Some("guest".into()),
            app_id: Some("shop".into()),
            cluster_id: Some("c".into()),
        }
    }

    fn round_trip(p: &BasicProperties) -> BasicProperties {
        let mut out = BytesMut::new();
        write_properties(&mut out, p);
        let mut r = Reader::new(&out);
        let back = read_properties(&mut r).unwrap();
        assert!(r.is_empty());
        back
    }

    #[test]
    fn all_and_none_round_trip() {
        assert_eq!(round_trip(&full()), full());
        assert_eq!(
            round_trip(&BasicProperties::default()),
            BasicProperties::default()
        );
        let mut out = BytesMut::new();
        write_properties(&mut out, &full());
        assert_eq!(&out[..2], &[0xff, 0xfc]);
    }

    #[test]
    fn golden_layout() {
        let p = BasicProperties {
            content_type: Some("text/plain".into()),
            delivery_mode: Some(2),
            timestamp: Some(0x0102_0304_0506_0708),
            ..Default::default()
        };
        let mut out = BytesMut::new();
        write_properties(&mut out, &p);
        let mut expected = vec![0x90, 0x40, 10];
        expected.extend_from_slice(b"text/plain");
        expected.push(2);
        expected.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&out[..], &expected[..]);
    }

    #[test]
    fn unknown_flags_and_truncation_are_errors() {
        let err = read_properties(&mut Reader::new(&[0x00, 0x02])).unwrap_err();
        assert!(matches!(err, CodecError::Syntax(_)));
        // Continuation word announcing an unknown property.
        let err = read_properties(&mut Reader::new(&[0x00, 0x01, 0x80, 0x00])).unwrap_err();
        assert!(matches!(err, CodecError::Syntax(_)));
        // Empty continuation words are accepted.
        let p = read_properties(&mut Reader::new(&[0x10, 0x01, 0x00, 0x01, 0x00, 0x00, 2]));
        assert_eq!(p.unwrap().delivery_mode, Some(2));
        // content-type flagged but missing.
        assert!(read_properties(&mut Reader::new(&[0x80, 0x00])).is_err());
        let mut out = BytesMut::new();
        write_properties(&mut out, &full());
        for len in 0..out.len() {
            assert!(matches!(
                read_properties(&mut Reader::new(&out[..len])),
                Err(CodecError::Syntax(_))
            ));
        }
    }

    fn opt_str() -> impl Strategy<Value = Option<String>> {
        proptest::option::of("[ -~]{0,20}")
    }

    prop_compose! {
        pub(crate) fn arb_properties()(
            content_type in opt_str(), content_encoding in opt_str(),
            headers in proptest::option::of(crate::value::tests::arb_table()),
            delivery_mode in proptest::option::of(any::<u8>()),
            priority in proptest::option::of(any::<u8>()),
            correlation_id in opt_str(), reply_to in opt_str(), expiration in opt_str(),
            message_id in opt_str(), timestamp in proptest::option::of(any::<u64>()),
            kind in opt_str(), user_id in opt_str(), app_id in opt_str(), cluster_id in opt_str(),
        ) -> BasicProperties {
            BasicProperties {
                content_type, content_encoding, headers, delivery_mode, priority, correlation_id,
                reply_to, expiration, message_id, timestamp, kind, user_id, app_id, cluster_id,
            }
        }
    }

    proptest! {
        #[test]
        fn random_properties_round_trip(p in arb_properties()) {
            prop_assert_eq!(round_trip(&p), p);
        }
    }
}
