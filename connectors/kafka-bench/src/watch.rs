//! Watches a contender's output under `read_committed`: progress, the
//! measured window, the exactly-once check and visibility latency, in one
//! pass over the records.
//!
//! The check: every input sequence number appears exactly once, and every
//! key's counts are 1, 2, 3, … in order (a contender partitions its output
//! by key, so one key's records share a partition and its order). A
//! duplicate, a gap or a repeated count is reported, never ignored. The
//! throughput window is timed by when records became visible, not by
//! when this reader got to them (`visible`), and in a throughput phase
//! this reader starts only once the window has closed, so that it takes
//! no CPU from the contender inside it. This module owns no process: the
//! contender's liveness and CPU time come in through [`Probe`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::visible::{Bounds, Clocks, ReadOffsets, Sampler, Window};
use crate::workload::{PARTITIONS, now_micros};
use exactly_kafka::source::FETCH_QUEUE_BACKOFF;

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
    /// Reads the process's and the broker's CPU time.
    fn clocks(&self) -> Arc<dyn Clocks>;
    /// Fails once the process has exited.
    fn alive(&mut self) -> Result<(), String>;
}

/// What one watched run produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The measured window (all zero when there was none).
    pub window: Window,
    /// The output records expected.
    pub expected: u64,
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
    /// Where the measured window opens and closes (start-up and JIT
    /// warm-up stay out of it); `None` for no window.
    pub window: Option<Bounds>,
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

/// Waits until the sampler shows the window closed, failing as
/// [`still_waiting`] does; returns how long after `started` the first
/// output became visible.
fn wait_for_close(
    spec: &Watch<'_>,
    probe: &mut dyn Probe,
    sampler: &mut Sampler,
    bounds: Bounds,
) -> Result<Duration, String> {
    let started = Instant::now();
    let expected = spec.expected.load(Ordering::Acquire);
    let start_at = bounds.reader_start(expected);
    let mut first_visible = None;
    let (mut total, mut progress) = (0, Instant::now());
    while total < start_at {
        thread::sleep(Duration::from_millis(10));
        let now = sampler.stable_total();
        if now > total {
            (total, progress) = (now, Instant::now());
            first_visible.get_or_insert_with(|| started.elapsed());
        }
        // A contender that exited is named before the sampler's error
        // (which is then only that its /proc file is gone).
        still_waiting(spec, probe, progress, total as u64, expected)?;
        sampler.running()?;
    }
    Ok(first_visible.unwrap_or_default())
}

/// Reads the output until every expected record is visible (plus
/// [`SETTLE`]), checking as it goes.
pub fn watch(spec: &Watch<'_>, probe: &mut dyn Probe) -> Result<Outcome, String> {
    let started = Instant::now();
    let mut outcome = Outcome::default();
    // In a throughput phase: the sampler, started now, and the reader
    // only once the window has closed.
    let sampler = match spec.window {
        Some(bounds) => {
            let mut sampler = Sampler::start(spec.bootstrap, spec.topic, probe.clocks())?;
            outcome.first_visible = wait_for_close(spec, probe, &mut sampler, bounds)?;
            Some((sampler, bounds))
        }
        None => None,
    };
    let reader_started = Instant::now();
    let consumer: BaseConsumer = crate::workload::client_config(spec.bootstrap)?
        .set("group.id", format!("{}-watch", spec.topic))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        // Outside the window it may read as fast as it can.
        .set(
            "fetch.queue.backoff.ms",
            FETCH_QUEUE_BACKOFF.as_millis().to_string(),
        )
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
            outcome.expected = expected;
            if let Some((sampler, bounds)) = sampler {
                let samples = sampler.finish()?;
                outcome.window =
                    crate::visible::window(&samples, &read, expected, bounds, reader_started)?;
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
                if distinct == 0 && sampler.is_none() {
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
        fn clocks(&self) -> Arc<dyn Clocks> {
            Arc::new(crate::visible::Stopped)
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
            window: Some(Bounds::new(0.1, 0.9).unwrap()),
            live: None,
            stall: Duration::from_secs(2),
        };
        let error = watch(&spec, &mut Alive).unwrap_err();
        assert!(error.starts_with("no new output in 2s"), "{error}");
    }

    /// A contender that is gone before the window closed.
    struct Exited;

    impl Probe for Exited {
        fn clocks(&self) -> Arc<dyn Clocks> {
            Arc::new(crate::visible::Stopped)
        }
        fn alive(&mut self) -> Result<(), String> {
            Err("exactly-eos-1s exited (exit status: 1); its output is in x.log".to_owned())
        }
    }

    #[test]
    fn a_contender_that_exits_before_the_window_closed_fails_the_watch_by_name() {
        let spec = Watch {
            bootstrap: "127.0.0.1:1",
            topic: "bench-output-exited",
            expected: Arc::new(AtomicU64::new(10)),
            window: Some(Bounds::new(0.1, 0.9).unwrap()),
            live: None,
            stall: Duration::from_secs(60),
        };
        let error = watch(&spec, &mut Exited).unwrap_err();
        assert!(error.starts_with("exactly-eos-1s exited"), "{error}");
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
