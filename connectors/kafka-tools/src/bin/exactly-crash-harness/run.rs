//! The whole run: the plan of kill cycles (every phase twice, zombies,
//! broker restarts, then random SIGKILLs), the child processes and where
//! they run, and the final clean run and verdict.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use exactly::fault::FaultPoint;
use exactly::storage::{CheckpointStorage, Location};
use exactly_kafka::client::ClientSettings;
use exactly_kafka_tools::cluster::hand_to_child;

use crate::args::{ChildArgs, InputArgs, RunArgs};
use crate::broker_faults::{Victim, run_for_node, victim_node};
use crate::pipeline::{CRASH_AT, PAUSE_AT, visible_records};
use crate::process::{Death, death, sigkill, wait};
use crate::workload::{check, input, produce_input};
use crate::zombies::{self, Fence, Freeze, ZombieEnd};

/// Targeted phases, each hit at least twice: the SDK's fault points, plus
/// `during-sink-commit` (the commit is sent, the process dies before the
/// answer). The recovery phases follow `after-checkpoint-complete`, which
/// leaves a complete checkpoint with an uncommitted transaction: a kill
/// `during-recovery` leaves it uncommitted still, for the kill
/// `after-recovery-commit` (the commit acknowledged, the commit marker not
/// yet written).
pub(crate) fn phases() -> Vec<&'static str> {
    const RECOVERY: [&str; 2] = ["during-recovery", "after-recovery-commit"];
    let mut phases: Vec<&'static str> = FaultPoint::NAMES
        .iter()
        .copied()
        .filter(|p| !RECOVERY.contains(p))
        .collect();
    let after = |phases: &Vec<&str>, name: &str| {
        phases
            .iter()
            .position(|p| *p == name)
            .map_or(phases.len(), |i| i + 1)
    };
    let at = after(&phases, "before-sink-commit");
    phases.insert(at, "during-sink-commit");
    let at = after(&phases, "after-checkpoint-complete");
    phases.splice(at..at, RECOVERY);
    phases
}

pub(crate) fn needs_something_to_recover(phase: &str) -> bool {
    matches!(phase, "during-recovery" | "after-recovery-commit")
}

/// SplitMix64.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

/// One cycle of the plan.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cycle {
    /// Abort at a phase.
    Phase(&'static str),
    /// SIGKILL at a random time.
    RandomKill,
    /// SIGKILL the broker while the child runs; the child must recover.
    BrokerRestart,
    /// Stop with a savepoint; the next cycles restore it, in a checkpoint
    /// directory of their own.
    SavepointStop,
    /// SIGKILL the first child that restored the savepoint.
    KillAfterSavepointRestore,
    /// SIGKILL a child running at another parallelism.
    Rescale(usize),
    /// SIGKILL one broker of the cluster and start it again, under a
    /// running child (`--cluster`).
    ClusterFault(Victim),
    /// Freeze a child, let a successor take the storage over, continue the
    /// frozen one: it must stop, fenced (`--zombies`, with `--storage`).
    Zombie(Freeze),
}

/// Where the children run. With `--storage`, each child runs in a fresh,
/// empty working directory of its own (and `TMPDIR`), as on a new machine,
/// removed once its cycle is over: nothing a child could write locally
/// survives into the next one, which must resume from the object store
/// alone.
pub(crate) struct Machines {
    root: PathBuf,
    started: u64,
    in_use: Vec<PathBuf>,
    /// Files the children left in their directories (they should write
    /// none: logs go to stderr, checkpoints to the object store).
    left_behind: Vec<String>,
}

impl Machines {
    fn new(root: PathBuf) -> Machines {
        Machines {
            root,
            started: 0,
            in_use: Vec::new(),
            left_behind: Vec::new(),
        }
    }

    /// A new, empty directory for the next child.
    fn next(&mut self) -> std::io::Result<PathBuf> {
        self.started += 1;
        let dir = self.root.join(format!("machine-{}", self.started));
        std::fs::create_dir_all(&self.root)?;
        std::fs::create_dir(&dir)?;
        self.in_use.push(dir.clone());
        Ok(dir)
    }

    /// Removes the directories of the children that ran so far (all of
    /// them dead), noting what they left there.
    fn retire(&mut self) {
        for dir in self.in_use.drain(..) {
            let mut found = Vec::new();
            list_files(&dir, &mut found);
            self.left_behind
                .extend(found.iter().map(|f| f.display().to_string()));
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

fn list_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            list_files(&path, found);
        }
        found.push(path);
    }
}

