//! Fuzz target `http_json`: arbitrary bytes as a JSON request body of the HTTP API (the first
//! byte picks which: publish envelope single and batch, pull/ack/nack/extend, declarations,
//! users, permissions, policies, vhosts, definitions, offsets, moves, tokens) through the
//! parsing and validation the handlers use; bodies that parse must round-trip. The same check
//! runs on stable as `mutated_bodies_never_panic` in `crates/http/src/fuzzing.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ferrymq_http::fuzzing::check_body(data);
});
