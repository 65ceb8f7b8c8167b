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
//! [`super::blocking::BlockingCalls`], except those of a sink that declares
//! that it never blocks ([`TwoPhaseCommitSink::may_block`]): they run
//! inline, in the same order, with panics caught and reported the same way.
//!
//! After committing, a subtask records in checkpoint storage the checkpoint
//! up to which it has committed (a commit marker). A restore does not commit
//! again what a marker covers: between that commit and the restore, the
//! sink may have reused the transaction's id (a Kafka producer id with a
//! newer epoch), and committing the old handle would be refused as fenced
//! although nothing was lost.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::blocking::BlockingCalls;
use super::element::{BoxFuture, Pipe, PushFuture, SnapshotWriter};
use super::env::SubtaskEnv;
use super::message::Barrier;
use crate::error::{CallError, Error, Result};
use crate::fault::{FaultPoint, Faults};
use crate::metrics::JobMetrics;
use crate::sink::{SinkContext, TwoPhaseCommitSink};
use crate::storage::CheckpointStorage;

/// A sink's checkpointed state: the pre-committed transactions not yet
/// known to be committed, by checkpoint id, and the open transaction.
#[derive(Debug, Serialize, Deserialize)]
struct SinkState<T> {
    pending: Vec<(u64, T)>,
    current: Option<T>,
}

/// What a sink's `write` call hands back: the transaction, and the result.
type Written<S> = (
    <S as TwoPhaseCommitSink>::Transaction,
    Result<(), crate::BoxError>,
);

/// The commit markers of one sink stage in checkpoint storage.
struct CommitMarkers {
    storage: Option<Arc<dyn CheckpointStorage>>,
    blocking: BlockingCalls,
    stage: usize,
}

impl CommitMarkers {
    /// The checkpoint up to which `subtask` committed, if recorded.
    async fn read(self, subtask: usize) -> Result<Option<u64>> {
        let Some(storage) = self.storage else {
            return Ok(None);
        };
        let stage = self.stage;
        self.blocking
            .run("read commit marker", move || {
                storage.read_commit_marker(stage, subtask)
            })
            .await?
            .map_err(Error::from)
    }

    /// Records that `subtask` committed everything up to `checkpoint`.
    async fn write(self, subtask: usize, checkpoint: u64) -> Result<()> {
        let Some(storage) = self.storage else {
            return Ok(());
        };
        let stage = self.stage;
        self.blocking
            .run("write commit marker", move || {
                storage.write_commit_marker(stage, subtask, checkpoint)
            })
            .await?
            .map_err(Error::from)
    }
}

/// Drives one sink subtask through the two-phase-commit lifecycle.
pub(crate) struct TwoPhaseCommitDriver<S: TwoPhaseCommitSink> {
    sink: Option<S>,
    /// The sink never blocks: its calls run inline, not on the blocking
    /// pool.
    inline: bool,
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
            inline: !sink.may_block(),
            transaction_timeout,
            checkpoint_timeout: env.link.checkpoint_timeout,
            current_began: Instant::now(),
            current_for: env.link.first_checkpoint,
            pending_began: BTreeMap::new(),
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
            stage: env.stage,
            subtask: env.ctx.index,
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

