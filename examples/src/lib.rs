//! Runnable examples for `exactly`: see the `[[example]]` targets.
//!
//! Owns what the examples share: [`init_logging`]. Does not own any
//! pipeline; each example is a file of its own.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the subscriber every example logs through: the job's progress,
/// notices and warnings go to stderr at `info` and above, or as `RUST_LOG`
/// says when it is set (for example `RUST_LOG=exactly=debug` to follow
/// every checkpoint).
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
