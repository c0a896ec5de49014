//! Topic permissions (RabbitMQ's topic authorisation): per user, vhost and topic exchange, a
//! `write` and a `read` regular expression matched against routing keys, with `{username}`,
//! `{vhost}` and `{client_id}` expanded in the patterns; the store they live in, and the
//! compiled check an adapter keeps.
//!
//! The model, as RabbitMQ's: a publish to an exchange of type topic needs its routing key to
//! match `write`; binding a queue or an exchange to a topic exchange needs the binding key
//! to match `read` (MQTT: publishing and subscribing, since MQTT topics are routing keys on
//! the MQTT exchange). A user with no topic permission for an exchange is not restricted
//! on it. Patterns are unanchored, as RabbitMQ's; an empty pattern is `^$` (matches only an
//! empty routing key), as RabbitMQ's. Unlike RabbitMQ, expanded values are escaped, so that
//! a `.` in a user name or client id matches only a `.`; a variable the protocol does not
//! have (`{client_id}` outside MQTT) stays literal, matching only the text `{client_id}`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::broker::Access;
use crate::error::{CoreError, Result};

/// A user's topic permission on one exchange of a vhost (RabbitMQ's definitions format).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicPermission {
    pub user: String,
    pub vhost: String,
    pub exchange: String,
    pub write: String,
    pub read: String,
}

impl TopicPermission {
    /// The pattern for `access`; topic permissions have no `configure`, which is read's.
    pub fn pattern(&self, access: Access) -> &str {
        match access {
            Access::Write => &self.write,
            Access::Read | Access::Configure => &self.read,
        }
    }

    /// Checks that both patterns compile whatever the variables expand to.
    ///
    /// # Errors
    /// `InvalidArgument` naming the pattern.
    pub fn validate(&self) -> Result<()> {
        if self.exchange.is_empty() {
            return Err(CoreError::InvalidArgument(
                "a topic permission needs an exchange".into(),
            ));
        }
        for p in [&self.write, &self.read] {
            let e = expand(p, "u", "v", Some("c"));
            regex_lite::Regex::new(&e).map_err(|err| {
                CoreError::InvalidArgument(format!("invalid regular expression {p:?}: {err}"))
            })?;
        }
        Ok(())
    }
}

/// Expands `{username}`, `{vhost}` and `{client_id}` in a pattern, each value escaped; an
/// empty pattern becomes `^$`. Borrows when there is nothing to expand.
pub fn expand<'a>(
    pattern: &'a str,
    user: &str,
    vhost: &str,
    client_id: Option<&str>,
) -> Cow<'a, str> {
    if pattern.is_empty() {
        return Cow::Borrowed("^$");
    }
    if !pattern.contains('{') {
        return Cow::Borrowed(pattern);
    }
    let mut s = pattern
        .replace("{username}", &regex_lite::escape(user))
        .replace("{vhost}", &regex_lite::escape(vhost));
    s = match client_id {
        Some(c) => s.replace("{client_id}", &regex_lite::escape(c)),
        None => s.replace("{client_id}", r"\{client_id\}"),
    };
    Cow::Owned(s)
}

/// A compiled topic check for one user, vhost, exchange and access, with what the refusal
/// names. Cheap to clone; `check` does not allocate unless it refuses.
#[derive(Debug, Clone)]
pub struct TopicCheck {
    re: Arc<regex_lite::Regex>,
    access: Access,
    user: Arc<str>,
    vhost: Arc<str>,
    exchange: Arc<str>,
}

impl TopicCheck {
    pub(crate) fn new(
        re: Arc<regex_lite::Regex>,
        access: Access,
        user: &str,
        vhost: &str,
        exchange: &str,
    ) -> TopicCheck {
        TopicCheck {
            re,
            access,
            user: user.into(),
            vhost: vhost.into(),
            exchange: exchange.into(),
        }
    }

    /// The exchange it checks.
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// Whether the routing (or binding) key is allowed.
    pub fn allows(&self, routing_key: &str) -> bool {
        self.re.is_match(routing_key)
    }

    /// # Errors
    /// `AccessRefused` with RabbitMQ's wording ("write access to topic 'k' in exchange 'x'
    /// in vhost '/' refused for user 'u'").
    pub fn check(&self, routing_key: &str) -> Result<()> {
        if self.allows(routing_key) {
            Ok(())
        } else {
            Err(refused(
                self.access,
                routing_key,
                &self.exchange,
                &self.vhost,
                &self.user,
            ))
        }
    }
}

pub(crate) fn refused(
    access: Access,
    key: &str,
    exchange: &str,
    vhost: &str,
    user: &str,
) -> CoreError {
    CoreError::AccessRefused(format!(
        "{} access to topic '{key}' in exchange '{exchange}' in vhost '{vhost}' refused for user '{user}'",
        access.as_str()
    ))
}

/// Topic permissions by user (a user has few: a scan finds one without allocating a key).
#[derive(Debug, Default)]
pub(crate) struct TopicPermissions {
    by_user: HashMap<String, Vec<TopicPermission>>,
}

impl TopicPermissions {
    pub fn get(&self, user: &str, vhost: &str, exchange: &str) -> Option<&TopicPermission> {
        self.by_user
            .get(user)?
            .iter()
            .find(|p| p.vhost == vhost && p.exchange == exchange)
    }

