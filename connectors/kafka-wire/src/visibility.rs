//! Kafka's read_committed rule (KIP-98), applied by the reader itself.
//!
//! Owns the result types of a partition read ([`PartitionLog`] and its
//! parts) and the state machine that fills them from decoded batches, in
//! log order:
//!
//! * a record of a non-transactional batch is visible at once;
//! * a record of a transactional batch is held back under its producer id
//!   until a control batch of that producer id follows: a COMMIT marker
//!   makes the held records visible, an ABORT marker drops them (counting
//!   them as aborted);
//! * records still held when the read ends belong to open transactions, and
//!   the first offset of the oldest one is the last stable offset.
//!
//! Does not own decoding bytes ([`crate::batch`]) or fetching them
//! ([`crate::committed_reader`]). It trusts no broker-side bookkeeping: the
//! broker's aborted-transaction list and last stable offset are not used.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::batch::{BatchError, DecodedBatch};
use crate::header::RecordHeader;

/// Control record type of an ABORT marker.
const CONTROL_ABORT: i16 = 0;
/// Control record type of a COMMIT marker.
const CONTROL_COMMIT: i16 = 1;

/// A record a read_committed consumer may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisibleRecord {
    /// The record's offset in its partition.
    pub offset: i64,
    /// The record key; `None` for a null key.
    pub key: Option<Bytes>,
    /// The record value; `None` for a null value (a tombstone).
    pub value: Option<Bytes>,
    /// The record headers, in order.
    pub headers: Vec<RecordHeader>,
    /// The record timestamp in milliseconds since the epoch (the broker's
    /// append time for topics with `LogAppendTime`).
    pub timestamp: i64,
    /// The producer id of the batch; -1 when the producer was neither
    /// idempotent nor transactional.
    pub producer_id: i64,
    /// Whether the record was written in a (committed) transaction.
    pub transactional: bool,
}

/// What one producer id left in a partition, or, added up
/// ([`TransactionCounts::add`]), what several did: the one transaction-count
/// type of the workspace (the audit reports it per producer and in total).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct TransactionCounts {
    /// COMMIT markers seen.
    pub committed_transactions: u64,
    /// Records made visible by those COMMIT markers.
    pub committed_records: u64,
    /// ABORT markers seen.
    pub aborted_transactions: u64,
    /// Records dropped by those ABORT markers.
    pub aborted_records: u64,
    /// Transactions with records but no marker yet (0 or 1 per producer id
    /// and partition).
    pub open_transactions: u64,
    /// Records of the open transactions.
    pub open_records: u64,
    /// Records written outside transactions (all visible).
    pub non_transactional_records: u64,
}

impl TransactionCounts {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Self) {
        self.committed_transactions += other.committed_transactions;
        self.committed_records += other.committed_records;
        self.aborted_transactions += other.aborted_transactions;
        self.aborted_records += other.aborted_records;
        self.open_transactions += other.open_transactions;
        self.open_records += other.open_records;
        self.non_transactional_records += other.non_transactional_records;
    }
}

/// A transaction with records in the partition but no COMMIT or ABORT
/// marker yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenTransaction {
    /// The transaction's producer id.
    pub producer_id: i64,
    /// The producer epoch of its first batch.
    pub producer_epoch: i16,
    /// The offset of its first record.
    pub first_offset: i64,
    /// How many records it holds.
    pub records: u64,
}

/// Everything a read of one partition found, from the log start offset up
/// to the high watermark captured when the read began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLog {
    /// The topic name.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The first offset in the log.
    pub log_start_offset: i64,
    /// The offset after the last record the read covered (the partition's
    /// high watermark when the read began). Later records are not read.
    pub high_watermark: i64,
    /// The first offset of the oldest open transaction, or the high
    /// watermark when no transaction is open: what KIP-98 calls the last
    /// stable offset, computed from the log itself.
    pub last_stable_offset: i64,
    /// The last stable offset the broker reported in its last Fetch
    /// response (-1 when it reported none), for comparison.
    pub broker_last_stable_offset: i64,
    /// The visible records: non-transactional ones and those of committed
    /// transactions, in offset order.
    pub records: Vec<VisibleRecord>,
    /// Per producer id, what it left in the partition.
    pub producers: BTreeMap<i64, TransactionCounts>,
    /// The open transactions, oldest first.
    pub open_transactions: Vec<OpenTransaction>,
}

