//! Where the tools' log events go: stderr, filtered by `RUST_LOG`.
//!
//! Owns the one subscriber setup both binaries install. Does not own what
//! is logged: the runtime's progress and the connector's recoveries are
//! `tracing` events of the `exactly` and `exactly-kafka` crates.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Sends `tracing` events to stderr: those at `default` and above, or what
/// `RUST_LOG` asks for when it is set (for example
/// `RUST_LOG=exactly_kafka=debug`). Call it once, first thing in `main`.
pub fn init(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
