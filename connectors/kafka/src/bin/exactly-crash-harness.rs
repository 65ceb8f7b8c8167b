//! The crash harness: runs an exactly-once Kafka→Kafka pipeline as a child
//! process, kills it again and again — with SIGKILL at random times, and by
//! aborting itself at named phases of the checkpoint protocol — restarts
//! it, and finally checks the whole output: every input record's effect
//! exactly once, per-key order kept, final state equal to a direct count.
//!
//! ```text
//! scripts/kafka-up
//! cargo run -p exactly-kafka --bin exactly-crash-harness              # CI size: >= 30 kills, ~2 minutes
//! cargo run -p exactly-kafka --bin exactly-crash-harness -- --soak    # 300 kills, 200000 records
//! ```
//!
//! Options: `--cycles N` (kills before the final clean run, default 32),
//! `--records N` (default 20000), `--seed N`, `--soak`.
//!
//! The input is `N` records `k<key> <seq>` (16 keys, sequence numbers per
//! key from 0). The pipeline keys them and emits `k<key> <seq> <count>`
//! for each, so a lost or doubled record is named by key and sequence. The
//! output is read raw with the committed reader, which applies Kafka's
//! read_committed rule itself (the test broker does not filter aborted
//! transactions).
//!
//! The last line is the result, for example
//! `crash-harness: 32 kills, 20000 records, 0 lost, 0 duplicated`; the exit
//! code is 1 on any loss, duplicate or order violation.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use exactly::fault::{FaultEvent, FaultHook, FaultPoint};
use exactly::prelude::*;
use exactly_kafka::client::{ClientSettings, MissingTopics, ensure_topics};
use exactly_kafka::deserialize::Utf8;
use exactly_kafka::sink::{DeliveryGuarantee, KafkaSink, OutputRecord};
use exactly_kafka::source::{KafkaRecord, KafkaSource};
use exactly_kafka::{CommittedReader, ReaderConfig, bootstrap_from_env};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const KEYS: u64 = 16;
/// The environment variable that makes the child abort at a phase:
/// `<fault point name>:<occurrence>`, or `during-sink-commit:<occurrence>`.
const CRASH_AT: &str = "EXACTLY_CRASH_AT";
/// Targeted phases, each hit at least twice: the SDK's fault points, plus
/// `during-sink-commit` (the commit is sent, the process dies before the
/// answer). `during-recovery` follows `after-checkpoint-complete`, which
/// leaves a complete checkpoint with an uncommitted transaction for the
/// next process to recover.
fn phases() -> Vec<&'static str> {
    let mut phases: Vec<&'static str> = FaultPoint::NAMES
        .iter()
        .copied()
        .filter(|p| *p != "during-recovery")
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
    phases.insert(at, "during-recovery");
    phases
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

struct Topics {
    input: String,
    output: String,
    prefix: String,
    checkpoints: PathBuf,
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

/// The child: runs the pipeline until `records` updates are visible in the
/// output, then stops gracefully.
fn child(topics: &Topics, records: u64) -> exactly::Result<()> {
    let settings = ClientSettings::from_env();
    let source = KafkaSource::builder(settings.clone())
        .topic(&topics.input)
        .deserializer(Utf8)
        .build()
        .map_err(|e| exactly::Error::Runtime(e.to_string()))?;
    let sink = KafkaSink::builder(settings.clone(), &topics.output, |line: &String| {
        OutputRecord::keyed(key_of(line), line.clone())
    })
    .delivery_guarantee(DeliveryGuarantee::ExactlyOnce)
    .transactional_id_prefix(&topics.prefix)
    .transaction_timeout(Duration::from_secs(600))
    .broker_max_transaction_timeout(Duration::from_secs(900))
    .build()
    .map_err(|e| exactly::Error::Runtime(e.to_string()))?;
    let mut config = JobConfig::new()
        .parallelism(2)
        .checkpoint_interval(Duration::from_millis(150))
        .checkpoint_timeout(Duration::from_secs(60))
        .checkpoint_dir(&topics.checkpoints)
        .restart_strategy(RestartStrategy::none())
        .batch_size(25)
        .queue_capacity(4)
        .progress_interval(Duration::from_secs(2));
    if let Some(hook) = std::env::var(CRASH_AT).ok().as_deref().and_then(crash_hook) {
        config = config.fault_hook(hook);
    }
    let job = Job::new("crash-harness", config);
    job.source(source)
        .key_by(|r: &KafkaRecord<String>| key_of(&r.value))
        .operator(track)
        .sink(sink);
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| exactly::Error::Runtime(e.to_string()))?;
    runtime.block_on(async {
        let handle = job.spawn()?;
        let reader = ReaderConfig::new(&settings.bootstrap);
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if handle.is_finished() {
                break;
            }
            let mut committed = CommittedReader::connect(reader.clone())
                .await
                .map_err(|e| exactly::Error::Runtime(e.to_string()))?;
            let logs = committed
                .read_topic(&topics.output)
                .await
                .map_err(|e| exactly::Error::Runtime(e.to_string()))?;
            if logs.iter().map(|p| p.records.len() as u64).sum::<u64>() >= records {
                break;
            }
        }
        handle.stop();
        handle.join().await.map(drop)
    })
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

