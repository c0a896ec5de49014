//! JSON request bodies from arbitrary bytes: the check behind the `http_json` fuzz target and
//! its bounded stable twin (`mutated_bodies_never_panic`).
//!
//! An input is one selector byte (which body type, modulo [`BODIES`]'s length) followed by
//! the body. The body goes through [`parse_body`] (what the `ApiJson` extractor runs) and
//! then the same validation and conversion functions the handler calls. Nothing may panic;
//! a body that parses must serialize to JSON that parses back to the same value, and a
//! converted message or table must convert back to the same thing.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value as Json};

use ferrymq_core::broker::Definitions;
use ferrymq_core::{Destination, Message};

use crate::admin::{check_definitions, PermissionPut, TokenRequest, UserPut, VhostCreate};
use crate::convert::{json_to_table, table_to_json, MessageJson, PublishMessage};
use crate::entities::{BindingCreate, ExchangeDeclare, MoveRequest, QueueDeclare};
use crate::json::parse_body;
use crate::policies::PolicyPut;
use crate::publish::PublishBatch;
use crate::pull::{AckRequest, ExtendRequest, NackRequest, PullRequest};
use crate::streams::OffsetCommit;

/// The body types, in selector order (the request each is the body of).
pub const BODIES: &[&str] = &[
    "publish",       // POST /api/{exchanges,queues}/{vhost}/{name}/publish
    "publish_batch", // POST .../publish/batch
    "pull",          // POST /api/queues/{vhost}/{name}/get
    "ack",           // POST /api/queues/{vhost}/{name}/ack
    "nack",          // POST /api/queues/{vhost}/{name}/nack
    "extend",        // POST /api/queues/{vhost}/{name}/extend
    "exchange",      // PUT /api/exchanges/{vhost}/{name}
    "queue",         // PUT /api/queues/{vhost}/{name} and /api/streams/{vhost}/{name}
    "binding",       // POST /api/bindings/{vhost}/e/{source}/{q|e}/{destination}
    "user",          // PUT /api/users/{name}
    "permission",    // PUT /api/permissions/{vhost}/{user}
    "policy",        // PUT /api/policies/{vhost}/{name}
    "vhost",         // PUT /api/vhosts/{vhost}
    "definitions",   // POST /api/definitions
    "offset",        // PUT /api/streams/{vhost}/{name}/offsets/{group}
    "move",          // POST /api/queues/{vhost}/{name}/move
    "token",         // POST /api/tokens
];

/// Parses `body` as `T`; when it parses, checks that `T` survives a JSON round trip.
fn parse<T: Serialize + DeserializeOwned>(body: &[u8]) -> Option<T> {
    let v: T = parse_body(body).ok()?;
    let first =
        serde_json::to_value(&v).unwrap_or_else(|e| panic!("a parsed body serializes: {e}"));
    let text = serde_json::to_vec(&v).unwrap_or_else(|e| panic!("a parsed body serializes: {e}"));
    let again: T = parse_body(&text)
        .unwrap_or_else(|e| panic!("a serialized body parses back: {e:?}: {first}"));
    let second = serde_json::to_value(&again).unwrap_or_else(|e| panic!("serializes: {e}"));
    assert_eq!(first, second, "a body changes through a JSON round trip");
    Some(v)
}

/// An argument or header table must convert to the core's table and back unchanged.
fn check_table(m: &Map<String, Json>) {
    if let Ok(t) = json_to_table(m) {
        let back = table_to_json(&t);
        let again = json_to_table(&back)
            .unwrap_or_else(|e| panic!("a converted table converts back: {e}: {back:?}"));
        assert_eq!(again, t, "a table changes through JSON");
    }
}

