//! Routing: matching a message against exchange bindings (topic and headers).

pub mod headers;
pub mod topic;