    /// Runs `f` with the sink: on the blocking pool, or inline if the sink
    /// never blocks.
    async fn call<R, F>(&mut self, phase: &'static str, f: F) -> Result<R>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        if self.inline {
            return self.call_inline(phase, f);
        }
        let mut sink = self.take_sink(phase)?;
        let (sink, result) = self
            .blocking
            .run(phase, move || {
                let result = f(&mut sink);
                (sink, result)
            })
            .await
            .map_err(|e| Error::Task {
                task: self.task.clone(),
                phase,
                source: Box::new(e),
            })?;
        self.sink = Some(sink);
        Ok(result)
    }

    /// Runs `f` with the sink on this thread. A panic is an error, as on the
    /// blocking pool, and loses the sink as it does there.
    fn call_inline<R>(&mut self, phase: &'static str, f: impl FnOnce(&mut S) -> R) -> Result<R> {
        let mut sink = self.take_sink(phase)?;
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| f(&mut sink)));
        match result {
            Ok(result) => {
                self.sink = Some(sink);
                Ok(result)
            }
            Err(payload) => Err(Error::Task {
                task: self.task.clone(),
                phase,
                source: Box::new(CallError::panicked(phase, payload.as_ref())),
            }),
        }
    }

    fn take_sink(&mut self, phase: &'static str) -> Result<S> {
        self.sink.take().ok_or_else(|| Error::Task {
            task: self.task.clone(),
            phase,
            source: "the sink was lost by an earlier failed call".into(),
        })
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
        self.current_began = Instant::now();
        self.current_for = checkpoint;
        Ok(())
    }

    /// Fails the attempt when a transaction (the open one, or a pending
    /// one) is so old that the checkpoint that would commit it may not
    /// complete before the sink's system aborts it on its transaction
    /// timeout. The restart then replays its records from the last complete
    /// checkpoint; committing too late would lose them.
    fn guard_lifetimes(&self) -> Result<()> {
        let Some(timeout) = self.transaction_timeout else {
            return Ok(());
        };
        let limit = timeout.saturating_sub(self.checkpoint_timeout);
        let oldest = self
            .pending_began
            .iter()
            .map(|(id, began)| (*id, *began))
            .chain(std::iter::once((self.current_for, self.current_began)))
            .min_by_key(|(_, began)| *began)
            .expect("the current transaction is always there");
        let age = oldest.1.elapsed();
        if age < limit {
            return Ok(());
        }
        Err(Error::Task {
            task: self.task.clone(),
            phase: "transaction lifetime",
            source: format!(
                "the transaction for checkpoint {} has been open for {age:.1?}; the sink's transaction timeout is {timeout:?} \
                 and the checkpoint that would commit it may take up to the checkpoint timeout ({:?}) more, so it could be \
                 aborted before it is committed (checkpoints are expiring or stalled). Failing this attempt now: the restart \
                 replays its records from the last complete checkpoint. Raise the transaction timeout, or find what delays \
                 the checkpoints",
                oldest.0, self.checkpoint_timeout
            )
            .into(),
        })
    }

    async fn open_and_recover(&mut self) -> Result<()> {
        let ctx = self.ctx.clone();
        self.call("open", move |s| s.open(&ctx))
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
                .call("recover and commit", move |s| s.recover_and_commit(txn))
                .await?
            {
                return Err(self.commit_failed(checkpoint, &handle, e));
            }
            JobMetrics::add(&self.metrics.transactions_committed, 1);
            self.fault(FaultPoint::AfterRecoveryCommit { checkpoint })?;
        }
        for txn in to_abort {
            self.call("recover and abort", move |s| s.recover_and_abort(txn))
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

    /// Writes `batch` into the open transaction on the blocking pool.
    async fn write(&mut self, batch: Vec<S::Item>) -> Result<()> {
        let n = batch.len() as u64;
        let call = self.write_call(batch)?;
        let written = self.call("write", call).await?;
        self.wrote(n, written)
    }

    /// Writes `batch` into the open transaction inline (a sink that never
    /// blocks), without a future per batch.
    fn write_inline(&mut self, batch: Vec<S::Item>) -> Result<()> {
        let n = batch.len() as u64;
        let call = self.write_call(batch)?;
        let written = self.call_inline("write", call)?;
        self.wrote(n, written)
    }

    /// The sink call that writes `batch` into the open transaction and
    /// hands the transaction back.
    fn write_call(
        &mut self,
        batch: Vec<S::Item>,
    ) -> Result<impl FnOnce(&mut S) -> Written<S> + Send + 'static> {
        self.guard_lifetimes()?;
        let mut txn = self.take_current("write")?;
        Ok(move |s: &mut S| {
            let result = s.write(&mut txn, batch);
            (txn, result)
        })
    }

    /// Takes the transaction back from a write of `n` records.
    fn wrote(&mut self, n: u64, (txn, result): Written<S>) -> Result<()> {
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
        self.guard_lifetimes()?;
        let began = self.current_began;
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
            if let Err(e) = self.call("commit", move |s| s.commit(txn)).await? {
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
            self.call("abort", move |s| s.abort(txn))
                .await?
                .map_err(self.failed("abort"))?;
        }
        self.call("close", |s| s.close())
            .await?
            .map_err(self.failed("close"))
    }
}

