//! Exchanges and their bindings: direct, fanout, topic and headers routing.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};
use crate::message::{FieldTable, Message};
use crate::routing::headers::{headers_match, validate_binding_args};
use crate::routing::topic::TopicIndex;

/// The routing algorithm of an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    /// Parses an AMQP exchange type name (`x-` plugin types are not supported).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "direct" => Some(ExchangeKind::Direct),
            "fanout" => Some(ExchangeKind::Fanout),
            "topic" => Some(ExchangeKind::Topic),
            "headers" => Some(ExchangeKind::Headers),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// Where a binding leads: a queue (or stream) or another exchange.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(tag = "type", content = "name", rename_all = "lowercase")]
pub enum Destination {
    Queue(String),
    Exchange(String),
}

impl Destination {
    pub fn name(&self) -> &str {
        match self {
            Destination::Queue(n) | Destination::Exchange(n) => n,
        }
    }
}

/// A binding from an exchange to a destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Binding {
    pub source: String,
    pub destination: Destination,
    pub routing_key: String,
    #[serde(default)]
    pub arguments: FieldTable,
}

/// What declares an exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeDecl {
    pub name: String,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    #[serde(default)]
    pub arguments: FieldTable,
}

impl ExchangeDecl {
    /// A durable, non-internal exchange of the given kind.
    pub fn new(name: impl Into<String>, kind: ExchangeKind) -> Self {
        ExchangeDecl {
            name: name.into(),
            kind,
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: FieldTable::new(),
        }
    }

    /// The `alternate-exchange` argument, if set.
    pub fn alternate_exchange(&self) -> Option<&str> {
        self.arguments.get_str("alternate-exchange")
    }
}

#[derive(Default)]
struct Bindings {
    all: Vec<Binding>,
    direct: HashMap<String, Vec<Destination>>,
    topic: TopicIndex<Destination>,
}

/// An exchange: a declaration plus its outgoing bindings.
pub struct Exchange {
    pub decl: ExchangeDecl,
    bindings: RwLock<Bindings>,
    /// The alternate exchange a policy gives it (its own argument wins).
    policy_alternate: RwLock<Option<String>>,
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("decl", &self.decl)
            .finish()
    }
}

impl Exchange {
    pub fn new(decl: ExchangeDecl) -> Self {
        Exchange {
            decl,
            bindings: RwLock::new(Bindings::default()),
            policy_alternate: RwLock::new(None),
        }
    }

    pub fn name(&self) -> &str {
        &self.decl.name
    }

