//! Savepoints: a complete checkpoint copied, self-contained, to a location
//! of either kind, whatever storage the checkpoint is in.
//!
//! Owns: reading the checkpoint's task states and the shared objects they
//! reference through its own storage and writing them, then its metadata,
//! at the target (shared objects go to the savepoint's own `shared/`). Does not own either
//! layout: the target's storage writes it ([`LocalStorage`],
//! [`ObjectStorage`]).

use super::shared::SHARED_DIR;
use super::{CheckpointStorage, CompletedCheckpoint, LocalStorage, Location, StorageError};

/// Copies `checkpoint`, whose task states `source` reads, to `target`
/// (which must not hold a savepoint yet), ending with `metadata` (its
/// framed metadata). Storage never deletes a savepoint.
pub(crate) fn export(
    source: &dyn CheckpointStorage,
    checkpoint: &CompletedCheckpoint,
    metadata: &[u8],
    target: &Location,
) -> Result<CompletedCheckpoint, StorageError> {
    let task_states = checkpoint.metadata.task_states.iter().map(|handle| {
        source
            .read_task_state(checkpoint, handle)
            .map(|bytes| (handle.file.clone(), bytes))
    });
    let shared_objects = checkpoint
        .metadata
        .task_states
        .iter()
        .flat_map(|handle| &handle.shared)
        .map(|name| {
            source
                .read_shared(&checkpoint.shared_location(), name)
                .map(|bytes| (format!("{SHARED_DIR}/{name}"), bytes))
        });
    let files = task_states.chain(shared_objects);
    match target {
        Location::Local(path) => LocalStorage::write_savepoint(path, files, metadata),
        #[cfg(feature = "s3")]
        Location::S3 { .. } => {
            super::ObjectStorage::open(target)?.write_savepoint(target, files, metadata)
        }
        #[cfg(not(feature = "s3"))]
        Location::S3 { .. } => Err(target.without_s3()),
    }
}
