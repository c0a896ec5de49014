//! Command-line interface: subcommands and the flags that override configuration keys.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, ConfigError, LogFormat, Override, Sources};

const AFTER_HELP: &str = "\
Configuration precedence (lowest first): built-in defaults, the --config file, FERRYMQ_*
environment variables (FERRYMQ_ + key path with '.' as '_', uppercased, e.g.
FERRYMQ_STORAGE_SEGMENT_BYTES), then flags (--set, then the dedicated flags).
`ferrymq config show` prints the result. An invalid configuration exits with status 2.";

/// FerryMQ: a message broker speaking AMQP 0-9-1, MQTT, Kafka and HTTP over one storage engine.
#[derive(Debug, Parser)]
#[command(name = "ferrymq", version, propagate_version = true, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags shared by every subcommand that reads the configuration.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Read configuration from this TOML file
    #[arg(
        long,
        short = 'c',
        global = true,
        value_name = "PATH",
        env = "FERRYMQ_CONFIG"
    )]
    pub config: Option<PathBuf>,
    /// Directory holding all persistent state [key: data_dir]
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<String>,
    /// Log level or filter, e.g. "debug" or "info,ferrymq_core=debug" [key: log.level]
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log line format on stderr [key: log.format]
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Set any configuration key, e.g. --set storage.durability=t1 (repeatable)
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker until SIGINT or SIGTERM (then shut down gracefully)
    ///
    /// Logs one line containing "FerryMQ ready" (with the data directory) once the broker is
    /// open and every enabled listener is bound. On SIGINT or SIGTERM it stops accepting,
    /// lets in-flight work finish within shutdown.timeout_ms, flushes and fsyncs, and exits 0;
    /// a second signal exits at once with status 128 + the signal number.
    Serve,
    /// Inspect the configuration
    #[command(subcommand)]
    Config(ConfigCommand),
    #[command(flatten)]
    Admin(Box<crate::admin::AdminCommand>),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration (defaults < file < env < flags) as TOML, with
    /// secrets (users.default_password) replaced by "<redacted>" unless asked for
    Show {
        /// Print secrets in clear (the output then loads back with --config unchanged)
        #[arg(long)]
        reveal_secrets: bool,
    },
}

impl ConfigArgs {
    /// The configuration layers these flags and the process environment describe.
    ///
    /// # Errors
    /// A malformed `--set` or a non-UTF-8 `FERRYMQ_*` variable.
    pub fn sources(&self) -> Result<Sources, ConfigError> {
        let mut overrides = self
            .set
            .iter()
            .map(|s| config::parse_set(s))
            .collect::<Result<Vec<_>, _>>()?;
        let dedicated = [
            ("data_dir", self.data_dir.clone(), "--data-dir"),
            ("log.level", self.log_level.clone(), "--log-level"),
            (
                "log.format",
                self.log_format.map(|f| f.as_str().to_string()),
                "--log-format",
            ),
        ];
        for (key, value, flag) in dedicated {
            if let Some(value) = value {
                overrides.push(Override {
                    key: key.into(),
                    value,
                    flag,
                });
            }
        }
        Ok(Sources {
            file: self.config.clone(),
            env: Sources::process_env()?,
            overrides,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "ferrymq",
            "config",
            "show",
            "--data-dir",
            "/d",
            "--set",
            "log.level=debug",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Config(ConfigCommand::Show {
                reveal_secrets: false
            })
        ));
        let o: Vec<_> = cli
            .config
            .sources()
            .unwrap()
            .overrides
            .into_iter()
            .map(|o| (o.key, o.value))
            .collect();
        assert_eq!(
            o,
            [
                ("log.level".to_string(), "debug".to_string()),
                ("data_dir".into(), "/d".into()),
                ("log.format".into(), "json".into()),
            ]
        );
    }

    #[test]
    fn bad_log_format_is_a_usage_error() {
        let e = Cli::try_parse_from(["ferrymq", "serve", "--log-format", "xml"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }
}
