//! Sources: where records enter a pipeline, and how their read positions are
//! checkpointed.
//!
//! Owns: the [`Source`] contract and the built-in sources ([`VecSource`],
//! [`LineFileSource`]). Does not own barrier injection or the source task
//! loop: that is `runtime::task`. Nor [`SubtaskContext`], which sinks are
//! given too: it is [`crate::context`]'s, re-exported here.

mod lines;
mod vec;

use std::fmt::Debug;
use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use crate::context::SubtaskContext;
pub use lines::{LineFileSource, LinePosition};
pub use vec::{VecPosition, VecSource};

use crate::error::BoxError;
use crate::preflight::{JobSettings, PreflightReport};

/// What one call to [`Source::poll_batch`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourcePoll {
    /// Records were appended to the output buffer (possibly none, if the
    /// source is throttled).
    Data,
    /// Nothing more is available now; the runtime will poll again
    /// shortly. Records appended in the same call are still emitted.
    Idle,
    /// The input is exhausted: this subtask will never produce again.
    /// Records appended in the same call are its last, and are emitted.
    Finished,
}

/// A parallel, replayable source of records.
///
/// The runtime clones the source once per subtask and calls
/// [`open`](Source::open) on each clone. Between two calls to
/// [`poll_batch`](Source::poll_batch), the runtime may take
/// [`position`](Source::position) into a checkpoint: it must name exactly the
/// next record that has not been returned yet, so that a restore neither
/// skips nor repeats one.
pub trait Source: Clone + Send + 'static {
    /// The records this source produces.
    type Item: Send + 'static;
    /// A checkpointed read position.
    type Position: Serialize + DeserializeOwned + Clone + Debug + Send + 'static;

    /// A short human-readable name, such as `lines(words.txt)`.
    fn name(&self) -> String;

    /// Checks, once when the job starts and before any record is read, that
    /// the source can run with these settings (for example that its topics
    /// exist). May block; it runs on the blocking pool.
    ///
    /// # Errors
    ///
    /// Stops the job before it starts, with [`crate::Error::Preflight`].
    fn preflight(&self, settings: &JobSettings) -> Result<PreflightReport, BoxError> {
        let _ = settings;
        Ok(PreflightReport::new())
    }

    /// Prepares the subtask. `restored` holds the positions every subtask of
    /// the restored checkpoint had (empty on a fresh start), so that a source
    /// can redistribute its splits when the parallelism changed.
    fn open(
        &mut self,
        ctx: &SubtaskContext,
        restored: Vec<Self::Position>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Appends up to `max` records to `out`. Returns within a bounded time
    /// (about 100 ms at most) even when no data is available, so that
    /// checkpoint barriers are not delayed.
    fn poll_batch(
        &mut self,
        out: &mut Vec<Self::Item>,
        max: usize,
    ) -> impl Future<Output = Result<SourcePoll, BoxError>> + Send;

    /// The position of the next record not yet returned.
    fn position(&self) -> Self::Position;

    /// Called when checkpoint `checkpoint_id` is complete, with the position
    /// this subtask recorded in it. Sources that report progress elsewhere
    /// (for example consumer-group offsets for lag monitoring) do it here;
    /// it is never used for recovery.
    fn checkpoint_complete(
        &mut self,
        checkpoint_id: u64,
        position: &Self::Position,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = (checkpoint_id, position);
        async { Ok(()) }
    }
}
