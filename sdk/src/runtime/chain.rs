//! Operator chaining: the push-based pipes a task runs its records through.
//!
//! Owns: the [`Pipe`] trait every chained element implements, the pipes for
//! unkeyed and keyed operators, and the per-task snapshot writer and restore
//! view. Consecutive operators with no repartition between them are fused
//! into one task: a batch goes through each [`Pipe`] by a direct call, with
//! no queue hop, as in Flink's operator chaining. The keyed state map, its
//! snapshot layout and its restore are [`super::keyed`]'s.
//!
//! Does not own queues between tasks ([`super::exchange`]), sinks
//! ([`super::two_phase_commit`]) or the task loops ([`super::task`]).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::env::SubtaskEnv;
use super::keyed::{self, KeyedState, Owner, StoredMap};
use super::message::Barrier;
use crate::codec::{Bytes, Codec, CodecError};
use crate::error::{Error, Result};
use crate::operator::{Emitter, Operator};
use crate::storage::frame;

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

/// Builds the rest of a chain for one subtask.
pub(crate) type PipeFactory<T> = Box<dyn Fn(&SubtaskEnv) -> Result<Box<dyn Pipe<T>>> + Send + Sync>;

/// Collects the state entries of one task at a barrier.
#[derive(Debug)]
pub(crate) struct SnapshotWriter {
    codec: Codec,
    pub(crate) entries: Vec<(String, Bytes)>,
}

impl SnapshotWriter {
    pub(crate) fn new(codec: Codec) -> Self {
        SnapshotWriter {
            codec,
            entries: Vec::new(),
        }
    }

    /// Adds the state of the element `id`.
    pub(crate) fn put<S: Serialize + ?Sized>(
        &mut self,
        id: &str,
        value: &S,
    ) -> Result<(), CodecError> {
        let bytes = self.codec.encode(value, id)?;
        self.entries.push((id.to_owned(), Bytes(bytes)));
        Ok(())
    }

    /// Adds the keyed state of the element `id`.
    pub(crate) fn put_keyed<K: Serialize, S: Serialize>(
        &mut self,
        id: &str,
        states: &KeyedState<K, S>,
    ) -> Result<(), CodecError> {
        let bytes = keyed::encode(states, self.codec, id)?;
        self.entries.push((id.to_owned(), Bytes(bytes)));
        Ok(())
    }
}

/// The state one stage had in the checkpoint being restored: the entries of
/// every old subtask, so that state can be redistributed when the
/// parallelism changed.
#[derive(Debug, Default)]
pub(crate) struct RestoredStage {
    pub(crate) checkpoint_id: u64,
    pub(crate) subtasks: Vec<HashMap<String, (Codec, Vec<u8>)>>,
    /// The frame format version of each old subtask's file.
    pub(crate) versions: Vec<u16>,
}

impl RestoredStage {
    /// The entry `id` of every old subtask that has one, in subtask order.
    fn stored(&self, id: &str) -> Vec<StoredMap<'_>> {
        self.subtasks
            .iter()
            .enumerate()
            .filter_map(|(subtask, entries)| {
                let (codec, bytes) = entries.get(id)?;
                Some(StoredMap {
                    subtask,
                    codec: *codec,
                    version: self
                        .versions
                        .get(subtask)
                        .copied()
                        .unwrap_or(frame::FORMAT_VERSION),
                    bytes,
                    what: format!(
                        "state `{id}` of subtask {subtask} in checkpoint {}",
                        self.checkpoint_id
                    ),
                })
            })
            .collect()
    }

    /// Decodes the entry `id` of every old subtask that has one, in subtask
    /// order.
    pub(crate) fn decode_all<S: DeserializeOwned>(&self, id: &str) -> Result<Vec<(usize, S)>> {
        self.stored(id)
            .into_iter()
            .map(|s| Ok((s.subtask, s.codec.decode(s.bytes, &s.what)?)))
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
            route: |key: &K| super::exchange::key_subtask(key, parallelism),
        };
        Ok(keyed::restore(
            &self.stored(id),
            self.subtasks.len(),
            &owner,
        )?)
    }
}

/// A key: hashed to choose the subtask that owns it, and stored in
/// checkpoints with its state.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used as a key",
    label = "the key function returns this type",
    note = "keys must be `Hash + Eq + Clone + Send + Sync + Serialize + DeserializeOwned + 'static`, such as `String`, integers or a `#[derive(Hash, Eq, PartialEq, Clone, Serialize, Deserialize)]` struct"
)]
pub trait Key: Hash + Eq + Clone + Send + Sync + Serialize + DeserializeOwned + 'static {}

impl<K: Hash + Eq + Clone + Send + Sync + Serialize + DeserializeOwned + 'static> Key for K {}

