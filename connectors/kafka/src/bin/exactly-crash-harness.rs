//! The crash harness: runs an exactly-once Kafka→Kafka pipeline as a child
//! process, kills it again and again — by aborting itself at named phases
//! of the checkpoint protocol, with SIGKILL at random times, and by
//! SIGKILLing the broker under it — restarts it, and finally checks the
//! whole output: every input record's effect exactly once, per-key order
//! kept, final state equal to a direct count, nothing left open.
//!
//! ```text
//! scripts/kafka-up
//! cargo run -p exactly-kafka --bin exactly-crash-harness                       # 32 kills, ~1 minute
//! cargo run -p exactly-kafka --bin exactly-crash-harness -- --broker-restarts 3 # and SIGKILL the broker 3 times
//! cargo run -p exactly-kafka --bin exactly-crash-harness -- --soak             # 300 kills, 200000 records
//! ```
//!
//! The input is `N` records `k<key> <seq>` (16 keys, sequence numbers per
//! key from 0). The pipeline keys them and emits `k<key> <seq> <count>`
//! for each, so a lost or doubled record is named by key and sequence. The
//! output is read by both oracles ([`exactly_kafka::oracle`]): the raw
//! committed reader and an rdkafka read_committed consumer, which must
//! agree record for record.
//!
//! A kill counts only when the child really died of it (SIGABRT at a
//! phase, SIGKILL otherwise). A child that exits with an error is a
//! failure of the run, never a kill.
//!
//! The subcommands `input`, `child` and `check` run one step on its own;
//! the fault tests of `connectors/kafka/tests/broker/faults.rs` drive the
//! pipeline through them.
//!
//! The last line of a run is the result, for example
//! `crash-harness: 32 kills, 20000 records, 0 lost, 0 duplicated`; the exit
//! code is 1 on any loss, duplicate, order violation, disagreement of the
//! oracles, transaction left open, child error, or missed phase.

use std::collections::{BTreeMap, VecDeque};
use std::io::IsTerminal;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use exactly::fault::{FaultEvent, FaultHook, FaultPoint};
use exactly::prelude::*;
use exactly::storage::{CheckpointStorage, LocalStorage};
use exactly_kafka::client::{ClientSettings, MissingTopics, ensure_topics};
use exactly_kafka::deserialize::Utf8;
use exactly_kafka::oracle;
use exactly_kafka::sink::{DeliveryGuarantee, KafkaSink, OutputRecord};
use exactly_kafka::source::{KafkaRecord, KafkaSource};
use exactly_kafka::{CommittedReader, ReaderConfig, bootstrap_from_env};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const KEYS: u64 = 16;
/// The environment variable that makes the child abort at a phase:
/// `<fault point name>:<occurrence>`, or `during-sink-commit:<occurrence>`.
const CRASH_AT: &str = "EXACTLY_CRASH_AT";

/// Kill an exactly-once Kafka pipeline at every phase of the checkpoint
/// protocol and check that its output holds every record exactly once.
#[derive(Debug, Parser)]
#[command(
    name = "exactly-crash-harness",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    step: Option<Step>,
    #[command(flatten)]
    run: RunArgs,
}

/// The whole run (the default).
#[derive(Debug, Args)]
struct RunArgs {
    /// Kill cycles before the final clean run: every targeted phase twice,
    /// then random SIGKILLs up to this number.
    #[arg(long)]
    cycles: Option<u64>,
    /// Input records.
    #[arg(long)]
    records: Option<u64>,
    /// Seed of the random kill times and occurrences (default: the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Soak: 300 cycles and 200000 records unless given.
    #[arg(long)]
    soak: bool,
    /// Times to SIGKILL and restart the broker while the pipeline runs,
    /// with --restart-broker. The pipeline must ride them out through its
    /// restart strategy.
    #[arg(long, default_value_t = 0)]
    broker_restarts: u64,
    /// The shell command that SIGKILLs the broker and starts it again on
    /// the same data, returning once it is ready.
    #[arg(long, default_value = "scripts/kafka-up --restart")]
    restart_broker: String,
    /// Fail the run with fewer kills than this.
    #[arg(long, default_value_t = 30)]
    min_kills: u64,
    /// Skip the targeted phases: only broker restarts and random SIGKILLs
    /// (to soak one kind of fault).
    #[arg(long)]
    no_phases: bool,
    /// The client timeout of the pipeline while the broker restarts under
    /// it. The default outlasts a restart, so the job rides it out; a
    /// shorter one (say 4000) fails the attempt during the outage, so the
    /// job goes through its restart strategy and recovery instead.
    #[arg(long, default_value_t = 30_000)]
    outage_client_timeout_ms: u64,
}

