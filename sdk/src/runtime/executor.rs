//! Running a job: attempts, restore, and the restart strategy.
//!
//! Owns: starting a job (its driver task, with the progress reporter and
//! the log subscriber every task inherits), choosing the lineage a run
//! continues or begins (a savepoint given with `restore_from` begins one)
//! and the checkpoint an attempt restores (the newest complete one of that
//! lineage, or else the savepoint it started from), checking it belongs to
//! this job, loading its state, building
//! every subtask from the job graph, running them with the coordinator, and
//! on a failure stopping them all, waiting for their blocking calls to
//! return, and restarting after the configured delay. Does not own the
//! checkpoint protocol ([`super::coordinator`]) or what a subtask is built
//! from ([`super::graph`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::instrument::WithSubscriber;

use super::blocking::{self, BlockingCalls};
use super::coordinator::{CheckpointPlan, Coordinator, JobCommand, Requests, TaskLink};
use super::element::{BoxFuture, RestoredStage, StateEntry, StoredEntry};
use super::env::SubtaskEnv;
use super::exchange::DownstreamStopped;
use super::graph::JobGraph;
use super::progress;
use crate::codec::Codec;
use crate::config::JobConfig;
use crate::context::SubtaskContext;
use crate::error::{Error, Result, panic_message};
use crate::fault::Faults;
use crate::metrics::JobMetrics;
use crate::preflight::{self, JobSettings};
use crate::storage::frame::{self, PayloadKind};
use crate::storage::{
    CheckpointStorage, CompletedCheckpoint, LineageRecord, Location, StageMetadata,
};

/// A job started by [`start`]: what its handle needs.
pub(crate) struct Started {
    /// Requests to the job (stop, savepoint).
    pub(crate) commands: UnboundedSender<JobCommand>,
    /// The job's driver task.
    pub(crate) task: JoinHandle<Result<()>>,
    /// The job's counters.
    pub(crate) metrics: Arc<JobMetrics>,
}

/// Starts the job `graph` on `runtime`, with its progress reporter if the
/// configuration asks for one. Every task of the job logs to the caller's
/// subscriber, or to the fallback of [`progress::dispatch`].
pub(crate) fn start(
    runtime: &tokio::runtime::Handle,
    name: String,
    config: JobConfig,
    graph: JobGraph,
) -> Started {
    let (commands, commands_rx) = unbounded_channel();
    let metrics = Arc::new(JobMetrics::default());
    let progress = config.progress_interval;
    let executor = Executor {
        name: name.clone(),
        graph,
        config,
        metrics: Arc::clone(&metrics),
        commands: commands_rx,
        requests: Requests::default(),
        storage: None,
    };
    let reporter_metrics = Arc::clone(&metrics);
    let job = async move {
        let reporter = progress.map(|every| {
            tokio::spawn(progress::report(name, every, reporter_metrics).with_current_subscriber())
        });
        let result = executor.run().await;
        if let Some(reporter) = reporter {
            reporter.abort();
        }
        result
    };
    Started {
        commands,
        task: runtime.spawn(job.with_subscriber(progress::dispatch())),
        metrics,
    }
}

/// A job ready to run.
struct Executor {
    name: String,
    graph: JobGraph,
    config: JobConfig,
    metrics: Arc<JobMetrics>,
    commands: UnboundedReceiver<JobCommand>,
    /// The stop and savepoints asked for through the handle, kept across
    /// attempts.
    requests: Requests,
    /// The checkpoint storage, opened once when the job starts.
    storage: Option<Arc<dyn CheckpointStorage>>,
}

/// The lineage a run continues or begins ([`LineageRecord`]).
struct Lineage {
    /// The id its checkpoints record (`None`: the default lineage).
    id: Option<String>,
    /// What to restore while the lineage has no complete checkpoint: the
    /// savepoint it started from.
    savepoint: Option<Restore>,
}

/// A complete checkpoint or savepoint to restore, and the storage its task
/// states are read through: the job's own for its checkpoints, the
/// savepoint's for a savepoint.
#[derive(Clone)]
struct Restore {
    checkpoint: CompletedCheckpoint,
    storage: Arc<dyn CheckpointStorage>,
}

impl Restore {
    /// The savepoint or checkpoint at `location`, read through a storage
    /// rooted there.
    fn open(location: &Location) -> Result<Restore, crate::storage::StorageError> {
        let (checkpoint, storage) = location.open_checkpoint()?;
        Ok(Restore {
            checkpoint,
            storage,
        })
    }
}

