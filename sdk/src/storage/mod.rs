//! Checkpoint storage: where snapshots live and what makes a checkpoint
//! complete.
//!
//! Owns: the [`CheckpointStorage`] trait, the checkpoint metadata format
//! (with the lineage a checkpoint belongs to, [`LineageRecord`]), the
//! snapshot [`frame`], where storage lives ([`Location`]), the embedded
//! default, [`LocalStorage`] (a local directory), [`ObjectStorage`] (S3 and
//! other object stores), copying a checkpoint into a savepoint of either
//! kind (module `savepoint`), and the naming and garbage collection of
//! shared objects, the segments of incremental keyed state that several
//! checkpoints reference (module `shared`). Does not own when checkpoints
//! are taken or what goes into them: that is `runtime::coordinator`.
//!
//! A checkpoint is complete once, and only once, its metadata is durable
//! (and, in object storage, recorded in the claim object); every task
//! state and shared object it names was made durable before it.

pub mod frame;
mod local;
mod location;
#[cfg(feature = "s3")]
mod object;
pub(crate) mod savepoint;
pub(crate) mod shared;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use local::LocalStorage;
pub(crate) use local::{METADATA_FILE, io, sync_dir};
pub use location::Location;
#[cfg(feature = "s3")]
pub use object::ObjectStorage;

/// Reading or writing checkpoint storage failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// An I/O operation failed.
    #[error("checkpoint storage: cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done, such as "write" or "rename".
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A snapshot file is corrupt, truncated, or from an unsupported format.
    #[error("corrupt snapshot {file}: {reason}")]
    Corrupt {
        /// The file or object.
        file: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A checkpoint location is not a path or a supported URL.
    #[error("checkpoint location {given:?}: {reason}")]
    Location {
        /// The location as given.
        given: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The object-store client could not be configured.
    #[cfg(feature = "s3")]
    #[error(
        "checkpoint storage {location}: cannot configure the S3 client from the AWS environment \
         (AWS_REGION, AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY): {source}"
    )]
    ObjectStoreConfig {
        /// The storage's location.
        location: String,
        /// What the client said (boxed: it is large).
        #[source]
        source: Box<object_store::Error>,
    },
    /// An object-store request failed, after the client's retries.
    #[cfg(feature = "s3")]
    #[error(
        "checkpoint storage: cannot {action} {location}: {source}; check the S3 settings (AWS_ENDPOINT_URL, \
         AWS_REGION, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or an instance role), that the bucket exists, and that \
         these credentials may read and write it"
    )]
    Object {
        /// What was being done, such as "write" or "list".
        action: &'static str,
        /// The object or prefix.
        location: String,
        /// What the client said (boxed: it is large).
        #[source]
        source: Box<object_store::Error>,
    },
    /// Another process claimed the checkpoint storage after this one: this
    /// one must stop, and a restart would fence the newer one in turn.
    #[error(
        "checkpoint storage {location} was claimed by {holder} after this process (generation {generation}): \
         a newer run of this job took over, so this one stops without completing checkpoints or committing"
    )]
    Fenced {
        /// The storage's location.
        location: String,
        /// This process's generation.
        generation: u64,
        /// The newer holder, as it described itself.
        holder: String,
    },
    /// A write found something it must not overwrite.
    #[error("checkpoint storage: {location}: {reason}")]
    Conflict {
        /// The object.
        location: String,
        /// What was found.
        reason: String,
    },
    /// A write that needs the storage's claim, before it was claimed.
    #[error(
        "checkpoint storage {location} is not claimed by this process: call CheckpointStorage::claim before writing"
    )]
    NotClaimed {
        /// The storage's location.
        location: String,
    },
    /// The checkpoint was discarded (it expired) while a late task state
    /// was being written to it: the state is not needed any more.
    #[error("checkpoint {checkpoint} was discarded before this task state could be written")]
    Discarded {
        /// The checkpoint id.
        checkpoint: u64,
    },
    /// Another job holds the checkpoint directory.
    #[error(
        "checkpoint directory {} is in use by another job ({holder}): two jobs on one directory would interleave \
         their checkpoint ids and commit markers; stop the other one, or give this job its own checkpoint_dir",
        path.display()
    )]
    InUse {
        /// The directory.
        path: PathBuf,
        /// Who holds it, as it wrote itself into the lock file.
        holder: String,
    },
    /// A location does not hold a complete checkpoint or savepoint.
    #[error("{location} is not a complete checkpoint or savepoint: {reason}")]
    NotACheckpoint {
        /// The directory or prefix.
        location: Location,
        /// Why.
        reason: String,
    },
}

