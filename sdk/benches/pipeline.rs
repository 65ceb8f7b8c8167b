//! Throughput benchmarks; see BENCHMARKS.md.
//!
//! `cargo bench -p exactly --bench pipeline` prints:
//! 1. instructions per record of the word-count pipeline (three operators:
//!    normalise, keyed count, filter; one worker thread) against the same
//!    work as one hand-written single-threaded loop, counted by callgrind;
//! 2. the wall-clock throughput of that pipeline, with checkpoints every
//!    100 ms, against the loop, alternated three times in one run so that
//!    the ratio is measured side by side, and, when `BENCH_FLINK_JAR` is
//!    set, against the same word count on Apache Flink in each round (see
//!    [Flink](#flink));
//! 3. bincode against postcard on a keyed state's map of one million
//!    entries: encoded size, encode and decode throughput.
//!
//! The checkpoint and restore of a large keyed state are measured by the
//! `state` bench.
//!
//! Set `BENCH_WORDS` to change the number of records of part 2 (default 4
//! million), `BENCH_ONLY=instructions` to run only part 1,
//! `BENCH_ONLY=throughput` to run only parts 1 and 2, and
//! `BENCH_CALLGRIND_DIR` to keep the callgrind output files of part 1 there
//! (for `callgrind_annotate`). With `--features mimalloc` the bench runs
//! on mimalloc instead of the system allocator.
//!
//! # Flink
//!
//! `BENCH_FLINK_JAR` names the jar of the Maven project
//! `sdk/benches/flink-wordcount` (`scripts/bench-flink-wordcount` builds it
//! and runs this bench with it). Each wall-clock round then also runs, as a
//! child process (`java -jar`), the same word count on Flink's local
//! MiniCluster over the same words: one unmeasured warm-up run at
//! parallelism 1 and 2 for the JIT, then one measured run at each. The
//! round prints the ratio of the pipeline's records/s to Flink's, one
//! worker thread against parallelism 1 and two against 2, and the run ends
//! with their medians. Flink's rate is taken over its own job duration
//! (`JobExecutionResult::getNetRuntime`), which leaves out starting its
//! MiniCluster, as the pipeline's leaves out building the tokio runtime.
//! If the jar is missing the bench says how to build it and fails.
//!
//! # Instruction counts
//!
//! Wall-clock ratios on a shared two-core machine swing by a quarter from
//! run to run; instruction counts do not. Part 1 re-executes this binary
//! under `valgrind --tool=callgrind` (with [`WORKLOAD_VAR`] naming what to
//! run) and reads the `totals:` line of the output file. That is all the
//! `gungraun`/`iai-callgrind` crates would add here, and they need a runner
//! binary of the matching version installed with `cargo install` and a
//! harness of their own, while this bench must print the instruction counts
//! and the wall-clock rounds in one command. Valgrind is required: without
//! it the bench says how to install it and fails.
//!
//! Each workload runs at [`CALLGRIND_RECORDS`] and at twice that; the
//! difference of the two counts, divided by the difference in records,
//! cancels start-up (process, runtime, job graph, the final checkpoint).
//! Building the input is counted by a workload of its own and subtracted.
//! The pipeline runs without periodic checkpoints there: they are
//! time-driven, so their number would depend on valgrind's slowdown.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use exactly::MetricsSnapshot;
use exactly::codec::Codec;
use exactly::prelude::*;

#[path = "shared/allocator.rs"]
mod allocator;
use allocator::ALLOCATOR;

#[state]
#[derive(Default)]
struct WordCount {
    count: u64,
}

#[operator]
fn normalise(word: String) -> String {
    word.to_lowercase()
}

#[operator]
fn count(word: String, #[state] c: &mut WordCount) -> (String, u64) {
    c.count += 1;
    (word, c.count)
}

#[operator]
fn every_hundredth(update: &(String, u64)) -> bool {
    update.1.is_multiple_of(100)
}

/// The text whose words, cycled, are the input (the Flink job reads it too).
const WORDS_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/data/words.txt");

fn words(n: usize) -> Arc<Vec<String>> {
    let text = std::fs::read_to_string(WORDS_FILE).expect("examples/data/words.txt");
    let vocabulary: Vec<&str> = text.split_whitespace().collect();
    vocabulary
        .iter()
        .cycle()
        .take(n)
        .map(|w| (*w).to_owned())
        .collect::<Vec<_>>()
        .into()
}

