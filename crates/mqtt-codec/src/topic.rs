//! Topic helpers, pure: topic name and topic filter validation, `$share/{group}/{filter}`
//! parsing, and [`topic_matches`], the spec's matching rule (MQTT 5 §4.7, §4.8.2).

use crate::reason::ReasonCode;
use crate::wire::STRING_LEN_MAX;

/// Why a topic name, topic filter or shared subscription is not valid.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum TopicError {
    /// A topic name (PUBLISH, will) that is empty, too long, has U+0000 or a wildcard.
    #[error("invalid topic name: {0}")]
    InvalidTopicName(&'static str),
    /// A topic filter with a misplaced wildcard, empty, too long or with U+0000.
    #[error("invalid topic filter: {0}")]
    InvalidTopicFilter(&'static str),
    /// A `$share/...` filter with an empty or wildcard share name, or no filter after it.
    #[error("invalid shared subscription: {0}")]
    InvalidSharedSubscription(&'static str),
}

impl TopicError {
    /// 0x90 Topic Name invalid for names; 0x8F Topic Filter invalid for filters and shared
    /// subscriptions (the SUBACK / UNSUBACK code for that filter).
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            TopicError::InvalidTopicName(_) => ReasonCode::TOPIC_NAME_INVALID,
            TopicError::InvalidTopicFilter(_) | TopicError::InvalidSharedSubscription(_) => {
                ReasonCode::TOPIC_FILTER_INVALID
            }
        }
    }
}

/// Checks a topic name: at least one character, at most 65,535 bytes, no U+0000 and no
/// wildcard (`+`, `#`) (MQTT-4.7.3-1, MQTT-3.3.2-2).
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::InvalidTopicName("empty"));
    }
    if name.len() > STRING_LEN_MAX {
        return Err(TopicError::InvalidTopicName("longer than 65535 bytes"));
    }
    if name.contains('\0') {
        return Err(TopicError::InvalidTopicName("contains U+0000"));
    }
    if name.contains(['+', '#']) {
        return Err(TopicError::InvalidTopicName("contains a wildcard"));
    }
    Ok(())
}

/// Checks a topic filter: at least one character, at most 65,535 bytes, no U+0000; `+`
/// only as a whole level; `#` only as the whole last level (MQTT-4.7.1-1, -2). A `$share/`
/// filter is checked as one plain filter here: use [`parse_shared_subscription`] for it.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::InvalidTopicFilter("empty"));
    }
    if filter.len() > STRING_LEN_MAX {
        return Err(TopicError::InvalidTopicFilter("longer than 65535 bytes"));
    }
    if filter.contains('\0') {
        return Err(TopicError::InvalidTopicFilter("contains U+0000"));
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('+') && level != "+" {
            return Err(TopicError::InvalidTopicFilter(
                "'+' must occupy a whole level",
            ));
        }
        if level.contains('#') {
            if level != "#" {
                return Err(TopicError::InvalidTopicFilter(
                    "'#' must occupy a whole level",
                ));
            }
            if levels.peek().is_some() {
                return Err(TopicError::InvalidTopicFilter("'#' must be the last level"));
            }
        }
    }
    Ok(())
}

/// A shared subscription's parts: `$share/{group}/{filter}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedSubscription<'a> {
    /// The share name: non-empty, without `/`, `+` or `#`.
    pub group: &'a str,
    /// The topic filter the group subscribes to (validated).
    pub filter: &'a str,
}

/// The prefix of a shared subscription's topic filter.
pub const SHARED_PREFIX: &str = "$share/";

/// Splits a `$share/{group}/{filter}` topic filter (MQTT 5 §4.8.2). Returns `Ok(None)` for
/// a filter that does not start with `$share/` (an ordinary filter, not validated here), and
/// `Ok(Some(..))` with a validated group and filter for a shared one.
pub fn parse_shared_subscription(
    filter: &str,
) -> Result<Option<SharedSubscription<'_>>, TopicError> {
    let Some(rest) = filter.strip_prefix(SHARED_PREFIX) else {
        return Ok(None);
    };
    let Some((group, inner)) = rest.split_once('/') else {
        return Err(TopicError::InvalidSharedSubscription(
            "no topic filter after the share name",
        ));
    };
    if group.is_empty() {
        return Err(TopicError::InvalidSharedSubscription("empty share name"));
    }
    if group.contains(['+', '#']) {
        return Err(TopicError::InvalidSharedSubscription(
            "wildcard in the share name",
        ));
    }
    if inner.is_empty() {
        return Err(TopicError::InvalidSharedSubscription(
            "no topic filter after the share name",
        ));
    }
    validate_topic_filter(inner)?;
    Ok(Some(SharedSubscription {
        group,
        filter: inner,
    }))
}

