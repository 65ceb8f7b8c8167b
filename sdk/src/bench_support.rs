//! Entry points for `sdk/benches/state.rs` and the workspace tests: the
//! runtime's own keyed-state snapshot encoding and restore, and a writer of
//! checkpoints in the previous format version. Not part of the public API:
//! names here may change in any release.
//!
//! Owns nothing of its own: each item wraps the code the runtime runs
//! (`runtime::keyed`, `runtime::element` and the
//! executor's checkpoint loading), so that the bench measures that code and
//! not a copy of it.

use std::hash::Hash;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{Bytes, Codec};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::runtime::element::{SnapshotWriter, StateEntry};
use crate::runtime::executor::load_checkpoint;
use crate::runtime::keyed::{self, KeyedState, Slot};
use crate::storage::frame::{self, PayloadKind};
use crate::storage::{
    CheckpointMetadata, CheckpointStorage, LocalStorage, METADATA_FILE, MetadataV2, io,
};

/// A keyed state map as the runtime keeps one for an operator after
/// `key_by`.
#[derive(Debug)]
pub struct KeyedStateMap<K, S>(KeyedState<K, S>);

impl<K: Hash + Eq, S> KeyedStateMap<K, S> {
    /// A map with new random hasher keys, filled from `entries` one by one
    /// as records would fill it.
    pub fn from_entries(entries: impl IntoIterator<Item = (K, S)>) -> Self {
        KeyedStateMap(
            entries
                .into_iter()
                .map(|(key, state)| (key, Slot::restored(state)))
                .collect(),
        )
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the map has no keys.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Serialize, S: Serialize> KeyedStateMap<K, S> {
    /// The framed task-state file that a subtask whose only state is this
    /// map, under element id `id`, writes at a checkpoint.
    ///
    /// # Errors
    ///
    /// When a key or state cannot be encoded.
    pub fn task_state_file(&self, codec: Codec, id: &str) -> Result<Vec<u8>> {
        let mut snapshot = SnapshotWriter::new(codec);
        snapshot.put_keyed(id, &self.0)?;
        let payload = codec.encode(&snapshot.entries, "task state")?;
        Ok(frame::encode(PayloadKind::TaskState, codec, &payload))
    }
}

/// Restores the keyed state `id` of stage `stage` for subtask `index` of
/// `parallelism` from the complete checkpoint in directory `checkpoint`, as
/// an attempt does before its first record: reads the metadata and every
/// state file, checks their frames, and rebuilds the map.
///
/// # Errors
///
/// When the checkpoint cannot be read or does not decode.
pub fn restore_keyed<K: Key, S: DeserializeOwned>(
    checkpoint: &Path,
    stage: usize,
    id: &str,
    parallelism: usize,
    index: usize,
) -> Result<KeyedStateMap<K, S>> {
    let storage = LocalStorage::new(checkpoint);
    let checkpoint = LocalStorage::open_checkpoint(checkpoint)?;
    let stages = load_checkpoint(&storage, &checkpoint, &checkpoint.metadata.stages)?;
    let restored = stages
        .get(stage)
        .and_then(Option::as_ref)
        .ok_or_else(|| Error::Restore {
            checkpoint: checkpoint.id(),
            location: checkpoint.location.clone(),
            message: format!("the checkpoint has no stage {stage}"),
        })?;
    restored
        .restore_keyed(id, parallelism, index)
        .map(KeyedStateMap)
}

/// Copies the complete checkpoint in directory `from` to the new directory
/// `to` as format version 1 wrote it: every file framed with version 1, and
/// the elements named in `keyed` (keyed state maps, inline or incremental)
/// in version 1's layout, inline.
///
/// # Errors
///
/// When `from` cannot be read or `to` cannot be written.
pub fn copy_as_format_1(from: &Path, to: &Path, keyed: &[&str]) -> Result<()> {
    let checkpoint = LocalStorage::open_checkpoint(from)?;
    let storage = LocalStorage::new(from);
    std::fs::create_dir_all(to).map_err(io("create", to))?;
    let reframe = |name: &str, kind: PayloadKind, keyed: &[&str]| -> Result<()> {
        let path = from.join(name);
        let bytes = std::fs::read(&path).map_err(io("read", &path))?;
        let read = frame::decode(&bytes, kind, &path.display())?;
        let mut payload = read.payload.to_vec();
        if kind == PayloadKind::Metadata {
            let metadata = CheckpointMetadata::decode(&read, &path.display())?;
            payload = read
                .codec
                .encode(&MetadataV2::from(&metadata), "checkpoint metadata")?;
        }
        if kind == PayloadKind::TaskState {
            let entries: Vec<(String, StateEntry<Bytes>)> =
                read.codec.decode(read.payload, "task state")?;
            let mut values = Vec::with_capacity(entries.len());
            for (id, entry) in entries {
                let state = match entry {
                    StateEntry::Value(state) if keyed.contains(&id.as_str()) => {
                        keyed::as_format_1(&[&state.0], read.codec, &id)?
                    }
                    StateEntry::Value(state) => state.0,
                    StateEntry::Segments(names) => {
                        let shared = checkpoint.shared_location();
                        let files = names
                            .iter()
                            .map(|name| storage.read_shared(&shared, name))
                            .collect::<Result<Vec<_>, _>>()?;
                        let segments = files
                            .iter()
                            .zip(&names)
                            .map(|(file, name)| {
                                let what = shared.join(name);
                                frame::decode(file, PayloadKind::KeyedSegment, &what)
                                    .map(|f| f.payload)
                            })
                            .collect::<Result<Vec<_>, _>>()?;
                        keyed::as_format_1(&segments, read.codec, &id)?
                    }
                };
                values.push((id, Bytes(state)));
            }
            payload = read.codec.encode(&values, "task state")?;
        }
        let target = to.join(name);
        std::fs::write(
            &target,
            frame::encode_version(1, kind, read.codec, &payload),
        )
        .map_err(io("write", &target))?;
        Ok(())
    };
    for handle in &checkpoint.metadata.task_states {
        reframe(&handle.file, PayloadKind::TaskState, keyed)?;
    }
    reframe(METADATA_FILE, PayloadKind::Metadata, &[])
}