/// How to start one child.
#[derive(Default)]
pub(crate) struct Spawn<'a> {
    /// `EXACTLY_CRASH_AT`: abort at a phase.
    pub(crate) crash_at: Option<String>,
    /// `EXACTLY_PAUSE_AT`: freeze at a phase.
    pub(crate) pause_at: Option<String>,
    /// More arguments of the `child` step.
    pub(crate) extra: &'a [&'a str],
    /// Where its stderr goes (default: the harness's).
    pub(crate) stderr: Option<File>,
}

pub(crate) struct Harness {
    exe: PathBuf,
    child: ChildArgs,
    /// The checkpoint storage at `child.checkpoints`, as the harness reads
    /// it (never claims it).
    storage: Arc<dyn CheckpointStorage>,
    /// With `--storage`: a fresh directory for every child.
    machines: Option<Machines>,
    settings: ClientSettings,
    /// The environment variable and file that hand `settings` to a child.
    settings_file: (&'static str, PathBuf),
    pub(crate) rng: Rng,
}

/// Opens the checkpoint storage at `location` for reading: a local
/// directory, or an object store through the claim object.
fn open_storage(location: &str) -> Result<Arc<dyn CheckpointStorage>, String> {
    Location::parse(location)
        .and_then(|l| l.open_storage())
        .map_err(|e| format!("cannot open the checkpoint storage {location}: {e}"))
}

impl Harness {
    /// Points the children (and the harness's reads) at new checkpoint
    /// storage.
    fn set_checkpoints(&mut self, location: String) -> Result<(), String> {
        self.storage = open_storage(&location)?;
        self.child.checkpoints = location;
        Ok(())
    }

    pub(crate) fn spawn(
        &mut self,
        crash_at: Option<String>,
        extra: &[&str],
    ) -> std::io::Result<Child> {
        self.spawn_with(Spawn {
            crash_at,
            extra,
            ..Spawn::default()
        })
    }

    pub(crate) fn spawn_with(&mut self, how: Spawn<'_>) -> std::io::Result<Child> {
        let args = &self.child;
        let mut command = Command::new(&self.exe);
        command
            .arg("child")
            .arg("--input")
            .arg(&args.input)
            .arg("--output")
            .arg(&args.output)
            .arg("--prefix")
            .arg(&args.prefix)
            .arg("--checkpoints")
            .arg(&args.checkpoints)
            .arg("--records")
            .arg(args.records.to_string())
            .arg("--parallelism")
            .arg(args.parallelism.to_string())
            .args(how.extra);
        if let Some(savepoint) = &args.restore_from {
            command.arg("--restore-from").arg(savepoint);
        }
        command.env(self.settings_file.0, &self.settings_file.1);
        for (variable, spec) in [(CRASH_AT, how.crash_at), (PAUSE_AT, how.pause_at)] {
            match spec {
                Some(spec) => command.env(variable, spec),
                None => command.env_remove(variable),
            };
        }
        if let Some(stderr) = how.stderr {
            command.stderr(stderr);
        }
        if let Some(machines) = &mut self.machines {
            let dir = machines.next()?;
            command.current_dir(&dir).env("TMPDIR", &dir);
        }
        command.spawn()
    }

    /// Removes the working directories of the children that ran so far.
    fn retire_machines(&mut self) {
        if let Some(machines) = &mut self.machines {
            machines.retire();
        }
    }

    fn visible(&self) -> Option<u64> {
        let runtime = tokio::runtime::Runtime::new().ok()?;
        runtime
            .block_on(visible_records(&self.settings, &self.child.output))
            .ok()
    }

    /// The id of the newest complete checkpoint in the child's checkpoint
    /// storage (for object storage: as its claim object records it), with
    /// the number of subtasks of each stage.
    fn latest_checkpoint(&self) -> Option<(u64, Vec<usize>)> {
        let latest = self.storage.latest().ok().flatten()?;
        let mut subtasks: BTreeMap<usize, usize> = BTreeMap::new();
        for handle in &latest.metadata.task_states {
            *subtasks.entry(handle.stage).or_default() += 1;
        }
        Some((
            latest.metadata.checkpoint_id,
            subtasks.into_values().collect(),
        ))
    }

    /// The id of the newest complete checkpoint, if any.
    pub(crate) fn latest_id(&self) -> Option<u64> {
        self.latest_checkpoint().map(|(id, _)| id)
    }

