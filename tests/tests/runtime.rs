//! End-to-end behaviour of the runtime: graceful stop and resume,
//! rescaling, savepoints, corrupt snapshots, checkpoints of the previous
//! format version, bounded restarts, failed commits, configuration mistakes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use exactly::prelude::*;
use exactly::source::Source;
use exactly::{BoxError, Error, Unrecoverable};
use exactly_tests::{
    KEYS, assert_exactly_once, count, run_then_stop, runtime, slow, wordcount_like,
};

#[operator]
fn always_fails(_x: u64) -> Result<u64, String> {
    Err("the database is down".into())
}

#[operator]
fn fails_for_good(_x: u64) -> Result<u64, BoxError> {
    Err(Unrecoverable::boxed("a newer instance took over"))
}

fn config(dir: &Path) -> JobConfig {
    JobConfig::new()
        .checkpoint_interval(Duration::from_millis(20))
        .checkpoint_dir(dir)
        .restart_strategy(RestartStrategy::fixed_delay(2, Duration::ZERO))
        .batch_size(16)
        .worker_threads(2)
}

#[test]
fn a_graceful_stop_resumes_exactly_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let sink = CollectSink::new();
    let records = 3000;
    run_then_stop(wordcount_like(config(dir.path()), records, 2, sink.clone()));
    let after_stop = sink.committed().len() as u64;
    assert!(
        after_stop > 0 && after_stop < records,
        "stopped after {after_stop} of {records}"
    );
    wordcount_like(config(dir.path()), records, 2, sink.clone())
        .run()
        .unwrap();
    assert_exactly_once(&sink.committed(), records);
}

#[test]
fn keyed_state_follows_its_keys_when_the_parallelism_changes() {
    let dir = tempfile::tempdir().unwrap();
    let sink = CollectSink::new();
    let records = 3000;
    run_then_stop(wordcount_like(config(dir.path()), records, 2, sink.clone()));
    wordcount_like(config(dir.path()), records, 3, sink.clone())
        .run()
        .unwrap();
    assert_exactly_once(&sink.committed(), records);
}

#[test]
fn a_savepoint_is_kept_and_restores_into_a_new_checkpoint_directory() {
    let dir = tempfile::tempdir().unwrap();
    let savepoint = dir.path().join("savepoint-1");
    let sink = CollectSink::new();
    let records = 3000;
    let job = wordcount_like(config(&dir.path().join("first")), records, 2, sink.clone());
    runtime().block_on(async {
        let handle = job.spawn().unwrap();
        while handle.metrics().checkpoints_completed < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let taken = handle.savepoint(&savepoint).await.unwrap();
        assert_eq!(taken, savepoint.as_path().into());
        handle.stop();
        handle.join().await.unwrap();
    });
    assert!(savepoint.join("_metadata").exists());
    // The first run committed past the savepoint; a restore from it
    // replays from the savepoint, into a fresh sink.
    let replay = CollectSink::new();
    let from_savepoint = config(&dir.path().join("second")).restore_from(&savepoint);
    let job = wordcount_like(from_savepoint, records, 2, replay.clone());
    job.run().unwrap();
    let replayed = replay.committed();
    assert!(
        (replayed.len() as u64) < records,
        "the restore did not start at the savepoint"
    );
    // The savepoint's pre-committed transactions were committed (by the
    // first run or on restore) exactly once in total, and the key counts
    // continue from the savepoint's state.
    let mut all = sink.committed();
    let last_of_first: HashMap<u64, u64> =
        replayed.iter().fold(HashMap::new(), |mut m, &(k, n)| {
            let e = m.entry(k).or_insert(n);
            *e = (*e).min(n);
            m
        });
    all.retain(|(k, n)| last_of_first.get(k).is_none_or(|first| n < first));
    all.extend(replayed);
    assert_exactly_once(&all, records);
    assert!(
        savepoint.join("_metadata").exists(),
        "the savepoint was deleted"
    );
}

/// A job configured with `restore_from(savepoint)` that a supervisor
/// starts again, unchanged, resumes from its newest checkpoint, not from
/// the savepoint a second time (Flink's rule): its output holds every
/// update once.
#[test]
fn a_second_start_with_the_same_savepoint_resumes_from_the_newest_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let savepoint = dir.path().join("savepoint");
    let records = 3000;
    let first = CollectSink::new();
    let job = wordcount_like(config(&dir.path().join("first")), records, 2, first.clone());
    runtime().block_on(async {
        let handle = job.spawn().unwrap();
        while handle.metrics().checkpoints_completed < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        handle.savepoint(&savepoint).await.unwrap();
        handle.stop();
        handle.join().await.unwrap();
    });
    let restored = || config(&dir.path().join("second")).restore_from(&savepoint);
    let output = CollectSink::new();
    run_then_stop(wordcount_like(restored(), records, 2, output.clone()));
    let after_first_start = output.committed().len();
    wordcount_like(restored(), records, 2, output.clone())
        .run()
        .unwrap();
    let mut updates = output.committed();
    assert!(updates.len() > after_first_start);
    updates.sort_unstable();
    let before = updates.len();
    updates.dedup();
    assert_eq!(
        before,
        updates.len(),
        "{} updates were written twice: the second start went back to the savepoint",
        before - updates.len()
    );
    let mut by_key: HashMap<u64, Vec<u64>> = HashMap::new();
    for (key, n) in updates {
        by_key.entry(key).or_default().push(n);
    }
    for (key, counts) in by_key {
        let expected = (0..records).filter(|x| x % KEYS == key).count() as u64;
        let first = counts[0];
        assert_eq!(
            counts,
            (first..=expected).collect::<Vec<_>>(),
            "key {key}: the updates after the savepoint are not contiguous"
        );
    }
}

#[test]
fn a_corrupt_snapshot_is_an_error_that_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    run_then_stop(wordcount_like(
        config(dir.path()),
        3000,
        2,
        CollectSink::new(),
    ));
    let latest = exactly::storage::CheckpointStorage::latest(&exactly::storage::LocalStorage::new(
        dir.path(),
    ))
    .unwrap()
    .unwrap();
    let latest_dir = latest.location.as_local().unwrap().to_path_buf();
    let state = latest_dir.join(&latest.metadata.task_states[0].file);
    let mut bytes = std::fs::read(&state).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&state, bytes).unwrap();
    let err = wordcount_like(config(dir.path()), 3000, 2, CollectSink::new())
        .run()
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&state.display().to_string()), "{text}");
    assert!(text.contains("checksum"), "{text}");

    std::fs::write(latest_dir.join("_metadata"), b"EXACTLY\0 short").unwrap();
    let err = wordcount_like(config(dir.path()), 3000, 2, CollectSink::new())
        .run()
        .unwrap_err();
    assert!(err.to_string().contains("_metadata"), "{err}");
}

