//! FerryMQ's Kafka wire-protocol adapter: a Kafka topic is a FerryMQ stream with N
//! partitions; this crate translates Kafka requests into core stream operations.

pub mod records;
pub mod idempotence;
pub mod sasl;
pub mod group;
