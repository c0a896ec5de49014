//! Log names to directory names: a reversible, filesystem-safe escaping that can never
//! escape the root, with a hashed form plus a `NAME` file for names too long to escape.

use crate::{Result, StorageError};

/// Longest accepted log or consumer name, in bytes.
pub const NAME_BYTES_MAX: usize = 255;
/// Longest escaped directory name used as is; longer ones are shortened and hashed.
const DIR_NAME_BYTES_MAX: usize = 200;
/// Escaped prefix kept in a hashed directory name.
const HASHED_PREFIX_BYTES: usize = 150;
/// File holding the full name inside a hashed directory.
pub(crate) const NAME_FILE: &str = "NAME";

/// Validates a log name: non-empty UTF-8, at most 255 bytes, no NUL.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > NAME_BYTES_MAX {
        "longer than 255 bytes"
    } else if name.contains('\0') {
        "contains NUL"
    } else {
        return Ok(());
    };
    Err(StorageError::InvalidName {
        name: name.chars().take(64).collect(),
        reason,
    })
}

/// Validates a kind directory: `[a-z0-9_-]{1,64}`.
pub(crate) fn check_kind(kind: &str) -> Result<()> {
    let ok = !kind.is_empty()
        && kind.len() <= 64
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(StorageError::InvalidName {
            name: kind.chars().take(64).collect(),
            reason: "kind must match [a-z0-9_-]{1,64}",
        })
    }
}

fn is_safe(b: u8, first: bool) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && !first)
}

/// Escapes every byte outside `[A-Za-z0-9_-]` (and a leading '.') as `%XX`.
pub(crate) fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        if is_safe(b, i == 0) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[(b >> 4) as usize]));
            out.push(char::from(b"0123456789ABCDEF"[(b & 15) as usize]));
        }
    }
    out
}

/// Reverses `escape`; `None` if `s` is not a valid escaped name.
pub(crate) fn unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else if is_safe(b[i], i == 0) {
            out.push(b[i]);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

/// FNV-1a, 64 bit: stable across Rust versions (unlike `DefaultHasher`).
fn fnv64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Directory name for `name` and whether it is the hashed form (which needs a `NAME` file).
pub(crate) fn dir_name(name: &str) -> (String, bool) {
    let esc = escape(name);
    if esc.len() <= DIR_NAME_BYTES_MAX {
        return (esc, false);
    }
    let mut cut = HASHED_PREFIX_BYTES;
    // Do not split a %XX escape.
    while !escape_boundary(&esc, cut) {
        cut -= 1;
    }
    (
        format!("{}~{:016x}", &esc[..cut], fnv64(name.as_bytes())),
        true,
    )
}

/// True if `cut` does not fall inside a `%XX` triple.
fn escape_boundary(esc: &str, cut: usize) -> bool {
    let b = esc.as_bytes();
    !(cut >= 1 && b[cut - 1] == b'%' || cut >= 2 && b[cut - 2] == b'%')
}

/// True for directory names `dir_name` can produce (so stray entries are ignored).
pub(crate) fn is_log_dir_name(s: &str) -> bool {
    match s.split_once('~') {
        Some((prefix, hash)) => {
            hash.len() == 16
                && hash.bytes().all(|c| c.is_ascii_hexdigit())
                && !prefix.starts_with('.')
        }
        None => unescape(s).is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips_and_is_safe() {
        for n in [
            "/",
            "vhost/queue",
            "..",
            ".hidden",
            "a b",
            "ünïcödé",
            "%41",
            "a.b.c",
            "-x_",
        ] {
            let (d, hashed) = dir_name(n);
            assert!(!hashed);
            assert!(!d.contains('/') && d != "." && d != ".." && !d.starts_with('.'));
            assert_eq!(unescape(&d).as_deref(), Some(n), "{n}");
            assert!(is_log_dir_name(&d));
        }
        assert_ne!(dir_name("a/b").0, dir_name("a%2Fb").0);
    }

    #[test]
    fn long_names_are_hashed_and_bounded() {
        let n = "/".repeat(255);
        let (d, hashed) = dir_name(&n);
        assert!(hashed && d.len() <= 255, "{}", d.len());
        assert!(is_log_dir_name(&d));
        let (d2, _) = dir_name(&"/".repeat(254));
        assert_ne!(d, d2);
        let u = "é".repeat(127);
        let (d3, hashed3) = dir_name(&u);
        assert!(hashed3 && d3.len() <= 255);
        assert!(check_name(&"x".repeat(256)).is_err());
        assert!(check_name("").is_err());
        assert!(check_kind("queues").is_ok());
        assert!(check_kind("../x").is_err());
    }
}
