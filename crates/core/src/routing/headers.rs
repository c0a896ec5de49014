//! Headers-exchange matching: a binding's arguments against a message's headers.
//!
//! # Semantics (as RabbitMQ's `rabbit_exchange_type_headers`)
//!
//! The binding argument `x-match` selects the mode:
//! - `all` (also the default when `x-match` is absent): every considered binding
//!   argument must match. With no considered arguments it matches every message.
//! - `any`: at least one considered argument must match. With no considered
//!   arguments it matches nothing.
//! - `all-with-x` / `any-with-x`: as `all` / `any`, but arguments whose names start
//!   with `x-` are considered too. In `all` and `any` they are ignored.
//!
//! `x-match` itself is never considered. An argument matches when the message has a
//! header of that name and either the argument's value is [`Value::Void`] (a
//! presence test: any value matches) or the values are equal (see below). Header
//! names compare byte for byte. If `x-match` holds anything other than one of the
//! four strings, matching treats it as `all` (RabbitMQ's legacy behaviour for
//! bindings created before it validated); new bindings are refused by
//! [`validate_binding_args`], as RabbitMQ refuses them with `PRECONDITION_FAILED`.
//!
//! # Value equality
//!
//! Values are compared by type and value, with two deliberate widenings:
//! - integers compare by numeric value whatever their width or signedness
//!   ([`Value::Int`] `5` equals [`Value::UInt`] `5`), because adapters pick the
//!   representation from the wire type;
//! - [`Value::String`] and [`Value::Bytes`] compare by their bytes: RabbitMQ
//!   compares the two AMQP binary types (`S` long string and `x` byte array) by
//!   content, and Kafka record headers are always bytes while AMQP and HTTP send
//!   strings, so a Kafka header `format=pdf` matches an AMQP binding `format=pdf`.
//!
//! Everything else is strictly typed: a float never equals an integer (RabbitMQ's
//! Erlang `==` would say `1 == 1.0`), a timestamp never equals an integer, a
//! decimal equals a decimal with the same scale and digits (`1.0` at scale 1 is not
//! `1` at scale 0, as in RabbitMQ), NaN equals nothing, and a header whose value
//! is `Void` matches only a `Void` (presence) argument. Tables compare entry by
//! entry in order and arrays element by element, both with this same equality
//! (RabbitMQ compares nested values with their wire types, which the neutral model
//! does not keep).
//!
//! Duplicate names: a binding argument is looked up as the first header of that
//! name, and each binding argument is evaluated on its own. (RabbitMQ's sorted merge
//! gives order-dependent answers for duplicates; the neutral tables rarely hold any,
//! since [`FieldTable::insert`] replaces.)

use crate::message::{FieldTable, Value};

/// The longest `x-match` value quoted back in an error, in bytes.
const ERROR_VALUE_LEN_MAX: usize = 64;

/// The matching mode of a headers binding (its `x-match` argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XMatch {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

impl XMatch {
    /// The mode named by `args`' `x-match` argument; `All` if absent or invalid
    /// (see the module docs).
    pub fn from_args(args: &FieldTable) -> XMatch {
        args.get("x-match")
            .and_then(Value::as_str)
            .and_then(XMatch::parse)
            .unwrap_or(XMatch::All)
    }

    /// Parses an `x-match` value.
    pub fn parse(s: &str) -> Option<XMatch> {
        match s {
            "all" => Some(XMatch::All),
            "any" => Some(XMatch::Any),
            "all-with-x" => Some(XMatch::AllWithX),
            "any-with-x" => Some(XMatch::AnyWithX),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            XMatch::All => "all",
            XMatch::Any => "any",
            XMatch::AllWithX => "all-with-x",
            XMatch::AnyWithX => "any-with-x",
        }
    }

    fn is_any(self) -> bool {
        matches!(self, XMatch::Any | XMatch::AnyWithX)
    }

