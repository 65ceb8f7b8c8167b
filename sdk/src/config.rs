//! Job configuration: parallelism, checkpointing, restarts and tuning.
//!
//! Owns: [`JobConfig`], its defaults and its validation, which runs when the
//! job starts so that a bad value is reported before any record is read.
//! Does not own the protocol that uses the settings
//! (`runtime::coordinator`).

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::fault::FaultHook;
use crate::storage::{CheckpointStorage, Location};

/// What the job does when a task fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartStrategy {
    /// How many times the job may restart before it gives up.
    pub max_restarts: u32,
    /// How long to wait before each restart.
    pub delay: Duration,
}

impl RestartStrategy {
    /// Restart up to `max_restarts` times, waiting `delay` before each.
    pub const fn fixed_delay(max_restarts: u32, delay: Duration) -> Self {
        RestartStrategy {
            max_restarts,
            delay,
        }
    }

    /// Never restart: the first failure ends the job.
    pub const fn none() -> Self {
        RestartStrategy {
            max_restarts: 0,
            delay: Duration::ZERO,
        }
    }
}

impl Default for RestartStrategy {
    /// Three restarts, one second apart.
    fn default() -> Self {
        RestartStrategy::fixed_delay(3, Duration::from_secs(1))
    }
}

/// Where checkpoints go, as configured: opened when the job starts.
#[derive(Clone)]
pub(crate) enum StorageSetting {
    /// A directory or URL given to [`JobConfig::checkpoint_dir`].
    Location(OsString),
    /// Storage given to [`JobConfig::checkpoint_storage`].
    Custom(Arc<dyn CheckpointStorage>),
}

/// The configuration of a job. Build it with the methods below; every value
/// is checked when the job starts.
///
/// ```
/// use std::time::Duration;
/// use exactly::JobConfig;
///
/// let config = JobConfig::new()
///     .parallelism(2)
///     .checkpoint_interval(Duration::from_millis(500))
///     .checkpoint_dir("target/doc-example/checkpoints");
/// ```
#[derive(Clone)]
pub struct JobConfig {
    pub(crate) parallelism: usize,
    pub(crate) checkpoint_interval: Option<Duration>,
    pub(crate) checkpoint_timeout: Duration,
    pub(crate) min_pause: Duration,
    pub(crate) retained: usize,
    pub(crate) max_state_deltas: usize,
    pub(crate) incremental: bool,
    pub(crate) storage: Option<StorageSetting>,
    pub(crate) restart: RestartStrategy,
    pub(crate) batch_size: usize,
    pub(crate) queue_capacity: usize,
    pub(crate) restore_from: Option<OsString>,
    pub(crate) codec: Codec,
    pub(crate) fault_hook: Option<FaultHook>,
    pub(crate) progress_interval: Option<Duration>,
    pub(crate) worker_threads: Option<usize>,
}

impl fmt::Debug for JobConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobConfig")
            .field("parallelism", &self.parallelism)
            .field("checkpoint_interval", &self.checkpoint_interval)
            .field("checkpoint_timeout", &self.checkpoint_timeout)
            .field("min_pause", &self.min_pause)
            .field("retained", &self.retained)
            .field("max_state_deltas", &self.max_state_deltas)
            .field("incremental", &self.incremental)
            .field("storage", &self.storage.as_ref().map(|_| "configured"))
            .field("restart", &self.restart)
            .field("batch_size", &self.batch_size)
            .field("queue_capacity", &self.queue_capacity)
            .field("restore_from", &self.restore_from)
            .field("codec", &self.codec)
            .field("fault_hook", &self.fault_hook.as_ref().map(|_| "set"))
            .field("progress_interval", &self.progress_interval)
            .field("worker_threads", &self.worker_threads)
            .finish()
    }
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            parallelism: 1,
            checkpoint_interval: None,
            checkpoint_timeout: Duration::from_secs(300),
            min_pause: Duration::ZERO,
            retained: 3,
            max_state_deltas: 4,
            incremental: true,
            storage: None,
            restart: RestartStrategy::default(),
            batch_size: 1024,
            queue_capacity: 16,
            restore_from: None,
            codec: Codec::default(),
            fault_hook: None,
            progress_interval: None,
            worker_threads: None,
        }
    }
}

impl JobConfig {
    /// The defaults: parallelism 1, checkpointing off, three restarts one
    /// second apart, batches of 1024 records, queues of 16 batches, bincode.
    pub fn new() -> Self {
        Self::default()
    }

    /// The parallelism of sources and of stages that do not set their own.
    #[must_use]
    pub fn parallelism(mut self, parallelism: usize) -> Self {
        self.parallelism = parallelism;
        self
    }

    /// Enables periodic checkpoints, triggered this often. Needs
    /// [`checkpoint_dir`](Self::checkpoint_dir) or
    /// [`checkpoint_storage`](Self::checkpoint_storage).
    ///
    /// Without an interval, the job still takes a final checkpoint when its
    /// input ends (which commits transactional sinks) and savepoints on
    /// request.
    #[must_use]
    pub fn checkpoint_interval(mut self, interval: Duration) -> Self {
        self.checkpoint_interval = Some(interval);
        self
    }

