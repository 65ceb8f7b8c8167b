//! When the output became readable under `read_committed`, whatever the
//! speed of the watcher that reads it, and what the contender and the
//! broker spent meanwhile.
//!
//! A thread asks the broker every [`EVERY`] for the last stable offset of
//! each output partition: ListOffsets for the latest offset under
//! `read_committed`, below which every transaction is decided and every
//! committed record readable. With each answer it reads the contender's
//! and the broker's CPU time, and every [`THREADS_EVERY`] answers the CPU
//! time of the contender's JIT and GC threads. Once the watcher has read
//! the whole output, the offsets of its records turn those samples into
//! "this many records were visible at that moment", and so into the
//! throughput window and its quarters.
//!
//! Why not time the window by the watcher's own reads: the watcher reads,
//! parses and checks every record on one thread, on the two cores that
//! the broker and the contender use too. A contender that wrote faster
//! than it read was timed at the watcher's speed: on 2026-12-02, the
//! `exactly` job had written all of a 5 M-record backlog (its progress
//! log) about 6 s before the watcher had read it. So the watcher now
//! waits until the window has closed ([`Bounds::reader_start`]) before it
//! reads at all, and takes no CPU from the contender inside the window.
//! This module owns the timing only; the watcher reads and checks every
//! record.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::procfs::ThreadCpu;
use crate::workload::PARTITIONS;

/// How often the last stable offsets are asked for: the window's
/// resolution at each end.
const EVERY: Duration = Duration::from_millis(10);

/// Every this many samples also read the contender's JIT and GC threads
/// (about every 250 ms): a JVM has dozens of threads, and reading each
/// one's `/proc` file every 10 ms would take CPU from the contender.
const THREADS_EVERY: usize = 25;

/// How long one ListOffsets call may wait; a broker that stalls longer
/// only leaves a gap in the samples.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// CPU time so far (user + system) of the contender's process and the
/// broker's.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cpu {
    /// The contender's process, all its threads.
    pub contender: Duration,
    /// The broker's process.
    pub broker: Duration,
}

impl Cpu {
    fn since(&self, earlier: &Cpu) -> Cpu {
        Cpu {
            contender: self.contender.saturating_sub(earlier.contender),
            broker: self.broker.saturating_sub(earlier.broker),
        }
    }
}

/// What the sampling thread reads besides the offsets; callable from it.
pub trait Clocks: Send + Sync {
    /// The contender's and the broker's CPU time so far.
    fn cpu(&self) -> Result<Cpu, String>;
    /// The CPU time so far of the contender's JIT and GC threads.
    fn threads(&self) -> Result<ThreadCpu, String>;
}

/// One answer: each partition's last stable offset, and the CPU times, at
/// one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// When the answer came.
    pub at: Instant,
    /// The contender's and broker's CPU time then.
    pub cpu: Cpu,
    /// The contender's JIT and GC threads' CPU time then, in every
    /// [`THREADS_EVERY`]-th sample.
    pub threads: Option<ThreadCpu>,
    /// The last stable offset of partition `i` at index `i`.
    pub stable: Vec<i64>,
}

/// The sampling thread; stopped when dropped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    /// The sum of the partitions' last stable offsets in the latest sample:
    /// records visible so far, plus the transaction markers among them.
    stable_total: Arc<AtomicI64>,
    thread: Option<JoinHandle<Result<Vec<Sample>, String>>>,
}

impl Sampler {
    /// Starts sampling `topic` on `bootstrap`.
    pub fn start(bootstrap: &str, topic: &str, clocks: Arc<dyn Clocks>) -> Result<Self, String> {
        let consumer: BaseConsumer = crate::workload::client_config(bootstrap)?
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
        let stable_total = Arc::new(AtomicI64::new(0));
        let (stopped, total) = (Arc::clone(&stop), Arc::clone(&stable_total));
        let thread = thread::spawn(move || {
            let mut samples: Vec<Sample> = Vec::new();
            while !stopped.load(Ordering::Acquire) {
                // An error (the broker busy or away) leaves a gap; the
                // window's ends are then known less precisely, not wrongly.
                if let Ok(answer) = consumer.offsets_for_times(latest.clone(), CALL_TIMEOUT)
                    && let Some(stable) = stable_offsets(&answer)
                {
                    let threads = samples
                        .len()
                        .is_multiple_of(THREADS_EVERY)
                        .then(|| clocks.threads())
                        .transpose()?;
                    total.store(stable.iter().sum(), Ordering::Release);
                    samples.push(Sample {
                        at: Instant::now(),
                        cpu: clocks.cpu()?,
                        threads,
                        stable,
                    });
                }
                thread::sleep(EVERY);
            }
            Ok(samples)
        });
        Ok(Sampler {
            stop,
            stable_total,
            thread: Some(thread),
        })
    }

