//! Repartitioning between stages: `key_by` (hash) and `union` (rebalance).
//!
//! Owns: the bounded queues between the subtasks of two stages
//! ([`GateChannels`]), the registry that hands them out for one attempt, and
//! the chain tails that send into them. Every upstream subtask has one queue
//! to every downstream subtask, so barriers can be broadcast to all of them;
//! a full queue suspends the sender, which is how backpressure reaches the
//! source. Beside each queue, a [`BatchPool`] carries emptied batches back
//! from the receiver to the sender, so that a batch's allocation is reused
//! rather than freed on one side and allocated again on the other.
//!
//! Does not own barrier alignment on the receiving side:
//! [`super::alignment`].

use std::any::Any;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::{Receiver, Sender, channel};

use super::element::{BoxFuture, KeyFn, Pipe, PushFuture, SnapshotWriter};
use super::message::{Barrier, Message};
use crate::error::{Error, Result};

/// Emptied batches on their way back from a queue's receiver to its
/// sender. Holds at most as many batches as the queue does.
pub(crate) struct BatchPool<T> {
    free: Mutex<Vec<Vec<T>>>,
    limit: usize,
}

impl<T> BatchPool<T> {
    fn new(limit: usize) -> Self {
        BatchPool {
            free: Mutex::new(Vec::with_capacity(limit)),
            limit,
        }
    }

    /// An empty batch: a returned one, or a new one without allocation.
    fn take(&self) -> Vec<T> {
        self.free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_default()
    }

    /// Returns an emptied batch for the sender to fill again.
    pub(crate) fn give(&self, mut batch: Vec<T>) {
        batch.clear();
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        if free.len() < self.limit {
            free.push(batch);
        }
    }
}

/// The sending end of one queue, with the pool its batches come from.
pub(crate) struct Outlet<T> {
    tx: Sender<Message<T>>,
    pool: Arc<BatchPool<T>>,
}

impl<T> Clone for Outlet<T> {
    fn clone(&self) -> Self {
        Outlet {
            tx: self.tx.clone(),
            pool: Arc::clone(&self.pool),
        }
    }
}

impl<T> Outlet<T> {
    /// Queues the records of `batch`, leaving it an empty batch from the
    /// pool. A full queue hands the message back, to be sent once it has
    /// room.
    fn offer(&self, batch: &mut Vec<T>, task: &str) -> Result<Option<Message<T>>> {
        let full = std::mem::replace(batch, self.pool.take());
        match self.tx.try_send(Message::Batch(full)) {
            Ok(()) => Ok(None),
            Err(TrySendError::Full(message)) => Ok(Some(message)),
            Err(TrySendError::Closed(_)) => Err(downstream_gone(task)),
        }
    }
}

/// The receiving ends of one downstream subtask, in upstream order, each
/// with the pool its emptied batches go back to.
pub(crate) type Inbox<T> = Vec<(Receiver<Message<T>>, Arc<BatchPool<T>>)>;

/// The queues of one exchange: `senders[upstream][downstream]` and, for
/// each downstream subtask, its receivers in upstream order.
pub(crate) struct GateChannels<T> {
    upstream: Vec<(usize, usize)>,
    senders: Vec<Vec<Outlet<T>>>,
    receivers: Mutex<Vec<Option<Inbox<T>>>>,
}

