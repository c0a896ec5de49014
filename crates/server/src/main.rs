//! The `ferrymq` binary: parses the command line, loads the configuration, runs a subcommand.
//!
//! Layers, one file each:
//! - `cli`: clap definitions (subcommands, configuration flags);
//! - `config`: typed configuration, defaults, layered loading, validation, mapping to the core;
//! - `logging`: the tracing subscriber (text or JSON on stderr);
//! - `serve`: the runtime, the broker, listeners, signals and graceful shutdown;
//! - `shutdown`: the shutdown signal handed to every long-running task.
//!
//! Exit status: 0 success (including a graceful shutdown), 1 runtime failure, 2 invalid
//! configuration or usage, 128+N when a second signal N forces an immediate exit.

mod admin;
mod cli;
mod config;
mod logging;
mod mqtt_ws;
mod serve;
mod shutdown;
mod tls;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, ConfigCommand};
use crate::config::{Config, ConfigError};

/// mimalloc instead of glibc's malloc: a message is allocated by the connection that
/// received it and freed by the one that sent it, on another worker thread, and glibc then
/// takes the allocating arena's lock (and wakes its waiters) on every such free; see
/// ARCHITECTURE.md, "Memory allocator".
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for an invalid configuration (the same as clap's usage errors).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match cli.config.sources().and_then(|s| Config::load(&s)) {
        Ok(config) => config,
        Err(e) => return config_error(&e),
    };
    match cli.command {
        Command::Config(ConfigCommand::Show { reveal_secrets }) => match if reveal_secrets {
            config.to_toml()
        } else {
            config.redacted().to_toml()
        } {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&ConfigError::Serialize(e.to_string())),
        },
        Command::Serve => {
            if let Err(e) = logging::init(&config.log) {
                eprintln!("ferrymq: {e:#}");
                return ExitCode::FAILURE;
            }
            serve::main(config)
        }
        Command::Admin(cmd) => admin::run(*cmd),
    }
}

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("ferrymq: invalid configuration: {e}");
    ExitCode::from(EXIT_CONFIG)
}
