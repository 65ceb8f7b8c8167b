//! Operator chaining: user operators as links of a task's chain.
//!
//! Owns: [`OperatorPipe`], the element that runs one user operator, unkeyed
//! or with its `#[state]` scoped per key, and wraps its errors with the
//! operator's name. Consecutive operators with no repartition between them
//! are fused into one task: a batch goes through each element by a direct
//! call, with no queue hop, as in Flink's operator chaining.
//!
//! Does not own the element contract ([`super::element`]), the keyed state
//! map's layout and restore ([`super::keyed`]) or its incremental
//! snapshots ([`super::incremental`]), queues between tasks
//! ([`super::exchange`]), sinks ([`super::two_phase_commit`]) or the task
//! loops ([`super::task`]).

use super::element::{BoxFuture, KeyFn, Pipe, PushFuture, SnapshotWriter};
use super::env::SubtaskEnv;
use super::incremental::IncrementalState;
use super::keyed::KeyedState;
use super::message::Barrier;
use crate::error::{Error, Result};
use crate::key::Key;
use crate::operator::{Emitter, Operator};

/// Where an operator's `#[state]` lives.
enum Scope<O: Operator, K> {
    /// No `#[state]`: one (empty) state value for the subtask.
    Unkeyed(O::State),
    /// After `key_by`: one state value per key, snapshotted incrementally
    /// under its element id and redistributed by key on restore.
    Keyed {
        key: KeyFn<O::In, K>,
        state: Box<IncrementalState<K, O::State>>,
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
        let state = Box::new(IncrementalState::new(states, id, env.segment_store()));
        Ok(OperatorPipe {
            op,
            scope: Scope::Keyed { key, state },
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
            Scope::Keyed { key, state } => batch.drain(..).try_for_each(|record| {
                let slot = state.slot(key(&record));
                self.op.process(record, slot, out)
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
        if let Scope::Keyed { state, .. } = &mut self.scope
            && let Err(e) = state.snapshot(barrier.checkpoint_id, snapshot)
        {
            return Box::pin(async move { Err(e.into()) });
        }
        self.down.barrier(barrier, snapshot)
    }

    fn checkpoint_complete(&mut self, checkpoint_id: u64) -> BoxFuture<'_, Result<()>> {
        if let Scope::Keyed { state, .. } = &mut self.scope {
            state.checkpoint_complete(checkpoint_id);
        }
        self.down.checkpoint_complete(checkpoint_id)
    }

    fn end(&mut self) -> BoxFuture<'_, Result<()>> {
        self.down.end()
    }
}
