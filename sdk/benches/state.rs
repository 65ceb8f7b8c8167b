//! Keyed state checkpoint and restore at 1 M and 10 M entries; see
//! BENCHMARKS.md.
//!
//! `cargo bench -p exactly --bench state` prints, for each size, the median
//! of several runs of:
//! - the final checkpoint of a running job whose keyed state holds every
//!   key (trigger to durable metadata, incl. fsync), and its state file;
//! - encoding that state into the task-state file in memory, the old way
//!   (format version 1: the map through serde, the element bytes as a
//!   sequence of `u8`) and the runtime's way (format version 2);
//! - restoring it from the file to a ready map: the old path (the code the
//!   runtime ran before format version 2, kept here) on a version 1 file,
//!   the runtime's path on the job's version 2 checkpoint, and the
//!   runtime's path on the same checkpoint rewritten as version 1;
//! - a whole job's restore (the metric `last_restore_micros`: loading the
//!   checkpoint and building every subtask with its state) with the keyed
//!   stage on one subtask and on two;
//! - peak memory: every measurement runs in a process of its own; restores
//!   report the process's `VmHWM`, encodes the rise of `VmHWM` above the
//!   resident size before encoding (reset through `/proc/self/clear_refs`);
//! - besides wall-clock time, the time the measuring thread spent on a CPU
//!   (`/proc/thread-self/schedstat`), which on a shared machine leaves out
//!   the time it waited for one, and the minor page faults the process took
//!   during a restore (`/proc/self/stat`);
//! - the runtime's restore without and with transparent huge pages where
//!   the kernel gives them only to memory advised `MADV_HUGEPAGE`: glibc's
//!   malloc advises none unless `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` is in
//!   the process's environment (then it advises every block it maps: the
//!   restored table and the file buffers); mimalloc advises its arenas
//!   unless `MIMALLOC_ALLOW_THP=0`. The restore rows without a mention of
//!   huge pages are measured without them.
//!
//! Runs alternate old and new so that ratios are measured side by side.
//! `BENCH_STATE_SIZES` (comma-separated, default `1000000,10000000`) and
//! `BENCH_STATE_RUNS` (default 5) change the sizes and the run count;
//! `BENCH_STATE_QUICK=1` measures only the runtime's restore, with and
//! without huge pages. With `--features mimalloc` the bench runs on
//! mimalloc instead of the system allocator.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use exactly::__bench::{KeyedStateMap, copy_as_format_1, restore_keyed};
use exactly::codec::Codec;
use exactly::prelude::*;
use exactly::storage::frame::{self, PayloadKind};
use exactly::storage::{CompletedCheckpoint, LocalStorage};

#[state]
#[derive(Default)]
struct WordCount {
    count: u64,
}

type Value = (WordCount,);

/// The environment variable that makes this binary one measurement.
const CHILD: &str = "BENCH_STATE_CHILD";

#[path = "shared/allocator.rs"]
mod allocator;
use allocator::ALLOCATOR;

/// The environment of a measurement without transparent huge pages, and
/// of one with them.
type HugePages = (
    Option<(&'static str, &'static str)>,
    Option<(&'static str, &'static str)>,
);

/// Without and with huge pages, for this bench's allocator.
const HUGE_PAGES: HugePages = if cfg!(feature = "mimalloc") {
    (Some(("MIMALLOC_ALLOW_THP", "0")), None)
} else {
    (None, Some(("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")))
};

/// An environment setting as it is written in a shell.
fn shell(env: Option<(&str, &str)>) -> String {
    env.map_or_else(|| "default".to_owned(), |(k, v)| format!("`{k}={v}`"))
}

/// The keyed stage of the bench job.
const KEYED_STAGE: usize = 1;

/// The element id of the map in the in-memory encodes.
const ELEMENT: &str = "1:tally";