/// 64 random bits in hex, from the standard library's hasher seed: for
/// lineage ids and object names that must never repeat.
pub(crate) fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{random:016x}")
}

/// Identifies one subtask's state file inside a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStateHandle {
    /// Index of the stage in the job graph.
    pub stage: usize,
    /// Index of the subtask in the stage.
    pub subtask: usize,
    /// File name, relative to the checkpoint's location.
    pub file: String,
    /// Size of the file in bytes.
    pub bytes: u64,
    /// The shared objects ([`CompletedCheckpoint::shared_location`]) the
    /// file references: the segments of its incremental keyed state.
    pub shared: Vec<String>,
}

/// [`TaskStateHandle`] as format versions 1 to 3 wrote it: without shared
/// objects.
#[derive(Serialize, Deserialize)]
pub(crate) struct TaskStateHandleV3 {
    stage: usize,
    subtask: usize,
    file: String,
    bytes: u64,
}

impl From<TaskStateHandleV3> for TaskStateHandle {
    fn from(old: TaskStateHandleV3) -> Self {
        TaskStateHandle {
            stage: old.stage,
            subtask: old.subtask,
            file: old.file,
            bytes: old.bytes,
            shared: Vec::new(),
        }
    }
}

/// The shape of one stage, recorded so that a restore can check that the
/// checkpoint belongs to this job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageMetadata {
    /// The stage's name: its source or input, then its chained operators.
    pub name: String,
    /// The ids of the stateful parts of the stage (source, operators, sink),
    /// in chain order.
    pub operators: Vec<String>,
    /// The stage's parallelism when the checkpoint was taken.
    pub parallelism: usize,
}

/// The file written last: its presence makes a checkpoint complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMetadata {
    /// The job name.
    pub job: String,
    /// The checkpoint id (increasing within a checkpoint directory).
    pub checkpoint_id: u64,
    /// When the checkpoint was triggered, in milliseconds since the epoch.
    pub triggered_unix_ms: u64,
    /// The job graph's stages.
    pub stages: Vec<StageMetadata>,
    /// One state file per subtask.
    pub task_states: Vec<TaskStateHandle>,
    /// The lineage the checkpoint belongs to ([`LineageRecord`]): a start
    /// resumes only checkpoints of its directory's current lineage. `None`
    /// is the default lineage: checkpoints of runs never started from a
    /// savepoint, and every checkpoint of format version 2 or older.
    pub lineage: Option<String>,
}

/// [`CheckpointMetadata`] as format versions 1 and 2 wrote it: without a
/// lineage or shared objects.
#[derive(Serialize, Deserialize)]
pub(crate) struct MetadataV2 {
    job: String,
    checkpoint_id: u64,
    triggered_unix_ms: u64,
    stages: Vec<StageMetadata>,
    task_states: Vec<TaskStateHandleV3>,
}

/// [`CheckpointMetadata`] as format version 3 wrote it: without shared
/// objects.
#[derive(Serialize, Deserialize)]
struct MetadataV3 {
    job: String,
    checkpoint_id: u64,
    triggered_unix_ms: u64,
    stages: Vec<StageMetadata>,
    task_states: Vec<TaskStateHandleV3>,
    lineage: Option<String>,
}

impl From<&CheckpointMetadata> for MetadataV2 {
    /// The metadata as format version 2 wrote it, for tests and benches
    /// that write what an older build wrote: its lineage and shared
    /// objects are dropped.
    fn from(metadata: &CheckpointMetadata) -> Self {
        MetadataV2 {
            job: metadata.job.clone(),
            checkpoint_id: metadata.checkpoint_id,
            triggered_unix_ms: metadata.triggered_unix_ms,
            stages: metadata.stages.clone(),
            task_states: metadata
                .task_states
                .iter()
                .map(|h| TaskStateHandleV3 {
                    stage: h.stage,
                    subtask: h.subtask,
                    file: h.file.clone(),
                    bytes: h.bytes,
                })
                .collect(),
        }
    }
}

