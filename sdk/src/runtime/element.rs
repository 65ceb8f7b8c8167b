//! The element contract: what every link of a task's chain implements and
//! what it is handed.
//!
//! Owns: the [`Pipe`] trait (open, push, barrier, checkpoint complete, end),
//! the futures its methods return ([`BoxFuture`], [`PushFuture`]), the
//! [`SnapshotWriter`] an element adds its state to at a barrier, the
//! [`RestoredStage`] it restores from, and [`KeyFn`], the key extractor of
//! `key_by`. Every element (a chained operator in [`super::chain`], an
//! exchange tail in [`super::exchange`], a sink in
//! [`super::two_phase_commit`]) depends on this module, and this module on
//! none of them.
//!
//! Does not own any element, the keyed state map's layout
//! ([`super::keyed`]) or how a task drives its chain ([`super::task`]).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::keyed::{self, KeyedState, Owner, StoredMap};
use super::message::Barrier;
use crate::codec::{Bytes, Codec, CodecError};
use crate::error::Result;
use crate::key::{Key, key_subtask};
use crate::storage::frame::{self, PayloadKind};
use crate::storage::{CheckpointStorage, StorageError, TaskStateHandle};

/// A boxed, sendable future: what [`Pipe`] methods return so that pipes can
/// be chained as trait objects.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What [`Pipe::push`] returns: the result, when the batch went down the
/// chain without waiting (operators, a queue with room, a sink that runs
/// inline), or a boxed future for an element that has to wait. The common
/// case allocates nothing per batch.
pub(crate) enum PushFuture<'a> {
    /// Done; taken when polled.
    Ready(Option<Result<()>>),
    /// Waiting for a queue or a blocking call.
    Waiting(BoxFuture<'a, Result<()>>),
}

impl PushFuture<'_> {
    /// A push that is already done.
    pub(crate) fn ready(result: Result<()>) -> Self {
        PushFuture::Ready(Some(result))
    }
}

impl Future for PushFuture<'_> {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        match &mut *self {
            PushFuture::Ready(result) => Poll::Ready(
                result
                    .take()
                    .expect("a push future polled after it completed"),
            ),
            PushFuture::Waiting(future) => future.as_mut().poll(cx),
        }
    }
}

/// One element of a chain. Each method handles its own part, then passes
/// the call on to the next element.
pub(crate) trait Pipe<T>: Send {
    /// Prepares the element (restore, recovery) before the first record.
    fn open(&mut self) -> BoxFuture<'_, Result<()>>;
    /// Processes a batch: takes every record out of `batch` and leaves it
    /// empty, so that the caller fills the same allocation again.
    fn push<'a>(&'a mut self, batch: &'a mut Vec<T>) -> PushFuture<'a>;
    /// Snapshots the element's state into `snapshot`, then forwards the
    /// barrier.
    fn barrier<'a>(
        &'a mut self,
        barrier: Barrier,
        snapshot: &'a mut SnapshotWriter,
    ) -> BoxFuture<'a, Result<()>>;
    /// Checkpoint `checkpoint_id` (and every one before it) is complete.
    fn checkpoint_complete(&mut self, checkpoint_id: u64) -> BoxFuture<'_, Result<()>>;
    /// The input has ended.
    fn end(&mut self) -> BoxFuture<'_, Result<()>>;
}

/// One element's state in a task state file. Format version 4 wrote this
/// enum; before it, every entry was a value.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum StateEntry<B> {
    /// The state, encoded with the file's codec (a keyed map inline, in the
    /// layout of [`super::keyed`], for files before version 4).
    Value(B),
    /// Keyed state kept incrementally: the shared objects
    /// ([`crate::storage::CheckpointStorage::write_shared`]) holding its
    /// segments, oldest first.
    Segments(Vec<String>),
}

