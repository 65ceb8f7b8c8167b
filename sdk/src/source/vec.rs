//! [`VecSource`]: an in-memory source with replayable positions.
//!
//! Owns: the source and its position (the index of the next element). Does
//! not own the source contract ([`crate::source::Source`]) or when
//! positions are snapshotted (the runtime's source task).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Source, SourcePoll};
use crate::context::SubtaskContext;
use crate::error::BoxError;

/// An in-memory source over a shared vector. Subtask `i` of `p` reads the
/// elements whose index is `i` modulo `p`; its position is the index of the
/// next element it will return, so a restore resumes exactly there.
#[derive(Debug)]
pub struct VecSource<T> {
    items: Arc<Vec<T>>,
    subtask: usize,
    parallelism: usize,
    next: usize,
}

impl<T> Clone for VecSource<T> {
    fn clone(&self) -> Self {
        VecSource {
            items: Arc::clone(&self.items),
            subtask: self.subtask,
            parallelism: self.parallelism,
            next: self.next,
        }
    }
}

/// The checkpointed position of one [`VecSource`] subtask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VecPosition {
    /// The subtask that owned this position.
    pub subtask: usize,
    /// The parallelism the position was taken at.
    pub parallelism: usize,
    /// Index of the next element to return.
    pub next: usize,
}

impl<T> VecSource<T> {
    /// A source over `items`.
    pub fn new(items: impl Into<Vec<T>>) -> Self {
        Self::shared(Arc::new(items.into()))
    }

    /// A source over `items` shared with the caller, who keeps them (for
    /// example to run several jobs over the same records without copying
    /// them, or to free them on its own thread).
    pub fn shared(items: Arc<Vec<T>>) -> Self {
        VecSource {
            items,
            subtask: 0,
            parallelism: 1,
            next: 0,
        }
    }
}

impl<T: Clone + Send + Sync + 'static> Source for VecSource<T> {
    type Item = T;
    type Position = VecPosition;

    fn name(&self) -> String {
        "vec".to_owned()
    }

    async fn open(
        &mut self,
        ctx: &SubtaskContext,
        restored: Vec<VecPosition>,
    ) -> Result<(), BoxError> {
        self.subtask = ctx.index;
        self.parallelism = ctx.parallelism;
        self.next = ctx.index;
        if let Some(old) = restored.first() {
            if old.parallelism != ctx.parallelism || restored.len() != ctx.parallelism {
                return Err(format!(
                    "VecSource cannot change parallelism on restore (checkpoint has {}, job has {})",
                    old.parallelism, ctx.parallelism
                )
                .into());
            }
            let mine = restored
                .iter()
                .find(|p| p.subtask == ctx.index)
                .ok_or_else(|| format!("no checkpointed position for subtask {}", ctx.index))?;
            self.next = mine.next;
        }
        Ok(())
    }

    async fn poll_batch(&mut self, out: &mut Vec<T>, max: usize) -> Result<SourcePoll, BoxError> {
        if self.next >= self.items.len() {
            return Ok(SourcePoll::Finished);
        }
        let mut taken = 0;
        while taken < max && self.next < self.items.len() {
            out.push(self.items[self.next].clone());
            self.next += self.parallelism;
            taken += 1;
        }
        Ok(SourcePoll::Data)
    }

    fn position(&self) -> VecPosition {
        VecPosition {
            subtask: self.subtask,
            parallelism: self.parallelism,
            next: self.next,
        }
    }
}