#[derive(Debug, Subcommand)]
enum Step {
    /// Create the input and output topics and write the input records.
    Input(InputArgs),
    /// Run the pipeline until every record's update is visible, then stop
    /// gracefully. `EXACTLY_CRASH_AT=<phase>:<n>` makes it abort at the
    /// n-th occurrence of a phase.
    Child(ChildArgs),
    /// Check the output topic (both oracles, nothing left open, every
    /// record exactly once in per-key order).
    Check(CheckArgs),
}

#[derive(Debug, Args)]
struct InputArgs {
    /// The input topic, created.
    #[arg(long)]
    input: String,
    /// The output topic, created.
    #[arg(long)]
    output: String,
    /// Input records.
    #[arg(long)]
    records: u64,
}

#[derive(Debug, Args, Clone)]
struct ChildArgs {
    /// The input topic.
    #[arg(long)]
    input: String,
    /// The output topic.
    #[arg(long)]
    output: String,
    /// The sink's transactional-id prefix.
    #[arg(long)]
    prefix: String,
    /// The checkpoint directory.
    #[arg(long)]
    checkpoints: PathBuf,
    /// Stop once this many output records are visible.
    #[arg(long)]
    records: u64,
    /// The job's parallelism (source, keyed counter and sink).
    #[arg(long, default_value_t = 2)]
    parallelism: usize,
    /// The checkpoint interval.
    #[arg(long, default_value_t = 150)]
    checkpoint_interval_ms: u64,
    /// The sink's transaction.timeout.ms.
    #[arg(long, default_value_t = 600_000)]
    transaction_timeout_ms: u64,
    /// The checkpoint timeout.
    #[arg(long, default_value_t = 60_000)]
    checkpoint_timeout_ms: u64,
    /// The sink's restart budget (part of the preflight's timeout check).
    #[arg(long, default_value_t = 60_000)]
    restart_budget_ms: u64,
    /// In-process restarts allowed after a failure (1 s apart).
    #[arg(long, default_value_t = 30)]
    restarts: u32,
    /// The bound on each Kafka client call (ClientSettings::timeout).
    #[arg(long, default_value_t = 30_000)]
    client_timeout_ms: u64,
    /// Restore this savepoint (JobConfig::restore_from).
    #[arg(long)]
    restore_from: Option<PathBuf>,
    /// With --stop-with-savepoint-after-ms: where the savepoint goes.
    #[arg(long, requires = "stop_with_savepoint_after_ms")]
    savepoint: Option<PathBuf>,
    /// Stop with a savepoint (into --savepoint) after this long, then exit.
    #[arg(long, requires = "savepoint")]
    stop_with_savepoint_after_ms: Option<u64>,
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// The output topic.
    #[arg(long)]
    output: String,
    /// Input records.
    #[arg(long)]
    records: u64,
}

/// Targeted phases, each hit at least twice: the SDK's fault points, plus
/// `during-sink-commit` (the commit is sent, the process dies before the
/// answer). The recovery phases follow `after-checkpoint-complete`, which
/// leaves a complete checkpoint with an uncommitted transaction: a kill
/// `during-recovery` leaves it uncommitted still, for the kill
/// `after-recovery-commit` (the commit acknowledged, the commit marker not
/// yet written).
fn phases() -> Vec<&'static str> {
    const RECOVERY: [&str; 2] = ["during-recovery", "after-recovery-commit"];
    let mut phases: Vec<&'static str> = FaultPoint::NAMES
        .iter()
        .copied()
        .filter(|p| !RECOVERY.contains(p))
        .collect();
    let after = |phases: &Vec<&str>, name: &str| {
        phases
            .iter()
            .position(|p| *p == name)
            .map_or(phases.len(), |i| i + 1)
    };
    let at = after(&phases, "before-sink-commit");
    phases.insert(at, "during-sink-commit");
    let at = after(&phases, "after-checkpoint-complete");
    phases.splice(at..at, RECOVERY);
    phases
}

