//! Runnable examples for `exactly`: see the `[[example]]` targets.
//!
//! Owns what the examples share: [`init_logging`]. Does not own any
//! pipeline; each example is a file of its own.

/// Installs the subscriber every example logs through: the job's progress,
/// notices and warnings go to stderr at `info` and above, or as `RUST_LOG`
/// says when it is set (for example `RUST_LOG=exactly=debug` to follow
/// every checkpoint). The setup is the tools' ([`exactly_kafka_tools::logging`]),
/// with `info` instead of their `warn`.
pub fn init_logging() {
    exactly_kafka_tools::logging::init("info");
}
