//! Incremental keyed state: a checkpoint writes the keys that changed since
//! the previous one, as a delta that later checkpoints share, and deltas
//! are compacted into a new base in the background.
//!
//! Owns: [`IncrementalState`], one keyed operator's map and its chain of
//! segments in shared objects (a base, then deltas), what a snapshot
//! writes, and compaction. Does not own the segment layout or the restore
//! of a chain ([`super::keyed`]), where shared objects go and when they are
//! deleted ([`crate::storage`]), or making them durable in order
//! ([`super::task`]).
//!
//! Anchors: Flink's RocksDB incremental checkpoints (new files are
//! uploaded once and referenced by later checkpoints) and its changelog
//! state backend (a base that is materialized in the background, plus the
//! changes since it). `docs/checkpointing.md` ("Incremental keyed state")
//! gives the rules and the measurements. In short:
//!
//! - A record marks its key changed in the current epoch (one epoch per
//!   snapshot, [`super::keyed::Slot`]), and the first record of a key in an
//!   epoch also notes the key in a list: no second hash lookup, and no
//!   pass over the map to clear flags. A delta looks the listed keys up
//!   when fewer than a [`LOOKUP_SHARE`]th of the keys changed, and takes
//!   one pass over the map otherwise.
//! - At a barrier, the first snapshot of an attempt writes a base with
//!   every key: after a restore, the chain starts over, so that no
//!   checkpoint of this run depends on objects of the one restored from
//!   (Flink's `NO_CLAIM` restore mode). Every later snapshot writes a delta
//!   with the changed keys, or nothing when none changed.
//! - Once a complete checkpoint's chain holds more than
//!   [`JobConfig::max_state_deltas`](crate::JobConfig::max_state_deltas)
//!   deltas, a background job on the blocking pool reads that chain back
//!   from storage, merges it into a new base, and hands the bytes to the
//!   next barrier, which writes the base and drops the segments it
//!   replaces. The task never waits for it. A restore reads at most
//!   `1 + max_state_deltas + (deltas written while a compaction runs)`
//!   segments per subtask.
//! - Shared objects are named after the checkpoint whose barrier writes
//!   them; see `crate::storage::shared` for why that makes deleting them
//!   safe.

use std::collections::VecDeque;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use super::blocking::BlockingCalls;
use super::element::SnapshotWriter;
use super::keyed::{self, KeyedState, Owner, Selection, Slot, StoredMap};
use crate::codec::{Codec, CodecError};
use crate::key::Key;
use crate::storage::frame::{self, PayloadKind};
use crate::storage::{CheckpointStorage, StorageError, shared};

/// A delta is encoded by looking the changed keys up while fewer than one
/// key in this many changed; above that, one pass over the map is faster.
const LOOKUP_SHARE: usize = 8;

/// How many snapshots not yet known complete are remembered.
const MAX_PENDING: usize = 16;

/// A compaction failed; the chain stays as it is and a later checkpoint
/// tries again.
#[derive(Debug, thiserror::Error)]
enum CompactionError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// A compaction in the background.
struct Compaction {
    /// How many segments at the front of the chain the new base replaces.
    replaces: usize,
    /// The framed base, once merged.
    base: oneshot::Receiver<Result<Vec<u8>, CompactionError>>,
}

/// Where a subtask's segments go, and who compacts them.
pub(crate) struct SegmentStore {
    /// The job's checkpoint storage; `None` when checkpoints are not
    /// written anywhere (then snapshots only serve the final one).
    pub(crate) storage: Option<Arc<dyn CheckpointStorage>>,
    /// The pool compactions run on.
    pub(crate) blocking: BlockingCalls,
    pub(crate) codec: Codec,
    pub(crate) stage: usize,
    pub(crate) subtask: usize,
    /// Deltas a complete checkpoint's chain may hold before a compaction
    /// starts.
    pub(crate) max_deltas: usize,
    /// `false`: every snapshot writes a base with every key
    /// ([`JobConfig::incremental_checkpoints`](crate::JobConfig::incremental_checkpoints)).
    pub(crate) incremental: bool,
}

