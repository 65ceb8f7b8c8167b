//! The zombie scenario (`--zombies`, with `--storage`): machine loss as an
//! operator sees it when the "lost" machine comes back.
//!
//! A child A runs until it has completed a checkpoint of its own, and is
//! frozen with SIGSTOP (a machine that stopped answering). A successor B
//! starts on the same checkpoint storage from a fresh local directory (a
//! new machine), takes the storage's claim over and completes a checkpoint
//! of its own. Then A gets SIGCONT. It must stop by itself within
//! [`BOUND`], with an error, fenced:
//!
//! - by the storage: its next checkpoint completion or commit-marker write
//!   finds the claim object carrying B's generation
//!   (`StorageError::Fenced`, "… was claimed by job `…`, process <B> …");
//! - or by Kafka: B initialised every transactional id of the sink's pool,
//!   which bumped their epochs, so A's next produce, flush or commit fails
//!   (the sink's `FencedError`, "… its transactional id was fenced …").
//!
//! Whichever A meets first is counted. Two ways to freeze alternate:
//! [`Freeze::BeforeCompletion`], where A stops itself at the fault point
//! `before-checkpoint-complete` (`EXACTLY_PAUSE_AT`) after completing at
//! least one checkpoint, so that completing a checkpoint is the first
//! thing it does when continued, and the storage's fence must be what
//! stops it; and [`Freeze::Random`], where the harness sends SIGSTOP at a
//! random moment after A completed a checkpoint. B must be unharmed: it
//! completes another checkpoint after A stopped, and is then SIGKILLed
//! (the cycle's kill). A's output must never become visible, which the
//! final oracles check with everything else.
//!
//! Owns: the scenario, what it needs from the harness ([`Children`]), and
//! the verdict on how a zombie ended. Does not own starting the children
//! (`run`, which implements [`Children`]), the processes (`process`) or
//! the fault hook that freezes one (`pipeline`).

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::pipeline::QUIET;
use crate::process::{Death, sigkill, wait};

/// How long the zombie has to stop by itself after SIGCONT, and each wait
/// for a checkpoint in the scenario.
const BOUND: Duration = Duration::from_secs(60);

/// How the successor's kill is counted among the kills by phase.
pub(crate) const SUCCESSOR_KILL: &str = "SIGKILL of a zombie's successor";

/// What the storage's fence says (`StorageError::Fenced`).
pub(crate) const STORAGE_FENCED: &str = "was claimed by";

/// What the Kafka sink's fence says (`FencedError`).
pub(crate) const KAFKA_FENCED: &str = "its transactional id was fenced";

/// How the zombie is frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freeze {
    /// It stops itself (`EXACTLY_PAUSE_AT=quiet`) just before completing
    /// the first checkpoint triggered after its whole input went through
    /// (and after it completed a checkpoint): every record is
    /// pre-committed, its sink has nothing left to write, and, continued,
    /// it completes that checkpoint before it sends Kafka anything, so the
    /// storage's fence must be what stops it. It uses up the input, so it
    /// is the last cycle.
    Quiet,
    /// The harness sends SIGSTOP 0 to 500 ms after it completed a
    /// checkpoint of its own.
    Random,
}

impl Freeze {
    /// The child's `EXACTLY_PAUSE_AT`, if it freezes itself.
    pub(crate) fn pause_at(self) -> Option<String> {
        match self {
            Freeze::Quiet => Some(QUIET.to_owned()),
            Freeze::Random => None,
        }
    }

    /// How it was frozen, for the report.
    fn describe(self) -> &'static str {
        match self {
            Freeze::Quiet => {
                "froze itself just before completing a checkpoint, its input drained and nothing in flight to Kafka"
            }
            Freeze::Random => "was frozen with SIGSTOP at a random moment",
        }
    }

    /// Its short name, for the cycle's line.
    fn name(self) -> &'static str {
        match self {
            Freeze::Quiet => "quiet zombie",
            Freeze::Random => "zombie frozen at random",
        }
    }
}