/// A fresh lineage id: the time in milliseconds and 64 random bits, in hex.
fn new_lineage_id() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{ms:x}-{}", crate::storage::random_hex())
}

/// Whether a failure may be retried.
enum Failure {
    /// A restart cannot help (for example a corrupt checkpoint, or an error
    /// marked [`crate::Unrecoverable`]).
    Fatal(Error),
    Retry(Error),
}

impl Executor {
    /// Runs attempts until the job finishes or the restart strategy gives up.
    async fn run(mut self) -> Result<()> {
        let storage = self.config.open_storage()?;
        self.storage = storage.clone();
        let stages: Vec<StageMetadata> = self.graph.stages.iter().map(|s| s.metadata()).collect();
        let explicit = match self.config.restore_location()? {
            Some(location) => Some(
                blocking::call("reading the savepoint", move || Restore::open(&location)).await??,
            ),
            None => None,
        };
        self.preflight().await?;
        // Held until the job ends: a second job on this directory fails.
        let _claim = match &storage {
            Some(storage) => {
                let (storage, job) = (Arc::clone(storage), self.name.clone());
                Some(
                    blocking::call("claiming checkpoint storage", move || storage.claim(&job))
                        .await??,
                )
            }
            None => None,
        };
        let lineage = match &storage {
            Some(storage) => self.lineage(storage, explicit).await?,
            None => Lineage {
                id: None,
                savepoint: explicit,
            },
        };
        let mut failures = 0u32;
        loop {
            // The newest checkpoint of this run's lineage, or else the
            // savepoint the lineage started from: never a checkpoint of
            // another lineage, whatever its id.
            let restore = match &storage {
                Some(storage) => latest_in_lineage(storage, lineage.id.clone())
                    .await?
                    .map(|checkpoint| Restore {
                        checkpoint,
                        storage: Arc::clone(storage),
                    })
                    .or_else(|| lineage.savepoint.clone()),
                None => lineage.savepoint.clone(),
            };
            match self
                .attempt(failures, restore, lineage.id.clone(), &stages)
                .await
            {
                Ok(()) => return Ok(()),
                Err(Failure::Fatal(e)) => {
                    self.requests.job_failed();
                    return Err(e);
                }
                Err(Failure::Retry(e)) => {
                    failures += 1;
                    let strategy = self.config.restart;
                    if failures > strategy.max_restarts {
                        self.requests.job_failed();
                        return Err(Error::RestartsExhausted {
                            job: self.name.clone(),
                            failures,
                            max_restarts: strategy.max_restarts,
                            last: Box::new(e),
                        });
                    }
                    // The job restarts: the savepoints it owed fail with
                    // this cause, and it keeps running without them.
                    let e = Arc::new(e);
                    self.requests.attempt_failed(&e);
                    JobMetrics::add(&self.metrics.restarts, 1);
                    tracing::warn!(
                        job = %self.name,
                        "job failed ({e}); restart {failures} of {} in {:?}, from the last complete checkpoint",
                        strategy.max_restarts,
                        strategy.delay
                    );
                    tokio::time::sleep(strategy.delay).await;
                }
            }
        }
    }