impl<T: Send + 'static> GateChannels<T> {
    /// Queues from every subtask of the `upstream` stages, given as
    /// `(stage, parallelism)`, to each of `downstream` subtasks.
    pub(crate) fn new(upstream: &[(usize, usize)], downstream: usize, capacity: usize) -> Self {
        let total: usize = upstream.iter().map(|&(_, p)| p).sum();
        let mut senders: Vec<Vec<Outlet<T>>> =
            (0..total).map(|_| Vec::with_capacity(downstream)).collect();
        let mut receivers: Vec<Inbox<T>> =
            (0..downstream).map(|_| Vec::with_capacity(total)).collect();
        for row in &mut senders {
            for inbox in &mut receivers {
                let (tx, rx) = channel(capacity);
                let pool = Arc::new(BatchPool::new(capacity));
                row.push(Outlet {
                    tx,
                    pool: Arc::clone(&pool),
                });
                inbox.push((rx, pool));
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
    pub(crate) fn senders(&self, stage: usize, subtask: usize) -> Vec<Outlet<T>> {
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
    senders: &[Outlet<T>],
    task: &str,
    message: impl Fn() -> Message<T>,
) -> Result<()> {
    for outlet in senders {
        outlet
            .tx
            .send(message())
            .await
            .map_err(|_| downstream_gone(task))?;
    }
    Ok(())
}

/// How an exchange tail spreads records over downstream subtasks.
pub(crate) enum Partitioner<T> {
    /// By the hash of the record's key (`key_by`), see [`crate::key`].
    Hash(KeyFn<T, u64>),
    /// Whole batches, round robin (`union` and parallelism changes).
    Rebalance { next: usize },
}

/// The tail of a chain that feeds an exchange.
pub(crate) struct ExchangePipe<T> {
    senders: Vec<Outlet<T>>,
    partitioner: Partitioner<T>,
    /// Hash partitioning: the records of one batch for each downstream
    /// subtask.
    parts: Vec<Vec<T>>,
    task: String,
}

impl<T: Send + 'static> ExchangePipe<T> {
    pub(crate) fn new(senders: Vec<Outlet<T>>, partitioner: Partitioner<T>, task: String) -> Self {
        ExchangePipe {
            parts: senders.iter().map(|_| Vec::new()).collect(),
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

    fn push<'a>(&'a mut self, batch: &'a mut Vec<T>) -> PushFuture<'a> {
        let n = self.senders.len();
        // Messages whose queue was full, at most one per queue.
        let mut waiting: Vec<(usize, Message<T>)> = Vec::new();
        let mut offer = |i: usize, batch: &mut Vec<T>| -> Result<()> {
            if let Some(message) = self.senders[i].offer(batch, &self.task)? {
                waiting.push((i, message));
            }
            Ok(())
        };
        let offered = match &mut self.partitioner {
            _ if n == 1 => offer(0, batch),
            Partitioner::Rebalance { next } => {
                let i = *next;
                *next = (i + 1) % n;
                offer(i, batch)
            }
            Partitioner::Hash(hash) => {
                for record in batch.drain(..) {
                    self.parts[(hash(&record) % n as u64) as usize].push(record);
                }
                self.parts
                    .iter_mut()
                    .enumerate()
                    .filter(|(_, part)| !part.is_empty())
                    .try_for_each(|(i, part)| offer(i, part))
            }
        };
        if let Err(e) = offered {
            return PushFuture::ready(Err(e));
        }
        if waiting.is_empty() {
            return PushFuture::ready(Ok(()));
        }
        let (senders, task) = (&self.senders, &self.task);
        PushFuture::Waiting(Box::pin(async move {
            for (i, message) in waiting {
                senders[i]
                    .tx
                    .send(message)
                    .await
                    .map_err(|_| downstream_gone(task))?;
            }
            Ok(())
        }))
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
    use crate::key::{key_hash, key_subtask};
    use std::sync::Arc;

    #[tokio::test]
    async fn an_emptied_batch_goes_back_to_the_sender_to_be_filled_again() {
        let channels = GateChannels::<u32>::new(&[(0, 1)], 1, 4);
        let partitioner = Partitioner::Rebalance { next: 0 };
        let mut pipe = ExchangePipe::new(channels.senders(0, 0), partitioner, "t".into());
        let (mut rx, pool) = channels.take_receivers(0).pop().unwrap();
        let mut batch: Vec<u32> = (0..100).collect();
        pipe.push(&mut batch).await.unwrap();
        assert_eq!(
            batch.capacity(),
            0,
            "the pool was empty: no batch to reuse yet"
        );
        let Some(Message::Batch(received)) = rx.recv().await else {
            panic!("no batch")
        };
        assert_eq!(received.len(), 100);
        let allocation = received.as_ptr();
        pool.give(received);
        batch.extend(0..3);
        pipe.push(&mut batch).await.unwrap();
        assert!(batch.is_empty());
        assert_eq!(batch.as_ptr(), allocation, "the returned batch is reused");
        assert!(batch.capacity() >= 100);
    }

    #[tokio::test]
    async fn hash_partitioning_agrees_with_key_subtask_and_barriers_reach_everyone() {
        let channels = GateChannels::<u32>::new(&[(0, 1)], 3, 8);
        let hash: KeyFn<u32, u64> = Arc::new(key_hash::<u32>);
        let mut pipe =
            ExchangePipe::new(channels.senders(0, 0), Partitioner::Hash(hash), "t".into());
        pipe.push(&mut (0..30).collect()).await.unwrap();
        let mut snap = SnapshotWriter::new(crate::codec::Codec::Bincode);
        let barrier = Barrier::new(1);
        pipe.barrier(barrier, &mut snap).await.unwrap();
        for d in 0..3 {
            let (mut rx, _) = channels.take_receivers(d).pop().unwrap();
            let Some(Message::Batch(batch)) = rx.recv().await else {
                panic!("no batch for {d}")
            };
            assert!(batch.iter().all(|k| key_subtask(k, 3) == d));
            assert!(matches!(
                rx.recv().await,
                Some(Message::Barrier(forwarded)) if forwarded == barrier
            ));
        }
    }
}
