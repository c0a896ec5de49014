//! A management-API client for permission tests (ureq, HTTP Basic, statuses as values, JSON
//! bodies) and the AMQP refusal assertion they share.
#![allow(dead_code)] // each test file uses a different subset

use std::net::SocketAddr;

use base64::Engine;
use serde_json::{json, Value};

pub const GUEST: (&str, &str) = ("guest", "guest");

pub fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// The HTTP API of a running server.
pub struct Api {
    pub base: String,
    pub agent: ureq::Agent,
}

impl Api {
    pub fn new(addr: SocketAddr) -> Api {
        Api {
            base: format!("http://{addr}"),
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into(),
        }
    }

    /// `method path` as `who` with a JSON body (ignored for GET and DELETE): the status and
    /// the body as JSON (a string when it is not JSON).
    pub fn call(&self, who: (&str, &str), method: &str, path: &str, body: Value) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let auth = basic(who.0, who.1);
        let a = &self.agent;
        let mut resp = match method {
            "GET" => a.get(&url).header("authorization", &auth).call(),
            "DELETE" => a.delete(&url).header("authorization", &auth).call(),
            m => {
                let r = if m == "PUT" {
                    a.put(&url)
                } else {
                    a.post(&url)
                };
                r.header("authorization", &auth)
                    .header("content-type", "application/json")
                    .send(body.to_string())
            }
        }
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    /// Asserts a 2xx answer.
    pub fn ok(&self, who: (&str, &str), method: &str, path: &str, body: Value) -> Value {
        let (s, v) = self.call(who, method, path, body);
        assert!((200..300).contains(&s), "{method} {path}: {s} {v}");
        v
    }

    /// Asserts a 403 with the API's JSON error body and RabbitMQ's text.
    pub fn refused(&self, who: (&str, &str), method: &str, path: &str, body: Value, text: &str) {
        let (s, v) = self.call(who, method, path, body);
        assert_eq!(s, 403, "{method} {path}: {v}");
        assert_eq!(v["error"], "access_refused", "{method} {path}: {v}");
        assert_eq!(
            v["reason"].as_str(),
            Some(format!("ACCESS_REFUSED - {text}").as_str()),
            "{method} {path}"
        );
    }

    /// A queue's message count in vhost `/` (as guest).
    pub fn messages(&self, queue: &str) -> u64 {
        let v = self.ok(GUEST, "GET", &format!("/api/queues/%2F/{queue}"), json!({}));
        v["messages"]
            .as_u64()
            .unwrap_or_else(|| panic!("no message count in {v}"))
    }

    /// The bindings of vhost `/` as (source, destination, routing key).
    pub fn bindings(&self) -> Vec<(String, String, String)> {
        let v = self.ok(GUEST, "GET", "/api/bindings/%2F", json!({}));
        v.as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["source"].as_str().unwrap_or_default().to_string(),
                    b["destination"].as_str().unwrap_or_default().to_string(),
                    b["routing_key"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    pub fn has_binding(&self, source: &str, dest: &str, key: &str) -> bool {
        self.bindings()
            .iter()
            .any(|(s, d, k)| s == source && d == dest && k == key)
    }
}

/// Asserts that an AMQP operation failed with a 403 channel error carrying `text`.
pub fn assert_amqp_refused<T: std::fmt::Debug>(r: Result<T, lapin::Error>, text: &str) {
    let err = r.expect_err("refused");
    let dbg = format!("{err:?}");
    assert!(dbg.contains(&format!("ACCESS_REFUSED - {text}")), "{dbg}");
    assert!(
        dbg.contains("ACCESSREFUSED") || dbg.contains("403"),
        "{dbg}"
    );
}
