//! FerryMQ storage engine.