#[operator]
fn tally(key: u64, #[state] c: &mut WordCount) -> u64 {
    c.count += 1;
    key
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A field of `/proc/self/status`, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resets `VmHWM` to the current resident size; false where not allowed.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn entries(keys: u64) -> impl Iterator<Item = (u64, Value)> {
    (0..keys).map(|k| (k, (WordCount { count: 1 },)))
}

/// The id of the keyed element in the bench job's checkpoint.
fn keyed_id(checkpoint: &CompletedCheckpoint) -> String {
    checkpoint.metadata.stages[KEYED_STAGE].operators[0].clone()
}

fn keyed_file(checkpoint: &CompletedCheckpoint) -> PathBuf {
    let handle = checkpoint
        .metadata
        .task_states
        .iter()
        .find(|h| h.stage == KEYED_STAGE)
        .expect("the keyed stage wrote state");
    checkpoint
        .location
        .as_local()
        .expect("a local checkpoint")
        .join(&handle.file)
}

/// One measurement: its wall-clock time, the time the measuring thread
/// spent on a CPU, a size in bytes, a memory figure in KiB and the minor
/// page faults the process took while it ran.
#[derive(Debug, Clone, Copy, Default)]
struct Measurement {
    wall: Duration,
    cpu: Duration,
    bytes: usize,
    kib: u64,
    faults: u64,
}

/// Nanoseconds this thread has spent on a CPU, from
/// `/proc/thread-self/schedstat`: unlike wall-clock time, it leaves out the
/// time the thread waited for a CPU that other processes held.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// The minor page faults of this process so far (field 10 of
/// `/proc/self/stat`, counted after the command name in parentheses).
fn minor_faults() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after_name = &s[s.rfind(')')? + 1..];
            after_name.split_whitespace().nth(7)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Runs `work` and returns its wall-clock and on-CPU time and the minor
/// page faults the process took meanwhile.
fn timed<T>(work: impl FnOnce() -> T) -> (T, Duration, Duration, u64) {
    let (faults, cpu, wall) = (minor_faults(), cpu_ns(), Instant::now());
    let out = work();
    let wall = wall.elapsed();
    let cpu = Duration::from_nanos(cpu_ns() - cpu);
    (out, wall, cpu, minor_faults() - faults)
}

/// One measurement, printed on stdout as `wall_us cpu_us bytes kib faults`.
fn child(spec: &str) {
    let mut parts = spec.split(' ');
    let (mode, keys, path) = (
        parts.next().unwrap(),
        parts.next().unwrap().parse::<u64>().unwrap(),
        PathBuf::from(parts.next().unwrap()),
    );
    let m = match mode {
        "job" | "job-p2" => {
            let parallelism = if mode == "job" { 1 } else { 2 };
            let _ = std::fs::remove_dir_all(&path);
            let metrics = run_job(keys, &path, parallelism);
            Measurement {
                wall: Duration::from_micros(metrics.last_checkpoint_micros),
                cpu: Duration::ZERO,
                bytes: metrics.last_checkpoint_bytes as usize,
                kib: status_kib("VmHWM:"),
                faults: 0,
            }
        }
        "resume" | "resume-p2" => {
            let parallelism = if mode == "resume" { 1 } else { 2 };
            let metrics = run_job(keys, &path, parallelism);
            assert_eq!(metrics.records_in, 0, "the job did not resume at the end");
            Measurement {
                wall: Duration::from_micros(metrics.last_restore_micros),
                cpu: Duration::ZERO,
                bytes: 0,
                kib: status_kib("VmHWM:"),
                faults: 0,
            }
        }
        "encode-old" => {
            let map: HashMap<u64, Value> = entries(keys).collect();
            encode_measured(|| encode_format_1(&map))
        }
        "encode-new" => {
            let map = KeyedStateMap::from_entries(entries(keys));
            encode_measured(|| map.task_state_file(Codec::Bincode, ELEMENT).unwrap())
        }
        "restore-old" => {
            let (restored, wall, cpu, faults) = timed(|| restore_format_1_as_before(&path));
            assert_eq!(restored.len() as u64, keys);
            restored_measurement(wall, cpu, faults)
        }
        "restore-new" => {
            let checkpoint = LocalStorage::open_checkpoint(&path).unwrap();
            let id = keyed_id(&checkpoint);
            drop(checkpoint);
            let (restored, wall, cpu, faults) =
                timed(|| restore_keyed::<u64, Value>(&path, KEYED_STAGE, &id, 1, 0).unwrap());
            assert_eq!(restored.len() as u64, keys);
            restored_measurement(wall, cpu, faults)
        }
        other => panic!("unknown mode {other}"),
    };
    println!(
        "{} {} {} {} {}",
        m.wall.as_micros(),
        m.cpu.as_micros(),
        m.bytes,
        m.kib,
        m.faults
    );
}

/// A restore's times and page faults, with the process's peak resident
/// size.
fn restored_measurement(wall: Duration, cpu: Duration, faults: u64) -> Measurement {
    Measurement {
        wall,
        cpu,
        bytes: 0,
        kib: status_kib("VmHWM:"),
        faults,
    }
}

/// Times `encode` and measures how far the process's peak resident size
/// rises above its resident size before it.
fn encode_measured(encode: impl FnOnce() -> Vec<u8>) -> Measurement {
    let before = status_kib("VmRSS:");
    let resettable = reset_peak();
    let (file, wall, cpu, faults) = timed(encode);
    Measurement {
        wall,
        cpu,
        faults,
        bytes: file.len(),
        kib: if resettable {
            status_kib("VmHWM:").saturating_sub(before)
        } else {
            0
        },
    }
}

/// A job whose keyed state, on `parallelism` subtasks, grows to `keys`
/// entries, resuming from the newest checkpoint in `checkpoints` if there
/// is one; returns its metrics.
fn run_job(keys: u64, checkpoints: &Path, parallelism: usize) -> exactly::MetricsSnapshot {
    let job = Job::new(
        "state",
        JobConfig::new()
            .checkpoint_dir(checkpoints)
            .restart_strategy(RestartStrategy::none()),
    );
    job.source(VecSource::new((0..keys).collect::<Vec<_>>()))
        .key_by(|k: &u64| *k)
        .parallelism(parallelism)
        .operator(tally)
        .sink(DiscardSink::new());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async { job.spawn().unwrap().join().await.unwrap() })
}

