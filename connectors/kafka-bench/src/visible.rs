//! When the output became readable under `read_committed`, whatever the
//! speed of the watcher that reads it.
//!
//! A thread asks the broker every [`EVERY`] for the last stable offset of
//! each output partition: ListOffsets for the latest offset under
//! `read_committed`, below which every transaction is decided and every
//! committed record readable. It takes the contender's CPU time with each
//! answer. Once the watcher has read the whole output, the offsets of its
//! records turn those samples into "this many records were visible at
//! that moment", and so into the throughput window.
//!
//! Why not time the window by the watcher's own reads: the watcher reads,
//! parses and checks every record on one thread, on the two cores that
//! the broker and the contender use too. A contender that wrote faster
//! than it read was timed at the watcher's speed: on 2026-12-02, the
//! `exactly` job had written all of a 5 M-record backlog (its progress
//! log) about 6 s before the watcher had read it. This module owns the
//! timing only; the watcher still reads and checks every record.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::workload::PARTITIONS;

/// How often the last stable offsets are asked for: the window's
/// resolution at each end.
const EVERY: Duration = Duration::from_millis(10);

/// How long one ListOffsets call may wait; a broker that stalls longer
/// only leaves a gap in the samples.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// Reads the contender's CPU time (user + system) so far; callable from
/// the sampling thread.
pub type CpuClock = Arc<dyn Fn() -> Result<Duration, String> + Send + Sync>;

/// One answer: each partition's last stable offset, and the contender's
/// CPU time, at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// When the answer came.
    pub at: Instant,
    /// The contender's CPU time then.
    pub cpu: Duration,
    /// The last stable offset of partition `i` at index `i`.
    pub stable: Vec<i64>,
}

/// The sampling thread; stopped when dropped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Vec<Sample>, String>>>,
}