/// Checks the output: per key, counts 1..n once each, with sequence
/// numbers in order; returns (lost, duplicated, order violations).
fn check(bootstrap: &str, output: &str, records: u64) -> Result<(u64, u64, Vec<String>), String> {
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let logs = runtime
        .block_on(async {
            let mut reader = CommittedReader::connect(ReaderConfig::new(bootstrap)).await?;
            reader.read_topic(output).await
        })
        .map_err(|e| e.to_string())?;
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
    let (mut lost, mut duplicated, mut problems) = (0, 0, Vec::new());
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
                problems.push(format!("{name} seq {seq} was counted as number {count}: per-key order or state is wrong"));
            }
        }
    }
    Ok((lost, duplicated, problems))
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

fn flag(args: &[String], name: &str) -> Option<u64> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        let [_, input, output, prefix, checkpoints, records] = &args[..] else {
            eprintln!("crash-harness child: bad arguments {args:?}");
            return ExitCode::from(2);
        };
        let topics = Topics {
            input: input.clone(),
            output: output.clone(),
            prefix: prefix.clone(),
            checkpoints: PathBuf::from(checkpoints),
        };
        return match child(&topics, records.parse().unwrap_or(0)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("crash-harness child: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let soak = args.iter().any(|a| a == "--soak");
    let cycles = flag(&args, "--cycles").unwrap_or(if soak { 300 } else { 32 });
    let records = flag(&args, "--records").unwrap_or(if soak { 200_000 } else { 20_000 });
    let seed = flag(&args, "--seed").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let mut rng = Rng(seed);
    let bootstrap = bootstrap_from_env();
    let run = format!("{}-{}", std::process::id(), seed % 1_000_000);
    let work = std::env::temp_dir().join(format!("exactly-crash-harness-{run}"));
    let topics = Topics {
        input: format!("crash-harness-in-{run}"),
        output: format!("crash-harness-out-{run}"),
        prefix: format!("crash-harness-{run}"),
        checkpoints: work.join("checkpoints"),
    };
    println!(
        "crash-harness: seed {seed}, {records} records, {cycles} kill cycles, broker {bootstrap}"
    );
    let settings = ClientSettings::new(&bootstrap);
    for (topic, partitions) in [(&topics.input, 3), (&topics.output, 2)] {
        let missing = MissingTopics::Create { partitions };
        if let Err(e) = ensure_topics(&settings, std::slice::from_ref(topic), missing) {
            eprintln!("crash-harness: {e}");
            return ExitCode::from(2);
        }
    }
    if let Err(e) = produce_input(&bootstrap, &topics.input, records) {
        eprintln!("crash-harness: cannot write the input to {bootstrap}: {e}");
        return ExitCode::from(2);
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("crash-harness: cannot find my executable: {e}");
            return ExitCode::from(2);
        }
    };
    let spawn = |crash_at: Option<String>| {
        let mut command = Command::new(&exe);
        command
            .arg("--child")
            .arg(&topics.input)
            .arg(&topics.output)
            .arg(&topics.prefix)
            .arg(&topics.checkpoints)
            .arg(records.to_string());
        match crash_at {
            Some(spec) => command.env(CRASH_AT, spec),
            None => command.env_remove(CRASH_AT),
        };
        command.spawn()
    };

    let started = Instant::now();
    let mut kills = 0u64;
    let mut by_phase: BTreeMap<&str, u64> = BTreeMap::new();
    // Every phase twice, then random SIGKILLs.
    let phases = phases();
    let mut plan: Vec<Option<&str>> = phases
        .iter()
        .chain(phases.iter())
        .map(|p| Some(*p))
        .collect();
    while (plan.len() as u64) < cycles {
        plan.push(None);
    }
    let mut plan: std::collections::VecDeque<Option<&str>> = plan.into();
    let mut retries: BTreeMap<&str, u32> = BTreeMap::new();
    let mut cycle = 0;
    while let Some(phase) = plan.pop_front() {
        cycle += 1;
        let crash_at = phase.map(|p| format!("{p}:{}", 1 + rng.below(2)));
        let mut running = match spawn(crash_at.clone()) {
            Ok(child) => child,
            Err(e) => {
                eprintln!("crash-harness: cannot start the child: {e}");
                return ExitCode::from(2);
            }
        };
        let outcome = match phase {
            Some(name) => match wait(&mut running, Duration::from_secs(30)) {
                Some(status) if !status.success() => {
                    *by_phase.entry(name).or_default() += 1;
                    format!("died at {} ({status})", crash_at.unwrap_or_default())
                }
                missed => {
                    if missed.is_none() {
                        let _ = running.kill();
                        let _ = running.wait();
                        *by_phase.entry("random SIGKILL").or_default() += 1;
                    }
                    // Try the phase again (a few times), so that every
                    // phase is hit twice.
                    let tries = retries.entry(name).or_default();
                    *tries += 1;
                    if *tries <= 3 {
                        plan.push_front(Some(name));
                        if name == "during-recovery" {
                            // Leave something to recover first.
                            plan.push_front(Some("after-checkpoint-complete"));
                        }
                    }
                    match missed {
                        Some(_) => format!("finished before reaching {name}"),
                        None => format!("did not reach {name} in 30 s: killed with SIGKILL"),
                    }
                }
            },
            None => {
                let after = Duration::from_millis(300 + rng.below(1500));
                match wait(&mut running, after) {
                    Some(status) => {
                        format!("exited by itself ({status}) before its kill at {after:?}")
                    }
                    None => {
                        let _ = running.kill();
                        let _ = running.wait();
                        *by_phase.entry("random SIGKILL").or_default() += 1;
                        format!("killed with SIGKILL after {after:?}")
                    }
                }
            }
        };
        if !outcome.starts_with("finished") && !outcome.starts_with("exited") {
            kills += 1;
        }
        println!("crash-harness: cycle {cycle:>3}: {outcome}");
    }
    println!("crash-harness: final run without faults");
    let mut last = match spawn(None) {
        Ok(child) => child,
        Err(e) => {
            eprintln!("crash-harness: cannot start the child: {e}");
            return ExitCode::from(2);
        }
    };
    match wait(&mut last, Duration::from_secs(600)) {
        Some(status) if status.success() => {}
        Some(status) => {
            eprintln!("crash-harness: the final run failed ({status})");
            return ExitCode::FAILURE;
        }
        None => {
            let _ = last.kill();
            eprintln!("crash-harness: the final run did not finish within 600 s");
            return ExitCode::FAILURE;
        }
    }
    let (lost, duplicated, problems) = match check(&bootstrap, &topics.output, records) {
        Ok(result) => result,
        Err(e) => {
            eprintln!("crash-harness: cannot read the output: {e}");
            return ExitCode::from(2);
        }
    };
    let _ = std::fs::remove_dir_all(&work);
    println!(
        "crash-harness: kills by phase: {by_phase:?}; took {:.0?}",
        started.elapsed()
    );
    for problem in &problems {
        println!("crash-harness: {problem}");
    }
    println!(
        "crash-harness: {kills} kills, {records} records, {lost} lost, {duplicated} duplicated"
    );
    let missing_phases: Vec<&str> = phases
        .iter()
        .copied()
        .filter(|p| by_phase.get(p).copied().unwrap_or(0) < 2)
        .collect();
    if !missing_phases.is_empty() {
        println!("crash-harness: phases killed fewer than twice: {missing_phases:?}");
    }
    if lost > 0 || duplicated > 0 || !problems.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
