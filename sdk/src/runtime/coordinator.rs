//! The checkpoint coordinator: Flink's `CheckpointCoordinator`, for one job
//! attempt.
//!
//! Owns: triggering checkpoints (barriers injected at every source subtask
//! at the configured interval, at most one in flight, with a minimum pause
//! between the end of one and the start of the next), collecting every
//! subtask's acknowledgement, making the metadata durable (which completes
//! the checkpoint), and only then telling every task, through a watch
//! channel, the id of the newest complete checkpoint. It also expires
//! checkpoints that exceed the timeout, takes savepoints, and runs the final
//! checkpoint when every source has finished or a stop was requested.
//!
//! Does not own what a task snapshots ([`super::task`]) or how storage
//! writes ([`crate::storage`]).

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::blocking::BlockingCalls;
use super::message::Barrier;
use crate::codec::Codec;
use crate::error::{Error, Result, SavepointError};
use crate::fault::{FaultPoint, Faults};
use crate::metrics::JobMetrics;
use crate::storage::frame::{self, PayloadKind};
use crate::storage::{CheckpointMetadata, CheckpointStorage, StageMetadata, TaskStateHandle};

/// A command from the coordinator to one source subtask.
#[derive(Debug)]
pub(crate) enum SourceCommand {
    /// Snapshot the position and emit this barrier. With `pause_after`, read
    /// nothing more: this is the final checkpoint.
    Trigger { barrier: Barrier, pause_after: bool },
    /// The final checkpoint is complete: end the stream.
    Stop,
}

/// A report from a task to the coordinator.
#[derive(Debug)]
pub(crate) enum TaskEvent {
    /// The subtask has snapshotted (and, for a sink, pre-committed) for
    /// `checkpoint`; its state is durable under `handle`.
    Ack {
        checkpoint: u64,
        stage: usize,
        subtask: usize,
        handle: Option<TaskStateHandle>,
    },
    /// A source subtask has exhausted its input.
    SourceFinished,
}

/// A request from the user's [`crate::JobHandle`].
#[derive(Debug)]
pub(crate) enum JobCommand {
    /// Take a savepoint into this directory; with `stop`, the savepoint is
    /// the final checkpoint and the job stops after it. One command, so
    /// that no regular checkpoint can take the savepoint between a
    /// savepoint request and a stop request.
    Savepoint {
        target: PathBuf,
        reply: oneshot::Sender<Result<PathBuf>>,
        stop: bool,
    },
    /// Take a final checkpoint, commit it, and stop.
    Stop,
}

/// What every task of an attempt shares with the coordinator.
#[derive(Clone)]
pub(crate) struct TaskLink {
    pub(crate) events: UnboundedSender<TaskEvent>,
    pub(crate) completed: watch::Receiver<u64>,
    pub(crate) storage: Option<Arc<dyn CheckpointStorage>>,
    /// The id the next checkpoint of this attempt will have.
    pub(crate) first_checkpoint: u64,
    /// How long a checkpoint may take before it expires.
    pub(crate) checkpoint_timeout: Duration,
}

/// The checkpoint settings the coordinator follows.
#[derive(Debug, Clone)]
pub(crate) struct CheckpointPlan {
    /// `None`: only the final checkpoint and savepoints are taken.
    pub(crate) interval: Option<Duration>,
    pub(crate) timeout: Duration,
    pub(crate) min_pause: Duration,
    pub(crate) retained: usize,
}

struct InFlight {
    id: u64,
    started: Instant,
    triggered_unix_ms: u64,
    acked: HashSet<(usize, usize)>,
    handles: Vec<TaskStateHandle>,
    is_final: bool,
    savepoint: Option<(PathBuf, oneshot::Sender<Result<PathBuf>>)>,
}