#[test]
fn incremental_keyed_state_restores_exactly_and_keeps_only_referenced_segments() {
    let dir = tempfile::tempdir().unwrap();
    let sink = CollectSink::new();
    let records = 3000;
    let config = || {
        config(dir.path())
            .max_state_deltas(2)
            .retained_checkpoints(1)
    };
    run_then_stop(wordcount_like(config(), records, 2, sink.clone()));
    wordcount_like(config(), records, 2, sink.clone())
        .run()
        .unwrap();
    assert_exactly_once(&sink.committed(), records);

    let storage = exactly::storage::LocalStorage::new(dir.path());
    let latest = exactly::storage::CheckpointStorage::latest(&storage)
        .unwrap()
        .unwrap();
    let keyed: Vec<_> = latest
        .metadata
        .task_states
        .iter()
        .filter(|h| h.stage == 1)
        .collect();
    assert_eq!(keyed.len(), 2);
    for handle in &keyed {
        // A base, at most two deltas, and those written while a compaction
        // ran (the records keep every key changing).
        assert!(
            (1..=5).contains(&handle.shared.len()),
            "subtask {} references {:?}",
            handle.subtask,
            handle.shared
        );
    }
    let referenced: std::collections::BTreeSet<String> = keyed
        .iter()
        .flat_map(|h| h.shared.iter().cloned())
        .collect();
    let stored: std::collections::BTreeSet<String> = std::fs::read_dir(dir.path().join("shared"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(stored, referenced, "segments no checkpoint needs were kept");
}

#[test]
fn a_checkpoint_in_the_previous_format_version_restores() {
    let dir = tempfile::tempdir().unwrap();
    let sink = CollectSink::new();
    let records = 3000;
    run_then_stop(wordcount_like(config(dir.path()), records, 2, sink.clone()));
    let storage = exactly::storage::LocalStorage::new(dir.path());
    let latest = exactly::storage::CheckpointStorage::latest(&storage)
        .unwrap()
        .unwrap();
    let latest_dir = latest.location.as_local().unwrap().to_path_buf();
    // The same checkpoint as the previous format version wrote it, in place
    // of the newest one.
    let old = dir.path().join("old");
    let count_id = latest.metadata.stages[1]
        .operators
        .iter()
        .find(|id| id.ends_with(":count"))
        .unwrap();
    exactly::__bench::copy_as_format_1(&latest_dir, &old, &[count_id.as_str()]).unwrap();
    let state = &latest.metadata.task_states;
    let keyed_file = state.iter().find(|h| h.stage == 1).unwrap();
    let old_bytes = std::fs::read(old.join(&keyed_file.file)).unwrap();
    assert_eq!(
        &old_bytes[8..10],
        &1u16.to_le_bytes(),
        "not format version 1"
    );
    std::fs::remove_dir_all(&latest_dir).unwrap();
    std::fs::rename(&old, &latest_dir).unwrap();
    let reopened = exactly::storage::LocalStorage::open_checkpoint(&latest_dir).unwrap();
    // Format version 1 kept keyed state inline: its files name no shared
    // objects.
    let mut inline = latest.metadata.clone();
    inline.task_states.iter_mut().for_each(|h| h.shared.clear());
    assert_eq!(reopened.metadata, inline);
    // Committed output before the stop ends at the checkpoint it resumes
    // from; the counts continue from the rewritten state.
    let job = wordcount_like(config(dir.path()), records, 2, sink.clone());
    let metrics = runtime().block_on(async { job.spawn().unwrap().join().await.unwrap() });
    assert_exactly_once(&sink.committed(), records);
    assert!(metrics.last_restore_micros > 0, "the restore was not timed");
}

#[test]
fn restarts_stop_after_the_configured_number() {
    let dir = tempfile::tempdir().unwrap();
    let job = Job::new("failing", config(dir.path()));
    job.source(VecSource::new(vec![1u64, 2, 3]))
        .operator(always_fails)
        .sink(DiscardSink::new());
    let err = job.run().unwrap_err();
    assert!(
        matches!(
            err,
            Error::RestartsExhausted {
                failures: 3,
                max_restarts: 2,
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("always_fails") && text.contains("the database is down"),
        "{text}"
    );
}

#[test]
fn an_unrecoverable_error_stops_the_job_without_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let job = Job::new("fenced", config(dir.path()));
    job.source(VecSource::new(vec![1u64, 2, 3]))
        .operator(fails_for_good)
        .sink(DiscardSink::new());
    let err = job.run().unwrap_err();
    assert!(matches!(err, Error::Task { .. }), "{err:?}");
    assert!(err.is_unrecoverable(), "{err:?}");
    assert!(
        err.to_string().contains("a newer instance took over"),
        "{err}"
    );
}

/// Wraps a [`CollectSink`] and fails its first `fail_commits` commits.
#[derive(Clone)]
struct FlakyCommits {
    inner: CollectSink<u64>,
    fail_commits: Arc<AtomicU32>,
}

impl TwoPhaseCommitSink for FlakyCommits {
    type Item = u64;
    type Transaction = exactly::sink::CollectTransaction<u64>;

    fn name(&self) -> String {
        "flaky".into()
    }
    fn open(&mut self, ctx: &exactly::sink::SinkContext) -> Result<(), BoxError> {
        self.inner.open(ctx)
    }
    fn begin_transaction(&mut self, checkpoint_id: u64) -> Result<Self::Transaction, BoxError> {
        self.inner.begin_transaction(checkpoint_id)
    }
    fn write(&mut self, txn: &mut Self::Transaction, batch: Vec<u64>) -> Result<(), BoxError> {
        self.inner.write(txn, batch)
    }
    fn pre_commit(&mut self, txn: &mut Self::Transaction) -> Result<(), BoxError> {
        self.inner.pre_commit(txn)
    }
    fn commit(&mut self, txn: Self::Transaction) -> Result<(), BoxError> {
        if self.fail_commits.load(Ordering::SeqCst) > 0 {
            self.fail_commits.fetch_sub(1, Ordering::SeqCst);
            return Err("the broker said no".into());
        }
        self.inner.commit(txn)
    }
    fn abort(&mut self, txn: Self::Transaction) -> Result<(), BoxError> {
        self.inner.abort(txn)
    }
}

#[test]
fn a_failed_commit_is_never_dropped() {
    let records: Vec<u64> = (0..2000).collect();
    // Two failed commits: the job restarts and commits them on restore.
    let dir = tempfile::tempdir().unwrap();
    let sink = FlakyCommits {
        inner: CollectSink::new(),
        fail_commits: Arc::new(AtomicU32::new(2)),
    };
    let job = Job::new("flaky", config(dir.path()));
    job.source(VecSource::new(records.clone()))
        .operator(slow)
        .sink(sink.clone());
    job.run().unwrap();
    let mut committed = sink.inner.committed();
    committed.sort_unstable();
    assert_eq!(committed, records);

    // Commits that always fail: the job stops with an error naming the
    // transaction and its checkpoint.
    let dir = tempfile::tempdir().unwrap();
    let sink = FlakyCommits {
        inner: CollectSink::new(),
        fail_commits: Arc::new(AtomicU32::new(u32::MAX)),
    };
    let job = Job::new("broken", config(dir.path()));
    job.source(VecSource::new(records))
        .operator(slow)
        .sink(sink);
    let err = job.run().unwrap_err();
    let Error::RestartsExhausted { last, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(matches!(**last, Error::Commit { .. }), "{last:?}");
    let text = last.to_string();
    assert!(
        text.contains("commit of transaction CollectTransaction")
            && text.contains("for checkpoint"),
        "{text}"
    );
    assert!(
        text.contains("the broker said no") && text.contains("committed again on restore"),
        "{text}"
    );
}

#[test]
fn configuration_and_pipeline_mistakes_are_reported_at_start() {
    let no_dir = Job::new(
        "a",
        JobConfig::new().checkpoint_interval(Duration::from_secs(1)),
    );
    no_dir
        .source(VecSource::new(vec![1u64]))
        .sink(DiscardSink::new());
    assert!(
        no_dir
            .run()
            .unwrap_err()
            .to_string()
            .contains("checkpoint_dir")
    );

    let zero = Job::new("b", JobConfig::new());
    zero.source(VecSource::new(vec![1u64]))
        .parallelism(0)
        .sink(DiscardSink::new());
    let err = zero.run().unwrap_err().to_string();
    assert!(
        err.contains("parallelism of `vec`") && err.contains("at least 1"),
        "{err}"
    );

    let open_stream = Job::new("c", JobConfig::new());
    let _unfinished = open_stream
        .source(VecSource::new(vec![1u64]))
        .operator(slow);
    let err = open_stream.run().unwrap_err().to_string();
    assert!(err.contains("end every stream with .sink"), "{err}");

    let nothing = Job::new("d", JobConfig::new());
    assert!(nothing.run().unwrap_err().to_string().contains("no source"));
}

#[test]
fn a_changed_pipeline_does_not_restore_a_foreign_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    run_then_stop(wordcount_like(
        config(dir.path()),
        3000,
        2,
        CollectSink::new(),
    ));
    let changed = Job::new("runtime-test", config(dir.path()));
    changed
        .source(VecSource::new((0..10u64).collect::<Vec<_>>()))
        .key_by(|x: &u64| *x)
        .operator(count)
        .sink(CollectSink::new());
    let err = changed.run().unwrap_err().to_string();
    assert!(
        err.contains("cannot restore checkpoint") && err.contains("stage 0 was `vec -> slow`"),
        "{err}"
    );
}

#[test]
fn without_checkpointing_a_bounded_job_commits_when_its_input_ends() {
    let sink = CollectSink::new();
    let job = Job::new("bounded", JobConfig::new().parallelism(2));
    job.source(VecSource::new((0..500u64).collect::<Vec<_>>()))
        .key_by(|x: &u64| x % KEYS)
        .operator(count)
        .sink(sink.clone());
    job.run().unwrap();
    assert_exactly_once(&sink.committed(), 500);
}

#[test]
fn rebalance_spreads_a_stream_over_a_new_parallelism() {
    let dir = tempfile::tempdir().unwrap();
    let sink = CollectSink::new();
    let job = Job::new("rebalance", config(dir.path()));
    job.source(VecSource::new((0..2000u64).collect::<Vec<_>>()))
        .rebalance()
        .parallelism(3)
        .operator(slow)
        .sink(sink.clone());
    job.run().unwrap();
    let mut committed = sink.committed();
    committed.sort_unstable();
    assert_eq!(committed, (0..2000).collect::<Vec<_>>());
}

/// A sink that refuses to run without checkpoints and claims a name.
#[derive(Clone)]
struct Picky {
    claim: &'static str,
}

impl TwoPhaseCommitSink for Picky {
    type Item = u64;
    type Transaction = ();

    fn name(&self) -> String {
        format!("picky({})", self.claim)
    }
    fn preflight(
        &self,
        settings: &exactly::preflight::JobSettings,
    ) -> Result<exactly::preflight::PreflightReport, BoxError> {
        if settings.checkpoint_interval.is_none() {
            return Err(
                "this sink commits on checkpoints: set JobConfig::checkpoint_interval".into(),
            );
        }
        Ok(exactly::preflight::PreflightReport::new()
            .notice("remember to read with isolation.level=read_committed")
            .claim(format!("prefix {}", self.claim)))
    }
    fn begin_transaction(&mut self, _checkpoint_id: u64) -> Result<(), BoxError> {
        Ok(())
    }
    fn write(&mut self, _txn: &mut (), _batch: Vec<u64>) -> Result<(), BoxError> {
        Ok(())
    }
    fn pre_commit(&mut self, _txn: &mut ()) -> Result<(), BoxError> {
        Ok(())
    }
    fn commit(&mut self, _txn: ()) -> Result<(), BoxError> {
        Ok(())
    }
    fn abort(&mut self, _txn: ()) -> Result<(), BoxError> {
        Ok(())
    }
}

#[test]
fn preflight_checks_run_before_any_record_is_read() {
    let unchecked = Job::new("no-checkpoints", JobConfig::new());
    unchecked
        .source(VecSource::new(vec![1u64]))
        .sink(Picky { claim: "a" });
    let err = unchecked.run().unwrap_err();
    assert!(matches!(err, Error::Preflight { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "preflight check of `sink picky(a)` failed: this sink commits on checkpoints: set JobConfig::checkpoint_interval"
    );

    let dir = tempfile::tempdir().unwrap();
    let twice = Job::new("same-prefix", config(dir.path()));
    let a = twice.source(VecSource::new(vec![1u64]));
    let b = twice.source(VecSource::new(vec![2u64]));
    a.sink(Picky { claim: "orders" });
    b.sink(Picky { claim: "orders" });
    let err = twice.run().unwrap_err().to_string();
    assert!(
        err.contains("prefix orders")
            && err.contains("both `sink picky(orders)` and `sink picky(orders)`"),
        "{err}"
    );
    assert!(
        std::fs::read_dir(dir.path()).map_or(true, |mut d| d.next().is_none()),
        "the job ran despite a failed preflight"
    );

    let dir = tempfile::tempdir().unwrap();
    let fine = Job::new("fine", config(dir.path()));
    fine.source(VecSource::new(vec![1u64, 2]))
        .sink(Picky { claim: "x" });
    fine.run().unwrap();
}

/// A [`VecSource`] that records every checkpoint-complete notification.
#[derive(Clone)]
struct Reporting {
    inner: VecSource<u64>,
    heard: Arc<std::sync::Mutex<Vec<(u64, usize)>>>,
}

impl Source for Reporting {
    type Item = u64;
    type Position = exactly::source::VecPosition;

    fn name(&self) -> String {
        "reporting".into()
    }
    async fn open(
        &mut self,
        ctx: &exactly::source::SubtaskContext,
        restored: Vec<Self::Position>,
    ) -> Result<(), BoxError> {
        self.inner.open(ctx, restored).await
    }
    async fn poll_batch(
        &mut self,
        out: &mut Vec<u64>,
        max: usize,
    ) -> Result<exactly::source::SourcePoll, BoxError> {
        self.inner.poll_batch(out, max.min(4)).await
    }
    fn position(&self) -> Self::Position {
        self.inner.position()
    }
    async fn checkpoint_complete(
        &mut self,
        checkpoint_id: u64,
        position: &Self::Position,
    ) -> Result<(), BoxError> {
        self.heard
            .lock()
            .unwrap()
            .push((checkpoint_id, position.next));
        Ok(())
    }
}

#[test]
fn sources_hear_the_position_each_completed_checkpoint_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
    let source = Reporting {
        inner: VecSource::new((0..400u64).collect::<Vec<_>>()),
        heard: Arc::clone(&heard),
    };
    let job = Job::new("reporting", config(dir.path()));
    job.source(source).operator(slow).sink(DiscardSink::new());
    job.run().unwrap();
    let heard = heard.lock().unwrap().clone();
    assert!(heard.len() >= 2, "{heard:?}");
    assert!(
        heard
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
        "{heard:?}"
    );
    assert_eq!(
        heard.last().unwrap().1,
        400,
        "the final checkpoint covers every record: {heard:?}"
    );
}

/// Appends all its records in its first call, and gives the same answer to
/// every call.
#[derive(Clone)]
struct AllAtOnce {
    records: Vec<u64>,
    taken: u64,
    answer: exactly::source::SourcePoll,
}

impl Source for AllAtOnce {
    type Item = u64;
    type Position = u64;

    fn name(&self) -> String {
        "all-at-once".into()
    }
    async fn open(
        &mut self,
        _ctx: &exactly::source::SubtaskContext,
        restored: Vec<u64>,
    ) -> Result<(), BoxError> {
        self.taken = restored.into_iter().max().unwrap_or(0);
        Ok(())
    }
    async fn poll_batch(
        &mut self,
        out: &mut Vec<u64>,
        _max: usize,
    ) -> Result<exactly::source::SourcePoll, BoxError> {
        out.extend(self.records.iter().skip(self.taken as usize));
        self.taken = self.records.len() as u64;
        Ok(self.answer)
    }
    fn position(&self) -> u64 {
        self.taken
    }
}

#[test]
fn records_appended_with_finished_are_emitted() {
    let dir = tempfile::tempdir().unwrap();
    let sink = CollectSink::<u64>::new();
    let job = Job::new("all-at-once", config(dir.path()));
    job.source(AllAtOnce {
        records: (0..10).collect(),
        taken: 0,
        answer: exactly::source::SourcePoll::Finished,
    })
    .sink(sink.clone());
    job.run().unwrap();
    assert_eq!(sink.committed(), (0..10).collect::<Vec<_>>());
}

/// Records appended in a call that answers `Idle` go down the chain at once.
/// Held back, they would be counted by the source's position in the next
/// checkpoint without being in it, and lost on a restore from it.
#[test]
fn records_appended_with_idle_are_emitted() {
    let dir = tempfile::tempdir().unwrap();
    let sink = CollectSink::<u64>::new();
    let job = Job::new("appends-with-idle", config(dir.path()));
    job.source(AllAtOnce {
        records: (0..10).collect(),
        taken: 0,
        answer: exactly::source::SourcePoll::Idle,
    })
    .sink(sink.clone());
    runtime().block_on(async {
        let handle = job.spawn().unwrap();
        while sink.committed().len() < 10 && handle.metrics().checkpoints_completed < 20 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        handle.stop();
        handle.join().await.unwrap();
    });
    assert_eq!(sink.committed(), (0..10).collect::<Vec<_>>());
}

/// Subtask 1 emits `fast` records and finishes; subtask 0 emits one record
/// every 2 ms until stopped.
#[derive(Clone)]
struct Uneven {
    fast: u64,
    subtask: usize,
    next: u64,
}

impl Source for Uneven {
    type Item = u64;
    type Position = u64;

    fn name(&self) -> String {
        "uneven".into()
    }
    async fn open(
        &mut self,
        ctx: &exactly::source::SubtaskContext,
        _restored: Vec<u64>,
    ) -> Result<(), BoxError> {
        self.subtask = ctx.index;
        Ok(())
    }
    async fn poll_batch(
        &mut self,
        out: &mut Vec<u64>,
        _max: usize,
    ) -> Result<exactly::source::SourcePoll, BoxError> {
        if self.subtask == 1 {
            if self.next == self.fast {
                return Ok(exactly::source::SourcePoll::Finished);
            }
            out.push(1_000_000 + self.next);
        } else {
            tokio::time::sleep(Duration::from_millis(2)).await;
            out.push(self.next);
        }
        self.next += 1;
        Ok(exactly::source::SourcePoll::Data)
    }
    fn position(&self) -> u64 {
        self.next
    }
}

#[test]
fn a_finished_source_subtask_still_commits_its_sink_on_later_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let sink = CollectSink::new();
    let job = Job::new("uneven", config(dir.path()).parallelism(2));
    job.source(Uneven {
        fast: 10,
        subtask: 0,
        next: 0,
    })
    .sink(sink.clone());
    runtime().block_on(async {
        let handle = job.spawn().unwrap();
        // Subtask 1 finishes at once; its records are in a transaction
        // that a later checkpoint must commit while subtask 0 still runs.
        let committed_early = loop {
            let fast = sink.committed().iter().filter(|x| **x >= 1_000_000).count();
            if fast == 10 || handle.metrics().checkpoints_completed > 50 {
                break fast;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        handle.stop();
        handle.join().await.unwrap();
        assert_eq!(
            committed_early, 10,
            "the finished subtask's records waited for the end of the job"
        );
    });
}

/// A stop request outlives a failure of the attempt that was stopping: the
/// restarted attempt stops too, instead of reading an unbounded source
/// forever.
#[test]
fn a_stop_is_kept_across_a_failure_during_the_final_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let armed = Arc::new(AtomicBool::new(false));
    let trigger = Arc::clone(&armed);
    let hook: exactly::fault::FaultHook = Arc::new(move |event| {
        if event.point.name() == "before-sink-commit" && trigger.swap(false, Ordering::SeqCst) {
            return Err("the commit service hiccupped".into());
        }
        Ok(())
    });
    let job = Job::new("stop-then-fail", config(dir.path()).fault_hook(hook));
    job.source(Uneven {
        fast: u64::MAX,
        subtask: 0,
        next: 0,
    })
    .sink(CollectSink::new());
    runtime().block_on(async {
        let handle = job.spawn().unwrap();
        while handle.metrics().checkpoints_completed < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        armed.store(true, Ordering::SeqCst);
        handle.stop();
        let ended = tokio::time::timeout(Duration::from_secs(30), handle.join())
            .await
            .expect("the restarted attempt forgot the stop and ran on");
        let metrics = ended.unwrap();
        assert_eq!(metrics.restarts, 1, "{metrics:?}");
    });
}

/// Records whether a subtask's instance (one that began a transaction;
/// the prototype never does) was dropped on an async worker thread, where
/// blocking is not allowed (`Handle::block_on` panics there).
#[derive(Clone)]
struct DropSpy {
    inner: CollectSink<u64>,
    used: bool,
    dropped_on_worker: Arc<AtomicU32>,
    drops: Arc<AtomicU32>,
}

impl Drop for DropSpy {
    fn drop(&mut self) {
        if !self.used {
            return;
        }
        self.drops.fetch_add(1, Ordering::SeqCst);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let blocking_allowed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                handle.block_on(async {})
            }))
            .is_ok();
            if !blocking_allowed {
                self.dropped_on_worker.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

impl TwoPhaseCommitSink for DropSpy {
    type Item = u64;
    type Transaction = exactly::sink::CollectTransaction<u64>;

    fn name(&self) -> String {
        "drop-spy".into()
    }
    fn begin_transaction(&mut self, checkpoint_id: u64) -> Result<Self::Transaction, BoxError> {
        self.used = true;
        self.inner.begin_transaction(checkpoint_id)
    }
    fn write(&mut self, txn: &mut Self::Transaction, batch: Vec<u64>) -> Result<(), BoxError> {
        self.inner.write(txn, batch)
    }
    fn pre_commit(&mut self, txn: &mut Self::Transaction) -> Result<(), BoxError> {
        self.inner.pre_commit(txn)
    }
    fn commit(&mut self, txn: Self::Transaction) -> Result<(), BoxError> {
        self.inner.commit(txn)
    }
    fn abort(&mut self, txn: Self::Transaction) -> Result<(), BoxError> {
        self.inner.abort(txn)
    }
}

/// A sink may block when dropped (an rdkafka producer flushes for up to
/// 500 ms): the runtime drops it on the blocking pool, also when an attempt
/// fails and its tasks are aborted.
#[test]
fn sinks_are_dropped_on_the_blocking_pool() {
    let dir = tempfile::tempdir().unwrap();
    let spy = DropSpy {
        inner: CollectSink::new(),
        used: false,
        dropped_on_worker: Arc::new(AtomicU32::new(0)),
        drops: Arc::new(AtomicU32::new(0)),
    };
    let failing = Job::new("drop-on-failure", config(dir.path()));
    failing
        .source(VecSource::new((0..200u64).collect::<Vec<_>>()))
        .operator(always_fails)
        .sink(spy.clone());
    failing.run().unwrap_err();
    let finishing = Job::new("drop-at-end", config(dir.path()));
    finishing
        .source(VecSource::new((0..200u64).collect::<Vec<_>>()))
        .sink(spy.clone());
    finishing.run().unwrap();
    assert!(
        spy.drops.load(Ordering::SeqCst) >= 2,
        "the subtasks' sinks were dropped"
    );
    assert_eq!(
        spy.dropped_on_worker.load(Ordering::SeqCst),
        0,
        "a sink was dropped on an async worker thread"
    );
}

/// Two jobs on one checkpoint directory would interleave their checkpoint
/// ids and commit markers: the second fails at start, naming the first.
#[test]
fn a_second_job_on_a_checkpoint_directory_in_use_fails_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let first = Job::new("first-owner", config(dir.path()));
    first
        .source(Uneven {
            fast: u64::MAX,
            subtask: 0,
            next: 0,
        })
        .sink(CollectSink::new());
    runtime().block_on(async {
        let handle = first.spawn().unwrap();
        while handle.metrics().checkpoints_completed < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let second = Job::new("second-owner", config(dir.path()));
        second
            .source(VecSource::new(vec![1u64, 2, 3]))
            .sink(CollectSink::new());
        let err = second.spawn().unwrap().join().await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("is in use by another job")
                && text.contains("job `first-owner`")
                && text.contains(&format!("process {}", std::process::id())),
            "{text}"
        );
        handle.stop();
        handle.join().await.unwrap();
    });
    // Released when the first job ended: a third job gets past the claim
    // (to the check that the newest checkpoint fits its pipeline).
    let third = Job::new("third-owner", config(dir.path()));
    third
        .source(VecSource::new(vec![1u64, 2, 3]))
        .sink(CollectSink::new());
    let err = third.run().unwrap_err();
    assert!(matches!(err, Error::Restore { .. }), "{err}");
}

/// Local storage with two twists a test can turn on: checkpoint 2 expires
/// (is discarded) between the coordinator beginning it and a task writing
/// its snapshot into it; and task states kept in memory, not in files, as
/// a storage that is not a local directory keeps them.
/// Task states by file name.
type StatesInMemory = Arc<std::sync::Mutex<HashMap<String, Vec<u8>>>>;

#[derive(Clone)]
struct TestStorage {
    inner: exactly::storage::LocalStorage,
    expire_checkpoint_2: bool,
    discarded: Arc<AtomicBool>,
    /// The first task state written for checkpoint 2 fails, once.
    fail_checkpoint_2: Option<Arc<AtomicBool>>,
    states_in_memory: Option<StatesInMemory>,
}

impl TestStorage {
    fn new(dir: &Path) -> Self {
        TestStorage {
            inner: exactly::storage::LocalStorage::new(dir),
            expire_checkpoint_2: false,
            discarded: Arc::default(),
            fail_checkpoint_2: None,
            states_in_memory: None,
        }
    }
}

impl exactly::storage::CheckpointStorage for TestStorage {
    fn begin_checkpoint(&self, id: u64) -> Result<(), exactly::storage::StorageError> {
        self.inner.begin_checkpoint(id)
    }
    fn write_task_state(
        &self,
        id: u64,
        stage: usize,
        subtask: usize,
        framed: &[u8],
    ) -> Result<exactly::storage::TaskStateHandle, exactly::storage::StorageError> {
        if self.expire_checkpoint_2 && id == 2 && !self.discarded.swap(true, Ordering::SeqCst) {
            self.inner.discard(id)?;
        }
        if let Some(failed) = &self.fail_checkpoint_2
            && id == 2
            && !failed.swap(true, Ordering::SeqCst)
        {
            return Err(exactly::storage::StorageError::Io {
                action: "write",
                path: "injected".into(),
                source: std::io::Error::other("the disk is full"),
            });
        }
        match &self.states_in_memory {
            Some(states) => {
                let file = format!("in-memory {id}/{stage}-{subtask}");
                states.lock().unwrap().insert(file.clone(), framed.to_vec());
                Ok(exactly::storage::TaskStateHandle {
                    stage,
                    subtask,
                    file,
                    bytes: framed.len() as u64,
                    shared: Vec::new(),
                })
            }
            None => self.inner.write_task_state(id, stage, subtask, framed),
        }
    }
    fn write_shared(
        &self,
        name: &str,
        framed: &[u8],
    ) -> Result<(), exactly::storage::StorageError> {
        match &self.states_in_memory {
            Some(states) => {
                let key = format!("shared/{name}");
                states.lock().unwrap().insert(key, framed.to_vec());
                Ok(())
            }
            None => self.inner.write_shared(name, framed),
        }
    }
    fn shared_location(&self) -> exactly::storage::Location {
        self.inner.shared_location()
    }
    fn read_shared(
        &self,
        shared: &exactly::storage::Location,
        name: &str,
    ) -> Result<Vec<u8>, exactly::storage::StorageError> {
        match &self.states_in_memory {
            Some(states) => Ok(states.lock().unwrap()[&format!("shared/{name}")].clone()),
            None => self.inner.read_shared(shared, name),
        }
    }
    fn complete(
        &self,
        metadata: &exactly::storage::CheckpointMetadata,
        framed: &[u8],
    ) -> Result<exactly::storage::CompletedCheckpoint, exactly::storage::StorageError> {
        self.inner.complete(metadata, framed)
    }
    fn discard(&self, id: u64) -> Result<(), exactly::storage::StorageError> {
        self.inner.discard(id)
    }
    fn latest(
        &self,
    ) -> Result<Option<exactly::storage::CompletedCheckpoint>, exactly::storage::StorageError> {
        self.inner.latest()
    }
    fn latest_in_lineage(
        &self,
        lineage: Option<&str>,
    ) -> Result<Option<exactly::storage::CompletedCheckpoint>, exactly::storage::StorageError> {
        self.inner.latest_in_lineage(lineage)
    }
    fn highest_id(&self) -> Result<u64, exactly::storage::StorageError> {
        self.inner.highest_id()
    }
    fn read_task_state(
        &self,
        checkpoint: &exactly::storage::CompletedCheckpoint,
        handle: &exactly::storage::TaskStateHandle,
    ) -> Result<Vec<u8>, exactly::storage::StorageError> {
        match &self.states_in_memory {
            Some(states) => Ok(states.lock().unwrap()[&handle.file].clone()),
            None => self.inner.read_task_state(checkpoint, handle),
        }
    }
    fn retain(&self, keep: usize) -> Result<(), exactly::storage::StorageError> {
        self.inner.retain(keep)
    }
    fn write_commit_marker(
        &self,
        stage: usize,
        subtask: usize,
        lineage: Option<&str>,
        id: u64,
    ) -> Result<(), exactly::storage::StorageError> {
        self.inner.write_commit_marker(stage, subtask, lineage, id)
    }
    fn read_commit_marker(
        &self,
        stage: usize,
        subtask: usize,
        lineage: Option<&str>,
    ) -> Result<Option<u64>, exactly::storage::StorageError> {
        self.inner.read_commit_marker(stage, subtask, lineage)
    }
    fn claim(
        &self,
        job: &str,
    ) -> Result<exactly::storage::StorageClaim, exactly::storage::StorageError> {
        self.inner.claim(job)
    }
    fn write_lineage(
        &self,
        record: &exactly::storage::LineageRecord,
    ) -> Result<(), exactly::storage::StorageError> {
        self.inner.write_lineage(record)
    }
    fn read_lineage(
        &self,
    ) -> Result<Option<exactly::storage::LineageRecord>, exactly::storage::StorageError> {
        self.inner.read_lineage()
    }
}

/// A task state that cannot be written (its upload runs beside the task)
/// fails the attempt, which restarts from the last complete checkpoint;
/// the output stays exact.
#[test]
fn a_failed_task_state_write_restarts_the_job_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let storage = TestStorage {
        fail_checkpoint_2: Some(Arc::default()),
        ..TestStorage::new(dir.path())
    };
    let config = JobConfig::new()
        .checkpoint_interval(Duration::from_millis(20))
        .checkpoint_storage(storage)
        .restart_strategy(RestartStrategy::fixed_delay(2, Duration::ZERO))
        .batch_size(16)
        .worker_threads(2);
    let sink = CollectSink::new();
    let records = 3000;
    let metrics = runtime().block_on(async {
        wordcount_like(config, records, 2, sink.clone())
            .spawn()
            .unwrap()
            .join()
            .await
            .unwrap()
    });
    assert_eq!(metrics.restarts, 1, "{metrics:?}");
    assert_exactly_once(&sink.committed(), records);
}

/// A restore reads task states through the storage that wrote them, not
/// from files beside the metadata: a storage that keeps them elsewhere (as
/// an object store does) resumes exactly.
#[test]
fn a_restore_reads_task_states_through_the_checkpoint_storage() {
    let dir = tempfile::tempdir().unwrap();
    let storage = TestStorage {
        states_in_memory: Some(Arc::default()),
        ..TestStorage::new(dir.path())
    };
    let config = || {
        JobConfig::new()
            .checkpoint_interval(Duration::from_millis(20))
            .checkpoint_storage(storage.clone())
            .restart_strategy(RestartStrategy::none())
            .batch_size(16)
            .worker_threads(2)
    };
    let sink = CollectSink::new();
    let records = 3000;
    run_then_stop(wordcount_like(config(), records, 2, sink.clone()));
    assert!((sink.committed().len() as u64) < records);
    wordcount_like(config(), records, 2, sink.clone())
        .run()
        .unwrap();
    assert_exactly_once(&sink.committed(), records);
}

/// A task whose snapshot arrives after its checkpoint expired and was
/// discarded drops it quietly: the attempt goes on (no restart), the next
/// checkpoints complete, and the output is exact.
#[test]
fn a_late_snapshot_of_a_discarded_checkpoint_is_dropped_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let storage = TestStorage {
        expire_checkpoint_2: true,
        ..TestStorage::new(dir.path())
    };
    let config = JobConfig::new()
        .checkpoint_interval(Duration::from_millis(20))
        .checkpoint_timeout(Duration::from_millis(300))
        .checkpoint_storage(storage)
        .restart_strategy(RestartStrategy::none())
        .batch_size(16)
        .worker_threads(2);
    let sink = CollectSink::new();
    let records = 3000;
    let metrics = runtime().block_on(async {
        let job = wordcount_like(config, records, 2, sink.clone());
        job.spawn().unwrap().join().await.unwrap()
    });
    assert_eq!(metrics.restarts, 0, "{metrics:?}");
    assert!(metrics.checkpoints_expired >= 1, "{metrics:?}");
    assert_exactly_once(&sink.committed(), records);
}

