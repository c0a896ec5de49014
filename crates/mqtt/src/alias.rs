//! Topic alias tables (MQTT 5 §3.3.2.3.4), one per direction, each bounded by the Topic
//! Alias Maximum its receiver announced.

use std::collections::HashMap;

/// Aliases the client sets on its PUBLISHes (bounded by the server's maximum).
#[derive(Debug, Default)]
pub struct Inbound {
    max: u16,
    topics: HashMap<u16, String>,
}

/// Why an inbound alias is refused (DISCONNECT 0x94 / 0x82).
#[derive(Debug, PartialEq, Eq)]
pub enum AliasError {
    /// 0 or above the maximum.
    OutOfRange,
    /// Empty topic with an alias that was never set.
    Unknown,
}

impl Inbound {
    pub fn new(max: u16) -> Self {
        Inbound {
            max,
            topics: HashMap::new(),
        }
    }

    /// Resolves a PUBLISH's topic: sets the alias when the topic is given, looks it up
    /// when the topic is empty.
    pub fn resolve(&mut self, topic: &str, alias: Option<u16>) -> Result<String, AliasError> {
        let Some(a) = alias else {
            return Ok(topic.to_owned());
        };
        if a == 0 || a > self.max {
            return Err(AliasError::OutOfRange);
        }
        if topic.is_empty() {
            self.topics.get(&a).cloned().ok_or(AliasError::Unknown)
        } else {
            self.topics.insert(a, topic.to_owned());
            Ok(topic.to_owned())
        }
    }
}

/// Aliases the server uses toward the client (bounded by the client's maximum): the first
/// `max` distinct topics get one; later topics are sent in full.
#[derive(Debug, Default)]
pub struct Outbound {
    max: u16,
    aliases: HashMap<String, u16>,
}

impl Outbound {
    pub fn new(max: u16) -> Self {
        Outbound {
            max,
            aliases: HashMap::new(),
        }
    }

    /// For a topic about to be sent: `(alias, send the topic too)`.
    pub fn assign(&mut self, topic: &str) -> (Option<u16>, bool) {
        if let Some(&a) = self.aliases.get(topic) {
            return (Some(a), false);
        }
        let n = self.aliases.len();
        if n < self.max as usize {
            let a = n as u16 + 1;
            self.aliases.insert(topic.to_owned(), a);
            return (Some(a), true);
        }
        (None, true)
    }

    /// Withdraws the alias just assigned to `topic` (its PUBLISH was not sent).
    pub fn forget(&mut self, topic: &str) {
        self.aliases.remove(topic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_aliases_are_set_then_used_and_bounded() {
        let mut t = Inbound::new(2);
        assert_eq!(t.resolve("a/b", Some(1)).unwrap(), "a/b");
        assert_eq!(t.resolve("", Some(1)).unwrap(), "a/b");
        assert_eq!(t.resolve("", Some(2)), Err(AliasError::Unknown));
        assert_eq!(t.resolve("x", Some(3)), Err(AliasError::OutOfRange));
        assert_eq!(t.resolve("x", Some(0)), Err(AliasError::OutOfRange));
        assert_eq!(t.resolve("c", Some(1)).unwrap(), "c");
        assert_eq!(t.resolve("", Some(1)).unwrap(), "c");
        assert_eq!(
            Inbound::new(0).resolve("x", Some(1)),
            Err(AliasError::OutOfRange)
        );
    }

    #[test]
    fn outbound_aliases_stop_at_the_client_maximum() {
        let mut t = Outbound::new(1);
        assert_eq!(t.assign("a"), (Some(1), true));
        assert_eq!(t.assign("a"), (Some(1), false));
        assert_eq!(t.assign("b"), (None, true));
        assert_eq!(Outbound::new(0).assign("a"), (None, true));
    }
}