fn needs_something_to_recover(phase: &str) -> bool {
    matches!(phase, "during-recovery" | "after-recovery-commit")
}

/// The per-key state: how many records of the key were seen.
#[state]
#[derive(Default)]
struct Seen {
    count: u64,
}

/// Parses `k<key> <seq>`, emits `k<key> <seq> <count>`.
#[operator]
fn track(record: KafkaRecord<String>, #[state] seen: &mut Seen) -> String {
    std::thread::sleep(Duration::from_micros(150));
    seen.count += 1;
    format!("{} {}", record.value, seen.count)
}

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

fn key_of(line: &str) -> String {
    line.split(' ').next().unwrap_or_default().to_owned()
}

/// A fault hook that aborts the process at the configured phase.
fn crash_hook(spec: &str) -> Option<FaultHook> {
    let (phase, occurrence) = spec.split_once(':')?;
    let occurrence: u64 = occurrence.parse().ok()?;
    let (phase, delayed) = match phase {
        "during-sink-commit" => ("before-sink-commit".to_owned(), true),
        other => (other.to_owned(), false),
    };
    let seen = Arc::new(AtomicU64::new(0));
    Some(Arc::new(move |event: &FaultEvent<'_>| {
        if event.point.name() == phase && seen.fetch_add(1, Ordering::SeqCst) + 1 == occurrence {
            eprintln!("crash-harness child: aborting at {}", event.point);
            if delayed {
                // The commit is sent; die while it is in flight.
                std::thread::spawn(|| {
                    std::thread::sleep(Duration::from_millis(2));
                    std::process::abort();
                });
            } else {
                std::process::abort();
            }
        }
        Ok(())
    }))
}

/// Counts the output records visible (raw reader) on `topic`.
async fn visible_records(bootstrap: &str, topic: &str) -> Result<u64, exactly_kafka::ReadError> {
    let mut reader = CommittedReader::connect(ReaderConfig::new(bootstrap)).await?;
    let logs = reader.read_topic(topic).await?;
    Ok(logs.iter().map(|p| p.records.len() as u64).sum())
}

/// The child: runs the pipeline until `records` updates are visible in the
/// output, then stops gracefully.
fn child(args: &ChildArgs) -> Result<(), exactly::BoxError> {
    let settings = ClientSettings {
        timeout: Duration::from_millis(args.client_timeout_ms),
        ..ClientSettings::from_env()
    };
    let runtime_error = |e: &dyn std::fmt::Display| exactly::BoxError::from(e.to_string());
    let source = KafkaSource::builder(settings.clone())
        .topic(&args.input)
        .deserializer(Utf8)
        .build()
        .map_err(|e| runtime_error(&e))?;
    let sink = KafkaSink::builder(settings.clone(), &args.output, |line: String| {
        OutputRecord::keyed(key_of(&line), line)
    })
    .delivery_guarantee(DeliveryGuarantee::ExactlyOnce)
    .transactional_id_prefix(&args.prefix)
    .transaction_timeout(Duration::from_millis(args.transaction_timeout_ms))
    .restart_budget(Duration::from_millis(args.restart_budget_ms))
    .build()
    .map_err(|e| runtime_error(&e))?;
    let mut config = JobConfig::new()
        .parallelism(args.parallelism)
        .checkpoint_interval(Duration::from_millis(args.checkpoint_interval_ms))
        .checkpoint_timeout(Duration::from_millis(args.checkpoint_timeout_ms))
        .checkpoint_dir(&args.checkpoints)
        .restart_strategy(RestartStrategy::fixed_delay(
            args.restarts,
            Duration::from_secs(1),
        ))
        .batch_size(25)
        .queue_capacity(4)
        .progress_interval(Duration::from_secs(2));
    if let Some(hook) = std::env::var(CRASH_AT).ok().as_deref().and_then(crash_hook) {
        config = config.fault_hook(hook);
    }
    if let Some(savepoint) = &args.restore_from {
        config = config.restore_from(savepoint);
    }
    let job = Job::new("crash-harness", config);
    job.source(source)
        .key_by(|r: &KafkaRecord<String>| key_of(&r.value))
        .operator(track)
        .sink(sink);
    let runtime = tokio::runtime::Runtime::new()?;
    let ended: exactly::Result<()> = runtime.block_on(async {
        let handle = job.spawn()?;
        let started = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if handle.is_finished() {
                break;
            }
            if let (Some(after), Some(savepoint)) =
                (args.stop_with_savepoint_after_ms, &args.savepoint)
                && started.elapsed() >= Duration::from_millis(after)
            {
                let taken = handle.stop_with_savepoint(savepoint).await?;
                eprintln!(
                    "crash-harness child: stopped with a savepoint in {}",
                    taken.display()
                );
                return handle.join().await.map(drop);
            }
            // The broker may be restarting: count again on the next tick.
            if visible_records(&settings.bootstrap, &args.output)
                .await
                .is_ok_and(|n| n >= args.records)
            {
                break;
            }
        }
        handle.stop();
        handle.join().await.map(drop)
    });
    Ok(ended?)
}