impl<S: TwoPhaseCommitSink> Drop for TwoPhaseCommitDriver<S> {
    /// Drops the sink on the blocking pool: dropping may block (an rdkafka
    /// producer flushes for up to 500 ms), and an aborted attempt drops its
    /// tasks on the async workers. The restart waits for it, so an old
    /// producer is gone before recovery begins. A sink that never blocks is
    /// dropped here.
    fn drop(&mut self) {
        let Some(sink) = self.sink.take() else {
            return;
        };
        if self.inline {
            drop(sink);
        } else {
            self.blocking.detach(move || drop(sink));
        }
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
        if self.inline {
            PushFuture::ready(self.write_inline(records))
        } else {
            PushFuture::Waiting(Box::pin(self.write(records)))
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
mod tests_support {
    use std::collections::HashMap;

    use crate::codec::Codec;
    use crate::runtime::element::RestoredStage;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A record that makes [`Recorder::write`] panic.
    pub(super) const CURSED: u32 = 13;

    /// A sink that logs every call; a transaction is the checkpoint id it
    /// was begun for.
    #[derive(Clone, Default)]
    pub(super) struct Recorder {
        pub(super) log: Arc<Mutex<Vec<String>>>,
        pub(super) failing_commits: Arc<AtomicU32>,
        /// Declares that the sink never blocks, so that it is called inline.
        pub(super) never_blocks: bool,
        /// The threads `write` was called on.
        pub(super) write_threads: Arc<Mutex<Vec<std::thread::ThreadId>>>,
    }

    impl Recorder {
        fn note(&self, entry: String) {
            self.log.lock().unwrap().push(entry);
        }
        pub(super) fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.log.lock().unwrap())
        }
    }

    impl TwoPhaseCommitSink for Recorder {
        type Item = u32;
        type Transaction = u64;

        fn name(&self) -> String {
            "recorder".into()
        }
        fn may_block(&self) -> bool {
            !self.never_blocks
        }
        fn begin_transaction(&mut self, checkpoint_id: u64) -> Result<u64, crate::BoxError> {
            self.note(format!("begin {checkpoint_id}"));
            Ok(checkpoint_id)
        }
        fn write(&mut self, txn: &mut u64, batch: Vec<u32>) -> Result<(), crate::BoxError> {
            self.write_threads
                .lock()
                .unwrap()
                .push(std::thread::current().id());
            assert!(!batch.contains(&CURSED), "record {CURSED} is cursed");
            self.note(format!("write {txn} {batch:?}"));
            Ok(())
        }
        fn pre_commit(&mut self, txn: &mut u64) -> Result<(), crate::BoxError> {
            self.note(format!("pre-commit {txn}"));
            Ok(())
        }
        fn commit(&mut self, txn: u64) -> Result<(), crate::BoxError> {
            if self.failing_commits.load(Ordering::SeqCst) > 0 {
                self.failing_commits.fetch_sub(1, Ordering::SeqCst);
                self.note(format!("commit {txn} failed"));
                return Err("fenced".into());
            }
            self.note(format!("commit {txn}"));
            Ok(())
        }
        fn abort(&mut self, txn: u64) -> Result<(), crate::BoxError> {
            self.note(format!("abort {txn}"));
            Ok(())
        }
        fn recover_and_commit(&mut self, txn: u64) -> Result<(), crate::BoxError> {
            self.note(format!("recover-commit {txn}"));
            Ok(())
        }
        fn recover_and_abort(&mut self, txn: u64) -> Result<(), crate::BoxError> {
            self.note(format!("recover-abort {txn}"));
            Ok(())
        }
    }

    /// The one-subtask stage a restore of `snapshot` (checkpoint
    /// `checkpoint_id`) would see.
    pub(super) fn restored_from(
        snapshot: SnapshotWriter,
        checkpoint_id: u64,
    ) -> Arc<RestoredStage> {
        let entries: HashMap<String, (Codec, Vec<u8>)> = snapshot
            .entries
            .into_iter()
            .map(|(id, bytes)| (id, (Codec::Bincode, bytes.0)))
            .collect();
        Arc::new(RestoredStage {
            checkpoint_id,
            subtasks: vec![entries],
            versions: vec![crate::storage::frame::FORMAT_VERSION],
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::tests_support::{CURSED, Recorder, restored_from};
    use super::*;
    use crate::codec::Codec;

    fn recorder(never_blocks: bool) -> Recorder {
        Recorder {
            never_blocks,
            ..Recorder::default()
        }
    }

    /// A driver of `sink`, opened.
    async fn opened(sink: &Recorder, env: &SubtaskEnv) -> TwoPhaseCommitDriver<Recorder> {
        let mut driver = TwoPhaseCommitDriver::new(sink.clone(), "0:recorder".into(), env).unwrap();
        driver.open().await.unwrap();
        driver
    }

    #[tokio::test]
    async fn a_sink_that_never_blocks_is_called_inline_in_the_same_order() {
        for never_blocks in [false, true] {
            let sink = recorder(never_blocks);
            let mut driver = opened(&sink, &SubtaskEnv::for_tests(None, 1)).await;
            driver.push(&mut vec![1, 2]).await.unwrap();
            barrier(&mut driver, 1).await;
            driver.checkpoint_complete(1).await.unwrap();
            driver.end().await.unwrap();
            let log = sink.take();
            assert_eq!(log[..2], ["begin 1", "write 1 [1, 2]"]);
            assert_eq!(log[2..], ["pre-commit 1", "begin 2", "commit 1", "abort 2"]);
            let here = std::thread::current().id();
            let threads = sink.write_threads.lock().unwrap().clone();
            assert_eq!(
                threads.iter().all(|t| *t == here),
                never_blocks,
                "write ran on {threads:?}, the test on {here:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_panic_in_a_sink_call_is_the_same_error_inline_and_on_the_blocking_pool() {
        let mut errors = Vec::new();
        for never_blocks in [false, true] {
            let sink = recorder(never_blocks);
            let mut driver = opened(&sink, &SubtaskEnv::for_tests(None, 1)).await;
            let err = driver.push(&mut vec![CURSED]).await.unwrap_err();
            errors.push(err.to_string());
        }
        assert_eq!(errors[0], errors[1]);
        assert!(
            errors[1].ends_with(&format!("write panicked: record {CURSED} is cursed")),
            "{}",
            errors[1]
        );
    }

    async fn barrier(driver: &mut TwoPhaseCommitDriver<Recorder>, id: u64) -> SnapshotWriter {
        let mut snapshot = SnapshotWriter::new(Codec::Bincode);
        driver
            .barrier(Barrier { checkpoint_id: id }, &mut snapshot)
            .await
            .unwrap();
        snapshot
    }

    #[tokio::test]
    async fn a_late_notification_commits_every_pending_transaction_up_to_it_in_order() {
        let sink = Recorder::default();
        let mut driver = opened(&sink, &SubtaskEnv::for_tests(None, 1)).await;
        driver.push(&mut vec![1, 2]).await.unwrap();
        barrier(&mut driver, 1).await;
        driver.push(&mut vec![3]).await.unwrap();
        barrier(&mut driver, 2).await;
        barrier(&mut driver, 3).await;
        assert_eq!(
            sink.take(),
            [
                "begin 1",
                "write 1 [1, 2]",
                "pre-commit 1",
                "begin 2",
                "write 2 [3]",
                "pre-commit 2",
                "begin 3",
                "pre-commit 3",
                "begin 4"
            ]
        );
        driver.checkpoint_complete(2).await.unwrap();
        assert_eq!(sink.take(), ["commit 1", "commit 2"]);
        driver.checkpoint_complete(2).await.unwrap();
        driver.checkpoint_complete(1).await.unwrap();
        assert!(
            sink.take().is_empty(),
            "a repeated notification committed again"
        );
        driver.checkpoint_complete(3).await.unwrap();
        driver.end().await.unwrap();
        assert_eq!(sink.take(), ["commit 3", "abort 4"]);
    }

    #[tokio::test]
    async fn a_failed_commit_is_an_error_and_the_transaction_stays_pending() {
        let sink = Recorder::default();
        sink.failing_commits.store(1, Ordering::SeqCst);
        let env = SubtaskEnv::for_tests(None, 5);
        let mut driver =
            TwoPhaseCommitDriver::new(sink.clone(), "0:recorder".into(), &env).unwrap();
        driver.open().await.unwrap();
        barrier(&mut driver, 5).await;
        let err = driver.checkpoint_complete(5).await.unwrap_err();
        let Error::Commit {
            checkpoint,
            transaction,
            ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!((*checkpoint, transaction.as_str()), (5, "5"));
        assert!(err.to_string().contains("fenced"), "{err}");
        assert_eq!(env.metrics.snapshot().commit_failures, 1);
        driver.checkpoint_complete(5).await.unwrap();
        assert_eq!(
            sink.take(),
            [
                "begin 5",
                "pre-commit 5",
                "begin 6",
                "commit 5 failed",
                "commit 5"
            ]
        );
    }

    #[tokio::test]
    async fn restore_commits_the_pending_transactions_and_aborts_the_open_one() {
        let sink = Recorder::default();
        let env = SubtaskEnv::for_tests(None, 1);
        let mut driver =
            TwoPhaseCommitDriver::new(sink.clone(), "0:recorder".into(), &env).unwrap();
        driver.open().await.unwrap();
        barrier(&mut driver, 1).await;
        let snapshot = barrier(&mut driver, 2).await;
        sink.take();

        let restored = restored_from(snapshot, 2);
        let env = SubtaskEnv::for_tests(Some(restored), 4);
        let mut recovered =
            TwoPhaseCommitDriver::new(sink.clone(), "0:recorder".into(), &env).unwrap();
        recovered.open().await.unwrap();
        assert_eq!(
            sink.take(),
            [
                "recover-commit 1",
                "recover-commit 2",
                "recover-abort 3",
                "begin 4"
            ]
        );
    }
}

#[cfg(test)]
mod marker_tests {
    use super::tests_support::{Recorder, restored_from};
    use super::*;
    use crate::codec::Codec;
    use crate::storage::LocalStorage;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restore_does_not_commit_again_what_a_commit_marker_covers() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalStorage::new(dir.path()));
        let sink = Recorder::default();
        let mut env = SubtaskEnv::for_tests(None, 1);
        env.link.storage = Some(Arc::clone(&storage));
        let mut driver =
            TwoPhaseCommitDriver::new(sink.clone(), "0:recorder".into(), &env).unwrap();
        driver.open().await.unwrap();
        let mut snapshot = SnapshotWriter::new(Codec::Bincode);
        driver
            .barrier(Barrier { checkpoint_id: 1 }, &mut snapshot)
            .await
            .unwrap();
        driver.checkpoint_complete(1).await.unwrap();
        assert_eq!(storage.read_commit_marker(0, 0).unwrap(), Some(1));
        sink.take();

        let restored = restored_from(snapshot, 1);
        let mut env = SubtaskEnv::for_tests(Some(restored), 3);
        env.link.storage = Some(storage);
        let mut recovered =
            TwoPhaseCommitDriver::new(sink.clone(), "0:recorder".into(), &env).unwrap();
        recovered.open().await.unwrap();
        assert_eq!(
            sink.take(),
            ["recover-abort 2", "begin 3"],
            "transaction 1 was committed twice"
        );
    }
}