impl CheckpointMetadata {
    /// Decodes the metadata payload of `frame`, read from `file`, in the
    /// layout of its format version: before version 3 it has no lineage
    /// (the default lineage), before version 4 no shared objects.
    ///
    /// # Errors
    ///
    /// [`StorageError::Corrupt`] when the payload does not decode.
    pub fn decode(
        frame: &frame::Frame<'_>,
        file: &dyn std::fmt::Display,
    ) -> Result<Self, StorageError> {
        let corrupt = |e: crate::codec::CodecError| StorageError::Corrupt {
            file: file.to_string(),
            reason: e.to_string(),
        };
        let codec = frame.codec;
        let old = match frame.version {
            4.. => {
                return codec
                    .decode(frame.payload, "checkpoint metadata")
                    .map_err(corrupt);
            }
            3 => codec
                .decode::<MetadataV3>(frame.payload, "checkpoint metadata")
                .map_err(corrupt)?,
            _ => {
                let v2: MetadataV2 = codec
                    .decode(frame.payload, "checkpoint metadata")
                    .map_err(corrupt)?;
                MetadataV3 {
                    job: v2.job,
                    checkpoint_id: v2.checkpoint_id,
                    triggered_unix_ms: v2.triggered_unix_ms,
                    stages: v2.stages,
                    task_states: v2.task_states,
                    lineage: None,
                }
            }
        };
        Ok(CheckpointMetadata {
            job: old.job,
            checkpoint_id: old.checkpoint_id,
            triggered_unix_ms: old.triggered_unix_ms,
            stages: old.stages,
            task_states: old.task_states.into_iter().map(Into::into).collect(),
            lineage: old.lineage,
        })
    }
}

/// What a checkpoint directory records when a run starts from a savepoint
/// (`JobConfig::restore_from`), before anything else: a fresh lineage id,
/// which every checkpoint of that run records in its metadata, and the
/// savepoint it started from.
///
/// Flink's anchor: a job restored from a savepoint gets a new job id, and
/// its checkpoints live under that id's directory, so the checkpoints of
/// older runs are never picked up. Here one directory holds several runs,
/// and the lineage tells them apart: a start resumes only the newest
/// checkpoint of the current lineage, and while that lineage has completed
/// none, restores its savepoint again. Sink commit markers carry the
/// lineage too, and a restore ignores those of another lineage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineageRecord {
    /// The lineage id, or `None` for the default lineage (a directory an
    /// older build recorded a savepoint origin in, whose checkpoints carry
    /// no lineage).
    pub lineage: Option<String>,
    /// What identifies the savepoint ([`CompletedCheckpoint::origin`]).
    pub origin: String,
    /// Where the savepoint was restored from, if recorded (older builds did
    /// not).
    pub savepoint: Option<Location>,
}

/// Holds a claim on checkpoint storage ([`CheckpointStorage::claim`])
/// until dropped.
#[derive(Debug)]
pub struct StorageClaim {
    /// What keeps the claim (a locked file), released when dropped.
    _held: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl StorageClaim {
    /// A claim on `held` (for example a locked file), released on drop.
    pub fn new(held: impl std::any::Any + Send + Sync) -> Self {
        StorageClaim {
            _held: Some(Box::new(held)),
        }
    }

    /// A claim that holds nothing, for storage that cannot be locked.
    pub fn none() -> Self {
        StorageClaim { _held: None }
    }
}

/// A complete checkpoint or savepoint that can be restored.
#[derive(Debug, Clone)]
pub struct CompletedCheckpoint {
    /// Its directory or object prefix.
    pub location: Location,
    /// Its metadata.
    pub metadata: CheckpointMetadata,
}

impl CompletedCheckpoint {
    /// What identifies it wherever it is copied: job, checkpoint id and
    /// trigger time.
    pub fn origin(&self) -> String {
        format!(
            "{} checkpoint {} triggered at {} ms",
            self.metadata.job, self.metadata.checkpoint_id, self.metadata.triggered_unix_ms
        )
    }
}

impl CompletedCheckpoint {
    /// The checkpoint id.
    pub fn id(&self) -> u64 {
        self.metadata.checkpoint_id
    }
}

/// Durable storage for checkpoints. [`LocalStorage`] is the embedded
/// default, [`ObjectStorage`] keeps them in S3; other backends implement
/// the same contract.
///
/// All methods block on I/O; the runtime calls them from the blocking pool.
pub trait CheckpointStorage: Send + Sync + 'static {
    /// Starts checkpoint `checkpoint_id` (for a directory store, creates its
    /// directory). Called by the coordinator before any task writes to it.
    fn begin_checkpoint(&self, checkpoint_id: u64) -> Result<(), StorageError>;

    /// Makes one subtask's framed state durable under checkpoint
    /// `checkpoint_id` and returns its handle. Fails with
    /// [`StorageError::Discarded`] when the checkpoint was discarded (or
    /// never begun), so that a late snapshot of an expired checkpoint is
    /// dropped rather than failing its task.
    fn write_task_state(
        &self,
        checkpoint_id: u64,
        stage: usize,
        subtask: usize,
        framed: &[u8],
    ) -> Result<TaskStateHandle, StorageError>;