/// One keyed operator's state in one subtask, with its chain of segments.
pub(crate) struct IncrementalState<K, S> {
    /// The state per key, with the epoch each last changed in.
    states: KeyedState<K, S>,
    /// The current epoch: one more than the number of snapshots taken.
    epoch: u64,
    /// The keys changed in the current epoch, each once.
    changed: Vec<K>,
    /// The element id, which names the state in snapshots and errors.
    id: String,
    store: SegmentStore,
    /// The segments the last snapshot referenced, oldest first.
    chain: Vec<String>,
    /// Snapshots not yet known complete: checkpoint id and chain.
    pending: VecDeque<(u64, Vec<String>)>,
    compaction: Option<Compaction>,
}

impl<K: Key, S: Serialize + DeserializeOwned + Default + Send + 'static> IncrementalState<K, S> {
    /// The state of `key`, created if new, marked changed in this epoch.
    pub(crate) fn slot(&mut self, key: K) -> &mut S {
        let epoch = self.epoch;
        match self.states.entry(key) {
            Entry::Occupied(mut entry) => {
                if entry.get().changed_in != epoch {
                    self.changed.push(entry.key().clone());
                    entry.get_mut().changed_in = epoch;
                }
                &mut entry.into_mut().state
            }
            Entry::Vacant(entry) => {
                self.changed.push(entry.key().clone());
                let slot = Slot {
                    state: S::default(),
                    changed_in: epoch,
                };
                &mut entry.insert(slot).state
            }
        }
    }

    /// `states` (restored, or empty), with no chain yet: the first
    /// snapshot writes a base.
    pub(crate) fn new(states: KeyedState<K, S>, id: String, store: SegmentStore) -> Self {
        IncrementalState {
            states,
            epoch: 1,
            changed: Vec::new(),
            id,
            store,
            chain: Vec::new(),
            pending: VecDeque::new(),
            compaction: None,
        }
    }

    /// Adds the state to `snapshot` at the barrier of `checkpoint_id`: a
    /// finished compaction's base, then a base (first snapshot, or every
    /// snapshot when not incremental) or a delta (changed keys, if any), as
    /// new shared objects; the entry names the whole chain.
    pub(crate) fn snapshot(
        &mut self,
        checkpoint_id: u64,
        snapshot: &mut SnapshotWriter,
    ) -> Result<(), CodecError> {
        let (codec, stage, subtask) = (self.store.codec, self.store.stage, self.store.subtask);
        let mut written = Vec::new();
        if let Some(base) = self.take_compacted() {
            let (replaces, framed) = base;
            let name = shared::object_name(checkpoint_id, stage, subtask);
            self.chain.splice(..replaces, [name.clone()]);
            written.push((name, framed));
        }
        if !self.store.incremental {
            self.chain.clear();
        }
        let base = self.chain.is_empty();
        let selection = if base {
            Selection::All
        } else if self.changed.len() * LOOKUP_SHARE < self.states.len() {
            Selection::Keys(&self.changed)
        } else {
            Selection::ChangedIn(self.epoch)
        };
        if base || !self.changed.is_empty() {
            let bytes = keyed::encode(&self.states, selection, codec, &self.id)?;
            let name = shared::object_name(checkpoint_id, stage, subtask);
            self.chain.push(name.clone());
            written.push((
                name,
                frame::encode(PayloadKind::KeyedSegment, codec, &bytes),
            ));
        }
        self.epoch += 1;
        self.changed.clear();
        if self.pending.len() == MAX_PENDING {
            // Checkpoints that never complete (they expire) must not pile
            // up here; an old one completing late only skips a compaction.
            self.pending.pop_front();
        }
        self.pending.push_back((checkpoint_id, self.chain.clone()));
        snapshot.put_segments(&self.id, self.chain.clone(), written);
        Ok(())
    }

    /// Checkpoint `checkpoint_id` is complete: every segment its chain
    /// names is durable. Starts a compaction of that chain if it holds too
    /// many deltas and none is running.
    pub(crate) fn checkpoint_complete(&mut self, checkpoint_id: u64) {
        let mut complete = None;
        while self
            .pending
            .front()
            .is_some_and(|(id, _)| *id <= checkpoint_id)
        {
            complete = self.pending.pop_front();
        }
        let Some((_, chain)) = complete else { return };
        let Some(storage) = &self.store.storage else {
            return;
        };
        if self.compaction.is_some() || chain.len() <= 1 + self.store.max_deltas {
            return;
        }
        let (send, base) = oneshot::channel();
        self.compaction = Some(Compaction {
            replaces: chain.len(),
            base,
        });
        let (storage, codec, id) = (Arc::clone(storage), self.store.codec, self.id.clone());
        self.store.blocking.detach(move || {
            // The task may have ended and dropped the receiver: nothing
            // waits for the base then.
            let _ = send.send(compact::<K, S>(storage.as_ref(), &chain, codec, &id));
        });
    }

    /// Whether a compaction runs in the background.
    pub(crate) fn compacting(&self) -> bool {
        self.compaction
            .as_ref()
            .is_some_and(|c| c.base.is_empty() && !c.base.is_terminated())
    }

    /// The finished compaction's base and how many segments it replaces,
    /// if one finished; a failed one is logged and dropped.
    fn take_compacted(&mut self) -> Option<(usize, Vec<u8>)> {
        let running = self.compaction.as_mut()?;
        let result = match running.base.try_recv() {
            Err(oneshot::error::TryRecvError::Empty) => return None,
            Err(oneshot::error::TryRecvError::Closed) => {
                Err("the compaction stopped without a result".to_owned())
            }
            Ok(result) => result.map_err(|e| e.to_string()),
        };
        let replaces = running.replaces;
        self.compaction = None;
        match result {
            Ok(base) => Some((replaces, base)),
            Err(error) => {
                tracing::warn!(state = %self.id, %error, "compacting keyed state failed; checkpoints go on with deltas, and a later one tries again");
                None
            }
        }
    }
}

