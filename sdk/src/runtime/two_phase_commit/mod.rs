//! The runtime side of the two-phase-commit sink contract.
//!
//! Owns: when a [`TwoPhaseCommitSink`]'s phases run, as Flink's
//! `TwoPhaseCommitSinkFunction` does: pre-commit at the barrier, commit
//! every pending transaction up to a checkpoint once it is complete,
//! recover-and-commit / recover-and-abort on restore. The pending
//! transaction handles are part of the sink's checkpointed state. Does not
//! own what a transaction is: that is the sink.
//!
//! Every sink call runs on the blocking pool, except those of a sink that
//! declares that it never blocks ([`TwoPhaseCommitSink::may_block`]): they
//! run inline, in the same order, with panics caught and reported the same
//! way. That is [`calls`].
//!
//! After committing, a subtask records in checkpoint storage the checkpoint
//! up to which it has committed (a commit marker, [`markers`]), and a
//! restore does not commit again what a marker covers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::blocking::BlockingCalls;
use super::element::{BoxFuture, Pipe, PushFuture, SnapshotWriter};
use super::env::SubtaskEnv;
use super::message::Barrier;
use crate::error::{Error, Result};
use crate::fault::{FaultPoint, Faults};
use crate::metrics::JobMetrics;
use crate::sink::{SinkContext, TwoPhaseCommitSink};
use crate::storage::CheckpointStorage;
use calls::SinkCalls;
use markers::CommitMarkers;

mod calls;
mod markers;

/// A sink's checkpointed state: the pre-committed transactions not yet
/// known to be committed, by checkpoint id, and the open transaction.
#[derive(Debug, Serialize, Deserialize)]
struct SinkState<T> {
    pending: Vec<(u64, T)>,
    current: Option<T>,
}

/// What a sink's `write` or `try_write` call hands back: the transaction,
/// and the result.
type Written<S, R> = (
    <S as TwoPhaseCommitSink>::Transaction,
    Result<R, crate::BoxError>,
);

/// A sink's `write` or `try_write`.
type WriteFn<S, R> = fn(
    &mut S,
    &mut <S as TwoPhaseCommitSink>::Transaction,
    Vec<<S as TwoPhaseCommitSink>::Item>,
) -> Result<R, crate::BoxError>;

/// Drives one sink subtask through the two-phase-commit lifecycle.
pub(crate) struct TwoPhaseCommitDriver<S: TwoPhaseCommitSink> {
    /// The sink, and where its calls run.
    calls: SinkCalls<S>,
    id: String,
    task: String,
    ctx: SinkContext,
    current: Option<S::Transaction>,
    /// When the current transaction began, and the checkpoint it was begun
    /// for.
    current_began: Instant,
    current_for: u64,
    pending: BTreeMap<u64, S::Transaction>,
    /// When each pending transaction began.
    pending_began: BTreeMap<u64, Instant>,
    /// The sink's transaction timeout, if its system has one.
    transaction_timeout: Option<Duration>,
    checkpoint_timeout: Duration,
    /// The restored states of the old subtasks this one takes over, by old
    /// subtask index.
    recovered: Vec<(usize, SinkState<S::Transaction>)>,
    first_checkpoint: u64,
    stage: usize,
    subtask: usize,
    /// The job's lineage, which the commit markers carry.
    lineage: Option<String>,
    storage: Option<Arc<dyn CheckpointStorage>>,
    blocking: BlockingCalls,
    faults: Faults,
    attempt: u32,
    metrics: Arc<JobMetrics>,
}

