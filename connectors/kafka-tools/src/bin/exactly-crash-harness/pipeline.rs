//! The child process: the exactly-once pipeline under test (keyed count of
//! `k<key> <seq>` records, Kafka to Kafka) and the fault hooks that abort
//! it, or freeze it, at a named phase.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use exactly::fault::{FaultEvent, FaultHook, FaultPoint};
use exactly::prelude::*;
use exactly_kafka::client::ClientSettings;
use exactly_kafka::deserialize::Utf8;
use exactly_kafka::sink::{DeliveryGuarantee, KafkaSink, OutputRecord};
use exactly_kafka::source::{KafkaRecord, KafkaSource};
use exactly_kafka_wire::{CommittedReader, ReadError};

use crate::args::ChildArgs;
use crate::workload::{KEYS, records_of_key};

/// The environment variable that makes the child abort at a phase:
/// `<fault point name>:<occurrence>`, or `during-sink-commit:<occurrence>`.
pub(crate) const CRASH_AT: &str = "EXACTLY_CRASH_AT";

/// The environment variable that makes the child stop itself with SIGSTOP
/// and go on where it stopped once it gets SIGCONT: a zombie frozen at a
/// known point. `<fault point name>:<occurrence>`, or [`QUIET`].
pub(crate) const PAUSE_AT: &str = "EXACTLY_PAUSE_AT";

/// `EXACTLY_PAUSE_AT=quiet`: freeze just before completing the first
/// checkpoint triggered after the whole input went through the keyed
/// counter (and after this process completed a checkpoint): every record
/// is then pre-committed, the sink has nothing left to write, and, woken,
/// the process has nothing to send Kafka before it completes that
/// checkpoint. A quiet zombie: only the checkpoint storage can stop it.
pub(crate) const QUIET: &str = "quiet";

/// Per key, whether the keyed counter has seen the key's last record (its
/// count reached the key's number of records): set up by a child that
/// pauses [`QUIET`].
struct Drain {
    expected: Vec<u64>,
    done: Vec<AtomicBool>,
}

static DRAIN: OnceLock<Drain> = OnceLock::new();

/// Notes that key `key` (`k<n>`) was counted `count` times.
fn note_count(key: &str, count: u64) {
    if let Some(drain) = DRAIN.get()
        && let Some(i) = key.strip_prefix('k').and_then(|n| n.parse::<usize>().ok())
        && let (Some(expected), Some(done)) = (drain.expected.get(i), drain.done.get(i))
        && count >= *expected
    {
        done.store(true, Ordering::SeqCst);
    }
}

/// Whether every record of the input went through the keyed counter.
fn drained() -> bool {
    DRAIN
        .get()
        .is_some_and(|drain| drain.done.iter().all(|d| d.load(Ordering::SeqCst)))
}

/// The per-key state: how many records of the key were seen.
#[state]
#[derive(Default)]
pub(crate) struct Seen {
    count: u64,
}

/// Parses `k<key> <seq>`, emits `k<key> <seq> <count>`.
#[operator]
pub(crate) fn track(record: KafkaRecord<String>, #[state] seen: &mut Seen) -> String {
    std::thread::sleep(Duration::from_micros(150));
    seen.count += 1;
    note_count(
        record.value.split(' ').next().unwrap_or_default(),
        seen.count,
    );
    format!("{} {}", record.value, seen.count)
}

pub(crate) fn key_of(line: &str) -> String {
    line.split(' ').next().unwrap_or_default().to_owned()
}

/// `<phase>:<occurrence>`, parsed.
fn phase_spec(spec: &str) -> Option<(String, u64)> {
    let (phase, occurrence) = spec.split_once(':')?;
    Some((phase.to_owned(), occurrence.parse().ok()?))
}

