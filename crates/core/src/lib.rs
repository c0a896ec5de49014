//! FerryMQ broker core.