    /// The sum of the last stable offsets in the latest sample: at least
    /// the records visible then (transaction markers occupy offsets too).
    pub fn stable_total(&self) -> i64 {
        self.stable_total.load(Ordering::Acquire)
    }

    /// Fails with the sampling thread's error once it has stopped on one
    /// (a CPU clock that could not be read).
    pub fn running(&mut self) -> Result<(), String> {
        if !self.thread.as_ref().is_some_and(JoinHandle::is_finished) {
            return Ok(());
        }
        self.join().map(drop)
    }

    fn join(&mut self) -> Result<Vec<Sample>, String> {
        self.thread
            .take()
            .ok_or("the offset sampler was already stopped")?
            .join()
            .map_err(|_| "the offset sampler panicked".to_owned())?
    }

    /// Stops sampling and returns every sample, oldest first.
    pub fn finish(mut self) -> Result<Vec<Sample>, String> {
        self.stop.store(true, Ordering::Release);
        self.join()
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
}

/// Where the throughput window opens and closes, as shares of the
/// expected output: late enough to leave start-up and JIT warm-up out,
/// early enough that the contender is still busy when it closes (the last
/// records trickle out with the last commit).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    /// The window opens when this share of the output is visible.
    pub from: f64,
    /// It closes when this share is.
    pub to: f64,
}

impl Bounds {
    /// Both shares, checked: `0 <= from < to <= 1`.
    pub fn new(from: f64, to: f64) -> Result<Bounds, String> {
        if (0.0..to).contains(&from) && to <= 1.0 {
            Ok(Bounds { from, to })
        } else {
            Err(format!(
                "the window must open before it closes, within the output: got --window-from {from}, --window-to {to} (e.g. 0.35 and 0.9)"
            ))
        }
    }

    /// The visible records that open and close the window, of `expected`.
    fn records(&self, expected: u64) -> (u64, u64) {
        let share = |fraction: f64| (fraction * expected as f64).ceil() as u64;
        (share(self.from), share(self.to))
    }

    /// The sum of last stable offsets at which the watcher may start
    /// reading: past the window's close by 1 % of the output, so that the
    /// transaction markers among the offsets (a few per partition and
    /// commit) cannot make it start before the window has closed. Never
    /// above `expected`, which every run reaches.
    pub fn reader_start(&self, expected: u64) -> i64 {
        let (_, to) = self.records(expected);
        i64::try_from((to + expected / 100).min(expected)).unwrap_or(i64::MAX)
    }
}

/// The throughput window, from the first sample at which the window's
/// opening share of the output was visible to the first at which its
/// closing share was.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Window {
    /// Records that became visible inside it.
    pub records: u64,
    /// Its length.
    pub length: Duration,
    /// The contender's and the broker's CPU time inside it.
    pub cpu: Cpu,
    /// The contender's JIT and GC threads' CPU time inside it, to
    /// [`THREADS_EVERY`] samples at each end.
    pub threads: ThreadCpu,
    /// Records per second in each quarter of it (quarters of its records).
    pub quarters: [f64; 4],
    /// How long the watcher was already reading when it closed: zero
    /// unless transaction markers made the watcher start early.
    pub reader_overlap: Duration,
}

/// Records per second of `records` over `length`.
pub fn per_second(records: u64, length: Duration) -> f64 {
    records as f64 / length.as_secs_f64().max(1e-9)
}

