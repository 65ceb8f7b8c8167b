//! Fault injection: named points in the checkpoint protocol where a test can
//! make the job fail.
//!
//! Owns: [`FaultPoint`], the hook type, and the calls the runtime makes at
//! each point. A hook returns `Err` to fail the task (the job then restarts
//! from its last checkpoint) or may end the process outright (for example
//! `std::process::abort()`) to test recovery from a hard crash. Without a
//! hook, every check is a no-op.
//!
//! Does not own where the points are in the protocol's code: the runtime
//! calls `Faults::check` at each.

use std::fmt;
use std::sync::Arc;

use crate::error::{BoxError, Error, Result};

/// A point in the checkpoint protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultPoint {
    /// The coordinator is about to inject barrier `checkpoint` at the
    /// sources. With the first id this is "before the first checkpoint".
    CheckpointTriggered {
        /// The checkpoint id.
        checkpoint: u64,
    },
    /// A task with several inputs received records while it held back
    /// inputs that had already delivered barrier `checkpoint`.
    DuringAlignment {
        /// The checkpoint being aligned.
        checkpoint: u64,
    },
    /// A sink pre-committed its transaction for `checkpoint` and has not yet
    /// acknowledged the checkpoint.
    AfterPreCommit {
        /// The checkpoint id.
        checkpoint: u64,
    },
    /// Every task acknowledged `checkpoint`; its metadata is not yet durable.
    BeforeCheckpointComplete {
        /// The checkpoint id.
        checkpoint: u64,
    },
    /// `checkpoint` is complete (its metadata is durable) and no sink has
    /// been told to commit yet.
    AfterCheckpointComplete {
        /// The checkpoint id.
        checkpoint: u64,
    },
    /// A sink is about to commit the transaction of `checkpoint`.
    BeforeSinkCommit {
        /// The checkpoint id.
        checkpoint: u64,
    },
    /// A sink committed the transaction of `checkpoint`.
    AfterSinkCommit {
        /// The checkpoint id.
        checkpoint: u64,
    },
    /// A restored sink is about to recover-and-commit the transaction of
    /// `checkpoint`.
    DuringRecovery {
        /// The checkpoint id.
        checkpoint: u64,
    },
    /// A restored sink recovered-and-committed the transaction of
    /// `checkpoint` (the commit was acknowledged) and has not yet recorded
    /// it in its commit marker.
    AfterRecoveryCommit {
        /// The checkpoint id.
        checkpoint: u64,
    },
}

impl FaultPoint {
    /// The point's name without its checkpoint id, such as
    /// `after-pre-commit`; stable, for use in environment variables.
    pub fn name(&self) -> &'static str {
        match self {
            FaultPoint::CheckpointTriggered { .. } => "checkpoint-triggered",
            FaultPoint::DuringAlignment { .. } => "during-alignment",
            FaultPoint::AfterPreCommit { .. } => "after-pre-commit",
            FaultPoint::BeforeCheckpointComplete { .. } => "before-checkpoint-complete",
            FaultPoint::AfterCheckpointComplete { .. } => "after-checkpoint-complete",
            FaultPoint::BeforeSinkCommit { .. } => "before-sink-commit",
            FaultPoint::AfterSinkCommit { .. } => "after-sink-commit",
            FaultPoint::DuringRecovery { .. } => "during-recovery",
            FaultPoint::AfterRecoveryCommit { .. } => "after-recovery-commit",
        }
    }

    /// Every point name, in protocol order.
    pub const NAMES: [&'static str; 9] = [
        "checkpoint-triggered",
        "during-alignment",
        "after-pre-commit",
        "before-checkpoint-complete",
        "after-checkpoint-complete",
        "before-sink-commit",
        "after-sink-commit",
        "during-recovery",
        "after-recovery-commit",
    ];
}

impl fmt::Display for FaultPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultPoint::CheckpointTriggered { checkpoint }
            | FaultPoint::DuringAlignment { checkpoint }
            | FaultPoint::AfterPreCommit { checkpoint }
            | FaultPoint::BeforeCheckpointComplete { checkpoint }
            | FaultPoint::AfterCheckpointComplete { checkpoint }
            | FaultPoint::BeforeSinkCommit { checkpoint }
            | FaultPoint::AfterSinkCommit { checkpoint }
            | FaultPoint::DuringRecovery { checkpoint }
            | FaultPoint::AfterRecoveryCommit { checkpoint } => {
                write!(f, "{} (checkpoint {checkpoint})", self.name())
            }
        }
    }
}

/// Where a fault hook was called.
#[derive(Debug, Clone)]
pub struct FaultEvent<'a> {
    /// The protocol point.
    pub point: FaultPoint,
    /// The task, or `None` for the checkpoint coordinator.
    pub task: Option<&'a str>,
    /// The job attempt, zero before the first restart.
    pub attempt: u32,
}

/// A fault hook: called at every [`FaultPoint`]; an `Err` fails the caller.
pub type FaultHook = Arc<dyn Fn(&FaultEvent<'_>) -> Result<(), BoxError> + Send + Sync>;

/// The hook of one job, if any.
#[derive(Clone, Default)]
pub(crate) struct Faults(pub(crate) Option<FaultHook>);

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Faults(hook)"
        } else {
            "Faults(none)"
        })
    }
}

impl Faults {
    /// Runs the hook; an injected failure becomes a task error.
    pub(crate) fn check(&self, point: FaultPoint, task: Option<&str>, attempt: u32) -> Result<()> {
        let Some(hook) = &self.0 else { return Ok(()) };
        hook(&FaultEvent {
            point,
            task,
            attempt,
        })
        .map_err(|source| Error::Task {
            task: task.unwrap_or("checkpoint coordinator").to_owned(),
            phase: point.name(),
            source: format!("injected fault: {source}").into(),
        })
    }
}