/// True if topic name `topic` matches topic filter `filter` (MQTT 5 §4.7):
/// - levels are separated by `/`; empty levels are levels;
/// - `+` matches exactly one level (possibly empty);
/// - `#` matches any number of levels, including the parent level (`sport/#` matches
///   `sport`);
/// - a topic starting with `$` is not matched by a filter starting with `+` or `#`
///   (MQTT-4.7.2-1).
///
/// Both are expected to be valid ([`validate_topic_filter`], [`validate_topic_name`]); for
/// invalid ones the answer is unspecified, but the function never panics. A `$share/` filter
/// must be matched through its inner filter ([`parse_shared_subscription`]).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        if level == "#" {
            return true;
        }
        match topic_levels.next() {
            Some(t) if level == "+" || level == t => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_matching_examples() {
        // (filter, topic, matches): MQTT 5 §4.7.1.2, §4.7.1.3, §4.7.2 and 3.1.1 §4.7.
        let table: &[(&str, &str, bool)] = &[
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/ranking",
                true,
            ),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/score/wimbledon",
                true,
            ),
            ("sport/#", "sport", true),
            ("#", "sport/tennis", true),
            ("#", "/", true),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player2", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("+/tennis/#", "sport/tennis/player1", true),
            ("+/tennis/#", "sport/tennis", true),
            ("sport/+/player1", "sport/tennis/player1", true),
            ("ACCOUNTS", "Accounts", false),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            ("a//b", "a//b", true),
            ("a/+/b", "a//b", true),
            ("/", "/", true),
            // $-topics
            ("#", "$SYS/broker/load", false),
            ("+/monitor/Clients", "$SYS/monitor/Clients", false),
            ("$SYS/#", "$SYS/monitor/Clients", true),
            ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
            ("$SYS/#", "$SYS", true),
            ("+", "$SYS", false),
            ("a/#", "a/$b", true),
            ("+/$b", "a/$b", true),
        ];
        for &(filter, topic, expected) in table {
            assert_eq!(
                topic_matches(filter, topic),
                expected,
                "filter {filter:?} topic {topic:?}"
            );
            validate_topic_filter(filter).unwrap();
            validate_topic_name(topic).unwrap();
        }
    }

    #[test]
    fn topic_names() {
        for ok in ["a", "/", "a/b", "$SYS/x", " ", "a b/€"] {
            validate_topic_name(ok).unwrap();
        }
        for bad in ["", "a/+", "#", "a+b", "a\0"] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_topic_name(&"a".repeat(65_536)).is_err());
        assert_eq!(
            validate_topic_name("a/#").unwrap_err().reason_code(),
            ReasonCode::TOPIC_NAME_INVALID
        );
    }

    #[test]
    fn topic_filters() {
        for ok in [
            "#",
            "+",
            "+/+",
            "/+",
            "sport/#",
            "sport/+/player1",
            "+/tennis/#",
            "a//b",
            "/",
            "$SYS/#",
        ] {
            validate_topic_filter(ok).unwrap();
        }
        for bad in [
            "",
            "sport/tennis#",
            "sport/tennis/#/ranking",
            "sport+",
            "a/b+/c",
            "##",
            "#/",
            "a\0",
        ] {
            let e = validate_topic_filter(bad).unwrap_err();
            assert_eq!(e.reason_code(), ReasonCode::TOPIC_FILTER_INVALID, "{bad:?}");
        }
    }

    #[test]
    fn shared_subscriptions() {
        assert_eq!(
            parse_shared_subscription("$share/consumer1/sport/tennis/+").unwrap(),
            Some(SharedSubscription {
                group: "consumer1",
                filter: "sport/tennis/+"
            })
        );
        assert_eq!(
            parse_shared_subscription("$share/g/#").unwrap(),
            Some(SharedSubscription {
                group: "g",
                filter: "#"
            })
        );
        assert_eq!(
            parse_shared_subscription("$share/g//a").unwrap(),
            Some(SharedSubscription {
                group: "g",
                filter: "/a"
            })
        );
        assert_eq!(parse_shared_subscription("sport/#").unwrap(), None);
        assert_eq!(parse_shared_subscription("$share").unwrap(), None);
        assert_eq!(parse_shared_subscription("$SHARE/g/a").unwrap(), None);
        for bad in [
            "$share/",
            "$share/g",
            "$share/g/",
            "$share//a",
            "$share/g+/a",
            "$share/#/a",
            "$share/g/a#",
        ] {
            let e = parse_shared_subscription(bad).unwrap_err();
            assert_eq!(e.reason_code(), ReasonCode::TOPIC_FILTER_INVALID, "{bad:?}");
        }
    }

    #[test]
    fn invalid_input_never_panics() {
        for (f, t) in [("", ""), ("#/a", "x"), ("a+", "a+"), ("", "$"), ("/", "")] {
            let _ = topic_matches(f, t);
        }
    }
}