/// A sink whose "broker" aborts a transaction older than `timeout`, as
/// Kafka does after `transaction.timeout.ms`: a late commit fails.
#[derive(Clone)]
struct AbortsOldTransactions {
    inner: CollectSink<(u64, u64)>,
    timeout: Duration,
    lifetimes: Arc<std::sync::Mutex<Vec<Duration>>>,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

impl AbortsOldTransactions {
    fn settle(
        &mut self,
        (txn, began): (exactly::sink::CollectTransaction<(u64, u64)>, u64),
    ) -> Result<(), BoxError> {
        let lifetime = Duration::from_millis(unix_ms() - began);
        if lifetime > self.timeout {
            return Err(
                format!("the broker aborted it after {lifetime:?}, past its timeout").into(),
            );
        }
        self.lifetimes.lock().unwrap().push(lifetime);
        self.inner.commit(txn)
    }
}

impl TwoPhaseCommitSink for AbortsOldTransactions {
    type Item = (u64, u64);
    type Transaction = (exactly::sink::CollectTransaction<(u64, u64)>, u64);

    fn name(&self) -> String {
        "aborts-old-transactions".into()
    }
    fn transaction_timeout(&self) -> Option<Duration> {
        Some(self.timeout)
    }
    fn open(&mut self, ctx: &exactly::sink::SinkContext) -> Result<(), BoxError> {
        self.inner.open(ctx)
    }
    fn begin_transaction(&mut self, checkpoint_id: u64) -> Result<Self::Transaction, BoxError> {
        Ok((self.inner.begin_transaction(checkpoint_id)?, unix_ms()))
    }
    fn write(
        &mut self,
        txn: &mut Self::Transaction,
        batch: Vec<(u64, u64)>,
    ) -> Result<(), BoxError> {
        self.inner.write(&mut txn.0, batch)
    }
    fn pre_commit(&mut self, txn: &mut Self::Transaction) -> Result<(), BoxError> {
        self.inner.pre_commit(&mut txn.0)
    }
    fn commit(&mut self, txn: Self::Transaction) -> Result<(), BoxError> {
        self.settle(txn)
    }
    fn abort(&mut self, txn: Self::Transaction) -> Result<(), BoxError> {
        self.inner.abort(txn.0)
    }
    fn recover_and_commit(&mut self, txn: Self::Transaction) -> Result<(), BoxError> {
        self.settle(txn)
    }
}

/// A sink task stalls once for longer than the checkpoint timeout, right
/// after pre-committing: that checkpoint expires, and its transaction
/// would be committed by the next one past the sink's transaction timeout.
/// The runtime fails the attempt first and replays, so every transaction
/// is committed within its timeout and the output is exact.
#[test]
fn no_transaction_outlives_the_transaction_timeout_when_a_checkpoint_expires() {
    let dir = tempfile::tempdir().unwrap();
    let stalled = Arc::new(AtomicBool::new(false));
    let stall = Arc::clone(&stalled);
    let hook: exactly::fault::FaultHook = Arc::new(move |event| {
        if event.point.name() == "after-pre-commit"
            && event.point.to_string().contains("checkpoint 3)")
            && !stall.swap(true, Ordering::SeqCst)
        {
            std::thread::sleep(Duration::from_millis(1600));
        }
        Ok(())
    });
    let config = JobConfig::new()
        .checkpoint_interval(Duration::from_millis(20))
        .checkpoint_timeout(Duration::from_millis(300))
        .checkpoint_dir(dir.path())
        .restart_strategy(RestartStrategy::fixed_delay(3, Duration::ZERO))
        .batch_size(16)
        .worker_threads(2)
        .fault_hook(hook);
    let sink = AbortsOldTransactions {
        inner: CollectSink::new(),
        timeout: Duration::from_millis(1500),
        lifetimes: Arc::new(std::sync::Mutex::new(Vec::new())),
    };
    let records = 3000;
    let job = Job::new("runtime-test", config);
    job.source(VecSource::new((0..records).collect::<Vec<u64>>()))
        .operator(slow)
        .key_by(|x: &u64| x % KEYS)
        .parallelism(2)
        .operator(count)
        .sink(sink.clone());
    let metrics = runtime().block_on(async { job.spawn().unwrap().join().await.unwrap() });
    assert!(stalled.load(Ordering::SeqCst), "the stall never happened");
    assert!(metrics.checkpoints_expired >= 1, "{metrics:?}");
    let lifetimes = sink.lifetimes.lock().unwrap().clone();
    assert!(
        lifetimes.iter().all(|l| *l <= sink.timeout),
        "a transaction outlived its timeout: {lifetimes:?}"
    );
    assert_exactly_once(&sink.inner.committed(), records);
}

/// Stop-with-savepoint: the final checkpoint is the savepoint, so a job
/// restored from it (in a new checkpoint directory) continues exactly
/// where the first stopped: the two runs' output holds every update once.
#[test]
fn a_job_stopped_with_a_savepoint_resumes_from_it_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let savepoint = dir.path().join("savepoint");
    let sink = CollectSink::new();
    let records = 3000;
    let first = wordcount_like(config(&dir.path().join("first")), records, 2, sink.clone());
    runtime().block_on(async {
        let handle = first.spawn().unwrap();
        while handle.metrics().checkpoints_completed < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let taken = handle.stop_with_savepoint(&savepoint).await.unwrap();
        assert_eq!(taken, savepoint.as_path().into());
        handle.join().await.unwrap();
    });
    let after_first = sink.committed().len() as u64;
    assert!(after_first < records, "the first run read everything");
    let resumed = config(&dir.path().join("second")).restore_from(&savepoint);
    wordcount_like(resumed, records, 3, sink.clone())
        .run()
        .unwrap();
    assert_exactly_once(&sink.committed(), records);
}