    /// Makes a shared object durable under `name` in
    /// [`Self::shared_location`]: a segment of incremental keyed state that
    /// this checkpoint and later ones reference. `name` is fresh (it is
    /// never written twice). Unlike a task state, it is written even when
    /// its checkpoint was discarded, since later checkpoints of the same
    /// task reference it.
    fn write_shared(&self, name: &str, framed: &[u8]) -> Result<(), StorageError>;

    /// Where this storage keeps shared objects: the `shared/` folder beside
    /// the `chk-<id>` folders.
    fn shared_location(&self) -> Location;

    /// Reads the shared object `name` in `shared`: this storage's
    /// [`Self::shared_location`], or the
    /// [`CompletedCheckpoint::shared_location`] of a checkpoint or savepoint
    /// it can read.
    fn read_shared(&self, shared: &Location, name: &str) -> Result<Vec<u8>, StorageError>;

    /// Makes the metadata durable, which completes the checkpoint. Called
    /// only after every task state it names was written.
    fn complete(
        &self,
        metadata: &CheckpointMetadata,
        framed: &[u8],
    ) -> Result<CompletedCheckpoint, StorageError>;

    /// Removes whatever an abandoned checkpoint wrote.
    fn discard(&self, checkpoint_id: u64) -> Result<(), StorageError>;

    /// The newest complete checkpoint, if any, of any lineage.
    fn latest(&self) -> Result<Option<CompletedCheckpoint>, StorageError>;

    /// The newest complete checkpoint of lineage `lineage` (`None`: the
    /// default lineage), if any: the one a start of that lineage resumes.
    fn latest_in_lineage(
        &self,
        lineage: Option<&str>,
    ) -> Result<Option<CompletedCheckpoint>, StorageError>;

    /// The highest checkpoint id ever started here, complete or not, so that
    /// a restarted job never reuses an id.
    fn highest_id(&self) -> Result<u64, StorageError>;

    /// Reads one task state file of `checkpoint`.
    fn read_task_state(
        &self,
        checkpoint: &CompletedCheckpoint,
        handle: &TaskStateHandle,
    ) -> Result<Vec<u8>, StorageError>;

    /// Deletes all but the newest `keep` complete checkpoints, abandoned
    /// incomplete ones older than the newest complete checkpoint, and the
    /// shared objects that no kept checkpoint references and that were
    /// written at a checkpoint no newer than the newest complete one.
    fn retain(&self, keep: usize) -> Result<(), StorageError>;

    /// Records that subtask `subtask` of stage `stage`, in lineage
    /// `lineage` (`None`: the default lineage), has committed every sink
    /// transaction of checkpoint `checkpoint_id` and earlier. Written after
    /// the commits, so a crash before it only means that a restore commits
    /// those transactions again (commits are idempotent).
    fn write_commit_marker(
        &self,
        stage: usize,
        subtask: usize,
        lineage: Option<&str>,
        checkpoint_id: u64,
    ) -> Result<(), StorageError>;

    /// The checkpoint up to which subtask `subtask` of stage `stage` is
    /// known to have committed its sink transactions in lineage `lineage`,
    /// if recorded. A marker of another lineage counts as none: its
    /// checkpoint ids say nothing about this lineage's transactions.
    fn read_commit_marker(
        &self,
        stage: usize,
        subtask: usize,
        lineage: Option<&str>,
    ) -> Result<Option<u64>, StorageError>;

    /// Claims the storage for one running job until the returned guard is
    /// dropped (or the process dies). `job` describes the claimer. A
    /// storage that can lock ([`LocalStorage`]) fails a second claim with
    /// [`StorageError::InUse`] naming the holder; one that cannot tell a
    /// dead holder from a live one ([`ObjectStorage`]) takes the claim over
    /// and fences the previous holder, whose later writes fail with
    /// [`StorageError::Fenced`].
    fn claim(&self, job: &str) -> Result<StorageClaim, StorageError>;

    /// Records, durably, that the checkpoints written from now on belong to
    /// `record`'s lineage, which starts from its savepoint. Replaces any
    /// earlier record.
    fn write_lineage(&self, record: &LineageRecord) -> Result<(), StorageError>;

    /// The current lineage of this storage, if one was recorded; `None`: the
    /// default lineage.
    fn read_lineage(&self) -> Result<Option<LineageRecord>, StorageError>;
}
