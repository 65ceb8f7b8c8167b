//! In-process crash test: 110 seeded runs of a stateful keyed pipeline (two
//! sources, a union, a keyed count) into the transactional file sink. Every
//! run fails at a random point: an operator error, an operator panic, or a
//! failure injected at a random phase of the checkpoint protocol. The job
//! restarts from its last checkpoint, and the committed output must be
//! exactly the expected one: nothing lost, nothing doubled, per-key order
//! kept.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use exactly::fault::{FaultEvent, FaultPoint};
use exactly::prelude::*;

const KEYS: u64 = 13;
const RECORDS_PER_SOURCE: u64 = 1000;

/// Records until the operator fails (-1: never); and how.
static FAIL_COUNTDOWN: AtomicI64 = AtomicI64::new(-1);
static FAIL_BY_PANIC: AtomicBool = AtomicBool::new(false);
static FAILURES_INJECTED: AtomicU64 = AtomicU64::new(0);

/// One input record: a key and its sequence number within the key.
type Event = (u64, u64);

#[state]
#[derive(Default)]
struct Seen {
    count: u64,
    last_seq: Option<u64>,
}

/// Slows the pipeline a little so that checkpoints land mid-stream, and
/// fails once when the countdown reaches zero.
#[operator]
fn pace(event: Event) -> Result<Event, String> {
    std::thread::sleep(Duration::from_micros(30));
    if FAIL_COUNTDOWN.fetch_sub(1, Ordering::SeqCst) == 0 {
        FAILURES_INJECTED.fetch_add(1, Ordering::SeqCst);
        if FAIL_BY_PANIC.load(Ordering::SeqCst) {
            panic!("injected operator panic at {event:?}");
        }
        return Err(format!("injected operator error at {event:?}"));
    }
    Ok(event)
}

/// Counts the events of a key; emits `(key, seq, count)`.
#[operator]
fn count(event: Event, #[state] seen: &mut Seen) -> (u64, u64, u64) {
    seen.count += 1;
    seen.last_seq = Some(event.1);
    (event.0, event.1, seen.count)
}

/// SplitMix64, for seeded choices without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Events of one source: keys `first, first + 2, ...`, each with
/// sequence numbers 0, 1, 2, ... in order.
fn events(first_key: u64) -> Vec<Event> {
    let keys: Vec<u64> = (first_key..KEYS).step_by(2).collect();
    let mut next_seq: HashMap<u64, u64> = HashMap::new();
    (0..RECORDS_PER_SOURCE)
        .map(|i| {
            let key = keys[(i as usize * 7) % keys.len()];
            let seq = next_seq.entry(key).or_default();
            *seq += 1;
            (key, *seq - 1)
        })
        .collect()
}

/// A fault hook that fails once, at the `occurrence`-th call at `point`.
fn hook_failing_at(point: &'static str, occurrence: u64) -> exactly::fault::FaultHook {
    let calls = Arc::new(Mutex::new(0u64));
    Arc::new(move |event: &FaultEvent<'_>| {
        if event.point.name() != point {
            return Ok(());
        }
        let mut calls = calls.lock().unwrap();
        *calls += 1;
        if *calls == occurrence {
            FAILURES_INJECTED.fetch_add(1, Ordering::SeqCst);
            return Err(format!("injected at {}", event.point).into());
        }
        Ok(())
    })
}

fn run(dir: &Path, hook: Option<exactly::fault::FaultHook>) -> exactly::Result<()> {
    let mut config = JobConfig::new()
        .parallelism(2)
        .batch_size(8)
        .checkpoint_interval(Duration::from_millis(3))
        .checkpoint_dir(dir.join("checkpoints"))
        .restart_strategy(RestartStrategy::fixed_delay(4, Duration::ZERO))
        .worker_threads(2);
    if let Some(hook) = hook {
        config = config.fault_hook(hook);
    }
    let job = Job::new("crash-test", config);
    // One subtask per source, so that every key has one ordered producer.
    let evens = job
        .source(VecSource::new(events(0)))
        .parallelism(1)
        .operator(pace);
    let odds = job
        .source(VecSource::new(events(1)))
        .parallelism(1)
        .operator(pace);
    evens
        .union(odds)
        .key_by(|e: &Event| e.0)
        .parallelism(2)
        .operator(count)
        .sink(FileSink::with_format(
            dir.join("out"),
            |(k, s, c): &(u64, u64, u64), line: &mut String| {
                line.push_str(&format!("{k} {s} {c}"));
            },
        ));
    job.run()
}

