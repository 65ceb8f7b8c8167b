//! The report types of the audit: what [`super::Analyzer`] produces and
//! [`super::render`] prints.
//!
//! Owns the [`AuditReport`] and its parts, the exit codes, and
//! [`Lookups`], what the analysis takes from the cluster probe. The
//! transaction counts per producer and in total are one type,
//! [`TransactionCounts`] of the raw reader, flattened into the JSON.
//!
//! Does not own how the report is filled ([`super::analysis`]) or printed
//! ([`super::render`]).

use std::collections::BTreeMap;
use std::fmt;

use exactly_kafka_wire::TransactionCounts;
use serde::Serialize;

/// Exit code: the audit found nothing wrong.
pub const EXIT_CLEAN: u8 = 0;
/// Exit code: duplicates or gaps were found (or open transactions, with
/// `--fail-on-open`).
pub const EXIT_FINDINGS: u8 = 1;
/// Exit code: a usage error, or the topic could not be read.
pub const EXIT_ERROR: u8 = 2;

/// A record's place: partition and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Location {
    /// The partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.partition, self.offset)
    }
}

/// What one producer id left in one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProducerReport {
    /// The producer id; -1 for producers neither idempotent nor
    /// transactional.
    pub producer_id: i64,
    /// Its transactions and records.
    #[serde(flatten)]
    pub counts: TransactionCounts,
}

/// A transaction with records but no marker yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenTransactionReport {
    /// The producer id.
    pub producer_id: i64,
    /// The producer epoch of its first batch.
    pub producer_epoch: i16,
    /// The offset of its first record.
    pub first_offset: i64,
    /// How many records it holds.
    pub records: u64,
    /// The timestamp of its first record (ms since the epoch), when the
    /// probe could read it.
    pub first_record_timestamp_ms: Option<i64>,
    /// The audit time minus that timestamp, at least 0.
    pub open_for_ms: Option<i64>,
    /// Its transactional id, when ListTransactions named it.
    pub transactional_id: Option<String>,
}

/// Everything about one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionReport {
    /// The partition.
    pub partition: i32,
    /// The first offset in the log.
    pub log_start_offset: i64,
    /// The high watermark the read went up to.
    pub high_watermark: i64,
    /// The last stable offset computed from the log.
    pub last_stable_offset: i64,
    /// The last stable offset the broker reported (-1: none).
    pub broker_last_stable_offset: i64,
    /// Records visible under read_committed.
    pub visible_records: u64,
    /// Per producer id, in ascending order.
    pub producers: Vec<ProducerReport>,
    /// Open transactions, oldest first.
    pub open_transactions: Vec<OpenTransactionReport>,
    /// How long the last stable offset has been stuck behind the oldest
    /// open transaction (its `open_for_ms`); `None` when nothing is open
    /// or the age is unknown.
    pub stuck_for_ms: Option<i64>,
}

/// Sums over the partitions read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Partitions read.
    pub partitions: u64,
    /// Records visible under read_committed.
    pub visible_records: u64,
    /// Transactions (one per marker, per partition) and records of all
    /// producer ids.
    #[serde(flatten)]
    pub counts: TransactionCounts,
}

/// Records a check could not read, for one reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unchecked {
    /// Why, e.g. `no field 'seq'`.
    pub reason: String,
    /// How many records.
    pub records: u64,
    /// The first such record.
    pub first: Location,
}

/// A sequence number seen more than once for one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SequenceDuplicate {
    /// The key (`None` without a key option).
    pub key: Option<String>,
    /// The sequence number.
    pub sequence: i64,
    /// Every record carrying it.
    pub locations: Vec<Location>,
}

/// A sequence number and where it was seen first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SequenceAt {
    /// The sequence number.
    pub sequence: i64,
    /// Its first record.
    pub location: Location,
}

/// A run of sequence numbers missing for one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    /// The key (`None` without a key option).
    pub key: Option<String>,
    /// The first missing sequence number.
    pub first_missing: i64,
    /// The last missing sequence number.
    pub last_missing: i64,
    /// How many are missing.
    pub missing: u64,
    /// The sequence number before the gap, if any (none for a gap before
    /// the first sequence number seen, with `--seq-start`).
    pub after: Option<SequenceAt>,
    /// The sequence number after the gap.
    pub before: SequenceAt,
}

/// The result of the sequence check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SequenceReport {
    /// Where keys came from: `field 'user'`, `record key`, or `none`.
    pub key: String,
    /// The sequence field.
    pub field: String,
    /// The expected first sequence number, if given.
    pub start: Option<i64>,
    /// Records whose key and sequence number could be read.
    pub records_checked: u64,
    /// Distinct keys among them.
    pub keys: u64,
    /// Duplicate sequence numbers, by key then sequence number.
    pub duplicates: Vec<SequenceDuplicate>,
    /// Missing sequence numbers, by key then sequence number.
    pub gaps: Vec<Gap>,
    /// Records that could not be checked, by reason.
    pub unchecked: Vec<Unchecked>,
}

/// An identity seen in more than one record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValueDuplicate {
    /// The identity.
    pub value: String,
    /// Every record carrying it.
    pub locations: Vec<Location>,
}

