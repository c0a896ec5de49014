//! The fuzz seed corpus `fuzz/corpus/mqtt_packet/`: written by `write_fuzz_seeds` when
//! `FERRYMQ_FUZZ_SEED_DIR` is set, and checked on every run (each seed decodes under some
//! protocol version and passes the fuzz target's check).

mod common;

use std::path::{Path, PathBuf};

use bytes::BytesMut;
use common::*;
use ferrymq_mqtt_codec::*;

fn seeds() -> Vec<(&'static str, BytesMut)> {
    let stream = |version| {
        let mut out = BytesMut::new();
        for p in samples(version) {
            p.encode(version, &mut out).unwrap();
        }
        out
    };
    let one = |p: Packet, version| encode(&p, version);
    let v5 = ProtocolVersion::V5;
    let v311 = ProtocolVersion::V3_1_1;
    let s5 = samples(v5);
    let pick = |kind: PacketType| {
        s5.iter()
            .filter(|p| p.packet_type() == kind)
            .max_by_key(|p| encode(p, v5).len())
            .cloned()
            .unwrap()
    };
    vec![
        (
            "v311_connect",
            one(Packet::Connect(Box::new(connect(v311))), v311),
        ),
        (
            "v31_connect",
            one(
                Packet::Connect(Box::new(connect(ProtocolVersion::V3_1))),
                ProtocolVersion::V3_1,
            ),
        ),
        (
            "v5_connect",
            one(Packet::Connect(Box::new(connect(v5))), v5),
        ),
        ("v5_connack", one(pick(PacketType::Connack), v5)),
        ("v5_publish", one(pick(PacketType::Publish), v5)),
        ("v5_subscribe", one(pick(PacketType::Subscribe), v5)),
        ("v5_auth", one(pick(PacketType::Auth), v5)),
        ("v311_all_packets", stream(v311)),
        ("v5_all_packets", stream(v5)),
        ("pingreq", BytesMut::from(&[0xC0u8, 0x00][..])),
    ]
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/mqtt_packet")
}

/// Writes the seed corpus when `FERRYMQ_FUZZ_SEED_DIR` is set (e.g. to
/// `fuzz/corpus/mqtt_packet`); otherwise does nothing.
#[test]
fn write_fuzz_seeds() {
    let Ok(dir) = std::env::var("FERRYMQ_FUZZ_SEED_DIR") else {
        return;
    };
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in seeds() {
        std::fs::write(Path::new(&dir).join(name), &bytes).unwrap();
    }
}

#[test]
fn committed_seeds_decode() {
    let dir = corpus_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        panic!("missing seed corpus {}", dir.display());
    };
    let mut count = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        assert!(
            fuzz_check(&data, PROTOCOL_MAX_PACKET_SIZE) > 0,
            "{} decodes to nothing",
            path.display()
        );
        count += 1;
    }
    assert!(count >= seeds().len());
}
