//! The quickstart: an exactly-once word count that survives a crash.
//!
//! It reads `examples/data/words.txt` line by line, splits the lines into
//! words, keys them by word, and keeps a running count per word in keyed
//! `#[state]`. Every update `word count` goes to a transactional file sink,
//! whose part files become visible only when their checkpoint completes.
//! When the input ends, the quickstart checks its output: for every word,
//! the updates must be exactly 1, 2, ..., n, once each.
//!
//! ```text
//! cargo run --example quickstart              # run, or resume after a crash
//! cargo run --example quickstart -- --kill    # run in a child process and abort it at a random point
//! cargo run --example quickstart -- --fresh   # forget earlier runs first
//! ```
//!
//! Options: `--kill` starts afresh in a child process and aborts it
//! (`std::process::abort`, a real crash) after a random number of words;
//! run again without it to resume from the last complete checkpoint. `--fresh` deletes the checkpoints and
//! output of earlier runs. `--seed N` fixes the random kill point.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use exactly::prelude::*;

/// The running count of one word.
#[state]
#[derive(Default)]
struct WordCount {
    count: u64,
}

/// Splits a line into lower-case words without punctuation.
#[operator]
fn split_words(line: String, out: &mut Emitter<String>) {
    for word in line.split_whitespace() {
        let word = word.trim_matches(|c: char| !c.is_alphanumeric());
        if !word.is_empty() {
            out.emit(word.to_lowercase());
        }
    }
}

/// Counts a word and emits its new count.
#[operator]
fn count(word: String, #[state] counts: &mut WordCount) -> (String, u64) {
    abort_if_due();
    counts.count += 1;
    (word, counts.count)
}

/// Words left until the child process aborts itself (0: never).
static ABORT_AFTER: AtomicU64 = AtomicU64::new(0);

fn abort_if_due() {
    if ABORT_AFTER.load(Ordering::Relaxed) != 0 && ABORT_AFTER.fetch_sub(1, Ordering::Relaxed) == 1
    {
        eprintln!("quickstart: aborting the process now (simulated crash)");
        std::process::abort();
    }
}

struct Paths {
    input: PathBuf,
    checkpoints: PathBuf,
    output: PathBuf,
}

fn paths() -> Paths {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = root.parent().unwrap_or(root).join("target/quickstart");
    Paths {
        input: root.join("data/words.txt"),
        checkpoints: work.join("checkpoints"),
        output: work.join("output"),
    }
}

fn run_job(paths: &Paths) -> exactly::Result<()> {
    let config = JobConfig::new()
        .checkpoint_interval(Duration::from_millis(100))
        .checkpoint_dir(&paths.checkpoints)
        .progress_interval(Duration::from_millis(500))
        .restart_strategy(RestartStrategy::fixed_delay(3, Duration::from_millis(200)));
    let job = Job::new("quickstart", config);
    job.source(LineFileSource::new(&paths.input))
        .operator(split_words)
        .key_by(|word: &String| word.clone())
        .parallelism(2)
        .operator(count)
        .sink(FileSink::with_format(
            &paths.output,
            |(word, n): &(String, u64), line: &mut String| {
                line.push_str(word);
                line.push(' ');
                line.push_str(&n.to_string());
            },
        ));
    job.run()
}

/// The word counts computed directly, without the pipeline.
fn direct_counts(paths: &Paths) -> Result<HashMap<String, u64>, String> {
    let text = std::fs::read_to_string(&paths.input)
        .map_err(|e| format!("cannot read {}: {e}", paths.input.display()))?;
    let mut counts: HashMap<String, u64> = HashMap::new();
    for line in text.lines() {
        let mut out = Emitter::new();
        split_words::call(line.to_owned(), &mut out);
        for word in out.take() {
            *counts.entry(word).or_default() += 1;
        }
    }
    Ok(counts)
}