fn produce_input(bootstrap: &str, topic: &str, records: u64) -> Result<(), String> {
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .create()
        .map_err(|e| e.to_string())?;
    let mut next_seq = [0u64; KEYS as usize];
    for i in 0..records {
        let key = (i * 7) % KEYS;
        let line = format!("k{key} {}", next_seq[key as usize]);
        next_seq[key as usize] += 1;
        let key_text = format!("k{key}");
        let mut record = BaseRecord::to(topic).key(&key_text).payload(&line);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .map_err(|e| e.to_string())
}

/// Creates the topics (input: 3 partitions, output: 2) and writes the
/// input.
fn input(args: &InputArgs) -> Result<(), String> {
    let bootstrap = bootstrap_from_env();
    let settings = ClientSettings::new(&bootstrap);
    for (topic, partitions) in [(&args.input, 3), (&args.output, 2)] {
        let missing = MissingTopics::Create { partitions };
        ensure_topics(&settings, std::slice::from_ref(topic), missing)
            .map_err(|e| e.to_string())?;
    }
    produce_input(&bootstrap, &args.input, args.records)
        .map_err(|e| format!("cannot write the input to {bootstrap}: {e}"))
}

/// What the output check found.
struct Verdict {
    lost: u64,
    duplicated: u64,
    problems: Vec<String>,
}

/// Checks the output: both oracles agree, nothing is left open, and per
/// key the counts 1..n appear once each, with sequence numbers in order.
fn check(bootstrap: &str, output: &str, records: u64) -> Result<Verdict, String> {
    let logs = oracle::read_committed(bootstrap, output).map_err(|e| e.to_string())?;
    let mut problems = Vec::new();
    if let Err(e) = oracle::settled(bootstrap, output) {
        problems.push(e.to_string());
    }
    let mut by_key: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for record in logs.iter().flat_map(|p| &p.records) {
        let text =
            String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()).into_owned();
        let fields: Vec<&str> = text.split(' ').collect();
        let [key, seq, count] = fields[..] else {
            return Err(format!("malformed output record {text:?}"));
        };
        let (seq, count) = (
            seq.parse().map_err(|_| text.clone())?,
            count.parse().map_err(|_| text.clone())?,
        );
        by_key.entry(key.to_owned()).or_default().push((seq, count));
    }
    let (mut lost, mut duplicated) = (0, 0);
    for key in 0..KEYS {
        let name = format!("k{key}");
        let expected = (0..records).filter(|i| (i * 7) % KEYS == key).count() as u64;
        let mut updates = by_key.remove(&name).unwrap_or_default();
        updates.sort_unstable();
        updates.dedup_by(|a, b| {
            let same = a.0 == b.0;
            if same {
                duplicated += 1;
                problems.push(format!("{name} seq {} appears twice", a.0));
            }
            same
        });
        for seq in 0..expected {
            if updates.binary_search_by_key(&seq, |u| u.0).is_err() {
                lost += 1;
                if problems.len() < 20 {
                    problems.push(format!("{name} seq {seq} is lost"));
                }
            }
        }
        for (seq, count) in &updates {
            if *count != seq + 1 && problems.len() < 20 {
                problems.push(format!(
                    "{name} seq {seq} was counted as number {count}: per-key order or state is wrong"
                ));
            }
        }
    }
    Ok(Verdict {
        lost,
        duplicated,
        problems,
    })
}