/// Extracts a record's key.
pub(crate) type KeyFn<T, K> = Arc<dyn Fn(&T) -> K + Send + Sync>;

/// Where an operator's `#[state]` lives.
enum Scope<O: Operator, K> {
    /// No `#[state]`: one (empty) state value for the subtask.
    Unkeyed(O::State),
    /// After `key_by`: one state value per key, snapshotted as a map under
    /// `id` and redistributed by key on restore.
    Keyed {
        key: KeyFn<O::In, K>,
        states: KeyedState<K, O::State>,
        id: String,
    },
}

/// A chained operator. Stateless operators run unkeyed; operators with
/// `#[state]` run keyed, which the builder's types enforce.
pub(crate) struct OperatorPipe<O: Operator, K> {
    op: O,
    scope: Scope<O, K>,
    task: String,
    /// The output batch, handed down and then filled again.
    out: Emitter<O::Out>,
    down: Box<dyn Pipe<O::Out>>,
}

/// A user operator's error, with the operator's name; keeps the error as
/// its source (so that [`crate::Unrecoverable`] is still found).
#[derive(Debug, thiserror::Error)]
#[error("operator `{operator}` returned an error: {source}")]
struct OperatorFailed {
    operator: String,
    source: crate::BoxError,
}

fn operator_error(task: &str, name: &str, source: crate::BoxError) -> Error {
    Error::Task {
        task: task.to_owned(),
        phase: "processing",
        source: Box::new(OperatorFailed {
            operator: name.to_owned(),
            source,
        }),
    }
}

impl<O: Operator> OperatorPipe<O, ()> {
    /// An operator without keyed state.
    pub(crate) fn unkeyed(op: O, env: &SubtaskEnv, down: Box<dyn Pipe<O::Out>>) -> Self {
        OperatorPipe {
            op,
            scope: Scope::Unkeyed(O::State::default()),
            task: env.task_name(),
            out: Emitter::new(),
            down,
        }
    }
}

impl<O: Operator, K: Key> OperatorPipe<O, K> {
    /// An operator whose state is scoped per key; restores the keys this
    /// subtask owns from every old subtask's snapshot.
    pub(crate) fn keyed(
        op: O,
        key: KeyFn<O::In, K>,
        id: String,
        env: &SubtaskEnv,
        down: Box<dyn Pipe<O::Out>>,
    ) -> Result<Self> {
        let states = match &env.restored {
            Some(restored) => restored.restore_keyed(&id, env.ctx.parallelism, env.ctx.index)?,
            None => KeyedState::default(),
        };
        Ok(OperatorPipe {
            op,
            scope: Scope::Keyed { key, states, id },
            task: env.task_name(),
            out: Emitter::new(),
            down,
        })
    }

    /// Runs the operator over `batch` (leaving it empty) into `self.out`.
    fn process(&mut self, batch: &mut Vec<O::In>) -> Result<()> {
        let out = &mut self.out;
        let result = match &mut self.scope {
            Scope::Unkeyed(state) => batch
                .drain(..)
                .try_for_each(|record| self.op.process(record, state, out)),
            Scope::Keyed { key, states, .. } => batch.drain(..).try_for_each(|record| {
                let state = states.entry(key(&record)).or_default();
                self.op.process(record, state, out)
            }),
        };
        result.map_err(|e| {
            out.buffer().clear();
            operator_error(&self.task, O::NAME, e)
        })
    }
}

impl<O: Operator, K: Key> Pipe<O::In> for OperatorPipe<O, K> {
    fn open(&mut self) -> BoxFuture<'_, Result<()>> {
        self.down.open()
    }

    fn push<'a>(&'a mut self, batch: &'a mut Vec<O::In>) -> PushFuture<'a> {
        match self.process(batch) {
            Ok(()) if self.out.emitted().is_empty() => PushFuture::ready(Ok(())),
            Ok(()) => self.down.push(self.out.buffer()),
            Err(e) => PushFuture::ready(Err(e)),
        }
    }

    fn barrier<'a>(
        &'a mut self,
        barrier: Barrier,
        snapshot: &'a mut SnapshotWriter,
    ) -> BoxFuture<'a, Result<()>> {
        if let Scope::Keyed { states, id, .. } = &self.scope
            && let Err(e) = snapshot.put_keyed(id, states)
        {
            return Box::pin(async move { Err(e.into()) });
        }
        self.down.barrier(barrier, snapshot)
    }

    fn checkpoint_complete(&mut self, checkpoint_id: u64) -> BoxFuture<'_, Result<()>> {
        self.down.checkpoint_complete(checkpoint_id)
    }

    fn end(&mut self) -> BoxFuture<'_, Result<()>> {
        self.down.end()
    }
}
