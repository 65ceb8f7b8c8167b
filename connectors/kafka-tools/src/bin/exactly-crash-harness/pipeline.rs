//! The child process: the exactly-once pipeline under test (keyed count of
//! `k<key> <seq>` records, Kafka to Kafka) and the fault hook that aborts
//! it at a named phase.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use exactly::fault::{FaultEvent, FaultHook};
use exactly::prelude::*;
use exactly_kafka::client::ClientSettings;
use exactly_kafka::deserialize::Utf8;
use exactly_kafka::sink::{DeliveryGuarantee, KafkaSink, OutputRecord};
use exactly_kafka::source::{KafkaRecord, KafkaSource};
use exactly_kafka_wire::{CommittedReader, ReadError};

use crate::args::ChildArgs;

/// The environment variable that makes the child abort at a phase:
/// `<fault point name>:<occurrence>`, or `during-sink-commit:<occurrence>`.
pub(crate) const CRASH_AT: &str = "EXACTLY_CRASH_AT";

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
    format!("{} {}", record.value, seen.count)
}

pub(crate) fn key_of(line: &str) -> String {
    line.split(' ').next().unwrap_or_default().to_owned()
}

/// A fault hook that aborts the process at the configured phase.
pub(crate) fn crash_hook(spec: &str) -> Option<FaultHook> {
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