/// Collects the state entries of one task at a barrier.
#[derive(Debug)]
pub(crate) struct SnapshotWriter {
    codec: Codec,
    pub(crate) entries: Vec<(String, StateEntry<Bytes>)>,
    /// Shared objects to make durable before the task state: name and
    /// framed bytes.
    pub(crate) shared: Vec<(String, Vec<u8>)>,
}

impl SnapshotWriter {
    pub(crate) fn new(codec: Codec) -> Self {
        SnapshotWriter {
            codec,
            entries: Vec::new(),
            shared: Vec::new(),
        }
    }

    /// Adds the state of the element `id`.
    pub(crate) fn put<S: Serialize + ?Sized>(
        &mut self,
        id: &str,
        value: &S,
    ) -> Result<(), CodecError> {
        let bytes = self.codec.encode(value, id)?;
        self.entries
            .push((id.to_owned(), StateEntry::Value(Bytes(bytes))));
        Ok(())
    }

    /// Adds the keyed state of the element `id`, whole and inline.
    pub(crate) fn put_keyed<K: Hash + Eq + Serialize, S: Serialize>(
        &mut self,
        id: &str,
        states: &KeyedState<K, S>,
    ) -> Result<(), CodecError> {
        let bytes = keyed::encode(states, keyed::Selection::All, self.codec, id)?;
        self.entries
            .push((id.to_owned(), StateEntry::Value(Bytes(bytes))));
        Ok(())
    }

    /// Adds the keyed state of the element `id` as the shared objects
    /// `segments`, oldest first, of which `written` (name, framed bytes)
    /// are new in this checkpoint.
    pub(crate) fn put_segments(
        &mut self,
        id: &str,
        segments: Vec<String>,
        written: impl IntoIterator<Item = (String, Vec<u8>)>,
    ) {
        self.shared.extend(written);
        self.entries
            .push((id.to_owned(), StateEntry::Segments(segments)));
    }

    /// The snapshot as it is made durable: the framed task state, the new
    /// shared objects, and every shared object the entries reference.
    pub(crate) fn finish(self) -> Result<FinishedSnapshot, CodecError> {
        let references = self
            .entries
            .iter()
            .filter_map(|(_, entry)| match entry {
                StateEntry::Segments(names) => Some(names.iter().cloned()),
                StateEntry::Value(_) => None,
            })
            .flatten()
            .collect();
        let payload = self.codec.encode(&self.entries, "task state")?;
        Ok(FinishedSnapshot {
            task_state: frame::encode(PayloadKind::TaskState, self.codec, &payload),
            shared: self.shared,
            references,
        })
    }
}

/// A task's snapshot, encoded and framed, ready to be written.
#[derive(Debug)]
pub(crate) struct FinishedSnapshot {
    /// The framed task-state file.
    pub(crate) task_state: Vec<u8>,
    /// New shared objects: name and framed bytes.
    pub(crate) shared: Vec<(String, Vec<u8>)>,
    /// Every shared object the task state references.
    references: Vec<String>,
}

impl FinishedSnapshot {
    /// Writes the shared objects, then the task state that names them, as
    /// subtask `subtask` of stage `stage` in checkpoint `checkpoint`.
    /// Blocks on storage I/O.
    pub(crate) fn write(
        self,
        storage: &dyn CheckpointStorage,
        checkpoint: u64,
        stage: usize,
        subtask: usize,
    ) -> Result<TaskStateHandle, StorageError> {
        for (name, bytes) in &self.shared {
            storage.write_shared(name, bytes)?;
        }
        let mut handle = storage.write_task_state(checkpoint, stage, subtask, &self.task_state)?;
        handle.shared = self.references;
        Ok(handle)
    }
}

/// One element's state as restored from one old subtask: its codec and its
/// parts in order, each with the frame format version of the file it came
/// from. A value has one part; incremental keyed state has a base and its
/// deltas. Each part is a slice of the file it was read from, shared rather
/// than copied.
#[derive(Debug, Clone)]
pub(crate) struct StoredEntry {
    pub(crate) codec: Codec,
    pub(crate) parts: Vec<(u16, bytes::Bytes)>,
}