impl PartitionLog {
    /// The oldest open transaction, whose first offset is the last stable
    /// offset.
    pub fn oldest_open_transaction(&self) -> Option<&OpenTransaction> {
        self.open_transactions.first()
    }

    /// Records dropped by ABORT markers, over all producers.
    pub fn aborted_records(&self) -> u64 {
        self.producers.values().map(|p| p.aborted_records).sum()
    }

    /// The values of the visible records, in offset order (`None` for null
    /// values).
    pub fn values(&self) -> Vec<Option<&[u8]>> {
        self.records.iter().map(|r| r.value.as_deref()).collect()
    }
}

/// Records of one producer id waiting for their transaction's marker.
#[derive(Debug)]
struct Pending {
    producer_epoch: i16,
    first_offset: i64,
    records: Vec<VisibleRecord>,
}

/// The read_committed state of one partition while its batches stream in.
#[derive(Debug)]
pub(crate) struct PartitionScan {
    start_offset: i64,
    end_offset: i64,
    records: Vec<VisibleRecord>,
    pending: BTreeMap<i64, Pending>,
    producers: BTreeMap<i64, TransactionCounts>,
}

impl PartitionScan {
    /// A scan that considers records in `start_offset..end_offset` only.
    pub(crate) fn new(start_offset: i64, end_offset: i64) -> Self {
        Self {
            start_offset,
            end_offset,
            records: Vec::new(),
            pending: BTreeMap::new(),
            producers: BTreeMap::new(),
        }
    }

    /// Applies one batch. Batches must come in log order; records outside
    /// the scan's offset range are skipped.
    pub(crate) fn apply(&mut self, batch: DecodedBatch) -> Result<(), BatchError> {
        let range = self.start_offset..self.end_offset;
        let producer_id = batch.producer_id;
        if batch.control {
            for record in batch.records.iter().filter(|r| range.contains(&r.offset)) {
                match control_type(record.key.as_deref()) {
                    Some(CONTROL_COMMIT) => self.end_transaction(producer_id, true),
                    Some(CONTROL_ABORT) => self.end_transaction(producer_id, false),
                    Some(_) => {}
                    None => {
                        return Err(BatchError {
                            offset: record.offset,
                            reason: format!(
                                "control record of producer id {producer_id} has a key of {} \
                                 bytes, not a 4-byte (version, type) key",
                                record.key.as_ref().map_or(0, Bytes::len)
                            ),
                        });
                    }
                }
            }
            return Ok(());
        }
        for record in batch
            .records
            .into_iter()
            .filter(|r| range.contains(&r.offset))
        {
            let visible = VisibleRecord {
                offset: record.offset,
                key: record.key,
                value: record.value,
                headers: record.headers,
                timestamp: record.timestamp,
                producer_id,
                transactional: batch.transactional,
            };
            if batch.transactional {
                self.pending
                    .entry(producer_id)
                    .or_insert_with(|| Pending {
                        producer_epoch: batch.producer_epoch,
                        first_offset: visible.offset,
                        records: Vec::new(),
                    })
                    .records
                    .push(visible);
            } else {
                self.producers
                    .entry(producer_id)
                    .or_default()
                    .non_transactional_records += 1;
                self.records.push(visible);
            }
        }
        Ok(())
    }

