//! Sinks: the two-phase-commit contract and the built-in sinks.
//!
//! Owns: [`TwoPhaseCommitSink`], modelled on Flink's
//! `TwoPhaseCommitSinkFunction`, and its implementations: the transactional
//! [`FileSink`], the in-memory [`CollectSink`] and [`DiscardSink`]. Does not
//! own when the phases run (at barriers, on checkpoint completion, on
//! restore): that is `runtime::two_phase_commit`.
//!
//! # The lifecycle
//!
//! 1. [`open`](TwoPhaseCommitSink::open), then on restore
//!    [`recover_and_commit`](TwoPhaseCommitSink::recover_and_commit) for every
//!    transaction the restored checkpoint recorded as pre-committed, in
//!    checkpoint order, and
//!    [`recover_and_abort`](TwoPhaseCommitSink::recover_and_abort) for the
//!    transaction that was open when it was taken.
//! 2. [`begin_transaction`](TwoPhaseCommitSink::begin_transaction), then
//!    [`write`](TwoPhaseCommitSink::write) for each batch.
//! 3. At the barrier of checkpoint *n*:
//!    [`pre_commit`](TwoPhaseCommitSink::pre_commit), the transaction joins
//!    the pending ones, a new transaction begins, and the pending handles
//!    are snapshotted with the rest of the sink's state.
//! 4. When checkpoint *n* is complete (every task acknowledged it and its
//!    metadata is durable), [`commit`](TwoPhaseCommitSink::commit) for every
//!    pending transaction of checkpoint *n* or earlier, in order. A
//!    notification that is late or skips an id therefore commits everything
//!    up to it.
//! 5. A commit that fails is never dropped: the job fails with
//!    [`crate::Error::Commit`], and the transaction, still pending in the
//!    last checkpoint, is committed again on restore. `commit` and
//!    `recover_and_commit` must therefore be idempotent.
//!
//! Every method may block: the runtime calls them on tokio's blocking pool,
//! never on the async executor, unless the sink declares with
//! [`may_block`](TwoPhaseCommitSink::may_block) that its calls never block
//! (the in-memory [`DiscardSink`] and [`CollectSink`]); those run inline, on
//! the task's own worker. A sink that blocks only at times (a full send
//! queue) can also write inline with
//! [`try_write`](TwoPhaseCommitSink::try_write), and leave to `write` on
//! the blocking pool only what would block.

mod collect;
mod discard;
mod file;

use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use collect::{CollectSink, CollectTransaction};
pub use discard::DiscardSink;
pub use file::{FileSink, FileTransaction};

use crate::context::SubtaskContext;
use crate::error::BoxError;
use crate::preflight::{JobSettings, PreflightReport};

/// What a sink subtask learns when it opens.
#[derive(Debug, Clone)]
pub struct SinkContext {
    /// Which subtask this is.
    pub subtask: SubtaskContext,
    /// The checkpoint the job is restoring from, or `None` on a fresh start.
    /// A sink cleans up leftovers of earlier runs that no checkpoint refers
    /// to here (for Kafka: lingering transactions under its prefix).
    pub restored_checkpoint: Option<u64>,
    /// The parallelism of this sink in the restored checkpoint, if any.
    pub restored_parallelism: Option<usize>,
}

