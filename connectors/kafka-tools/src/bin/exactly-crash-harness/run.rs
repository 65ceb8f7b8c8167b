//! The whole run: the plan of kill cycles (every phase twice, then random
//! SIGKILLs, broker restarts), the child processes, and the final clean
//! run and verdict.

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, ExitStatus};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use exactly::fault::FaultPoint;
use exactly::storage::{CheckpointStorage, LocalStorage};
use exactly_kafka::client::ClientSettings;
use exactly_kafka_tools::cluster::hand_to_child;

use crate::args::{ChildArgs, InputArgs, RunArgs};
use crate::broker_faults::{Victim, run_for_node, victim_node};
use crate::pipeline::{CRASH_AT, visible_records};
use crate::workload::{check, input};

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
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

pub(crate) fn wait(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILLs `child` and reaps it.
pub(crate) fn sigkill(child: &mut Child) -> ExitStatus {
    let _ = child.kill();
    // A raw wait status of 9: killed by SIGKILL.
    child.wait().unwrap_or(ExitStatus::from_raw(9))
}

/// How a cycle ended the child.
pub(crate) enum Death {
    /// By SIGABRT at a phase, or SIGKILL: counts as a kill.
    Killed(&'static str),
    /// It finished its work first (exit 0): no kill.
    Finished,
    /// It stopped with a savepoint, as asked: no kill.
    StoppedWithSavepoint,
    /// It exited with an error: a failure of the run.
    Failed(ExitStatus),
}

/// How `status` ended a child: a SIGABRT is the phase `on_abort`, a
/// SIGKILL counts as `on_kill`.
pub(crate) fn death(status: ExitStatus, on_abort: &'static str, on_kill: &'static str) -> Death {
    match status.signal() {
        Some(6) => Death::Killed(on_abort),
        Some(9) => Death::Killed(on_kill),
        _ if status.success() => Death::Finished,
        _ => Death::Failed(status),
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
}

pub(crate) struct Harness {
    exe: PathBuf,
    child: ChildArgs,
    settings: ClientSettings,
    /// The environment variable and file that hand `settings` to a child.
    settings_file: (&'static str, PathBuf),
    rng: Rng,
}

impl Harness {
    fn spawn(&self, crash_at: Option<String>, extra: &[&str]) -> std::io::Result<Child> {
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
            .args(extra);
        if let Some(savepoint) = &args.restore_from {
            command.arg("--restore-from").arg(savepoint);
        }
        command.env(self.settings_file.0, &self.settings_file.1);
        match crash_at {
            Some(spec) => command.env(CRASH_AT, spec),
            None => command.env_remove(CRASH_AT),
        };
        command.spawn()
    }

    fn visible(&self) -> Option<u64> {
        let runtime = tokio::runtime::Runtime::new().ok()?;
        runtime
            .block_on(visible_records(&self.settings, &self.child.output))
            .ok()
    }

    /// The id of the newest complete checkpoint in the child's checkpoint
    /// directory, with the number of subtasks of each stage.
    fn latest_checkpoint(&self) -> Option<(u64, Vec<usize>)> {
        let latest = LocalStorage::new(&self.child.checkpoints)
            .latest()
            .ok()
            .flatten()?;
        let mut subtasks: BTreeMap<usize, usize> = BTreeMap::new();
        for handle in &latest.metadata.task_states {
            *subtasks.entry(handle.stage).or_default() += 1;
        }
        Some((
            latest.metadata.checkpoint_id,
            subtasks.into_values().collect(),
        ))
    }

    /// Waits until the child has completed a checkpoint of its own (newer
    /// than `before`), checks that every stage ran at the child's
    /// parallelism, then SIGKILLs it within 500 ms. A lineage step only
    /// counts if the next child restores a checkpoint this one wrote.
    fn kill_after_own_checkpoint(
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
        let node = victim_node(&self.settings, victim, &self.child.output, &first_id)?;
        let visible = self.visible().unwrap_or(0);
        println!("crash-harness: SIGKILL broker {node} ({how})");
        run_for_node(&args.kill_broker, node)?;
        let down = Duration::from_millis(500 + self.rng.below(2500));
        if let Some(status) = wait(running, down) {
            run_for_node(&args.start_broker, node)?;
            return Ok(death(status, how, how));
        }
        run_for_node(&args.start_broker, node)?;
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
    let child_args = ChildArgs {
        // Under `exactly-`, the prefix the secured test broker's ACLs
        // allow its application user (scripts/kafka-up --secure).
        input: format!("exactly-crash-harness-in-{run}"),
        output: format!("exactly-crash-harness-out-{run}"),
        prefix: format!("exactly-crash-harness-{run}"),
        checkpoints: work.join("checkpoints"),
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
    input(
        &settings,
        &InputArgs {
            input: child_args.input.clone(),
            output: child_args.output.clone(),
            records,
        },
    )?;
    let mut harness = Harness {
        exe: std::env::current_exe().map_err(|e| format!("cannot find my executable: {e}"))?,
        child: child_args,
        settings_file: hand_to_child(&settings, &work.join("client.properties"))
            .map_err(|e| format!("cannot write the client properties for the child: {e}"))?,
        settings: settings.clone(),
        rng: Rng(seed),
    };

    let started = Instant::now();
    // Every phase twice, the broker restarts, then random SIGKILLs.
    let phases = if args.no_phases { Vec::new() } else { phases() };
    let lineage = [
        Cycle::SavepointStop,
        Cycle::KillAfterSavepointRestore,
        Cycle::Rescale(3),
        Cycle::Rescale(1),
        Cycle::Rescale(2),
    ];
    let mut plan: VecDeque<Cycle> = phases
        .iter()
        .chain(phases.iter())
        .map(|p| Cycle::Phase(p))
        .chain((0..args.broker_restarts).map(|_| Cycle::BrokerRestart))
        .chain(
            (0..if args.cluster { args.cluster_faults } else { 0 }).map(|i| {
                Cycle::ClusterFault(Victim::ROTATION[i as usize % Victim::ROTATION.len()])
            }),
        )
        .chain(lineage)
        .collect();
    // The savepoint stop is not a kill.
    let cluster_faults = if args.cluster { args.cluster_faults } else { 0 };
    while (plan.len() as u64) < cycles + args.broker_restarts + cluster_faults + 1 {
        plan.push_back(Cycle::RandomKill);
    }
    let mut savepoints = 0;
    let mut kills = 0u64;
    let mut broker_restarts = 0u64;
    let mut by_phase: BTreeMap<&str, u64> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    let mut retries: BTreeMap<&str, u32> = BTreeMap::new();
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
        let savepoint = work.join(format!("savepoint-{savepoints}"));
        let stop_after = (1000 + harness.rng.below(1500)).to_string();
        let outage_timeout = args.outage_client_timeout_ms.to_string();
        let savepoint_text = savepoint.display().to_string();
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
        let checkpoint_before = harness.latest_checkpoint().map(|(id, _)| id);
        let mut running = harness
            .spawn(crash_at.clone(), extra)
            .map_err(|e| format!("cannot start the child: {e}"))?;
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
        };
        if let Death::StoppedWithSavepoint = ended {
            // From now on: restore the savepoint, in a new directory.
            harness.child.restore_from = Some(savepoint.clone());
            harness.child.checkpoints =
                work.join(format!("checkpoints-after-savepoint-{savepoints}"));
            savepoints += 1;
        }
        let outcome = match ended {
            Death::StoppedWithSavepoint => {
                *by_phase.entry("stopped with a savepoint").or_default() += 1;
                format!("stopped with a savepoint in {}", savepoint.display())
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
                    _ => format!(
                        "died: {how}{}",
                        crash_at
                            .map(|c| format!(" (asked: {c})"))
                            .unwrap_or_default()
                    ),
                }
            }
            Death::Finished => "finished its work before its kill".to_owned(),
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
    let verdict = check(&settings, &harness.child.output, records)
        .map_err(|e| format!("cannot check the output: {e}"))?;
    println!("crash-harness: {}", verdict.oracles);
    if verdict.lost == 0 && verdict.duplicated == 0 && verdict.problems.is_empty() {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        println!(
            "crash-harness: the checkpoints are kept for a post-mortem in {}",
            work.display()
        );
    }
    println!(
        "crash-harness: kills by phase: {by_phase:?}; {broker_restarts} broker restarts; took {:.0?}",
        started.elapsed()
    );
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
    for problem in verdict.problems.iter().chain(&failures) {
        println!("crash-harness: {problem}");
    }
    println!(
        "crash-harness: {kills} kills, {records} records, {} lost, {} duplicated",
        verdict.lost, verdict.duplicated
    );
    Ok(
        if verdict.lost > 0
            || verdict.duplicated > 0
            || !verdict.problems.is_empty()
            || !failures.is_empty()
        {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        },
    )
}