/// The window that `samples` show for the records in `read`, `expected`
/// of them in all, with the watcher started reading at `reader_started`.
pub fn window(
    samples: &[Sample],
    read: &ReadOffsets,
    expected: u64,
    bounds: Bounds,
    reader_started: Instant,
) -> Result<Window, String> {
    let visible = |sample: &Sample| read.visible_below(&sample.stable);
    let (from, to) = bounds.records(expected);
    // The first sample with `records` visible, by index.
    let first = |records: u64| -> Result<usize, String> {
        samples.iter().position(|s| visible(s) >= records).ok_or_else(|| {
            format!(
                "no offset sample showed {records} of the {expected} records visible (the last showed {})",
                samples.last().map_or(0, visible)
            )
        })
    };
    let marks = [0, 1, 2, 3, 4].map(|quarter| from + (to - from) * quarter / 4);
    let mut at = [0; 5];
    for (index, records) in at.iter_mut().zip(marks) {
        *index = first(records)?;
    }
    let (open, close) = (&samples[at[0]], &samples[at[4]]);
    let quarters = [0, 1, 2, 3].map(|q| {
        let (a, b) = (&samples[at[q]], &samples[at[q + 1]]);
        per_second(
            visible(b) - visible(a),
            b.at.saturating_duration_since(a.at),
        )
    });
    // The latest thread reading at or before a sample.
    let threads_at = |index: usize| {
        samples[..=index]
            .iter()
            .rev()
            .find_map(|s| s.threads)
            .unwrap_or_default()
    };
    let (opened, closed) = (threads_at(at[0]), threads_at(at[4]));
    Ok(Window {
        records: visible(close) - visible(open),
        length: close.at.saturating_duration_since(open.at),
        cpu: close.cpu.since(&open.cpu),
        threads: ThreadCpu {
            jit: closed.jit.saturating_sub(opened.jit),
            gc: closed.gc.saturating_sub(opened.gc),
        },
        quarters,
        reader_overlap: close.at.saturating_duration_since(reader_started),
    })
}

/// Clocks that never move, for tests.
#[cfg(test)]
pub struct Stopped;