/// A sink that takes part in the checkpoint's two-phase commit.
///
/// The runtime clones the sink once per subtask. See the [module
/// documentation](self) for the order of calls.
pub trait TwoPhaseCommitSink: Clone + Send + 'static {
    /// The records the sink writes.
    type Item: Send + 'static;
    /// A handle to one transaction. It is stored in checkpoints and must
    /// carry everything needed to commit or abort the transaction from
    /// another process after a crash.
    type Transaction: Serialize + DeserializeOwned + Clone + Debug + Send + 'static;

    /// A short human-readable name, such as `file(out/)`.
    fn name(&self) -> String;

    /// Checks, once when the job starts and before any record is read, that
    /// the sink can keep its guarantee with these settings (for example that
    /// its transaction timeout outlasts a checkpoint). May block; it runs on
    /// the blocking pool.
    ///
    /// # Errors
    ///
    /// Stops the job before it starts, with [`crate::Error::Preflight`].
    fn preflight(&self, settings: &JobSettings) -> Result<PreflightReport, BoxError> {
        let _ = settings;
        Ok(PreflightReport::new())
    }

    /// How long after it begins a transaction must be committed, if the
    /// external system aborts transactions on its own: Kafka's
    /// `transaction.timeout.ms`, less the time a restart may take to
    /// recover it. At every barrier the runtime checks when the checkpoint
    /// that would commit the sink's transactions expires, at the latest;
    /// if a transaction could outlive this by then, it fails the attempt
    /// to replay from the last complete checkpoint, before the checkpoint
    /// completes. A job whose
    /// [`JobSettings::longest_transaction_lifetime`](crate::preflight::JobSettings::longest_transaction_lifetime)
    /// stays below this is never failed so while its checkpoints complete.
    fn transaction_timeout(&self) -> Option<std::time::Duration> {
        None
    }

    /// Whether a call of this sink (any method below, or dropping it) may
    /// block its thread: wait for I/O, for a lock that another thread holds
    /// for long, or sleep. The runtime runs the calls of a sink that may
    /// block on tokio's blocking pool, one hop there and back per call
    /// (every batch is one `write`); it runs those of a sink that never
    /// blocks inline on the task's worker thread, in the same order. The
    /// default is `true`; return `false` only if every call returns
    /// promptly on its own.
    fn may_block(&self) -> bool {
        true
    }

    /// Prepares the subtask, before any recovery call.
    ///
    /// # Errors
    ///
    /// Fails the job attempt.
    fn open(&mut self, ctx: &SinkContext) -> Result<(), BoxError> {
        let _ = ctx;
        Ok(())
    }

    /// Starts a transaction that the barrier of `checkpoint_id` (or a later
    /// one, if that checkpoint never reaches this sink) will pre-commit.
    ///
    /// # Errors
    ///
    /// Fails the job attempt.
    fn begin_transaction(&mut self, checkpoint_id: u64) -> Result<Self::Transaction, BoxError>;

    /// Writes a batch into the open transaction.
    ///
    /// # Errors
    ///
    /// Fails the job attempt; the transaction is aborted on restore.
    fn write(
        &mut self,
        transaction: &mut Self::Transaction,
        batch: Vec<Self::Item>,
    ) -> Result<(), BoxError>;

    /// Writes what it can of a batch without blocking, on the task's own
    /// thread, for a sink that [may block](Self::may_block) only at times
    /// (when a send queue is full, say): the runtime calls it before
    /// [`write`](Self::write), and saves the hop to the blocking pool
    /// whenever it writes everything.
    ///
    /// Returns `None` when every record was written. Returns `Some(rest)`
    /// when the next record would block: the runtime then passes `rest`
    /// (possibly empty) to `write` on the blocking pool, before any other
    /// call, so a record the sink took but could not send yet can go first
    /// there. The default writes nothing and returns the whole batch. Not
    /// called for a sink that never blocks, whose `write` runs inline.
    ///
    /// # Errors
    ///
    /// Fails the job attempt, as `write` does.
    fn try_write(
        &mut self,
        transaction: &mut Self::Transaction,
        batch: Vec<Self::Item>,
    ) -> Result<Option<Vec<Self::Item>>, BoxError> {
        let _ = transaction;
        Ok(Some(batch))
    }

    /// Makes the transaction's data durable and ready to commit, at the
    /// barrier. After this returns, a commit must succeed even from another
    /// process.
    ///
    /// # Errors
    ///
    /// Fails the job attempt; the checkpoint does not complete.
    fn pre_commit(&mut self, transaction: &mut Self::Transaction) -> Result<(), BoxError>;

    /// Makes a pre-committed transaction visible. Must be idempotent.
    ///
    /// # Errors
    ///
    /// Fails the job with [`crate::Error::Commit`]; the transaction stays
    /// pending and is committed again on restore.
    fn commit(&mut self, transaction: Self::Transaction) -> Result<(), BoxError>;

    /// Discards a transaction.
    ///
    /// # Errors
    ///
    /// Fails the job attempt.
    fn abort(&mut self, transaction: Self::Transaction) -> Result<(), BoxError>;

    /// Commits, after a restore, a transaction that a completed checkpoint
    /// recorded as pre-committed. It may already be committed.
    ///
    /// # Errors
    ///
    /// Fails the job with [`crate::Error::Commit`]: failing here means data
    /// loss unless a later attempt succeeds.
    fn recover_and_commit(&mut self, transaction: Self::Transaction) -> Result<(), BoxError> {
        self.commit(transaction)
    }

    /// Aborts, after a restore, the transaction that was open when the
    /// restored checkpoint was taken.
    ///
    /// # Errors
    ///
    /// Fails the job attempt.
    fn recover_and_abort(&mut self, transaction: Self::Transaction) -> Result<(), BoxError> {
        self.abort(transaction)
    }

    /// Called once when the input ended and every transaction is settled.
    ///
    /// # Errors
    ///
    /// Fails the job attempt.
    fn close(&mut self) -> Result<(), BoxError> {
        Ok(())
    }
}