/// The task-state file format version 1 wrote for a subtask whose only
/// state is `map` under [`ELEMENT`]: the map through serde, the element
/// list with each element's bytes as a `Vec<u8>`, framed with version 1.
fn encode_format_1(map: &HashMap<u64, Value>) -> Vec<u8> {
    let codec = Codec::Bincode;
    let entries = vec![(ELEMENT.to_owned(), codec.encode(map, ELEMENT).unwrap())];
    let payload = codec.encode(&entries, "task state").unwrap();
    let mut framed = frame::encode(PayloadKind::TaskState, codec, &payload);
    framed[8..10].copy_from_slice(&1u16.to_le_bytes());
    framed
}

/// What the runtime did before format version 2, from a version 1 file to
/// the operator's map (one subtask, parallelism 1): read and check the
/// frame, decode the element list with each element's bytes as a
/// `Vec<u8>`, decode the map through serde, then filter it by key hash
/// into the operator's map.
fn restore_format_1_as_before(file: &Path) -> HashMap<u64, Value> {
    let bytes = std::fs::read(file).unwrap();
    let frame = frame::decode(&bytes, PayloadKind::TaskState, &file.display()).unwrap();
    assert_eq!(frame.version, 1);
    let entries: Vec<(String, Vec<u8>)> = frame.codec.decode(frame.payload, "task state").unwrap();
    let stored: HashMap<String, (Codec, Vec<u8>)> = entries
        .into_iter()
        .map(|(id, bytes)| (id, (frame.codec, bytes)))
        .collect();
    // One subtask of parallelism one, known only at run time as before.
    let (parallelism, index) = (std::hint::black_box(1u64), std::hint::black_box(0u64));
    let mut states = HashMap::new();
    for (codec, bytes) in stored.values() {
        let old: HashMap<u64, Value> = codec.decode(bytes, "keyed state").unwrap();
        states.extend(old.into_iter().filter(|(k, _)| {
            let mut hasher = DefaultHasher::new();
            k.hash(&mut hasher);
            hasher.finish() % parallelism == index
        }));
    }
    states
}

/// Runs one measurement in a process of its own; restores run without
/// huge pages.
fn measure(mode: &str, keys: u64, path: &Path) -> Measurement {
    let env = if mode.starts_with("restore") {
        HUGE_PAGES.0
    } else {
        None
    };
    measure_with(mode, keys, path, env)
}

