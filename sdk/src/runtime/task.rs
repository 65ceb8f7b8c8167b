//! The task loops: a source subtask, or a subtask fed by an exchange, runs
//! its chain until the input ends.
//!
//! Owns: reading the head (source or [`InputGate`]), handing batches to the
//! chain, taking the task's snapshot at a barrier (source position first,
//! then every chained element in order), making it durable and
//! acknowledging it to the coordinator (in the background, while the task
//! goes on), and passing checkpoint-complete
//! notifications to the chain. Does not own the protocol decisions (when to
//! trigger, when a checkpoint is complete): [`super::coordinator`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::oneshot;
use tracing::instrument::WithSubscriber;

use super::alignment::{GateEvent, InputGate};
use super::coordinator::{SourceCommand, TaskEvent};
use super::element::{Pipe, SnapshotWriter};
use super::env::SubtaskEnv;
use super::message::Barrier;
use crate::error::{Error, Result};
use crate::fault::FaultPoint;
use crate::metrics::JobMetrics;
use crate::source::{Source, SourcePoll};
use crate::storage::StorageError;

/// How long an idle source waits before polling again, unless a command
/// arrives first.
const IDLE_WAIT: Duration = Duration::from_millis(5);

fn task_error(env: &SubtaskEnv, phase: &'static str) -> impl FnOnce(crate::BoxError) -> Error {
    let task = env.task_name();
    move |source| Error::Task {
        task,
        phase,
        source,
    }
}

fn coordinator_gone(env: &SubtaskEnv) -> Error {
    task_error(env, "talking to the checkpoint coordinator")("the coordinator stopped".into())
}

/// Makes the task's snapshot durable and acknowledges the checkpoint, in
/// the background: the snapshot is already bytes, so the task goes on with
/// its records while the blocking pool writes them (Flink's asynchronous
/// snapshot phase; against a remote store the upload would otherwise stall
/// the task, see BENCHMARKS.md). The shared objects go first, then the
/// task state that names them. Each upload waits for the task's previous
/// one ([`SubtaskEnv::previous_upload`]): a checkpoint may reference a
/// delta that an earlier, expired checkpoint was still writing. A failed
/// upload fails the attempt through the coordinator
/// ([`TaskEvent::SnapshotFailed`]).
fn acknowledge(env: &SubtaskEnv, barrier: Barrier, snapshot: SnapshotWriter) -> Result<()> {
    let checkpoint = barrier.checkpoint_id;
    let (stage, subtask, events) = (env.stage, env.ctx.index, env.link.events.clone());
    let ack = move |handle| TaskEvent::Ack {
        checkpoint,
        stage,
        subtask,
        handle,
    };
    let storage = match &env.link.storage {
        Some(storage) if !snapshot.entries.is_empty() => Arc::clone(storage),
        _ => return events.send(ack(None)).map_err(|_| coordinator_gone(env)),
    };
    let snapshot = snapshot.finish()?;
    let (task, blocking) = (env.task_name(), env.blocking.clone());
    let (done, this_upload) = oneshot::channel::<()>();
    let previous = env
        .previous_upload
        .lock()
        .expect("upload order lock poisoned")
        .replace(this_upload);
    let upload = async move {
        if let Some(previous) = previous {
            // An error only means that the previous upload is over.
            let _ = previous.await;
        }
        let written = blocking
            .run("write task state", move || {
                snapshot.write(storage.as_ref(), checkpoint, stage, subtask)
            })
            .await;
        drop(done);
        let failed = |source: crate::BoxError| TaskEvent::SnapshotFailed {
            error: Error::Task {
                task: task.clone(),
                phase: "writing task state",
                source,
            },
        };
        let event = match written {
            Ok(Ok(handle)) => ack(Some(handle)),
            // The checkpoint expired while this task was late: its
            // snapshot is not needed, and nothing waits for the ack.
            Ok(Err(StorageError::Discarded { .. })) => {
                tracing::debug!(task = %task, checkpoint, "dropping a late snapshot of an expired checkpoint");
                return;
            }
            Ok(Err(e)) => failed(e.into()),
            Err(message) => failed(message.into()),
        };
        // A coordinator that is gone has ended the attempt already.
        let _ = events.send(event);
    };
    tokio::spawn(upload.with_current_subscriber());
    Ok(())
}

