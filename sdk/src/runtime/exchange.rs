//! Repartitioning between stages: `key_by` (hash) and `union` (rebalance).
//!
//! Owns: the bounded queues between the subtasks of two stages
//! ([`GateChannels`]), the registry that hands them out for one attempt, and
//! the chain tails that send into them. Every upstream subtask has one queue
//! to every downstream subtask, so barriers can be broadcast to all of them;
//! a full queue suspends the sender, which is how backpressure reaches the
//! source.
//!
//! Does not own barrier alignment on the receiving side:
//! [`super::alignment`].

use std::any::Any;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;

use tokio::sync::mpsc::{Receiver, Sender, channel};

use super::chain::{BoxFuture, KeyFn, Pipe, SnapshotWriter};
use super::message::{Barrier, Message};
use crate::error::{Error, Result};

/// The subtask, of `parallelism`, that owns `key`.
///
/// The hasher has fixed keys, so the choice is the same in every subtask and
/// every attempt of one build. Restores recompute it, so state follows its
/// key even if the parallelism or the hasher changed.
pub(crate) fn key_subtask<K: Hash + ?Sized>(key: &K, parallelism: usize) -> usize {
    (key_hash(key) % parallelism as u64) as usize
}

/// The hash that places a key; [`key_subtask`] reduces it to a subtask.
pub(crate) fn key_hash<K: Hash + ?Sized>(key: &K) -> u64 {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}

/// The receiving ends of one downstream subtask, in upstream order.
type Inbox<T> = Vec<Receiver<Message<T>>>;

/// The queues of one exchange: `senders[upstream][downstream]` and, for
/// each downstream subtask, its receivers in upstream order.
pub(crate) struct GateChannels<T> {
    upstream: Vec<(usize, usize)>,
    senders: Vec<Vec<Sender<Message<T>>>>,
    receivers: Mutex<Vec<Option<Inbox<T>>>>,
}

impl<T: Send + 'static> GateChannels<T> {
    /// Queues from every subtask of the `upstream` stages, given as
    /// `(stage, parallelism)`, to each of `downstream` subtasks.
    pub(crate) fn new(upstream: &[(usize, usize)], downstream: usize, capacity: usize) -> Self {
        let total: usize = upstream.iter().map(|&(_, p)| p).sum();
        let mut senders = vec![Vec::with_capacity(downstream); total];
        let mut receivers: Vec<Inbox<T>> =
            (0..downstream).map(|_| Vec::with_capacity(total)).collect();
        for row in &mut senders {
            for inbox in &mut receivers {
                let (tx, rx) = channel(capacity);
                row.push(tx);
                inbox.push(rx);
            }
        }
        GateChannels {
            upstream: upstream.to_vec(),
            senders,
            receivers: Mutex::new(receivers.into_iter().map(Some).collect()),
        }
    }

    /// The queues from subtask `subtask` of stage `stage` to every
    /// downstream subtask.
    pub(crate) fn senders(&self, stage: usize, subtask: usize) -> Vec<Sender<Message<T>>> {
        let mut offset = 0;
        for &(s, p) in &self.upstream {
            if s == stage {
                return self.senders[offset + subtask].clone();
            }
            offset += p;
        }
        unreachable!("stage {stage} does not feed this exchange")
    }

    /// The queues into downstream subtask `subtask`; each can be taken once.
    pub(crate) fn take_receivers(&self, subtask: usize) -> Inbox<T> {
        self.receivers.lock().expect("exchange registry poisoned")[subtask]
            .take()
            .expect("receivers taken twice")
    }
}

/// Creates the queues of one exchange for an attempt.
pub(crate) type GateFactory =
    Box<dyn Fn(&[(usize, usize)], usize, usize) -> Box<dyn Any + Send + Sync> + Send + Sync>;

/// The exchanges of one attempt, by exchange id.
#[derive(Default)]
pub(crate) struct GateRegistry {
    pub(crate) gates: Vec<Box<dyn Any + Send + Sync>>,
}

impl GateRegistry {
    pub(crate) fn get<T: Send + 'static>(&self, gate: usize) -> &GateChannels<T> {
        self.gates[gate]
            .downcast_ref::<GateChannels<T>>()
            .expect("exchange element type matches its builder")
    }
}

/// A task could not send because a downstream task had stopped: the
/// consequence of another task's failure, never the cause.
#[derive(Debug, thiserror::Error)]
#[error("a downstream task stopped")]
pub(crate) struct DownstreamStopped;