/// The same work as the pipeline, by hand: one thread, no checkpoints.
fn hand_written(words: &[String]) -> (Duration, usize) {
    let started = Instant::now();
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut kept = 0usize;
    for word in words {
        let word = word.clone().to_lowercase();
        let c = counts.entry(word.clone()).or_default();
        *c += 1;
        let update = (word, *c);
        if update.1.is_multiple_of(100) {
            kept += 1;
        }
        black_box(update);
    }
    (started.elapsed(), kept)
}

/// Runs the pipeline over `words` on `threads` worker threads, with a
/// checkpoint every `interval` (or only the final one). The words stay the
/// caller's, as the hand-written loop's do.
fn pipeline(
    words: Arc<Vec<String>>,
    checkpoints: &Path,
    threads: usize,
    interval: Option<Duration>,
) -> (Duration, MetricsSnapshot) {
    let _ = std::fs::remove_dir_all(checkpoints);
    let mut config = JobConfig::new()
        .checkpoint_dir(checkpoints)
        .restart_strategy(RestartStrategy::none());
    if let Some(interval) = interval {
        config = config.checkpoint_interval(interval);
    }
    let job = Job::new("bench", config);
    job.source(VecSource::shared(words))
        .operator(normalise)
        .key_by(|w: &String| w.clone())
        .operator(count)
        .operator(every_hundredth)
        .sink(DiscardSink::new());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let metrics = runtime.block_on(async { job.spawn().unwrap().join().await.unwrap() });
    (started.elapsed(), metrics)
}

/// Names the jar of `sdk/benches/flink-wordcount` to compare against.
const FLINK_JAR_VAR: &str = "BENCH_FLINK_JAR";

/// One measured Flink run, from the job's result line.
struct FlinkRun {
    records_per_s: f64,
    checkpoints: u64,
}

/// The Flink jar named by [`FLINK_JAR_VAR`], if set; fails the bench,
/// saying how to build it, when the file is missing.
fn flink_jar() -> Option<PathBuf> {
    let jar = PathBuf::from(std::env::var_os(FLINK_JAR_VAR)?);
    if !jar.is_file() {
        let cwd = std::env::current_dir().unwrap_or_default();
        eprintln!(
            "{FLINK_JAR_VAR}={} names no file (relative paths start from {}).\n\
             Build the jar with `mvn -q -f sdk/benches/flink-wordcount/pom.xml package` \
             (it is then sdk/benches/flink-wordcount/target/flink-wordcount.jar), \
             or run scripts/bench-flink-wordcount, which builds it and runs this bench with it.",
            jar.display(),
            cwd.display()
        );
        std::process::exit(2);
    }
    Some(jar)
}

/// Runs the Flink word count over the first `records` words in a new JVM:
/// one unmeasured warm-up run at parallelism 1 and 2, then one measured run
/// at each. Returns the measured runs, parallelism 1 first.
fn flink(jar: &Path, records: usize) -> [FlinkRun; 2] {
    let run = Command::new("java")
        .arg("-jar")
        .arg(jar)
        .args(["--words", WORDS_FILE, "--records", &records.to_string()])
        .args(["--parallelism", "1,2", "--warmup-runs", "1", "--runs", "1"])
        .output()
        .unwrap_or_else(|e| panic!("could not start `java -jar {}`: {e}", jar.display()));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "the Flink word count failed: {}\n{stdout}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    let measured = |parallelism: &str| {
        let line = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("flink-wordcount:"))
            .find(|l| {
                l.contains(" run=measured ") && l.contains(&format!(" parallelism={parallelism} "))
            })
            .unwrap_or_else(|| panic!("no measured run at parallelism {parallelism}:\n{stdout}"));
        let field = |name: &str| -> f64 {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
        };
        FlinkRun {
            records_per_s: field("records_per_s"),
            checkpoints: field("checkpoints") as u64,
        }
    };
    [measured("1"), measured("2")]
}

/// The median of an odd number of values.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn mb_per_s(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / 1e6 / took.as_secs_f64()
}

/// Names the workload a callgrind child runs: `setup`, `loop` or
/// `pipeline`.
const WORKLOAD_VAR: &str = "BENCH_CALLGRIND_WORKLOAD";
/// The record count the callgrind child runs at.
const RECORDS_VAR: &str = "BENCH_CALLGRIND_RECORDS";
/// The smaller of the two record counts measured under callgrind.
const CALLGRIND_RECORDS: usize = 200_000;