impl Sampler {
    /// Starts sampling `topic` on `bootstrap`.
    pub fn start(bootstrap: &str, topic: &str, cpu: CpuClock) -> Result<Self, String> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("isolation.level", "read_committed")
            .create()
            .map_err(|e| format!("a read_committed client for {bootstrap}: {e}"))?;
        let mut latest = TopicPartitionList::new();
        for partition in 0..PARTITIONS {
            latest
                .add_partition_offset(topic, partition, Offset::End)
                .map_err(|e| e.to_string())?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut samples = Vec::new();
            while !stopped.load(Ordering::Acquire) {
                // An error (the broker busy or away) leaves a gap; the
                // window's ends are then known less precisely, not wrongly.
                if let Ok(answer) = consumer.offsets_for_times(latest.clone(), CALL_TIMEOUT)
                    && let Some(stable) = stable_offsets(&answer)
                {
                    samples.push(Sample {
                        at: Instant::now(),
                        cpu: cpu()?,
                        stable,
                    });
                }
                thread::sleep(EVERY);
            }
            Ok(samples)
        });
        Ok(Sampler {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops sampling and returns every sample, oldest first.
    pub fn finish(mut self) -> Result<Vec<Sample>, String> {
        self.stop.store(true, Ordering::Release);
        self.thread
            .take()
            .ok_or("the offset sampler was already stopped")?
            .join()
            .map_err(|_| "the offset sampler panicked".to_owned())?
    }
}

impl Drop for Sampler {
    /// Stops the thread without waiting for it (a run that failed).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Each partition's offset from a ListOffsets answer, or `None` when a
/// partition is missing or failed.
fn stable_offsets(answer: &TopicPartitionList) -> Option<Vec<i64>> {
    let mut stable = vec![-1; PARTITIONS as usize];
    for element in answer.elements() {
        let slot = stable.get_mut(usize::try_from(element.partition()).ok()?)?;
        match (element.error(), element.offset()) {
            (Ok(()), Offset::Offset(offset)) => *slot = offset,
            _ => return None,
        }
    }
    stable.iter().all(|o| *o >= 0).then_some(stable)
}

/// The offsets of the records the watcher read, per partition, in the
/// order read (ascending: one partition is read in order).
#[derive(Debug, Default)]
pub struct ReadOffsets(Vec<Vec<i64>>);

impl ReadOffsets {
    /// Notes a record read at `offset` of `partition` (a consumer never
    /// reports a negative partition; one would be left out).
    pub fn note(&mut self, partition: i32, offset: i64) {
        let Ok(index) = usize::try_from(partition) else {
            return;
        };
        if index >= self.0.len() {
            self.0.resize_with(index + 1, Vec::new);
        }
        self.0[index].push(offset);
    }

    /// How many of the read records lie below `stable`, the partitions'
    /// last stable offsets: how many were readable then.
    fn visible_below(&self, stable: &[i64]) -> u64 {
        self.0
            .iter()
            .zip(stable)
            .map(|(offsets, limit)| offsets.partition_point(|o| o < limit) as u64)
            .sum()
    }

    fn total(&self) -> u64 {
        self.0.iter().map(|offsets| offsets.len() as u64).sum()
    }
}

/// The throughput window: from the first sample at which `from` records
/// were visible to the first at which all that the watcher read were.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Window {
    /// Records that became visible inside it.
    pub records: u64,
    /// Its length.
    pub length: Duration,
    /// The contender's CPU time inside it.
    pub cpu: Duration,
}

/// The window that `samples` show for the records in `read`.
pub fn window(samples: &[Sample], read: &ReadOffsets, from: u64) -> Result<Window, String> {
    let total = read.total();
    let visible = |sample: &Sample| read.visible_below(&sample.stable);
    let open = samples
        .iter()
        .find(|s| visible(s) >= from)
        .ok_or_else(|| format!("no offset sample showed {from} of the {total} records visible"))?;
    let close = samples
        .iter()
        .find(|s| visible(s) == total)
        .ok_or_else(|| {
            format!(
                "no offset sample showed all {total} records visible (the last showed {})",
                samples.last().map_or(0, visible)
            )
        })?;
    Ok(Window {
        records: total - visible(open),
        length: close.at.saturating_duration_since(open.at),
        cpu: close.cpu.saturating_sub(open.cpu),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(start: Instant, ms: u64, cpu_ms: u64, stable: &[i64]) -> Sample {
        Sample {
            at: start + Duration::from_millis(ms),
            cpu: Duration::from_millis(cpu_ms),
            stable: stable.to_vec(),
        }
    }

    /// Two partitions: records at offsets 0..4 in one and at 0, 1, 3, 4
    /// in the other (offset 2 a transaction marker, never read as data).
    fn read() -> ReadOffsets {
        let mut read = ReadOffsets::default();
        for offset in 0..4 {
            read.note(0, offset);
        }
        for offset in [0, 1, 3, 4] {
            read.note(1, offset);
        }
        read
    }

    #[test]
    fn the_window_runs_from_the_share_visible_to_all_visible() {
        let start = Instant::now();
        let samples = [
            sample(start, 0, 10, &[0, 0]),
            sample(start, 10, 20, &[2, 1]),
            sample(start, 20, 35, &[3, 3]),
            sample(start, 30, 50, &[4, 4]),
            sample(start, 40, 60, &[4, 6]),
            sample(start, 50, 70, &[4, 6]),
        ];
        // 3 visible at 10 ms (2 + 1), all 8 at 40 ms; the marker at offset
        // 2 of partition 1 is not counted as a record.
        let window = window(&samples, &read(), 3).unwrap();
        assert_eq!(
            window,
            Window {
                records: 5,
                length: Duration::from_millis(30),
                cpu: Duration::from_millis(40),
            }
        );
    }

    #[test]
    fn samples_that_never_show_everything_are_an_error() {
        let start = Instant::now();
        let samples = [sample(start, 0, 0, &[1, 1]), sample(start, 10, 0, &[4, 2])];
        let error = window(&samples, &read(), 1).unwrap_err();
        assert_eq!(
            error,
            "no offset sample showed all 8 records visible (the last showed 6)"
        );
        let error = window(&samples, &read(), 7).unwrap_err();
        assert_eq!(error, "no offset sample showed 7 of the 8 records visible");
    }

    #[test]
    fn an_answer_without_every_partitions_offset_is_no_sample() {
        let answer = |offset_of_3: Offset, partitions: i32| {
            let mut answer = TopicPartitionList::new();
            for partition in 0..partitions {
                let offset = if partition == 3 {
                    offset_of_3
                } else {
                    Offset::Offset(i64::from(partition))
                };
                answer.add_partition_offset("t", partition, offset).unwrap();
            }
            answer
        };
        assert_eq!(
            stable_offsets(&answer(Offset::Offset(3), PARTITIONS)),
            Some((0..i64::from(PARTITIONS)).collect())
        );
        assert_eq!(stable_offsets(&answer(Offset::Invalid, PARTITIONS)), None);
        assert_eq!(
            stable_offsets(&answer(Offset::Offset(3), PARTITIONS - 1)),
            None
        );
    }

    /// On the real broker: records count as visible when their
    /// transaction commits (the last stable offset passes them), not when
    /// they are written, and not when a reader gets to them (here nothing
    /// reads them before sampling has stopped). Asserted on the order of
    /// events, with no bound on how late a sample may come.
    #[test]
    fn records_are_visible_from_their_commit_on_the_broker() {
        use exactly_kafka_tools::testing;
        use rdkafka::producer::Producer;

        let broker = testing::broker();
        let topic = testing::unique_topic("visible");
        testing::create_topic(&broker, &topic, PARTITIONS);
        let producer = testing::producer(&broker, Some(&testing::unique_topic("visible-txn")));
        let sampler = Sampler::start(&broker, &topic, Arc::new(|| Ok(Duration::ZERO))).unwrap();
        // Writes one record to every partition, holds the transaction open
        // for `hold`, and commits it; returns when the commit began.
        let transaction = |hold: Duration| {
            producer.begin_transaction().unwrap();
            for partition in 0..PARTITIONS {
                testing::send_to(&producer, &topic, partition, &["x"]);
            }
            thread::sleep(hold);
            let committing = Instant::now();
            producer
                .commit_transaction(testing::RDKAFKA_TIMEOUT)
                .unwrap();
            committing
        };
        let first_committing = transaction(Duration::ZERO);
        let second_committing = transaction(Duration::from_millis(500));
        thread::sleep(Duration::from_secs(1));
        let samples = sampler.finish().unwrap();

        // One record per partition per transaction: offsets 0 and 2 (1 and
        // 3 are the commit markers).
        let mut read = ReadOffsets::default();
        for partition in 0..PARTITIONS {
            read.note(partition, 0);
            read.note(partition, 2);
        }
        let all = 2 * PARTITIONS as u64;
        let visible = |sample: &Sample| read.visible_below(&sample.stable);
        // Nothing is visible before its transaction's commit began.
        for sample in &samples {
            let most = if sample.at < first_committing {
                0
            } else if sample.at < second_committing {
                all / 2
            } else {
                all
            };
            assert!(
                visible(sample) <= most,
                "{} records visible in a sample taken {:?} after the first commit began (0: before it), ahead of their commit",
                visible(sample),
                sample.at.saturating_duration_since(first_committing)
            );
        }
        // The first transaction was seen visible while the second was open
        // and written, and the window runs from that sight to the sight of
        // the second commit.
        let open = samples.iter().find(|s| visible(s) >= all / 2).unwrap();
        let close = samples.iter().find(|s| visible(s) == all).unwrap();
        assert!(open.at < second_committing && second_committing <= close.at);
        let window = window(&samples, &read, all / 2).unwrap();
        assert_eq!(window.records, all / 2);
        assert_eq!(window.length, close.at - open.at);
    }
}
