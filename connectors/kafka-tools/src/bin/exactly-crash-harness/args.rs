//! The crash harness's command line: the whole run and its three steps.

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
    /// Keep the children's checkpoints and savepoints in object storage:
    /// an `s3://bucket/prefix` URL, under which each run takes a prefix of
    /// its own. The S3 client is configured from the standard AWS
    /// environment, which the caller sets and the children inherit
    /// (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_REGION`; for moto: `export $(scripts/s3-up | grep ^AWS_)`).
    /// Every child then runs in a fresh, empty working directory, as on a
    /// new machine, and the zombie scenarios run (`--zombies`).
    #[arg(long, value_name = "URL")]
    pub(crate) storage: Option<String>,
    /// With --storage: zombie scenarios (default 2). A child is frozen with
    /// SIGSTOP after it completed a checkpoint, a successor takes the
    /// storage over and completes a checkpoint, and the frozen child, sent
    /// SIGCONT, must stop by itself, fenced. They alternate between a
    /// child that froze itself just before completing a checkpoint (the
    /// storage's fence must stop it) and one the harness froze at a random
    /// moment (fenced by the storage or by Kafka, whichever it meets
    /// first).
    #[arg(long, requires = "storage")]
    pub(crate) zombies: Option<u64>,
    #[command(flatten)]
    pub(crate) cluster_args: ClusterArgs,
}

impl RunArgs {
    /// The zombie scenarios of this run: `--zombies`, 2 with `--storage`,
    /// none without.
    pub(crate) fn zombies(&self) -> u64 {
        match (&self.storage, self.zombies) {
            (None, _) => 0,
            (Some(_), zombies) => zombies.unwrap_or(2),
        }
    }
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
    /// Where the checkpoints live: a directory, or an `s3://bucket/prefix`
    /// URL (`JobConfig::checkpoint_dir`).
    #[arg(long)]
    pub(crate) checkpoints: String,
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
    /// Restore this savepoint, a directory or an `s3://` URL
    /// (JobConfig::restore_from).
    #[arg(long)]
    pub(crate) restore_from: Option<String>,
    /// With --stop-with-savepoint-after-ms: where the savepoint goes, a
    /// directory or an `s3://` URL.
    #[arg(long, requires = "stop_with_savepoint_after_ms")]
    pub(crate) savepoint: Option<String>,
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn run_args(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let cli = Cli::try_parse_from(
            std::iter::once("exactly-crash-harness").chain(args.iter().copied()),
        )?;
        assert!(cli.step.is_none());
        Ok(cli.run)
    }

    #[test]
    fn storage_brings_two_zombies_unless_told_otherwise() {
        let local = run_args(&[]).unwrap();
        assert_eq!((local.storage.as_deref(), local.zombies()), (None, 0));
        let s3 = run_args(&["--storage", "s3://exactly-tests/harness"]).unwrap();
        assert_eq!(s3.storage.as_deref(), Some("s3://exactly-tests/harness"));
        assert_eq!(s3.zombies(), 2);
        let none = run_args(&["--storage", "s3://b/p", "--zombies", "0"]).unwrap();
        assert_eq!(none.zombies(), 0);
        let five = run_args(&["--storage", "s3://b/p", "--zombies", "5"]).unwrap();
        assert_eq!(five.zombies(), 5);
    }

    #[test]
    fn zombies_need_storage() {
        let err = run_args(&["--zombies", "2"]).unwrap_err().to_string();
        assert!(err.contains("--storage"), "{err}");
    }

    #[test]
    fn a_child_takes_an_s3_location_for_checkpoints_and_savepoints() {
        let cli = Cli::try_parse_from([
            "exactly-crash-harness",
            "child",
            "--input",
            "in",
            "--output",
            "out",
            "--prefix",
            "p",
            "--checkpoints",
            "s3://b/run/checkpoints",
            "--records",
            "10",
            "--restore-from",
            "s3://b/run/savepoint-0",
        ])
        .unwrap();
        let Some(Step::Child(child)) = cli.step else {
            panic!("not the child step: {:?}", cli.step);
        };
        assert_eq!(child.checkpoints, "s3://b/run/checkpoints");
        assert_eq!(
            child.restore_from.as_deref(),
            Some("s3://b/run/savepoint-0")
        );
    }
}