    /// Chooses the lineage this start continues or begins
    /// ([`LineageRecord`]), given the savepoint of `JobConfig::restore_from`:
    ///
    /// - the savepoint the directory's lineage started from: that lineage
    ///   goes on (Flink's rule for a job its supervisor starts again
    ///   unchanged: it must not go back to the savepoint and write again
    ///   what it committed since), from its newest checkpoint, or from the
    ///   savepoint while it has completed none;
    /// - another savepoint: a new lineage, recorded before anything else,
    ///   so that no checkpoint of an older run is ever resumed (Flink gives
    ///   a job restored from a savepoint a new job id and checkpoint
    ///   directory);
    /// - none: the recorded lineage goes on, from the savepoint it started
    ///   from while it has no checkpoint; without a record, the default
    ///   lineage.
    async fn lineage(
        &self,
        storage: &Arc<dyn CheckpointStorage>,
        savepoint: Option<Restore>,
    ) -> Result<Lineage> {
        let recorded = {
            let storage = Arc::clone(storage);
            blocking::call("reading the lineage", move || storage.read_lineage()).await??
        };
        match (savepoint, recorded) {
            (Some(savepoint), Some(record)) if record.origin == savepoint.checkpoint.origin() => {
                tracing::info!(
                    job = %self.name,
                    savepoint = %savepoint.checkpoint.location,
                    lineage = record.lineage.as_deref().unwrap_or("default"),
                    "continuing the lineage of the savepoint given with restore_from: resuming its newest \
                     checkpoint, if it has one (start with an empty checkpoint directory to replay the savepoint)"
                );
                Ok(Lineage {
                    id: record.lineage,
                    savepoint: Some(savepoint),
                })
            }
            (Some(savepoint), _) => {
                // Absolute, so that a later start from another working
                // directory still finds it.
                let record = LineageRecord {
                    lineage: Some(new_lineage_id()),
                    origin: savepoint.checkpoint.origin(),
                    savepoint: Some(savepoint.checkpoint.location.absolute()),
                };
                tracing::info!(
                    job = %self.name,
                    savepoint = %savepoint.checkpoint.location,
                    lineage = record.lineage.as_deref().unwrap_or_default(),
                    "starting a new lineage from the savepoint given with restore_from"
                );
                let id = record.lineage.clone();
                let storage = Arc::clone(storage);
                blocking::call("recording the lineage", move || {
                    storage.write_lineage(&record)
                })
                .await??;
                Ok(Lineage {
                    id,
                    savepoint: Some(savepoint),
                })
            }
            (None, Some(record)) => {
                let savepoint = match &record.savepoint {
                    Some(location)
                        if latest_in_lineage(storage, record.lineage.clone())
                            .await?
                            .is_none() =>
                    {
                        let opened = location.clone();
                        let savepoint =
                            blocking::call("reading the lineage's savepoint", move || {
                                Restore::open(&opened)
                            })
                            .await?
                            .map_err(|source| {
                                Error::LineageSavepoint {
                                    lineage: record
                                        .lineage
                                        .clone()
                                        .unwrap_or_else(|| "default".into()),
                                    savepoint: location.clone(),
                                    source: Box::new(source),
                                }
                            })?;
                        Some(savepoint)
                    }
                    _ => None,
                };
                Ok(Lineage {
                    id: record.lineage,
                    savepoint,
                })
            }
            (None, None) => Ok(Lineage {
                id: None,
                savepoint: None,
            }),
        }
    }

    /// Runs every source's and sink's start-up check and logs their
    /// notices.
    async fn preflight(&mut self) -> Result<()> {
        let settings = JobSettings {
            job: self.name.clone(),
            checkpoint_interval: self.config.checkpoint_interval,
            checkpoint_timeout: self.config.checkpoint_timeout,
            min_pause: self.config.min_pause,
            restart: self.config.restart,
        };
        let checks = std::mem::take(&mut self.graph.preflight);
        let notices = blocking::call("a preflight check", move || {
            preflight::run(&checks, &settings)
        })
        .await??;
        for notice in notices {
            tracing::info!(job = %self.name, "notice: {notice}");
        }
        Ok(())
    }