/// Whether a source keeps reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SourceMode {
    Reading,
    /// The input is exhausted; barriers are still answered.
    Finished,
    /// The final checkpoint's barrier was emitted; waiting for the stop, or
    /// for the order to read on (`finished`: the input had ended before).
    Draining {
        finished: bool,
    },
    Stopped,
}

/// Runs one source subtask and its chain.
pub(crate) async fn run_source<S: Source>(
    mut source: S,
    source_id: String,
    mut env: SubtaskEnv,
    mut pipe: Box<dyn Pipe<S::Item>>,
) -> Result<()> {
    let restored = match &env.restored {
        Some(stage) => stage
            .decode_all::<S::Position>(&source_id)?
            .into_iter()
            .map(|(_, p)| p)
            .collect(),
        None => Vec::new(),
    };
    source
        .open(&env.ctx, restored)
        .await
        .map_err(task_error(&env, "opening the source"))?;
    pipe.open().await?;
    let mut commands = env
        .commands
        .take()
        .expect("source subtasks get a command queue");
    let mut completed = env.link.completed.clone();
    let mut mode = SourceMode::Reading;
    let mut batch = Vec::with_capacity(env.batch_size);

    // Positions taken at barriers whose checkpoints are not known complete.
    let mut positions: BTreeMap<u64, S::Position> = BTreeMap::new();

    let handle = async |command: SourceCommand,
                        source: &mut S,
                        pipe: &mut Box<dyn Pipe<S::Item>>,
                        mode: &mut SourceMode,
                        positions: &mut BTreeMap<u64, S::Position>,
                        env: &SubtaskEnv|
           -> Result<()> {
        match command {
            SourceCommand::Trigger {
                barrier,
                pause_after,
            } => {
                let position = source.position();
                let mut snapshot = SnapshotWriter::new(env.codec);
                snapshot.put(&source_id, &position)?;
                positions.insert(barrier.checkpoint_id, position);
                pipe.barrier(barrier, &mut snapshot).await?;
                acknowledge(env, barrier, snapshot)?;
                if pause_after {
                    let finished = matches!(
                        *mode,
                        SourceMode::Finished | SourceMode::Draining { finished: true }
                    );
                    *mode = SourceMode::Draining { finished };
                }
            }
            SourceCommand::Resume => {
                if let SourceMode::Draining { finished } = *mode {
                    *mode = if finished {
                        SourceMode::Finished
                    } else {
                        SourceMode::Reading
                    };
                }
            }
            SourceCommand::Stop => {
                let last = *env.link.completed.borrow();
                notify_complete(last, source, positions, pipe, env).await?;
                pipe.end().await?;
                *mode = SourceMode::Stopped;
            }
        }
        Ok(())
    };

    loop {
        loop {
            match commands.try_recv() {
                Ok(command) => {
                    handle(
                        command,
                        &mut source,
                        &mut pipe,
                        &mut mode,
                        &mut positions,
                        &env,
                    )
                    .await?;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Err(coordinator_gone(&env)),
            }
            if mode == SourceMode::Stopped {
                return Ok(());
            }
        }
        if completed.has_changed().unwrap_or(false) {
            let id = *completed.borrow_and_update();
            notify_complete(id, &mut source, &mut positions, &mut pipe, &env).await?;
        }
        let wait = match mode {
            SourceMode::Reading => {
                let poll = source
                    .poll_batch(&mut batch, env.batch_size)
                    .await
                    .map_err(task_error(&env, "reading the source"))?;
                // Whatever the answer, appended records go down the chain
                // now: the source's position already counts them, so a
                // barrier must not find them held back here.
                if !batch.is_empty() {
                    JobMetrics::add(&env.metrics.records_in, batch.len() as u64);
                    pipe.push(&mut batch).await?;
                    batch.reserve(env.batch_size);
                    // A chain that never waits (a queue with room, an
                    // inline sink) still lets other tasks and timers (the
                    // checkpoint trigger) run.
                    tokio::task::yield_now().await;
                }
                match poll {
                    SourcePoll::Data => None,
                    SourcePoll::Idle => Some(IDLE_WAIT),
                    SourcePoll::Finished => {
                        mode = SourceMode::Finished;
                        env.link
                            .events
                            .send(TaskEvent::SourceFinished)
                            .map_err(|_| coordinator_gone(&env))?;
                        None
                    }
                }
            }
            SourceMode::Finished | SourceMode::Draining { .. } => Some(Duration::MAX),
            SourceMode::Stopped => return Ok(()),
        };
        if let Some(wait) = wait {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => handle(command, &mut source, &mut pipe, &mut mode, &mut positions, &env).await?,
                    None => return Err(coordinator_gone(&env)),
                },
                changed = completed.changed(), if wait == Duration::MAX => {
                    // `changed` marks the value seen: handle it here, or
                    // the notification would be lost.
                    if changed.is_ok() {
                        let id = *completed.borrow_and_update();
                        notify_complete(id, &mut source, &mut positions, &mut pipe, &env).await?;
                    }
                }
                _ = tokio::time::sleep(wait), if wait != Duration::MAX => {}
            }
            if mode == SourceMode::Stopped {
                return Ok(());
            }
        }
    }
}

