//! Frames: `decode_frame` / `encode_frame` for the four AMQP 0-9-1 frame types, and
//! `encode_content` for a whole message (method + content header + body frames).
//!
//! Frame layout: type (1), channel (2), payload size (4), payload, frame-end octet 0xCE.
//! Decoding is two steps: first "is a whole frame buffered?" (no → `Ok(None)`, nothing
//! consumed), then "does it parse?". The size is checked against frame_max as soon as the
//! 7-byte header is in, before waiting for (and so before anyone buffers) the payload.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::CodecError;
use crate::method::{decode_method, encode_method, Method};
use crate::properties::{read_properties, write_properties, BasicProperties};
use crate::wire::{patch_len_u32, Reader};

/// Frame type of a method frame.
pub const FRAME_METHOD: u8 = 1;
/// Frame type of a content header frame.
pub const FRAME_HEADER: u8 = 2;
/// Frame type of a content body frame.
pub const FRAME_BODY: u8 = 3;
/// Frame type of a heartbeat frame.
pub const FRAME_HEARTBEAT: u8 = 8;
/// The octet that ends every frame.
pub const FRAME_END: u8 = 0xCE;
/// The smallest frame_max a peer may negotiate, and the limit before `connection.tune-ok`.
pub const FRAME_MIN_SIZE: u32 = 4096;
/// What an AMQP 0-9-1 client sends first.
pub const PROTOCOL_HEADER: [u8; 8] = *b"AMQP\x00\x00\x09\x01";
/// Bytes a frame adds around its payload: 7 of header, 1 frame-end octet.
pub const FRAME_OVERHEAD: u32 = 8;

const FRAME_HEADER_LEN: usize = 7;

/// One AMQP frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A method; if `method.has_content()` a header frame and body frames follow.
    Method { channel: u16, method: Method },
    /// A content header. Its properties are decoded with the basic class's layout whatever
    /// `class_id` says (basic is the only content class); the state machine checks that
    /// `class_id` matches the method's class (505 UNEXPECTED_FRAME otherwise).
    Header {
        channel: u16,
        class_id: u16,
        body_size: u64,
        properties: BasicProperties,
    },
    /// A slice of content body; zero-copy: it shares the decode input buffer's memory.
    Body { channel: u16, payload: Bytes },
    /// A heartbeat (the spec requires channel 0; checking that is the state machine's job).
    Heartbeat { channel: u16 },
}

/// The frame_max actually enforced for a given negotiated value: 0 means "no limit" in the
/// spec and becomes `u32::MAX`; anything below [`FRAME_MIN_SIZE`] is raised to it (the spec
/// forbids negotiating less, and RabbitMQ refuses it).
///
/// The connection should pass [`FRAME_MIN_SIZE`] until tuning is done and its own negotiated
/// limit (never 0) after, so that a peer can never make it buffer more than that.
pub fn frame_max_effective(frame_max: u32) -> u32 {
    if frame_max == 0 {
        u32::MAX
    } else {
        frame_max.max(FRAME_MIN_SIZE)
    }
}

type Result<T> = std::result::Result<T, CodecError>;

/// Decodes one frame from the front of `buf`, advancing it past the frame.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole frame; nothing is consumed then.
/// The frame type and the size (payload larger than `frame_max - 8` is an error) are checked
/// as soon as the 7-byte frame header is buffered, before the payload arrives. `frame_max` is
/// interpreted by [`frame_max_effective`]. On an error `buf` is left as it was; the connection
/// is expected to close.
///
/// Body frames are zero-copy: the payload is split off `buf` and shares its memory.
///
/// # Errors
/// `UnknownFrameType`, `FrameTooLarge` and `FrameEnd` for frames that cannot be delimited;
/// `UnknownMethod` and `Syntax` for complete frames whose payload does not parse (a heartbeat
/// with a payload is `Syntax`).
pub fn decode_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>> {
    if buf.len() < FRAME_HEADER_LEN {
        if let Some(&kind) = buf.first() {
            check_frame_type(kind)?;
        }
        return Ok(None);
    }
    let kind = buf[0];
    check_frame_type(kind)?;
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]);
    let max = frame_max_effective(frame_max);
    if size > max - FRAME_OVERHEAD {
        return Err(CodecError::FrameTooLarge { size, max });
    }
    // Cannot overflow: size <= u32::MAX - 8, and usize is at least 32 bits.
    let payload_end = FRAME_HEADER_LEN + size as usize;
    let total = payload_end + 1;
    if buf.len() < total {
        return Ok(None);
    }
    let end = buf[payload_end];
    if end != FRAME_END {
        return Err(CodecError::FrameEnd(end));
    }
    let payload = &buf[FRAME_HEADER_LEN..payload_end];
    let frame = match kind {
        FRAME_METHOD => Frame::Method {
            channel,
            method: decode_method(payload)?,
        },
        FRAME_HEADER => decode_header(channel, payload)?,
        FRAME_HEARTBEAT => {
            if size != 0 {
                return Err(CodecError::Syntax("heartbeat frame with a payload"));
            }
            Frame::Heartbeat { channel }
        }
        _ => {
            // FRAME_BODY (the type was checked above): hand out the buffer's own memory.
            let mut body = buf.split_to(total);
            body.truncate(payload_end);
            body.advance(FRAME_HEADER_LEN);
            return Ok(Some(Frame::Body {
                channel,
                payload: body.freeze(),
            }));
        }
    };
    buf.advance(total);
    Ok(Some(frame))
}

