//! The crash harness's command line: the whole run and its three steps.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use exactly_kafka_tools::cluster::ClusterArgs;

/// Kill an exactly-once Kafka pipeline at every phase of the checkpoint
/// protocol and check that its output holds every record exactly once.
#[derive(Debug, Parser)]
#[command(
    name = "exactly-crash-harness",
    version,
    args_conflicts_with_subcommands = true
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) step: Option<Step>,
    #[command(flatten)]
    pub(crate) run: RunArgs,
}

/// The whole run (the default).
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Kill cycles before the final clean run: every targeted phase twice,
    /// then random SIGKILLs up to this number.
    #[arg(long)]
    pub(crate) cycles: Option<u64>,
    /// Input records.
    #[arg(long)]
    pub(crate) records: Option<u64>,
    /// Seed of the random kill times and occurrences (default: the clock).
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Soak: 300 cycles and 200000 records unless given.
    #[arg(long)]
    pub(crate) soak: bool,
    /// Times to SIGKILL and restart the broker while the pipeline runs,
    /// with --restart-broker. The pipeline must ride them out through its
    /// restart strategy.
    #[arg(long, default_value_t = 0)]
    pub(crate) broker_restarts: u64,
    /// The shell command that SIGKILLs the broker and starts it again on
    /// the same data, returning once it is ready.
    #[arg(long, default_value = "scripts/kafka-up --restart")]
    pub(crate) restart_broker: String,
    /// Fail the run with fewer kills than this.
    #[arg(long, default_value_t = 30)]
    pub(crate) min_kills: u64,
    /// Skip the targeted phases: only broker restarts and random SIGKILLs
    /// (to soak one kind of fault).
    #[arg(long)]
    pub(crate) no_phases: bool,
    /// The client timeout of the pipeline while the broker restarts under
    /// it. The default outlasts a restart, so the job rides it out; a
    /// shorter one (say 4000) fails the attempt during the outage, so the
    /// job goes through its restart strategy and recovery instead.
    #[arg(long, default_value_t = 30_000)]
    pub(crate) outage_client_timeout_ms: u64,
    /// Broker faults on a multi-broker cluster: SIGKILL and restart, one
    /// broker at a time, the leader of an output partition, the
    /// transaction coordinator of the job's transactional ids, and the
    /// coordinator while a restarted child recovers, in turn.
    #[arg(long)]
    pub(crate) cluster: bool,
    /// Broker kills with --cluster.
    #[arg(long, default_value_t = 6)]
    pub(crate) cluster_faults: u64,
    /// The shell command that SIGKILLs broker `{node}` (a node id).
    #[arg(long, default_value = "scripts/kafka-up --cluster --kill {node}")]
    pub(crate) kill_broker: String,
    /// The shell command that starts broker `{node}` again and returns
    /// once it answers.
    #[arg(long, default_value = "scripts/kafka-up --cluster --start {node}")]
    pub(crate) start_broker: String,
    #[command(flatten)]
    pub(crate) cluster_args: ClusterArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Step {
    /// Create the input and output topics and write the input records.
    Input(InputArgs),
    /// Run the pipeline until every record's update is visible, then stop
    /// gracefully. `EXACTLY_CRASH_AT=<phase>:<n>` makes it abort at the
    /// n-th occurrence of a phase.
    Child(ChildArgs),
    /// Check the output topic (both oracles, nothing left open, every
    /// record exactly once in per-key order).
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub(crate) struct InputArgs {
    /// The input topic, created.
    #[arg(long)]
    pub(crate) input: String,
    /// The output topic, created.
    #[arg(long)]
    pub(crate) output: String,
    /// Input records.
    #[arg(long)]
    pub(crate) records: u64,
}

#[derive(Debug, Args, Clone)]
pub(crate) struct ChildArgs {
    /// The input topic.
    #[arg(long)]
    pub(crate) input: String,
    /// The output topic.
    #[arg(long)]
    pub(crate) output: String,
    /// The sink's transactional-id prefix.
    #[arg(long)]
    pub(crate) prefix: String,
    /// The checkpoint directory.
    #[arg(long)]
    pub(crate) checkpoints: PathBuf,
    /// Stop once this many output records are visible.
    #[arg(long)]
    pub(crate) records: u64,
    /// The job's parallelism (source, keyed counter and sink).
    #[arg(long, default_value_t = 2)]
    pub(crate) parallelism: usize,
    /// The checkpoint interval.
    #[arg(long, default_value_t = 150)]
    pub(crate) checkpoint_interval_ms: u64,
    /// The sink's transaction.timeout.ms.
    #[arg(long, default_value_t = 600_000)]
    pub(crate) transaction_timeout_ms: u64,
    /// The checkpoint timeout.
    #[arg(long, default_value_t = 60_000)]
    pub(crate) checkpoint_timeout_ms: u64,
    /// The sink's restart budget (part of the preflight's timeout check).
    #[arg(long, default_value_t = 60_000)]
    pub(crate) restart_budget_ms: u64,
    /// In-process restarts allowed after a failure (1 s apart).
    #[arg(long, default_value_t = 30)]
    pub(crate) restarts: u32,
    /// The bound on each Kafka client call (ClientSettings::timeout).
    #[arg(long, default_value_t = 30_000)]
    pub(crate) client_timeout_ms: u64,
    /// Restore this savepoint (JobConfig::restore_from).
    #[arg(long)]
    pub(crate) restore_from: Option<PathBuf>,
    /// With --stop-with-savepoint-after-ms: where the savepoint goes.
    #[arg(long, requires = "stop_with_savepoint_after_ms")]
    pub(crate) savepoint: Option<PathBuf>,
    /// Stop with a savepoint (into --savepoint) after this long, then exit.
    #[arg(long, requires = "savepoint")]
    pub(crate) stop_with_savepoint_after_ms: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// The output topic.
    #[arg(long)]
    pub(crate) output: String,
    /// Input records.
    #[arg(long)]
    pub(crate) records: u64,
}