/// Runs one measurement in a process of its own, with `env` set in its
/// environment.
fn measure_with(mode: &str, keys: u64, path: &Path, env: Option<(&str, &str)>) -> Measurement {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.env(CHILD, format!("{mode} {keys} {}", path.display()));
    if let Some((name, value)) = env {
        command.env(name, value);
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{mode}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let fields: Vec<u64> = text
        .lines()
        .last()
        .unwrap()
        .split(' ')
        .map(|f| f.parse().unwrap())
        .collect();
    Measurement {
        wall: Duration::from_micros(fields[0]),
        cpu: Duration::from_micros(fields[1]),
        bytes: fields[2] as usize,
        kib: fields[3],
        faults: fields[4],
    }
}

/// The medians of a series of measurements.
#[derive(Default)]
struct Series(Vec<Measurement>);

impl Series {
    fn median<T: Ord + Copy>(&self, field: impl Fn(&Measurement) -> T) -> T {
        let mut values: Vec<T> = self.0.iter().map(field).collect();
        values.sort_unstable();
        values[values.len() / 2]
    }
    fn ms(&self) -> f64 {
        self.median(|m| m.wall).as_secs_f64() * 1e3
    }
    fn cpu_ms(&self) -> f64 {
        self.median(|m| m.cpu).as_secs_f64() * 1e3
    }
    fn mb(&self) -> f64 {
        self.median(|m| m.bytes) as f64 / 1e6
    }
    fn mib(&self) -> f64 {
        self.median(|m| m.kib) as f64 / 1024.0
    }
    fn faults(&self) -> u64 {
        self.median(|m| m.faults)
    }
    /// Every run's wall-clock time, for the spread.
    fn runs_ms(&self) -> String {
        self.runs(|m| m.wall)
    }
    /// Every run's on-CPU time.
    fn runs_cpu_ms(&self) -> String {
        self.runs(|m| m.cpu)
    }
    fn runs(&self, field: impl Fn(&Measurement) -> Duration) -> String {
        let runs: Vec<String> = self
            .0
            .iter()
            .map(|m| format!("{:.0}", field(m).as_secs_f64() * 1e3))
            .collect();
        runs.join(" / ")
    }
}

/// Measures the runtime's restore of `checkpoint` once without huge pages
/// (into `without`) and once with them (into `with`).
fn restore_without_and_with_huge_pages(
    keys: u64,
    checkpoint: &Path,
    without: &mut Series,
    with: &mut Series,
) {
    without.0.push(measure("restore-new", keys, checkpoint));
    with.0
        .push(measure_with("restore-new", keys, checkpoint, HUGE_PAGES.1));
}

/// Prints the rows of the runtime's restore without and with huge pages.
fn print_restore_rows(new: &Series, huge: &Series) {
    println!(
        "| this build's restore on {ALLOCATOR} | without huge pages ({}) | with huge pages ({}) | with / without |",
        shell(HUGE_PAGES.0),
        shell(HUGE_PAGES.1)
    );
    println!("|---|---|---|---|");
    println!(
        "| file to ready map, wall clock (on-CPU) | {:.1} ms ({:.1} ms) | {:.1} ms ({:.1} ms) | {:.2} ({:.2}) |",
        new.ms(),
        new.cpu_ms(),
        huge.ms(),
        huge.cpu_ms(),
        huge.ms() / new.ms(),
        huge.cpu_ms() / new.cpu_ms()
    );
    print_run_rows("", new, huge);
    println!();
}

/// Prints, for two series of restores side by side, every run's times,
/// the median minor page faults and the median peak memory; `prefix`
/// starts each row's label.
fn print_run_rows(prefix: &str, a: &Series, b: &Series) {
    println!(
        "| {prefix}every run, wall clock | {} ms | {} ms | |",
        a.runs_ms(),
        b.runs_ms()
    );
    println!(
        "| {prefix}every run, on-CPU | {} ms | {} ms | |",
        a.runs_cpu_ms(),
        b.runs_cpu_ms()
    );
    println!(
        "| {prefix}minor page faults | {} | {} | {:.2} |",
        a.faults(),
        b.faults(),
        b.faults() as f64 / a.faults().max(1) as f64
    );
    println!(
        "| {prefix}process peak memory (VmHWM) | {:.0} MiB | {:.0} MiB | {:.2} |",
        a.mib(),
        b.mib(),
        b.mib() / a.mib()
    );
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD) {
        child(&spec);
        return;
    }
    let sizes: Vec<u64> = std::env::var("BENCH_STATE_SIZES")
        .unwrap_or_else(|_| "1000000,10000000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("BENCH_STATE_SIZES: numbers"))
        .collect();
    let runs: usize = env_or("BENCH_STATE_RUNS", 5);
    let quick = env_or("BENCH_STATE_QUICK", 0u8) == 1;
    let dir = tempfile::tempdir().unwrap();
    for keys in sizes {
        println!(
            "## Keyed state of {keys} entries (u64 -> (WordCount,), bincode), median of {runs} runs, on {ALLOCATOR}\n"
        );
        let jobs = dir.path().join(format!("job-{keys}"));
        let mut job = Series::default();
        for _ in 0..if quick { 1 } else { runs } {
            job.0.push(measure("job", keys, &jobs));
        }
        let checkpoint = LocalStorage::new(&jobs);
        let latest = exactly::storage::CheckpointStorage::latest(&checkpoint)
            .unwrap()
            .expect("the job completed a checkpoint");
        if quick {
            let (mut new, mut huge) = (Series::default(), Series::default());
            for _ in 0..runs {
                restore_without_and_with_huge_pages(
                    keys,
                    latest.location.as_local().unwrap(),
                    &mut new,
                    &mut huge,
                );
            }
            print_restore_rows(&new, &huge);
            let _ = std::fs::remove_dir_all(&jobs);
            continue;
        }
        let v1 = dir.path().join(format!("v1-{keys}"));
        copy_as_format_1(
            latest.location.as_local().unwrap(),
            &v1,
            &[keyed_id(&latest).as_str()],
        )
        .unwrap();
        let v1_file = keyed_file(&LocalStorage::open_checkpoint(&v1).unwrap());

        let (mut enc_old, mut enc_new) = (Series::default(), Series::default());
        let (mut old, mut new, mut new_on_v1, mut huge) = (
            Series::default(),
            Series::default(),
            Series::default(),
            Series::default(),
        );
        let (resume_p1, resume_p2) = (
            dir.path().join(format!("resume-{keys}")),
            dir.path().join(format!("resume-p2-{keys}")),
        );
        measure("job", keys, &resume_p1);
        measure("job-p2", keys, &resume_p2);
        let (mut job_p1, mut job_p2) = (Series::default(), Series::default());
        for _ in 0..runs {
            job_p1.0.push(measure("resume", keys, &resume_p1));
            job_p2.0.push(measure("resume-p2", keys, &resume_p2));
            enc_old.0.push(measure("encode-old", keys, &v1_file));
            enc_new.0.push(measure("encode-new", keys, &v1_file));
            old.0.push(measure("restore-old", keys, &v1_file));
            restore_without_and_with_huge_pages(
                keys,
                latest.location.as_local().unwrap(),
                &mut new,
                &mut huge,
            );
            new_on_v1.0.push(measure("restore-new", keys, &v1));
        }
        println!("| | format 1, as before | format 2, this build | new / old |");
        println!("|---|---|---|---|");
        println!(
            "| checkpoint in a running job (trigger to durable, incl. fsync) | | {:.1} ms | |",
            job.ms()
        );
        println!(
            "| job process peak memory (VmHWM, incl. the source's input) | | {:.0} MiB | |",
            job.mib()
        );
        println!(
            "| encode to the task-state file, in memory | {:.1} ms | {:.1} ms | {:.2} |",
            enc_old.ms(),
            enc_new.ms(),
            enc_new.ms() / enc_old.ms()
        );
        println!(
            "| encode: on-CPU time | {:.1} ms | {:.1} ms | {:.2} |",
            enc_old.cpu_ms(),
            enc_new.cpu_ms(),
            enc_new.cpu_ms() / enc_old.cpu_ms()
        );
        println!(
            "| encode: memory above the map | {:.0} MiB | {:.0} MiB | |",
            enc_old.mib(),
            enc_new.mib()
        );
        println!(
            "| state file | {:.1} MB | {:.1} MB | {:.2} |",
            enc_old.mb(),
            enc_new.mb(),
            enc_new.mb() / enc_old.mb()
        );
        println!(
            "| restore: file to ready map | {:.1} ms | {:.1} ms | {:.2} |",
            old.ms(),
            new.ms(),
            new.ms() / old.ms()
        );
        println!(
            "| restore: on-CPU time | {:.1} ms | {:.1} ms | {:.2} |",
            old.cpu_ms(),
            new.cpu_ms(),
            new.cpu_ms() / old.cpu_ms()
        );
        print_run_rows("restore: ", &old, &new);
        println!(
            "| restore of a format 1 checkpoint by this build (on-CPU) | | {:.1} ms ({:.1} ms), {:.0} MiB | {:.2} |",
            new_on_v1.ms(),
            new_on_v1.cpu_ms(),
            new_on_v1.mib(),
            new_on_v1.ms() / old.ms()
        );
        println!(
            "| restore of the whole job, one keyed subtask / two (`last_restore_micros`) | | {:.1} ms / {:.1} ms | |\n",
            job_p1.ms(),
            job_p2.ms()
        );
        print_restore_rows(&new, &huge);
        let _ = std::fs::remove_dir_all(&jobs);
        let _ = std::fs::remove_dir_all(&resume_p1);
        let _ = std::fs::remove_dir_all(&resume_p2);
        let _ = std::fs::remove_dir_all(&v1);
    }
}