    fn with_x(self) -> bool {
        matches!(self, XMatch::AllWithX | XMatch::AnyWithX)
    }
}

/// Why headers-binding arguments were refused. The message texts are RabbitMQ's;
/// AMQP answers them with 406 PRECONDITION_FAILED.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadersError {
    /// `x-match` is a string but not one of the four modes.
    #[error("Invalid x-match field value {0:?}; expected all, any, all-with-x, or any-with-x")]
    InvalidXMatchValue(String),
    /// `x-match` is not a string.
    #[error("Invalid x-match field type {kind} (value {value}); expected longstr")]
    InvalidXMatchType {
        /// The type it has.
        kind: &'static str,
        /// Its value, abbreviated.
        value: String,
    },
}

/// Checks a headers binding's arguments: `x-match`, if present, must be one of
/// `all`, `any`, `all-with-x`, `any-with-x` (a string; UTF-8 bytes are accepted
/// as a string, as an AMQP long string may arrive as either).
///
/// # Errors
///
/// [`HeadersError`] if `x-match` has another value or is not a string.
pub fn validate_binding_args(args: &FieldTable) -> Result<(), HeadersError> {
    let Some(v) = args.get("x-match") else {
        return Ok(());
    };
    let text = match v {
        Value::String(s) => std::borrow::Cow::Borrowed(s.as_str()),
        Value::Bytes(b) => String::from_utf8_lossy(b),
        other => {
            return Err(HeadersError::InvalidXMatchType {
                kind: type_name(other),
                value: abbreviate(&format!("{other:?}")),
            })
        }
    };
    // Lossy decoding cannot produce a mode name from invalid UTF-8.
    match XMatch::parse(&text) {
        Some(_) => Ok(()),
        None => Err(HeadersError::InvalidXMatchValue(abbreviate(&text))),
    }
}

/// Whether a message with `headers` matches a headers binding with `binding_args`.
pub fn headers_match(binding_args: &FieldTable, headers: &FieldTable) -> bool {
    headers_match_mode(XMatch::from_args(binding_args), binding_args, headers)
}

/// [`headers_match`] with the mode already parsed (for callers that cache it).
pub fn headers_match_mode(mode: XMatch, binding_args: &FieldTable, headers: &FieldTable) -> bool {
    let any = mode.is_any();
    let with_x = mode.with_x();
    for (name, want) in binding_args.iter() {
        if name == "x-match" || (!with_x && name.starts_with("x-")) {
            continue;
        }
        let hit = match headers.get(name) {
            None => false,
            Some(have) => matches!(want, Value::Void) || value_eq(want, have),
        };
        if hit && any {
            return true;
        }
        if !hit && !any {
            return false;
        }
    }
    // `all`: nothing failed; `any`: nothing matched.
    !any
}

/// Equality of header values as headers matching defines it (see the module docs).
pub fn value_eq(a: &Value, b: &Value) -> bool {
    use Value::*;
    match (a, b) {
        (Void, Void) => true,
        (Bool(x), Bool(y)) => x == y,
        (Int(x), Int(y)) => x == y,
        (UInt(x), UInt(y)) => x == y,
        (Int(i), UInt(u)) | (UInt(u), Int(i)) => u64::try_from(*i).is_ok_and(|i| i == *u),
        (Float(x), Float(y)) => x == y,
        (
            Decimal {
                scale: s1,
                value: v1,
            },
            Decimal {
                scale: s2,
                value: v2,
            },
        ) => s1 == s2 && v1 == v2,
        (String(x), String(y)) => x == y,
        (Bytes(x), Bytes(y)) => x == y,
        (String(s), Bytes(b)) | (Bytes(b), String(s)) => s.as_bytes() == &b[..],
        (Timestamp(x), Timestamp(y)) => x == y,
        (Table(x), Table(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y.iter())
                    .all(|((k1, v1), (k2, v2))| k1 == k2 && value_eq(v1, v2))
        }
        (Array(x), Array(y)) => {
            x.len() == y.len() && x.iter().zip(y.iter()).all(|(v1, v2)| value_eq(v1, v2))
        }
        _ => false,
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Void => "void",
        Value::Bool(_) => "bool",
        Value::Int(_) => "signed integer",
        Value::UInt(_) => "unsigned integer",
        Value::Float(_) => "float",
        Value::Decimal { .. } => "decimal",
        Value::String(_) => "longstr",
        Value::Bytes(_) => "bytes",
        Value::Timestamp(_) => "timestamp",
        Value::Table(_) => "table",
        Value::Array(_) => "array",
    }
}

