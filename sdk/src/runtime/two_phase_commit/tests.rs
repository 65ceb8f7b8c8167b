//! Tests of the driver: the order of sink calls, inline and on the
//! blocking pool, failed commits, and restore with and without commit
//! markers.

use super::*;

mod support {

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
        /// `try_write` writes this many records of a batch, then stops, as
        /// if the next one would block; `None` keeps the default (writes
        /// nothing).
        pub(super) try_writes: Option<usize>,
        /// The threads `try_write` wrote on.
        pub(super) try_write_threads: Arc<Mutex<Vec<std::thread::ThreadId>>>,
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
        fn try_write(
            &mut self,
            txn: &mut u64,
            mut batch: Vec<u32>,
        ) -> Result<Option<Vec<u32>>, crate::BoxError> {
            let Some(limit) = self.try_writes else {
                return Ok(Some(batch));
            };
            self.try_write_threads
                .lock()
                .unwrap()
                .push(std::thread::current().id());
            let rest = batch.split_off(limit.min(batch.len()));
            self.note(format!("try-write {txn} {batch:?}"));
            Ok((batch.len() == limit).then_some(rest))
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
        Arc::new(RestoredStage::from_snapshot(snapshot, checkpoint_id))
    }
}

mod lifecycle {
    use std::sync::atomic::Ordering;

    use super::support::{CURSED, Recorder, restored_from};
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
    async fn what_try_write_leaves_goes_to_write_on_the_blocking_pool() {
        let sink = Recorder {
            try_writes: Some(2),
            ..Recorder::default()
        };
        let env = SubtaskEnv::for_tests(None, 1);
        let mut driver = opened(&sink, &env).await;
        // Stopped with records left; stopped at the batch's end (a record
        // may wait in the sink); not stopped.
        for mut batch in [vec![1, 2, 3, 4], vec![5, 6], vec![7]] {
            driver.push(&mut batch).await.unwrap();
        }
        assert_eq!(
            sink.take(),
            [
                "begin 1",
                "try-write 1 [1, 2]",
                "write 1 [3, 4]",
                "try-write 1 [5, 6]",
                "write 1 []",
                "try-write 1 [7]"
            ]
        );
        assert_eq!(env.metrics.snapshot().records_out, 7);
        let here = std::thread::current().id();
        let inline = sink.try_write_threads.lock().unwrap().clone();
        assert!(inline.iter().all(|t| *t == here), "{inline:?}");
        let blocking = sink.write_threads.lock().unwrap().clone();
        assert!(blocking.iter().all(|t| *t != here), "{blocking:?}");
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
            .barrier(Barrier::new(id), &mut snapshot)
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

mod markers {
    use super::support::{Recorder, restored_from};
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
            .barrier(Barrier::new(1), &mut snapshot)
            .await
            .unwrap();
        driver.checkpoint_complete(1).await.unwrap();
        assert_eq!(storage.read_commit_marker(0, 0, None).unwrap(), Some(1));
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

    /// A savepoint restored into a directory whose commit marker comes from
    /// an older run (another lineage) naming a later checkpoint: the
    /// savepoint's pending transaction is committed, not skipped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_marker_of_another_lineage_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalStorage::new(dir.path()));
        let sink = Recorder::default();
        let driver = TwoPhaseCommitDriver::new(
            sink.clone(),
            "0:recorder".into(),
            &SubtaskEnv::for_tests(None, 5),
        );
        let mut driver = driver.unwrap();
        driver.open().await.unwrap();
        let mut snapshot = SnapshotWriter::new(Codec::Bincode);
        driver
            .barrier(Barrier::new(5), &mut snapshot)
            .await
            .unwrap();
        // The older run, of the default lineage, committed up to 20 here.
        storage.write_commit_marker(0, 0, None, 20).unwrap();
        sink.take();

        let mut env = SubtaskEnv::for_tests(Some(restored_from(snapshot, 5)), 21);
        env.link.storage = Some(Arc::clone(&storage));
        env.link.lineage = Some("from-the-savepoint".into());
        let mut recovered =
            TwoPhaseCommitDriver::new(sink.clone(), "0:recorder".into(), &env).unwrap();
        recovered.open().await.unwrap();
        assert_eq!(
            sink.take(),
            ["recover-commit 5", "recover-abort 6", "begin 21"],
            "the savepoint's transaction was skipped as committed"
        );
        assert_eq!(
            storage
                .read_commit_marker(0, 0, Some("from-the-savepoint"))
                .unwrap(),
            Some(5)
        );
    }
}