fn wait(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILLs `child` and reaps it.
fn sigkill(child: &mut Child) -> ExitStatus {
    let _ = child.kill();
    // A raw wait status of 9: killed by SIGKILL.
    child.wait().unwrap_or(ExitStatus::from_raw(9))
}

/// How a cycle ended the child.
enum Death {
    /// By SIGABRT at a phase, or SIGKILL: counts as a kill.
    Killed(&'static str),
    /// It finished its work first (exit 0): no kill.
    Finished,
    /// It stopped with a savepoint, as asked: no kill.
    StoppedWithSavepoint,
    /// It exited with an error: a failure of the run.
    Failed(ExitStatus),
}

/// How `status` ended a child: a SIGABRT is the phase `on_abort`, a
/// SIGKILL counts as `on_kill`.
fn death(status: ExitStatus, on_abort: &'static str, on_kill: &'static str) -> Death {
    match status.signal() {
        Some(6) => Death::Killed(on_abort),
        Some(9) => Death::Killed(on_kill),
        _ if status.success() => Death::Finished,
        _ => Death::Failed(status),
    }
}

/// One cycle of the plan.
#[derive(Debug, Clone, Copy)]
enum Cycle {
    /// Abort at a phase.
    Phase(&'static str),
    /// SIGKILL at a random time.
    RandomKill,
    /// SIGKILL the broker while the child runs; the child must recover.
    BrokerRestart,
    /// Stop with a savepoint; the next cycles restore it, in a checkpoint
    /// directory of their own.
    SavepointStop,
    /// SIGKILL the first child that restored the savepoint.
    KillAfterSavepointRestore,
    /// SIGKILL a child running at another parallelism.
    Rescale(usize),
}

struct Harness {
    exe: PathBuf,
    child: ChildArgs,
    bootstrap: String,
    rng: Rng,
}

impl Harness {
    fn spawn(&self, crash_at: Option<String>, extra: &[&str]) -> std::io::Result<Child> {
        let args = &self.child;
        let mut command = Command::new(&self.exe);
        command
            .arg("child")
            .arg("--input")
            .arg(&args.input)
            .arg("--output")
            .arg(&args.output)
            .arg("--prefix")
            .arg(&args.prefix)
            .arg("--checkpoints")
            .arg(&args.checkpoints)
            .arg("--records")
            .arg(args.records.to_string())
            .arg("--parallelism")
            .arg(args.parallelism.to_string())
            .args(extra);
        if let Some(savepoint) = &args.restore_from {
            command.arg("--restore-from").arg(savepoint);
        }
        match crash_at {
            Some(spec) => command.env(CRASH_AT, spec),
            None => command.env_remove(CRASH_AT),
        };
        command.spawn()
    }

    fn visible(&self) -> Option<u64> {
        let runtime = tokio::runtime::Runtime::new().ok()?;
        runtime
            .block_on(visible_records(&self.bootstrap, &self.child.output))
            .ok()
    }

    /// The id of the newest complete checkpoint in the child's checkpoint
    /// directory, with the number of subtasks of each stage.
    fn latest_checkpoint(&self) -> Option<(u64, Vec<usize>)> {
        let latest = LocalStorage::new(&self.child.checkpoints)
            .latest()
            .ok()
            .flatten()?;
        let mut subtasks: BTreeMap<usize, usize> = BTreeMap::new();
        for handle in &latest.metadata.task_states {
            *subtasks.entry(handle.stage).or_default() += 1;
        }
        Some((
            latest.metadata.checkpoint_id,
            subtasks.into_values().collect(),
        ))
    }

    /// Waits until the child has completed a checkpoint of its own (newer
    /// than `before`), checks that every stage ran at the child's
    /// parallelism, then SIGKILLs it within 500 ms. A lineage step only
    /// counts if the next child restores a checkpoint this one wrote.
    fn kill_after_own_checkpoint(
        &mut self,
        running: &mut Child,
        before: Option<u64>,
        how: &'static str,
    ) -> Result<Death, String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = wait(running, Duration::from_millis(50)) {
                return Ok(death(status, how, how));
            }
            if let Some((id, subtasks)) = self.latest_checkpoint()
                && Some(id) > before
            {
                let parallelism = self.child.parallelism;
                if subtasks.iter().any(|&n| n != parallelism) {
                    sigkill(running);
                    return Err(format!(
                        "checkpoint {id} was written with {subtasks:?} subtasks per stage, not {parallelism}"
                    ));
                }
                println!(
                    "crash-harness: the child completed checkpoint {id} at parallelism {parallelism}"
                );
                let after = Duration::from_millis(self.rng.below(500));
                return Ok(match wait(running, after) {
                    Some(status) => death(status, how, how),
                    None => death(sigkill(running), how, how),
                });
            }
            if Instant::now() >= deadline {
                sigkill(running);
                return Err(format!(
                    "the child at parallelism {} completed no checkpoint within 60 s",
                    self.child.parallelism
                ));
            }
        }
    }

    /// Restarts the broker under a running child, then waits until the
    /// child has made progress on the restarted broker, and SIGKILLs it.
    fn broker_restart(&mut self, running: &mut Child, command: &str) -> Result<Death, String> {
        // Into steady state (start-up takes about a second), then the broker.
        let before_restart = Duration::from_millis(2500 + self.rng.below(1500));
        if let Some(status) = wait(running, before_restart) {
            return Ok(death(status, "random SIGKILL", "random SIGKILL"));
        }
        let visible = self.visible().unwrap_or(0);
        let status = Command::new("sh")
            .arg("-c")
            .arg(command)
            .status()
            .map_err(|e| format!("cannot run `{command}`: {e}"))?;
        if !status.success() {
            return Err(format!("`{command}` failed ({status})"));
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = wait(running, Duration::from_millis(500)) {
                return Ok(death(status, "random SIGKILL", "random SIGKILL"));
            }
            if self.visible().is_some_and(|n| n > visible) {
                return Ok(death(sigkill(running), "random SIGKILL", "random SIGKILL"));
            }
            if Instant::now() >= deadline {
                sigkill(running);
                return Err(format!(
                    "the pipeline made no progress within 120 s of the broker restart (still {visible} records visible)"
                ));
            }
        }
    }
}

/// Runs the whole harness; returns the exit code.
fn run(args: &RunArgs) -> Result<ExitCode, String> {
    let cycles = args.cycles.unwrap_or(if args.soak { 300 } else { 32 });
    let records = args
        .records
        .unwrap_or(if args.soak { 200_000 } else { 20_000 });
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let bootstrap = bootstrap_from_env();
    let run = format!("{}-{}", std::process::id(), seed % 1_000_000);
    let work = std::env::temp_dir().join(format!("exactly-crash-harness-{run}"));
    let child_args = ChildArgs {
        input: format!("crash-harness-in-{run}"),
        output: format!("crash-harness-out-{run}"),
        prefix: format!("crash-harness-{run}"),
        checkpoints: work.join("checkpoints"),
        records,
        parallelism: 2,
        checkpoint_interval_ms: 150,
        transaction_timeout_ms: 600_000,
        checkpoint_timeout_ms: 60_000,
        restart_budget_ms: 60_000,
        restarts: 30,
        client_timeout_ms: 30_000,
        restore_from: None,
        savepoint: None,
        stop_with_savepoint_after_ms: None,
    };
    println!(
        "crash-harness: seed {seed}, {records} records, {cycles} kill cycles, {} broker restarts, broker {bootstrap}",
        args.broker_restarts
    );
    input(&InputArgs {
        input: child_args.input.clone(),
        output: child_args.output.clone(),
        records,
    })?;
    let mut harness = Harness {
        exe: std::env::current_exe().map_err(|e| format!("cannot find my executable: {e}"))?,
        child: child_args,
        bootstrap: bootstrap.clone(),
        rng: Rng(seed),
    };

    let started = Instant::now();
    // Every phase twice, the broker restarts, then random SIGKILLs.
    let phases = if args.no_phases { Vec::new() } else { phases() };
    let lineage = [
        Cycle::SavepointStop,
        Cycle::KillAfterSavepointRestore,
        Cycle::Rescale(3),
        Cycle::Rescale(1),
        Cycle::Rescale(2),
    ];
    let mut plan: VecDeque<Cycle> = phases
        .iter()
        .chain(phases.iter())
        .map(|p| Cycle::Phase(p))
        .chain((0..args.broker_restarts).map(|_| Cycle::BrokerRestart))
        .chain(lineage)
        .collect();
    // The savepoint stop is not a kill.
    while (plan.len() as u64) < cycles + args.broker_restarts + 1 {
        plan.push_back(Cycle::RandomKill);
    }
    let mut savepoints = 0;
    let mut kills = 0u64;
    let mut broker_restarts = 0u64;
    let mut by_phase: BTreeMap<&str, u64> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    let mut retries: BTreeMap<&str, u32> = BTreeMap::new();
    let mut cycle = 0;
    while let Some(next) = plan.pop_front() {
        cycle += 1;
        let crash_at = match next {
            Cycle::Phase(p) => Some(format!("{p}:{}", 1 + harness.rng.below(2))),
            _ => None,
        };
        if let Cycle::Rescale(parallelism) = next {
            harness.child.parallelism = parallelism;
        }
        let savepoint = work.join(format!("savepoint-{savepoints}"));
        let stop_after = (1000 + harness.rng.below(1500)).to_string();
        let outage_timeout = args.outage_client_timeout_ms.to_string();
        let savepoint_text = savepoint.display().to_string();
        let extra: &[&str] = match next {
            Cycle::BrokerRestart => &["--client-timeout-ms", &outage_timeout],
            Cycle::SavepointStop => &[
                "--stop-with-savepoint-after-ms",
                &stop_after,
                "--savepoint",
                &savepoint_text,
            ],
            _ => &[],
        };
        let checkpoint_before = harness.latest_checkpoint().map(|(id, _)| id);
        let mut running = harness
            .spawn(crash_at.clone(), extra)
            .map_err(|e| format!("cannot start the child: {e}"))?;
        let ended = match next {
            Cycle::Phase(name) => match wait(&mut running, Duration::from_secs(30)) {
                Some(status) => death(status, name, "random SIGKILL"),
                None => death(sigkill(&mut running), "random SIGKILL", "random SIGKILL"),
            },
            Cycle::RandomKill => {
                let after = Duration::from_millis(300 + harness.rng.below(1500));
                match wait(&mut running, after) {
                    Some(status) => death(status, "random SIGKILL", "random SIGKILL"),
                    None => death(sigkill(&mut running), "random SIGKILL", "random SIGKILL"),
                }
            }
            Cycle::SavepointStop => match wait(&mut running, Duration::from_secs(120)) {
                Some(status) if status.success() => Death::StoppedWithSavepoint,
                Some(status) => Death::Failed(status),
                None => death(sigkill(&mut running), "random SIGKILL", "random SIGKILL"),
            },
            Cycle::KillAfterSavepointRestore | Cycle::Rescale(_) => {
                let how = match next {
                    Cycle::Rescale(3) => "SIGKILL at parallelism 3",
                    Cycle::Rescale(1) => "SIGKILL at parallelism 1",
                    Cycle::Rescale(_) => "SIGKILL back at parallelism 2",
                    _ => "SIGKILL after restoring the savepoint",
                };
                harness.kill_after_own_checkpoint(&mut running, checkpoint_before, how)?
            }
            Cycle::BrokerRestart => {
                broker_restarts += 1;
                harness.broker_restart(&mut running, &args.restart_broker)?
            }
        };
        if let Death::StoppedWithSavepoint = ended {
            // From now on: restore the savepoint, in a new directory.
            harness.child.restore_from = Some(savepoint.clone());
            harness.child.checkpoints =
                work.join(format!("checkpoints-after-savepoint-{savepoints}"));
            savepoints += 1;
        }
        let outcome = match ended {
            Death::StoppedWithSavepoint => {
                *by_phase.entry("stopped with a savepoint").or_default() += 1;
                format!("stopped with a savepoint in {}", savepoint.display())
            }
            Death::Killed(how) => {
                kills += 1;
                *by_phase.entry(how).or_default() += 1;
                match next {
                    Cycle::BrokerRestart => {
                        format!("the broker was restarted under it; it recovered, then {how}")
                    }
                    _ => format!(
                        "died: {how}{}",
                        crash_at
                            .map(|c| format!(" (asked: {c})"))
                            .unwrap_or_default()
                    ),
                }
            }
            Death::Finished => "finished its work before its kill".to_owned(),
            Death::Failed(status) => {
                failures.push(format!(
                    "cycle {cycle} ({next:?}): the child exited with {status} instead of dying of the fault"
                ));
                format!("FAILED: exited with {status}")
            }
        };
        // A phase missed (the child was killed elsewhere or finished
        // first) is tried again, up to three times.
        if let Cycle::Phase(name) = next
            && !matches!(ended, Death::Killed(how) if how == name)
        {
            let tries = retries.entry(name).or_default();
            *tries += 1;
            if *tries <= 3 {
                plan.push_front(Cycle::Phase(name));
                if needs_something_to_recover(name) {
                    plan.push_front(Cycle::Phase("after-checkpoint-complete"));
                }
            }
        }
        println!("crash-harness: cycle {cycle:>3}: {outcome}");
    }
    println!("crash-harness: final run without faults");
    let mut last = harness
        .spawn(None, &[])
        .map_err(|e| format!("cannot start the child: {e}"))?;
    match wait(&mut last, Duration::from_secs(600)) {
        Some(status) if status.success() => {}
        Some(status) => return Err(format!("the final run failed ({status})")),
        None => {
            sigkill(&mut last);
            return Err("the final run did not finish within 600 s".to_owned());
        }
    }
    let verdict = check(&bootstrap, &harness.child.output, records)
        .map_err(|e| format!("cannot check the output: {e}"))?;
    if verdict.lost == 0 && verdict.duplicated == 0 && verdict.problems.is_empty() {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        println!(
            "crash-harness: the checkpoints are kept for a post-mortem in {}",
            work.display()
        );
    }
    println!(
        "crash-harness: kills by phase: {by_phase:?}; {broker_restarts} broker restarts; took {:.0?}",
        started.elapsed()
    );
    let mut missing_phases: Vec<&str> = phases
        .iter()
        .copied()
        .filter(|p| by_phase.get(p).copied().unwrap_or(0) < 2)
        .collect();
    missing_phases.extend(
        [
            "stopped with a savepoint",
            "SIGKILL after restoring the savepoint",
            "SIGKILL at parallelism 3",
            "SIGKILL at parallelism 1",
        ]
        .into_iter()
        .filter(|how| !by_phase.contains_key(how)),
    );
    if !missing_phases.is_empty() {
        failures.push(format!(
            "phases killed fewer than twice, or lineage steps that never happened: {missing_phases:?}"
        ));
    }
    if kills < args.min_kills {
        failures.push(format!(
            "only {kills} kills, fewer than --min-kills {}",
            args.min_kills
        ));
    }
    for problem in verdict.problems.iter().chain(&failures) {
        println!("crash-harness: {problem}");
    }
    println!(
        "crash-harness: {kills} kills, {records} records, {} lost, {} duplicated",
        verdict.lost, verdict.duplicated
    );
    Ok(
        if verdict.lost > 0
            || verdict.duplicated > 0
            || !verdict.problems.is_empty()
            || !failures.is_empty()
        {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        },
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.step {
        None => run(&cli.run),
        Some(Step::Input(args)) => input(args).map(|()| ExitCode::SUCCESS),
        Some(Step::Child(args)) => {
            // Restarts and recoveries are logged with tracing: warnings and
            // errors by default, more with RUST_LOG.
            tracing_subscriber::fmt()
                .with_ansi(std::io::stderr().is_terminal())
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
                )
                .with_writer(std::io::stderr)
                .init();
            return match child(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("crash-harness child: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Step::Check(args)) => {
            check(&bootstrap_from_env(), &args.output, args.records).map(|v| {
                for problem in &v.problems {
                    println!("crash-harness: {problem}");
                }
                println!(
                    "crash-harness check: {} records, {} lost, {} duplicated",
                    args.records, v.lost, v.duplicated
                );
                if v.lost == 0 && v.duplicated == 0 && v.problems.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            })
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("crash-harness: {e}");
        ExitCode::from(2)
    })
}