#[cfg(test)]
impl Clocks for Stopped {
    fn cpu(&self) -> Result<Cpu, String> {
        Ok(Cpu::default())
    }
    fn threads(&self) -> Result<ThreadCpu, String> {
        Ok(ThreadCpu::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at_ms(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    fn sample(start: Instant, ms: u64, cpu_ms: u64, stable: &[i64]) -> Sample {
        Sample {
            at: at_ms(start, ms),
            cpu: Cpu {
                contender: Duration::from_millis(cpu_ms),
                broker: Duration::from_millis(cpu_ms / 2),
            },
            threads: None,
            stable: stable.to_vec(),
        }
    }

    /// One partition holding records at offsets `0..records`.
    fn read_of(records: i64) -> ReadOffsets {
        let mut read = ReadOffsets::default();
        for offset in 0..records {
            read.note(0, offset);
        }
        read
    }

    /// Two partitions: records at offsets 0..4 in one and at 0, 1, 3, 4
    /// in the other (offset 2 a transaction marker, never read as data).
    fn read_with_a_marker() -> ReadOffsets {
        let mut read = read_of(4);
        for offset in [0, 1, 3, 4] {
            read.note(1, offset);
        }
        read
    }

    #[test]
    fn the_window_runs_from_the_opening_share_to_the_closing_share() {
        let start = Instant::now();
        let samples = [
            sample(start, 0, 10, &[0, 0]),
            sample(start, 10, 20, &[2, 1]),
            sample(start, 20, 35, &[3, 3]),
            sample(start, 30, 50, &[4, 4]),
            sample(start, 40, 60, &[4, 6]),
            sample(start, 50, 70, &[4, 6]),
        ];
        // Of 8 records, 3 (37.5 %) visible at 10 ms (2 + 1), 7 (87.5 %)
        // at 30 ms; the marker at offset 2 of partition 1 is no record.
        let bounds = Bounds::new(0.375, 0.875).unwrap();
        let window = window(&samples, &read_with_a_marker(), 8, bounds, at_ms(start, 45)).unwrap();
        assert_eq!(window.records, 4);
        assert_eq!(window.length, Duration::from_millis(20));
        assert_eq!(
            window.cpu,
            Cpu {
                contender: Duration::from_millis(30),
                broker: Duration::from_millis(15),
            }
        );
        assert_eq!(window.reader_overlap, Duration::ZERO);
    }

    #[test]
    fn each_quarter_of_the_window_has_its_own_rate_so_a_stall_shows() {
        let start = Instant::now();
        // 100 records: from 20 to 100 visible, 20 per quarter; the third
        // quarter takes 1 s, the others 100 ms.
        let samples = [
            sample(start, 0, 0, &[20]),
            sample(start, 100, 0, &[40]),
            sample(start, 200, 0, &[60]),
            sample(start, 1200, 0, &[80]),
            sample(start, 1300, 0, &[100]),
        ];
        let window = window(
            &samples,
            &read_of(100),
            100,
            Bounds::new(0.2, 1.0).unwrap(),
            at_ms(start, 1300),
        )
        .unwrap();
        assert_eq!(window.quarters, [200.0, 200.0, 20.0, 200.0]);
        assert_eq!(window.records, 80);
        assert_eq!(window.length, Duration::from_millis(1300));
    }

    #[test]
    fn jit_and_gc_time_is_taken_from_the_latest_reading_at_each_end() {
        let start = Instant::now();
        let threads = |jit_ms, gc_ms| {
            Some(ThreadCpu {
                jit: Duration::from_millis(jit_ms),
                gc: Duration::from_millis(gc_ms),
            })
        };
        let mut samples = [
            sample(start, 0, 0, &[0]),
            sample(start, 10, 0, &[5]),
            sample(start, 20, 0, &[10]),
            sample(start, 30, 0, &[15]),
            sample(start, 40, 0, &[20]),
        ];
        samples[0].threads = threads(100, 10);
        samples[2].threads = threads(150, 30);
        samples[4].threads = threads(900, 900);
        // Opens at 5 records (sample 1: reading of sample 0), closes at 15
        // (sample 3: reading of sample 2).
        let bounds = Bounds::new(0.25, 0.75).unwrap();
        let window = window(&samples, &read_of(20), 20, bounds, at_ms(start, 40)).unwrap();
        assert_eq!(window.threads, threads(50, 20).unwrap());
    }

    #[test]
    fn a_watcher_that_started_before_the_close_is_reported() {
        let start = Instant::now();
        let samples = [sample(start, 0, 0, &[0]), sample(start, 500, 0, &[10])];
        let bounds = Bounds::new(0.0, 1.0).unwrap();
        let window = window(&samples, &read_of(10), 10, bounds, at_ms(start, 200)).unwrap();
        assert_eq!(window.reader_overlap, Duration::from_millis(300));
    }

    #[test]
    fn the_watcher_starts_past_the_close_by_a_hundredth_of_the_output() {
        let bounds = Bounds::new(0.35, 0.9).unwrap();
        assert_eq!(bounds.reader_start(20_000_000), 18_200_000);
        assert_eq!(Bounds::new(0.1, 1.0).unwrap().reader_start(1000), 1000);
        assert_eq!(Bounds::new(0.1, 0.995).unwrap().reader_start(1000), 1000);
    }

    #[test]
    fn bounds_must_open_before_they_close_within_the_output() {
        for (from, to) in [(0.9, 0.35), (0.5, 0.5), (-0.1, 0.5), (0.2, 1.5)] {
            let error = Bounds::new(from, to).unwrap_err();
            assert!(error.contains("--window-from"), "{error}");
        }
    }

    #[test]
    fn samples_that_never_show_the_closing_share_are_an_error() {
        let start = Instant::now();
        let samples = [sample(start, 0, 0, &[1, 1]), sample(start, 10, 0, &[4, 2])];
        let bounds = Bounds::new(0.1, 1.0).unwrap();
        let error = window(&samples, &read_with_a_marker(), 8, bounds, start).unwrap_err();
        assert_eq!(
            error,
            "no offset sample showed 8 of the 8 records visible (the last showed 6)"
        );
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
        let sampler = Sampler::start(&broker, &topic, Arc::new(Stopped)).unwrap();
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
        // Two records and two commit markers per partition.
        assert_eq!(sampler.stable_total(), 4 * i64::from(PARTITIONS));
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
        let bounds = Bounds::new(0.5, 1.0).unwrap();
        let window = window(&samples, &read, all, bounds, close.at).unwrap();
        assert_eq!(window.records, all / 2);
        assert_eq!(window.length, close.at - open.at);
    }
}
