//! Helpers shared by the integration tests: those for any test against a
//! real broker come from `exactly_kafka_tools::testing`; the ones here
//! drive the SDK's side by hand.

use exactly::sink::SinkContext;
use exactly::source::SubtaskContext;
pub use exactly_kafka_tools::testing::*;

/// What the runtime tells subtask 0 of 1 of a sink when it opens, restoring
/// `restored_checkpoint` if given: for tests that drive a sink by hand.
pub fn sink_context(restored_checkpoint: Option<u64>) -> SinkContext {
    SinkContext {
        subtask: SubtaskContext {
            job: "test".into(),
            stage: "sink".into(),
            index: 0,
            parallelism: 1,
            attempt: 0,
        },
        restored_checkpoint,
        restored_parallelism: restored_checkpoint.map(|_| 1),
    }
}