/// A source that never ends: it counts up from where it was restored, a
/// few records a call, and notes where each subtask opened.
#[derive(Clone, Default)]
struct Endless {
    next: u64,
    opened_at: Arc<std::sync::Mutex<Vec<u64>>>,
}

impl Source for Endless {
    type Item = u64;
    type Position = u64;

    fn name(&self) -> String {
        "endless".into()
    }
    async fn open(
        &mut self,
        _ctx: &exactly::source::SubtaskContext,
        restored: Vec<u64>,
    ) -> Result<(), BoxError> {
        self.next = restored.into_iter().max().unwrap_or(0);
        self.opened_at.lock().unwrap().push(self.next);
        Ok(())
    }
    async fn poll_batch(
        &mut self,
        out: &mut Vec<u64>,
        max: usize,
    ) -> Result<exactly::source::SourcePoll, BoxError> {
        let n = max.min(4) as u64;
        out.extend(self.next..self.next + n);
        self.next += n;
        Ok(exactly::source::SourcePoll::Data)
    }
    fn position(&self) -> u64 {
        self.next
    }
}

/// Waits until `condition` holds of the running job, failing if the job
/// ends first. Every wait of the tests below is on a condition the job
/// must reach, never on a length of time.
async fn while_running_until(
    handle: &exactly::JobHandle,
    what: &str,
    condition: impl Fn(&exactly::MetricsSnapshot) -> bool,
) {
    while !condition(&handle.metrics()) {
        assert!(!handle.is_finished(), "the job ended before {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the job has completed `more` checkpoints beyond `from`,
/// failing if it ends first.
async fn completes_more_checkpoints(handle: &exactly::JobHandle, from: u64, more: u64) {
    while_running_until(handle, "it completed more checkpoints", |m| {
        m.checkpoints_completed >= from + more
    })
    .await;
}

/// Waits until the job has read more records than it had when called,
/// failing if it ends first.
async fn reads_more(handle: &exactly::JobHandle) {
    let read = handle.metrics().records_in;
    while_running_until(handle, "it read more records", |m| m.records_in > read).await;
}

/// Waits until `sink` holds more than `committed` records, failing if the
/// job ends first (a commit follows its checkpoint's completion on the
/// sink's task, so the counters cannot tell when it happened).
async fn commits_more(handle: &exactly::JobHandle, sink: &CollectSink<u64>, committed: usize) {
    while sink.committed().len() <= committed {
        assert!(
            !handle.is_finished(),
            "the job ended before it committed more records"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A stop-with-savepoint whose savepoint cannot be written (its target is
/// under a regular file) returns the error and leaves the job running, as
/// Flink does: records keep reaching the sink and checkpoints keep
/// completing; a second one into a good directory stops the job.
#[test]
fn a_failed_stop_with_savepoint_leaves_the_job_running() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("a-regular-file");
    std::fs::write(&blocker, "not a directory").unwrap();
    let sink = CollectSink::new();
    let job = Job::new("endless", config(&dir.path().join("checkpoints")));
    job.source(Endless::default())
        .operator(slow)
        .sink(sink.clone());
    runtime().block_on(async {
        let handle = job.spawn().unwrap();
        completes_more_checkpoints(&handle, 0, 1).await;
        let err = handle
            .stop_with_savepoint(blocker.join("savepoint"))
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("a-regular-file/savepoint") && message.contains("keeps running"),
            "the error does not name the target and what became of the job: {message}"
        );
        let Error::Savepoint(exactly::SavepointError::Export { source, .. }) = &err else {
            panic!("expected SavepointError::Export, got {err:?}");
        };
        let exactly::storage::StorageError::Io { source: io, .. } = source else {
            panic!("expected the I/O error as the source, got {source:?}");
        };
        assert_eq!(io.kind(), std::io::ErrorKind::NotADirectory, "{io:?}");
        let completed = handle.metrics().checkpoints_completed;
        let committed = sink.committed().len();
        completes_more_checkpoints(&handle, completed, 2).await;
        commits_more(&handle, &sink, committed).await;
        let good = dir.path().join("savepoint");
        assert_eq!(
            handle.stop_with_savepoint(&good).await.unwrap(),
            good.as_path().into()
        );
        handle.join().await.unwrap();
        assert!(good.join("_metadata").exists());
    });
}

/// An endless job in `dir` whose sink's next pre-commit fails once the
/// returned flag is set, with no periodic checkpoints (the interval is an
/// hour): the only checkpoint triggered while the fault is armed is the
/// one a savepoint request asks for.
fn with_a_pre_commit_fault(
    dir: &Path,
    restart: RestartStrategy,
) -> (Job, Arc<AtomicBool>, CollectSink<u64>) {
    let armed = Arc::new(AtomicBool::new(false));
    let hook_armed = Arc::clone(&armed);
    let hook: exactly::fault::FaultHook = Arc::new(move |event| {
        if matches!(
            event.point,
            exactly::fault::FaultPoint::AfterPreCommit { .. }
        ) && hook_armed.swap(false, Ordering::SeqCst)
        {
            return Err("the sink's pre-commit failed".into());
        }
        Ok(())
    });
    let sink = CollectSink::new();
    let config = config(&dir.join("checkpoints"))
        .checkpoint_interval(Duration::from_secs(3600))
        .restart_strategy(restart)
        .fault_hook(hook);
    let job = endless(config, sink.clone(), &Endless::default());
    (job, armed, sink)
}

/// A stop-with-savepoint during which a sink's pre-commit fails returns
/// that failure, typed; the job restarts from its last checkpoint and keeps
/// running, and a second stop-with-savepoint stops it.
#[test]
fn a_stop_with_savepoint_whose_pre_commit_fails_leaves_the_job_running() {
    let dir = tempfile::tempdir().unwrap();
    let (job, armed, sink) =
        with_a_pre_commit_fault(dir.path(), RestartStrategy::fixed_delay(2, Duration::ZERO));
    runtime().block_on(async {
        let handle = job.spawn().unwrap();
        reads_more(&handle).await;
        handle.savepoint(dir.path().join("before")).await.unwrap();
        armed.store(true, Ordering::SeqCst);
        let failed = dir.path().join("failed");
        let err = handle.stop_with_savepoint(&failed).await.unwrap_err();
        assert!(
            err.to_string().contains("the sink's pre-commit failed")
                && err.to_string().contains("keeps running"),
            "the error does not give the cause and what became of the job: {err}"
        );
        let Error::Savepoint(exactly::SavepointError::AttemptFailed { cause }) = &err else {
            panic!("expected SavepointError::AttemptFailed, got {err:?}");
        };
        assert!(
            matches!(
                **cause,
                Error::Task {
                    phase: "after-pre-commit",
                    ..
                }
            ),
            "{cause:?}"
        );
        assert!(!failed.exists(), "a failed savepoint was written");
        assert!(!armed.load(Ordering::SeqCst), "the fault never fired");
        // The job restarted from the first savepoint's checkpoint, reads
        // on, and its next checkpoint commits what it read.
        reads_more(&handle).await;
        let committed = sink.committed().len();
        handle.savepoint(dir.path().join("after")).await.unwrap();
        commits_more(&handle, &sink, committed).await;
        assert_eq!(handle.metrics().restarts, 1);
        let good = dir.path().join("savepoint");
        assert_eq!(
            handle.stop_with_savepoint(&good).await.unwrap(),
            good.as_path().into()
        );
        handle.join().await.unwrap();
    });
}

/// A stop-with-savepoint during which the job fails for good (here: no
/// restarts allowed) does not claim that the job keeps running: it
/// returns `SavepointError::JobFailed`, and `join` returns the failure.
#[test]
fn a_stop_with_savepoint_of_a_job_that_fails_for_good_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (job, armed, _) = with_a_pre_commit_fault(dir.path(), RestartStrategy::none());
    runtime().block_on(async {
        let handle = job.spawn().unwrap();
        reads_more(&handle).await;
        armed.store(true, Ordering::SeqCst);
        let err = handle
            .stop_with_savepoint(dir.path().join("failed"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Savepoint(exactly::SavepointError::JobFailed)),
            "{err:?}"
        );
        let ended = handle.join().await.unwrap_err();
        assert!(
            ended.to_string().contains("the sink's pre-commit failed"),
            "{ended}"
        );
    });
}

/// An endless job on `config` into `sink`, whose source notes where it
/// opened into `opened_at`.
fn endless(config: JobConfig, sink: CollectSink<u64>, opened_at: &Endless) -> Job {
    let job = Job::new("endless", config);
    job.source(opened_at.clone()).operator(slow).sink(sink);
    job
}

/// Runs an endless job in checkpoint directory `checkpoints`, takes the
/// savepoint `savepoint` after its first checkpoint, and stops it two
/// checkpoints later: the directory then holds checkpoints newer than the
/// savepoint, and commit markers past it. The job reads records between
/// its first checkpoint and the savepoint (so the savepoint has a pending
/// transaction with records) and after the savepoint (so its newest
/// checkpoint's position differs from the savepoint's).
fn an_older_run_with_a_savepoint(checkpoints: &Path, savepoint: &Path) {
    let job = endless(config(checkpoints), CollectSink::new(), &Endless::default());
    runtime().block_on(async {
        let handle = job.spawn().unwrap();
        completes_more_checkpoints(&handle, 0, 1).await;
        reads_more(&handle).await;
        handle.savepoint(savepoint).await.unwrap();
        reads_more(&handle).await;
        let completed = handle.metrics().checkpoints_completed;
        completes_more_checkpoints(&handle, completed, 2).await;
        handle.stop();
        handle.join().await.unwrap();
    });
}

/// Starts `job`, waits for its first checkpoint, and stops it.
fn run_one_checkpoint(job: Job) {
    runtime().block_on(async {
        let handle = job.spawn().unwrap();
        completes_more_checkpoints(&handle, 0, 1).await;
        handle.stop();
        handle.join().await.unwrap();
    });
}

/// `config` with a fault that fails the job when it triggers its first
/// checkpoint, and no restarts: a start that crashes before its first
/// checkpoint completes.
fn crashing(config: JobConfig) -> JobConfig {
    let fails: exactly::fault::FaultHook = Arc::new(|event| match event.point {
        exactly::fault::FaultPoint::CheckpointTriggered { .. } => {
            Err("crashed before its first checkpoint".into())
        }
        _ => Ok(()),
    });
    config
        .fault_hook(fails)
        .restart_strategy(RestartStrategy::none())
}

/// A start from a savepoint into a checkpoint directory holding newer
/// checkpoints of an older run fails before its first checkpoint; the
/// same start again restores the savepoint again, not the older run's
/// newest checkpoint (which would undo the rollback the user asked for).
#[test]
fn a_restart_from_a_savepoint_never_resumes_an_older_runs_newer_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (checkpoints, savepoint) = (dir.path().join("checkpoints"), dir.path().join("savepoint"));
    an_older_run_with_a_savepoint(&checkpoints, &savepoint);

    let restored = || config(&checkpoints).restore_from(&savepoint);
    let first = Endless::default();
    endless(crashing(restored()), CollectSink::new(), &first)
        .run()
        .unwrap_err();
    // Without restore_from, the directory's lineage still has no
    // checkpoint: its savepoint again.
    let unnamed = Endless::default();
    endless(crashing(config(&checkpoints)), CollectSink::new(), &unnamed)
        .run()
        .unwrap_err();
    let second = Endless::default();
    run_one_checkpoint(endless(restored(), CollectSink::new(), &second));
    let opened_at = |source: &Endless| source.opened_at.lock().unwrap().clone();
    let (first, unnamed, second) = (opened_at(&first), opened_at(&unnamed), opened_at(&second));
    assert_eq!(
        second, first,
        "the second start did not restore the savepoint (it opened at {second:?}, the savepoint at {first:?})"
    );
    assert_eq!(
        unnamed, first,
        "a start without restore_from did not restore the lineage's savepoint"
    );
}

/// A start without `restore_from` whose directory's lineage began from a
/// savepoint, and has no checkpoint yet, restores that savepoint; when the
/// savepoint is gone it fails, naming it and what to do, rather than fall
/// back to any other checkpoint.
#[test]
fn a_lineage_whose_savepoint_is_gone_fails_at_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (checkpoints, savepoint) = (dir.path().join("checkpoints"), dir.path().join("savepoint"));
    an_older_run_with_a_savepoint(&checkpoints, &savepoint);
    let restored = crashing(config(&checkpoints).restore_from(&savepoint));
    endless(restored, CollectSink::new(), &Endless::default())
        .run()
        .unwrap_err();
    std::fs::remove_dir_all(&savepoint).unwrap();
    let err = endless(
        config(&checkpoints),
        CollectSink::new(),
        &Endless::default(),
    )
    .run()
    .unwrap_err();
    assert!(
        matches!(&err, Error::LineageSavepoint { savepoint: named, .. } if *named == savepoint.as_path().into()),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("restore another savepoint") && message.contains("no _metadata"),
        "{message}"
    );
}

/// A savepoint restored into a checkpoint directory whose commit markers
/// come from an older run (past the savepoint's checkpoint) still commits
/// the savepoint's pending transaction: the markers are of another
/// lineage.
#[test]
fn a_savepoint_restored_over_an_older_runs_commit_markers_commits_its_pending_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let (checkpoints, savepoint) = (dir.path().join("checkpoints"), dir.path().join("savepoint"));
    an_older_run_with_a_savepoint(&checkpoints, &savepoint);

    let sink = CollectSink::new();
    let source = Endless::default();
    run_one_checkpoint(endless(
        config(&checkpoints).restore_from(&savepoint),
        sink.clone(),
        &source,
    ));
    let opened_at = source.opened_at.lock().unwrap()[0];
    // The savepoint's own transaction holds the records read since the
    // checkpoint before it (the source reads between any two barriers).
    assert!(
        sink.committed().contains(&(opened_at - 1)),
        "record {} of the savepoint's pending transaction was not committed",
        opened_at - 1
    );
}
