//! [`CollectSink`]: an exactly-once in-memory sink, for tests and examples.
//!
//! Owns: the sink and its transaction type, which keeps a transaction's
//! records in memory until it commits. Does not own the lifecycle its calls
//! follow ([`crate::sink`]).

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize as SerializeDerive};

use super::{SinkContext, TwoPhaseCommitSink};
use crate::error::BoxError;

/// Collects committed records in memory, shared by every clone.
///
/// A transaction carries its records, so they are part of the checkpoint (a
/// write-ahead log, like Flink's `GenericWriteAheadSink`); commit appends
/// them once to the shared list. Committed data survives restarts within
/// one process, which makes it the sink to test exactly-once in-process.
pub struct CollectSink<T> {
    shared: Arc<Mutex<Collected<T>>>,
    prefix: String,
    next: u64,
}

struct Collected<T> {
    records: Vec<T>,
    committed: HashSet<String>,
}

/// A [`CollectSink`] transaction: a unique id and its records.
#[derive(Clone, SerializeDerive, Deserialize)]
pub struct CollectTransaction<T> {
    /// Unique id, so that a repeated commit is applied once.
    pub id: String,
    /// The records written in the transaction.
    pub records: Vec<T>,
}

impl<T> fmt::Debug for CollectTransaction<T> {
    /// The id and the number of records: logs name a transaction, they do
    /// not list its records.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CollectTransaction")
            .field("id", &self.id)
            .field("records", &self.records.len())
            .finish()
    }
}

impl<T> fmt::Debug for CollectSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CollectSink")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl<T> Clone for CollectSink<T> {
    fn clone(&self) -> Self {
        CollectSink {
            shared: Arc::clone(&self.shared),
            prefix: self.prefix.clone(),
            next: self.next,
        }
    }
}

impl<T: Clone> CollectSink<T> {
    /// An empty sink.
    pub fn new() -> Self {
        CollectSink {
            shared: Arc::new(Mutex::new(Collected {
                records: Vec::new(),
                committed: HashSet::new(),
            })),
            prefix: String::new(),
            next: 0,
        }
    }

    /// Every committed record, in commit order.
    pub fn committed(&self) -> Vec<T> {
        self.shared
            .lock()
            .expect("collect sink poisoned")
            .records
            .clone()
    }
}

impl<T: Clone> Default for CollectSink<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> TwoPhaseCommitSink for CollectSink<T>
where
    T: Serialize + DeserializeOwned + Clone + fmt::Debug + Send + 'static,
{
    type Item = T;
    type Transaction = CollectTransaction<T>;

    fn name(&self) -> String {
        "collect".into()
    }

    /// In memory: its only lock is held for the length of a commit's
    /// append.
    fn may_block(&self) -> bool {
        false
    }

    fn open(&mut self, ctx: &SinkContext) -> Result<(), BoxError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        self.prefix = format!("{}-{}-{nanos:x}", ctx.subtask.index, ctx.subtask.attempt);
        Ok(())
    }

    fn begin_transaction(&mut self, checkpoint_id: u64) -> Result<Self::Transaction, BoxError> {
        self.next += 1;
        Ok(CollectTransaction {
            id: format!("{}-{checkpoint_id}-{}", self.prefix, self.next),
            records: Vec::new(),
        })
    }

    fn write(
        &mut self,
        transaction: &mut Self::Transaction,
        batch: Vec<T>,
    ) -> Result<(), BoxError> {
        transaction.records.extend(batch);
        Ok(())
    }

    fn pre_commit(&mut self, _transaction: &mut Self::Transaction) -> Result<(), BoxError> {
        Ok(())
    }

    fn commit(&mut self, transaction: Self::Transaction) -> Result<(), BoxError> {
        let mut shared = self.shared.lock().map_err(|_| "collect sink poisoned")?;
        if shared.committed.insert(transaction.id) {
            shared.records.extend(transaction.records);
        }
        Ok(())
    }

    fn abort(&mut self, _transaction: Self::Transaction) -> Result<(), BoxError> {
        Ok(())
    }
}
