//! Entry points for `sdk/benches/state.rs`, `sdk/benches/incremental.rs`
//! and the workspace tests: the runtime's own keyed-state snapshot encoding
//! and restore, incremental checkpoints of keyed counts, and a writer of
//! checkpoints in the previous format version. Not part of the public API:
//! names here may change in any release.
//!
//! Owns nothing of its own: each item wraps the code the runtime runs
//! (`runtime::keyed`, `runtime::element` and the
//! executor's checkpoint loading), so that the bench measures that code and
//! not a copy of it.

use std::hash::Hash;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{Bytes, Codec};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::runtime::blocking::BlockingCalls;
use crate::runtime::element::{SnapshotWriter, StateEntry};
use crate::runtime::executor::load_checkpoint;
use crate::runtime::incremental::{IncrementalState, SegmentStore};
use crate::runtime::keyed::{self, KeyedState, Slot};
use crate::storage::frame::{self, PayloadKind};
use crate::storage::{
    CheckpointMetadata, CheckpointStorage, LocalStorage, Location, METADATA_FILE, MetadataV2,
    StageMetadata, StorageClaim, io,
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

impl<K: Hash + Eq + Serialize, S: Serialize> KeyedStateMap<K, S> {
    /// The framed task-state file that a subtask whose only state is this
    /// map, under element id `id`, writes at a checkpoint.
    ///
    /// # Errors
    ///
    /// When a key or state cannot be encoded.
    pub fn task_state_file(&self, codec: Codec, id: &str) -> Result<Vec<u8>> {
        let mut snapshot = SnapshotWriter::new(codec);
        snapshot.put_keyed(id, &self.0)?;
        Ok(snapshot.finish()?.task_state)
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

/// One subtask's keyed counts (`u64` key, `u64` count) checkpointed as a
/// keyed operator checkpoints them, through the runtime's incremental
/// snapshot code, into the checkpoint storage at a location: for
/// `sdk/benches/incremental.rs`, which measures what each checkpoint
/// writes and what a restore reads.
pub struct IncrementalCounts {
    state: IncrementalState<u64, (u64,)>,
    storage: Arc<dyn CheckpointStorage>,
    _claim: StorageClaim,
    codec: Codec,
}

/// What one [`IncrementalCounts::checkpoint`] wrote.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointWritten {
    /// Bytes of the new shared objects (a base or a delta, and a
    /// compaction's base if one was adopted).
    pub segment_bytes: u64,
    /// Bytes of the task state file.
    pub task_state_bytes: u64,
    /// How many segments the checkpoint references.
    pub chain: usize,
    /// Time to encode the snapshot, as a task does at its barrier.
    pub encode: Duration,
    /// Time to write its objects and complete the checkpoint.
    pub write: Duration,
}

/// The stage and element id [`IncrementalCounts`] checkpoints under.
const COUNTS_ID: &str = "0:count";

fn counts_stage() -> StageMetadata {
    StageMetadata {
        name: "counts".into(),
        operators: vec![COUNTS_ID.into()],
        parallelism: 1,
    }
}

impl IncrementalCounts {
    /// Empty counts whose checkpoints go to `location` (claimed for this
    /// process), incremental or full, compacted beyond `max_deltas`.
    ///
    /// # Errors
    ///
    /// When the storage cannot be opened or claimed.
    pub fn new(location: &Location, incremental: bool, max_deltas: usize) -> Result<Self> {
        let storage = location.open_storage()?;
        let claim = storage.claim("incremental-bench")?;
        let codec = Codec::default();
        let store = SegmentStore {
            storage: Some(Arc::clone(&storage)),
            blocking: BlockingCalls::default(),
            codec,
            stage: 0,
            subtask: 0,
            max_deltas,
            incremental,
        };
        Ok(IncrementalCounts {
            state: IncrementalState::new(KeyedState::default(), COUNTS_ID.into(), store),
            storage,
            _claim: claim,
            codec,
        })
    }

    /// Adds one to the count of each key, as records of those keys would.
    pub fn update(&mut self, keys: impl IntoIterator<Item = u64>) {
        for key in keys {
            self.state.slot(key).0 += 1;
        }
    }

    /// Takes checkpoint `id`: snapshots the counts, writes the new
    /// segments and the task state, completes the checkpoint, notifies the
    /// state (which may start a compaction in the background), and keeps
    /// only this checkpoint.
    ///
    /// # Errors
    ///
    /// When encoding or storage fails.
    pub fn checkpoint(&mut self, id: u64) -> Result<CheckpointWritten> {
        let started = Instant::now();
        let mut snapshot = SnapshotWriter::new(self.codec);
        self.state.snapshot(id, &mut snapshot)?;
        let snapshot = snapshot.finish()?;
        let task_state_bytes = snapshot.task_state.len() as u64;
        let segment_bytes = snapshot.shared.iter().map(|(_, b)| b.len() as u64).sum();
        let encode = started.elapsed();

        let started = Instant::now();
        self.storage.begin_checkpoint(id)?;
        let handle = snapshot.write(self.storage.as_ref(), id, 0, 0)?;
        let chain = handle.shared.len();
        let metadata = CheckpointMetadata {
            job: "incremental-bench".into(),
            checkpoint_id: id,
            triggered_unix_ms: 0,
            stages: vec![counts_stage()],
            task_states: vec![handle],
            lineage: None,
        };
        let encoded = self.codec.encode(&metadata, "checkpoint metadata")?;
        let framed_metadata = frame::encode(PayloadKind::Metadata, self.codec, &encoded);
        self.storage.complete(&metadata, &framed_metadata)?;
        self.state.checkpoint_complete(id);
        self.storage.retain(1)?;
        Ok(CheckpointWritten {
            segment_bytes,
            task_state_bytes,
            chain,
            encode,
            write: started.elapsed(),
        })
    }
}

impl IncrementalCounts {
    /// Waits until no compaction runs in the background, so that what is
    /// measured next does not share the machine with it.
    pub fn wait_for_compaction(&self) {
        while self.state.compacting() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Restores the counts of the newest checkpoint at `location`, as an
/// attempt does before its first record (reads the metadata, the task
/// state and every segment it names, and rebuilds the map); returns the
/// number of keys.
///
/// # Errors
///
/// When the storage cannot be read or the checkpoint does not decode.
pub fn restore_incremental_counts(location: &Location) -> Result<usize> {
    let storage = location.open_storage()?;
    let checkpoint = storage.latest()?.ok_or_else(|| Error::Restore {
        checkpoint: 0,
        location: location.clone(),
        message: "no complete checkpoint".into(),
    })?;
    let stages = load_checkpoint(storage.as_ref(), &checkpoint, &[counts_stage()])?;
    let restored = stages[0].as_ref().expect("one stage");
    let counts: KeyedState<u64, (u64,)> = restored.restore_keyed(COUNTS_ID, 1, 0)?;
    Ok(counts.len())
}