/// A published message must come back the same through the JSON a consumer receives.
fn check_message(m: &Message) {
    for force_base64 in [false, true] {
        let j = MessageJson::from_core(m, force_base64);
        let back = PublishMessage {
            routing_key: j.routing_key,
            payload: j.payload,
            payload_encoding: j.payload_encoding,
            headers: j.headers,
            properties: j.properties,
            key: j.key,
        }
        .into_message()
        .unwrap_or_else(|e| panic!("a delivered message republishes: {e:?}"));
        assert_eq!(&back, m, "a message changes through its JSON form");
    }
}

/// Runs one input (see the module documentation).
pub fn check_body(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    match usize::from(selector) % BODIES.len() {
        0 => {
            if let Some(p) = parse::<PublishMessage>(body) {
                check_table(&p.headers);
                if let Ok(m) = p.into_message() {
                    check_message(&m);
                }
            }
        }
        1 => {
            if let Some(b) = parse::<PublishBatch>(body) {
                if let Ok(ms) = b.into_messages() {
                    ms.iter().for_each(check_message);
                }
            }
        }
        2 => {
            if let Some(r) = parse::<PullRequest>(body) {
                let _ = r.validate();
            }
        }
        3 => {
            if let Some(r) = parse::<AckRequest>(body) {
                let _ = r.validate();
            }
        }
        4 => {
            if let Some(r) = parse::<NackRequest>(body) {
                let _ = r.validate();
            }
        }
        5 => {
            if let Some(r) = parse::<ExtendRequest>(body) {
                let _ = r.validate();
            }
        }
        6 => {
            if let Some(d) = parse::<ExchangeDeclare>(body) {
                check_table(&d.arguments);
                let _ = d.into_decl("x");
            }
        }
        7 => {
            if let Some(d) = parse::<QueueDeclare>(body) {
                check_table(&d.arguments);
                let stream = QueueDeclare {
                    durable: d.durable,
                    auto_delete: d.auto_delete,
                    arguments: d.arguments.clone(),
                };
                let _ = d.into_decl("q", false);
                let _ = stream.into_decl("s", true);
            }
        }
        8 => {
            if let Some(b) = parse::<BindingCreate>(body) {
                check_table(&b.arguments);
                let _ = b.into_binding("x".into(), Destination::Queue("q".into()));
            }
        }
        9 => {
            if let Some(u) = parse::<UserPut>(body) {
                let _ = u.into_user("user");
            }
        }
        10 => {
            if let Some(p) = parse::<PermissionPut>(body) {
                let _ = p.validate();
            }
        }
        11 => {
            if let Some(p) = parse::<PolicyPut>(body) {
                let _ = p.into_policy("/".into(), "policy".into());
            }
        }
        12 => {
            if let Some(v) = parse::<VhostCreate>(body) {
                let _ = v.limits();
            }
        }
        13 => {
            if let Some(d) = parse::<Definitions>(body) {
                let _ = check_definitions(&d);
            }
        }
        14 => {
            let _ = parse::<OffsetCommit>(body);
        }
        15 => {
            if let Some(m) = parse::<MoveRequest>(body) {
                let _ = m.count();
            }
        }
        _ => {
            if let Some(t) = parse::<TokenRequest>(body) {
                let _ = t.ttl();
            }
        }
    }
}