    /// Waits until the child has completed a checkpoint of its own (newer
    /// than `before`), checks that every stage ran at the child's
    /// parallelism, then SIGKILLs it within 500 ms. A lineage step only
    /// counts if the next child restores a checkpoint this one wrote.
    pub(crate) fn kill_after_own_checkpoint(
        &mut self,
        running: &mut Child,
        before: Option<u64>,
        how: &'static str,
    ) -> Result<Death, String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = wait(running, Duration::from_millis(50)) {
                return Ok(death(status, how, how));
            }
            if let Some((id, subtasks)) = self.latest_checkpoint()
                && Some(id) > before
            {
                let parallelism = self.child.parallelism;
                if subtasks.iter().any(|&n| n != parallelism) {
                    sigkill(running);
                    return Err(format!(
                        "checkpoint {id} was written with {subtasks:?} subtasks per stage, not {parallelism}"
                    ));
                }
                println!(
                    "crash-harness: the child completed checkpoint {id} at parallelism {parallelism}"
                );
                let after = Duration::from_millis(self.rng.below(500));
                return Ok(match wait(running, after) {
                    Some(status) => death(status, how, how),
                    None => death(sigkill(running), how, how),
                });
            }
            if Instant::now() >= deadline {
                sigkill(running);
                return Err(format!(
                    "the child at parallelism {} completed no checkpoint within 60 s",
                    self.child.parallelism
                ));
            }
        }
    }

    /// A broker fault on the cluster under `running`: SIGKILLs the broker
    /// `victim` names, starts it again, waits until the child has made
    /// progress, and SIGKILLs the child. For a kill during recovery,
    /// `running` is the child that aborts at `after-checkpoint-complete`;
    /// the broker dies while the child started after it recovers.
    fn cluster_fault(
        &mut self,
        running: &mut Child,
        victim: Victim,
        args: &RunArgs,
    ) -> Result<Death, String> {
        let how = victim.name();
        let mut recovering;
        let running = if victim == Victim::CoordinatorDuringRecovery {
            match wait(running, Duration::from_secs(30)) {
                Some(status) if status.signal() == Some(6) => {}
                Some(status) => return Ok(death(status, "random SIGKILL", "random SIGKILL")),
                None => return Ok(death(sigkill(running), "random SIGKILL", "random SIGKILL")),
            }
            recovering = self
                .spawn(None, &[])
                .map_err(|e| format!("cannot start the child: {e}"))?;
            // Start-up takes about a second; recovery comes first in it.
            let into_recovery = Duration::from_millis(300 + self.rng.below(900));
            if let Some(status) = wait(&mut recovering, into_recovery) {
                return Ok(death(status, how, how));
            }
            &mut recovering
        } else {
            let steady = Duration::from_millis(2500 + self.rng.below(1500));
            if let Some(status) = wait(running, steady) {
                return Ok(death(status, "random SIGKILL", "random SIGKILL"));
            }
            running
        };
        let first_id = format!("{}-0-0", self.child.prefix);
        let node = or_kill(
            running,
            victim_node(&self.settings, victim, &self.child.output, &first_id),
        )?;
        let visible = self.visible().unwrap_or(0);
        println!("crash-harness: SIGKILL broker {node} ({how})");
        or_kill(running, run_for_node(&args.kill_broker, node))?;
        let down = Duration::from_millis(500 + self.rng.below(2500));
        if let Some(status) = wait(running, down) {
            run_for_node(&args.start_broker, node)?;
            return Ok(death(status, how, how));
        }
        or_kill(running, run_for_node(&args.start_broker, node))?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = wait(running, Duration::from_millis(500)) {
                return Ok(death(status, how, how));
            }
            if self.visible().is_some_and(|n| n > visible) {
                return Ok(death(sigkill(running), how, how));
            }
            if Instant::now() >= deadline {
                sigkill(running);
                return Err(format!(
                    "the pipeline made no progress within 120 s of restarting broker {node} ({how}; still {visible} records visible)"
                ));
            }
        }
    }

    /// Restarts the broker under a running child, then waits until the
    /// child has made progress on the restarted broker, and SIGKILLs it.
    fn broker_restart(&mut self, running: &mut Child, command: &str) -> Result<Death, String> {
        // Into steady state (start-up takes about a second), then the broker.
        let before_restart = Duration::from_millis(2500 + self.rng.below(1500));
        if let Some(status) = wait(running, before_restart) {
            return Ok(death(status, "random SIGKILL", "random SIGKILL"));
        }
        let visible = self.visible().unwrap_or(0);
        let status = Command::new("sh")
            .arg("-c")
            .arg(command)
            .status()
            .map_err(|e| format!("cannot run `{command}`: {e}"))?;
        if !status.success() {
            return Err(format!("`{command}` failed ({status})"));
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = wait(running, Duration::from_millis(500)) {
                return Ok(death(status, "random SIGKILL", "random SIGKILL"));
            }
            if self.visible().is_some_and(|n| n > visible) {
                return Ok(death(sigkill(running), "random SIGKILL", "random SIGKILL"));
            }
            if Instant::now() >= deadline {
                sigkill(running);
                return Err(format!(
                    "the pipeline made no progress within 120 s of the broker restart (still {visible} records visible)"
                ));
            }
        }
    }
}

