//! Layered loading: defaults < file < `FERRYMQ_*` env < flags, merged as TOML tables.
//!
//! The defaults, serialized to a table, are the schema: a key that is not in them is unknown,
//! and a value must have the TOML type of its default. Env vars and flags are strings, parsed
//! as their leaf's type (strings verbatim, everything else as a TOML value, so `1_048_576` and
//! `true` work). Each leaf remembers where it was set, for error messages.

use std::collections::BTreeMap;
use std::path::PathBuf;

use toml::Value;

use super::{Config, ConfigError, Sources, RESERVED_ENV};

/// Prefix of every configuration environment variable.
pub const ENV_PREFIX: &str = "FERRYMQ_";

type Table = toml::map::Map<String, Value>;

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    Env(String),
    Flag(&'static str),
}

/// Leaf key path -> where it was last set (absent = default).
type Provenance = BTreeMap<String, Origin>;

pub(super) fn load(defaults: Config, sources: &Sources) -> Result<Config, ConfigError> {
    let mut table = match Value::try_from(&defaults) {
        Ok(Value::Table(t)) => t,
        Ok(_) => return Err(ConfigError::Serialize("defaults are not a table".into())),
        Err(e) => return Err(ConfigError::Serialize(e.to_string())),
    };
    let leaves = leaf_paths(&table);
    let mut prov = Provenance::new();

    if let Some(path) = &sources.file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let file: Table = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
            path: path.clone(),
            message: e.to_string().trim_end().to_string(),
        })?;
        merge(&mut table, file, "", &Origin::File(path.clone()), &mut prov)?;
    }

    let by_env: BTreeMap<String, &String> = leaves.iter().map(|p| (env_name(p), p)).collect();
    let mut env: Vec<&(String, String)> = sources
        .env
        .iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && !RESERVED_ENV.contains(&k.as_str()))
        .collect();
    env.sort();
    for (var, raw) in env {
        let Some(path) = by_env.get(var) else {
            return Err(ConfigError::UnknownEnv {
                var: var.clone(),
                known: by_env.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        };
        set_leaf(&mut table, path, raw, Origin::Env(var.clone()), &mut prov)?;
    }

    for o in &sources.overrides {
        let origin = Origin::Flag(o.flag);
        if !leaves.contains(&o.key) {
            let prefix = format!("{}.", o.key);
            let inside: Vec<&str> = leaves
                .iter()
                .filter(|l| l.starts_with(&prefix))
                .map(String::as_str)
                .collect();
            return Err(if inside.is_empty() {
                ConfigError::UnknownKey {
                    key: o.key.clone(),
                    origin,
                    expected: leaves.join(", "),
                }
            } else {
                ConfigError::Invalid {
                    key: o.key.clone(),
                    problem: format!("is a section; set one of its keys: {}", inside.join(", ")),
                    origin,
                }
            });
        }
        set_leaf(&mut table, &o.key, &o.value, origin, &mut prov)?;
    }

    let origin_of = |key: &str| prov.get(key).cloned().unwrap_or(Origin::Default);
    let config: Config = serde_path_to_error::deserialize(Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        ConfigError::Invalid {
            origin: origin_of(&key),
            problem: e.inner().to_string().trim_end().to_string(),
            key,
        }
    })?;
    config
        .validate()
        .map_err(|(key, problem)| ConfigError::Invalid {
            key: key.to_string(),
            problem,
            origin: origin_of(key),
        })?;
    Ok(config)
}

/// `storage.segment_bytes` -> `FERRYMQ_STORAGE_SEGMENT_BYTES`.
pub fn env_name(path: &str) -> String {
    format!("{ENV_PREFIX}{}", path.replace('.', "_").to_uppercase())
}

/// Dotted paths of every non-table value, in table order.
pub fn leaf_paths(table: &Table) -> Vec<String> {
    fn walk(t: &Table, prefix: &str, out: &mut Vec<String>) {
        for (k, v) in t {
            let path = join(prefix, k);
            match v {
                Value::Table(sub) => walk(sub, &path, out),
                _ => out.push(path),
            }
        }
    }
    let mut out = Vec::new();
    walk(table, "", &mut out);
    out
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Deep-merges `overlay` into `base`; `base` (the defaults) decides which keys and types exist.
fn merge(
    base: &mut Table,
    overlay: Table,
    prefix: &str,
    origin: &Origin,
    prov: &mut Provenance,
) -> Result<(), ConfigError> {
    let expected = base.keys().cloned().collect::<Vec<_>>().join(", ");
    for (k, v) in overlay {
        let path = join(prefix, &k);
        let Some(slot) = base.get_mut(&k) else {
            return Err(ConfigError::UnknownKey {
                key: path,
                origin: origin.clone(),
                expected,
            });
        };
        match (slot, v) {
            (Value::Table(bt), Value::Table(vt)) => merge(bt, vt, &path, origin, prov)?,
            (slot, v) if same_type(slot, &v) => {
                *slot = v;
                prov.insert(path, origin.clone());
            }
            (slot, v) => {
                return Err(ConfigError::WrongType {
                    key: path,
                    expected: type_name(slot),
                    found: describe(&v),
                    origin: origin.clone(),
                })
            }
        }
    }
    Ok(())
}

/// Sets one known leaf from a string, parsed as the type of its current value.
fn set_leaf(
    table: &mut Table,
    path: &str,
    raw: &str,
    origin: Origin,
    prov: &mut Provenance,
) -> Result<(), ConfigError> {
    let mut cur = table;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let is_last = parts.peek().is_none();
        let slot = cur.get_mut(part);
        match (slot, is_last) {
            (Some(Value::Table(t)), false) => cur = t,
            (Some(slot), true) if !slot.is_table() => {
                *slot = parse_as(slot, raw).ok_or_else(|| ConfigError::WrongType {
                    key: path.to_string(),
                    expected: type_name(slot),
                    found: format!("{raw:?}"),
                    origin: origin.clone(),
                })?;
                prov.insert(path.to_string(), origin);
                return Ok(());
            }
            _ => break,
        }
    }
    // Callers only pass paths from `leaf_paths` of this table, so this is not reached.
    Err(ConfigError::Invalid {
        key: path.to_string(),
        problem: "is not a configuration value".into(),
        origin,
    })
}

fn parse_as(like: &Value, raw: &str) -> Option<Value> {
    if like.is_str() {
        return Some(Value::String(raw.to_string()));
    }
    let mut t: Table = toml::from_str(&format!("v = {raw}")).ok()?;
    if t.len() != 1 {
        return None;
    }
    let v = t.remove("v")?;
    same_type(like, &v).then_some(v)
}

fn same_type(a: &Value, b: &Value) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean (true or false)",
        Value::Datetime(_) => "a datetime",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// `string "abc"`, `integer 12`, ... for "expected X, got Y".
fn describe(v: &Value) -> String {
    match v {
        Value::String(_) => format!("string {v}"),
        Value::Integer(_) => format!("integer {v}"),
        Value::Float(_) => format!("float {v}"),
        Value::Boolean(_) => format!("boolean {v}"),
        Value::Datetime(_) => format!("datetime {v}"),
        Value::Array(_) => "an array".into(),
        Value::Table(_) => "a table".into(),
    }
}