/// Runs one workload for [`callgrind`]. Every workload creates and
/// removes the checkpoint directory, and frees the input on this thread
/// before removing it, so that they differ only in the work: glibc's
/// allocator consolidates its free lists at the first large allocation
/// after the input is freed, at a cost in proportion to the records.
fn run_workload(workload: &str, records: usize) {
    let dir = tempfile::tempdir().unwrap();
    let input = words(records);
    match workload {
        "setup" => {}
        "loop" => {
            black_box(hand_written(&input));
        }
        "pipeline" => {
            let (_, metrics) = pipeline(Arc::clone(&input), dir.path(), 1, None);
            assert_eq!(metrics.records_in, records as u64);
        }
        other => panic!("unknown {WORKLOAD_VAR} {other:?}"),
    }
    drop(black_box(input));
    drop(dir);
}

/// The instructions `workload` executes at `records` records, counted by
/// callgrind in a child process of this binary. The output file is kept
/// in `dir`.
fn callgrind(dir: &Path, workload: &str, records: usize) -> u64 {
    let out = dir.join(format!("callgrind.out.{workload}.{records}"));
    let exe = std::env::current_exe().expect("the bench binary's path");
    let run = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(exe)
        .env(WORKLOAD_VAR, workload)
        .env(RECORDS_VAR, records.to_string())
        .output()
        .expect("valgrind was found a moment ago");
    assert!(
        run.status.success(),
        "callgrind run of {workload} at {records} records failed: {}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    let text = std::fs::read_to_string(&out).expect("callgrind output file");
    text.lines()
        .find_map(|line| line.strip_prefix("totals:"))
        .or_else(|| text.lines().find_map(|line| line.strip_prefix("summary:")))
        .and_then(|total| total.trim().parse().ok())
        .unwrap_or_else(|| panic!("no totals line in {}", out.display()))
}

/// Fails the bench, saying how to install valgrind, when it is missing.
fn require_valgrind() {
    let found = Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        eprintln!(
            "valgrind is not installed, and this bench counts instructions with callgrind.\n\
             Install it (Debian/Ubuntu: `apt-get install valgrind`; Fedora: `dnf install valgrind`; \
             macOS has no current valgrind: run the bench on Linux), then run the bench again."
        );
        std::process::exit(2);
    }
}

/// Part 1: instructions per record, loop and pipeline, from callgrind.
fn instructions_per_record() {
    require_valgrind();
    let kept = std::env::var_os("BENCH_CALLGRIND_DIR").map(std::path::PathBuf::from);
    let temp = tempfile::tempdir().unwrap();
    let dir = kept.as_deref().unwrap_or(temp.path());
    std::fs::create_dir_all(dir).unwrap();
    let (small, large) = (CALLGRIND_RECORDS, 2 * CALLGRIND_RECORDS);
    println!(
        "## Instructions per record (callgrind; {small} and {large} records, difference; 1 worker thread; {ALLOCATOR})\n"
    );
    let measure = |workload: &str| {
        let (a, b) = (
            callgrind(dir, workload, small),
            callgrind(dir, workload, large),
        );
        (a, b, (b as f64 - a as f64) / (large - small) as f64)
    };
    let setup = measure("setup");
    let hand = measure("loop");
    let piped = measure("pipeline");
    println!("| workload | instructions at {small} | at {large} | per record | net of the input |");
    println!("|---|---|---|---|---|");
    for (name, w) in [
        ("building the input", setup),
        ("hand-written loop", hand),
        ("pipeline, 1 worker thread", piped),
    ] {
        println!(
            "| {name} | {} | {} | {:.0} | {:.0} |",
            w.0,
            w.1,
            w.2,
            w.2 - setup.2
        );
    }
    let (hand, piped) = (hand.2 - setup.2, piped.2 - setup.2);
    println!(
        "\ninstructions per record: hand-written loop {hand:.0}, pipeline {piped:.0}, ratio {:.2}\n",
        piped / hand
    );
    if let Some(kept) = &kept {
        println!("callgrind output files kept in {}\n", kept.display());
    }
}