/// Reads the committed output and checks it against the input.
fn check(dir: &Path) -> Result<(), String> {
    let mut expected: HashMap<u64, u64> = HashMap::new();
    for (key, _) in events(0).into_iter().chain(events(1)) {
        *expected.entry(key).or_default() += 1;
    }
    let mut seen: HashMap<u64, Vec<(u64, u64)>> = HashMap::new();
    for entry in std::fs::read_dir(dir.join("out")).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.is_dir() {
            continue;
        }
        for line in std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())?
            .lines()
        {
            let v: Vec<u64> = line.split(' ').map(|x| x.parse().unwrap()).collect();
            seen.entry(v[0]).or_default().push((v[2], v[1]));
        }
    }
    for (key, total) in expected {
        let mut updates = seen.remove(&key).unwrap_or_default();
        updates.sort_unstable();
        let counts: Vec<u64> = updates.iter().map(|u| u.0).collect();
        let want: Vec<u64> = (1..=total).collect();
        if counts != want {
            let doubled = counts.windows(2).filter(|w| w[0] == w[1]).count();
            let lost = want
                .iter()
                .filter(|n| counts.binary_search(n).is_err())
                .count();
            return Err(format!(
                "key {key}: {lost} updates lost, {doubled} doubled ({} seen, {total} expected)",
                counts.len()
            ));
        }
        let seqs: Vec<u64> = updates.iter().map(|u| u.1).collect();
        let in_order: Vec<u64> = (0..total).collect();
        if seqs != in_order {
            return Err(format!(
                "key {key}: events processed out of order: {seqs:?}"
            ));
        }
    }
    if !seen.is_empty() {
        return Err(format!("unexpected keys in the output: {:?}", seen.keys()));
    }
    Ok(())
}

#[test]
fn a_hundred_and_ten_seeded_crashes_lose_and_double_nothing() {
    const RUNS: u64 = 110;
    // Eleven kinds of failure, each in ten runs: the operator returns an error,
    // the operator panics, or a fault is injected at one protocol phase.
    let kinds: Vec<&str> = ["operator-error", "operator-panic"]
        .into_iter()
        .chain(FaultPoint::NAMES)
        .collect();
    let mut failed: HashMap<&str, u32> = HashMap::new();
    for seed in 0..RUNS {
        let mut rng = Rng(seed);
        let kind = kinds[(seed % kinds.len() as u64) as usize];
        let dir = tempfile::tempdir().unwrap();
        FAIL_COUNTDOWN.store(-1, Ordering::SeqCst);
        FAIL_BY_PANIC.store(kind == "operator-panic", Ordering::SeqCst);
        let hook = match kind {
            "operator-error" | "operator-panic" => {
                FAIL_COUNTDOWN.store(rng.below(2 * RECORDS_PER_SOURCE) as i64, Ordering::SeqCst);
                None
            }
            point => {
                if point == "during-recovery" || point == "after-recovery-commit" {
                    // Recovery only runs after a first failure, once a
                    // checkpoint has completed.
                    let late = RECORDS_PER_SOURCE / 2 + rng.below(RECORDS_PER_SOURCE);
                    FAIL_COUNTDOWN.store(late as i64, Ordering::SeqCst);
                }
                Some(hook_failing_at(point, 1 + rng.below(3)))
            }
        };
        let before = FAILURES_INJECTED.load(Ordering::SeqCst);
        let path = dir.path().to_path_buf();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || done_tx.send(run(&path, hook)));
        let result = done_rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("seed {seed}: the job hung"));
        result.unwrap_or_else(|e| panic!("seed {seed}: the job failed: {e}"));
        check(dir.path()).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        if FAILURES_INJECTED.load(Ordering::SeqCst) > before {
            *failed.entry(kind).or_default() += 1;
        }
    }
    eprintln!("crash test: runs that failed and recovered, by kind: {failed:?}");
    for kind in kinds {
        let runs = failed.get(kind).copied().unwrap_or(0);
        assert!(
            runs >= 8,
            "only {runs} of 10 runs of kind {kind} actually failed: {failed:?}"
        );
    }
}
