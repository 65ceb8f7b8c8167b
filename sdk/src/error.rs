//! Error types shared by the whole SDK.
//!
//! Owns: the job-level [`Error`], the boxed [`BoxError`] that user code and
//! connectors return, and the context wrappers the runtime adds. Does not own
//! the storage and codec errors, which live beside the code that raises them
//! and convert into [`Error`].

use std::path::PathBuf;

use crate::codec::CodecError;
use crate::storage::StorageError;

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

    /// A checkpoint could not be restored into this job.
    #[error("cannot restore checkpoint {checkpoint} from {}: {message}", path.display())]
    Restore {
        /// Id of the checkpoint that was being restored.
        checkpoint: u64,
        /// Directory of that checkpoint.
        path: PathBuf,
        /// What did not match.
        message: String,
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

    /// The runtime could not be started (for example the tokio runtime).
    #[error("runtime: {0}")]
    Runtime(String),
}

impl Error {
    /// Whether the error, or one of its sources, is [`Unrecoverable`]: the
    /// job then stops instead of restarting.
    pub fn is_unrecoverable(&self) -> bool {
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(error) = next {
            if error.is::<Unrecoverable>() {
                return true;
            }
            next = error.source();
        }
        false
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