/// The state one stage had in the checkpoint being restored: the entries of
/// every old subtask, so that state can be redistributed when the
/// parallelism changed.
#[derive(Debug, Default)]
pub(crate) struct RestoredStage {
    pub(crate) checkpoint_id: u64,
    pub(crate) subtasks: Vec<HashMap<String, StoredEntry>>,
}

impl RestoredStage {
    /// What names the entry `id` of subtask `subtask` in errors.
    fn what(&self, id: &str, subtask: usize) -> String {
        format!(
            "state `{id}` of subtask {subtask} in checkpoint {}",
            self.checkpoint_id
        )
    }

    /// Every part of the entry `id` of every old subtask that has one, in
    /// subtask order and then in part order.
    fn stored(&self, id: &str) -> Vec<StoredMap<'_>> {
        self.subtasks
            .iter()
            .enumerate()
            .filter_map(|(subtask, entries)| Some((subtask, entries.get(id)?)))
            .flat_map(|(subtask, entry)| {
                let what = self.what(id, subtask);
                entry
                    .parts
                    .iter()
                    .enumerate()
                    .map(move |(part, (version, bytes))| StoredMap {
                        subtask,
                        codec: entry.codec,
                        version: *version,
                        bytes,
                        what: if entry.parts.len() == 1 {
                            what.clone()
                        } else {
                            format!("{what}, segment {part}")
                        },
                    })
            })
            .collect()
    }

    /// Decodes the entry `id` of every old subtask that has one, in subtask
    /// order.
    pub(crate) fn decode_all<S: DeserializeOwned>(&self, id: &str) -> Result<Vec<(usize, S)>> {
        self.subtasks
            .iter()
            .enumerate()
            .filter_map(|(subtask, entries)| Some((subtask, entries.get(id)?)))
            .map(|(subtask, entry)| {
                let what = self.what(id, subtask);
                match entry.parts.as_slice() {
                    [(_, bytes)] => Ok((subtask, entry.codec.decode(bytes, &what)?)),
                    parts => Err(CodecError::Decode {
                        what,
                        codec: entry.codec,
                        message: format!("expected one value, found {} segments", parts.len()),
                    }
                    .into()),
                }
            })
            .collect()
    }

    /// Rebuilds the keyed state `id` of subtask `index` of `parallelism`
    /// from every old subtask's map (see [`super::keyed`]).
    pub(crate) fn restore_keyed<K: Key, S: DeserializeOwned>(
        &self,
        id: &str,
        parallelism: usize,
        index: usize,
    ) -> Result<KeyedState<K, S>> {
        let owner = Owner {
            parallelism,
            index,
            route: |key: &K| key_subtask(key, parallelism),
        };
        Ok(keyed::restore(
            &self.stored(id),
            self.subtasks.len(),
            &owner,
        )?)
    }
}

#[cfg(test)]
impl RestoredStage {
    /// The stage as restored from one subtask's `snapshot` (values only)
    /// in checkpoint `checkpoint_id`.
    pub(crate) fn from_snapshot(snapshot: SnapshotWriter, checkpoint_id: u64) -> Self {
        let codec = snapshot.codec;
        let entries = snapshot
            .entries
            .into_iter()
            .map(|(id, entry)| {
                let StateEntry::Value(bytes) = entry else {
                    panic!("from_snapshot takes values only, `{id}` has segments");
                };
                let parts = vec![(
                    crate::storage::frame::FORMAT_VERSION,
                    bytes::Bytes::from(bytes.0),
                )];
                (id, StoredEntry { codec, parts })
            })
            .collect();
        RestoredStage {
            checkpoint_id,
            subtasks: vec![entries],
        }
    }
}

/// Extracts a record's key.
pub(crate) type KeyFn<T, K> = Arc<dyn Fn(&T) -> K + Send + Sync>;
