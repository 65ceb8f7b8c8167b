//! Watches a contender's output under `read_committed`: progress, the
//! measured window, the exactly-once check and visibility latency, in one
//! pass as the records become visible.
//!
//! The check: every input sequence number appears exactly once, and every
//! key's counts are 1, 2, 3, … in order (a contender partitions its output
//! by key, so one key's records share a partition and its order). A
//! duplicate, a gap or a repeated count is reported, never ignored. The
//! throughput window is timed by when records became visible, not by
//! when this reader got to them (`visible`). This module owns no
//! process: the contender's liveness and CPU time come in through
//! [`Probe`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::visible::{CpuClock, ReadOffsets, Sampler, Window};
use crate::workload::{PARTITIONS, now_micros};

/// How long the watcher keeps reading after the last expected record, to
/// catch late duplicates.
const SETTLE: Duration = Duration::from_secs(1);

/// Sequence numbers above this are garbage, not a reason to allocate.
const MAX_SEQ: u64 = 1 << 32;

/// Expected-count value meaning "not known yet" (the live producer is still
/// writing).
pub const UNKNOWN: u64 = u64::MAX;

/// What the watcher asks of the contender's process.
pub trait Probe {
    /// Reads the process's CPU time so far (user + system).
    fn cpu_clock(&self) -> CpuClock;
    /// Fails once the process has exited.
    fn alive(&mut self) -> Result<(), String>;
}

/// What one watched run produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The measured window (all zero when there was none).
    pub window: Window,
    /// From the watcher's start to the first visible record.
    pub first_visible: Duration,
    /// Input records seen more than once.
    pub duplicates: u64,
    /// Input records never seen.
    pub missing: u64,
    /// Output records whose count did not follow the key's previous one.
    pub count_errors: u64,
    /// Visibility latency of each measured record, in microseconds.
    pub latencies_us: Vec<i64>,
    /// Consumer errors the watcher rode out (the broker unreachable for a
    /// while); the round's figures then include that pause.
    pub broker_errors: u64,
}

impl Outcome {
    /// Records per second inside the window.
    pub fn rate(&self) -> f64 {
        self.window.records as f64 / self.window.length.as_secs_f64().max(1e-9)
    }

    /// CPU seconds per million records inside the window.
    pub fn cpu_per_million(&self) -> f64 {
        self.window.cpu.as_secs_f64() * 1e6 / (self.window.records.max(1) as f64)
    }

    /// Whether the output held every input record exactly once.
    pub fn exactly_once(&self) -> bool {
        self.duplicates == 0 && self.missing == 0 && self.count_errors == 0
    }
}

/// The latency phase's clock, shared with the paced producer: latency is
/// measured for records sent from `warm_up` after the first visible output
/// on, and the producer stops `measure` later still.
pub struct Live {
    /// Start-up (and JIT warm-up) left out of the measurement.
    pub warm_up: Duration,
    /// How long latency is measured.
    pub measure: Duration,
    /// When the producer stops, in microseconds since the Unix epoch; 0
    /// until the first output is visible. The watcher sets it.
    pub stop_at: Arc<AtomicI64>,
}

/// What to watch for.
pub struct Watch<'a> {
    /// The broker.
    pub bootstrap: &'a str,
    /// The contender's output topic.
    pub topic: &'a str,
    /// How many input records there are, or [`UNKNOWN`] while a producer
    /// still writes them.
    pub expected: Arc<AtomicU64>,
    /// The measured window opens when this many records are visible, and
    /// closes when all are (skips start-up and JIT warm-up); `None` for no
    /// window.
    pub window_from: Option<u64>,
    /// For the latency phase: what to measure once output appears.
    pub live: Option<Live>,
    /// The longest time without a new visible record before the run fails.
    pub stall: Duration,
}

fn parse(value: &[u8]) -> Option<(u64, i64, u64)> {
    let text = std::str::from_utf8(value).ok()?;
    let mut fields = text.split(' ');
    let seq = fields.next()?.parse().ok()?;
    let micros = fields.next()?.parse().ok()?;
    let count = fields.next()?.parse().ok()?;
    fields.next().is_none().then_some((seq, micros, count))
}