fn downstream_gone(task: &str) -> Error {
    Error::Task {
        task: task.to_owned(),
        phase: "sending downstream",
        source: Box::new(DownstreamStopped),
    }
}

async fn send_all<T>(
    senders: &[Sender<Message<T>>],
    task: &str,
    message: impl Fn() -> Message<T>,
) -> Result<()> {
    for tx in senders {
        tx.send(message())
            .await
            .map_err(|_| downstream_gone(task))?;
    }
    Ok(())
}

/// How an exchange tail spreads records over downstream subtasks.
pub(crate) enum Partitioner<T> {
    /// By the hash of the record's key (`key_by`), see [`key_hash`].
    Hash(KeyFn<T, u64>),
    /// Whole batches, round robin (`union` and parallelism changes).
    Rebalance { next: usize },
}

/// The tail of a chain that feeds an exchange.
pub(crate) struct ExchangePipe<T> {
    senders: Vec<Sender<Message<T>>>,
    partitioner: Partitioner<T>,
    task: String,
}

impl<T: Send + 'static> ExchangePipe<T> {
    pub(crate) fn new(
        senders: Vec<Sender<Message<T>>>,
        partitioner: Partitioner<T>,
        task: String,
    ) -> Self {
        ExchangePipe {
            senders,
            partitioner,
            task,
        }
    }
}

impl<T: Send + 'static> Pipe<T> for ExchangePipe<T> {
    fn open(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn push(&mut self, batch: Vec<T>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let n = self.senders.len();
            match &mut self.partitioner {
                _ if n == 1 => {
                    self.senders[0]
                        .send(Message::Batch(batch))
                        .await
                        .map_err(|_| downstream_gone(&self.task))?;
                }
                Partitioner::Rebalance { next } => {
                    let i = *next;
                    *next = (i + 1) % n;
                    self.senders[i]
                        .send(Message::Batch(batch))
                        .await
                        .map_err(|_| downstream_gone(&self.task))?;
                }
                Partitioner::Hash(hash) => {
                    let mut parts: Vec<Vec<T>> = (0..n)
                        .map(|_| Vec::with_capacity(batch.len() / n + 8))
                        .collect();
                    for record in batch {
                        parts[(hash(&record) % n as u64) as usize].push(record);
                    }
                    for (tx, part) in self.senders.iter().zip(parts) {
                        if !part.is_empty() {
                            tx.send(Message::Batch(part))
                                .await
                                .map_err(|_| downstream_gone(&self.task))?;
                        }
                    }
                }
            }
            Ok(())
        })
    }

    fn barrier<'a>(
        &'a mut self,
        barrier: Barrier,
        _snapshot: &'a mut SnapshotWriter,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(send_all(&self.senders, &self.task, move || {
            Message::Barrier(barrier)
        }))
    }

    fn checkpoint_complete(&mut self, _checkpoint_id: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn end(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(send_all(&self.senders, &self.task, || Message::End))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn key_subtask_is_stable_and_in_range() {
        for p in 1..8 {
            for k in 0..100u32 {
                let s = key_subtask(&k, p);
                assert!(s < p);
                assert_eq!(s, key_subtask(&k, p));
            }
        }
    }

    #[tokio::test]
    async fn hash_partitioning_agrees_with_key_subtask_and_barriers_reach_everyone() {
        let channels = GateChannels::<u32>::new(&[(0, 1)], 3, 8);
        let hash: KeyFn<u32, u64> = Arc::new(key_hash::<u32>);
        let mut pipe =
            ExchangePipe::new(channels.senders(0, 0), Partitioner::Hash(hash), "t".into());
        pipe.push((0..30).collect()).await.unwrap();
        let mut snap = SnapshotWriter::new(crate::codec::Codec::Bincode);
        pipe.barrier(Barrier { checkpoint_id: 1 }, &mut snap)
            .await
            .unwrap();
        for d in 0..3 {
            let mut rx = channels.take_receivers(d).pop().unwrap();
            let Some(Message::Batch(batch)) = rx.recv().await else {
                panic!("no batch for {d}")
            };
            assert!(batch.iter().all(|k| key_subtask(k, 3) == d));
            assert!(matches!(
                rx.recv().await,
                Some(Message::Barrier(Barrier { checkpoint_id: 1 }))
            ));
        }
    }
}
