//! `exactly-kafka-bench`: the same Kafka→Kafka job on every contender, in
//! one run, against a real Apache Kafka broker.
//!
//! ```text
//! scripts/kafka-bench            # starts the broker, builds the JVM jobs, runs this
//! cargo run --release -p exactly-kafka-bench -- --help
//! ```
//!
//! The job: read an input topic, key by record key, keep a per-key count,
//! write one output record per input record. Each round runs every
//! contender once, in an order shuffled per round (the seed is printed),
//! so every ratio is measured side by side. All contenders run with the
//! same client tuning, one profile per run (`profile`). Per contender and
//! round there are two phases:
//! 1. **throughput**: the contender reads a pre-loaded backlog (`--records`
//!    on 8 partitions) into a new output topic. The measured window opens
//!    when `--window-from` of the output is visible under `read_committed`
//!    (start-up and JIT warm-up stay out) and closes at `--window-to`,
//!    both timed by the broker's last stable offsets (`visible`). Over
//!    it: records per second (and per quarter of the window), the CPU time
//!    of the contender's process and of the broker per million records,
//!    and a JVM's JIT and GC threads'. The checking reader starts after
//!    the window has closed;
//! 2. **latency**: a paced producer writes `--live-rate` records per second
//!    into a new input topic, each stamped with its send time. Once the
//!    contender's first output is visible, records sent after a further
//!    `--warm-up-seconds` have their visibility latency measured for
//!    `--live-seconds`: the time a record became readable under
//!    `read_committed` minus the time it was sent.
//!
//! Every output is checked exactly-once (`watch`). The rules every
//! comparison with a peer follows are in `docs/kafka-bench.md`. The last
//! line is
//! `kafka-bench: exactly-eos-1s/raw = R, exactly-eos-1s/flink = F, exactly-eos-1s/kstreams = K, p99 latency at 1s = L ms`,
//! each the median over the rounds of that round's ratio, each system at
//! its best parallelism within the round (`report`).

mod contender;
mod jobs;
mod procfs;
mod profile;
mod report;
mod stats;
mod visible;
mod watch;
mod workload;

/// Every Rust contender runs on mimalloc, the allocator the SDK recommends
/// for throughput (`docs/performance.md`): the raw pipe and the
/// hand-written loop as much as the `exactly` job, so the ratios compare
/// the code, not the allocator. librdkafka keeps the C allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use exactly_kafka::sink::DeliveryGuarantee;

use crate::contender::{Contender, JavaProperties, Setup, System};
use crate::jobs::{ClientProperties, JobArgs};
use crate::profile::TuningArgs;
use crate::report::{Measurement, Report, Throughput};
use crate::visible::Bounds;
use crate::watch::{Live, Outcome, UNKNOWN, Watch, watch};