/// The coordinator of one attempt.
pub(crate) struct Coordinator {
    pub(crate) job: String,
    pub(crate) plan: CheckpointPlan,
    pub(crate) storage: Option<Arc<dyn CheckpointStorage>>,
    pub(crate) codec: Codec,
    pub(crate) stages: Vec<StageMetadata>,
    pub(crate) sources: Vec<UnboundedSender<SourceCommand>>,
    pub(crate) events: UnboundedReceiver<TaskEvent>,
    pub(crate) completed: watch::Sender<u64>,
    pub(crate) expected_acks: usize,
    pub(crate) next_id: u64,
    pub(crate) faults: Faults,
    pub(crate) attempt: u32,
    pub(crate) metrics: Arc<JobMetrics>,
    pub(crate) blocking: BlockingCalls,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Coordinator {
    fn fault(&self, point: FaultPoint) -> Result<()> {
        self.faults.check(point, None, self.attempt)
    }

    /// Runs until every task has finished (all event senders are gone).
    /// Runs one attempt's checkpoints. `stop_requested` outlives the
    /// attempt: a stop received by an attempt that then fails is carried
    /// out by the next one.
    pub(crate) async fn run(
        mut self,
        commands: &mut UnboundedReceiver<JobCommand>,
        stop_requested: &mut bool,
    ) -> Result<()> {
        let mut in_flight: Option<InFlight> = None;
        let mut last_trigger = Instant::now();
        let mut last_done = Instant::now();
        let mut finishing = *stop_requested;
        let mut final_done = false;
        let mut sources_finished = 0;
        let mut savepoints: VecDeque<(PathBuf, oneshot::Sender<Result<PathBuf>>)> = VecDeque::new();
        // The savepoint of a stop-with-savepoint: only the final checkpoint
        // takes it.
        let mut final_savepoint: Option<(PathBuf, oneshot::Sender<Result<PathBuf>>)> = None;
        let mut commands_open = true;

        loop {
            let deadline = if final_done {
                None
            } else if let Some(flight) = &in_flight {
                Some(flight.started + self.plan.timeout)
            } else if finishing || !savepoints.is_empty() {
                Some(Instant::now())
            } else {
                self.plan
                    .interval
                    .map(|interval| (last_trigger + interval).max(last_done + self.plan.min_pause))
            };
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = self.events.recv() => match event {
                    None => {
                        for (_, reply) in savepoints.drain(..).chain(final_savepoint.take()) {
                            let _ = reply.send(Err(SavepointError::EndedBeforeSavepoint.into()));
                        }
                        return Ok(());
                    }
                    Some(TaskEvent::SourceFinished) => {
                        sources_finished += 1;
                        if sources_finished == self.sources.len() {
                            finishing = true;
                        }
                    }
                    Some(TaskEvent::Ack { checkpoint, stage, subtask, handle }) => {
                        let Some(flight) = in_flight.as_mut().filter(|f| f.id == checkpoint) else {
                            continue;
                        };
                        if !flight.acked.insert((stage, subtask)) {
                            tracing::warn!(checkpoint, stage, subtask, "ignoring a repeated acknowledgement");
                            continue;
                        }
                        flight.handles.extend(handle);
                        if flight.acked.len() == self.expected_acks {
                            let flight = in_flight.take().expect("checked above");
                            let is_final = flight.is_final;
                            self.complete(flight).await?;
                            last_done = Instant::now();
                            if is_final {
                                final_done = true;
                                for source in &self.sources {
                                    let _ = source.send(SourceCommand::Stop);
                                }
                            }
                        }
                    }
                },
                command = commands.recv(), if commands_open => match command {
                    None => commands_open = false,
                    Some(JobCommand::Stop) => {
                        finishing = true;
                        *stop_requested = true;
                    }
                    Some(JobCommand::Savepoint { target, reply, stop }) => {
                        if self.storage.is_none() {
                            let _ = reply.send(Err(Error::config(
                                "checkpoint_dir",
                                "savepoints need checkpoint storage: call JobConfig::checkpoint_dir(path)",
                            )));
                        } else if final_done {
                            let _ = reply.send(Err(SavepointError::Stopping.into()));
                        } else if stop {
                            final_savepoint = Some((target, reply));
                            finishing = true;
                            *stop_requested = true;
                        } else {
                            savepoints.push_back((target, reply));
                        }
                    }
                },
                () = sleep => {
                    if let Some(flight) = in_flight.take() {
                        self.expire(flight).await;
                        last_done = Instant::now();
                    } else {
                        let savepoint = if finishing {
                            final_savepoint.take().or_else(|| savepoints.pop_front())
                        } else {
                            savepoints.pop_front()
                        };
                        last_trigger = Instant::now();
                        in_flight = Some(self.trigger(finishing, savepoint).await?);
                    }
                }
            }
        }
    }