    /// The alternate exchange in effect: the declared `alternate-exchange` argument,
    /// else the applicable policy's.
    pub fn alternate_exchange(&self) -> Option<String> {
        if let Some(a) = self.decl.alternate_exchange() {
            return Some(a.to_owned());
        }
        self.policy_alternate
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn set_policy_alternate(&self, ae: Option<String>) {
        *self
            .policy_alternate
            .write()
            .unwrap_or_else(|p| p.into_inner()) = ae;
    }

    /// Checks a binding's arguments against this exchange's kind.
    pub fn validate_binding(&self, arguments: &FieldTable) -> Result<()> {
        if self.decl.kind == ExchangeKind::Headers {
            validate_binding_args(arguments)
                .map_err(|e| CoreError::PreconditionFailed(e.to_string()))?;
        }
        Ok(())
    }

    /// Adds a binding; returns false if an identical binding already existed.
    pub fn bind(&self, binding: Binding) -> bool {
        let mut b = write(&self.bindings);
        if b.all.iter().any(|x| same_binding(x, &binding)) {
            return false;
        }
        match self.decl.kind {
            ExchangeKind::Direct => b
                .direct
                .entry(binding.routing_key.clone())
                .or_default()
                .push(binding.destination.clone()),
            ExchangeKind::Topic => b
                .topic
                .bind(&binding.routing_key, binding.destination.clone()),
            ExchangeKind::Fanout | ExchangeKind::Headers => {}
        }
        b.all.push(binding);
        true
    }

    /// Removes a binding; returns false if it did not exist.
    pub fn unbind(&self, binding: &Binding) -> bool {
        let mut b = write(&self.bindings);
        let Some(pos) = b.all.iter().position(|x| same_binding(x, binding)) else {
            return false;
        };
        b.all.remove(pos);
        match self.decl.kind {
            ExchangeKind::Direct => {
                if let Some(v) = b.direct.get_mut(&binding.routing_key) {
                    if let Some(i) = v.iter().position(|d| *d == binding.destination) {
                        v.remove(i);
                    }
                    if v.is_empty() {
                        b.direct.remove(&binding.routing_key);
                    }
                }
            }
            ExchangeKind::Topic => {
                // Another binding with the same key and destination but other
                // arguments keeps the trie entry alive.
                let still = b.all.iter().any(|x| {
                    x.routing_key == binding.routing_key && x.destination == binding.destination
                });
                if !still {
                    b.topic.unbind(&binding.routing_key, &binding.destination);
                }
            }
            ExchangeKind::Fanout | ExchangeKind::Headers => {}
        }
        true
    }

    /// Removes every binding to `dest`; returns how many were removed.
    pub fn unbind_destination(&self, dest: &Destination) -> usize {
        let victims: Vec<Binding> = read(&self.bindings)
            .all
            .iter()
            .filter(|b| b.destination == *dest)
            .cloned()
            .collect();
        victims.iter().filter(|b| self.unbind(b)).count()
    }

    pub fn bindings(&self) -> Vec<Binding> {
        read(&self.bindings).all.clone()
    }

    pub fn binding_count(&self) -> usize {
        read(&self.bindings).all.len()
    }

    /// Appends the destinations `msg` routes to (may contain duplicates).
    pub fn route(&self, msg: &Message, out: &mut Vec<Destination>) {
        let b = read(&self.bindings);
        match self.decl.kind {
            ExchangeKind::Direct => {
                if let Some(v) = b.direct.get(&msg.routing_key) {
                    out.extend(v.iter().cloned());
                }
            }
            ExchangeKind::Fanout => out.extend(b.all.iter().map(|x| x.destination.clone())),
            ExchangeKind::Topic => out.extend(b.topic.matches(&msg.routing_key)),
            ExchangeKind::Headers => out.extend(
                b.all
                    .iter()
                    .filter(|x| headers_match(&x.arguments, &msg.headers))
                    .map(|x| x.destination.clone()),
            ),
        }
    }
}

fn same_binding(a: &Binding, b: &Binding) -> bool {
    a.destination == b.destination && a.routing_key == b.routing_key && a.arguments == b.arguments
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// Removes duplicates while keeping first-seen order. The set borrows the names instead of
/// cloning them: a publish that fans out to many queues copies no name here.
pub(crate) fn dedup(dests: &mut Vec<Destination>) {
    if dests.len() > 1 {
        let keep: Vec<bool> = {
            let mut seen = HashSet::with_capacity(dests.len());
            dests.iter().map(|d| seen.insert(d)).collect()
        };
        // `retain` visits every element once, in order.
        let mut keep = keep.into_iter();
        dests.retain(|_| keep.next().unwrap_or(true));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Value;

    fn q(n: &str) -> Destination {
        Destination::Queue(n.into())
    }

    fn bind(x: &Exchange, key: &str, dest: &str) -> bool {
        x.bind(Binding {
            source: x.name().into(),
            destination: q(dest),
            routing_key: key.into(),
            arguments: FieldTable::new(),
        })
    }

    #[test]
    fn dedup_keeps_the_first_of_each_in_order() {
        let mut v = vec![
            q("b"),
            q("a"),
            q("b"),
            Destination::Exchange("a".into()),
            q("a"),
        ];
        dedup(&mut v);
        assert_eq!(v, vec![q("b"), q("a"), Destination::Exchange("a".into())]);
        let mut one = vec![q("x")];
        dedup(&mut one);
        assert_eq!(one, vec![q("x")]);
    }

    fn route(x: &Exchange, key: &str) -> Vec<Destination> {
        let mut out = vec![];
        x.route(&Message::new(key, "b"), &mut out);
        dedup(&mut out);
        out.sort();
        out
    }

    #[test]
    fn direct_routes_by_exact_key() {
        let x = Exchange::new(ExchangeDecl::new("d", ExchangeKind::Direct));
        assert!(bind(&x, "a", "q1"));
        assert!(!bind(&x, "a", "q1"), "duplicate binding is idempotent");
        bind(&x, "a", "q2");
        bind(&x, "b", "q3");
        assert_eq!(route(&x, "a"), vec![q("q1"), q("q2")]);
        assert_eq!(route(&x, "c"), vec![]);
        assert_eq!(x.unbind_destination(&q("q1")), 1);
        assert_eq!(route(&x, "a"), vec![q("q2")]);
    }

    #[test]
    fn fanout_ignores_key() {
        let x = Exchange::new(ExchangeDecl::new("f", ExchangeKind::Fanout));
        bind(&x, "", "q1");
        bind(&x, "zzz", "q2");
        assert_eq!(route(&x, "anything"), vec![q("q1"), q("q2")]);
    }

    #[test]
    fn topic_wildcards() {
        let x = Exchange::new(ExchangeDecl::new("t", ExchangeKind::Topic));
        bind(&x, "*.orange.*", "q1");
        bind(&x, "*.*.rabbit", "q2");
        bind(&x, "lazy.#", "q2");
        assert_eq!(route(&x, "quick.orange.rabbit"), vec![q("q1"), q("q2")]);
        assert_eq!(route(&x, "lazy.pink.rabbit"), vec![q("q2")]);
        assert_eq!(route(&x, "quick.brown.fox"), vec![]);
        assert_eq!(route(&x, "lazy"), vec![q("q2")]);
        let b = Binding {
            source: "t".into(),
            destination: q("q2"),
            routing_key: "lazy.#".into(),
            arguments: FieldTable::new(),
        };
        assert!(x.unbind(&b));
        assert_eq!(route(&x, "lazy"), vec![]);
    }

    #[test]
    fn headers_all_and_any() {
        let x = Exchange::new(ExchangeDecl::new("h", ExchangeKind::Headers));
        let mut all = FieldTable::new();
        all.insert("x-match", "all".into());
        all.insert("a", Value::Int(1));
        all.insert("b", "x".into());
        let mut any = all.clone();
        any.insert("x-match", "any".into());
        x.bind(Binding {
            source: "h".into(),
            destination: q("all"),
            routing_key: String::new(),
            arguments: all,
        });
        x.bind(Binding {
            source: "h".into(),
            destination: q("any"),
            routing_key: String::new(),
            arguments: any,
        });
        let mut m = Message::new("", "b");
        m.headers.insert("a", Value::Int(1));
        let mut out = vec![];
        x.route(&m, &mut out);
        assert_eq!(out, vec![q("any")]);
        m.headers.insert("b", "x".into());
        out.clear();
        x.route(&m, &mut out);
        out.sort();
        assert_eq!(out, vec![q("all"), q("any")]);
    }

    #[test]
    fn invalid_x_match_is_refused() {
        let x = Exchange::new(ExchangeDecl::new("h", ExchangeKind::Headers));
        let mut args = FieldTable::new();
        args.insert("x-match", "some".into());
        assert!(matches!(
            x.validate_binding(&args),
            Err(CoreError::PreconditionFailed(_))
        ));
    }
}