/// Reads the segments `chain` from `storage` and merges them into one
/// framed base.
fn compact<K: Key, S: Serialize + DeserializeOwned>(
    storage: &dyn CheckpointStorage,
    chain: &[String],
    codec: Codec,
    id: &str,
) -> Result<Vec<u8>, CompactionError> {
    let shared = storage.shared_location();
    let files = chain
        .iter()
        .map(|name| storage.read_shared(&shared, name))
        .collect::<Result<Vec<_>, _>>()?;
    let mut stored = Vec::with_capacity(files.len());
    for (name, file) in chain.iter().zip(&files) {
        let what = shared.join(name);
        let segment = frame::decode(file, PayloadKind::KeyedSegment, &what)?;
        stored.push(StoredMap {
            subtask: 0,
            codec: segment.codec,
            version: segment.version,
            bytes: segment.payload,
            what: format!("state `{id}` in {what}"),
        });
    }
    let whole = Owner {
        parallelism: 1,
        index: 0,
        route: |_: &K| 0,
    };
    let merged: KeyedState<K, S> = keyed::restore(&stored, 1, &whole)?;
    let bytes = keyed::encode(&merged, Selection::All, codec, id)?;
    Ok(frame::encode(PayloadKind::KeyedSegment, codec, &bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::element::{StateEntry, StoredEntry};
    use crate::storage::LocalStorage;

    type Counts = IncrementalState<u64, (u64,)>;

    fn counts(storage: &Arc<LocalStorage>, max_deltas: usize) -> Counts {
        counts_with(storage, max_deltas, true)
    }

    fn counts_with(storage: &Arc<LocalStorage>, max_deltas: usize, incremental: bool) -> Counts {
        let store = SegmentStore {
            storage: Some(Arc::clone(storage) as Arc<dyn CheckpointStorage>),
            blocking: BlockingCalls::default(),
            codec: Codec::Bincode,
            stage: 1,
            subtask: 0,
            max_deltas,
            incremental,
        };
        IncrementalState::new(KeyedState::default(), "1:count".into(), store)
    }

    fn touch(state: &mut Counts, keys: impl IntoIterator<Item = u64>) {
        for key in keys {
            state.slot(key).0 += 1;
        }
    }

    /// Takes a snapshot, writes its new segments, and returns the chain
    /// and the new segments' sizes.
    fn checkpoint(
        state: &mut Counts,
        storage: &LocalStorage,
        id: u64,
    ) -> (Vec<String>, Vec<usize>) {
        let mut snapshot = SnapshotWriter::new(Codec::Bincode);
        state.snapshot(id, &mut snapshot).unwrap();
        let sizes = snapshot.shared.iter().map(|(_, b)| b.len()).collect();
        for (name, bytes) in &snapshot.shared {
            storage.write_shared(name, bytes).unwrap();
        }
        let [(_, StateEntry::Segments(chain))] = snapshot.entries.as_slice() else {
            panic!("expected one incremental entry: {:?}", snapshot.entries);
        };
        (chain.clone(), sizes)
    }

    /// The map a restore of `chain` builds.
    fn restore(storage: &LocalStorage, chain: &[String]) -> KeyedState<u64, (u64,)> {
        let parts = chain
            .iter()
            .map(|name| {
                let file = storage
                    .read_shared(&storage.shared_location(), name)
                    .unwrap();
                let file = bytes::Bytes::from(file);
                let frame = frame::decode(&file, PayloadKind::KeyedSegment, &name).unwrap();
                (frame.version, file.slice_ref(frame.payload))
            })
            .collect();
        let stage = crate::runtime::element::RestoredStage {
            checkpoint_id: 0,
            subtasks: vec![
                [(
                    "1:count".to_owned(),
                    StoredEntry {
                        codec: Codec::Bincode,
                        parts,
                    },
                )]
                .into(),
            ],
        };
        stage.restore_keyed("1:count", 1, 0).unwrap()
    }

    fn values(map: &KeyedState<u64, (u64,)>) -> std::collections::BTreeMap<u64, u64> {
        map.iter().map(|(k, slot)| (*k, slot.state.0)).collect()
    }

    #[test]
    fn a_checkpoint_writes_the_changed_keys_and_restores_the_whole_map() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(LocalStorage::new(dir.path()));
        let mut state = counts(&storage, 100);
        touch(&mut state, 0..10_000);
        let (chain, base) = checkpoint(&mut state, &storage, 1);
        assert_eq!(chain.len(), 1);
        touch(&mut state, 0..100);
        let (chain, delta) = checkpoint(&mut state, &storage, 2);
        assert_eq!(chain.len(), 2);
        assert!(
            delta[0] * 50 < base[0],
            "a delta of 1% of the keys is {} bytes, the base {}",
            delta[0],
            base[0]
        );
        // No key changed: no new segment.
        let (unchanged, written) = checkpoint(&mut state, &storage, 3);
        assert_eq!(unchanged, chain);
        assert!(written.is_empty());
        let restored = restore(&storage, &chain);
        assert_eq!(values(&restored), values(&state.states));
        // Half the keys changed: the delta comes from a pass over the map
        // instead of lookups, with the same result.
        touch(&mut state, (0..10_000).step_by(2));
        let (chain, _) = checkpoint(&mut state, &storage, 4);
        assert_eq!(chain.len(), 3);
        assert_eq!(values(&restore(&storage, &chain)), values(&state.states));
        assert!(
            restored
                .values()
                .all(|slot: &Slot<(u64,)>| slot.changed_in == 0)
        );
    }

    #[test]
    fn deltas_are_compacted_in_the_background_into_a_new_base() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(LocalStorage::new(dir.path()));
        let mut state = counts(&storage, 2);
        touch(&mut state, 0..1000);
        let mut chain = Vec::new();
        for id in 1..=4 {
            touch(&mut state, id * 10..id * 10 + 5);
            chain = checkpoint(&mut state, &storage, id).0;
        }
        assert_eq!(chain.len(), 4, "a base and three deltas");
        // Without a runtime, the compaction runs inline.
        state.checkpoint_complete(4);
        touch(&mut state, [7]);
        let (compacted, written) = checkpoint(&mut state, &storage, 5);
        assert_eq!(compacted.len(), 2, "the new base and checkpoint 5's delta");
        assert_eq!(written.len(), 2);
        assert!(!chain.contains(&compacted[0]));
        assert_eq!(
            values(&restore(&storage, &compacted)),
            values(&state.states)
        );
        // Checkpoint 4's chain is still readable: nothing was deleted.
        assert_eq!(restore(&storage, &chain).len(), 1000);
    }

    #[test]
    fn full_snapshots_write_every_key_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(LocalStorage::new(dir.path()));
        let mut state = counts_with(&storage, 8, false);
        touch(&mut state, 0..1000);
        let (_, base) = checkpoint(&mut state, &storage, 1);
        touch(&mut state, [3]);
        let (chain, written) = checkpoint(&mut state, &storage, 2);
        assert_eq!(chain.len(), 1);
        assert_eq!(written, base, "a full snapshot of the same keys");
        assert_eq!(values(&restore(&storage, &chain)), values(&state.states));
    }
}