impl<S: TwoPhaseCommitSink> TwoPhaseCommitDriver<S> {
    pub(crate) fn new(sink: S, id: String, env: &SubtaskEnv) -> Result<Self> {
        let mut recovered = Vec::new();
        let mut restored_parallelism = None;
        if let Some(restored) = &env.restored {
            restored_parallelism = Some(restored.subtasks.len());
            for (old, state) in restored.decode_all::<SinkState<S::Transaction>>(&id)? {
                if old % env.ctx.parallelism == env.ctx.index {
                    recovered.push((old, state));
                }
            }
        }
        let transaction_timeout = sink.transaction_timeout();
        Ok(TwoPhaseCommitDriver {
            calls: SinkCalls::new(sink, env.blocking.clone(), env.task_name()),
            transaction_timeout,
            checkpoint_timeout: env.link.checkpoint_timeout,
            current_began: Instant::now(),
            current_for: env.link.first_checkpoint,
            pending_began: BTreeMap::new(),
            id,
            task: env.task_name(),
            ctx: SinkContext {
                subtask: env.ctx.clone(),
                restored_checkpoint: env.restored_checkpoint(),
                restored_parallelism,
            },
            current: None,
            pending: BTreeMap::new(),
            recovered,
            first_checkpoint: env.link.first_checkpoint,
            stage: env.stage,
            subtask: env.ctx.index,
            lineage: env.link.lineage.clone(),
            storage: env.link.storage.clone(),
            blocking: env.blocking.clone(),
            faults: env.faults.clone(),
            attempt: env.ctx.attempt,
            metrics: Arc::clone(&env.metrics),
        })
    }

    fn fault(&self, point: FaultPoint) -> Result<()> {
        self.faults.check(point, Some(&self.task), self.attempt)
    }