    /// Inserts or replaces the entry for its (user, vhost, exchange).
    pub fn put(&mut self, p: TopicPermission) {
        let v = self.by_user.entry(p.user.clone()).or_default();
        match v
            .iter_mut()
            .find(|q| q.vhost == p.vhost && q.exchange == p.exchange)
        {
            Some(q) => *q = p,
            None => v.push(p),
        }
    }

    /// Removes a user's entries on a vhost (one exchange's, or all); how many went.
    pub fn remove(&mut self, user: &str, vhost: &str, exchange: Option<&str>) -> usize {
        let Some(v) = self.by_user.get_mut(user) else {
            return 0;
        };
        let before = v.len();
        v.retain(|p| !(p.vhost == vhost && exchange.is_none_or(|x| p.exchange == x)));
        let n = before - v.len();
        if v.is_empty() {
            self.by_user.remove(user);
        }
        n
    }

    pub fn remove_user(&mut self, user: &str) {
        self.by_user.remove(user);
    }

    pub fn remove_vhost(&mut self, vhost: &str) {
        for v in self.by_user.values_mut() {
            v.retain(|p| p.vhost != vhost);
        }
        self.by_user.retain(|_, v| !v.is_empty());
    }

    /// Every entry, ordered by user, vhost and exchange.
    pub fn all(&self) -> Vec<TopicPermission> {
        let mut out: Vec<TopicPermission> = self.by_user.values().flatten().cloned().collect();
        out.sort_by(|a, b| (&a.user, &a.vhost, &a.exchange).cmp(&(&b.user, &b.vhost, &b.exchange)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(user: &str, vhost: &str, exchange: &str, write: &str, read: &str) -> TopicPermission {
        TopicPermission {
            user: user.into(),
            vhost: vhost.into(),
            exchange: exchange.into(),
            write: write.into(),
            read: read.into(),
        }
    }

    #[test]
    fn expansion_escapes_values_and_leaves_missing_variables_literal() {
        assert_eq!(expand("^a\\.", "u", "/", None), "^a\\.");
        assert_eq!(expand("", "u", "/", None), "^$");
        assert_eq!(
            expand(
                "^{username}\\.{vhost}\\.{client_id}$",
                "a.b",
                "/",
                Some("c+1")
            ),
            "^a\\.b\\./\\.c\\+1$"
        );
        assert_eq!(
            expand("^x\\.{client_id}$", "u", "/", None),
            "^x\\.\\{client_id\\}$"
        );
        let re = regex_lite::Regex::new(&expand("^x\\.{client_id}$", "u", "/", None)).unwrap();
        assert!(re.is_match("x.{client_id}"));
        assert!(!re.is_match("x.anything"));
        // An escaped '.' in a user name matches only a '.'.
        let re = regex_lite::Regex::new(&expand("^{username}$", "a.b", "/", None)).unwrap();
        assert!(re.is_match("a.b"));
        assert!(!re.is_match("aXb"));
    }

    #[test]
    fn checks_match_unanchored_and_empty_matches_only_empty() {
        let check = |pat: &str| {
            let re = Arc::new(regex_lite::Regex::new(&expand(pat, "u", "/", None)).unwrap());
            TopicCheck::new(re, Access::Write, "u", "/", "t")
        };
        let c = check("b\\.c");
        assert!(c.allows("a.b.c.d"));
        assert!(!c.allows("a.bxc"));
        let e = c.check("x.y").unwrap_err().to_string();
        assert!(
            e.contains(
                "write access to topic 'x.y' in exchange 't' in vhost '/' refused for user 'u'"
            ),
            "{e}"
        );
        let empty = check("");
        assert!(empty.allows(""));
        assert!(!empty.allows("a"));
    }

    #[test]
    fn the_store_finds_replaces_and_removes_per_exchange() {
        let mut s = TopicPermissions::default();
        assert!(s.get("u", "/", "t").is_none(), "no entry: unrestricted");
        s.put(tp("u", "/", "t", "^a", "^b"));
        s.put(tp("u", "/", "t2", "^c", "^d"));
        s.put(tp("u", "/", "t", "^x", "^y"));
        s.put(tp("v", "/", "t", "", ""));
        assert_eq!(s.get("u", "/", "t").unwrap().write, "^x");
        assert_eq!(s.get("u", "/", "t").unwrap().pattern(Access::Read), "^y");
        assert!(s.get("u", "other", "t").is_none());
        assert_eq!(s.all().len(), 3);
        assert_eq!(s.remove("u", "/", Some("t2")), 1);
        assert_eq!(s.remove("u", "/", Some("t2")), 0);
        assert_eq!(s.remove("u", "/", None), 1);
        assert!(s.get("u", "/", "t").is_none());
        s.remove_vhost("/");
        assert!(s.all().is_empty());
    }

    #[test]
    fn validation_rejects_bad_patterns_and_accepts_variables() {
        assert!(tp("u", "/", "t", "^{username}\\.", "{client_id}")
            .validate()
            .is_ok());
        assert!(tp("u", "/", "t", "(", ".*").validate().is_err());
        assert!(tp("u", "/", "", ".*", ".*").validate().is_err());
    }
}