/// The cycles of a run, in order: every phase twice, the zombies frozen
/// at random, the broker restarts, the cluster faults, the lineage cycles,
/// random SIGKILLs up to `cycles` kills (the savepoint stop is not a kill;
/// broker faults and zombies come on top), and last the quiet zombie, which
/// uses up the input.
pub(crate) fn plan(
    phases: &[&'static str],
    cycles: u64,
    broker_restarts: u64,
    cluster_faults: u64,
    zombies: u64,
) -> VecDeque<Cycle> {
    let lineage = [
        Cycle::SavepointStop,
        Cycle::KillAfterSavepointRestore,
        Cycle::Rescale(3),
        Cycle::Rescale(1),
        Cycle::Rescale(2),
    ];
    let mut plan: VecDeque<Cycle> =
        phases
            .iter()
            .chain(phases)
            .map(|p| Cycle::Phase(p))
            .chain((1..zombies).map(|_| Cycle::Zombie(Freeze::Random)))
            .chain((0..broker_restarts).map(|_| Cycle::BrokerRestart))
            .chain((0..cluster_faults).map(|i| {
                Cycle::ClusterFault(Victim::ROTATION[i as usize % Victim::ROTATION.len()])
            }))
            .chain(lineage)
            .collect();
    let quiet = u64::from(zombies > 0);
    while (plan.len() as u64) + quiet < cycles + broker_restarts + cluster_faults + zombies + 1 {
        plan.push_back(Cycle::RandomKill);
    }
    if quiet > 0 {
        plan.push_back(Cycle::Zombie(Freeze::Quiet));
    }
    plan
}

/// The environment variables the S3 client takes its endpoint from.
const ENDPOINT_VARIABLES: [&str; 2] = ["AWS_ENDPOINT_URL", "AWS_ENDPOINT"];

/// What `--storage` needs before a child starts: an `s3://` URL, an
/// endpoint in the AWS environment, and something answering there.
fn check_storage_url(url: &str) -> Result<Location, String> {
    let location = Location::parse(url).map_err(|e| format!("--storage: {e}"))?;
    if location.as_local().is_some() {
        return Err(format!(
            "--storage takes an s3://bucket/prefix URL, not {url:?}; local checkpoints (in the harness's \
             work directory) are the default"
        ));
    }
    let Some(endpoint) = ENDPOINT_VARIABLES
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    else {
        return Err(
            "--storage: AWS_ENDPOINT_URL is not set. The children reach the object store through the \
             standard AWS environment, which the caller sets and they inherit: for the local moto \
             server, `export $(scripts/s3-up | grep ^AWS_)` (it prints AWS_ENDPOINT_URL, \
             AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION); for AWS itself, \
             AWS_ENDPOINT_URL=https://s3.<region>.amazonaws.com with AWS_REGION and credentials"
                .to_owned(),
        );
    };
    let address = endpoint_address(&endpoint).ok_or_else(|| {
        format!("--storage: AWS_ENDPOINT_URL={endpoint} is not an http:// or https:// URL")
    })?;
    let answers = address
        .to_socket_addrs()
        .map_err(|e| e.to_string())
        .and_then(|mut addresses| {
            let first = addresses.next().ok_or_else(|| "no address".to_owned())?;
            TcpStream::connect_timeout(&first, Duration::from_secs(3)).map_err(|e| e.to_string())
        });
    if let Err(e) = answers {
        return Err(format!(
            "--storage: nothing answers at AWS_ENDPOINT_URL={endpoint} ({e}); start the server, for \
             example with scripts/s3-up"
        ));
    }
    Ok(location)
}

/// `host:port` of an `http://` or `https://` URL (port 80 or 443 unless
/// given).
pub(crate) fn endpoint_address(url: &str) -> Option<String> {
    let (rest, port) = match url.split_once("://")? {
        ("http", rest) => (rest, 80),
        ("https", rest) => (rest, 443),
        _ => return None,
    };
    let authority = rest.split('/').next().filter(|a| !a.is_empty())?;
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok() && !authority.ends_with(']'));
    Some(if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:{port}")
    })
}