    fn end_transaction(&mut self, producer_id: i64, commit: bool) {
        let records = self
            .pending
            .remove(&producer_id)
            .map(|p| p.records)
            .unwrap_or_default();
        let count = records.len() as u64;
        let summary = self.producers.entry(producer_id).or_default();
        if commit {
            summary.committed_transactions += 1;
            summary.committed_records += count;
            self.records.extend(records);
        } else {
            summary.aborted_transactions += 1;
            summary.aborted_records += count;
        }
    }

    /// Ends the scan. Records still pending belong to open transactions.
    pub(crate) fn finish(
        mut self,
        topic: &str,
        partition: i32,
        log_start_offset: i64,
        broker_last_stable_offset: i64,
    ) -> PartitionLog {
        let mut open_transactions: Vec<OpenTransaction> = self
            .pending
            .iter()
            .map(|(&producer_id, pending)| OpenTransaction {
                producer_id,
                producer_epoch: pending.producer_epoch,
                first_offset: pending.first_offset,
                records: pending.records.len() as u64,
            })
            .collect();
        open_transactions.sort_by_key(|t| t.first_offset);
        for open in &open_transactions {
            let summary = self.producers.entry(open.producer_id).or_default();
            summary.open_transactions += 1;
            summary.open_records += open.records;
        }
        self.records.sort_by_key(|r| r.offset);
        PartitionLog {
            topic: topic.to_owned(),
            partition,
            log_start_offset,
            high_watermark: self.end_offset,
            last_stable_offset: open_transactions
                .first()
                .map_or(self.end_offset, |t| t.first_offset),
            broker_last_stable_offset,
            records: self.records,
            producers: self.producers,
            open_transactions,
        }
    }
}

/// The type of a control record from its key: version (i16) then type
/// (i16). `None` when the key is not at least 4 bytes.
fn control_type(key: Option<&[u8]>) -> Option<i16> {
    match key? {
        [_, _, high, low, ..] => Some(i16::from_be_bytes([*high, *low])),
        _ => None,
    }
}

/// How a transaction ended in one partition, from the log
/// ([`crate::CommittedReader::transaction_outcome`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionOutcome {
    /// Its producer's next control record is a COMMIT.
    Committed,
    /// Its producer's next control record is an ABORT.
    Aborted,
    /// No control record of its producer follows yet.
    Open,
    /// Retention or compaction removed the offset: the log cannot tell.
    Deleted {
        /// The partition's log start offset.
        log_start_offset: i64,
    },
    /// The record at the offset is another producer's (or a marker): the
    /// recorded offset does not belong to the transaction.
    NotItsRecord {
        /// The producer whose record is there.
        producer_id: i64,
    },
    /// The record at the offset is no longer in the log, though later
    /// offsets are: compaction removed it. The cleaner also removes a
    /// transaction's marker once all its records are gone, so the
    /// producer's next marker may end another transaction: the log cannot
    /// tell.
    Removed,
}

/// Finds how the transaction of `producer_id` that begins at
/// `first_offset` ended, from batches read in log order from that offset:
/// the record at the offset must be that producer's (when it is still in
/// the log; a compacted log may have removed it, and then the log cannot
/// tell), and the producer's first control record after it decides.
#[derive(Debug)]
pub(crate) struct OutcomeScan {
    first_offset: i64,
    producer_id: i64,
    /// Whether the record at `first_offset` was seen.
    found_first: bool,
    outcome: TransactionOutcome,
}

impl OutcomeScan {
    pub(crate) fn new(first_offset: i64, producer_id: i64) -> Self {
        Self {
            first_offset,
            producer_id,
            found_first: false,
            outcome: TransactionOutcome::Open,
        }
    }

