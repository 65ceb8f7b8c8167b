//! [`DiscardSink`]: drops every record (for benchmarks and examples).
//!
//! Owns: the sink, whose transactions are empty. Does not own the
//! lifecycle its calls follow ([`crate::sink`]).

use std::marker::PhantomData;

use super::TwoPhaseCommitSink;
use crate::error::BoxError;

/// A sink that drops every record. Its transactions are empty.
#[derive(Debug)]
pub struct DiscardSink<T> {
    _records: PhantomData<fn(T)>,
}

impl<T> DiscardSink<T> {
    /// A sink that drops every record.
    pub fn new() -> Self {
        DiscardSink {
            _records: PhantomData,
        }
    }
}

impl<T> Default for DiscardSink<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for DiscardSink<T> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl<T: Send + 'static> TwoPhaseCommitSink for DiscardSink<T> {
    type Item = T;
    type Transaction = ();

    fn name(&self) -> String {
        "discard".into()
    }

    fn may_block(&self) -> bool {
        false
    }

    fn begin_transaction(&mut self, _checkpoint_id: u64) -> Result<(), BoxError> {
        Ok(())
    }

    fn write(&mut self, _transaction: &mut (), _batch: Vec<T>) -> Result<(), BoxError> {
        Ok(())
    }

    fn pre_commit(&mut self, _transaction: &mut ()) -> Result<(), BoxError> {
        Ok(())
    }

    fn commit(&mut self, _transaction: ()) -> Result<(), BoxError> {
        Ok(())
    }

    fn abort(&mut self, _transaction: ()) -> Result<(), BoxError> {
        Ok(())
    }
}
