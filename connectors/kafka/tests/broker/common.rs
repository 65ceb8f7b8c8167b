//! Helpers shared by the integration tests: those for any test against a
//! real broker come from `exactly_kafka_tools::testing`; the ones here
//! drive the SDK's side by hand.

use exactly::sink::{SinkContext, TwoPhaseCommitSink};
use exactly::source::SubtaskContext;
use exactly_kafka::sink::{KafkaSink, KafkaTransaction};
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

/// Opens `sink` as subtask 0 of 1 with nothing restored, writes `records`
/// in the transaction of checkpoint 1 and pre-commits it: a transaction as
/// a sink leaves it when it dies before the checkpoint completes.
pub fn pre_committed(sink: &mut KafkaSink<String>, records: Vec<String>) -> KafkaTransaction {
    sink.open(&sink_context(None)).unwrap();
    let mut txn = sink.begin_transaction(1).unwrap();
    sink.write(&mut txn, records).unwrap();
    sink.pre_commit(&mut txn).unwrap();
    txn
}