    /// Looks at the next batch; `false` once the outcome is known.
    pub(crate) fn visit(&mut self, batch: &DecodedBatch) -> Result<bool, BatchError> {
        let holds_first = batch.base_offset <= self.first_offset
            && self.first_offset <= batch.last_offset
            && batch.records.iter().any(|r| r.offset == self.first_offset);
        if holds_first && (batch.producer_id != self.producer_id || batch.control) {
            self.outcome = TransactionOutcome::NotItsRecord {
                producer_id: batch.producer_id,
            };
            return Ok(false);
        }
        self.found_first |= holds_first;
        if !self.found_first && batch.last_offset >= self.first_offset {
            self.outcome = TransactionOutcome::Removed;
            return Ok(false);
        }
        if !batch.control || batch.producer_id != self.producer_id {
            return Ok(true);
        }
        for record in &batch.records {
            match control_type(record.key.as_deref()) {
                Some(CONTROL_COMMIT) => self.outcome = TransactionOutcome::Committed,
                Some(CONTROL_ABORT) => self.outcome = TransactionOutcome::Aborted,
                Some(_) => continue,
                None => {
                    return Err(BatchError {
                        offset: record.offset,
                        reason: format!(
                            "control record of producer id {} has a key of {} bytes, not a 4-byte (version, type) key",
                            batch.producer_id,
                            record.key.as_ref().map_or(0, Bytes::len)
                        ),
                    });
                }
            }
            return Ok(false);
        }
        Ok(true)
    }

