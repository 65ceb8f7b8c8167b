//! The runtime side of the two-phase-commit sink contract.
//!
//! Owns: when a [`TwoPhaseCommitSink`]'s phases run, as Flink's
//! `TwoPhaseCommitSinkFunction` does: pre-commit at the barrier, commit
//! every pending transaction up to a checkpoint once it is complete,
//! recover-and-commit / recover-and-abort on restore. The pending
//! transaction handles are part of the sink's checkpointed state. Does not
//! own what a transaction is: that is the sink.
//!
//! Every sink call runs on the blocking pool through
//! [`super::blocking::BlockingCalls`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::blocking::BlockingCalls;
use super::chain::{BoxFuture, Pipe, SnapshotWriter};
use super::env::SubtaskEnv;
use super::message::Barrier;
use crate::error::{Error, Result};
use crate::fault::{FaultPoint, Faults};
use crate::metrics::JobMetrics;
use crate::sink::{SinkContext, TwoPhaseCommitSink};

/// A sink's checkpointed state: the pre-committed transactions not yet
/// known to be committed, by checkpoint id, and the open transaction.
#[derive(Debug, Serialize, Deserialize)]
struct SinkState<T> {
    pending: Vec<(u64, T)>,
    current: Option<T>,
}

/// Drives one sink subtask through the two-phase-commit lifecycle.
pub(crate) struct TwoPhaseCommitDriver<S: TwoPhaseCommitSink> {
    sink: Option<S>,
    id: String,
    task: String,
    ctx: SinkContext,
    current: Option<S::Transaction>,
    pending: BTreeMap<u64, S::Transaction>,
    recovered: Vec<SinkState<S::Transaction>>,
    first_checkpoint: u64,
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
                    recovered.push(state);
                }
            }
        }
        Ok(TwoPhaseCommitDriver {
            sink: Some(sink),
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
            blocking: env.blocking.clone(),
            faults: env.faults.clone(),
            attempt: env.ctx.attempt,
            metrics: Arc::clone(&env.metrics),
        })
    }

    fn fault(&self, point: FaultPoint) -> Result<()> {
        self.faults.check(point, Some(&self.task), self.attempt)
    }

    /// Runs `f` with the sink on the blocking pool.
    async fn call<R, F>(&mut self, phase: &'static str, f: F) -> Result<R>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        let mut sink = self.sink.take().ok_or_else(|| Error::Task {
            task: self.task.clone(),
            phase,
            source: "the sink was lost by an earlier failed call".into(),
        })?;
        let (sink, result) = self
            .blocking
            .run(phase, move || {
                let result = f(&mut sink);
                (sink, result)
            })
            .await
            .map_err(|message| Error::Task {
                task: self.task.clone(),
                phase,
                source: message.into(),
            })?;
        self.sink = Some(sink);
        Ok(result)
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
            .call("begin transaction", move |s| {
                s.begin_transaction(checkpoint)
            })
            .await?
            .map_err(self.failed("begin transaction"))?;
        self.current = Some(txn);
        Ok(())
    }

    async fn open_and_recover(&mut self) -> Result<()> {
        let ctx = self.ctx.clone();
        self.call("open", move |s| s.open(&ctx))
            .await?
            .map_err(self.failed("open"))?;

        let mut to_commit: Vec<(u64, S::Transaction)> = Vec::new();
        let mut to_abort = Vec::new();
        for state in std::mem::take(&mut self.recovered) {
            to_commit.extend(state.pending);
            to_abort.extend(state.current);
        }
        to_commit.sort_by_key(|(checkpoint, _)| *checkpoint);
        for (checkpoint, txn) in to_commit {
            self.fault(FaultPoint::DuringRecovery { checkpoint })?;
            let handle = txn.clone();
            if let Err(e) = self
                .call("recover and commit", move |s| s.recover_and_commit(txn))
                .await?
            {
                return Err(self.commit_failed(checkpoint, &handle, e));
            }
            JobMetrics::add(&self.metrics.transactions_committed, 1);
        }
        for txn in to_abort {
            self.call("recover and abort", move |s| s.recover_and_abort(txn))
                .await?
                .map_err(self.failed("recover and abort"))?;
        }
        self.begin(self.first_checkpoint).await
    }

    async fn write(&mut self, batch: Vec<S::Item>) -> Result<()> {
        let n = batch.len() as u64;
        let mut txn = self.take_current("write")?;
        let (txn, result) = self
            .call("write", move |s| {
                let result = s.write(&mut txn, batch);
                (txn, result)
            })
            .await?;
        self.current = Some(txn);
        result.map_err(self.failed("write"))?;
        JobMetrics::add(&self.metrics.records_out, n);
        Ok(())
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
        let mut txn = self.take_current("pre-commit")?;
        let (txn, result) = self
            .call("pre-commit", move |s| {
                let result = s.pre_commit(&mut txn);
                (txn, result)
            })
            .await?;
        result.map_err(self.failed("pre-commit"))?;
        self.fault(FaultPoint::AfterPreCommit { checkpoint })?;
        self.pending.insert(checkpoint, txn);
        self.begin(checkpoint + 1).await?;
        let state = SinkState {
            pending: self.pending.iter().map(|(k, v)| (*k, v.clone())).collect(),
            current: self.current.clone(),
        };
        snapshot.put(&self.id, &state)?;
        Ok(())
    }

    async fn commit_up_to(&mut self, completed: u64) -> Result<()> {
        while let Some((&checkpoint, txn)) = self.pending.first_key_value() {
            if checkpoint > completed {
                break;
            }
            let txn = txn.clone();
            self.fault(FaultPoint::BeforeSinkCommit { checkpoint })?;
            let handle = txn.clone();
            if let Err(e) = self.call("commit", move |s| s.commit(txn)).await? {
                return Err(self.commit_failed(checkpoint, &handle, e));
            }
            self.pending.remove(&checkpoint);
            JobMetrics::add(&self.metrics.transactions_committed, 1);
            self.fault(FaultPoint::AfterSinkCommit { checkpoint })?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        if let Some(txn) = self.current.take() {
            self.call("abort", move |s| s.abort(txn))
                .await?
                .map_err(self.failed("abort"))?;
        }
        self.call("close", |s| s.close())
            .await?
            .map_err(self.failed("close"))
    }
}

impl<S: TwoPhaseCommitSink> Pipe<S::Item> for TwoPhaseCommitDriver<S> {
    fn open(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.open_and_recover())
    }

    fn push(&mut self, batch: Vec<S::Item>) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.write(batch))
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
