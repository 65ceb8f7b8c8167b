//! Error types shared by the whole SDK.
//!
//! Owns: the job-level [`Error`] with one typed variant per way a job can
//! stop, each keeping its underlying error as its source; the boxed
//! [`BoxError`] that user code and connectors return; [`Unrecoverable`];
//! and the errors of the runtime's own machinery that users may match on:
//! [`SavepointError`] and [`CallError`]. Does not own the storage and codec
//! errors ([`StorageError`], [`CodecError`]), which live beside the code
//! that raises them and convert into [`Error`], nor the errors of a user's
//! operators, sources and sinks, which arrive boxed inside
//! [`Error::Task`], [`Error::Commit`] and [`Error::Preflight`].

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use crate::codec::CodecError;
use crate::storage::{Location, StorageError};

/// The error type user operators, sources and sinks return: any error that
/// can cross threads. The runtime wraps it with the task and phase it came
/// from before it reaches the user.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Marks an error that no restart can cure, like Flink's
/// `SuppressRestartsException`: the job stops at once, whatever its restart
/// strategy. Return it (boxed, as a [`BoxError`]) from an operator, source
/// or sink when retrying would do harm, for example when a newer instance
/// of the job has fenced this one and a restart would fence it back.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Unrecoverable(pub BoxError);

impl Unrecoverable {
    /// Wraps `error`, boxed.
    pub fn boxed(error: impl Into<BoxError>) -> BoxError {
        Box::new(Unrecoverable(error.into()))
    }
}

/// Everything that can stop a job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is invalid. The message names the setting and
    /// what to change.
    #[error("invalid configuration: {setting}: {message}")]
    Config {
        /// The setting, as the builder method or key that sets it.
        setting: String,
        /// What is wrong with it and how to fix it.
        message: String,
    },

    /// The pipeline is not well formed (for example a stream without a sink).
    #[error("invalid pipeline: {0}")]
    Pipeline(String),

    /// A source's or sink's start-up check failed; nothing was read.
    #[error("preflight check of `{element}` failed: {source}")]
    Preflight {
        /// The source or sink, as named in the pipeline.
        element: String,
        /// What the check found.
        #[source]
        source: BoxError,
    },

    /// Reading or writing checkpoint storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),

    /// Encoding or decoding state failed.
    #[error(transparent)]
    Codec(#[from] CodecError),

    /// A connector failed outside a running job: building a source or
    /// sink, or preparing what it needs (for example creating topics).
    /// Connectors convert their errors into this variant, so that `?` works
    /// in a job's `main`.
    #[error("{connector}: {source}")]
    Connector {
        /// The connector, e.g. `kafka`.
        connector: &'static str,
        /// The connector's own error.
        #[source]
        source: BoxError,
    },
    /// A checkpoint could not be restored into this job.
    #[error("cannot restore checkpoint {checkpoint} from {location}: {message}")]
    Restore {
        /// Id of the checkpoint that was being restored.
        checkpoint: u64,
        /// Directory or object prefix of that checkpoint.
        location: Location,
        /// What did not match.
        message: String,
    },

    /// The checkpoint directory's current lineage started from a savepoint
    /// and has completed no checkpoint of its own, so a start without
    /// `JobConfig::restore_from` must restore that savepoint again (never an
    /// older run's checkpoint), and it cannot be read.
    #[error(
        "the checkpoint directory's current lineage {lineage} started from the savepoint {savepoint} and has \
         completed no checkpoint yet, so this start must restore that savepoint, which cannot be read: {source}; \
         put it back, restore another savepoint with JobConfig::restore_from (which begins a new lineage), or start \
         with an empty checkpoint directory"
    )]
    LineageSavepoint {
        /// The lineage id, or `default` for the default lineage.
        lineage: String,
        /// Where the lineage record says the savepoint is.
        savepoint: Location,
        /// Why it cannot be read (boxed: it is large).
        #[source]
        source: Box<StorageError>,
    },

    /// A task failed: a user function returned an error or panicked, or a
    /// source or sink failed.
    #[error("task `{task}` failed during {phase}: {source}")]
    Task {
        /// The task, as `stage-name[subtask]`.
        task: String,
        /// What the task was doing.
        phase: &'static str,
        /// The underlying error.
        #[source]
        source: BoxError,
    },

    /// A sink transaction that belongs to a completed checkpoint could not be
    /// committed. Its data is not visible; the job stops rather than drop it.
    #[error(
        "commit of transaction {transaction} for checkpoint {checkpoint} in `{task}` failed: {source}; \
         the transaction stays pending and is committed again on restore"
    )]
    Commit {
        /// The task that owns the transaction.
        task: String,
        /// The checkpoint the transaction belongs to.
        checkpoint: u64,
        /// The transaction handle, as its `Debug` form.
        transaction: String,
        /// Why the commit failed.
        #[source]
        source: BoxError,
    },

    /// The job failed more often than its restart strategy allows.
    #[error(
        "job `{job}` failed {failures} times, more than the restart strategy allows ({max_restarts} restarts); last failure: {last}"
    )]
    RestartsExhausted {
        /// The job name.
        job: String,
        /// How many times the job failed.
        failures: u32,
        /// The configured number of restarts.
        max_restarts: u32,
        /// The last failure.
        #[source]
        last: Box<Error>,
    },

    /// Several of the errors above, found at once (for example every
    /// mistake in a pipeline), in the order they were found.
    #[error("{}", list(.0))]
    Many(Vec<Error>),

    /// [`crate::Job::run`] could not start its tokio runtime.
    #[error("cannot start the tokio runtime: {0}")]
    StartRuntime(#[source] std::io::Error),

    /// [`crate::Job::spawn`] was called outside a tokio runtime.
    #[error("Job::spawn needs a tokio runtime; from synchronous code call Job::run")]
    NoRuntime(#[source] tokio::runtime::TryCurrentError),

    /// A savepoint was not taken.
    #[error(transparent)]
    Savepoint(#[from] SavepointError),

    /// A call the runtime ran on a thread of its own, or the job's driver
    /// task, panicked or was cancelled.
    #[error(transparent)]
    Call(#[from] CallError),
}

/// Why a savepoint was not taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SavepointError {
    /// The job had ended before the request reached it.
    #[error("the job has already ended")]
    JobEnded,
    /// The job ended while the savepoint was waiting to be taken.
    #[error("the job ended before the savepoint was taken")]
    EndedBeforeSavepoint,
    /// The job is taking its final checkpoint; nothing can follow it.
    #[error("the job is stopping; no further savepoint can be taken")]
    Stopping,
    /// The savepoint's checkpoint expired before every task acknowledged it.
    /// The job keeps running, even after a stop-with-savepoint.
    #[error(
        "savepoint checkpoint {checkpoint} expired after {timeout:?}; the job keeps running: try again, or raise \
         JobConfig::checkpoint_timeout if checkpoints take this long"
    )]
    Expired {
        /// The id of the expired checkpoint.
        checkpoint: u64,
        /// The checkpoint timeout it exceeded.
        timeout: Duration,
    },
    /// The savepoint's checkpoint completed, but it could not be copied to
    /// its target directory. The job keeps running, even after a
    /// stop-with-savepoint.
    #[error(
        "cannot write the savepoint into {target}: {source}; the job keeps running: give a target that does not \
         exist yet, in a writable directory or bucket, and try again"
    )]
    Export {
        /// The savepoint's target directory or object prefix.
        target: Location,
        /// Why the copy failed.
        #[source]
        source: StorageError,
    },
    /// The job failed (a task failed to snapshot, a sink's pre-commit
    /// failed, ...) while the savepoint was pending. The job restarts from
    /// its last complete checkpoint and, even after a stop-with-savepoint,
    /// keeps running.
    #[error(
        "the job failed before the savepoint was taken ({cause}); it restarts from its last complete checkpoint \
         and keeps running: remove the cause and ask for the savepoint again"
    )]
    AttemptFailed {
        /// The failure, shared with the job's own log of it.
        #[source]
        cause: Arc<Error>,
    },
    /// The job failed for good while the savepoint was pending: an
    /// unrecoverable error, or more failures than its restart strategy
    /// allows. The job has ended.
    #[error(
        "the job failed for good before the savepoint was taken; JobHandle::join returns why: remove the cause, \
         then start the job again (it resumes from its last complete checkpoint)"
    )]
    JobFailed,
}

