//! Fuzz target `mqtt_packet`: arbitrary bytes into the MQTT decoders under each protocol
//! version (and into `decode_connect`); every packet that decodes must re-encode to bytes that
//! decode to the same packet and re-encode identically. The same check runs on stable as
//! `fuzz_check` in `crates/mqtt-codec/tests/proptest.rs`.
#![no_main]

use bytes::BytesMut;
use ferrymq_mqtt_codec::{
    decode, decode_connect, decode_slice, Packet, ProtocolVersion, PROTOCOL_MAX_PACKET_SIZE,
};
use libfuzzer_sys::fuzz_target;

/// A broker-sized limit, so that the size check is exercised too.
const MAX_PACKET_SIZE: u32 = 1 << 20;

const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

fn check(packet: &Packet, version: ProtocolVersion) {
    let first = packet
        .to_bytes(version)
        .expect("a decoded packet re-encodes");
    let mut reread = first.clone();
    let again = decode(&mut reread, version, PROTOCOL_MAX_PACKET_SIZE)
        .expect("a re-encoded packet decodes")
        .expect("a re-encoded packet is complete");
    assert!(reread.is_empty(), "re-encoded packet has trailing bytes");
    assert_eq!(&again, packet);
    assert_eq!(
        again.to_bytes(version).unwrap(),
        first,
        "encoding is not stable"
    );
}

fuzz_target!(|data: &[u8]| {
    for version in VERSIONS {
        let mut buf = BytesMut::from(data);
        while let Ok(Some(packet)) = decode(&mut buf, version, MAX_PACKET_SIZE) {
            check(&packet, version);
        }
        let _ = decode_slice(data, version, MAX_PACKET_SIZE);
    }
    let mut buf = BytesMut::from(data);
    if let Ok(Some(connect)) = decode_connect(&mut buf, MAX_PACKET_SIZE) {
        let version = connect.protocol_version;
        check(&Packet::Connect(Box::new(connect)), version);
    }
});