    pub(crate) fn finish(self) -> TransactionOutcome {
        self.outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{decode_batch, split_batches};
    use crate::fake_broker::{TestBatch, encode, marker};

    fn data(base_offset: i64, producer_id: i64, transactional: bool, values: &[&str]) -> Bytes {
        encode(&TestBatch {
            base_offset,
            producer_id,
            transactional,
            control: false,
            records: values
                .iter()
                .map(|v| (None, Some(v.as_bytes()), vec![]))
                .collect(),
        })
    }

    fn scan(start: i64, end: i64, batches: &[Bytes]) -> PartitionLog {
        let mut scan = PartitionScan::new(start, end);
        for bytes in batches {
            for raw in split_batches(bytes.clone()).unwrap().batches {
                scan.apply(decode_batch(&raw).unwrap()).unwrap();
            }
        }
        scan.finish("t", 0, start, -1)
    }

    fn values(log: &PartitionLog) -> Vec<&str> {
        log.values()
            .into_iter()
            .map(|v| std::str::from_utf8(v.unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn commits_show_aborts_drop_and_open_transactions_hold_the_lso() {
        let log = scan(
            0,
            12,
            &[
                data(0, -1, false, &["plain-0"]),
                data(1, 7, true, &["c-1", "c-2"]),
                data(3, 8, true, &["a-3"]),
                data(4, 7, true, &["c-4"]),
                marker(5, 7, true),
                marker(6, 8, false),
                data(7, 9, true, &["open-7"]),
                data(8, -1, false, &["plain-8"]),
                data(9, 9, true, &["open-9"]),
                data(10, 10, true, &["a-10"]),
                marker(11, 10, false),
            ],
        );
        assert_eq!(values(&log), ["plain-0", "c-1", "c-2", "c-4", "plain-8"]);
        assert!(log.records[1].transactional && !log.records[0].transactional);
        assert_eq!(log.aborted_records(), 2);
        assert_eq!(
            log.open_transactions,
            [OpenTransaction {
                producer_id: 9,
                producer_epoch: 0,
                first_offset: 7,
                records: 2,
            }]
        );
        assert_eq!(log.last_stable_offset, 7);
        assert_eq!(log.high_watermark, 12);
        let p7 = log.producers[&7];
        assert_eq!((p7.committed_transactions, p7.committed_records), (1, 3));
        let p8 = log.producers[&8];
        assert_eq!((p8.aborted_transactions, p8.aborted_records), (1, 1));
        let p9 = log.producers[&9];
        assert_eq!((p9.open_transactions, p9.open_records), (1, 2));
        assert_eq!(log.producers[&-1].non_transactional_records, 2);
    }

    #[test]
    fn without_open_transactions_the_lso_is_the_high_watermark() {
        let log = scan(0, 3, &[data(0, 4, true, &["x", "y"]), marker(2, 4, true)]);
        assert_eq!(values(&log), ["x", "y"]);
        assert_eq!(log.last_stable_offset, 3);
        assert!(log.oldest_open_transaction().is_none());
    }

    #[test]
    fn only_records_inside_the_range_count() {
        let log = scan(
            1,
            3,
            &[
                data(0, -1, false, &["before", "inside"]),
                data(2, 5, true, &["held"]),
                marker(3, 5, true),
            ],
        );
        assert_eq!(values(&log), ["inside"]);
        assert_eq!(log.open_transactions.len(), 1);
        assert_eq!(log.last_stable_offset, 2);
    }

    #[test]
    fn a_marker_without_held_records_counts_an_empty_transaction() {
        let log = scan(0, 1, &[marker(0, 6, true)]);
        assert!(log.records.is_empty());
        let p6 = log.producers[&6];
        assert_eq!((p6.committed_transactions, p6.committed_records), (1, 0));
    }

    #[test]
    fn a_control_record_with_a_short_key_is_an_error() {
        let bytes = encode(&TestBatch {
            base_offset: 4,
            producer_id: 3,
            transactional: true,
            control: true,
            records: vec![(Some(&[0, 0][..]), None, vec![])],
        });
        let raw = &split_batches(bytes).unwrap().batches[0];
        let error = PartitionScan::new(0, 10)
            .apply(decode_batch(raw).unwrap())
            .unwrap_err();
        assert_eq!(error.offset, 4);
        assert!(error.reason.contains("2 bytes"), "{}", error.reason);
    }

    fn outcome(first_offset: i64, producer_id: i64, batches: &[Bytes]) -> TransactionOutcome {
        let mut scan = OutcomeScan::new(first_offset, producer_id);
        for bytes in batches {
            for raw in split_batches(bytes.clone()).unwrap().batches {
                if !scan.visit(&decode_batch(&raw).unwrap()).unwrap() {
                    return scan.finish();
                }
            }
        }
        scan.finish()
    }

    #[test]
    fn the_producers_first_marker_after_the_offset_decides() {
        let ours = data(4, 7, true, &["a", "b"]);
        let theirs = data(6, 8, true, &["x"]);
        let committed = outcome(
            4,
            7,
            &[
                ours.clone(),
                theirs.clone(),
                marker(7, 8, false),
                marker(8, 7, true),
            ],
        );
        assert_eq!(
            committed,
            TransactionOutcome::Committed,
            "another producer's ABORT does not count"
        );
        assert_eq!(
            outcome(4, 7, &[ours.clone(), marker(6, 7, false)]),
            TransactionOutcome::Aborted
        );
        assert_eq!(outcome(4, 7, &[ours, theirs]), TransactionOutcome::Open);
    }

    #[test]
    fn another_producers_record_at_the_offset_is_not_the_transaction() {
        assert_eq!(
            outcome(4, 7, &[data(4, 8, true, &["x"]), marker(5, 7, true)]),
            TransactionOutcome::NotItsRecord { producer_id: 8 }
        );
    }

    /// Review finding 4 of issue 19: with offset 4 compacted away, the
    /// producer's next marker may end a later transaction (the cleaner
    /// removes a transaction's marker with its last record), so neither an
    /// ABORT nor a COMMIT after it decides.
    #[test]
    fn a_marker_after_a_removed_first_offset_decides_nothing() {
        for commit in [false, true] {
            assert_eq!(
                outcome(4, 7, &[data(5, 7, true, &["b"]), marker(6, 7, commit)]),
                TransactionOutcome::Removed,
                "a {} marker",
                if commit { "COMMIT" } else { "ABORT" }
            );
        }
        assert_eq!(
            outcome(4, 7, &[marker(6, 7, false)]),
            TransactionOutcome::Removed,
            "only a later ABORT left"
        );
    }
}