    fn failed(&self, phase: &'static str) -> impl FnOnce(crate::BoxError) -> Error + '_ {
        move |source| Error::Task {
            task: self.task.clone(),
            phase,
            source,
        }
    }

    fn commit_failed(
        &self,
        checkpoint: u64,
        transaction: &S::Transaction,
        source: crate::BoxError,
    ) -> Error {
        JobMetrics::add(&self.metrics.commit_failures, 1);
        Error::Commit {
            task: self.task.clone(),
            checkpoint,
            transaction: format!("{transaction:?}"),
            source,
        }
    }

    async fn begin(&mut self, checkpoint: u64) -> Result<()> {
        let txn = self
            .calls
            .call("begin transaction", move |s| {
                s.begin_transaction(checkpoint)
            })
            .await?
            .map_err(self.failed("begin transaction"))?;
        self.current = Some(txn);
        self.current_began = Instant::now();
        self.current_for = checkpoint;
        Ok(())
    }

    /// Fails the attempt, at `barrier`, when a transaction its checkpoint
    /// would commit (the open one, or a pending one whose checkpoint had
    /// not completed when this one was triggered) could outlive the sink's
    /// transaction timeout: the checkpoint completes, if it does, by its
    /// trigger time plus the checkpoint timeout. The restart then replays its records from
    /// the last complete checkpoint; committing too late would lose them.
    /// `JobSettings::longest_transaction_lifetime` is the same bound,
    /// checked at start by the sink's preflight.
    fn guard_lifetimes(&self, barrier: Barrier) -> Result<()> {
        let Some(timeout) = self.transaction_timeout else {
            return Ok(());
        };
        let oldest = self
            .pending_began
            .range(barrier.completed + 1..)
            .map(|(id, began)| (*id, *began))
            .chain(std::iter::once((self.current_for, self.current_began)))
            .min_by_key(|(_, began)| *began)
            .expect("the current transaction is always there");
        let committed_by = barrier.triggered + self.checkpoint_timeout;
        let lifetime = committed_by.saturating_duration_since(oldest.1);
        if lifetime < timeout {
            return Ok(());
        }
        Err(Error::Task {
            task: self.task.clone(),
            phase: "transaction lifetime",
            source: format!(
                "the transaction for checkpoint {} has been open for {:.1?}; the checkpoint that would commit it expires \
                 {:.1?} from now, so it could live {lifetime:.1?}, past the sink's transaction timeout of {timeout:?}, and be \
                 aborted before it is committed (checkpoints are expiring or stalled). Failing this attempt now: the restart \
                 replays its records from the last complete checkpoint. Raise the transaction timeout, or find what delays \
                 the checkpoints",
                oldest.0,
                oldest.1.elapsed(),
                committed_by.saturating_duration_since(Instant::now()),
            )
            .into(),
        })
    }

    async fn open_and_recover(&mut self) -> Result<()> {
        let ctx = self.ctx.clone();
        self.calls
            .call("open", move |s| s.open(&ctx))
            .await?
            .map_err(self.failed("open"))?;

        let mut to_commit: Vec<(u64, S::Transaction)> = Vec::new();
        let mut to_abort = Vec::new();
        let recovered = std::mem::take(&mut self.recovered);
        let olds: Vec<usize> = recovered.iter().map(|(old, _)| *old).collect();
        for (old, state) in recovered {
            // Transactions the old subtask is known to have committed are
            // not committed again: their ids may have been reused since.
            let committed = self.marker().read(old).await?;
            for (checkpoint, txn) in state.pending {
                if committed.is_none_or(|up_to| checkpoint > up_to) {
                    to_commit.push((checkpoint, txn));
                } else {
                    tracing::info!(
                        task = %self.task,
                        old_subtask = old,
                        checkpoint,
                        committed_up_to = committed,
                        transaction = ?txn,
                        "not committing again a transaction the commit marker covers"
                    );
                }
            }
            to_abort.extend(state.current);
        }
        to_commit.sort_by_key(|(checkpoint, _)| *checkpoint);
        for (checkpoint, txn) in to_commit {
            self.fault(FaultPoint::DuringRecovery { checkpoint })?;
            let handle = txn.clone();
            if let Err(e) = self
                .calls
                .call("recover and commit", move |s| s.recover_and_commit(txn))
                .await?
            {
                return Err(self.commit_failed(checkpoint, &handle, e));
            }
            JobMetrics::add(&self.metrics.transactions_committed, 1);
            self.fault(FaultPoint::AfterRecoveryCommit { checkpoint })?;
        }
        for txn in to_abort {
            self.calls
                .call("recover and abort", move |s| s.recover_and_abort(txn))
                .await?
                .map_err(self.failed("recover and abort"))?;
        }
        if let Some(restored) = self.ctx.restored_checkpoint {
            for old in olds {
                self.marker().write(old, restored).await?;
            }
        }
        self.begin(self.first_checkpoint).await
    }

    /// Writes `rest`, what is left of a batch of `n` records, into the open
    /// transaction on the blocking pool.
    async fn write(&mut self, n: u64, rest: Vec<S::Item>) -> Result<()> {
        let call = self.write_call(rest, S::write)?;
        let written = self.calls.call("write", call).await?;
        self.wrote(written)?;
        JobMetrics::add(&self.metrics.records_out, n);
        Ok(())
    }

    /// Writes what the sink can of `batch` without blocking, inline;
    /// returns what is left for [`Self::write`], if anything.
    fn try_write_inline(&mut self, batch: Vec<S::Item>) -> Result<Option<Vec<S::Item>>> {
        let n = batch.len() as u64;
        let call = self.write_call(batch, S::try_write)?;
        let written = self.calls.call_inline("write", call)?;
        let rest = self.wrote(written)?;
        if rest.is_none() {
            JobMetrics::add(&self.metrics.records_out, n);
        }
        Ok(rest)
    }

    /// Writes `batch` into the open transaction inline (a sink that never
    /// blocks), without a future per batch.
    fn write_inline(&mut self, batch: Vec<S::Item>) -> Result<()> {
        let n = batch.len() as u64;
        let call = self.write_call(batch, S::write)?;
        let written = self.calls.call_inline("write", call)?;
        self.wrote(written)?;
        JobMetrics::add(&self.metrics.records_out, n);
        Ok(())
    }

    /// The sink call that writes `batch` into the open transaction with
    /// `write` (the sink's `write` or `try_write`) and hands the
    /// transaction back.
    fn write_call<R: 'static>(
        &mut self,
        batch: Vec<S::Item>,
        write: WriteFn<S, R>,
    ) -> Result<impl FnOnce(&mut S) -> Written<S, R> + Send + 'static> {
        let mut txn = self.take_current("write")?;
        Ok(move |s: &mut S| {
            let result = write(s, &mut txn, batch);
            (txn, result)
        })
    }

    /// Takes the transaction back from a write.
    fn wrote<R>(&mut self, (txn, result): Written<S, R>) -> Result<R> {
        self.current = Some(txn);
        result.map_err(self.failed("write"))
    }

    fn take_current(&mut self, phase: &'static str) -> Result<S::Transaction> {
        self.current.take().ok_or_else(|| Error::Task {
            task: self.task.clone(),
            phase,
            source: "no open transaction (an earlier call failed)".into(),
        })
    }

    async fn pre_commit(&mut self, barrier: Barrier, snapshot: &mut SnapshotWriter) -> Result<()> {
        let checkpoint = barrier.checkpoint_id;
        self.guard_lifetimes(barrier)?;
        let began = self.current_began;
        let mut txn = self.take_current("pre-commit")?;
        let (txn, result) = self
            .calls
            .call("pre-commit", move |s| {
                let result = s.pre_commit(&mut txn);
                (txn, result)
            })
            .await?;
        result.map_err(self.failed("pre-commit"))?;
        self.fault(FaultPoint::AfterPreCommit { checkpoint })?;
        self.pending.insert(checkpoint, txn);
        self.pending_began.insert(checkpoint, began);
        self.begin(checkpoint + 1).await?;
        let state = SinkState {
            pending: self.pending.iter().map(|(k, v)| (*k, v.clone())).collect(),
            current: self.current.clone(),
        };
        snapshot.put(&self.id, &state)?;
        Ok(())
    }

    fn marker(&self) -> CommitMarkers {
        CommitMarkers {
            storage: self.storage.clone(),
            blocking: self.blocking.clone(),
            stage: self.stage,
            lineage: self.lineage.clone(),
        }
    }

    async fn commit_up_to(&mut self, completed: u64) -> Result<()> {
        let mut committed = None;
        while let Some((&checkpoint, txn)) = self.pending.first_key_value() {
            if checkpoint > completed {
                break;
            }
            let txn = txn.clone();
            self.fault(FaultPoint::BeforeSinkCommit { checkpoint })?;
            let handle = txn.clone();
            if let Err(e) = self.calls.call("commit", move |s| s.commit(txn)).await? {
                return Err(self.commit_failed(checkpoint, &handle, e));
            }
            self.pending.remove(&checkpoint);
            self.pending_began.remove(&checkpoint);
            JobMetrics::add(&self.metrics.transactions_committed, 1);
            self.fault(FaultPoint::AfterSinkCommit { checkpoint })?;
            committed = Some(checkpoint);
        }
        if let Some(checkpoint) = committed {
            self.marker().write(self.subtask, checkpoint).await?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        if let Some(txn) = self.current.take() {
            self.calls
                .call("abort", move |s| s.abort(txn))
                .await?
                .map_err(self.failed("abort"))?;
        }
        self.calls
            .call("close", |s| s.close())
            .await?
            .map_err(self.failed("close"))
    }
}

impl<S: TwoPhaseCommitSink> Pipe<S::Item> for TwoPhaseCommitDriver<S> {
    fn open(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.open_and_recover())
    }

    fn push<'a>(&'a mut self, batch: &'a mut Vec<S::Item>) -> PushFuture<'a> {
        // The sink's `write` takes the batch by value: it gets the records
        // in a vector of their own size, and the caller keeps the
        // allocation it fills batch after batch.
        let mut records = Vec::with_capacity(batch.len());
        records.append(batch);
        if self.calls.inline() {
            return PushFuture::ready(self.write_inline(records));
        }
        let n = records.len() as u64;
        match self.try_write_inline(records) {
            Ok(Some(rest)) => PushFuture::Waiting(Box::pin(self.write(n, rest))),
            Ok(None) => PushFuture::ready(Ok(())),
            Err(e) => PushFuture::ready(Err(e)),
        }
    }

    fn barrier<'a>(
        &'a mut self,
        barrier: Barrier,
        snapshot: &'a mut SnapshotWriter,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.pre_commit(barrier, snapshot))
    }

    fn checkpoint_complete(&mut self, checkpoint_id: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.commit_up_to(checkpoint_id))
    }

    fn end(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.finish())
    }
}

#[cfg(test)]
mod tests;