    async fn attempt(
        &mut self,
        attempt: u32,
        restore: Option<Restore>,
        lineage: Option<String>,
        stages: &[StageMetadata],
    ) -> Result<(), Failure> {
        let codec = self.config.codec;
        let restore_started = Instant::now();
        let restored = match &restore {
            Some(restore) => {
                let restore = restore.clone();
                let expected = stages.to_vec();
                blocking::call("loading the checkpoint", move || {
                    load_checkpoint(&*restore.storage, &restore.checkpoint, &expected)
                })
                .await
                .map_err(|e| Failure::Fatal(e.into()))?
                .map_err(Failure::Fatal)?
            }
            None => vec![None; stages.len()],
        };
        let restore = restore.map(|r| r.checkpoint);
        if let Some(checkpoint) = &restore {
            tracing::info!(job = %self.name, checkpoint = checkpoint.id(), location = %checkpoint.location, "restoring");
        }
        let storage = self.storage.clone();
        let first_checkpoint = highest_id(&storage)
            .await
            .map_err(Failure::Fatal)?
            .max(restore.as_ref().map_or(0, |c| c.id()))
            + 1;

        let gates = Arc::new(self.graph.gates(self.config.queue_capacity));

        let (events_tx, events_rx) = unbounded_channel();
        let (completed_tx, completed_rx) = watch::channel(restore.as_ref().map_or(0, |c| c.id()));
        let link = TaskLink {
            events: events_tx,
            completed: completed_rx,
            storage: storage.clone(),
            first_checkpoint,
            checkpoint_timeout: self.config.checkpoint_timeout,
            lineage: lineage.clone(),
        };
        let blocking = BlockingCalls::default();
        let faults = Faults(self.config.fault_hook.clone());

        let mut tasks: JoinSet<Result<()>> = JoinSet::new();
        let mut names = HashMap::new();
        let mut sources = Vec::new();
        let mut expected_acks = 0;
        for (index, stage) in self.graph.stages.iter().enumerate() {
            for subtask in 0..stage.parallelism {
                let commands = if stage.is_source {
                    let (tx, rx) = unbounded_channel();
                    sources.push(tx);
                    Some(rx)
                } else {
                    None
                };
                let env = SubtaskEnv {
                    ctx: SubtaskContext {
                        job: self.name.clone(),
                        stage: stage.name(),
                        index: subtask,
                        parallelism: stage.parallelism,
                        attempt,
                    },
                    stage: index,
                    codec,
                    batch_size: self.config.batch_size,
                    max_state_deltas: self.config.max_state_deltas,
                    incremental: self.config.incremental,
                    restored: restored[index].clone(),
                    gates: Arc::clone(&gates),
                    blocking: blocking.clone(),
                    faults: faults.clone(),
                    metrics: Arc::clone(&self.metrics),
                    link: link.clone(),
                    commands,
                    previous_upload: std::sync::Mutex::new(None),
                };
                let name = env.task_name();
                let future: BoxFuture<'static, Result<()>> =
                    stage.build(env).map_err(Failure::Fatal)?;
                let handle = tasks.spawn(future.with_current_subscriber());
                names.insert(handle.id(), name);
                expected_acks += 1;
            }
        }
        if restore.is_some() {
            JobMetrics::set(
                &self.metrics.last_restore_micros,
                restore_started.elapsed().as_micros() as u64,
            );
        }
        drop(link);

        let coordinator = Coordinator {
            job: self.name.clone(),
            plan: CheckpointPlan {
                interval: self.config.checkpoint_interval,
                timeout: self.config.checkpoint_timeout,
                min_pause: self.config.min_pause,
                retained: self.config.retained,
            },
            storage,
            codec,
            stages: stages.to_vec(),
            lineage,
            sources,
            events: events_rx,
            completed: completed_tx,
            expected_acks,
            next_id: first_checkpoint,
            faults,
            attempt,
            metrics: Arc::clone(&self.metrics),
            blocking: blocking.clone(),
        };

        let outcome = {
            let coordinator = coordinator.run(&mut self.commands, &mut self.requests);
            tokio::pin!(coordinator);
            let mut coordinator_done = false;
            loop {
                tokio::select! {
                    result = &mut coordinator, if !coordinator_done => {
                        coordinator_done = true;
                        if let Err(e) = result {
                            break Err(e);
                        }
                    }
                    joined = tasks.join_next_with_id() => match joined {
                        None if coordinator_done => break Ok(()),
                        None => {}
                        Some(Ok((_, Ok(())))) => {}
                        Some(Ok((_, Err(e)))) => break Err(e),
                        Some(Err(e)) => {
                            let task = names.get(&e.id()).cloned().unwrap_or_else(|| "unknown task".into());
                            let message = if e.is_panic() {
                                format!("panicked: {}", panic_message(e.into_panic().as_ref()))
                            } else {
                                "was cancelled".into()
                            };
                            break Err(Error::Task { task, phase: "processing", source: message.into() });
                        }
                    }
                }
            }
        };
        let outcome = match outcome {
            Ok(()) => Ok(()),
            Err(first) => {
                // Tasks fail in a cascade: report the cause, and do not
                // restart when any task failed for good.
                tasks.abort_all();
                let mut cause = first;
                while let Some(joined) = tasks.join_next().await {
                    if let Ok(Err(e)) = joined
                        && failure_rank(&e) > failure_rank(&cause)
                    {
                        cause = e;
                    }
                }
                Err(cause)
            }
        };
        // A failure's savepoints are answered by `run`, which knows whether
        // the job restarts.
        if outcome.is_ok() {
            self.requests.job_ended();
        }
        blocking.wait_idle().await;
        outcome.map_err(|e| {
            if e.is_unrecoverable() {
                Failure::Fatal(e)
            } else {
                Failure::Retry(e)
            }
        })
    }
}

/// Which of several task failures to report: an unrecoverable one first,
/// then a cause, last a task that only saw its downstream stop.
fn failure_rank(error: &Error) -> u8 {
    if error.is_unrecoverable() {
        2
    } else if matches!(error, Error::Task { source, .. } if source.is::<DownstreamStopped>()) {
        0
    } else {
        1
    }
}

async fn highest_id(storage: &Option<Arc<dyn CheckpointStorage>>) -> Result<u64> {
    let Some(storage) = storage.clone() else {
        return Ok(0);
    };
    Ok(blocking::call("reading checkpoint storage", move || storage.highest_id()).await??)
}