/// Compares the committed output with a direct count of the input.
fn verify(paths: &Paths) -> Result<(), String> {
    let expected = direct_counts(paths)?;
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    let entries =
        std::fs::read_dir(&paths.output).map_err(|e| format!("cannot list the output: {e}"))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        if !path.is_file() {
            continue;
        }
        let part = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        for line in part.lines() {
            let (word, n) = line
                .rsplit_once(' ')
                .and_then(|(w, n)| Some((w, n.parse::<u64>().ok()?)))
                .ok_or_else(|| format!("malformed line {line:?} in {}", path.display()))?;
            seen.entry(word.to_owned()).or_default().push(n);
        }
    }
    let mut problems = Vec::new();
    for (word, &total) in &expected {
        let mut counts = seen.remove(word).unwrap_or_default();
        counts.sort_unstable();
        let lost = (1..=total)
            .filter(|n| counts.binary_search(n).is_err())
            .count();
        let doubled = counts.windows(2).filter(|w| w[0] == w[1]).count();
        if lost > 0 || doubled > 0 || counts.last().is_some_and(|&n| n > total) {
            problems.push(format!(
                "`{word}`: {total} expected, {lost} updates lost, {doubled} doubled"
            ));
        }
    }
    problems.extend(
        seen.keys()
            .map(|w| format!("`{w}` appears in the output but not in the input")),
    );
    if problems.is_empty() {
        let mut top: Vec<(&String, &u64)> = expected.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let top: BTreeMap<u64, &String> = top.iter().take(5).map(|(w, n)| (**n, *w)).collect();
        let total: u64 = expected.values().sum();
        println!(
            "{total} words, {} distinct; most frequent: {top:?}",
            expected.len()
        );
        Ok(())
    } else {
        problems.sort();
        let shown = problems.len().min(10);
        Err(format!(
            "{} words differ:\n  {}",
            problems.len(),
            problems[..shown].join("\n  ")
        ))
    }
}

/// A seed from the clock, unless `--seed N` fixed one.
fn seed(args: &[String]) -> u64 {
    args.iter()
        .position(|a| a == "--seed")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

fn main() -> ExitCode {
    exactly_examples::init_logging();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let paths = paths();

    if let Some(i) = args.iter().position(|a| a == "--child-abort-after") {
        let after = args.get(i + 1).and_then(|n| n.parse().ok()).unwrap_or(1);
        ABORT_AFTER.store(after, Ordering::Relaxed);
        return match run_job(&paths) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("quickstart child: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(unknown) = args.iter().enumerate().find(|(i, a)| {
        !matches!(a.as_str(), "--kill" | "--fresh" | "--seed")
            && (*i == 0 || args[i - 1] != "--seed")
    }) {
        eprintln!(
            "quickstart: unknown option {:?}; options: --kill, --fresh, --seed N",
            unknown.1
        );
        return ExitCode::from(2);
    }
    let kill = args.iter().any(|a| a == "--kill");
    if kill || args.iter().any(|a| a == "--fresh") {
        for dir in [&paths.checkpoints, &paths.output] {
            if let Err(e) = std::fs::remove_dir_all(dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                eprintln!("quickstart: cannot delete {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
        }
        println!("quickstart: deleted earlier checkpoints and output");
    }

    if kill {
        let words: u64 = match direct_counts(&paths) {
            Ok(counts) => counts.values().sum(),
            Err(e) => {
                eprintln!("quickstart: {e}");
                return ExitCode::FAILURE;
            }
        };
        let after = 1 + seed(&args) % words;
        println!("quickstart: running the job in a child process that aborts after {after} words");
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => {
                eprintln!("quickstart: cannot find my own executable: {e}");
                return ExitCode::FAILURE;
            }
        };
        let status = Command::new(exe)
            .arg("--child-abort-after")
            .arg(after.to_string())
            .status();
        match status {
            Ok(status) if status.success() => {
                println!("quickstart: the child finished before its kill point; nothing to resume");
            }
            Ok(status) => {
                println!(
                    "quickstart: the child died ({status}); run `cargo run --example quickstart` to resume from its last checkpoint"
                );
            }
            Err(e) => {
                eprintln!("quickstart: cannot start the child process: {e}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }

    match exactly::storage::CheckpointStorage::latest(&exactly::storage::LocalStorage::new(
        &paths.checkpoints,
    )) {
        Ok(Some(checkpoint)) => {
            println!("quickstart: resuming from checkpoint {}", checkpoint.id())
        }
        Ok(None) => println!(
            "quickstart: starting from the beginning of {}",
            paths.input.display()
        ),
        Err(e) => {
            eprintln!("quickstart: {e}");
            return ExitCode::FAILURE;
        }
    }
    let started = Instant::now();
    if let Err(e) = run_job(&paths) {
        eprintln!("quickstart: the job failed: {e}");
        return ExitCode::FAILURE;
    }
    println!(
        "quickstart: job finished in {:.2?}; output in {}",
        started.elapsed(),
        paths.output.display()
    );
    match verify(&paths) {
        Ok(()) => {
            println!("exactly-once: OK");
            ExitCode::SUCCESS
        }
        Err(diff) => {
            println!("exactly-once: FAILED\n{diff}");
            ExitCode::FAILURE
        }
    }
}