/// A call the runtime ran on a thread of its own (storage I/O, a preflight
/// check, a sink call, the job's driver task) that did not return.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The call panicked.
    #[error("{what} panicked: {message}")]
    Panicked {
        /// The call.
        what: &'static str,
        /// The panic's message.
        message: String,
    },
    /// The call was cancelled (its runtime shut down).
    #[error("{what} was cancelled")]
    Cancelled {
        /// The call.
        what: &'static str,
    },
}

impl CallError {
    /// The call `what` that panicked with `payload`.
    pub(crate) fn panicked(what: &'static str, payload: &(dyn std::any::Any + Send)) -> Self {
        CallError::Panicked {
            what,
            message: panic_message(payload),
        }
    }

    /// The call `what`, run as a tokio task that ended with `error`.
    pub(crate) fn from_join(what: &'static str, error: tokio::task::JoinError) -> Self {
        match error.try_into_panic() {
            Ok(payload) => CallError::panicked(what, payload.as_ref()),
            Err(_) => CallError::Cancelled { what },
        }
    }
}

/// The message of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}

/// The display of [`Error::Many`]: a count, then one error a line.
fn list(errors: &[Error]) -> String {
    let mut text = format!("{} errors:", errors.len());
    for error in errors {
        let _ = write!(text, "\n- {error}");
    }
    text
}

impl Error {
    /// Whether the error, or one of its sources, is [`Unrecoverable`] or
    /// [`StorageError::Fenced`] (a newer run took the checkpoint storage
    /// over): the job then stops instead of restarting.
    pub fn is_unrecoverable(&self) -> bool {
        let fenced = |e: &StorageError| matches!(e, StorageError::Fenced { .. });
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(error) = next {
            if error.is::<Unrecoverable>()
                || error.downcast_ref::<StorageError>().is_some_and(fenced)
                || matches!(error.downcast_ref::<Error>(), Some(Error::Storage(e)) if fenced(e))
            {
                return true;
            }
            next = error.source();
        }
        false
    }

    /// `Ok` for no errors, the error itself for one, and [`Error::Many`]
    /// for several.
    pub(crate) fn from_all(mut errors: Vec<Error>) -> Result<()> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(Error::Many(errors)),
        }
    }

    /// Shorthand for a [`Error::Config`] error.
    pub fn config(setting: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            setting: setting.into(),
            message: message.into(),
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