    async fn trigger(
        &mut self,
        is_final: bool,
        savepoint: Option<(PathBuf, oneshot::Sender<Result<PathBuf>>)>,
    ) -> Result<InFlight> {
        let id = self.next_id;
        self.next_id += 1;
        self.fault(FaultPoint::CheckpointTriggered { checkpoint: id })?;
        if let Some(storage) = self.storage.clone() {
            self.blocking
                .run("begin checkpoint", move || storage.begin_checkpoint(id))
                .await??;
        }
        tracing::debug!(job = %self.job, checkpoint = id, is_final, "triggering checkpoint");
        let barrier = Barrier { checkpoint_id: id };
        for source in &self.sources {
            // A source that is gone has failed; its task reports the error.
            let _ = source.send(SourceCommand::Trigger {
                barrier,
                pause_after: is_final,
            });
        }
        Ok(InFlight {
            id,
            started: Instant::now(),
            triggered_unix_ms: unix_ms(),
            acked: HashSet::new(),
            handles: Vec::new(),
            is_final,
            savepoint,
        })
    }

    async fn expire(&mut self, flight: InFlight) {
        tracing::warn!(
            job = %self.job,
            checkpoint = flight.id,
            "checkpoint expired after {:?} with {} of {} acknowledgements; raise JobConfig::checkpoint_timeout if this repeats",
            self.plan.timeout,
            flight.acked.len(),
            self.expected_acks
        );
        JobMetrics::add(&self.metrics.checkpoints_expired, 1);
        if let Some((_, reply)) = flight.savepoint {
            let _ = reply.send(Err(SavepointError::Expired {
                checkpoint: flight.id,
                timeout: self.plan.timeout,
            }
            .into()));
        }
        if let Some(storage) = self.storage.clone() {
            let id = flight.id;
            let result = self
                .blocking
                .run("discard checkpoint", move || storage.discard(id))
                .await;
            if let Err(e) = result
                .map_err(|m| m.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
            {
                tracing::warn!(checkpoint = id, "could not remove expired checkpoint: {e}");
            }
        }
    }

    async fn complete(&mut self, flight: InFlight) -> Result<()> {
        let id = flight.id;
        self.fault(FaultPoint::BeforeCheckpointComplete { checkpoint: id })?;
        let bytes: u64 = flight.handles.iter().map(|h| h.bytes).sum();
        let mut completed = None;
        if let Some(storage) = self.storage.clone() {
            let metadata = CheckpointMetadata {
                job: self.job.clone(),
                checkpoint_id: id,
                triggered_unix_ms: flight.triggered_unix_ms,
                stages: self.stages.clone(),
                task_states: flight.handles,
            };
            let payload = self.codec.encode(&metadata, "checkpoint metadata")?;
            let framed = frame::encode(PayloadKind::Metadata, self.codec, &payload);
            let store = storage.clone();
            let done = self
                .blocking
                .run("write checkpoint metadata", move || {
                    store.complete(&metadata, &framed)
                })
                .await??;
            completed = Some(done);
        }
        self.fault(FaultPoint::AfterCheckpointComplete { checkpoint: id })?;
        self.completed.send_replace(id);

        let took = flight.started.elapsed();
        JobMetrics::add(&self.metrics.checkpoints_completed, 1);
        JobMetrics::set(&self.metrics.last_checkpoint_id, id);
        JobMetrics::set(
            &self.metrics.last_checkpoint_micros,
            took.as_micros() as u64,
        );
        JobMetrics::set(&self.metrics.last_checkpoint_bytes, bytes);
        tracing::debug!(job = %self.job, checkpoint = id, ?took, bytes, "checkpoint complete");

        if let (Some(storage), Some(done)) = (self.storage.clone(), completed) {
            let retained = self.plan.retained;
            let savepoint = flight.savepoint;
            let result = self
                .blocking
                .run("retain and export checkpoints", move || {
                    let exported = savepoint.map(|(target, reply)| {
                        let result = storage
                            .export_savepoint(&done, &target)
                            .map(|sp| sp.path)
                            .map_err(Error::from);
                        (result, reply)
                    });
                    (storage.retain(retained), exported)
                })
                .await?;
            let (retain, exported) = result;
            if let Err(e) = retain {
                tracing::warn!(job = %self.job, "could not delete old checkpoints: {e}");
            }
            if let Some((result, reply)) = exported {
                let _ = reply.send(result);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LocalStorage;
    use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

    struct Harness {
        source: UnboundedReceiver<SourceCommand>,
        events: UnboundedSender<TaskEvent>,
        completed: watch::Receiver<u64>,
        metrics: Arc<JobMetrics>,
        _commands: UnboundedSender<JobCommand>,
        task: tokio::task::JoinHandle<Result<()>>,
    }

    /// A coordinator with one source subtask and `acks` subtasks in all.
    fn start(
        plan: CheckpointPlan,
        acks: usize,
        storage: Option<Arc<dyn CheckpointStorage>>,
    ) -> Harness {
        let (source_tx, source) = unbounded_channel();
        let (events, events_rx) = unbounded_channel();
        let (completed_tx, completed) = watch::channel(0);
        let (commands_tx, mut commands) = unbounded_channel();
        let metrics = Arc::new(JobMetrics::default());
        let coordinator = Coordinator {
            job: "test".into(),
            plan,
            storage,
            codec: Codec::Bincode,
            stages: Vec::new(),
            sources: vec![source_tx],
            events: events_rx,
            completed: completed_tx,
            expected_acks: acks,
            next_id: 1,
            faults: Faults::default(),
            attempt: 0,
            metrics: Arc::clone(&metrics),
            blocking: BlockingCalls::default(),
        };
        let task = tokio::spawn(async move { coordinator.run(&mut commands, &mut false).await });
        Harness {
            source,
            events,
            completed,
            metrics,
            _commands: commands_tx,
            task,
        }
    }

    fn plan(interval_ms: u64, timeout_ms: u64, pause_ms: u64) -> CheckpointPlan {
        CheckpointPlan {
            interval: Some(Duration::from_millis(interval_ms)),
            timeout: Duration::from_millis(timeout_ms),
            min_pause: Duration::from_millis(pause_ms),
            retained: 2,
        }
    }

    async fn next_trigger(h: &mut Harness) -> (u64, bool) {
        match h.source.recv().await {
            Some(SourceCommand::Trigger {
                barrier,
                pause_after,
            }) => (barrier.checkpoint_id, pause_after),
            other => panic!("expected a trigger, got {other:?}"),
        }
    }

    fn ack(h: &Harness, checkpoint: u64, subtask: usize) {
        h.events
            .send(TaskEvent::Ack {
                checkpoint,
                stage: 0,
                subtask,
                handle: None,
            })
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn one_checkpoint_in_flight_and_complete_only_after_every_ack() {
        let mut h = start(plan(100, 10_000, 0), 2, None);
        let started = Instant::now();
        assert_eq!(next_trigger(&mut h).await, (1, false));
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(
            h.source.try_recv().is_err(),
            "a second checkpoint started while one was in flight"
        );
        ack(&h, 1, 0);
        ack(&h, 1, 0);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(
            *h.completed.borrow(),
            0,
            "completed before every subtask acknowledged"
        );
        ack(&h, 1, 1);
        h.completed.changed().await.unwrap();
        assert_eq!(*h.completed.borrow(), 1);
        assert_eq!(next_trigger(&mut h).await.0, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_min_pause_separates_the_end_of_one_checkpoint_from_the_next() {
        let mut h = start(plan(10, 10_000, 250), 1, None);
        assert_eq!(next_trigger(&mut h).await.0, 1);
        tokio::time::sleep(Duration::from_millis(40)).await;
        ack(&h, 1, 0);
        h.completed.changed().await.unwrap();
        let done = Instant::now();
        assert_eq!(next_trigger(&mut h).await.0, 2);
        assert_eq!(done.elapsed(), Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_checkpoint_is_abandoned_and_its_late_acks_ignored() {
        let mut h = start(plan(50, 300, 0), 1, None);
        assert_eq!(next_trigger(&mut h).await.0, 1);
        let triggered = Instant::now();
        assert_eq!(next_trigger(&mut h).await.0, 2);
        assert!(triggered.elapsed() >= Duration::from_millis(300));
        assert_eq!(h.metrics.snapshot().checkpoints_expired, 1);
        ack(&h, 1, 0);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(
            *h.completed.borrow(),
            0,
            "a late acknowledgement completed an expired checkpoint"
        );
        ack(&h, 2, 0);
        h.completed.changed().await.unwrap();
        assert_eq!(*h.completed.borrow(), 2);
    }

    #[tokio::test]
    async fn metadata_is_durable_before_anyone_hears_of_completion_and_finishing_stops_sources() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalStorage::new(dir.path()));
        let plan = CheckpointPlan {
            interval: None,
            ..plan(1, 60_000, 0)
        };
        let mut h = start(plan, 1, Some(Arc::clone(&storage)));
        h.events.send(TaskEvent::SourceFinished).unwrap();
        assert_eq!(
            next_trigger(&mut h).await,
            (1, true),
            "the final checkpoint pauses the source"
        );
        assert!(storage.latest().unwrap().is_none());
        ack(&h, 1, 0);
        h.completed.changed().await.unwrap();
        assert_eq!(storage.latest().unwrap().expect("metadata written").id(), 1);
        assert!(matches!(h.source.recv().await, Some(SourceCommand::Stop)));
        drop(h.events);
        h.task.await.unwrap().unwrap();
    }

    /// Stop-with-savepoint while a regular checkpoint is due: the savepoint
    /// is the final checkpoint, the one that pauses the sources. The handle
    /// used to send a savepoint request and then a stop request; when its
    /// thread was delayed between the two, a regular checkpoint took the
    /// savepoint and the final one committed output past it, which a job
    /// resumed from the savepoint repeated
    /// (`a_job_stopped_with_a_savepoint_resumes_from_it_exactly` failed
    /// once in `scripts/test`). This test with those two requests 5 ms
    /// apart gets `(2, false)`: the savepoint on a regular checkpoint.
    #[tokio::test]
    async fn a_stop_with_savepoint_is_taken_by_the_final_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalStorage::new(dir.path()));
        let mut h = start(plan(1, 60_000, 0), 1, Some(storage));
        assert_eq!(next_trigger(&mut h).await, (1, false));
        ack(&h, 1, 0);
        h.completed.changed().await.unwrap();
        // No checkpoint in flight, the next regular one due in 1 ms.
        let (reply, answer) = tokio::sync::oneshot::channel();
        let target = dir.path().join("savepoint");
        h._commands
            .send(JobCommand::Savepoint {
                target: target.clone(),
                reply,
                stop: true,
            })
            .unwrap();
        assert_eq!(
            next_trigger(&mut h).await,
            (2, true),
            "the checkpoint after the request is the final one"
        );
        ack(&h, 2, 0);
        assert_eq!(answer.await.unwrap().unwrap(), target);
        let saved = LocalStorage::open_checkpoint(&target).unwrap();
        assert_eq!(saved.id(), 2, "the savepoint is the final checkpoint");
    }
}