fn check_frame_type(kind: u8) -> Result<()> {
    match kind {
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT => Ok(()),
        other => Err(CodecError::UnknownFrameType(other)),
    }
}

fn decode_header(channel: u16, payload: &[u8]) -> Result<Frame> {
    let mut r = Reader::new(payload);
    let class_id = r.u16()?;
    let _weight = r.u16()?; // must be zero; unused by every broker
    let body_size = r.u64()?;
    let properties = read_properties(&mut r)?;
    if !r.is_empty() {
        return Err(CodecError::Syntax(
            "trailing bytes after content properties",
        ));
    }
    Ok(Frame::Header {
        channel,
        class_id,
        body_size,
        properties,
    })
}

/// Writes a frame header with a placeholder size; returns where the size goes.
fn begin_frame(out: &mut BytesMut, kind: u8, channel: u16) -> usize {
    out.put_u8(kind);
    out.put_u16(channel);
    let at = out.len();
    out.put_u32(0);
    at
}

fn end_frame(out: &mut BytesMut, size_at: usize) {
    patch_len_u32(out, size_at);
    out.put_u8(FRAME_END);
}

fn put_body_frame(out: &mut BytesMut, channel: u16, payload: &[u8]) {
    // A payload over u32::MAX bytes cannot be framed; cut so the size field stays truthful.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.put_u8(FRAME_BODY);
    out.put_u16(channel);
    out.put_u32(len);
    out.put_slice(&payload[..len as usize]);
    out.put_u8(FRAME_END);
}

fn put_header_frame(
    out: &mut BytesMut,
    channel: u16,
    class_id: u16,
    body_size: u64,
    properties: &BasicProperties,
) {
    let at = begin_frame(out, FRAME_HEADER, channel);
    out.put_u16(class_id);
    out.put_u16(0); // weight
    out.put_u64(body_size);
    write_properties(out, properties);
    end_frame(out, at);
}

fn put_method_frame(out: &mut BytesMut, channel: u16, method: &Method) {
    let at = begin_frame(out, FRAME_METHOD, channel);
    encode_method(method, out);
    end_frame(out, at);
}

/// Appends one frame to `out`. Does not check the size against a frame_max: splitting
/// content is `encode_content`'s job, and methods and headers are far below any frame_max
/// unless given huge tables.
pub fn encode_frame(frame: &Frame, out: &mut BytesMut) {
    match frame {
        Frame::Method { channel, method } => put_method_frame(out, *channel, method),
        Frame::Header {
            channel,
            class_id,
            body_size,
            properties,
        } => put_header_frame(out, *channel, *class_id, *body_size, properties),
        Frame::Body { channel, payload } => put_body_frame(out, *channel, payload),
        Frame::Heartbeat { channel } => {
            out.put_slice(&[FRAME_HEARTBEAT]);
            out.put_u16(*channel);
            out.put_slice(&[0, 0, 0, 0, FRAME_END]);
        }
    }
}