/// What stopped a zombie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Fence {
    /// The checkpoint storage's claim object.
    Storage,
    /// Kafka's producer epochs.
    Kafka,
}

/// How a zombie scenario ended.
pub(crate) struct ZombieEnd {
    /// What stopped the zombie, or what was wrong with how it ended.
    pub(crate) fence: Result<Fence, String>,
    /// How the successor ended (normally: SIGKILLed after a checkpoint).
    pub(crate) successor: Death,
    /// One line for the cycle's report.
    pub(crate) summary: String,
}

/// The notes a child prints on stderr that are not its error.
const NOTES: [&str; 5] = [
    "aborting at",
    "freezing (SIGSTOP) at",
    "continued at",
    "could not SIGSTOP",
    "stopped with a savepoint",
];

/// The error a child stopped with: from its last `crash-harness child:`
/// line that is not a note to the end of its stderr (an error listing
/// several causes continues on the next lines).
pub(crate) fn child_error(stderr: &str) -> Option<&str> {
    const PREFIX: &str = "crash-harness child: ";
    let mut found = None;
    let mut at = 0;
    for line in stderr.split_inclusive('\n') {
        if let Some(rest) = line.strip_prefix(PREFIX)
            && !NOTES.iter().any(|note| rest.starts_with(note))
        {
            found = Some(at + PREFIX.len());
        }
        at += line.len();
    }
    found.map(|start| stderr[start..].trim_end())
}

/// What stopped a child that exited with `error`, if a fence did.
pub(crate) fn fence_of(error: &str) -> Option<Fence> {
    if error.contains(STORAGE_FENCED) {
        Some(Fence::Storage)
    } else if error.contains(KAFKA_FENCED) {
        Some(Fence::Kafka)
    } else {
        None
    }
}

/// The verdict on a zombie that exited with `status` and `stderr` after
/// SIGCONT, whose successor is process `successor`.
pub(crate) fn judge(
    status: ExitStatus,
    stderr: &str,
    successor: u32,
    freeze: Freeze,
) -> Result<Fence, String> {
    if status.success() {
        return Err(
            "the zombie exited 0 after SIGCONT: it went on with its work instead of being fenced"
                .to_owned(),
        );
    }
    if let Some(signal) = status.signal() {
        return Err(format!(
            "the zombie died of signal {signal} after SIGCONT instead of stopping with a fence error"
        ));
    }
    let Some(error) = child_error(stderr) else {
        return Err(format!(
            "the zombie exited with {status} after SIGCONT, but printed no error"
        ));
    };
    match fence_of(error) {
        Some(Fence::Storage) if !error.contains(&format!("process {successor} on host")) => {
            Err(format!(
                "the zombie was fenced by the storage, but the holder its error names is not the successor, process {successor}: {error}"
            ))
        }
        Some(Fence::Kafka) if freeze == Freeze::Quiet => Err(format!(
            "the quiet zombie had nothing to send Kafka before completing a checkpoint, so the storage's fence \
             should have stopped it, but Kafka's fence came first: {error}"
        )),
        Some(fence) => Ok(fence),
        None => Err(format!(
            "the zombie exited with {status} after SIGCONT, but not fenced: {error}"
        )),
    }
}

/// Whether process `pid` is stopped (state `T` in `/proc/<pid>/stat`).
fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, after_name) = stat.rsplit_once(')')?;
            Some(after_name.trim_start().starts_with('T'))
        })
        .unwrap_or(false)
}

/// Sends signal `name` (`STOP`, `CONT`) to `pid` with `kill` (the
/// workspace forbids `unsafe`, so no `libc::kill`).
fn signal(pid: u32, name: &str) -> Result<(), String> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .map_err(|e| format!("cannot run `kill -{name} {pid}`: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`kill -{name} {pid}` failed ({status})"))
    }
}

