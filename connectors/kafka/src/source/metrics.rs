//! [`KafkaSourceMetrics`]: the source's own counters, and the rdkafka
//! consumer context that feeds the offset-commit ones.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rdkafka::ClientContext;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaResult;
use rdkafka::topic_partition_list::TopicPartitionList;

/// Counters of one [`KafkaSource`](super::KafkaSource), summed over its
/// subtasks and over restarts (a record read again after a restart is
/// counted again). Read them through [`KafkaSource::metrics`](super::KafkaSource::metrics).
#[derive(Debug, Default)]
pub struct KafkaSourceMetrics {
    skipped: AtomicU64,
    dead_lettered: AtomicU64,
    offset_commits: AtomicU64,
    offset_commit_failures: AtomicU64,
}

impl KafkaSourceMetrics {
    /// Records dropped because their value did not deserialize
    /// (`DeserializeErrorPolicy::Skip`).
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Records written to the dead-letter topic
    /// (`DeserializeErrorPolicy::DeadLetter`) and acknowledged by the broker.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }

    /// Consumer-group offset commits the broker accepted.
    pub fn offset_commits(&self) -> u64 {
        self.offset_commits.load(Ordering::Relaxed)
    }

    /// Consumer-group offset commits that failed. Each is logged as a
    /// warning; none fails the job, because the offsets are only for
    /// monitoring.
    pub fn offset_commit_failures(&self) -> u64 {
        self.offset_commit_failures.load(Ordering::Relaxed)
    }

    /// Adds one skipped record and returns the new total.
    pub(crate) fn add_skipped(&self) -> u64 {
        self.skipped.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn add_dead_lettered(&self, n: u64) {
        self.dead_lettered.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_commit_failure(&self) {
        self.offset_commit_failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// The consumer's rdkafka context: counts the outcome of asynchronous
/// offset commits (heard while polling).
pub(crate) struct SourceContext {
    pub(crate) metrics: Arc<KafkaSourceMetrics>,
}

impl ClientContext for SourceContext {}

impl ConsumerContext for SourceContext {
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        let failed: Vec<String> = offsets
            .elements()
            .iter()
            .filter_map(|e| {
                e.error()
                    .err()
                    .map(|err| format!("{}/{}: {err}", e.topic(), e.partition()))
            })
            .collect();
        match result {
            Ok(()) if failed.is_empty() => {
                self.metrics.offset_commits.fetch_add(1, Ordering::Relaxed);
            }
            Ok(()) => {
                self.metrics.add_commit_failure();
                tracing::warn!(
                    partitions = ?failed,
                    "Kafka source: committing offsets to the consumer group failed for some partitions \
                     (monitoring only; the checkpoint holds the real positions)"
                );
            }
            Err(error) => {
                self.metrics.add_commit_failure();
                tracing::warn!(
                    %error,
                    "Kafka source: committing offsets to the consumer group failed \
                     (monitoring only; the checkpoint holds the real positions)"
                );
            }
        }
    }
}