/// Appends a whole message: the method frame, a content header frame (class of `method`,
/// body size `body.len()`) and as many body frames as needed so that no frame exceeds
/// `frame_max` (interpreted by [`frame_max_effective`]). An empty body has no body frame.
///
/// Meant for content-bearing methods (basic.deliver, basic.get-ok, basic.return, and
/// basic.publish in tests); it does not check `method.has_content()`.
pub fn encode_content(
    channel: u16,
    method: &Method,
    properties: &BasicProperties,
    body: &[u8],
    frame_max: u32,
    out: &mut BytesMut,
) {
    let chunk = (frame_max_effective(frame_max) - FRAME_OVERHEAD) as usize;
    let body_frames = body.len().div_ceil(chunk);
    // One reservation for the common case: ~2 small frames plus the body and its framing.
    out.reserve(256 + body.len() + body_frames * FRAME_OVERHEAD as usize);
    put_method_frame(out, channel, method);
    put_header_frame(
        out,
        channel,
        method.class_id(),
        body.len() as u64,
        properties,
    );
    for piece in body.chunks(chunk) {
        put_body_frame(out, channel, piece);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::tests::Gen;
    use crate::method::{
        samples, BasicDeliver, BasicPublish, ConnectionStartOk, ConnectionTune, ConnectionTuneOk,
    };
    use crate::value::{AmqpValue, FieldTable};
    use proptest::prelude::*;

    fn encoded(frame: &Frame) -> BytesMut {
        let mut out = BytesMut::new();
        encode_frame(frame, &mut out);
        out
    }

    fn decode_all(bytes: &[u8], frame_max: u32) -> Vec<Frame> {
        let mut buf = BytesMut::from(bytes);
        let mut frames = Vec::new();
        while let Some(f) = decode_frame(&mut buf, frame_max).expect("valid") {
            frames.push(f);
        }
        assert!(buf.is_empty(), "left over: {:?}", &buf[..]);
        frames
    }

    fn sample_frames() -> Vec<Frame> {
        let mut frames: Vec<Frame> = samples(&mut Gen::new(0b0110_1011))
            .into_iter()
            .enumerate()
            .map(|(i, method)| Frame::Method {
                channel: i as u16,
                method,
            })
            .collect();
        frames.push(Frame::Header {
            channel: 3,
            class_id: 60,
            body_size: 1 << 40,
            properties: crate::properties::tests::full(),
        });
        frames.push(Frame::Header {
            channel: 3,
            class_id: 60,
            body_size: 0,
            properties: BasicProperties::default(),
        });
        frames.push(Frame::Body {
            channel: 65535,
            payload: Bytes::from_static(b"payload"),
        });
        frames.push(Frame::Body {
            channel: 1,
            payload: Bytes::new(),
        });
        frames.push(Frame::Heartbeat { channel: 0 });
        frames
    }

    #[test]
    fn protocol_header() {
        assert_eq!(&PROTOCOL_HEADER, &[b'A', b'M', b'Q', b'P', 0, 0, 9, 1]);
    }

    #[test]
    fn every_frame_round_trips() {
        let frames = sample_frames();
        let mut all = BytesMut::new();
        for f in &frames {
            let bytes = encoded(f);
            assert_eq!(decode_all(&bytes, 131_072), vec![f.clone()]);
            all.extend_from_slice(&bytes);
        }
        // Back to back in one buffer, too.
        assert_eq!(decode_all(&all, 131_072), frames);
    }

    #[test]
    fn every_truncation_is_incomplete() {
        for f in sample_frames() {
            let bytes = encoded(&f);
            for len in 0..bytes.len() {
                let mut buf = BytesMut::from(&bytes[..len]);
                assert_eq!(
                    decode_frame(&mut buf, 131_072),
                    Ok(None),
                    "{f:?} cut at {len}"
                );
                assert_eq!(buf.len(), len, "nothing consumed");
            }
        }
    }

    /// Re-frames a method payload cut short: the frame is complete, its arguments are not.
    #[test]
    fn complete_frame_with_truncated_arguments_is_a_syntax_error() {
        for method in samples(&mut Gen::new(7)) {
            let mut payload = BytesMut::new();
            encode_method(&method, &mut payload);
            for len in 0..payload.len() {
                let mut buf = BytesMut::new();
                buf.put_u8(FRAME_METHOD);
                buf.put_u16(1);
                buf.put_u32(len as u32);
                buf.put_slice(&payload[..len]);
                buf.put_u8(FRAME_END);
                let got = decode_frame(&mut buf, 131_072);
                assert!(
                    matches!(got, Err(CodecError::Syntax(_))),
                    "{} cut at {len}: {got:?}",
                    method.name()
                );
            }
        }
        // Same for a content header.
        let mut payload = BytesMut::new();
        put_header_frame(&mut payload, 1, 60, 5, &crate::properties::tests::full());
        let payload = &payload[7..payload.len() - 1];
        for len in 0..payload.len() {
            let mut buf = BytesMut::new();
            buf.put_u8(FRAME_HEADER);
            buf.put_u16(1);
            buf.put_u32(len as u32);
            buf.put_slice(&payload[..len]);
            buf.put_u8(FRAME_END);
            assert!(matches!(
                decode_frame(&mut buf, 131_072),
                Err(CodecError::Syntax(_))
            ));
        }
    }

    /// connection.start-ok as pika sends it (client properties cut down to two entries),
    /// assembled by hand from the spec.
    #[test]
    fn golden_connection_start_ok() {
        #[rustfmt::skip]
        let bytes: Vec<u8> = [
            &[1u8, 0, 0, 0, 0, 0, 84][..],           // method frame, channel 0, 84 bytes
            &[0, 10, 0, 11],                          // connection.start-ok
            &[0, 0, 0, 48],                           // client-properties: 48 bytes
            &[7], b"product", b"S", &[0, 0, 0, 4], b"pika",
            &[12], b"capabilities", b"F", &[0, 0, 0, 13],
            &[10], b"basic.nack", b"t", &[1],
            &[5], b"PLAIN",                           // mechanism
            &[0, 0, 0, 12], b"\0guest\0guest",        // response
            &[5], b"en_US",                           // locale
            &[0xCE],
        ]
        .concat();
        let mut caps = FieldTable::default();
        caps.insert("basic.nack", AmqpValue::Bool(true));
        let mut props = FieldTable::default();
        props.insert(
            "product",
            AmqpValue::LongString(Bytes::from_static(b"pika")),
        );
        props.insert("capabilities", AmqpValue::Table(caps));
        let frame = Frame::Method {
            channel: 0,
            method: Method::ConnectionStartOk(ConnectionStartOk {
                client_properties: props,
                mechanism: "PLAIN".into(),
                response: Bytes::from_static(b"\0guest\0guest"),
                locale: "en_US".into(),
            }),
        };
        assert_eq!(decode_all(&bytes, FRAME_MIN_SIZE), vec![frame.clone()]);
        assert_eq!(&encoded(&frame)[..], &bytes[..]);
    }

    /// connection.tune with RabbitMQ's defaults, and the client's tune-ok.
    #[test]
    fn golden_connection_tune() {
        #[rustfmt::skip]
        let tune: &[u8] = &[
            1, 0, 0, 0, 0, 0, 12,
            0, 10, 0, 30,
            0x07, 0xff,            // channel-max 2047
            0, 2, 0, 0,            // frame-max 131072
            0, 60,                 // heartbeat 60 s
            0xCE,
        ];
        let frame = Frame::Method {
            channel: 0,
            method: Method::ConnectionTune(ConnectionTune {
                channel_max: 2047,
                frame_max: 131_072,
                heartbeat: 60,
            }),
        };
        assert_eq!(&encoded(&frame)[..], tune);
        assert_eq!(decode_all(tune, FRAME_MIN_SIZE), vec![frame]);
        let mut tune_ok = tune.to_vec();
        tune_ok[10] = 31;
        let frame = Frame::Method {
            channel: 0,
            method: Method::ConnectionTuneOk(ConnectionTuneOk {
                channel_max: 2047,
                frame_max: 131_072,
                heartbeat: 60,
            }),
        };
        assert_eq!(decode_all(&tune_ok, FRAME_MIN_SIZE), vec![frame.clone()]);
        assert_eq!(&encoded(&frame)[..], &tune_ok[..]);
    }

    #[rustfmt::skip]
    fn golden_publish_bytes() -> Vec<u8> {
        [
            // basic.publish on channel 1: ticket 0, exchange "", routing key "hello", no bits
            &[1u8, 0, 1, 0, 0, 0, 14][..],
            &[0, 60, 0, 40, 0, 0, 0, 5], b"hello", &[0, 0xCE],
            // content header: class 60, weight 0, body size 11,
            // flags content-type | delivery-mode, "text/plain", 2
            &[2, 0, 1, 0, 0, 0, 26],
            &[0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 11, 0x90, 0x00, 10], b"text/plain", &[2, 0xCE],
            // body
            &[3, 0, 1, 0, 0, 0, 11], b"Hello World", &[0xCE],
        ]
        .concat()
    }

    #[test]
    fn golden_basic_publish_with_content() {
        let bytes = golden_publish_bytes();
        let method = Method::BasicPublish(BasicPublish {
            exchange: String::new(),
            routing_key: "hello".into(),
            mandatory: false,
            immediate: false,
        });
        let properties = BasicProperties {
            content_type: Some("text/plain".into()),
            delivery_mode: Some(2),
            ..Default::default()
        };
        let expected = vec![
            Frame::Method {
                channel: 1,
                method: method.clone(),
            },
            Frame::Header {
                channel: 1,
                class_id: 60,
                body_size: 11,
                properties: properties.clone(),
            },
            Frame::Body {
                channel: 1,
                payload: Bytes::from_static(b"Hello World"),
            },
        ];
        assert_eq!(decode_all(&bytes, 131_072), expected);
        let mut out = BytesMut::new();
        encode_content(1, &method, &properties, b"Hello World", 131_072, &mut out);
        assert_eq!(&out[..], &bytes[..]);
        let mut out = BytesMut::new();
        for f in &expected {
            encode_frame(f, &mut out);
        }
        assert_eq!(&out[..], &bytes[..]);
    }

    #[test]
    fn body_frames_are_zero_copy() {
        let mut buf = BytesMut::from(&golden_publish_bytes()[..]);
        let base = buf.as_ptr() as usize;
        let len = buf.len();
        let mut body = None;
        while let Some(f) = decode_frame(&mut buf, 131_072).unwrap() {
            if let Frame::Body { payload, .. } = f {
                body = Some(payload);
            }
        }
        let body = body.unwrap();
        let at = body.as_ptr() as usize;
        assert!(
            at >= base && at + body.len() <= base + len,
            "payload is not in the input"
        );
        assert_eq!(at - base, len - 1 - 11);
    }

    #[test]
    fn bad_end_octet() {
        let mut bytes = encoded(&Frame::Heartbeat { channel: 0 });
        bytes[7] = 0xCD;
        assert_eq!(
            decode_frame(&mut bytes, 131_072),
            Err(CodecError::FrameEnd(0xCD))
        );
        assert_eq!(bytes.len(), 8, "nothing consumed on error");
        let mut bytes = BytesMut::from(&golden_publish_bytes()[..]);
        bytes[21] = 0;
        assert_eq!(
            decode_frame(&mut bytes, 131_072),
            Err(CodecError::FrameEnd(0))
        );
    }

    #[test]
    fn oversize_frame_is_refused_on_the_header_alone() {
        // 2 GiB claimed; only the 7-byte header has arrived.
        let mut buf = BytesMut::from(&[FRAME_BODY, 0, 1, 0x80, 0, 0, 0][..]);
        assert_eq!(
            decode_frame(&mut buf, 131_072),
            Err(CodecError::FrameTooLarge {
                size: 0x8000_0000,
                max: 131_072
            })
        );
        // The limit is frame_max - 8 for the payload: exactly that is fine.
        let mut buf = BytesMut::new();
        buf.put_slice(&[FRAME_BODY, 0, 1]);
        buf.put_u32(4096 - 8);
        assert_eq!(decode_frame(&mut buf, 4096), Ok(None));
        buf.put_bytes(b'x', 4096 - 8);
        buf.put_u8(FRAME_END);
        assert!(matches!(
            decode_frame(&mut buf, 4096),
            Ok(Some(Frame::Body { .. }))
        ));
        let mut buf = BytesMut::new();
        buf.put_slice(&[FRAME_METHOD, 0, 1]);
        buf.put_u32(4096 - 7);
        assert_eq!(
            decode_frame(&mut buf, 4096),
            Err(CodecError::FrameTooLarge {
                size: 4089,
                max: 4096
            })
        );
        // Below the spec minimum, frame_max is raised to it; 0 means no limit.
        let mut buf = BytesMut::from(&[FRAME_BODY, 0, 1, 0, 0, 0x0f, 0xf8][..]);
        assert_eq!(decode_frame(&mut buf, 100), Ok(None));
        let mut buf = BytesMut::from(&[FRAME_BODY, 0, 1, 0xff, 0xff, 0xff, 0xf7][..]);
        assert_eq!(decode_frame(&mut buf, 0), Ok(None));
        let mut buf = BytesMut::from(&[FRAME_BODY, 0, 1, 0xff, 0xff, 0xff, 0xf8][..]);
        assert!(decode_frame(&mut buf, 0).is_err());
    }

    #[test]
    fn unknown_frame_type() {
        let mut buf = BytesMut::from(&[4u8, 0, 0, 0, 0, 0, 0, 0xCE][..]);
        assert_eq!(
            decode_frame(&mut buf, 131_072),
            Err(CodecError::UnknownFrameType(4))
        );
        // Reported on the first octet: "HTTP/1.1" or a second protocol header is caught early.
        let mut buf = BytesMut::from(&b"A"[..]);
        assert_eq!(
            decode_frame(&mut buf, 131_072),
            Err(CodecError::UnknownFrameType(b'A'))
        );
        let mut buf = BytesMut::new();
        assert_eq!(decode_frame(&mut buf, 131_072), Ok(None));
    }

    #[test]
    fn unknown_method_in_a_frame() {
        let mut buf = BytesMut::from(&[1u8, 0, 1, 0, 0, 0, 4, 0, 60, 0, 99, 0xCE][..]);
        assert_eq!(
            decode_frame(&mut buf, 131_072),
            Err(CodecError::UnknownMethod {
                class_id: 60,
                method_id: 99
            })
        );
        let mut buf = BytesMut::from(&[1u8, 0, 1, 0, 0, 0, 4, 0, 99, 0, 10, 0xCE][..]);
        assert_eq!(
            decode_frame(&mut buf, 131_072),
            Err(CodecError::UnknownMethod {
                class_id: 99,
                method_id: 10
            })
        );
    }

    #[test]
    fn heartbeat_with_payload_is_an_error() {
        let mut buf = BytesMut::from(&[8u8, 0, 0, 0, 0, 0, 1, 0, 0xCE][..]);
        assert!(matches!(
            decode_frame(&mut buf, 131_072),
            Err(CodecError::Syntax(_))
        ));
        assert_eq!(
            &encoded(&Frame::Heartbeat { channel: 0 })[..],
            &[8, 0, 0, 0, 0, 0, 0, 0xCE]
        );
    }

    #[test]
    fn encode_content_splits_the_body() {
        let method = Method::BasicDeliver(BasicDeliver {
            consumer_tag: "ctag".into(),
            delivery_tag: 42,
            redelivered: true,
            exchange: "ex".into(),
            routing_key: "rk".into(),
        });
        let properties = crate::properties::tests::full();
        let body: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut out = BytesMut::new();
        encode_content(5, &method, &properties, &body, 4096, &mut out);
        let frames = decode_all(&out, 4096);
        assert_eq!(
            frames.len(),
            2 + 3,
            "10000 bytes in 4088-byte pieces: 3 body frames"
        );
        assert_eq!(frames[0], Frame::Method { channel: 5, method });
        assert_eq!(
            frames[1],
            Frame::Header {
                channel: 5,
                class_id: 60,
                body_size: 10_000,
                properties
            }
        );
        let mut joined = Vec::new();
        for f in &frames[2..] {
            let Frame::Body {
                channel: 5,
                payload,
            } = f
            else {
                panic!("{f:?}")
            };
            assert!(payload.len() <= 4096 - 8);
            joined.extend_from_slice(payload);
        }
        assert_eq!(joined, body);
        // Exactly frame_max - 8 fits one frame; empty bodies have no body frame.
        for (len, body_frames) in [(4088, 1), (4089, 2), (0, 0)] {
            let mut out = BytesMut::new();
            encode_content(
                1,
                &frames[0].method(),
                &BasicProperties::default(),
                &body[..len],
                4096,
                &mut out,
            );
            assert_eq!(decode_all(&out, 4096).len(), 2 + body_frames, "{len}");
        }
    }

    impl Frame {
        fn method(&self) -> Method {
            match self {
                Frame::Method { method, .. } => method.clone(),
                _ => panic!("not a method frame"),
            }
        }
    }

    /// Writes the fuzz seed corpus when `FERRYMQ_FUZZ_SEED_DIR` is set (e.g. to
    /// `fuzz/corpus/amqp_frame`); otherwise does nothing.
    #[test]
    fn write_fuzz_seeds() {
        let Ok(dir) = std::env::var("FERRYMQ_FUZZ_SEED_DIR") else {
            return;
        };
        let write = |name: &str, bytes: &[u8]| {
            std::fs::write(std::path::Path::new(&dir).join(name), bytes).unwrap();
        };
        write("publish_with_content", &golden_publish_bytes());
        let mut deliver = BytesMut::new();
        let method = Method::BasicDeliver(BasicDeliver {
            consumer_tag: "amq.ctag-1".into(),
            delivery_tag: 1,
            redelivered: true,
            exchange: "amq.topic".into(),
            routing_key: "a.b".into(),
        });
        let body = vec![b'z'; 5000];
        encode_content(
            1,
            &method,
            &crate::properties::tests::full(),
            &body,
            4096,
            &mut deliver,
        );
        write("deliver_split_body", &deliver);
        let mut handshake = BytesMut::new();
        for m in samples(&mut Gen::new(0b1_0101)) {
            if m.class_id() == 10 {
                encode_frame(
                    &Frame::Method {
                        channel: 0,
                        method: m,
                    },
                    &mut handshake,
                );
            }
        }
        encode_frame(&Frame::Heartbeat { channel: 0 }, &mut handshake);
        write("connection_methods", &handshake);
        let mut rest = BytesMut::new();
        for m in samples(&mut Gen::new(0b0_1010)) {
            if m.class_id() != 10 {
                encode_frame(
                    &Frame::Method {
                        channel: 7,
                        method: m,
                    },
                    &mut rest,
                );
            }
        }
        write("channel_methods", &rest);
    }

    fn frame_strategy() -> impl Strategy<Value = Vec<u8>> {
        // A valid-looking frame header in front of random bytes reaches the payload parsers.
        (
            prop_oneof![Just(1u8), Just(2), Just(3), Just(8), any::<u8>()],
            any::<u16>(),
            proptest::collection::vec(any::<u8>(), 0..200),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(kind, channel, mut payload, plausible_method, good_end)| {
                if plausible_method && kind == 1 && payload.len() >= 4 {
                    let ids = [(10u16, 11u16), (50, 10), (60, 40), (60, 60), (40, 10)];
                    let (c, m) = ids[payload[0] as usize % ids.len()];
                    payload[..2].copy_from_slice(&c.to_be_bytes());
                    payload[2..4].copy_from_slice(&m.to_be_bytes());
                }
                let mut out = vec![kind];
                out.extend_from_slice(&channel.to_be_bytes());
                out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                out.extend_from_slice(&payload);
                out.push(if good_end {
                    FRAME_END
                } else {
                    payload.first().copied().unwrap_or(0)
                });
                out
            })
    }

    fn decode_loop_never_panics(bytes: &[u8]) {
        let mut buf = BytesMut::from(bytes);
        while let Ok(Some(frame)) = decode_frame(&mut buf, 131_072) {
            // Whatever decodes must re-encode to something that decodes to the same frame.
            let again = encoded(&frame);
            let mut again = BytesMut::from(&again[..]);
            assert_eq!(decode_frame(&mut again, 131_072), Ok(Some(frame)));
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            decode_loop_never_panics(&bytes);
        }

        #[test]
        fn random_frames_never_panic(frames in proptest::collection::vec(frame_strategy(), 1..4)) {
            decode_loop_never_panics(&frames.concat());
        }

        #[test]
        fn random_content_round_trips(
            properties in crate::properties::tests::arb_properties(),
            body in proptest::collection::vec(any::<u8>(), 0..20_000),
            frame_max in prop_oneof![Just(0u32), 4096u32..20_000],
        ) {
            let method = Method::BasicPublish(BasicPublish {
                exchange: "e".into(), routing_key: "k".into(), mandatory: true, immediate: false,
            });
            let mut out = BytesMut::new();
            encode_content(9, &method, &properties, &body, frame_max, &mut out);
            let frames = decode_all(&out, frame_max);
            prop_assert_eq!(&frames[0], &Frame::Method { channel: 9, method });
            prop_assert_eq!(&frames[1], &Frame::Header {
                channel: 9, class_id: 60, body_size: body.len() as u64, properties,
            });
            let mut joined = Vec::new();
            for f in &frames[2..] {
                match f {
                    Frame::Body { channel: 9, payload } => joined.extend_from_slice(payload),
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
            prop_assert_eq!(joined, body);
        }
    }
}
