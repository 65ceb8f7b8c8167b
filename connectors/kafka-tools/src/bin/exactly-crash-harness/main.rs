//! The crash harness: runs an exactly-once Kafka→Kafka pipeline as a child
//! process, kills it again and again — by aborting itself at named phases
//! of the checkpoint protocol, with SIGKILL at random times, and by
//! SIGKILLing the broker under it — restarts it, and finally checks the
//! whole output: every input record's effect exactly once, per-key order
//! kept, final state equal to a direct count, nothing left open.
//!
//! ```text
//! scripts/kafka-up
//! cargo run -p exactly-kafka-tools --bin exactly-crash-harness                       # 32 kills, ~1 minute
//! cargo run -p exactly-kafka-tools --bin exactly-crash-harness -- --broker-restarts 3 # and SIGKILL the broker 3 times
//! cargo run -p exactly-kafka-tools --bin exactly-crash-harness -- --soak             # 300 kills, 200000 records
//! # checkpoints in S3 (moto), a fresh local directory for every child, zombies fenced:
//! export $(scripts/s3-up | grep ^AWS_)
//! cargo run -p exactly-kafka-tools --bin exactly-crash-harness -- --storage s3://exactly-tests/harness
//! ```
//!
//! The input is `N` records `k<key> <seq>` (16 keys, sequence numbers per
//! key from 0). The pipeline keys them and emits `k<key> <seq> <count>`
//! for each, so a lost or doubled record is named by key and sequence. The
//! output is read by both oracles ([`exactly_kafka_tools::oracle`]): the raw
//! committed reader and an rdkafka read_committed consumer, which must
//! agree record for record.
//!
//! A kill counts only when the child really died of it (SIGABRT at a
//! phase, SIGKILL otherwise). A child that exits with an error is a
//! failure of the run, never a kill.
//!
//! The subcommands `input`, `child` and `check` run one step on its own;
//! the fault tests of `connectors/kafka-tools/tests/faults.rs` drive the
//! pipeline through them.
//!
//! With `--storage s3://bucket/prefix` the children checkpoint (and take
//! their savepoints) in object storage under a prefix of the run's own,
//! each child runs in a fresh, empty local directory (a new machine), and
//! the zombie scenarios run (`zombies`): a frozen child, continued after a
//! successor took the storage over, must stop by itself, fenced.
//!
//! The last line of a run is the result, for example
//! `crash-harness: 32 kills, 20000 records, 0 lost, 0 duplicated`, or with
//! `--storage` `crash-harness: 33 kills, 2 zombies fenced (1 storage, 1
//! kafka), 20000 records, 0 lost, 0 duplicated, storage s3://…`; the exit
//! code is 1 on any loss, duplicate, order violation, disagreement of the
//! oracles, transaction left open, child error, missed phase, or zombie
//! that did not stop fenced.
//!
//! | module | owns |
//! |---|---|
//! | `args` | the command line |
//! | `pipeline` | the child: the pipeline under test and the fault hooks that abort it, or freeze it, at a phase |
//! | `workload` | the input records and the check of the output |
//! | `run` | the plan of kill cycles, the child processes and their directories, the checkpoint storage they share, broker restarts, and the final verdict |
//! | `zombies` | the zombie scenario and the verdict on how a zombie ended |
//! | `broker_faults` | the victims of `--cluster`'s broker kills |
//!
//! Imports run one way: `main` → `run` ⇄ `zombies` (the scenario drives the
//! harness's children) → `pipeline` → `workload` → `args`.

mod args;
mod broker_faults;
mod pipeline;
mod process;
mod run;
mod workload;
mod zombies;

use std::process::ExitCode;

use clap::Parser;
use exactly_kafka::client::ClientSettings;

use crate::args::{Cli, Step};
use crate::pipeline::child;
use crate::run::run;
use crate::workload::{check, input};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.step {
        None => run(&cli.run),
        Some(Step::Input(args)) => ClientSettings::from_env()
            .map_err(|e| e.to_string())
            .and_then(|settings| input(&settings, args))
            .map(|()| ExitCode::SUCCESS),
        Some(Step::Child(args)) => {
            // Restarts and recoveries are logged with tracing: warnings and
            // errors by default, more with RUST_LOG.
            exactly_kafka_tools::logging::init("warn");
            return match child(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("crash-harness child: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Step::Check(args)) => ClientSettings::from_env()
            .map_err(|e| e.to_string())
            .and_then(|settings| check(&settings, &args.output, args.records))
            .map(|v| {
                println!("crash-harness: {}", v.oracles);
                for problem in &v.problems {
                    println!("crash-harness: {problem}");
                }
                println!(
                    "crash-harness check: {} records, {} lost, {} duplicated",
                    args.records, v.lost, v.duplicated
                );
                if v.lost == 0 && v.duplicated == 0 && v.problems.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }),
    };
    result.unwrap_or_else(|e| {
        eprintln!("crash-harness: {e}");
        ExitCode::from(2)
    })
}
