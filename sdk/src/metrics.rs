//! Job metrics: counters the runtime updates and users read through
//! [`crate::JobHandle::metrics`] or the progress line.
//!
//! Owns: [`JobMetrics`], the atomic counters, and [`MetricsSnapshot`], a
//! copy of them at one moment. Does not own when the counters change (the
//! runtime's tasks and coordinator) or how progress is reported (the
//! runtime's progress reporter).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one job, across restarts.
#[derive(Debug, Default)]
pub struct JobMetrics {
    pub(crate) records_in: AtomicU64,
    pub(crate) records_out: AtomicU64,
    pub(crate) checkpoints_completed: AtomicU64,
    pub(crate) checkpoints_expired: AtomicU64,
    pub(crate) last_checkpoint_id: AtomicU64,
    pub(crate) last_checkpoint_micros: AtomicU64,
    pub(crate) last_checkpoint_bytes: AtomicU64,
    pub(crate) last_restore_micros: AtomicU64,
    pub(crate) transactions_committed: AtomicU64,
    pub(crate) commit_failures: AtomicU64,
    pub(crate) restarts: AtomicU64,
}

/// A point-in-time copy of [`JobMetrics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Records read by all sources (including records re-read after a
    /// restart).
    pub records_in: u64,
    /// Records handed to sinks (including records written again after a
    /// restart; only committed ones are visible).
    pub records_out: u64,
    /// Checkpoints completed.
    pub checkpoints_completed: u64,
    /// Checkpoints abandoned because they exceeded the checkpoint timeout.
    pub checkpoints_expired: u64,
    /// Id of the last completed checkpoint.
    pub last_checkpoint_id: u64,
    /// Duration of the last completed checkpoint, trigger to durable
    /// metadata, in microseconds.
    pub last_checkpoint_micros: u64,
    /// Total size of the last completed checkpoint's state files.
    pub last_checkpoint_bytes: u64,
    /// Duration of the last restore, in microseconds: from the start of an
    /// attempt that restores a checkpoint to every subtask built with its
    /// state (reading and checking the files, rebuilding the state). Zero
    /// until an attempt restores.
    pub last_restore_micros: u64,
    /// Sink transactions committed.
    pub transactions_committed: u64,
    /// Sink commits that failed (each one also failed the job).
    pub commit_failures: u64,
    /// Job restarts.
    pub restarts: u64,
}

impl JobMetrics {
    /// Reads every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            records_in: get(&self.records_in),
            records_out: get(&self.records_out),
            checkpoints_completed: get(&self.checkpoints_completed),
            checkpoints_expired: get(&self.checkpoints_expired),
            last_checkpoint_id: get(&self.last_checkpoint_id),
            last_checkpoint_micros: get(&self.last_checkpoint_micros),
            last_checkpoint_bytes: get(&self.last_checkpoint_bytes),
            last_restore_micros: get(&self.last_restore_micros),
            transactions_committed: get(&self.transactions_committed),
            commit_failures: get(&self.commit_failures),
            restarts: get(&self.restarts),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set(counter: &AtomicU64, v: u64) {
        counter.store(v, Ordering::Relaxed);
    }
}