fn micros_of(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// Fails when no new output appeared for `spec.stall` since `progress`, or
/// when the contender is gone.
fn still_waiting(
    spec: &Watch<'_>,
    probe: &mut dyn Probe,
    progress: Instant,
    distinct: u64,
    expected: u64,
) -> Result<(), String> {
    if progress.elapsed() > spec.stall {
        return Err(format!(
            "no new output in {:?}: {distinct} of {} records visible",
            spec.stall,
            if expected == UNKNOWN {
                "?".to_owned()
            } else {
                expected.to_string()
            }
        ));
    }
    probe.alive()
}

/// Reads the output until every expected record is visible (plus
/// [`SETTLE`]), checking as it goes.
pub fn watch(spec: &Watch<'_>, probe: &mut dyn Probe) -> Result<Outcome, String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", spec.bootstrap)
        .set("group.id", format!("{}-watch", spec.topic))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .map_err(|e| format!("a read_committed consumer for {}: {e}", spec.bootstrap))?;
    let mut partitions = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        partitions
            .add_partition_offset(spec.topic, partition, Offset::Beginning)
            .map_err(|e| e.to_string())?;
    }
    consumer
        .assign(&partitions)
        .map_err(|e| format!("assigning {}: {e}", spec.topic))?;

    // The sampler, and how many visible records open the window.
    let sampler = spec
        .window_from
        .map(|from| {
            Sampler::start(spec.bootstrap, spec.topic, probe.cpu_clock()).map(|s| (s, from))
        })
        .transpose()?;
    let started = Instant::now();
    let mut outcome = Outcome::default();
    let mut seen: Vec<bool> = Vec::new();
    let mut distinct = 0u64;
    let mut counts: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut read = ReadOffsets::default();
    let mut last_progress = Instant::now();
    let mut complete_at: Option<Instant> = None;
    let mut measure_from = i64::MAX;
    loop {
        let expected = spec.expected.load(Ordering::Acquire);
        if let Some(at) = complete_at
            && at.elapsed() >= SETTLE
        {
            outcome.missing = expected.saturating_sub(distinct);
            if let Some((sampler, from)) = sampler {
                outcome.window = crate::visible::window(&sampler.finish()?, &read, from)?;
            }
            return Ok(outcome);
        }
        match consumer.poll(Duration::from_millis(50)) {
            None => still_waiting(spec, probe, last_progress, distinct, expected)?,
            Some(Err(KafkaError::MessageConsumption(code))) => {
                // librdkafka reconnects by itself: a broker that stalled
                // and was fenced for a moment shows here, and no record is
                // lost by it. The stall limit still ends a run that stops.
                if outcome.broker_errors == 0 {
                    eprintln!(
                        "kafka-bench:   reading {}: {code}; waiting for the broker (at most --stall-seconds without new output)",
                        spec.topic
                    );
                }
                outcome.broker_errors += 1;
                still_waiting(spec, probe, last_progress, distinct, expected)?;
            }
            Some(Err(e)) => return Err(format!("reading {}: {e}", spec.topic)),
            Some(Ok(message)) => {
                let now = now_micros();
                last_progress = Instant::now();
                let Some((seq, micros, count)) = message.payload().and_then(parse) else {
                    return Err(format!(
                        "{}/{} offset {}: not `<seq> <micros> <count>`",
                        spec.topic,
                        message.partition(),
                        message.offset()
                    ));
                };
                if seq >= MAX_SEQ {
                    return Err(format!("sequence number {seq} out of range"));
                }
                if distinct == 0 {
                    outcome.first_visible = started.elapsed();
                    if let Some(live) = &spec.live {
                        measure_from = now + micros_of(live.warm_up);
                        live.stop_at
                            .store(measure_from + micros_of(live.measure), Ordering::Release);
                    }
                }
                let index = seq as usize;
                if index >= seen.len() {
                    seen.resize(index + 1, false);
                }
                if seen[index] {
                    outcome.duplicates += 1;
                } else {
                    seen[index] = true;
                    distinct += 1;
                }
                if sampler.is_some() {
                    read.note(message.partition(), message.offset());
                }
                let key = message.key().unwrap_or_default();
                let previous = match counts.get_mut(key) {
                    Some(previous) => previous,
                    None => counts.entry(key.to_vec()).or_default(),
                };
                if count != *previous + 1 {
                    outcome.count_errors += 1;
                }
                *previous = count;
                if spec.live.is_some() && micros >= measure_from {
                    outcome.latencies_us.push(now - micros);
                }
            }
        }
        if complete_at.is_none() && distinct == expected {
            complete_at = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Alive;

    impl Probe for Alive {
        fn cpu_clock(&self) -> CpuClock {
            Arc::new(|| Ok(Duration::ZERO))
        }
        fn alive(&mut self) -> Result<(), String> {
            Ok(())
        }
    }

    /// A broker that does not answer is waited for until the stall limit,
    /// not taken as the end of the run at its first error.
    #[test]
    fn an_unreachable_broker_is_waited_for_until_the_stall_limit() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let bootstrap = closed.local_addr().unwrap().to_string();
        drop(closed);
        let spec = Watch {
            bootstrap: &bootstrap,
            topic: "bench-output-unreachable",
            expected: Arc::new(AtomicU64::new(10)),
            window_from: Some(1),
            live: None,
            stall: Duration::from_secs(2),
        };
        let error = watch(&spec, &mut Alive).unwrap_err();
        assert!(error.starts_with("no new output in 2s"), "{error}");
    }

    #[test]
    fn output_values_parse_into_sequence_time_and_count() {
        assert_eq!(
            parse(b"17 1764620000123456 3"),
            Some((17, 1764620000123456, 3))
        );
        assert_eq!(parse(b"17 1764620000123456"), None, "no count");
        assert_eq!(parse(b"17 x 3"), None);
        assert_eq!(parse(b"1 2 3 4"), None, "a field too many");
    }
}
