//! Logging: a `tracing` subscriber writing text or JSON lines to stderr, filtered by `log.level`.
//!
//! `log.level` is the only filter source (`RUST_LOG` is ignored; use `FERRYMQ_LOG_LEVEL`), so
//! that `config show` tells the whole truth.

use std::io::IsTerminal;

use tracing_subscriber::filter::{EnvFilter, LevelFilter};

use crate::config::{LogConfig, LogFormat};

/// Parses a level or `RUST_LOG`-style directive list (`info,ferrymq_core=debug`).
///
/// A bare word must be a level: `tracing` would read `inf` as "everything from target `inf`",
/// which is never what a user means. Targets need a level (`ferrymq_core=trace`).
///
/// # Errors
/// A message saying which directive is wrong.
pub fn parse_filter(level: &str) -> Result<EnvFilter, String> {
    if level.trim().is_empty() {
        return Err("must not be empty".into());
    }
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !directive.contains('=')
            && !directive.contains('[')
            && directive.parse::<LevelFilter>().is_err()
        {
            return Err(format!(
                "unknown level {directive:?}: expected trace, debug, info, warn, error or off, \
                 optionally followed by target=level directives (e.g. \"info,ferrymq_core=debug\")"
            ));
        }
    }
    EnvFilter::builder()
        .parse(level)
        .map_err(|e| format!("invalid filter {level:?}: {e}"))
}

/// Installs the global subscriber. Call once, after the configuration is loaded.
///
/// # Errors
/// If the filter is invalid (validation prevents it) or a subscriber is already installed.
pub fn init(config: &LogConfig) -> anyhow::Result<()> {
    let filter = parse_filter(&config.level).map_err(anyhow::Error::msg)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match config.format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

#[cfg(test)]
mod tests {
    use super::parse_filter;

    #[test]
    fn accepts_levels_and_directives() {
        for ok in [
            "trace",
            "debug",
            "info",
            "warn",
            "error",
            "off",
            "INFO",
            "info,ferrymq_core=debug",
            "warn,ferrymq=trace,tokio=off",
        ] {
            assert!(parse_filter(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_typos_and_empty() {
        for bad in ["", " ", "inf", "info,verbose", "ferrymq_core=loud"] {
            assert!(parse_filter(bad).is_err(), "{bad}");
        }
    }
}
