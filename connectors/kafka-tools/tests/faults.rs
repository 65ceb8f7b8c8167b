//! Faults that only a real broker makes testable, each on the crash
//! harness's pipeline (`exactly-crash-harness child`, a separate process
//! that can die for real): a transaction that times out while the job is
//! down, a zombie instance, lingering transactions after a scale-down, and
//! a recovery repeated from the same checkpoint. Every run's output is
//! checked by `exactly-crash-harness check`: both oracles agree, nothing is
//! left open, every record exactly once.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use exactly_kafka_tools::testing::{broker, read_topic, unique_topic};

/// The bound on any one run of the pipeline.
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// The harness binary with the broker address set.
fn harness(broker: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_exactly-crash-harness"));
    command
        .env("EXACTLY_KAFKA_BOOTSTRAP", broker)
        .env_remove("EXACTLY_CRASH_AT");
    command
}

/// Waits for `child` at most [`RUN_LIMIT`], then kills it and fails.
fn finish(mut child: Child, what: &str) -> Output {
    let started = Instant::now();
    while child.try_wait().expect("waiting for the child").is_none() {
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let output = child.wait_with_output().expect("the killed child's output");
            panic!(
                "{what} did not end within {RUN_LIMIT:?}:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("the child's output")
}

/// One pipeline: its topics, prefix and checkpoint directory.
struct Pipeline {
    broker: String,
    input: String,
    output: String,
    prefix: String,
    checkpoints: PathBuf,
    records: u64,
    _dir: tempfile::TempDir,
}

impl Pipeline {
    /// Creates the topics and writes `records` input records.
    fn new(test: &str, records: u64) -> Self {
        let broker = broker();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let pipeline = Pipeline {
            input: unique_topic(&format!("{test}-in")),
            output: unique_topic(&format!("{test}-out")),
            prefix: unique_topic(test),
            checkpoints: dir.path().join("checkpoints"),
            records,
            _dir: dir,
            broker,
        };
        let output = harness(&pipeline.broker)
            .args(["input", "--input", &pipeline.input, "--output"])
            .arg(&pipeline.output)
            .args(["--records", &records.to_string()])
            .output()
            .expect("the harness runs");
        assert!(
            output.status.success(),
            "writing the input failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        pipeline
    }

    /// The pipeline as a child process, aborting at `crash_at`
    /// (`<phase>:<n>`) if given, with extra `child` options; it stops
    /// once `stop_after` output records are visible.
    fn spawn_until(&self, crash_at: Option<&str>, extra: &[&str], stop_after: u64) -> Child {
        self.spawn_in(&self.checkpoints, crash_at, extra, stop_after)
    }

    /// [`Self::spawn_until`] with the checkpoint directory `checkpoints`.
    fn spawn_in(
        &self,
        checkpoints: &Path,
        crash_at: Option<&str>,
        extra: &[&str],
        stop_after: u64,
    ) -> Child {
        let mut command = harness(&self.broker);
        command
            .args(["child", "--input", &self.input, "--output", &self.output])
            .args(["--prefix", &self.prefix, "--checkpoints"])
            .arg(checkpoints)
            .args(["--records", &stop_after.to_string()])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(spec) = crash_at {
            command.env("EXACTLY_CRASH_AT", spec);
        }
        command.spawn().expect("the pipeline starts")
    }

    /// Runs the pipeline once to its end.
    fn run(&self, crash_at: Option<&str>, extra: &[&str]) -> Output {
        let child = self.spawn_until(crash_at, extra, self.records);
        finish(child, "the pipeline")
    }

    /// Runs the pipeline and asserts that it aborted itself at `crash_at`.
    fn crash(&self, crash_at: &str, extra: &[&str]) {
        let output = self.run(Some(crash_at), extra);
        assert_eq!(
            output.status.signal(),
            Some(6),
            "the pipeline was to abort at {crash_at}, it ended with {}:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Runs the pipeline without faults and asserts that it finished.
    fn complete(&self, extra: &[&str]) {
        let output = self.run(None, extra);
        assert!(
            output.status.success(),
            "the pipeline failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The harness's check of the output: both oracles agree, no
    /// transaction is left open, every record is there once.
    fn assert_exactly_once(&self) {
        let output = harness(&self.broker)
            .args(["check", "--output", &self.output])
            .args(["--records", &self.records.to_string()])
            .output()
            .expect("the harness runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "the output is not exactly once:\n{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout.contains(&format!("{} records, 0 lost, 0 duplicated", self.records)),
            "{stdout}"
        );
    }

    /// `exactly-audit` on the output, as JSON, with its exit code.
    fn audit(&self) -> (Option<i32>, serde_json::Value) {
        let output = Command::new(env!("CARGO_BIN_EXE_exactly-audit"))
            .args(["--bootstrap", &self.broker, "--topic", &self.output])
            .args(["--prefix", &self.prefix, "--json"])
            .output()
            .expect("exactly-audit runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "exactly-audit printed no JSON ({e}):\n{stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        (output.status.code(), report)
    }
}

/// 4.1: the job dies after a checkpoint completes and before its commit,
/// and stays down longer than the sink's `transaction.timeout.ms`. The
/// broker aborts the transaction; the restarted job stops at once with the
/// LOST error naming the transaction, checkpoint and partitions.
#[test]
fn a_transaction_that_times_out_while_the_job_is_down_is_reported_lost() {
    let pipeline = Pipeline::new("timeout", 300);
    // One checkpoint after 2 s, when all 300 records are in its
    // transactions; a 7 s transaction timeout, which preflight accepts
    // with a 2 s checkpoint timeout and a 2 s restart budget.
    let short = [
        "--checkpoint-interval-ms",
        "2000",
        "--transaction-timeout-ms",
        "7000",
        "--checkpoint-timeout-ms",
        "2000",
        "--restart-budget-ms",
        "2000",
    ];
    pipeline.crash("after-checkpoint-complete:1", &short);

    // The broker aborts it about 7 s after it began, within its 1 s
    // cleanup interval; wait for the ABORT marker.
    let started = Instant::now();
    let report = loop {
        let (_, report) = pipeline.audit();
        if report["totals"]["aborted_transactions"].as_u64() > Some(0)
            && report["totals"]["open_transactions"] == 0
        {
            break report;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the broker did not abort the timed-out transaction within 30 s: {report:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(report["totals"]["visible_records"], 0, "{report:#}");
    assert!(
        report["totals"]["aborted_records"].as_u64() > Some(0),
        "{report:#}"
    );

    let started = Instant::now();
    let output = pipeline.run(None, &short);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && output.status.signal().is_none(),
        "the restart must fail with an error, not run on: {}\n{stderr}",
        output.status
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the LOST error took {:?}: a restart loop?",
        started.elapsed()
    );
    assert!(
        stderr.contains("are LOST")
            && stderr.contains(&format!("transaction `{}-", pipeline.prefix))
            && stderr.contains("of checkpoint 1")
            && stderr.contains(&format!("on {} partitions", pipeline.output)),
        "the error must name the transaction, checkpoint and partitions:\n{stderr}"
    );
    let visible: usize = read_topic(&pipeline.broker, &pipeline.output)
        .expect("both oracles read the output")
        .iter()
        .map(|p| p.records.len())
        .sum();
    assert_eq!(visible, 0, "nothing may have been committed silently");
}

/// 4.4: a second instance of the same job (same prefix, restoring a copy
/// of the first's checkpoints, as a failover onto replicated storage does)
/// starts while the first is frozen (SIGSTOP: a long GC pause or a
/// partition). The second takes over and finishes; the first, thawed, is
/// fenced and stops with a clear error instead of restarting; the output
/// holds everything once. (Both on one directory is refused at start: the
/// directory is locked.)
#[test]
fn a_zombie_instance_is_fenced_and_stops() {
    let pipeline = Pipeline::new("zombie", 20_000);
    // The zombie never stops by itself: it must be stopped by the fence.
    // Its client timeout outlasts any freeze the successor's run can cause
    // (at most RUN_LIMIT): with the default 30 s, a successor slowed down
    // by a loaded machine left the thawed zombie's records timed out, a
    // retryable failure, and the zombie restarted instead of meeting the
    // fence (seen once in CI, load average 10).
    let zombie = pipeline.spawn_until(None, &["--client-timeout-ms", "300000"], u64::MAX);
    let started = Instant::now();
    while read_topic(&pipeline.broker, &pipeline.output)
        .expect("both oracles read the output")
        .iter()
        .all(|p| p.records.is_empty())
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the first instance committed nothing within 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    signal(&zombie, "STOP");

    let failover = pipeline._dir.path().join("failover");
    copy_dir(&pipeline.checkpoints, &failover);
    let successor = pipeline.spawn_in(&failover, None, &[], pipeline.records);
    let output = finish(successor, "the successor");
    assert!(
        output.status.success(),
        "the successor failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    signal(&zombie, "CONT");
    let output = finish(zombie, "the zombie");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && output.status.signal().is_none(),
        "the zombie must stop with an error: {}\n{stderr}",
        output.status
    );
    assert!(
        stderr.contains("was fenced") && stderr.contains("Another instance of this job"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("restart 1 of"),
        "a fenced instance must not restart (it would fence the other back):\n{stderr}"
    );
    pipeline.assert_exactly_once();
}

/// Copies the directory `from` to `to`, recursively.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy");
    for entry in std::fs::read_dir(from).expect("read the checkpoints") {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a checkpoint file");
        }
    }
}

/// Sends `kill -<name>` to `child`.
fn signal(child: &Child, name: &str) {
    let status: ExitStatus = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name} {} failed", child.id());
}

/// 4.5: the job runs with sink parallelism 2 and dies with a transaction
/// open on both subtasks before any checkpoint completes; it restarts with
/// parallelism 1. Subtask 1's transaction belongs to no subtask any more:
/// the restarted sink finds it with ListTransactions and aborts it, so the
/// last stable offset reaches the high watermark.
#[test]
fn transactions_left_by_a_scaled_down_subtask_are_aborted_at_start() {
    let pipeline = Pipeline::new("scale-down", 2000);
    // Both sink subtasks pre-commit checkpoint 1 (after 2 s: every record
    // is in their transactions), and the process dies before it completes.
    pipeline.crash(
        "after-pre-commit:2",
        &["--parallelism", "2", "--checkpoint-interval-ms", "2000"],
    );
    let (code, report) = pipeline.audit();
    let listed: Vec<&str> = report["transactional_ids"]["transactions"]
        .as_array()
        .unwrap_or_else(|| panic!("no listed transactions: {report:#}"))
        .iter()
        .filter_map(|t| t["transactional_id"].as_str())
        .collect();
    let subtask_1 = format!("{}-1-0", pipeline.prefix);
    assert!(
        listed.contains(&subtask_1.as_str()),
        "exactly-audit must list {subtask_1} as open under the prefix: {report:#}"
    );
    assert_eq!(
        report["transactional_ids"]["status"], "listed",
        "{report:#}"
    );
    assert!(
        report["totals"]["open_transactions"].as_u64() >= Some(2),
        "{report:#}"
    );
    assert_eq!(code, Some(0), "open transactions alone exit 0");

    pipeline.complete(&["--parallelism", "1"]);
    pipeline.assert_exactly_once();
    let (_, after) = pipeline.audit();
    assert_eq!(
        after["transactional_ids"]["transactions"],
        serde_json::json!([]),
        "{after:#}"
    );
    assert_eq!(after["totals"]["open_transactions"], 0, "{after:#}");
}

/// 4.6: the job dies after a checkpoint completes and before its commit;
/// the next process recovers the transaction (the broker acknowledges the
/// EndTxn) and dies before writing its commit marker; the third recovers
/// the same transaction again. Nothing is committed twice or lost.
#[test]
fn a_recovery_repeated_from_the_same_checkpoint_commits_once() {
    let pipeline = Pipeline::new("recover-twice", 300);
    let slow = ["--checkpoint-interval-ms", "2000"];
    pipeline.crash("after-checkpoint-complete:1", &slow);
    pipeline.crash("after-recovery-commit:1", &slow);
    let visible: usize = read_topic(&pipeline.broker, &pipeline.output)
        .expect("both oracles read the output")
        .iter()
        .map(|p| p.records.len())
        .sum();
    assert!(
        visible > 0,
        "the first recovery committed the checkpoint's transactions"
    );
    pipeline.complete(&slow);
    pipeline.assert_exactly_once();
}