/// The result of the duplicate check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DedupReport {
    /// Where identities came from: `field 'id'` or `record key`.
    pub source: String,
    /// Records whose identity could be read.
    pub records_checked: u64,
    /// Distinct identities among them.
    pub distinct: u64,
    /// Identities seen more than once, in identity order.
    pub duplicates: Vec<ValueDuplicate>,
    /// Records that could not be checked, by reason.
    pub unchecked: Vec<Unchecked>,
}

/// An open transaction that ListTransactions reported under the prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListedTransaction {
    /// The transactional id.
    pub transactional_id: String,
    /// Its current producer id.
    pub producer_id: i64,
    /// Its state: `Ongoing`, `PrepareCommit`, `PrepareAbort` or
    /// `PrepareEpochFence`.
    pub state: String,
    /// The broker coordinating it.
    pub coordinator: String,
    /// The producer epoch (DescribeTransactions).
    pub producer_epoch: Option<i16>,
    /// When the transaction started, ms since the epoch
    /// (DescribeTransactions).
    pub start_time_ms: Option<i64>,
    /// The audit time minus the start time, at least 0.
    pub open_for_ms: Option<i64>,
    /// Its transaction timeout (DescribeTransactions).
    pub timeout_ms: Option<i32>,
    /// Partitions of the audited topic in the transaction
    /// (DescribeTransactions).
    pub partitions_in_topic: Vec<i32>,
    /// Where the audited topic's log holds an open transaction of this
    /// producer id (first offsets).
    pub open_in_log: Vec<Location>,
}

impl ListedTransaction {
    /// A transaction as ListTransactions names it, before
    /// DescribeTransactions and the log add their details.
    pub fn new(
        transactional_id: String,
        producer_id: i64,
        state: String,
        coordinator: String,
    ) -> Self {
        Self {
            transactional_id,
            producer_id,
            state,
            coordinator,
            producer_epoch: None,
            start_time_ms: None,
            open_for_ms: None,
            timeout_ms: None,
            partitions_in_topic: Vec::new(),
            open_in_log: Vec::new(),
        }
    }
}

/// What became of the transactional-id look-up (`--prefix`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TransactionLookup {
    /// No `--prefix` was given.
    NotRequested,
    /// The broker does not offer ListTransactions (Kafka before 3.0, or a
    /// Kafka-compatible broker without it).
    Unsupported {
        /// The prefix asked for.
        prefix: String,
        /// Why, from the broker's API versions.
        reason: String,
    },
    /// The look-up failed (connection, authorization, error code).
    Failed {
        /// The prefix asked for.
        prefix: String,
        /// What went wrong.
        error: String,
    },
    /// ListTransactions answered.
    Listed {
        /// The prefix asked for.
        prefix: String,
        /// The open transactions under the prefix, by transactional id.
        transactions: Vec<ListedTransaction>,
        /// Why details (start time, epoch, partitions) are missing, if
        /// they are.
        describe_note: Option<String>,
    },
}

/// How many findings decide the exit code.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Findings {
    /// Duplicate sequence numbers plus duplicate identities.
    pub duplicates: u64,
    /// Runs of missing sequence numbers.
    pub gaps: u64,
    /// Open transactions in the logs read, plus open transactions listed
    /// under the prefix that are not among them.
    pub open_transactions: u64,
    /// Whether open transactions count towards the exit code.
    pub fail_on_open: bool,
}

/// The result of an audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    /// The topic.
    pub topic: String,
    /// The broker asked.
    pub bootstrap: String,
    /// The audit time, ms since the epoch.
    pub now_ms: i64,
    /// The partitions read, in order.
    pub partitions: Vec<PartitionReport>,
    /// Sums over them.
    pub totals: Totals,
    /// Why open-transaction ages are missing, if they are.
    pub open_age_note: Option<String>,
    /// The sequence check, if asked for.
    pub sequence: Option<SequenceReport>,
    /// The duplicate check, if asked for.
    pub dedup: Option<DedupReport>,
    /// The transactional-id look-up.
    pub transactional_ids: TransactionLookup,
    /// What decides the exit code.
    pub findings: Findings,
    /// [`EXIT_CLEAN`] or [`EXIT_FINDINGS`].
    pub exit_code: u8,
}

/// What the analysis needs from outside the logs.
#[derive(Debug, Clone)]
pub struct Lookups {
    /// The audit time, ms since the epoch.
    pub now_ms: i64,
    /// The timestamp of the first record of open transactions, by
    /// partition and first offset.
    pub first_record_timestamps: BTreeMap<(i32, i64), i64>,
    /// Why some of those timestamps are missing.
    pub open_age_note: Option<String>,
    /// The transactional-id look-up.
    pub transactions: TransactionLookup,
}

impl Lookups {
    /// No timestamps, no transactional ids, at `now_ms`.
    pub fn none(now_ms: i64) -> Self {
        Self {
            now_ms,
            first_record_timestamps: BTreeMap::new(),
            open_age_note: None,
            transactions: TransactionLookup::NotRequested,
        }
    }
}