/// A fault hook that aborts the process at the configured phase.
pub(crate) fn crash_hook(spec: &str) -> Option<FaultHook> {
    let (phase, occurrence) = phase_spec(spec)?;
    let (phase, delayed) = match phase.as_str() {
        "during-sink-commit" => ("before-sink-commit".to_owned(), true),
        _ => (phase, false),
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

/// Stops the whole process with SIGSTOP (through `kill`: the workspace
/// forbids `unsafe`, so no `raise`); returns once it got SIGCONT.
fn freeze(point: &FaultPoint) {
    eprintln!("crash-harness child: freezing (SIGSTOP) at {point}");
    let stopped = std::process::Command::new("kill")
        .arg("-STOP")
        .arg(std::process::id().to_string())
        .status();
    match stopped {
        Ok(status) if status.success() => {
            eprintln!("crash-harness child: continued at {point}");
        }
        // The harness waits for the stop, and fails the run when it does
        // not come.
        other => eprintln!("crash-harness child: could not SIGSTOP myself: {other:?}"),
    }
}

/// A fault hook that freezes the process at the configured phase, or
/// [`QUIET`]ly, and lets it go on from there after SIGCONT.
pub(crate) fn pause_hook(spec: &str) -> Option<FaultHook> {
    if spec == QUIET {
        return Some(quiet_hook());
    }
    let (phase, occurrence) = phase_spec(spec)?;
    let seen = Arc::new(AtomicU64::new(0));
    Some(Arc::new(move |event: &FaultEvent<'_>| {
        if event.point.name() == phase && seen.fetch_add(1, Ordering::SeqCst) + 1 == occurrence {
            freeze(&event.point);
        }
        Ok(())
    }))
}

/// The [`QUIET`] freeze.
fn quiet_hook() -> FaultHook {
    let completed = AtomicBool::new(false);
    // The checkpoint to freeze before completing; 0: not chosen yet.
    let target = AtomicU64::new(0);
    Arc::new(move |event: &FaultEvent<'_>| {
        match event.point {
            FaultPoint::AfterCheckpointComplete { .. } => completed.store(true, Ordering::SeqCst),
            FaultPoint::CheckpointTriggered { checkpoint }
                if completed.load(Ordering::SeqCst)
                    && target.load(Ordering::SeqCst) == 0
                    && drained() =>
            {
                target.store(checkpoint, Ordering::SeqCst);
            }
            FaultPoint::BeforeCheckpointComplete { checkpoint }
                if checkpoint == target.load(Ordering::SeqCst) =>
            {
                freeze(&event.point);
            }
            _ => {}
        }
        Ok(())
    })
}

/// The child's fault hook: `EXACTLY_CRASH_AT`'s and `EXACTLY_PAUSE_AT`'s,
/// in that order, when set.
fn fault_hook() -> Option<FaultHook> {
    let hooks: Vec<FaultHook> = [
        std::env::var(CRASH_AT).ok().as_deref().and_then(crash_hook),
        std::env::var(PAUSE_AT).ok().as_deref().and_then(pause_hook),
    ]
    .into_iter()
    .flatten()
    .collect();
    match hooks.len() {
        0 => None,
        1 => hooks.into_iter().next(),
        _ => Some(Arc::new(move |event: &FaultEvent<'_>| {
            hooks.iter().try_for_each(|hook| hook(event))
        })),
    }
}

/// Counts the output records visible (raw reader) on `topic`.
pub(crate) async fn visible_records(
    settings: &ClientSettings,
    topic: &str,
) -> Result<u64, ReadError> {
    let mut reader = CommittedReader::connect(settings.reader_config()?).await?;
    let logs = reader.read_topic(topic).await?;
    Ok(logs.iter().map(|p| p.records.len() as u64).sum())
}

/// The child: runs the pipeline until `records` updates are visible in the
/// output, then stops gracefully.
pub(crate) fn child(args: &ChildArgs) -> Result<(), exactly::BoxError> {
    let runtime_error = |e: &dyn std::fmt::Display| exactly::BoxError::from(e.to_string());
    let settings = ClientSettings {
        timeout: Duration::from_millis(args.client_timeout_ms),
        ..ClientSettings::from_env().map_err(|e| runtime_error(&e))?
    };
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
    if std::env::var(PAUSE_AT).is_ok_and(|spec| spec == QUIET) {
        let expected: Vec<u64> = (0..KEYS)
            .map(|key| records_of_key(args.records, key))
            .collect();
        let done = expected.iter().map(|&n| AtomicBool::new(n == 0)).collect();
        let _ = DRAIN.set(Drain { expected, done });
    }
    if let Some(hook) = fault_hook() {
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
                eprintln!("crash-harness child: stopped with a savepoint in {}", taken);
                return handle.join().await.map(drop);
            }
            // The broker may be restarting: count again on the next tick.
            if visible_records(&settings, &args.output)
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