/// The last lines of a zombie's stderr, indented, for a report.
fn tail(stderr: &str, lines: usize) -> String {
    let all: Vec<&str> = stderr.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|line| format!("\n    {line}"))
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// What the scenario needs from the harness that runs it.
pub(crate) trait Children {
    /// The newest complete checkpoint of the checkpoint storage.
    fn latest_id(&self) -> Option<u64>;
    /// A random number below `n`, from the run's seed.
    fn random_below(&mut self, n: u64) -> u64;
    /// Starts a child on a fresh local directory, as on a new machine.
    fn spawn_successor(&mut self) -> std::io::Result<Child>;
    /// Waits for `running` to complete a checkpoint newer than `before`,
    /// then SIGKILLs it, counted as `how`.
    fn kill_after_own_checkpoint(
        &mut self,
        running: &mut Child,
        before: Option<u64>,
        how: &'static str,
    ) -> Result<Death, String>;
}

/// Runs the scenario with `zombie` (just started, its stderr going to
/// `stderr`, frozen as `freeze` says) on checkpoint storage whose
/// newest complete checkpoint was `before`. Fails (the run stops) when
/// a step cannot happen at all: A or B exits early, or completes no
/// checkpoint within [`BOUND`].
pub(crate) fn zombie(
    harness: &mut impl Children,
    zombie: &mut Child,
    freeze: Freeze,
    stderr: &Path,
    before: Option<u64>,
) -> Result<ZombieEnd, String> {
    let pid = zombie.id();
    // 1. Frozen, after a checkpoint of its own.
    let deadline = Instant::now() + BOUND;
    let mut stop_sent = false;
    loop {
        if let Some(status) = wait(zombie, Duration::from_millis(50)) {
            return Err(format!(
                "the zombie-to-be (pid {pid}) exited with {status} before it was frozen; its stderr ends:{}",
                tail(&read(stderr), 10)
            ));
        }
        if stop_sent || freeze == Freeze::Quiet {
            if stopped(pid) {
                break;
            }
        } else if harness.latest_id() > before {
            std::thread::sleep(Duration::from_millis(harness.random_below(500)));
            signal(pid, "STOP")?;
            stop_sent = true;
        }
        if Instant::now() >= deadline {
            sigkill(zombie);
            return Err(format!(
                "the zombie-to-be (pid {pid}) was not frozen within {BOUND:?} ({}); its stderr ends:{}",
                freeze.describe(),
                tail(&read(stderr), 10)
            ));
        }
    }
    let frozen = harness.latest_id();
    if frozen <= before {
        sigkill(zombie);
        return Err(format!(
            "the zombie (pid {pid}) was frozen before it completed a checkpoint of its own (newest {frozen:?}, before it {before:?})"
        ));
    }
    println!(
        "crash-harness: zombie: the child (pid {pid}) completed checkpoint {} and {}",
        frozen.unwrap_or(0),
        freeze.describe()
    );

    // 2. The successor, on a new machine, takes over and completes a
    // checkpoint of its own.
    let mut successor = match harness.spawn_successor() {
        Ok(child) => child,
        Err(e) => {
            sigkill(zombie);
            return Err(format!("cannot start the zombie's successor: {e}"));
        }
    };
    let successor_pid = successor.id();
    let deadline = Instant::now() + BOUND;
    let taken_over = loop {
        if let Some(status) = wait(&mut successor, Duration::from_millis(50)) {
            sigkill(zombie);
            return Err(format!(
                "the zombie's successor (pid {successor_pid}) exited with {status} before completing a checkpoint"
            ));
        }
        if let Some(id) = harness.latest_id().filter(|id| Some(*id) > frozen) {
            break id;
        }
        if Instant::now() >= deadline {
            sigkill(zombie);
            sigkill(&mut successor);
            return Err(format!(
                "the zombie's successor (pid {successor_pid}) completed no checkpoint within {BOUND:?}"
            ));
        }
    };
    println!(
        "crash-harness: zombie: the successor (pid {successor_pid}) took the storage over and completed checkpoint {taken_over}; SIGCONT to the zombie"
    );

    // 3. The zombie wakes up and must stop by itself, fenced.
    if let Err(e) = signal(pid, "CONT") {
        sigkill(zombie);
        sigkill(&mut successor);
        return Err(e);
    }
    let woke = Instant::now();
    let fence = match wait(zombie, BOUND) {
        None => {
            sigkill(zombie);
            Err(format!(
                "the zombie (pid {pid}) did not stop within {BOUND:?} of SIGCONT and was SIGKILLed: a process \
                 that lost the storage's claim must stop by itself; its stderr ends:{}",
                tail(&read(stderr), 10)
            ))
        }
        Some(status) => judge(status, &read(stderr), successor_pid, freeze),
    };
    let took = woke.elapsed();
    let text = read(stderr);
    let error = child_error(&text).unwrap_or("(no error)");
    let summary = match &fence {
        Ok(Fence::Storage) => format!(
            "{} (pid {pid}) stopped {took:.1?} after SIGCONT, fenced by the storage",
            freeze.name()
        ),
        Ok(Fence::Kafka) => format!(
            "{} (pid {pid}) stopped {took:.1?} after SIGCONT, fenced by Kafka",
            freeze.name()
        ),
        Err(_) => format!("{} (pid {pid}): FAILED", freeze.name()),
    };
    println!("crash-harness: zombie: {summary}: {error}");
    if let Err(problem) = &fence {
        println!("crash-harness: zombie: {problem}");
    }

    // 4. The successor goes on: another checkpoint, then its kill.
    let after = harness.latest_id();
    let successor = harness.kill_after_own_checkpoint(&mut successor, after, SUCCESSOR_KILL)?;
    Ok(ZombieEnd {
        fence,
        successor,
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An exit status of `code`, as `wait` reports it.
    fn exited(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    const STORAGE: &str = "crash-harness child: checkpoint storage s3://b/p/checkpoints was claimed by job \
        `crash-harness`, process 42 on host h, instance 5f (generation 3) after this process (generation 2): \
        a newer run of this job took over, so this one stops without completing checkpoints or committing\n";
    const KAFKA: &str = "crash-harness child: task `sink` failed in commit: commit of t failed: its \
        transactional id was fenced (Producer fenced). Another instance of this job ...\n";

    #[test]
    fn the_error_is_the_last_line_that_is_no_note() {
        let stderr = format!(
            "WARN took over\ncrash-harness child: freezing (SIGSTOP) at before-checkpoint-complete\n\
             crash-harness child: continued at before-checkpoint-complete\n{STORAGE}"
        );
        assert_eq!(
            child_error(&stderr),
            Some(
                STORAGE
                    .trim_end()
                    .strip_prefix("crash-harness child: ")
                    .unwrap()
            )
        );
        let many = "crash-harness child: 2 errors:\n- a\n- b\n";
        assert_eq!(child_error(many), Some("2 errors:\n- a\n- b"));
        assert_eq!(child_error("crash-harness child: aborting at x\n"), None);
    }

    #[test]
    fn a_zombie_is_judged_by_its_fence() {
        let at = Freeze::Quiet;
        assert_eq!(judge(exited(1), STORAGE, 42, at), Ok(Fence::Storage));
        assert_eq!(
            judge(exited(1), KAFKA, 42, Freeze::Random),
            Ok(Fence::Kafka)
        );
        // Quiet: only the storage's fence will do.
        assert!(
            judge(exited(1), KAFKA, 42, at)
                .unwrap_err()
                .contains("Kafka's fence came first")
        );
        // The fence must name the successor.
        assert!(
            judge(exited(1), STORAGE, 43, at)
                .unwrap_err()
                .contains("process 43")
        );
        assert!(
            judge(exited(0), STORAGE, 42, at)
                .unwrap_err()
                .contains("exited 0")
        );
        assert!(
            judge(ExitStatus::from_raw(9), "", 42, at)
                .unwrap_err()
                .contains("signal 9")
        );
        let other = "crash-harness child: restarts exhausted\n";
        assert!(
            judge(exited(1), other, 42, at)
                .unwrap_err()
                .contains("not fenced")
        );
    }

    #[test]
    fn a_stopped_process_shows_state_t() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        assert!(!stopped(pid));
        signal(pid, "STOP").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !stopped(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(stopped(pid));
        signal(pid, "CONT").unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}
