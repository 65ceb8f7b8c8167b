//! Commit markers: what a sink subtask records after it commits.
//!
//! Owns: [`CommitMarkers`], which reads and writes, in checkpoint storage,
//! the checkpoint up to which one sink subtask has committed. A restore
//! does not commit again what a marker covers: between that commit and the
//! restore, the sink may have reused the transaction's id (a Kafka producer
//! id with a newer epoch), and committing the old handle would be refused
//! as fenced although nothing was lost. A marker belongs to the lineage
//! of the run that wrote it ([`crate::storage::LineageRecord`]): a run
//! restored from a savepoint into a directory an older run used does not
//! take that run's markers, whose checkpoint ids say nothing about the
//! savepoint's transactions. Does not own the file format: that is
//! [`crate::storage`].

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::runtime::blocking::BlockingCalls;
use crate::storage::CheckpointStorage;

/// The commit markers of one sink stage in checkpoint storage.
pub(super) struct CommitMarkers {
    pub(super) storage: Option<Arc<dyn CheckpointStorage>>,
    pub(super) blocking: BlockingCalls,
    pub(super) stage: usize,
    /// The lineage of the running job (`None`: the default lineage).
    pub(super) lineage: Option<String>,
}

impl CommitMarkers {
    /// The checkpoint up to which `subtask` committed, if recorded.
    pub(super) async fn read(self, subtask: usize) -> Result<Option<u64>> {
        let Some(storage) = self.storage else {
            return Ok(None);
        };
        let (stage, lineage) = (self.stage, self.lineage);
        self.blocking
            .run("read commit marker", move || {
                storage.read_commit_marker(stage, subtask, lineage.as_deref())
            })
            .await?
            .map_err(Error::from)
    }

    /// Records that `subtask` committed everything up to `checkpoint`.
    pub(super) async fn write(self, subtask: usize, checkpoint: u64) -> Result<()> {
        let Some(storage) = self.storage else {
            return Ok(());
        };
        let (stage, lineage) = (self.stage, self.lineage);
        self.blocking
            .run("write commit marker", move || {
                storage.write_commit_marker(stage, subtask, lineage.as_deref(), checkpoint)
            })
            .await?
            .map_err(Error::from)
    }
}