/// Side-by-side Kafka benchmark of exactly, a raw pipe, a hand-written
/// transactional loop, Apache Flink and Kafka Streams.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs one Rust contender until killed (the driver starts these).
    Job {
        /// Which contender.
        #[arg(long, value_enum)]
        system: System,
        #[command(flatten)]
        args: JobArgs,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The broker (start one with scripts/kafka-up).
    #[arg(
        long,
        env = "EXACTLY_KAFKA_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    bootstrap: String,
    /// The broker's process id, whose CPU time is measured too (default:
    /// the pid scripts/kafka-up wrote for the bootstrap's port).
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Records in the pre-loaded input backlog: enough that the fastest
    /// contender spends at least 20 s inside the window on a 2-core machine.
    #[arg(long, default_value_t = 36_000_000)]
    records: u64,
    /// Distinct record keys.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Rounds; every contender runs once per round, in a shuffled order.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// The seed of each round's shuffled order (default: from the clock;
    /// printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// The measured window opens when this share of the output is visible
    /// (after start-up and JIT warm-up).
    #[arg(long, default_value_t = 0.3)]
    window_from: f64,
    /// The window closes when this share of the output is visible.
    #[arg(long, default_value_t = 0.9)]
    window_to: f64,
    /// Parallelism of exactly, Flink and Kafka Streams (stream threads);
    /// their 1 s contenders also run at parallelism 1.
    #[arg(long, default_value_t = 2)]
    parallelism: usize,
    /// Only these contenders (comma-separated names from the default
    /// line-up; `raw` is always kept, every ratio is to it).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Records per second of the latency phase's producer (below every
    /// contender's capacity on a 2-core machine, so latency is not queueing).
    #[arg(long, default_value_t = 5_000)]
    live_rate: u64,
    /// How long latency is measured, after the warm-up.
    #[arg(long, default_value_t = 20)]
    live_seconds: u64,
    /// Latency is measured only for records sent this long after the
    /// contender's first output became visible.
    #[arg(long, default_value_t = 10)]
    warm_up_seconds: u64,
    /// Skip the latency phase.
    #[arg(long)]
    no_latency: bool,
    /// A run fails when no new output appears for this many seconds.
    #[arg(long, default_value_t = 120)]
    stall_seconds: u64,
    /// The client tuning of every contender.
    #[command(flatten)]
    tuning: TuningArgs,
    /// Extra librdkafka properties for the Rust contenders.
    #[command(flatten)]
    properties: ClientProperties,
    /// Extra Java client properties for the JVM contenders.
    #[command(flatten)]
    java_properties: JavaProperties,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Job { system, args }) => run_job(system, &args),
        None => run(&cli.run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kafka-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_job(system: System, args: &JobArgs) -> Result<(), String> {
    match system {
        System::Raw => jobs::raw_pipe(args),
        System::Hand => jobs::hand_written(args),
        System::ExactlyEos => jobs::exactly_job(args, DeliveryGuarantee::ExactlyOnce),
        System::ExactlyAlo => jobs::exactly_job(args, DeliveryGuarantee::AtLeastOnce),
        System::Flink | System::Kstreams => Err(format!(
            "{system:?} runs on the JVM; the driver starts it with java"
        )),
    }
}

/// The time since `started` as `h:mm:ss`, for progress lines.
fn elapsed(started: Instant) -> String {
    let seconds = started.elapsed().as_secs();
    format!(
        "{}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// The workspace's root directory.
fn workspace() -> Result<&'static Path, String> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .ok_or_else(|| "the workspace root".to_owned())
}

/// Where the contenders' logs go: `target/kafka-bench/`.
fn log_dir() -> Result<PathBuf, String> {
    let dir = workspace()?.join("target/kafka-bench");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}

fn run(args: &RunArgs) -> Result<(), String> {
    let bounds = Bounds::new(args.window_from, args.window_to)?;
    let contenders: Vec<Contender> = Contender::line_up(args.parallelism)
        .into_iter()
        .filter(|c| args.only.is_empty() || c.name == "raw" || args.only.contains(&c.name))
        .collect();
    let setup = Setup {
        bootstrap: args.bootstrap.clone(),
        broker_pid: procfs::broker_pid(workspace()?, &args.bootstrap, args.broker_pid)?,
        tuning: args.tuning.tuning(),
        rust: args.properties.clone(),
        java: args.java_properties.clone(),
    };
    let stamp = workload::now_micros() / 1_000_000;
    let seed = args.seed.unwrap_or(stamp.unsigned_abs());
    eprintln!(
        "kafka-bench: profile {} ({}); {} records, window {:.0} % to {:.0} % of the output; {} rounds, each in an order shuffled with seed {seed} (--seed {seed} repeats them)",
        args.tuning.name(),
        setup.tuning,
        args.records,
        bounds.from * 100.0,
        bounds.to * 100.0,
        args.rounds,
    );
    let input = format!("exactly-bench-input-{}-{}", args.records, args.keys);
    workload::preload(&args.bootstrap, &input, args.records, args.keys)?;
    let logs = log_dir()?;
    let mut report = Report::new(&contenders);
    let started = Instant::now();
    for round in 1..=args.rounds {
        let order = stats::shuffled(&contenders, seed, round);
        let names: Vec<&str> = order.iter().map(|c| c.name.as_str()).collect();
        eprintln!(
            "kafka-bench: [{}] round {round}/{}: {}",
            elapsed(started),
            args.rounds,
            names.join(", ")
        );
        for contender in &order {
            let tag = format!("{stamp}-{}-r{round}", contender.name);
            eprintln!(
                "kafka-bench: [{}] round {round}/{}: {}",
                elapsed(started),
                args.rounds,
                contender.name
            );
            let throughput =
                throughput_phase(args, &setup, bounds, contender, &input, &tag, &logs)?;
            let latency = if args.no_latency {
                None
            } else {
                Some(latency_phase(args, &setup, contender, &tag, &logs)?)
            };
            workload::delete_topics_of(&args.bootstrap, &tag)?;
            let measurement = Measurement::new(&throughput, latency.as_ref());
            eprintln!("kafka-bench:   {measurement}");
            report.add(round, &contender.name, measurement);
        }
        if round < args.rounds {
            eprintln!(
                "kafka-bench: the tables over rounds 1–{round}, in case the run is cut short:"
            );
            report
                .print_tables(&mut std::io::stderr())
                .map_err(|e| e.to_string())?;
        }
    }
    println!(
        "Profile {} ({}), {} records, window {:.0}–{:.0} % of the output, {} rounds, seed {seed}",
        args.tuning.name(),
        setup.tuning,
        args.records,
        bounds.from * 100.0,
        bounds.to * 100.0,
        args.rounds
    );
    report
        .print(&mut std::io::stdout())
        .map_err(|e| e.to_string())?;
    if report.all_exactly_once() {
        Ok(())
    } else {
        Err("a contender's output was not exactly-once (see the table)".to_owned())
    }
}

fn throughput_phase(
    args: &RunArgs,
    setup: &Setup,
    bounds: Bounds,
    contender: &Contender,
    input: &str,
    tag: &str,
    logs: &Path,
) -> Result<Throughput, String> {
    let output = format!("exactly-bench-output-{tag}");
    let id = format!("exactly-bench-{tag}");
    workload::create_topics(&args.bootstrap, std::slice::from_ref(&output))?;
    let mut running = contender.spawn(
        setup,
        input,
        &output,
        &id,
        &logs.join(format!("{tag}-throughput.log")),
    )?;
    let spec = Watch {
        bootstrap: &args.bootstrap,
        topic: &output,
        expected: Arc::new(AtomicU64::new(args.records)),
        window: Some(bounds),
        live: None,
        stall: Duration::from_secs(args.stall_seconds),
    };
    let outcome = watch(&spec, &mut running)?;
    let changelog_end_offsets = contender
        .changelog(&id)
        .map(|topic| workload::offsets_in(&args.bootstrap, &topic))
        .transpose()?;
    Ok(Throughput {
        outcome,
        peak_rss: running.peak_rss()?,
        changelog_end_offsets,
    })
}

fn latency_phase(
    args: &RunArgs,
    setup: &Setup,
    contender: &Contender,
    tag: &str,
    logs: &Path,
) -> Result<Outcome, String> {
    let (input, output) = (
        format!("exactly-bench-live-{tag}"),
        format!("exactly-bench-live-output-{tag}"),
    );
    workload::create_topics(&args.bootstrap, &[input.clone(), output.clone()])?;
    let mut running = contender.spawn(
        setup,
        &input,
        &output,
        &format!("exactly-bench-live-{tag}"),
        &logs.join(format!("{tag}-latency.log")),
    )?;
    let expected = Arc::new(AtomicU64::new(UNKNOWN));
    let stop_at = Arc::new(AtomicI64::new(0));
    let producer = {
        let (bootstrap, input) = (args.bootstrap.clone(), input.clone());
        let (expected, stop_at) = (expected.clone(), stop_at.clone());
        let (keys, rate) = (args.keys, args.live_rate);
        let give_up = Duration::from_secs(args.stall_seconds);
        thread::spawn(move || {
            let sent = workload::produce_paced(&bootstrap, &input, keys, rate, &stop_at, give_up);
            if let Ok(sent) = sent {
                expected.store(sent, Ordering::Release);
            }
            sent
        })
    };
    let spec = Watch {
        bootstrap: &args.bootstrap,
        topic: &output,
        expected,
        window: None,
        live: Some(Live {
            warm_up: Duration::from_secs(args.warm_up_seconds),
            measure: Duration::from_secs(args.live_seconds),
            stop_at,
        }),
        stall: Duration::from_secs(args.stall_seconds),
    };
    let outcome = watch(&spec, &mut running);
    producer
        .join()
        .map_err(|_| "the live producer panicked".to_owned())??;
    outcome
}