/// Tells the source and the chain that checkpoint `id` (and every earlier
/// one) is complete. The source hears the position of the newest of them.
async fn notify_complete<S: Source>(
    id: u64,
    source: &mut S,
    positions: &mut BTreeMap<u64, S::Position>,
    pipe: &mut Box<dyn Pipe<S::Item>>,
    env: &SubtaskEnv,
) -> Result<()> {
    let mut newest = None;
    while let Some(entry) = positions.first_entry() {
        if *entry.key() > id {
            break;
        }
        newest = Some(entry.remove());
    }
    if let Some(position) = newest {
        source
            .checkpoint_complete(id, &position)
            .await
            .map_err(task_error(env, "checkpoint-complete notification"))?;
    }
    pipe.checkpoint_complete(id).await
}

/// Runs one subtask fed by exchange `gate`, and its chain.
pub(crate) async fn run_gate<T: Send + 'static>(
    gate: usize,
    env: SubtaskEnv,
    mut pipe: Box<dyn Pipe<T>>,
) -> Result<()> {
    let (receivers, pools): (Vec<_>, Vec<_>) = env
        .gates
        .get::<T>(gate)
        .take_receivers(env.ctx.index)
        .into_iter()
        .unzip();
    let mut input = InputGate::new(receivers);
    pipe.open().await?;
    let mut completed = env.link.completed.clone();
    let mut coordinator_alive = true;
    loop {
        let event = tokio::select! {
            biased;
            changed = completed.changed(), if coordinator_alive => {
                if changed.is_err() {
                    coordinator_alive = false;
                } else {
                    let id = *completed.borrow_and_update();
                    pipe.checkpoint_complete(id).await?;
                }
                continue;
            }
            event = input.next() => event.map_err(|e| task_error(&env, "reading inputs")(e.into()))?,
        };
        match event {
            GateEvent::Batch {
                input: from,
                mut records,
            } => {
                if let Some(checkpoint) = input.aligning() {
                    env.fault(FaultPoint::DuringAlignment { checkpoint })?;
                }
                pipe.push(&mut records).await?;
                pools[from].give(records);
            }
            GateEvent::Barrier(barrier) => {
                let mut snapshot = SnapshotWriter::new(env.codec);
                pipe.barrier(barrier, &mut snapshot).await?;
                acknowledge(&env, barrier, snapshot)?;
            }
            GateEvent::End => {
                let last = *completed.borrow();
                pipe.checkpoint_complete(last).await?;
                return pipe.end().await;
            }
        }
    }
}