/// Claims a throwaway prefix, `<run>/_probe`, of the run's object storage:
/// one conditional write, which fails at once (rather than in the first
/// child) when the bucket is missing, the credentials are refused, or the
/// server does not take conditional writes.
fn probe_storage(run: &Location) -> Result<(), String> {
    let probe = run.join("_probe");
    probe
        .open_storage()
        .and_then(|storage| storage.claim("crash-harness probe").map(drop))
        .map_err(|e| {
            format!(
                "--storage: cannot claim {probe} ({e}); does the bucket exist (scripts/s3-up creates \
                 exactly-tests), are the credentials accepted, and does the server take conditional writes?"
            )
        })
}

/// Runs the whole harness; returns the exit code.
pub(crate) fn run(args: &RunArgs) -> Result<ExitCode, String> {
    let cycles = args.cycles.unwrap_or(if args.soak { 300 } else { 32 });
    let records = args
        .records
        .unwrap_or(if args.soak { 200_000 } else { 20_000 });
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let settings = args.cluster_args.settings().map_err(|e| e.to_string())?;
    let bootstrap = settings.bootstrap.clone();
    let run = format!("{}-{}", std::process::id(), seed % 1_000_000);
    let work = std::env::temp_dir().join(format!("exactly-crash-harness-{run}"));
    // Where checkpoints and savepoints go: the work directory, or a prefix
    // of the run's own in the object store.
    let base = match &args.storage {
        Some(url) => {
            let base = check_storage_url(url)?.join(&format!("exactly-crash-harness-{run}"));
            probe_storage(&base)?;
            base
        }
        None => Location::Local(work.clone()),
    };
    let zombies = args.zombies();
    // The quiet zombie needs input nobody has read yet: the last tenth is
    // written just before it starts.
    let held_back = if zombies > 0 { records / 10 } else { 0 };
    let child_args = ChildArgs {
        // Under `exactly-`, the prefix the secured test broker's ACLs
        // allow its application user (scripts/kafka-up --secure).
        input: format!("exactly-crash-harness-in-{run}"),
        output: format!("exactly-crash-harness-out-{run}"),
        prefix: format!("exactly-crash-harness-{run}"),
        checkpoints: base.join("checkpoints").to_string(),
        records,
        parallelism: 2,
        checkpoint_interval_ms: 150,
        transaction_timeout_ms: 600_000,
        checkpoint_timeout_ms: 60_000,
        restart_budget_ms: 60_000,
        restarts: 30,
        client_timeout_ms: 30_000,
        restore_from: None,
        savepoint: None,
        stop_with_savepoint_after_ms: None,
    };
    println!(
        "crash-harness: seed {seed}, {records} records, {cycles} kill cycles, {} broker restarts, broker {bootstrap}",
        args.broker_restarts
    );
    if args.storage.is_some() {
        println!(
            "crash-harness: checkpoints and savepoints in {base}; every child in a fresh local directory; {zombies} zombies"
        );
    }
    input(
        &settings,
        &InputArgs {
            input: child_args.input.clone(),
            output: child_args.output.clone(),
            records: records - held_back,
        },
    )?;
    let mut harness = Harness {
        exe: std::env::current_exe().map_err(|e| format!("cannot find my executable: {e}"))?,
        storage: open_storage(&child_args.checkpoints)?,
        machines: args
            .storage
            .is_some()
            .then(|| Machines::new(work.join("machines"))),
        child: child_args,
        settings_file: hand_to_child(&settings, &work.join("client.properties"))
            .map_err(|e| format!("cannot write the client properties for the child: {e}"))?,
        settings: settings.clone(),
        rng: Rng(seed),
    };

    let started = Instant::now();
    // Every phase twice, the zombies frozen at random, the broker
    // restarts, the lineage cycles, random SIGKILLs, and last the quiet
    // zombie, which uses up the input.
    let phases = if args.no_phases { Vec::new() } else { phases() };
    let cluster_faults = if args.cluster { args.cluster_faults } else { 0 };
    let mut plan = plan(
        &phases,
        cycles,
        args.broker_restarts,
        cluster_faults,
        zombies,
    );
    let mut savepoints = 0;
    let mut kills = 0u64;
    let mut broker_restarts = 0u64;
    let mut by_phase: BTreeMap<&str, u64> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    let mut retries: BTreeMap<&str, u32> = BTreeMap::new();
    let mut fences: BTreeMap<Fence, u64> = BTreeMap::new();
    let mut cycle = 0;
    while let Some(next) = plan.pop_front() {
        cycle += 1;
        let crash_at = match next {
            Cycle::Phase(p) => Some(format!("{p}:{}", 1 + harness.rng.below(2))),
            Cycle::ClusterFault(Victim::CoordinatorDuringRecovery) => {
                Some("after-checkpoint-complete:1".to_owned())
            }
            _ => None,
        };
        if let Cycle::Rescale(parallelism) = next {
            harness.child.parallelism = parallelism;
        }
        let savepoint = base.join(&format!("savepoint-{savepoints}"));
        let stop_after = (1000 + harness.rng.below(1500)).to_string();
        let outage_timeout = args.outage_client_timeout_ms.to_string();
        let savepoint_text = savepoint.to_string();
        let extra: &[&str] = match next {
            Cycle::BrokerRestart => &["--client-timeout-ms", &outage_timeout],
            Cycle::SavepointStop => &[
                "--stop-with-savepoint-after-ms",
                &stop_after,
                "--savepoint",
                &savepoint_text,
            ],
            _ => &[],
        };
        if let Cycle::Zombie(Freeze::Quiet) = next
            && held_back > 0
        {
            produce_input(
                &settings,
                &harness.child.input,
                records - held_back..records,
            )
            .map_err(|e| format!("cannot write the rest of the input: {e}"))?;
            println!(
                "crash-harness: wrote the last {held_back} input records, held back for the quiet zombie"
            );
        }
        let checkpoint_before = harness.latest_id();
        // A zombie's stderr is kept: it must end with the fence.
        let zombie_stderr = work.join(format!("zombie-{cycle}.stderr"));
        let (pause_at, stderr) = match next {
            Cycle::Zombie(freeze) => (
                freeze.pause_at(),
                Some(
                    File::create(&zombie_stderr)
                        .map_err(|e| format!("cannot create {}: {e}", zombie_stderr.display()))?,
                ),
            ),
            _ => (None, None),
        };
        let mut running = harness
            .spawn_with(Spawn {
                crash_at: crash_at.clone(),
                pause_at,
                extra,
                stderr,
            })
            .map_err(|e| format!("cannot start the child: {e}"))?;
        let mut zombie_end: Option<ZombieEnd> = None;
        let ended = match next {
            Cycle::Phase(name) => match wait(&mut running, Duration::from_secs(30)) {
                Some(status) => death(status, name, "random SIGKILL"),
                None => death(sigkill(&mut running), "random SIGKILL", "random SIGKILL"),
            },
            Cycle::RandomKill => {
                let after = Duration::from_millis(300 + harness.rng.below(1500));
                match wait(&mut running, after) {
                    Some(status) => death(status, "random SIGKILL", "random SIGKILL"),
                    None => death(sigkill(&mut running), "random SIGKILL", "random SIGKILL"),
                }
            }
            Cycle::SavepointStop => match wait(&mut running, Duration::from_secs(120)) {
                Some(status) if status.success() => Death::StoppedWithSavepoint,
                Some(status) => Death::Failed(status),
                None => death(sigkill(&mut running), "random SIGKILL", "random SIGKILL"),
            },
            Cycle::KillAfterSavepointRestore | Cycle::Rescale(_) => {
                let how = match next {
                    Cycle::Rescale(3) => "SIGKILL at parallelism 3",
                    Cycle::Rescale(1) => "SIGKILL at parallelism 1",
                    Cycle::Rescale(_) => "SIGKILL back at parallelism 2",
                    _ => "SIGKILL after restoring the savepoint",
                };
                harness.kill_after_own_checkpoint(&mut running, checkpoint_before, how)?
            }
            Cycle::BrokerRestart => {
                broker_restarts += 1;
                harness.broker_restart(&mut running, &args.restart_broker)?
            }
            Cycle::ClusterFault(victim) => harness.cluster_fault(&mut running, victim, args)?,
            Cycle::Zombie(freeze) => {
                let end = zombies::zombie(
                    &mut harness,
                    &mut running,
                    freeze,
                    &zombie_stderr,
                    checkpoint_before,
                )?;
                match &end.fence {
                    Ok(fence) => *fences.entry(*fence).or_default() += 1,
                    Err(problem) => failures.push(format!("cycle {cycle} ({next:?}): {problem}")),
                }
                let successor = end.successor;
                zombie_end = Some(end);
                successor
            }
        };
        harness.retire_machines();
        if let Death::StoppedWithSavepoint = ended {
            // From now on: restore the savepoint, in new checkpoint storage.
            harness.child.restore_from = Some(savepoint_text.clone());
            harness.set_checkpoints(
                base.join(&format!("checkpoints-after-savepoint-{savepoints}"))
                    .to_string(),
            )?;
            savepoints += 1;
        }
        let outcome = match ended {
            Death::StoppedWithSavepoint => {
                *by_phase.entry("stopped with a savepoint").or_default() += 1;
                format!("stopped with a savepoint in {savepoint}")
            }
            Death::Killed(how) => {
                kills += 1;
                *by_phase.entry(how).or_default() += 1;
                match next {
                    Cycle::BrokerRestart => {
                        format!("the broker was restarted under it; it recovered, then {how}")
                    }
                    Cycle::ClusterFault(_) => {
                        format!("{how}, restarted; the child made progress, then was SIGKILLed")
                    }
                    Cycle::Zombie(_) => format!(
                        "{}; then {how}",
                        zombie_end.as_ref().map_or("", |end| end.summary.as_str())
                    ),
                    _ => format!(
                        "died: {how}{}",
                        crash_at
                            .map(|c| format!(" (asked: {c})"))
                            .unwrap_or_default()
                    ),
                }
            }
            Death::Finished => match &zombie_end {
                Some(end) => format!("{}; then the successor finished its work", end.summary),
                None => "finished its work before its kill".to_owned(),
            },
            Death::Failed(status) => {
                failures.push(format!(
                    "cycle {cycle} ({next:?}): the child exited with {status} instead of dying of the fault"
                ));
                format!("FAILED: exited with {status}")
            }
        };
        // A phase missed (the child was killed elsewhere or finished
        // first) is tried again, up to three times.
        if let Cycle::Phase(name) = next
            && !matches!(ended, Death::Killed(how) if how == name)
        {
            let tries = retries.entry(name).or_default();
            *tries += 1;
            if *tries <= 3 {
                plan.push_front(Cycle::Phase(name));
                if needs_something_to_recover(name) {
                    plan.push_front(Cycle::Phase("after-checkpoint-complete"));
                }
            }
        }
        println!("crash-harness: cycle {cycle:>3}: {outcome}");
    }
    println!("crash-harness: final run without faults");
    let mut last = harness
        .spawn(None, &[])
        .map_err(|e| format!("cannot start the child: {e}"))?;
    match wait(&mut last, Duration::from_secs(600)) {
        Some(status) if status.success() => {}
        Some(status) => return Err(format!("the final run failed ({status})")),
        None => {
            sigkill(&mut last);
            return Err("the final run did not finish within 600 s".to_owned());
        }
    }
    harness.retire_machines();
    let verdict = check(&settings, &harness.child.output, records)
        .map_err(|e| format!("cannot check the output: {e}"))?;
    println!("crash-harness: {}", verdict.oracles);
    println!(
        "crash-harness: kills by phase: {by_phase:?}; {broker_restarts} broker restarts; took {:.0?}",
        started.elapsed()
    );
    if let Some(machines) = &harness.machines {
        println!(
            "crash-harness: {} children, each in a fresh local directory; files they left there: {}",
            machines.started,
            if machines.left_behind.is_empty() {
                "none".to_owned()
            } else {
                machines.left_behind.join(", ")
            }
        );
    }
    let mut missing_phases: Vec<&str> = phases
        .iter()
        .copied()
        .filter(|p| by_phase.get(p).copied().unwrap_or(0) < 2)
        .collect();
    missing_phases.extend(
        [
            "stopped with a savepoint",
            "SIGKILL after restoring the savepoint",
            "SIGKILL at parallelism 3",
            "SIGKILL at parallelism 1",
        ]
        .into_iter()
        .filter(|how| !by_phase.contains_key(how)),
    );
    if !missing_phases.is_empty() {
        failures.push(format!(
            "phases killed fewer than twice, or lineage steps that never happened: {missing_phases:?}"
        ));
    }
    if kills < args.min_kills {
        failures.push(format!(
            "only {kills} kills, fewer than --min-kills {}",
            args.min_kills
        ));
    }
    let fenced = |fence| fences.get(&fence).copied().unwrap_or(0);
    let (storage_fenced, kafka_fenced) = (fenced(Fence::Storage), fenced(Fence::Kafka));
    if zombies > 0 && storage_fenced == 0 {
        failures.push(format!(
            "no zombie of {zombies} was stopped by the storage's fence"
        ));
    }
    for problem in verdict.problems.iter().chain(&failures) {
        println!("crash-harness: {problem}");
    }
    let failed = verdict.lost > 0
        || verdict.duplicated > 0
        || !verdict.problems.is_empty()
        || !failures.is_empty();
    if failed {
        println!(
            "crash-harness: the work directory (local checkpoints, zombies' stderr) is kept for a post-mortem in {}",
            work.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    if args.storage.is_some() {
        println!(
            "crash-harness: {kills} kills, {} zombies fenced ({storage_fenced} storage, {kafka_fenced} kafka), \
             {records} records, {} lost, {} duplicated, storage {base}",
            storage_fenced + kafka_fenced,
            verdict.lost,
            verdict.duplicated
        );
    } else {
        println!(
            "crash-harness: {kills} kills, {records} records, {} lost, {} duplicated",
            verdict.lost, verdict.duplicated
        );
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `result`, after SIGKILLing `running` if it is an error: a run that
/// fails leaves no child behind.
fn or_kill<T>(running: &mut Child, result: Result<T, String>) -> Result<T, String> {
    if result.is_err() {
        sigkill(running);
    }
    result
}

impl zombies::Children for Harness {
    fn latest_id(&self) -> Option<u64> {
        Harness::latest_id(self)
    }

    fn random_below(&mut self, n: u64) -> u64 {
        self.rng.below(n)
    }

    fn spawn_successor(&mut self) -> std::io::Result<Child> {
        self.spawn(None, &[])
    }

    fn kill_after_own_checkpoint(
        &mut self,
        running: &mut Child,
        before: Option<u64>,
        how: &'static str,
    ) -> Result<Death, String> {
        Harness::kill_after_own_checkpoint(self, running, before, how)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_address_has_a_port() {
        let cases = [
            ("http://127.0.0.1:9401", Some("127.0.0.1:9401")),
            ("http://127.0.0.1:9401/", Some("127.0.0.1:9401")),
            (
                "https://s3.eu-west-1.amazonaws.com",
                Some("s3.eu-west-1.amazonaws.com:443"),
            ),
            ("http://minio", Some("minio:80")),
            ("http://[::1]:9000", Some("[::1]:9000")),
            ("http://[::1]", Some("[::1]:80")),
            ("s3://bucket", None),
            ("127.0.0.1:9401", None),
        ];
        for (url, address) in cases {
            assert_eq!(endpoint_address(url).as_deref(), address, "{url}");
        }
    }

    #[test]
    fn storage_must_be_an_s3_url() {
        let err = check_storage_url("/tmp/checkpoints").unwrap_err();
        assert!(err.contains("s3://bucket/prefix"), "{err}");
        let err = check_storage_url("gs://bucket/x").unwrap_err();
        assert!(err.contains("--storage"), "{err}");
    }

    fn names(plan: &VecDeque<Cycle>) -> Vec<String> {
        plan.iter().map(|c| format!("{c:?}")).collect()
    }

    #[test]
    fn without_zombies_the_plan_is_as_before() {
        let phases = phases();
        let plan = plan(&phases, 32, 3, 0, 0);
        // 32 kills and the savepoint stop, and the 3 broker restarts.
        assert_eq!(plan.len(), 32 + 1 + 3);
        assert!(names(&plan).iter().all(|c| !c.contains("Zombie")));
        assert!(matches!(plan.back(), Some(Cycle::RandomKill)));
    }

    #[test]
    fn zombies_come_after_the_phases_and_the_quiet_one_last() {
        let phases = phases();
        for (cycles, zombies) in [(26, 3), (32, 2), (0, 1), (40, 5)] {
            let plan = plan(&phases, cycles, 0, 0, zombies);
            let names = names(&plan);
            let random: Vec<usize> = (0..names.len())
                .filter(|&i| names[i] == "Zombie(Random)")
                .collect();
            assert_eq!(random.len() as u64, zombies - 1, "{names:?}");
            // Right after every phase twice.
            let first = 2 * phases.len();
            assert_eq!(
                random,
                (first..first + random.len()).collect::<Vec<_>>(),
                "{names:?}"
            );
            assert_eq!(
                names.last().map(String::as_str),
                Some("Zombie(Quiet)"),
                "{names:?}"
            );
            assert_eq!(names.iter().filter(|n| *n == "Zombie(Quiet)").count(), 1);
            // The lineage cycles are all there, whatever --cycles says.
            for step in [
                "SavepointStop",
                "KillAfterSavepointRestore",
                "Rescale(3)",
                "Rescale(1)",
                "Rescale(2)",
            ] {
                assert!(names.iter().any(|n| n == step), "{step} missing: {names:?}");
            }
            let at_least = cycles + zombies + 1;
            assert!(plan.len() as u64 >= at_least, "{names:?}");
        }
        // When --cycles is what sets the length, zombies come on top.
        assert_eq!(plan(&phases, 40, 0, 0, 3).len() as u64, 40 + 3 + 1);
    }
}
