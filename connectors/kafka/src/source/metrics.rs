//! [`KafkaSourceMetrics`]: the source's own counters.

use std::sync::atomic::{AtomicU64, Ordering};

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

    pub(crate) fn add_commit(&self) {
        self.offset_commits.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_commit_failure(&self) {
        self.offset_commit_failures.fetch_add(1, Ordering::Relaxed);
    }
}