/// The newest complete checkpoint of `lineage`.
async fn latest_in_lineage(
    storage: &Arc<dyn CheckpointStorage>,
    lineage: Option<String>,
) -> Result<Option<CompletedCheckpoint>> {
    let storage = Arc::clone(storage);
    Ok(blocking::call("reading checkpoint storage", move || {
        storage.latest_in_lineage(lineage.as_deref())
    })
    .await??)
}

/// Checks that `checkpoint` was taken by a job with these stages, and reads
/// every stage's state through `storage`.
/// Reads the keyed-state segment `name` in `shared`, which a task state
/// encoded with `codec` references: its frame version and payload.
fn read_segment(
    storage: &dyn CheckpointStorage,
    shared: &Location,
    name: &str,
    codec: Codec,
) -> Result<(u16, bytes::Bytes)> {
    let location = shared.join(name);
    let file = bytes::Bytes::from(storage.read_shared(shared, name)?);
    let segment = frame::decode(&file, PayloadKind::KeyedSegment, &location)?;
    if segment.codec != codec {
        return Err(crate::storage::StorageError::Corrupt {
            file: location.to_string(),
            reason: format!(
                "the segment is encoded with {:?}, the task state naming it with {codec:?}",
                segment.codec
            ),
        }
        .into());
    }
    Ok((segment.version, file.slice_ref(segment.payload)))
}

pub(crate) fn load_checkpoint(
    storage: &dyn CheckpointStorage,
    checkpoint: &CompletedCheckpoint,
    expected: &[StageMetadata],
) -> Result<Vec<Option<Arc<RestoredStage>>>> {
    let id = checkpoint.id();
    let mismatch = |message: String| Error::Restore {
        checkpoint: id,
        location: checkpoint.location.clone(),
        message,
    };
    let found = &checkpoint.metadata.stages;
    if found.len() != expected.len() {
        return Err(mismatch(format!(
            "it was taken by a job with {} stages, this job has {}; start from an empty checkpoint directory or restore a matching savepoint",
            found.len(),
            expected.len()
        )));
    }
    for (i, (old, new)) in found.iter().zip(expected).enumerate() {
        if old.name != new.name || old.operators != new.operators {
            return Err(mismatch(format!(
                "stage {i} was `{}` with state {:?}, this job has `{}` with state {:?}",
                old.name, old.operators, new.name, new.operators
            )));
        }
    }
    let mut stages: Vec<RestoredStage> = found
        .iter()
        .map(|s| RestoredStage {
            checkpoint_id: id,
            subtasks: vec![HashMap::new(); s.parallelism],
        })
        .collect();
    let shared = checkpoint.shared_location();
    for handle in &checkpoint.metadata.task_states {
        let path = checkpoint.location.join(&handle.file);
        let file = bytes::Bytes::from(storage.read_task_state(checkpoint, handle)?);
        let frame = frame::decode(&file, PayloadKind::TaskState, &path)?;
        let codec = frame.codec;
        let corrupt = |e: crate::codec::CodecError| crate::storage::StorageError::Corrupt {
            file: path.to_string(),
            reason: e.to_string(),
        };
        // Each element's state is borrowed from the file and then kept as a
        // shared slice of it: one copy of the state bytes fewer than
        // decoding owned ones (about a tenth of a keyed restore, measured in
        // BENCHMARKS.md).
        let entries: Vec<(String, StateEntry<&[u8]>)> = if frame.version >= 4 {
            codec.decode(frame.payload, "task state").map_err(corrupt)?
        } else {
            let values: Vec<(String, &[u8])> =
                codec.decode(frame.payload, "task state").map_err(corrupt)?;
            values
                .into_iter()
                .map(|(id, value)| (id, StateEntry::Value(value)))
                .collect()
        };
        let stage = stages.get_mut(handle.stage).ok_or_else(|| {
            mismatch(format!(
                "state file {} names stage {} which does not exist",
                handle.file, handle.stage
            ))
        })?;
        let slot = stage.subtasks.get_mut(handle.subtask).ok_or_else(|| {
            mismatch(format!(
                "state file {} names subtask {} beyond the stage's parallelism",
                handle.file, handle.subtask
            ))
        })?;
        for (element, entry) in entries {
            let parts = match entry {
                StateEntry::Value(value) => vec![(frame.version, file.slice_ref(value))],
                StateEntry::Segments(names) => names
                    .iter()
                    .map(|name| read_segment(storage, &shared, name, codec))
                    .collect::<Result<_>>()?,
            };
            slot.insert(element, StoredEntry { codec, parts });
        }
    }
    Ok(stages.into_iter().map(|s| Some(Arc::new(s))).collect())
}
