//! What a subtask is given when the runtime builds it for one attempt.
//!
//! Owns: [`SubtaskEnv`], the subtask's identity, its restored state, the
//! attempt's exchanges, blocking-call counter, fault hook, metrics and link
//! to the coordinator. Does not own building the subtask from it
//! ([`super::graph`]) or filling it in ([`super::executor`]).

use std::sync::Arc;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::oneshot;

use super::blocking::BlockingCalls;
use super::coordinator::{SourceCommand, TaskLink};
use super::element::RestoredStage;
use super::exchange::GateRegistry;
use super::incremental::SegmentStore;
use crate::codec::Codec;
use crate::context::SubtaskContext;
use crate::error::Result;
use crate::fault::{FaultPoint, Faults};
use crate::metrics::JobMetrics;

/// Everything one subtask needs to build its chain and run.
pub(crate) struct SubtaskEnv {
    pub(crate) ctx: SubtaskContext,
    pub(crate) stage: usize,
    pub(crate) codec: Codec,
    pub(crate) batch_size: usize,
    /// [`crate::JobConfig::max_state_deltas`].
    pub(crate) max_state_deltas: usize,
    /// [`crate::JobConfig::incremental_checkpoints`].
    pub(crate) incremental: bool,
    /// The stage's state in the checkpoint being restored, if any.
    pub(crate) restored: Option<Arc<RestoredStage>>,
    pub(crate) gates: Arc<GateRegistry>,
    pub(crate) blocking: BlockingCalls,
    pub(crate) faults: Faults,
    pub(crate) metrics: Arc<JobMetrics>,
    pub(crate) link: TaskLink,
    /// Barrier triggers from the coordinator; only source subtasks get one.
    pub(crate) commands: Option<UnboundedReceiver<SourceCommand>>,
    /// Done when the task's previous snapshot upload has finished: each
    /// upload waits for the one before it, so that a checkpoint never
    /// completes before a shared object it references from an earlier one
    /// is durable.
    pub(crate) previous_upload: std::sync::Mutex<Option<oneshot::Receiver<()>>>,
}

impl SubtaskEnv {
    /// `stage-name[index]`, as used in errors and logs.
    pub(crate) fn task_name(&self) -> String {
        format!("{}[{}]", self.ctx.stage, self.ctx.index)
    }

    /// The id of the checkpoint being restored.
    pub(crate) fn restored_checkpoint(&self) -> Option<u64> {
        self.restored.as_ref().map(|r| r.checkpoint_id)
    }

    /// The store a keyed operator's incremental state writes its segments
    /// to.
    pub(crate) fn segment_store(&self) -> SegmentStore {
        SegmentStore {
            storage: self.link.storage.clone(),
            blocking: self.blocking.clone(),
            codec: self.codec,
            stage: self.stage,
            subtask: self.ctx.index,
            max_deltas: self.max_state_deltas,
            incremental: self.incremental,
        }
    }

    /// Runs the fault hook at `point` for this task.
    pub(crate) fn fault(&self, point: FaultPoint) -> Result<()> {
        self.faults
            .check(point, Some(&self.task_name()), self.ctx.attempt)
    }
}

#[cfg(test)]
impl SubtaskEnv {
    /// An environment for unit tests of one chain element: subtask 0 of 1,
    /// no storage, no coordinator behind the link.
    pub(crate) fn for_tests(restored: Option<Arc<RestoredStage>>, first_checkpoint: u64) -> Self {
        let (events, _) = tokio::sync::mpsc::unbounded_channel();
        let (_, completed) = tokio::sync::watch::channel(0);
        SubtaskEnv {
            ctx: SubtaskContext {
                job: "test".into(),
                stage: "stage".into(),
                index: 0,
                parallelism: 1,
                attempt: 0,
            },
            stage: 0,
            codec: Codec::Bincode,
            batch_size: 16,
            max_state_deltas: 4,
            incremental: true,
            restored,
            gates: Arc::new(GateRegistry::default()),
            blocking: BlockingCalls::default(),
            faults: Faults::default(),
            metrics: Arc::new(JobMetrics::default()),
            link: TaskLink {
                events,
                completed,
                storage: None,
                first_checkpoint,
                checkpoint_timeout: std::time::Duration::from_secs(60),
                lineage: None,
            },
            commands: None,
            previous_upload: std::sync::Mutex::new(None),
        }
    }
}