fn main() {
    if let Ok(workload) = std::env::var(WORKLOAD_VAR) {
        let records = std::env::var(RECORDS_VAR)
            .ok()
            .and_then(|v| v.parse().ok())
            .expect("the record count of a callgrind workload");
        run_workload(&workload, records);
        return;
    }
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let jar = flink_jar();
    instructions_per_record();
    if only == "instructions" {
        return;
    }
    let n: usize = std::env::var("BENCH_WORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4_000_000);
    let dir = tempfile::tempdir().unwrap();
    let input = words(n);
    println!(
        "## Keyed word count, {n} records, 3 operators, checkpoints every 100 ms, {ALLOCATOR}\n"
    );
    if jar.is_some() {
        println!(
            "Flink: the same job on a local MiniCluster in a JVM of its own per round, \
             after one warm-up run at each parallelism; \"vs Flink\" is the pipeline's rate over Flink's, \
             1 worker thread against parallelism 1 and 2 against 2.\n"
        );
    }
    let mut header = String::from(
        "| round | hand-written loop (1 thread) | pipeline, 2 worker threads | ratio | pipeline, 1 worker thread | ratio | checkpoints (2 / 1 threads) |",
    );
    let mut rule = String::from("|---|---|---|---|---|---|---|");
    if jar.is_some() {
        header += " Flink, parallelism 2 | vs Flink | Flink, parallelism 1 | vs Flink | Flink checkpoints (2 / 1) |";
        rule += "---|---|---|---|---|";
    }
    println!("{header}\n{rule}");
    let (mut two, mut one) = (Vec::new(), Vec::new());
    let (mut flink_two, mut flink_one) = (Vec::new(), Vec::new());
    for round in 1..=3 {
        let (hand, kept) = hand_written(&input);
        let every = Some(Duration::from_millis(100));
        let (piped, metrics) = pipeline(Arc::clone(&input), &dir.path().join("pipeline"), 2, every);
        let (single, single_metrics) =
            pipeline(Arc::clone(&input), &dir.path().join("pipeline"), 1, every);
        black_box(kept);
        let rate = |took: Duration| n as f64 / took.as_secs_f64();
        let (hand_rate, pipe_rate, single_rate) = (rate(hand), rate(piped), rate(single));
        two.push(pipe_rate / hand_rate);
        one.push(single_rate / hand_rate);
        let mut row = format!(
            "| {round} | {:.2} M rec/s | {:.2} M rec/s | {:.0} % | {:.2} M rec/s | {:.0} % | {} / {} |",
            hand_rate / 1e6,
            pipe_rate / 1e6,
            100.0 * pipe_rate / hand_rate,
            single_rate / 1e6,
            100.0 * single_rate / hand_rate,
            metrics.checkpoints_completed,
            single_metrics.checkpoints_completed
        );
        if let Some(jar) = &jar {
            let [p1, p2] = flink(jar, n);
            flink_two.push(pipe_rate / p2.records_per_s);
            flink_one.push(single_rate / p1.records_per_s);
            row += &format!(
                " {:.2} M rec/s | {:.2}x | {:.2} M rec/s | {:.2}x | {} / {} |",
                p2.records_per_s / 1e6,
                pipe_rate / p2.records_per_s,
                p1.records_per_s / 1e6,
                single_rate / p1.records_per_s,
                p2.checkpoints,
                p1.checkpoints
            );
        }
        println!("{row}");
    }
    println!(
        "\nmedian ratio to the hand-written loop: {:.0} % with 2 worker threads, {:.0} % with 1",
        100.0 * median(two),
        100.0 * median(one)
    );
    if jar.is_some() {
        println!(
            "median ratio to Flink: {:.2}x with 2 worker threads (Flink at parallelism 2), {:.2}x with 1 (parallelism 1)",
            median(flink_two),
            median(flink_one)
        );
    }
    println!();

    if only == "throughput" {
        return;
    }
    let keys = 1_000_000u64;
    println!("## Codecs on a keyed state's map (HashMap<u64, (WordCount,)>, {keys} entries)\n");
    println!("| codec | size | encode | decode |");
    println!("|---|---|---|---|");
    let state: HashMap<u64, (WordCount,)> = (0..keys)
        .map(|k| (k, (WordCount { count: k % 1000 },)))
        .collect();
    for codec in [Codec::Bincode, Codec::Postcard] {
        let mut best = (Duration::MAX, Duration::MAX, 0);
        for _ in 0..3 {
            let started = Instant::now();
            let bytes = codec.encode(&state, "state").unwrap();
            let encoded = started.elapsed();
            let started = Instant::now();
            let back: HashMap<u64, (WordCount,)> = codec.decode(&bytes, "state").unwrap();
            let decoded = started.elapsed();
            assert_eq!(back.len(), state.len());
            best = (best.0.min(encoded), best.1.min(decoded), bytes.len());
        }
        println!(
            "| {codec:?} | {:.1} MB | {:.0} MB/s ({:.1} ms) | {:.0} MB/s ({:.1} ms) |",
            best.2 as f64 / 1e6,
            mb_per_s(best.2, best.0),
            best.0.as_secs_f64() * 1e3,
            mb_per_s(best.2, best.1),
            best.1.as_secs_f64() * 1e3
        );
    }
}