/// `s` cut to at most [`ERROR_VALUE_LEN_MAX`] bytes on a character boundary,
/// marked with `...` if cut (error texts end up in AMQP short strings).
fn abbreviate(s: &str) -> String {
    if s.len() <= ERROR_VALUE_LEN_MAX {
        return s.to_owned();
    }
    let mut end = ERROR_VALUE_LEN_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn table(entries: &[(&str, Value)]) -> FieldTable {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn s(v: &str) -> Value {
        Value::from(v)
    }

    #[test]
    fn all_mode() {
        let b = table(&[
            ("x-match", s("all")),
            ("format", s("pdf")),
            ("type", s("report")),
        ]);
        assert!(headers_match(
            &b,
            &table(&[
                ("format", s("pdf")),
                ("type", s("report")),
                ("extra", s("1"))
            ])
        ));
        assert!(!headers_match(&b, &table(&[("format", s("pdf"))])));
        assert!(!headers_match(
            &b,
            &table(&[("format", s("pdf")), ("type", s("log"))])
        ));
        assert!(!headers_match(&b, &FieldTable::new()));
        // Default mode is all.
        let d = table(&[("format", s("pdf")), ("type", s("report"))]);
        assert!(!headers_match(&d, &table(&[("format", s("pdf"))])));
        assert!(headers_match(
            &d,
            &table(&[("type", s("report")), ("format", s("pdf"))])
        ));
    }

    #[test]
    fn any_mode() {
        let b = table(&[
            ("x-match", s("any")),
            ("format", s("pdf")),
            ("type", s("report")),
        ]);
        assert!(headers_match(&b, &table(&[("format", s("pdf"))])));
        assert!(headers_match(&b, &table(&[("type", s("report"))])));
        assert!(!headers_match(
            &b,
            &table(&[("format", s("zip")), ("type", s("log"))])
        ));
        assert!(!headers_match(&b, &FieldTable::new()));
    }

    #[test]
    fn empty_bindings() {
        let hdrs = table(&[("a", s("1"))]);
        assert!(headers_match(&FieldTable::new(), &hdrs));
        assert!(headers_match(&FieldTable::new(), &FieldTable::new()));
        assert!(headers_match(&table(&[("x-match", s("all"))]), &hdrs));
        assert!(!headers_match(&table(&[("x-match", s("any"))]), &hdrs));
        assert!(!headers_match(
            &table(&[("x-match", s("any"))]),
            &FieldTable::new()
        ));
        // Only x- arguments: ignored, so "no arguments".
        assert!(headers_match(
            &table(&[("x-foo", s("1"))]),
            &FieldTable::new()
        ));
        assert!(!headers_match(
            &table(&[("x-match", s("any")), ("x-foo", s("1"))]),
            &table(&[("x-foo", s("1"))])
        ));
    }

    #[test]
    fn x_arguments() {
        let hdrs = table(&[("x-tenant", s("t1")), ("kind", s("a"))]);
        // Ignored without -with-x, even though they would fail.
        let b = table(&[
            ("x-match", s("all")),
            ("x-tenant", s("t2")),
            ("kind", s("a")),
        ]);
        assert!(headers_match(&b, &hdrs));
        let b = table(&[
            ("x-match", s("all-with-x")),
            ("x-tenant", s("t2")),
            ("kind", s("a")),
        ]);
        assert!(!headers_match(&b, &hdrs));
        let b = table(&[
            ("x-match", s("all-with-x")),
            ("x-tenant", s("t1")),
            ("kind", s("a")),
        ]);
        assert!(headers_match(&b, &hdrs));
        // any: an x- match alone counts only with -with-x.
        let b = table(&[
            ("x-match", s("any")),
            ("x-tenant", s("t1")),
            ("kind", s("b")),
        ]);
        assert!(!headers_match(&b, &hdrs));
        let b = table(&[
            ("x-match", s("any-with-x")),
            ("x-tenant", s("t1")),
            ("kind", s("b")),
        ]);
        assert!(headers_match(&b, &hdrs));
        // x-match itself is never compared, even in -with-x modes.
        let b = table(&[("x-match", s("all-with-x"))]);
        assert!(headers_match(&b, &FieldTable::new()));
        let b = table(&[("x-match", s("any-with-x"))]);
        assert!(!headers_match(&b, &table(&[("x-match", s("any-with-x"))])));
    }

    #[test]
    fn void_is_presence() {
        let b = table(&[("flag", Value::Void)]);
        assert!(headers_match(&b, &table(&[("flag", s("anything"))])));
        assert!(headers_match(&b, &table(&[("flag", Value::Void)])));
        assert!(headers_match(&b, &table(&[("flag", Value::Int(0))])));
        assert!(!headers_match(&b, &table(&[("other", s("x"))])));
        // A Void header matches only a presence test.
        assert!(!headers_match(
            &table(&[("flag", s("x"))]),
            &table(&[("flag", Value::Void)])
        ));
        let b = table(&[("x-match", s("any")), ("flag", Value::Void), ("k", s("v"))]);
        assert!(headers_match(&b, &table(&[("flag", Value::Bool(false))])));
    }

    #[test]
    fn typed_equality() {
        let m = |want: Value, have: Value| {
            headers_match(&table(&[("h", want)]), &table(&[("h", have)]))
        };
        assert!(m(Value::Int(5), Value::UInt(5)));
        assert!(m(Value::UInt(5), Value::Int(5)));
        assert!(!m(Value::Int(-1), Value::UInt(u64::MAX)));
        assert!(m(Value::UInt(u64::MAX), Value::UInt(u64::MAX)));
        assert!(!m(Value::Int(1), s("1")));
        assert!(!m(Value::Int(1), Value::Float(1.0)));
        assert!(!m(Value::Int(1), Value::Timestamp(1)));
        assert!(!m(Value::Int(1), Value::Bool(true)));
        assert!(m(Value::Float(1.5), Value::Float(1.5)));
        assert!(!m(Value::Float(f64::NAN), Value::Float(f64::NAN)));
        assert!(m(s("pdf"), Value::Bytes(Bytes::from_static(b"pdf"))));
        assert!(m(Value::Bytes(Bytes::from_static(b"pdf")), s("pdf")));
        assert!(!m(s("pdf"), s("PDF")));
        assert!(m(
            Value::Decimal {
                scale: 2,
                value: 150
            },
            Value::Decimal {
                scale: 2,
                value: 150
            }
        ));
        assert!(!m(
            Value::Decimal {
                scale: 1,
                value: 15
            },
            Value::Decimal {
                scale: 2,
                value: 150
            }
        ));
        assert!(m(
            Value::Array(vec![Value::Int(1), s("a")]),
            Value::Array(vec![Value::UInt(1), s("a")])
        ));
        assert!(!m(
            Value::Array(vec![Value::Int(1), s("a")]),
            Value::Array(vec![s("a"), Value::Int(1)])
        ));
        assert!(!m(Value::Array(vec![Value::Int(1)]), Value::Array(vec![])));
        let t1 = table(&[("a", Value::Int(1)), ("b", s("x"))]);
        let t2 = table(&[("a", Value::UInt(1)), ("b", s("x"))]);
        let t3 = table(&[("b", s("x")), ("a", Value::Int(1))]);
        assert!(m(Value::Table(t1.clone()), Value::Table(t2)));
        assert!(!m(Value::Table(t1), Value::Table(t3)));
    }

    #[test]
    fn invalid_x_match_matches_as_all() {
        let b = table(&[("x-match", s("bogus")), ("a", s("1")), ("b", s("2"))]);
        assert!(!headers_match(&b, &table(&[("a", s("1"))])));
        assert!(headers_match(&b, &table(&[("a", s("1")), ("b", s("2"))])));
        let b = table(&[("x-match", Value::Int(1)), ("a", s("1"))]);
        assert!(headers_match(&b, &table(&[("a", s("1"))])));
        // x-match given as UTF-8 bytes is honoured.
        let b = table(&[
            ("x-match", Value::Bytes(Bytes::from_static(b"any"))),
            ("a", s("1")),
            ("b", s("2")),
        ]);
        assert!(headers_match(&b, &table(&[("a", s("1"))])));
    }

    #[test]
    fn validation() {
        for mode in ["all", "any", "all-with-x", "any-with-x"] {
            assert_eq!(
                validate_binding_args(&table(&[("x-match", s(mode))])),
                Ok(())
            );
            assert_eq!(XMatch::parse(mode).map(XMatch::as_str), Some(mode));
        }
        assert_eq!(validate_binding_args(&FieldTable::new()), Ok(()));
        assert_eq!(
            validate_binding_args(&table(&[("a", Value::Int(1))])),
            Ok(())
        );
        assert_eq!(
            validate_binding_args(&table(&[(
                "x-match",
                Value::Bytes(Bytes::from_static(b"any"))
            )])),
            Ok(())
        );
        let e = validate_binding_args(&table(&[("x-match", s("some"))])).unwrap_err();
        assert_eq!(e, HeadersError::InvalidXMatchValue("some".into()));
        assert_eq!(
            e.to_string(),
            "Invalid x-match field value \"some\"; expected all, any, all-with-x, or any-with-x"
        );
        let e = validate_binding_args(&table(&[("x-match", s("ALL"))])).unwrap_err();
        assert!(matches!(e, HeadersError::InvalidXMatchValue(_)));
        let e = validate_binding_args(&table(&[(
            "x-match",
            Value::Bytes(Bytes::from_static(b"\xff\xfe")),
        )]))
        .unwrap_err();
        assert!(matches!(e, HeadersError::InvalidXMatchValue(_)));
        let e = validate_binding_args(&table(&[("x-match", Value::Int(7))])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Invalid x-match field type signed integer (value Int(7)); expected longstr"
        );
        // Long values are abbreviated, on a char boundary.
        let long = "é".repeat(100);
        let e = validate_binding_args(&table(&[("x-match", s(&long))])).unwrap_err();
        let HeadersError::InvalidXMatchValue(v) = e else {
            panic!("wrong error")
        };
        assert!(v.len() <= ERROR_VALUE_LEN_MAX + 3 && v.ends_with("..."));
    }

    // --- Property test against RabbitMQ's algorithm, transcribed plainly: sort both
    // tables by name, then merge, as rabbit_exchange_type_headers:headers_match/5.

    /// Values normalised to what the reference compares.
    #[derive(PartialEq)]
    enum Norm {
        Void,
        Bool(bool),
        Int(i128),
        Float(f64),
        Text(Vec<u8>),
        Ts(i64),
        Dec(u8, i32),
    }

    fn norm(v: &Value) -> Norm {
        match v {
            Value::Void => Norm::Void,
            Value::Bool(b) => Norm::Bool(*b),
            Value::Int(i) => Norm::Int(i128::from(*i)),
            Value::UInt(u) => Norm::Int(i128::from(*u)),
            Value::Float(f) => Norm::Float(*f),
            Value::String(s) => Norm::Text(s.as_bytes().to_vec()),
            Value::Bytes(b) => Norm::Text(b.to_vec()),
            Value::Timestamp(t) => Norm::Ts(*t),
            Value::Decimal { scale, value } => Norm::Dec(*scale, *value),
            Value::Table(_) | Value::Array(_) => unreachable!("not generated"),
        }
    }

    fn reference(args: &FieldTable, headers: &FieldTable) -> bool {
        let mode = match args.get("x-match") {
            Some(Value::String(m)) => m.as_str(),
            _ => "all",
        };
        let (is_all, with_x) = match mode {
            "any" => (false, false),
            "all-with-x" => (true, true),
            "any-with-x" => (false, true),
            _ => (true, false),
        };
        let mut p = args.0.clone();
        p.sort_by(|a, b| a.0.cmp(&b.0));
        let mut d = headers.0.clone();
        d.sort_by(|a, b| a.0.cmp(&b.0));
        let (mut all, mut any) = (true, false);
        let (mut i, mut j) = (0, 0);
        loop {
            if is_all && !all {
                return false;
            }
            if !is_all && any {
                return true;
            }
            let Some((pk, pv)) = p.get(i) else {
                return if is_all { all } else { any };
            };
            if pk == "x-match" || (pk.starts_with("x-") && !with_x) {
                i += 1;
                continue;
            }
            let Some((dk, dv)) = d.get(j) else {
                all = false;
                i = p.len();
                continue;
            };
            if pk > dk {
                j += 1;
            } else if pk < dk {
                all = false;
                i += 1;
            } else {
                if matches!(pv, Value::Void) || norm(pv) == norm(dv) {
                    any = true;
                } else {
                    all = false;
                }
                i += 1;
                j += 1;
            }
        }
    }

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Void),
            any::<bool>().prop_map(Value::Bool),
            (-2i64..3).prop_map(Value::Int),
            (0u64..3).prop_map(Value::UInt),
            prop::sample::select(vec![1.0, 2.5]).prop_map(Value::Float),
            prop::sample::select(vec!["a", "b"]).prop_map(Value::from),
            prop::sample::select(vec![&b"a"[..], b"b", b"\xff"])
                .prop_map(|b| Value::Bytes(Bytes::from_static(b))),
            (0i64..2).prop_map(Value::Timestamp),
            (0u8..2, 0i32..2).prop_map(|(scale, value)| Value::Decimal { scale, value }),
        ]
    }

    fn name() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "c", "x-a", "x-b", "x-match"]).prop_map(String::from)
    }

    fn fields() -> impl Strategy<Value = FieldTable> {
        prop::collection::vec((name(), scalar()), 0..6).prop_map(|v| {
            let mut t = FieldTable::new();
            for (k, v) in v {
                t.insert(k, v);
            }
            t
        })
    }

    proptest! {
        #[test]
        fn agrees_with_rabbitmq_merge(
            mode in prop::option::of(prop::sample::select(vec![
                "all", "any", "all-with-x", "any-with-x", "bogus",
            ])),
            args in fields(),
            headers in fields(),
        ) {
            let mut args = args;
            match mode {
                Some(m) => args.insert("x-match", Value::from(m)),
                None => {
                    args.remove("x-match");
                }
            }
            prop_assert_eq!(headers_match(&args, &headers), reference(&args, &headers));
        }

        #[test]
        fn validation_accepts_exactly_the_modes(v in scalar(), m in "[a-z-]{0,12}") {
            let ok = XMatch::parse(&m).is_some();
            prop_assert_eq!(validate_binding_args(&table(&[("x-match", Value::from(m.as_str()))])).is_ok(), ok);
            let t = table(&[("x-match", v.clone())]);
            let ok = v.as_str().and_then(XMatch::parse).is_some();
            prop_assert_eq!(validate_binding_args(&t).is_ok(), ok);
        }
    }
}
