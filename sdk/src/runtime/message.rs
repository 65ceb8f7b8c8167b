//! What flows on the queues between tasks: record batches, checkpoint
//! barriers, and the end-of-stream marker.
//!
//! Owns: [`Barrier`] and [`Message`]. Does not own the queues
//! ([`super::exchange`]) or what a task does on a barrier ([`super::task`]).

use std::time::Instant;

/// A checkpoint barrier: every record before it belongs to checkpoint
/// `checkpoint_id`, every record after it to the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Barrier {
    pub(crate) checkpoint_id: u64,
    /// When the coordinator triggered the checkpoint: it expires at this
    /// plus the checkpoint timeout, so a sink knows by when the
    /// checkpoint that commits its transaction completes, if it does.
    pub(crate) triggered: Instant,
    /// The newest checkpoint complete when this one was triggered: a sink
    /// may see this barrier before the notice that commits that
    /// checkpoint's transactions, which it must not count as waiting for
    /// this one.
    pub(crate) completed: u64,
}

impl Barrier {
    /// The barrier of checkpoint `checkpoint_id`, triggered now, after
    /// every earlier checkpoint completed: for tests.
    #[cfg(test)]
    pub(crate) fn new(checkpoint_id: u64) -> Self {
        Self::after(checkpoint_id, checkpoint_id.saturating_sub(1))
    }

    /// The barrier of checkpoint `checkpoint_id`, triggered now, when
    /// `completed` was the newest complete checkpoint.
    pub(crate) fn after(checkpoint_id: u64, completed: u64) -> Self {
        Barrier {
            checkpoint_id,
            triggered: Instant::now(),
            completed,
        }
    }
}

/// One item on an inter-task queue.
#[derive(Debug)]
pub(crate) enum Message<T> {
    /// A batch of records, in order.
    Batch(Vec<T>),
    /// A checkpoint barrier.
    Barrier(Barrier),
    /// The upstream subtask has finished; nothing follows.
    End,
}
