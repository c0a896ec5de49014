//! Fuzz target `amqp_frame`: arbitrary bytes into `decode_frame` until it stops; every frame
//! that decodes must re-encode to bytes that decode to the same frame and re-encode identically.
#![no_main]

use bytes::BytesMut;
use ferrymq_amqp_codec::{decode_frame, encode_frame};
use libfuzzer_sys::fuzz_target;

/// RabbitMQ's default frame_max.
const FRAME_MAX: u32 = 131_072;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = decode_frame(&mut buf, FRAME_MAX) {
        let mut first = BytesMut::new();
        encode_frame(&frame, &mut first);
        let mut reread = first.clone();
        let again = decode_frame(&mut reread, FRAME_MAX)
            .expect("a re-encoded frame decodes")
            .expect("a re-encoded frame is complete");
        assert!(reread.is_empty(), "re-encoded frame has trailing bytes");
        assert_eq!(again, frame);
        let mut second = BytesMut::new();
        encode_frame(&again, &mut second);
        assert_eq!(second, first, "encoding is not stable");
    }
});
