//! The lifetime guard of transactional sinks against the bound the
//! preflight checks (`JobSettings::longest_transaction_lifetime`): a job
//! whose bound stays below its sink's transaction timeout runs through
//! checkpoints that complete slowly, within their timeout, without the
//! guard failing it (issue 19, review finding 3).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use exactly::BoxError;
use exactly::prelude::*;
use exactly::sink::{CollectSink, CollectTransaction, SinkContext};

/// Lets each record take a little time, so that checkpoints fall between
/// records.
#[operator]
fn slow(x: u64) -> u64 {
    std::thread::sleep(Duration::from_micros(300));
    x
}

/// A collecting sink whose transactions must be committed within
/// `timeout` of their beginning, as a Kafka transaction must within
/// `transaction.timeout.ms`.
#[derive(Clone)]
struct TimedSink {
    inner: CollectSink<u64>,
    timeout: Duration,
}

impl TwoPhaseCommitSink for TimedSink {
    type Item = u64;
    type Transaction = CollectTransaction<u64>;

    fn name(&self) -> String {
        "timed".into()
    }
    fn transaction_timeout(&self) -> Option<Duration> {
        Some(self.timeout)
    }
    fn open(&mut self, ctx: &SinkContext) -> Result<(), BoxError> {
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
        self.inner.commit(txn)
    }
    fn abort(&mut self, txn: Self::Transaction) -> Result<(), BoxError> {
        self.inner.abort(txn)
    }
}

/// Checkpoints 2 and 3 each take 700 ms to complete after every task has
/// acknowledged them, within the 1 s checkpoint timeout. The bound is
/// max(50 ms, 1 s) + 1 s = 2 s, below the sink's 2.1 s, so the job must
/// run to the end without a failure. The guard that measured a
/// transaction's age at every write against the timeout less the
/// checkpoint timeout (1.1 s) failed it: the transaction that waits for
/// checkpoint 3 began before checkpoint 2's slow completion.
#[test]
fn slow_checkpoints_within_the_bound_the_preflight_checks_never_trip_the_guard() {
    let dir = tempfile::tempdir().unwrap();
    let delayed = Arc::new(AtomicU32::new(0));
    let delays = Arc::clone(&delayed);
    let hook: exactly::fault::FaultHook = Arc::new(move |event| {
        let point = event.point.to_string();
        if event.point.name() == "before-checkpoint-complete"
            && (point.contains("checkpoint 2)") || point.contains("checkpoint 3)"))
        {
            delays.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(700));
        }
        Ok(())
    });
    let config = JobConfig::new()
        .checkpoint_interval(Duration::from_millis(50))
        .checkpoint_timeout(Duration::from_millis(1000))
        .checkpoint_dir(dir.path())
        .restart_strategy(RestartStrategy::none())
        .batch_size(8)
        .worker_threads(2)
        .fault_hook(hook);
    let sink = TimedSink {
        inner: CollectSink::new(),
        timeout: Duration::from_millis(2100),
    };
    let records = 12_000;
    let job = Job::new("transaction-lifetime", config);
    job.source(VecSource::new((0..records).collect::<Vec<u64>>()))
        .operator(slow)
        .sink(sink.clone());
    let metrics = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async { job.spawn().unwrap().join().await })
        .unwrap_or_else(|e| panic!("the guard failed a job the preflight accepts: {e}"));
    assert_eq!(
        delayed.load(Ordering::SeqCst),
        2,
        "both slow checkpoints happened"
    );
    assert_eq!(metrics.checkpoints_expired, 0, "{metrics:?}");
    let mut committed = sink.inner.committed();
    committed.sort_unstable();
    assert_eq!(committed, (0..records).collect::<Vec<_>>());
}