/// Valid bodies of every type: the seed corpus and the mutation test's starting points.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let bodies: &[(&str, &[&str])] = &[
        (
            "publish",
            &[
                r#"{"routing_key":"a.b","payload":"hello"}"#,
                r#"{"payload":"aGk=","payload_encoding":"base64","key":"aw==","headers":{"n":1,"f":1.5,"s":"x","b":true,"l":[1,"a"],"t":{"k":null},"bin":{"$bytes":"AAE="},"ts":{"$timestamp":1700000000}},"properties":{"content_type":"text/plain","priority":5,"persistent":false,"expiration_ms":100,"timestamp_ms":-1,"type":"t","user_id":"u","app_id":"a","message_id":"m","correlation_id":"c","reply_to":"r","content_encoding":"gzip"}}"#,
            ],
        ),
        (
            "publish_batch",
            &[
                r#"{"messages":[{"payload":"a"},{"routing_key":"k","payload":"b","headers":{"x":[1,2]}}]}"#,
            ],
        ),
        (
            "pull",
            &[
                r#"{"max_messages":10,"wait_ms":0,"visibility_timeout_ms":30000,"auto_ack":false,"base64":true}"#,
                "{}",
            ],
        ),
        ("ack", &[r#"{"receipt_handles":["h1","h2"]}"#]),
        (
            "nack",
            &[r#"{"receipt_handles":["h1"],"requeue":true,"delay_ms":1000}"#],
        ),
        (
            "extend",
            &[r#"{"receipt_handles":["h1"],"visibility_timeout_ms":60000}"#],
        ),
        (
            "exchange",
            &[
                r#"{"type":"topic","durable":true,"auto_delete":false,"internal":false,"arguments":{"alternate-exchange":"ae"}}"#,
            ],
        ),
        (
            "queue",
            &[
                r#"{"durable":true,"arguments":{"x-message-ttl":60000,"x-max-length":10,"x-dead-letter-exchange":"dlx","x-queue-type":"classic"}}"#,
            ],
        ),
        (
            "binding",
            &[r#"{"routing_key":"a.*","arguments":{"x-match":"any","h":"v"}}"#],
        ),
        (
            "user",
            &[
                r#"{"password":"secret","tags":["administrator"]}"#,
                r#"{"password_hash":"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA","hashing_algorithm":"rabbit_password_hashing_sha256","tags":[]}"#,
            ],
        ),
        (
            "permission",
            &[r#"{"configure":"^amq\\.gen.*","write":".*","read":"^(a|b)$"}"#],
        ),
        (
            "policy",
            &[
                r#"{"pattern":"^ha\\.","apply-to":"queues","priority":1,"definition":{"max-length":100,"dead-letter-exchange":"dlx"},"vhost":"/","name":"policy"}"#,
            ],
        ),
        ("vhost", &[r#"{"max_queues":10,"max_connections":5}"#]),
        (
            "definitions",
            &[
                r#"{"vhosts":[{"name":"/"}],"users":[{"name":"guest","password_hash":"x","tags":["administrator"]}],"permissions":[{"user":"guest","vhost":"/","configure":".*","write":".*","read":".*"}],"exchanges":[],"queues":[],"bindings":[],"policies":[]}"#,
            ],
        ),
        ("offset", &[r#"{"offset":42,"partition":1}"#]),
        ("move", &[r#"{"destination":"q2","count":100}"#, "{}"]),
        ("token", &[r#"{"ttl_seconds":3600}"#]),
    ];
    let mut out = Vec::new();
    for (name, list) in bodies {
        let selector = BODIES
            .iter()
            .position(|b| b == name)
            .unwrap_or_else(|| panic!("no body type {name}"));
        for (i, body) in list.iter().enumerate() {
            let mut input = vec![selector as u8];
            input.extend_from_slice(body.as_bytes());
            out.push((format!("{name}_{i}"), input));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_parses_and_passes_validation() {
        let seeds = seeds();
        assert!(seeds.len() >= BODIES.len());
        for (name, input) in &seeds {
            check_body(input);
            let body = &input[1..];
            let ok = match BODIES[usize::from(input[0])] {
                "publish" => parse_body::<PublishMessage>(body)
                    .and_then(PublishMessage::into_message)
                    .is_ok(),
                "publish_batch" => parse_body::<PublishBatch>(body)
                    .and_then(PublishBatch::into_messages)
                    .is_ok(),
                "pull" => parse_body::<PullRequest>(body)
                    .and_then(|r| r.validate())
                    .is_ok(),
                "nack" => parse_body::<NackRequest>(body)
                    .and_then(|r| r.validate())
                    .is_ok(),
                "exchange" => parse_body::<ExchangeDeclare>(body)
                    .and_then(|d| d.into_decl("x"))
                    .is_ok(),
                "user" => parse_body::<UserPut>(body)
                    .and_then(|u| u.into_user("u"))
                    .is_ok(),
                "policy" => parse_body::<PolicyPut>(body)
                    .and_then(|p| p.into_policy("/".into(), "policy".into()))
                    .is_ok(),
                "definitions" => parse_body::<Definitions>(body)
                    .and_then(|d| check_definitions(&d))
                    .is_ok(),
                _ => true,
            };
            assert!(ok, "seed {name} is refused");
        }
    }

    #[test]
    fn syntax_and_type_errors_answer_400_and_422() {
        let e = parse_body::<PullRequest>(b"{").unwrap_err();
        assert_eq!(e.status.as_u16(), 400);
        let e = parse_body::<PullRequest>(br#"{"max_messages":"x"}"#).unwrap_err();
        assert_eq!(e.status.as_u16(), 422);
        let e = parse_body::<PullRequest>(br#"{"nope":1}"#).unwrap_err();
        assert_eq!(e.status.as_u16(), 422);
    }

    /// Regression (fuzz/corpus/http_json/crash-binary-key-text-body): a message with a
    /// text body and a binary key came back with the key mangled (lossy UTF-8).
    #[test]
    fn crash_binary_key_text_body() {
        check_body(include_bytes!(
            "../../../fuzz/corpus/http_json/crash-binary-key-text-body"
        ));
    }

    /// Regression (fuzz/corpus/http_json/crash-float-round-trip): a float argument
    /// (1.0777777777777779e20) read back one ulp off after a JSON round trip (serde_json's
    /// fast float parsing; the workspace now enables `float_roundtrip`).
    #[test]
    fn crash_float_round_trip() {
        check_body(include_bytes!(
            "../../../fuzz/corpus/http_json/crash-float-round-trip"
        ));
    }

    /// Writes the fuzz seed corpus when `FERRYMQ_FUZZ_SEED_DIR` is set (e.g. to
    /// `fuzz/corpus/http_json`); otherwise does nothing.
    #[test]
    fn write_fuzz_seeds() {
        let Ok(dir) = std::env::var("FERRYMQ_FUZZ_SEED_DIR") else {
            return;
        };
        for (name, input) in seeds() {
            std::fs::write(std::path::Path::new(&dir).join(name), input).unwrap();
        }
    }

    /// The fuzz target's check on stable: seeds with bytes flipped, replaced, inserted,
    /// truncated and spliced (a fixed pseudo-random sequence, so runs are reproducible).
    #[test]
    fn mutated_bodies_never_panic() {
        let seeds = seeds();
        let tokens: &[&[u8]] = &[
            b"{}",
            b"[]",
            b"null",
            b"\"",
            b"-0",
            b"1e308",
            b"-1",
            b"18446744073709551616",
            b"1.5",
            b"\"$bytes\"",
            b"\"$timestamp\"",
            b"\"\\u0000\"",
            b"true",
            b",",
            b":",
        ];
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for round in 0..20_000 {
            let (_, seed) = &seeds[round % seeds.len()];
            let mut input = seed.clone();
            for _ in 0..1 + next() % 4 {
                let at = 1 + (next() as usize) % input.len().max(2).saturating_sub(1);
                let at = at.min(input.len());
                match next() % 5 {
                    0 if at < input.len() => input[at] ^= 1 << (next() % 8),
                    1 if at < input.len() => input[at] = next() as u8,
                    2 => input.truncate(at),
                    3 => {
                        let t = tokens[(next() as usize) % tokens.len()];
                        input.splice(at..at, t.iter().copied());
                    }
                    _ => {
                        let (_, other) = &seeds[(next() as usize) % seeds.len()];
                        let from = 1 + (next() as usize) % (other.len() - 1);
                        let n = (next() as usize % 32).min(other.len() - from);
                        let end = (at + n).min(input.len());
                        input.splice(at..end, other[from..from + n].iter().copied());
                    }
                }
            }
            check_body(&input);
        }
    }
}
