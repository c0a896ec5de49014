//! Fuzz target `kafka_request`: arbitrary bytes as one Kafka request frame (the bytes after
//! the size prefix) through the broker's decoding path: header, version check, the body of
//! every served API, and record-batch validation (with decompression) of Produce requests.
//! The same path runs on stable as `mutated_requests_never_panic` in
//! `crates/kafka/src/wire.rs`.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ferrymq_kafka::wire::check_request(Bytes::copy_from_slice(data), 1 << 20, 1 << 20);
});