    /// A checkpoint not complete after this long is abandoned (default 5
    /// minutes; Flink's is 10). A transactional sink's transaction can live
    /// up to about two checkpoint timeouts
    /// ([`JobSettings::longest_transaction_lifetime`](crate::preflight::JobSettings::longest_transaction_lifetime)),
    /// and 5 minutes keeps that, plus a restart, within Kafka's default
    /// 15-minute transaction timeout.
    #[must_use]
    pub fn checkpoint_timeout(mut self, timeout: Duration) -> Self {
        self.checkpoint_timeout = timeout;
        self
    }

    /// The least time between the end of one checkpoint and the start of
    /// the next (default zero).
    #[must_use]
    pub fn min_pause_between_checkpoints(mut self, pause: Duration) -> Self {
        self.min_pause = pause;
        self
    }

    /// How many complete checkpoints to keep (default 3).
    #[must_use]
    pub fn retained_checkpoints(mut self, count: usize) -> Self {
        self.retained = count;
        self
    }

    /// How many deltas keyed state may pile up before they are compacted
    /// into a new base (default 4).
    ///
    /// Keyed state is checkpointed incrementally: the first checkpoint of
    /// a run writes every key, later ones only the keys that changed,
    /// in shared objects that later checkpoints reference. Once a complete
    /// checkpoint references more than this many deltas of a subtask's
    /// state, they are merged with their base in the background. A lower
    /// value makes restores faster and compacts more often, which writes a
    /// whole base more often; 0 compacts after every checkpoint. The
    /// default keeps the restore of 10 M keys after 100 checkpoints of 1 %
    /// changes within 1.2 times a full snapshot's, at a fifth of a full
    /// snapshot written per checkpoint on average (BENCHMARKS.md).
    ///
    /// ```
    /// use exactly::JobConfig;
    ///
    /// let config = JobConfig::new().max_state_deltas(8);
    /// ```
    #[must_use]
    pub fn max_state_deltas(mut self, deltas: usize) -> Self {
        self.max_state_deltas = deltas;
        self
    }

    /// Whether keyed state is checkpointed incrementally (default `true`):
    /// a checkpoint writes only the keys that changed since the previous
    /// one ([`Self::max_state_deltas`]). With `false`, every checkpoint
    /// writes every key, as Flink's full snapshots do: more bytes per
    /// checkpoint, and a restore that reads one object per subtask.
    ///
    /// ```
    /// use exactly::JobConfig;
    ///
    /// let full_snapshots = JobConfig::new().incremental_checkpoints(false);
    /// ```
    #[must_use]
    pub fn incremental_checkpoints(mut self, incremental: bool) -> Self {
        self.incremental = incremental;
        self
    }

    /// Keeps checkpoints at this location: a local directory (a plain path
    /// or a `file:///` URL), or a prefix in an S3-compatible object store
    /// (`s3://bucket/prefix`, configured from the standard AWS environment:
    /// see [`ObjectStorage::open`](crate::storage::ObjectStorage::open)).
    /// A job started again with the same location, on this machine or
    /// another, resumes from its newest complete checkpoint.
    ///
    /// ```
    /// use exactly::JobConfig;
    ///
    /// let local = JobConfig::new().checkpoint_dir("target/doc-example/checkpoints");
    /// let s3 = JobConfig::new().checkpoint_dir("s3://my-bucket/checkpoints/wordcount");
    /// ```
    #[must_use]
    pub fn checkpoint_dir(mut self, location: impl AsRef<OsStr>) -> Self {
        self.storage = Some(StorageSetting::Location(location.as_ref().to_owned()));
        self
    }

    /// Keeps checkpoints in custom storage.
    #[must_use]
    pub fn checkpoint_storage(mut self, storage: impl CheckpointStorage) -> Self {
        self.storage = Some(StorageSetting::Custom(Arc::new(storage)));
        self
    }

    /// What to do when a task fails.
    #[must_use]
    pub fn restart_strategy(mut self, strategy: RestartStrategy) -> Self {
        self.restart = strategy;
        self
    }

    /// Records per batch read from a source (default 1024).
    #[must_use]
    pub fn batch_size(mut self, records: usize) -> Self {
        self.batch_size = records;
        self
    }

    /// Batches a queue between two tasks holds before the sender waits
    /// (default 16).
    #[must_use]
    pub fn queue_capacity(mut self, batches: usize) -> Self {
        self.queue_capacity = batches;
        self
    }

    /// Starts from this savepoint or checkpoint (a directory, or an
    /// `s3://bucket/prefix`) instead of the newest checkpoint in the
    /// checkpoint storage.
    ///
    /// The first start from it records a new lineage in the checkpoint
    /// directory ([`crate::storage::LineageRecord`]), and a start resumes
    /// only checkpoints of that lineage: a later start with the same
    /// savepoint continues from the lineage's newest checkpoint, or restores
    /// the savepoint again while the lineage has none; checkpoints of older
    /// runs in the directory are never resumed, whatever their ids.
    #[must_use]
    pub fn restore_from(mut self, location: impl AsRef<OsStr>) -> Self {
        self.restore_from = Some(location.as_ref().to_owned());
        self
    }

