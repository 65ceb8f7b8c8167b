//! The harness's children as processes: waiting for one with a limit,
//! SIGKILLing one, and how one ended.
//!
//! Owns: [`wait`], [`sigkill`], [`Death`] and [`death`]. Does not own
//! when a child is started or killed (`run`, `zombies`).

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// Waits up to `limit` for `child` to exit; its status, if it did.
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
#[derive(Debug, Clone, Copy)]
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