    /// The codec new snapshots are written with (default bincode). Old
    /// snapshots are read with the codec named in their header.
    #[must_use]
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Installs a fault-injection hook; see [`crate::fault`].
    #[must_use]
    pub fn fault_hook(mut self, hook: FaultHook) -> Self {
        self.fault_hook = Some(hook);
        self
    }

    /// Logs a progress line (records per second, checkpoints) this often,
    /// as a `tracing` event at `info` level: on stderr when the application
    /// installed no subscriber, else wherever its subscriber sends it.
    #[must_use]
    pub fn progress_interval(mut self, every: Duration) -> Self {
        self.progress_interval = Some(every);
        self
    }

    /// Worker threads of the runtime [`crate::Job::run`] creates (default:
    /// one per core).
    #[must_use]
    pub fn worker_threads(mut self, threads: usize) -> Self {
        self.worker_threads = Some(threads);
        self
    }

    /// Checks every value; called when the job starts.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the setting and what to change.
    pub fn validate(&self) -> Result<()> {
        let positive = |value: usize, setting: &str, what: &str| {
            if value == 0 {
                Err(Error::config(
                    setting,
                    format!("{what} must be at least 1, got 0"),
                ))
            } else {
                Ok(())
            }
        };
        positive(
            self.parallelism,
            "JobConfig::parallelism",
            "the parallelism",
        )?;
        positive(self.batch_size, "JobConfig::batch_size", "the batch size")?;
        positive(
            self.queue_capacity,
            "JobConfig::queue_capacity",
            "the queue capacity",
        )?;
        positive(
            self.retained,
            "JobConfig::retained_checkpoints",
            "the number of retained checkpoints",
        )?;
        if let Some(threads) = self.worker_threads {
            positive(
                threads,
                "JobConfig::worker_threads",
                "the number of worker threads",
            )?;
        }
        if self.checkpoint_interval == Some(Duration::ZERO) {
            return Err(Error::config(
                "JobConfig::checkpoint_interval",
                "the interval must be positive; leave it unset to disable periodic checkpoints",
            ));
        }
        if self.checkpoint_timeout.is_zero() {
            return Err(Error::config(
                "JobConfig::checkpoint_timeout",
                "the timeout must be positive",
            ));
        }
        if self.checkpoint_interval.is_some() && self.storage.is_none() {
            return Err(Error::config(
                "JobConfig::checkpoint_interval",
                "checkpointing is enabled but no checkpoint storage is set; call JobConfig::checkpoint_dir(path)",
            ));
        }
        if let Some(StorageSetting::Location(given)) = &self.storage {
            Location::parse(given)
                .map_err(|e| Error::config("JobConfig::checkpoint_dir", e.to_string()))?;
        }
        self.restore_location()?;
        if self.progress_interval == Some(Duration::ZERO) {
            return Err(Error::config(
                "JobConfig::progress_interval",
                "the interval must be positive",
            ));
        }
        Ok(())
    }
}

impl JobConfig {
    /// Opens the configured checkpoint storage, once per job start.
    pub(crate) fn open_storage(&self) -> Result<Option<Arc<dyn CheckpointStorage>>> {
        match &self.storage {
            None => Ok(None),
            Some(StorageSetting::Custom(storage)) => Ok(Some(Arc::clone(storage))),
            Some(StorageSetting::Location(given)) => Location::parse(given)
                .and_then(|location| location.open_storage())
                .map(Some)
                .map_err(|e| Error::config("JobConfig::checkpoint_dir", e.to_string())),
        }
    }

    /// The savepoint or checkpoint given to [`JobConfig::restore_from`].
    pub(crate) fn restore_location(&self) -> Result<Option<Location>> {
        self.restore_from
            .as_ref()
            .map(|given| {
                Location::parse(given)
                    .map_err(|e| Error::config("JobConfig::restore_from", e.to_string()))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_name_the_setting() {
        let cases = [
            (JobConfig::new().parallelism(0), "JobConfig::parallelism"),
            (JobConfig::new().batch_size(0), "JobConfig::batch_size"),
            (
                JobConfig::new().queue_capacity(0),
                "JobConfig::queue_capacity",
            ),
            (
                JobConfig::new()
                    .checkpoint_interval(Duration::ZERO)
                    .checkpoint_dir("x"),
                "JobConfig::checkpoint_interval",
            ),
            (
                JobConfig::new().checkpoint_interval(Duration::from_secs(1)),
                "checkpoint_dir(path)",
            ),
            (
                JobConfig::new().checkpoint_timeout(Duration::ZERO),
                "JobConfig::checkpoint_timeout",
            ),
        ];
        for (config, expected) in cases {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(expected), "{err} does not mention {expected}");
        }
        JobConfig::new()
            .checkpoint_interval(Duration::from_millis(100))
            .checkpoint_dir("x")
            .validate()
            .unwrap();
    }
}
