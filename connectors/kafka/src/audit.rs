//! The audit of an exactly-once topic: the library behind the
//! `exactly-audit` binary (see `docs/audit.md`).
//!
//! Owns:
//!
//! * the command line: [`parse_args`] and [`USAGE`];
//! * the analysis of [`PartitionLog`]s ([`Analyzer`]): transactions per
//!   partition and producer id, records visible under read_committed, the
//!   last stable offset and how long it has been stuck, and the record
//!   checks — duplicate and missing sequence numbers per key
//!   ([`SequenceCheck`]) and plain duplicate detection ([`DedupSource`]) —
//!   on fields of JSON record values or on record keys;
//! * the [`AuditReport`], its human-readable and JSON renderings, and its
//!   exit code;
//! * the cluster look-ups the committed reader does not make ([`audit`]
//!   runs them): the timestamp of the first record of each open transaction
//!   (a READ_UNCOMMITTED Fetch at its first offset, since
//!   [`crate::OpenTransaction`] carries no timestamp), and the transactional
//!   ids behind producer ids (ListTransactions and DescribeTransactions,
//!   Kafka 3.0+), which brokers without those APIs turn into a note instead
//!   of an error.
//!
//! Does not own reading partitions ([`CommittedReader`]) or the
//! read_committed rule (`visibility.rs`).

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{DescribeTransactionsRequest, MetadataRequest, TransactionalId};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;
use serde_json::Value;

use crate::batch::{decode_batch, split_batches};
use crate::committed_reader::raw_fetch_request;
use crate::connection::{Connection, ConnectionSettings, error_name, topic_name};
use crate::error::ReadError;
use crate::transactions::{ListError, list_open};
use crate::visibility::{PartitionLog, VisibleRecord};
use crate::{CommittedReader, ReaderConfig};

/// Exit code: the audit found nothing wrong.
pub const EXIT_CLEAN: u8 = 0;
/// Exit code: duplicates or gaps were found (or open transactions, with
/// `--fail-on-open`).
pub const EXIT_FINDINGS: u8 = 1;
/// Exit code: a usage error, or the topic could not be read.
pub const EXIT_ERROR: u8 = 2;

/// The default bound on connecting and on each request, in milliseconds.
const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// How many duplicates, gaps and the like the text report lists per kind
/// unless `--max-listed` says otherwise.
const DEFAULT_MAX_LISTED: usize = 20;
/// The bytes the open-transaction probe fetches: the batch holding the
/// first record comes back whole even when it is larger (KIP-74).
const PROBE_FETCH_BYTES: i32 = 1024 * 1024;
/// How long the probe's Fetch may wait on the broker for data.
const PROBE_FETCH_MAX_WAIT_MS: i32 = 200;
/// The `--help` text.
pub const USAGE: &str = "\
exactly-audit: checks a Kafka topic written by an exactly-once pipeline.

Reads every partition raw (READ_UNCOMMITTED, control batches included) and
applies Kafka's read_committed rule itself, then reports committed, aborted
and open transactions per partition and producer id, the records visible
under read_committed, the last stable offset and how long it has been stuck
behind an open transaction, and, when asked, duplicates and gaps.

USAGE:
    exactly-audit --topic TOPIC [OPTIONS]

OPTIONS:
    --topic TOPIC          the topic to audit (required)
    --bootstrap HOST:PORT  a broker of the cluster (default: $EXACTLY_KAFKA_BOOTSTRAP,
                           else 127.0.0.1:9092)
    --partition N          audit partition N only; repeatable (default: all partitions)
    --timeout-ms MS        bound on connecting and on each request (default: 10000)

  Sequence check (duplicate and missing sequence numbers per key):
    --seq-field PATH       the sequence number: a field of the JSON record value,
                           an integer or a string holding one
    --key-field PATH       the key: a field of the JSON record value
    --key-from-record-key  the key: the record key (UTF-8, else 0x-hex)
                           (no key option: one sequence over the whole topic)
    --seq-start N          sequences are expected from N (default: each key's smallest)

  Duplicate check (the same identity in more than one record):
    --dedup-field PATH     the identity: a field of the JSON record value
    --dedup-record-key     the identity: the record key

    PATH is a field name, or a dot path into nested objects and arrays
    (`order.id`, `items.0.sku`). Records the check cannot read (null or
    non-JSON value, missing field, non-integer sequence, null key) are
    counted and listed as unchecked; they do not change the exit code.

  Transactions:
    --prefix P             list the open transactions of transactional ids starting
                           with P (ListTransactions/DescribeTransactions, Kafka 3.0+;
                           brokers without them get open transactions by producer id)
    --fail-on-open         exit 1 also when a transaction is open

  Output:
    --json                 machine-readable JSON on stdout instead of text
    --max-listed N         list at most N duplicates, gaps, ... per kind in the text
                           report; 0 lists all (default: 20; JSON lists all)
    -h, --help             this text

EXIT CODES:
    0  nothing found
    1  duplicates or gaps found (or open transactions, with --fail-on-open)
    2  usage error, or the topic could not be read (unknown topic or partition,
       unreachable broker, timeout, corrupt batch); one line on stderr names it
";

/// A command-line mistake, reported as one line with exit code
/// [`EXIT_ERROR`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (see --help)", self.0)
    }
}

impl std::error::Error for UsageError {}

/// A path to a field of a JSON value: object keys, or array indices for
/// arrays, separated by dots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    segments: Vec<String>,
}

impl FieldPath {
    /// Parses `a`, `a.b` or `items.0.id`. Empty segments are an error.
    pub fn parse(path: &str) -> Result<Self, UsageError> {
        let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
        if segments.iter().any(String::is_empty) {
            return Err(UsageError(format!(
                "invalid field path '{path}': expected names separated by single dots"
            )));
        }
        Ok(Self { segments })
    }

    /// The value at this path inside `value`, if there is one.
    pub fn get<'a>(&self, value: &'a Value) -> Option<&'a Value> {
        self.segments
            .iter()
            .try_fold(value, |current, segment| match current {
                Value::Object(map) => map.get(segment),
                Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            })
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.segments.join("."))
    }
}

/// Where the key of the sequence check comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// No key: one sequence over the whole topic.
    Topic,
    /// A field of the JSON record value.
    Field(FieldPath),
    /// The record key.
    RecordKey,
}

/// Duplicate and missing sequence numbers per key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceCheck {
    /// Where the key comes from.
    pub key: KeySource,
    /// The field of the JSON record value holding the sequence number.
    pub field: FieldPath,
    /// The first expected sequence number of every key; `None` starts each
    /// key at its smallest sequence number.
    pub start: Option<i64>,
}

/// Where the identity of the duplicate check comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DedupSource {
    /// A field of the JSON record value.
    Field(FieldPath),
    /// The record key.
    RecordKey,
}

/// What to audit and how.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// A broker of the cluster, `host:port`.
    pub bootstrap: String,
    /// The topic.
    pub topic: String,
    /// The partitions to read; empty reads all of them.
    pub partitions: Vec<i32>,
    /// The sequence check, if asked for.
    pub sequence: Option<SequenceCheck>,
    /// The duplicate check, if asked for.
    pub dedup: Option<DedupSource>,
    /// List open transactions of transactional ids with this prefix.
    pub transactional_id_prefix: Option<String>,
    /// Whether open transactions make the exit code [`EXIT_FINDINGS`].
    pub fail_on_open: bool,
    /// The bound on connecting and on each request.
    pub timeout: Duration,
}

impl AuditOptions {
    /// Options auditing every partition of `topic` at `bootstrap`, with no
    /// record checks and the default timeout.
    pub fn new(bootstrap: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            topic: topic.into(),
            partitions: Vec::new(),
            sequence: None,
            dedup: None,
            transactional_id_prefix: None,
            fail_on_open: false,
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
        }
    }

    fn reader_config(&self) -> ReaderConfig {
        ReaderConfig {
            connect_timeout: self.timeout,
            request_timeout: self.timeout,
            client_id: "exactly-audit".to_owned(),
            ..ReaderConfig::new(self.bootstrap.clone())
        }
    }
}

/// A parsed command line.
#[derive(Debug, Clone)]
pub enum Command {
    /// `--help`: print [`USAGE`].
    Help,
    /// Run the audit.
    Audit(Box<CliOptions>),
}

/// The audit options plus how to print the report.
#[derive(Debug, Clone)]
pub struct CliOptions {
    /// What to audit.
    pub audit: AuditOptions,
    /// JSON instead of text.
    pub json: bool,
    /// How many items per kind the text report lists; 0 for all.
    pub max_listed: usize,
}

/// Parses the arguments after the program name. `default_bootstrap` is
/// used when `--bootstrap` is absent. Flags take their value as the next
/// argument or after `=` (`--topic=t`).
pub fn parse_args<I>(args: I, default_bootstrap: String) -> Result<Command, UsageError>
where
    I: IntoIterator<Item = String>,
{
    let mut args = args.into_iter();
    let mut bootstrap = default_bootstrap;
    let mut topic = None;
    let mut partitions = Vec::new();
    let mut timeout_ms = DEFAULT_TIMEOUT_MS;
    let mut seq_field = None;
    let mut key_field = None;
    let mut key_from_record_key = false;
    let mut seq_start = None;
    let mut dedup_field = None;
    let mut dedup_record_key = false;
    let mut prefix = None;
    let mut fail_on_open = false;
    let mut json = false;
    let mut max_listed = DEFAULT_MAX_LISTED;
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_owned(), Some(value)),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, UsageError> {
            match inline {
                Some(value) => Ok(value.to_owned()),
                None => args
                    .next()
                    .ok_or_else(|| UsageError(format!("{name} needs a value"))),
            }
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--bootstrap" => bootstrap = value("--bootstrap")?,
            "--topic" => topic = Some(value("--topic")?),
            "--partition" => partitions.push(number::<i32>("--partition", &value("--partition")?)?),
            "--timeout-ms" => timeout_ms = number("--timeout-ms", &value("--timeout-ms")?)?,
            "--seq-field" => seq_field = Some(FieldPath::parse(&value("--seq-field")?)?),
            "--key-field" => key_field = Some(FieldPath::parse(&value("--key-field")?)?),
            "--seq-start" => seq_start = Some(number("--seq-start", &value("--seq-start")?)?),
            "--dedup-field" => dedup_field = Some(FieldPath::parse(&value("--dedup-field")?)?),
            "--prefix" => prefix = Some(value("--prefix")?),
            "--max-listed" => max_listed = number("--max-listed", &value("--max-listed")?)?,
            "--key-from-record-key" | "--dedup-record-key" | "--fail-on-open" | "--json"
                if inline.is_some() =>
            {
                return Err(UsageError(format!("{flag} takes no value")));
            }
            "--key-from-record-key" => key_from_record_key = true,
            "--dedup-record-key" => dedup_record_key = true,
            "--fail-on-open" => fail_on_open = true,
            "--json" => json = true,
            other if other.starts_with('-') => {
                return Err(UsageError(format!("unknown option '{other}'")));
            }
            other => return Err(UsageError(format!("unexpected argument '{other}'"))),
        }
    }
    let topic = topic
        .filter(|t| !t.is_empty())
        .ok_or_else(|| UsageError("--topic is required".to_owned()))?;
    if let Some(p) = partitions.iter().find(|&&p| p < 0) {
        return Err(UsageError(format!(
            "--partition {p}: partitions are 0 or more"
        )));
    }
    if timeout_ms == 0 {
        return Err(UsageError("--timeout-ms must be at least 1".to_owned()));
    }
    let key = match (key_field, key_from_record_key) {
        (Some(_), true) => {
            return Err(UsageError(
                "--key-field and --key-from-record-key exclude each other".to_owned(),
            ));
        }
        (Some(path), false) => KeySource::Field(path),
        (None, true) => KeySource::RecordKey,
        (None, false) => KeySource::Topic,
    };
    let sequence = match seq_field {
        Some(field) => Some(SequenceCheck {
            key,
            field,
            start: seq_start,
        }),
        None if key != KeySource::Topic || seq_start.is_some() => {
            return Err(UsageError(
                "--key-field, --key-from-record-key and --seq-start need --seq-field \
                 (for plain duplicate detection use --dedup-field or --dedup-record-key)"
                    .to_owned(),
            ));
        }
        None => None,
    };
    let dedup = match (dedup_field, dedup_record_key) {
        (Some(_), true) => {
            return Err(UsageError(
                "--dedup-field and --dedup-record-key exclude each other".to_owned(),
            ));
        }
        (Some(path), false) => Some(DedupSource::Field(path)),
        (None, true) => Some(DedupSource::RecordKey),
        (None, false) => None,
    };
    partitions.sort_unstable();
    partitions.dedup();
    Ok(Command::Audit(Box::new(CliOptions {
        audit: AuditOptions {
            bootstrap,
            topic,
            partitions,
            sequence,
            dedup,
            transactional_id_prefix: prefix,
            fail_on_open,
            timeout: Duration::from_millis(timeout_ms),
        },
        json,
        max_listed,
    })))
}

fn number<T: std::str::FromStr>(flag: &str, text: &str) -> Result<T, UsageError> {
    text.parse()
        .map_err(|_| UsageError(format!("{flag} '{text}': not a valid number")))
}

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
    /// Transactions ended by a COMMIT marker.
    pub committed_transactions: u64,
    /// Records of those transactions (visible).
    pub committed_records: u64,
    /// Transactions ended by an ABORT marker.
    pub aborted_transactions: u64,
    /// Records of those transactions (not visible).
    pub aborted_records: u64,
    /// Transactions without a marker yet (0 or 1).
    pub open_transactions: u64,
    /// Records of the open transaction (not visible yet).
    pub open_records: u64,
    /// Records written outside transactions (visible).
    pub non_transactional_records: u64,
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
    /// Committed transactions (one per COMMIT marker, per partition).
    pub committed_transactions: u64,
    /// Their records.
    pub committed_records: u64,
    /// Aborted transactions (one per ABORT marker, per partition).
    pub aborted_transactions: u64,
    /// Their records.
    pub aborted_records: u64,
    /// Open transactions (per partition).
    pub open_transactions: u64,
    /// Their records.
    pub open_records: u64,
    /// Records written outside transactions.
    pub non_transactional_records: u64,
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

/// A record a check could not read, and why.
type Skip = String;

/// Records that could not be checked, by reason.
#[derive(Debug, Default)]
struct Skips(BTreeMap<Skip, (u64, Location)>);

impl Skips {
    fn add(&mut self, reason: Skip, at: Location) {
        self.0.entry(reason).or_insert((0, at)).0 += 1;
    }

    fn report(self) -> Vec<Unchecked> {
        self.0
            .into_iter()
            .map(|(reason, (records, first))| Unchecked {
                reason,
                records,
                first,
            })
            .collect()
    }
}

/// A record value parsed as JSON at most once, for all checks.
struct RecordView<'a> {
    record: &'a VisibleRecord,
    json: Option<Result<Value, Skip>>,
}

impl<'a> RecordView<'a> {
    fn new(record: &'a VisibleRecord) -> Self {
        Self { record, json: None }
    }

    fn field(&mut self, path: &FieldPath) -> Result<&Value, Skip> {
        let record = self.record;
        let json = self.json.get_or_insert_with(|| match &record.value {
            None => Err("null value".to_owned()),
            Some(bytes) => {
                serde_json::from_slice(bytes).map_err(|_| "value is not JSON".to_owned())
            }
        });
        let value = json.as_ref().map_err(Clone::clone)?;
        path.get(value).ok_or_else(|| format!("no field '{path}'"))
    }

    fn record_key(&self) -> Result<String, Skip> {
        self.record
            .key
            .as_deref()
            .map(key_text)
            .ok_or_else(|| "null record key".to_owned())
    }

    fn key(&mut self, source: &KeySource) -> Result<Option<String>, Skip> {
        match source {
            KeySource::Topic => Ok(None),
            KeySource::Field(path) => self.field(path).map(|v| Some(json_text(v))),
            KeySource::RecordKey => self.record_key().map(Some),
        }
    }

    fn sequence(&mut self, path: &FieldPath) -> Result<i64, Skip> {
        let value = self.field(path)?;
        match value {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
        .ok_or_else(|| format!("field '{path}' is not an integer"))
    }

    fn identity(&mut self, source: &DedupSource) -> Result<String, Skip> {
        match source {
            DedupSource::Field(path) => self.field(path).map(json_text),
            DedupSource::RecordKey => self.record_key(),
        }
    }
}

/// A JSON value as a key: strings as they are, anything else as compact
/// JSON.
fn json_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A record key as text: UTF-8 as it is, anything else as `0x` hex.
fn key_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => bytes.iter().fold("0x".to_owned(), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        }),
    }
}

/// The analysis: fed one [`PartitionLog`] at a time (so a topic never has
/// to be held in memory whole), it keeps the partition summaries and what
/// the checks need, and [`Analyzer::finish`] turns them into the report.
#[derive(Debug)]
pub struct Analyzer {
    options: AuditOptions,
    partitions: Vec<PartitionReport>,
    sequences: BTreeMap<Option<String>, BTreeMap<i64, Vec<Location>>>,
    sequence_skips: Skips,
    sequence_checked: u64,
    identities: BTreeMap<String, Vec<Location>>,
    dedup_skips: Skips,
    dedup_checked: u64,
}

impl Analyzer {
    /// An analysis with the checks of `options`.
    pub fn new(options: AuditOptions) -> Self {
        Self {
            options,
            partitions: Vec::new(),
            sequences: BTreeMap::new(),
            sequence_skips: Skips::default(),
            sequence_checked: 0,
            identities: BTreeMap::new(),
            dedup_skips: Skips::default(),
            dedup_checked: 0,
        }
    }

    /// Adds one partition. Partitions should come in ascending order, so
    /// that locations list in log order.
    pub fn add_partition(&mut self, log: &PartitionLog) {
        self.partitions.push(PartitionReport {
            partition: log.partition,
            log_start_offset: log.log_start_offset,
            high_watermark: log.high_watermark,
            last_stable_offset: log.last_stable_offset,
            broker_last_stable_offset: log.broker_last_stable_offset,
            visible_records: log.records.len() as u64,
            producers: log
                .producers
                .iter()
                .map(|(&producer_id, p)| ProducerReport {
                    producer_id,
                    committed_transactions: p.committed_transactions,
                    committed_records: p.committed_records,
                    aborted_transactions: p.aborted_transactions,
                    aborted_records: p.aborted_records,
                    open_transactions: p.open_transactions,
                    open_records: p.open_records,
                    non_transactional_records: p.non_transactional_records,
                })
                .collect(),
            open_transactions: log
                .open_transactions
                .iter()
                .map(|t| OpenTransactionReport {
                    producer_id: t.producer_id,
                    producer_epoch: t.producer_epoch,
                    first_offset: t.first_offset,
                    records: t.records,
                    first_record_timestamp_ms: None,
                    open_for_ms: None,
                    transactional_id: None,
                })
                .collect(),
            stuck_for_ms: None,
        });
        for record in &log.records {
            let at = Location {
                partition: log.partition,
                offset: record.offset,
            };
            let mut view = RecordView::new(record);
            if let Some(check) = &self.options.sequence {
                let keyed = view
                    .key(&check.key)
                    .and_then(|key| Ok((key, view.sequence(&check.field)?)));
                match keyed {
                    Ok((key, sequence)) => {
                        self.sequence_checked += 1;
                        self.sequences
                            .entry(key)
                            .or_default()
                            .entry(sequence)
                            .or_default()
                            .push(at);
                    }
                    Err(reason) => self.sequence_skips.add(reason, at),
                }
            }
            if let Some(source) = &self.options.dedup {
                match view.identity(source) {
                    Ok(identity) => {
                        self.dedup_checked += 1;
                        self.identities.entry(identity).or_default().push(at);
                    }
                    Err(reason) => self.dedup_skips.add(reason, at),
                }
            }
        }
    }

    /// The open transactions found so far: partition and first offset.
    pub fn open_transactions(&self) -> Vec<Location> {
        self.partitions
            .iter()
            .flat_map(|p| {
                p.open_transactions.iter().map(|t| Location {
                    partition: p.partition,
                    offset: t.first_offset,
                })
            })
            .collect()
    }

    /// The report, with ages and transactional ids from `lookups`.
    pub fn finish(self, lookups: Lookups) -> AuditReport {
        let now_ms = lookups.now_ms;
        let transactions = self.name_listed_transactions(lookups.transactions);
        let mut partitions = self.partitions;
        for partition in &mut partitions {
            for open in &mut partition.open_transactions {
                let timestamp = lookups
                    .first_record_timestamps
                    .get(&(partition.partition, open.first_offset))
                    .copied();
                open.first_record_timestamp_ms = timestamp;
                open.open_for_ms = timestamp.map(|t| now_ms.saturating_sub(t).max(0));
                open.transactional_id = listed_id(&transactions, open.producer_id);
            }
            partition.stuck_for_ms = partition
                .open_transactions
                .first()
                .and_then(|t| t.open_for_ms);
        }
        let totals = totals(&partitions);
        let sequence = self.options.sequence.as_ref().map(|check| {
            sequence_report(
                check,
                self.sequences,
                self.sequence_checked,
                self.sequence_skips,
            )
        });
        let dedup = self.options.dedup.as_ref().map(|source| DedupReport {
            source: match source {
                DedupSource::Field(path) => format!("field '{path}'"),
                DedupSource::RecordKey => "record key".to_owned(),
            },
            records_checked: self.dedup_checked,
            distinct: self.identities.len() as u64,
            duplicates: self
                .identities
                .into_iter()
                .filter(|(_, at)| at.len() > 1)
                .map(|(value, locations)| ValueDuplicate { value, locations })
                .collect(),
            unchecked: self.dedup_skips.report(),
        });
        let in_log: BTreeSet<i64> = partitions
            .iter()
            .flat_map(|p| p.open_transactions.iter().map(|t| t.producer_id))
            .collect();
        let listed_elsewhere = match &transactions {
            TransactionLookup::Listed { transactions, .. } => transactions
                .iter()
                .filter(|t| !in_log.contains(&t.producer_id))
                .count() as u64,
            _ => 0,
        };
        let findings = Findings {
            duplicates: sequence.as_ref().map_or(0, |s| s.duplicates.len() as u64)
                + dedup.as_ref().map_or(0, |d| d.duplicates.len() as u64),
            gaps: sequence.as_ref().map_or(0, |s| s.gaps.len() as u64),
            open_transactions: totals.open_transactions + listed_elsewhere,
            fail_on_open: self.options.fail_on_open,
        };
        let failed = findings.duplicates > 0
            || findings.gaps > 0
            || (findings.fail_on_open && findings.open_transactions > 0);
        AuditReport {
            topic: self.options.topic,
            bootstrap: self.options.bootstrap,
            now_ms,
            partitions,
            totals,
            open_age_note: lookups.open_age_note,
            sequence,
            dedup,
            transactional_ids: transactions,
            findings,
            exit_code: if failed { EXIT_FINDINGS } else { EXIT_CLEAN },
        }
    }

    /// Fills in, for each listed transaction, where the logs read hold an
    /// open transaction of its producer id.
    fn name_listed_transactions(&self, lookup: TransactionLookup) -> TransactionLookup {
        match lookup {
            TransactionLookup::Listed {
                prefix,
                mut transactions,
                describe_note,
            } => {
                for listed in &mut transactions {
                    listed.open_in_log = self
                        .partitions
                        .iter()
                        .flat_map(|p| {
                            p.open_transactions
                                .iter()
                                .filter(|t| t.producer_id == listed.producer_id)
                                .map(|t| Location {
                                    partition: p.partition,
                                    offset: t.first_offset,
                                })
                        })
                        .collect();
                }
                TransactionLookup::Listed {
                    prefix,
                    transactions,
                    describe_note,
                }
            }
            other => other,
        }
    }
}

fn listed_id(lookup: &TransactionLookup, producer_id: i64) -> Option<String> {
    match lookup {
        TransactionLookup::Listed { transactions, .. } => transactions
            .iter()
            .find(|t| t.producer_id == producer_id)
            .map(|t| t.transactional_id.clone()),
        _ => None,
    }
}

fn totals(partitions: &[PartitionReport]) -> Totals {
    let mut totals = Totals {
        partitions: partitions.len() as u64,
        ..Totals::default()
    };
    for partition in partitions {
        totals.visible_records += partition.visible_records;
        for p in &partition.producers {
            totals.committed_transactions += p.committed_transactions;
            totals.committed_records += p.committed_records;
            totals.aborted_transactions += p.aborted_transactions;
            totals.aborted_records += p.aborted_records;
            totals.open_transactions += p.open_transactions;
            totals.open_records += p.open_records;
            totals.non_transactional_records += p.non_transactional_records;
        }
    }
    totals
}

fn sequence_report(
    check: &SequenceCheck,
    sequences: BTreeMap<Option<String>, BTreeMap<i64, Vec<Location>>>,
    records_checked: u64,
    skips: Skips,
) -> SequenceReport {
    let mut duplicates = Vec::new();
    let mut gaps = Vec::new();
    let keys = sequences.len() as u64;
    for (key, seen) in sequences {
        let Some(&smallest) = seen.keys().next() else {
            continue;
        };
        let mut expected = check.start.map_or(smallest, |start| start.min(smallest));
        let mut previous: Option<SequenceAt> = None;
        for (sequence, locations) in seen {
            let here = SequenceAt {
                sequence,
                location: locations[0],
            };
            if sequence > expected {
                gaps.push(Gap {
                    key: key.clone(),
                    first_missing: expected,
                    last_missing: sequence - 1,
                    missing: (i128::from(sequence) - i128::from(expected)) as u64,
                    after: previous,
                    before: here,
                });
            }
            if locations.len() > 1 {
                duplicates.push(SequenceDuplicate {
                    key: key.clone(),
                    sequence,
                    locations,
                });
            }
            expected = sequence.saturating_add(1);
            previous = Some(here);
        }
    }
    SequenceReport {
        key: match &check.key {
            KeySource::Topic => "none".to_owned(),
            KeySource::Field(path) => format!("field '{path}'"),
            KeySource::RecordKey => "record key".to_owned(),
        },
        field: check.field.to_string(),
        start: check.start,
        records_checked,
        keys,
        duplicates,
        gaps,
        unchecked: skips.report(),
    }
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Runs the audit: reads the partitions with the [`CommittedReader`],
/// analyses them one at a time, then looks up open-transaction ages and
/// (with a prefix) transactional ids. Errors of the read are returned;
/// failed look-ups become notes in the report.
pub async fn audit(options: &AuditOptions) -> Result<AuditReport, ReadError> {
    let config = options.reader_config();
    let topic = options.topic.as_str();
    let mut reader = CommittedReader::connect(config.clone()).await?;
    let existing = reader.partitions(topic).await?;
    let selected = if options.partitions.is_empty() {
        existing.clone()
    } else {
        options.partitions.clone()
    };
    if let Some(&partition) = selected.iter().find(|p| !existing.contains(p)) {
        return Err(ReadError::UnknownPartition {
            topic: topic.to_owned(),
            partition,
            partition_count: existing.len(),
        });
    }
    let mut analyzer = Analyzer::new(options.clone());
    for partition in selected {
        let log = reader.read_partition(topic, partition).await?;
        analyzer.add_partition(&log);
    }
    drop(reader);

    let mut lookups = Lookups::none(now_ms());
    let open = analyzer.open_transactions();
    if open.is_empty() && options.transactional_id_prefix.is_none() {
        return Ok(analyzer.finish(lookups));
    }
    match ClusterProbe::connect(&config, topic).await {
        Ok(mut probe) => {
            for (index, &at) in open.iter().enumerate() {
                match probe.first_record_timestamp(topic, at).await {
                    Ok(timestamp) => {
                        lookups
                            .first_record_timestamps
                            .insert((at.partition, at.offset), timestamp);
                    }
                    Err(error) => {
                        // One failure is reason enough not to spend a
                        // timeout on each of the others.
                        let untried = open.len() - index - 1;
                        lookups.open_age_note = Some(format!(
                            "first record timestamps unreadable: {at}: {error}{}",
                            if untried > 0 {
                                format!(" ({untried} more not tried)")
                            } else {
                                String::new()
                            }
                        ));
                        break;
                    }
                }
            }
            if let Some(prefix) = &options.transactional_id_prefix {
                lookups.transactions = probe.list_transactions(prefix, topic, lookups.now_ms).await;
            }
        }
        Err(error) => {
            let error = error.to_string();
            if !open.is_empty() {
                lookups.open_age_note =
                    Some(format!("first record timestamps unreadable: {error}"));
            }
            if let Some(prefix) = &options.transactional_id_prefix {
                lookups.transactions = TransactionLookup::Failed {
                    prefix: prefix.clone(),
                    error,
                };
            }
        }
    }
    Ok(analyzer.finish(lookups))
}

/// The look-ups beyond the committed reader: the cluster's brokers and the
/// audited topic's partition leaders, from one Metadata request, and one
/// connection per broker, opened on first use and reopened after it broke.
struct ClusterProbe {
    settings: ConnectionSettings,
    brokers: BTreeMap<i32, String>,
    leaders: BTreeMap<i32, i32>,
    connections: BTreeMap<String, Connection>,
}

impl ClusterProbe {
    async fn connect(config: &ReaderConfig, topic: &str) -> Result<Self, ReadError> {
        let settings = ConnectionSettings {
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            client_id: config.client_id.clone(),
        };
        let mut bootstrap = Connection::open(&config.bootstrap, &settings).await?;
        let request = MetadataRequest::default()
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(topic_name(topic))),
            ]))
            .with_allow_auto_topic_creation(false);
        let (response, _) = bootstrap.request(&request, 1, 12).await?;
        Ok(Self {
            settings,
            brokers: response
                .brokers
                .iter()
                .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
                .collect(),
            leaders: response
                .topics
                .iter()
                .filter(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
                .flat_map(|t| &t.partitions)
                .map(|p| (p.partition_index, p.leader_id.0))
                .collect(),
            connections: BTreeMap::new(),
        })
    }

    async fn connection(&mut self, address: &str) -> Result<&mut Connection, ReadError> {
        Ok(match self.connections.entry(address.to_owned()) {
            Entry::Occupied(entry) if !entry.get().is_broken() => entry.into_mut(),
            Entry::Occupied(mut entry) => {
                entry.insert(Connection::open(address, &self.settings).await?);
                entry.into_mut()
            }
            Entry::Vacant(entry) => entry.insert(Connection::open(address, &self.settings).await?),
        })
    }

    /// The timestamp of the record at `at`, from a READ_UNCOMMITTED Fetch
    /// at its offset on the partition's leader.
    async fn first_record_timestamp(&mut self, topic: &str, at: Location) -> Result<i64, String> {
        let address = self
            .leaders
            .get(&at.partition)
            .and_then(|id| self.brokers.get(id))
            .cloned()
            .ok_or_else(|| format!("no known leader for partition {}", at.partition))?;
        let connection = self.connection(&address).await.map_err(|e| e.to_string())?;
        let request = raw_fetch_request(
            topic,
            at.partition,
            at.offset,
            PROBE_FETCH_MAX_WAIT_MS,
            PROBE_FETCH_BYTES,
        );
        let (response, _) = connection
            .request(&request, 4, 12)
            .await
            .map_err(|e| e.to_string())?;
        let data = response
            .responses
            .into_iter()
            .filter(|t| t.topic.0.as_str() == topic)
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index == at.partition)
            .ok_or_else(|| "the Fetch response has no entry for the partition".to_owned())?;
        if data.error_code != 0 {
            return Err(format!(
                "Fetch error {} ({})",
                data.error_code,
                error_name(data.error_code)
            ));
        }
        let framed = split_batches(data.records.unwrap_or_default())
            .map_err(|e| format!("corrupt batch at offset {}: {}", e.offset, e.reason))?;
        for raw in &framed.batches {
            let batch = decode_batch(raw)
                .map_err(|e| format!("corrupt batch at offset {}: {}", e.offset, e.reason))?;
            if let Some(record) = batch.records.iter().find(|r| r.offset == at.offset) {
                return Ok(record.timestamp);
            }
        }
        Err("the Fetch response does not hold that record".to_owned())
    }

    /// The open transactions of transactional ids starting with `prefix`:
    /// ListTransactions on every broker (each lists the transactions it
    /// coordinates), then DescribeTransactions on the same broker for the
    /// open ones.
    async fn list_transactions(
        &mut self,
        prefix: &str,
        topic: &str,
        now_ms: i64,
    ) -> TransactionLookup {
        let failed = |error: String| TransactionLookup::Failed {
            prefix: prefix.to_owned(),
            error,
        };
        if self.brokers.is_empty() {
            return failed("the Metadata response lists no brokers".to_owned());
        }
        let mut transactions = Vec::new();
        let mut describe_notes = Vec::new();
        let addresses: Vec<String> = self.brokers.values().cloned().collect();
        for address in &addresses {
            let connection = match self.connection(address).await {
                Ok(connection) => connection,
                Err(error) => return failed(error.to_string()),
            };
            let mut found: Vec<ListedTransaction> = match list_open(connection, prefix).await {
                Ok(listed) => listed
                    .into_iter()
                    .map(|t| ListedTransaction {
                        transactional_id: t.transactional_id,
                        producer_id: t.producer_id,
                        state: t.state,
                        coordinator: address.clone(),
                        producer_epoch: None,
                        start_time_ms: None,
                        open_for_ms: None,
                        timeout_ms: None,
                        partitions_in_topic: Vec::new(),
                        open_in_log: Vec::new(),
                    })
                    .collect(),
                Err(ListError::Unsupported(reason)) => {
                    return TransactionLookup::Unsupported {
                        prefix: prefix.to_owned(),
                        reason,
                    };
                }
                Err(ListError::Failed(error)) => return failed(error),
            };
            if found.is_empty() {
                continue;
            }
            let request = DescribeTransactionsRequest::default().with_transactional_ids(
                found
                    .iter()
                    .map(|t| TransactionalId(StrBytes::from_string(t.transactional_id.clone())))
                    .collect(),
            );
            match connection.request(&request, 0, 0).await {
                Ok((described, _)) => {
                    for state in described.transaction_states {
                        let id = state.transactional_id.0.as_str();
                        let Some(listed) = found.iter_mut().find(|t| t.transactional_id == id)
                        else {
                            continue;
                        };
                        if state.error_code != 0 {
                            describe_notes.push(format!(
                                "DescribeTransactions of '{id}' at {address}: error {} ({})",
                                state.error_code,
                                error_name(state.error_code)
                            ));
                            continue;
                        }
                        listed.producer_epoch = Some(state.producer_epoch);
                        listed.timeout_ms = Some(state.transaction_timeout_ms);
                        if state.transaction_start_time_ms >= 0 {
                            listed.start_time_ms = Some(state.transaction_start_time_ms);
                            listed.open_for_ms = Some(
                                now_ms
                                    .saturating_sub(state.transaction_start_time_ms)
                                    .max(0),
                            );
                        }
                        listed.partitions_in_topic = state
                            .topics
                            .iter()
                            .filter(|t| t.topic.0.as_str() == topic)
                            .flat_map(|t| t.partitions.iter().copied())
                            .collect();
                        listed.partitions_in_topic.sort_unstable();
                    }
                }
                Err(error) => describe_notes.push(format!("DescribeTransactions: {error}")),
            }
            transactions.append(&mut found);
        }
        transactions.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
        TransactionLookup::Listed {
            prefix: prefix.to_owned(),
            transactions,
            describe_note: (!describe_notes.is_empty()).then(|| describe_notes.join("; ")),
        }
    }
}

impl AuditReport {
    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|error| {
            format!("{{\"error\": \"the report could not be serialized: {error}\"}}")
        })
    }

    /// The report as text, listing at most `max_listed` duplicates, gaps
    /// and the like per kind (0: all).
    pub fn to_text(&self, max_listed: usize) -> String {
        let mut out = String::new();
        let _ = self.write_text(&mut out, max_listed);
        out
    }

    fn write_text(&self, out: &mut String, max_listed: usize) -> fmt::Result {
        writeln!(
            out,
            "exactly-audit: topic '{}' at {}, {} read at {}",
            self.topic,
            self.bootstrap,
            count(self.totals.partitions, "partition", "partitions"),
            timestamp_text(self.now_ms)
        )?;
        for partition in &self.partitions {
            writeln!(out)?;
            self.write_partition(out, partition)?;
        }
        writeln!(out)?;
        let t = &self.totals;
        let per_partition: Vec<String> = self
            .partitions
            .iter()
            .map(|p| format!("partition {}: {}", p.partition, p.visible_records))
            .collect();
        writeln!(
            out,
            "visible under read_committed: {} ({})",
            count(t.visible_records, "record", "records"),
            per_partition.join(", ")
        )?;
        writeln!(
            out,
            "transactions: {} committed ({}), {} aborted ({}), {} open ({}); {}",
            t.committed_transactions,
            count(t.committed_records, "record", "records"),
            t.aborted_transactions,
            count(t.aborted_records, "record", "records"),
            t.open_transactions,
            count(t.open_records, "record", "records"),
            count(
                t.non_transactional_records,
                "non-transactional record",
                "non-transactional records"
            ),
        )?;
        if let Some(note) = &self.open_age_note {
            writeln!(out, "note: {note}")?;
        }
        self.write_transactional_ids(out, max_listed)?;
        if let Some(sequence) = &self.sequence {
            writeln!(out)?;
            write_sequence(out, sequence, max_listed)?;
        }
        if let Some(dedup) = &self.dedup {
            writeln!(out)?;
            write_dedup(out, dedup, max_listed)?;
        }
        writeln!(out)?;
        self.write_result(out)
    }

    fn write_partition(&self, out: &mut String, p: &PartitionReport) -> fmt::Result {
        writeln!(
            out,
            "partition {}: offsets {}..{}, {} visible under read_committed",
            p.partition,
            p.log_start_offset,
            p.high_watermark,
            count(p.visible_records, "record", "records")
        )?;
        let broker = if p.broker_last_stable_offset >= 0
            && p.broker_last_stable_offset != p.last_stable_offset
        {
            format!(" (the broker reports {})", p.broker_last_stable_offset)
        } else {
            String::new()
        };
        match p.open_transactions.split_first() {
            None => writeln!(
                out,
                "  last stable offset {}{broker} = high watermark: no open transaction",
                p.last_stable_offset
            )?,
            Some((oldest, others)) => {
                writeln!(
                    out,
                    "  last stable offset {}{broker}, high watermark {}: stuck {} behind the open \
                     transaction of {}",
                    p.last_stable_offset,
                    p.high_watermark,
                    oldest.open_for_ms.map_or(
                        "(for how long is unknown)".to_owned(),
                        |ms| format!("for {}", duration_text(ms))
                    ),
                    open_text(oldest)
                )?;
                for other in others {
                    writeln!(out, "  also open: {}", open_text(other))?;
                }
            }
        }
        for producer in &p.producers {
            writeln!(out, "  {}", producer_text(producer))?;
        }
        Ok(())
    }

    fn write_transactional_ids(&self, out: &mut String, max_listed: usize) -> fmt::Result {
        match &self.transactional_ids {
            TransactionLookup::NotRequested => Ok(()),
            TransactionLookup::Unsupported { prefix, reason } => writeln!(
                out,
                "transactional ids with prefix '{prefix}': the broker does not support \
                 ListTransactions; open transactions by producer id: {}\n  why: {reason}",
                self.open_by_producer_id()
            ),
            TransactionLookup::Failed { prefix, error } => writeln!(
                out,
                "transactional ids with prefix '{prefix}': the look-up failed ({error}); open \
                 transactions by producer id: {}",
                self.open_by_producer_id()
            ),
            TransactionLookup::Listed {
                prefix,
                transactions,
                describe_note,
            } => {
                writeln!(
                    out,
                    "transactional ids with prefix '{prefix}': {}",
                    count(
                        transactions.len() as u64,
                        "open transaction",
                        "open transactions"
                    )
                )?;
                for listed in limited(transactions, max_listed) {
                    writeln!(out, "  {}", listed_text(listed))?;
                }
                write_more(out, transactions.len(), max_listed)?;
                if let Some(note) = describe_note {
                    writeln!(out, "  note: {note}")?;
                }
                Ok(())
            }
        }
    }

    /// `5 (partition 0 from offset 12, open for 3.2s), ...` or `none`.
    fn open_by_producer_id(&self) -> String {
        let open: Vec<String> = self
            .partitions
            .iter()
            .flat_map(|p| {
                p.open_transactions.iter().map(move |t| {
                    let age = t.open_for_ms.map_or(String::new(), |ms| {
                        format!(", open for {}", duration_text(ms))
                    });
                    format!(
                        "{} (partition {} from offset {}{age})",
                        t.producer_id, p.partition, t.first_offset
                    )
                })
            })
            .collect();
        if open.is_empty() {
            "none".to_owned()
        } else {
            open.join(", ")
        }
    }

    fn write_result(&self, out: &mut String) -> fmt::Result {
        let f = &self.findings;
        let open = count(f.open_transactions, "open transaction", "open transactions");
        let open = if f.fail_on_open || f.open_transactions == 0 {
            open
        } else {
            format!("{open} (not a failure without --fail-on-open)")
        };
        writeln!(
            out,
            "result: {}: {}, {}, {open}; exit code {}",
            if self.exit_code == EXIT_CLEAN {
                "OK"
            } else {
                "FAIL"
            },
            count(f.duplicates, "duplicate", "duplicates"),
            count(f.gaps, "gap", "gaps"),
            self.exit_code
        )
    }
}

fn write_sequence(out: &mut String, s: &SequenceReport, max_listed: usize) -> fmt::Result {
    let start = s.start.map_or("from each key's smallest".to_owned(), |n| {
        format!("from {n}")
    });
    writeln!(
        out,
        "sequence check: key {}, sequence field '{}', expected contiguous {start} \
         (locations are partition/offset)",
        s.key, s.field
    )?;
    writeln!(
        out,
        "  {} checked, {}",
        count(s.records_checked, "record", "records"),
        count(s.keys, "key", "keys")
    )?;
    for d in limited(&s.duplicates, max_listed) {
        writeln!(
            out,
            "  duplicate: {}sequence {} {} times, at {}",
            key_prefix(d.key.as_deref()),
            d.sequence,
            d.locations.len(),
            join(&d.locations)
        )?;
    }
    write_more(out, s.duplicates.len(), max_listed)?;
    for g in limited(&s.gaps, max_listed) {
        let range = if g.first_missing == g.last_missing {
            format!("sequence {} missing", g.first_missing)
        } else {
            format!(
                "sequences {}..={} missing ({})",
                g.first_missing, g.last_missing, g.missing
            )
        };
        let after = g.after.map_or(String::new(), |a| {
            format!("after sequence {} at {}, ", a.sequence, a.location)
        });
        writeln!(
            out,
            "  gap: {}{range}: {after}before sequence {} at {}",
            key_prefix(g.key.as_deref()),
            g.before.sequence,
            g.before.location
        )?;
    }
    write_more(out, s.gaps.len(), max_listed)?;
    write_unchecked(out, &s.unchecked)
}

fn write_dedup(out: &mut String, d: &DedupReport, max_listed: usize) -> fmt::Result {
    writeln!(
        out,
        "duplicate check: identity from {} (locations are partition/offset)",
        d.source
    )?;
    writeln!(
        out,
        "  {} checked, {} distinct",
        count(d.records_checked, "record", "records"),
        d.distinct
    )?;
    for dup in limited(&d.duplicates, max_listed) {
        writeln!(
            out,
            "  duplicate: {} {} times, at {}",
            quoted(&dup.value),
            dup.locations.len(),
            join(&dup.locations)
        )?;
    }
    write_more(out, d.duplicates.len(), max_listed)?;
    write_unchecked(out, &d.unchecked)
}

fn write_unchecked(out: &mut String, unchecked: &[Unchecked]) -> fmt::Result {
    for u in unchecked {
        writeln!(
            out,
            "  unchecked: {}: {} (first at {})",
            count(u.records, "record", "records"),
            u.reason,
            u.first
        )?;
    }
    Ok(())
}

fn limited<T>(items: &[T], max_listed: usize) -> &[T] {
    if max_listed == 0 {
        items
    } else {
        &items[..items.len().min(max_listed)]
    }
}

fn write_more(out: &mut String, total: usize, max_listed: usize) -> fmt::Result {
    if max_listed > 0 && total > max_listed {
        writeln!(
            out,
            "  ... and {} more (--max-listed 0 lists all)",
            total - max_listed
        )?;
    }
    Ok(())
}

fn key_prefix(key: Option<&str>) -> String {
    key.map_or(String::new(), |k| format!("key {} ", quoted(k)))
}

/// A string in JSON quotes, so that spaces and empty strings show.
fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| format!("'{text}'"))
}

fn join(locations: &[Location]) -> String {
    locations
        .iter()
        .map(Location::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn open_text(t: &OpenTransactionReport) -> String {
    let id = t
        .transactional_id
        .as_ref()
        .map_or(String::new(), |id| format!(" (transactional id '{id}')"));
    let first = t.first_record_timestamp_ms.map_or(String::new(), |ms| {
        format!(", first record at {}", timestamp_text(ms))
    });
    format!(
        "producer id {}{id}, epoch {}: {} from offset {}{first}",
        t.producer_id,
        t.producer_epoch,
        count(t.records, "record", "records"),
        t.first_offset
    )
}

fn producer_text(p: &ProducerReport) -> String {
    let mut parts = Vec::new();
    let mut transactions = |n: u64, records: u64, kind: &str| {
        if n > 0 {
            parts.push(format!(
                "{n} {kind} ({})",
                count(records, "record", "records")
            ));
        }
    };
    transactions(p.committed_transactions, p.committed_records, "committed");
    transactions(p.aborted_transactions, p.aborted_records, "aborted");
    transactions(p.open_transactions, p.open_records, "open");
    if p.non_transactional_records > 0 {
        parts.push(count(
            p.non_transactional_records,
            "non-transactional record",
            "non-transactional records",
        ));
    }
    let who = if p.producer_id < 0 {
        "no producer id".to_owned()
    } else {
        format!("producer id {}", p.producer_id)
    };
    format!("{who}: {}", parts.join(", "))
}

fn listed_text(t: &ListedTransaction) -> String {
    let mut text = format!(
        "'{}': producer id {}, {}",
        t.transactional_id, t.producer_id, t.state
    );
    if let Some(epoch) = t.producer_epoch {
        let _ = write!(text, ", epoch {epoch}");
    }
    if let (Some(start), Some(age)) = (t.start_time_ms, t.open_for_ms) {
        let _ = write!(
            text,
            ", started {} ({} ago)",
            timestamp_text(start),
            duration_text(age)
        );
    }
    if let Some(timeout) = t.timeout_ms {
        let _ = write!(text, ", timeout {}", duration_text(i64::from(timeout)));
    }
    if !t.partitions_in_topic.is_empty() {
        let partitions: Vec<String> = t.partitions_in_topic.iter().map(i32::to_string).collect();
        let _ = write!(
            text,
            ", partitions of this topic: {}",
            partitions.join(", ")
        );
    }
    if !t.open_in_log.is_empty() {
        let _ = write!(text, ", open in this topic at {}", join(&t.open_in_log));
    }
    text
}

/// A duration in milliseconds as `450ms`, `12.3s`, `4m 05s`, `2h 03m 04s`
/// or `3d 04h 05m`.
fn duration_text(ms: i64) -> String {
    let ms = ms.max(0);
    let seconds = ms / 1000;
    let (minutes, hours, days) = (seconds / 60, seconds / 3600, seconds / 86_400);
    if ms < 1000 {
        format!("{ms}ms")
    } else if seconds < 60 {
        format!("{}.{}s", seconds, (ms % 1000) / 100)
    } else if hours == 0 {
        format!("{minutes}m {:02}s", seconds % 60)
    } else if days == 0 {
        format!("{hours}h {:02}m {:02}s", minutes % 60, seconds % 60)
    } else {
        format!("{days}d {:02}h {:02}m", hours % 24, minutes % 60)
    }
}

/// Milliseconds since the epoch as an RFC 3339 UTC timestamp.
fn timestamp_text(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000
    )
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    use bytes::{BufMut, Bytes, BytesMut};
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::describe_transactions_response::{
        TopicData, TransactionState as DescribedState,
    };
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::list_offsets_response::{
        ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
    };
    use kafka_protocol::messages::list_transactions_response::TransactionState as ListedState;
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::{
        ApiKey, ApiVersionsResponse, DescribeTransactionsResponse, FetchResponse,
        ListOffsetsResponse, ListTransactionsResponse, MetadataResponse, ProducerId,
        ResponseHeader, TopicName,
    };
    use kafka_protocol::protocol::{Encodable, decode_request_header_from_buffer};

    use super::*;
    use crate::batch::tests::{TestBatch, encode};
    use crate::visibility::{OpenTransaction, ProducerSummary};
    use kafka_protocol::messages::BrokerId;

    const NOW: i64 = 1_700_000_100_000;

    fn args(line: &str) -> Result<Command, UsageError> {
        parse_args(
            line.split_whitespace().map(str::to_owned),
            "default:9092".to_owned(),
        )
    }

    fn cli(line: &str) -> CliOptions {
        match args(line) {
            Ok(Command::Audit(cli)) => *cli,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn usage_error(line: &str) -> String {
        match args(line) {
            Err(error) => error.to_string(),
            Ok(other) => panic!("{line} must be a usage error, got {other:?}"),
        }
    }

    fn path(text: &str) -> FieldPath {
        FieldPath::parse(text).expect("a valid path")
    }

    fn record(offset: i64, key: Option<&str>, value: Option<&str>) -> VisibleRecord {
        VisibleRecord {
            offset,
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
            headers: Vec::new(),
            timestamp: 1_000,
            producer_id: -1,
            transactional: false,
        }
    }

    fn keyed(key: &str, seq: i64) -> String {
        format!(r#"{{"key":"{key}","seq":{seq}}}"#)
    }

    /// A partition holding `values` at offsets 0.. (all non-transactional).
    fn log(partition: i32, values: &[&str]) -> PartitionLog {
        let records: Vec<VisibleRecord> = values
            .iter()
            .enumerate()
            .map(|(offset, v)| record(offset as i64, None, Some(v)))
            .collect();
        let end = records.len() as i64;
        PartitionLog {
            topic: "t".to_owned(),
            partition,
            log_start_offset: 0,
            high_watermark: end,
            last_stable_offset: end,
            broker_last_stable_offset: end,
            producers: BTreeMap::from([(
                -1,
                ProducerSummary {
                    non_transactional_records: end as u64,
                    ..ProducerSummary::default()
                },
            )]),
            records,
            open_transactions: Vec::new(),
        }
    }

    /// Partition 0 with a committed, an aborted and an open transaction:
    /// offsets 0-1 committed by 7, 2 its marker, 3 aborted by 8, 4 its
    /// marker, 5 open of 9, 6 plain.
    fn transactional_log() -> PartitionLog {
        let mut committed = record(0, None, Some("c0"));
        committed.producer_id = 7;
        committed.transactional = true;
        let mut committed_too = committed.clone();
        committed_too.offset = 1;
        PartitionLog {
            topic: "t".to_owned(),
            partition: 0,
            log_start_offset: 0,
            high_watermark: 7,
            last_stable_offset: 5,
            broker_last_stable_offset: 5,
            records: vec![committed, committed_too, record(6, None, Some("plain"))],
            producers: BTreeMap::from([
                (
                    -1,
                    ProducerSummary {
                        non_transactional_records: 1,
                        ..ProducerSummary::default()
                    },
                ),
                (
                    7,
                    ProducerSummary {
                        committed_transactions: 1,
                        committed_records: 2,
                        ..ProducerSummary::default()
                    },
                ),
                (
                    8,
                    ProducerSummary {
                        aborted_transactions: 1,
                        aborted_records: 1,
                        ..ProducerSummary::default()
                    },
                ),
                (
                    9,
                    ProducerSummary {
                        open_transactions: 1,
                        open_records: 1,
                        ..ProducerSummary::default()
                    },
                ),
            ]),
            open_transactions: vec![OpenTransaction {
                producer_id: 9,
                producer_epoch: 3,
                first_offset: 5,
                records: 1,
            }],
        }
    }

    fn analyze(options: AuditOptions, logs: &[PartitionLog], lookups: Lookups) -> AuditReport {
        let mut analyzer = Analyzer::new(options);
        for log in logs {
            analyzer.add_partition(log);
        }
        analyzer.finish(lookups)
    }

    fn with_checks(line: &str) -> AuditOptions {
        cli(&format!("--topic t {line}")).audit
    }

    fn at(partition: i32, offset: i64) -> Location {
        Location { partition, offset }
    }

    #[test]
    fn the_command_line_has_defaults_and_takes_values_in_both_forms() {
        let plain = cli("--topic orders");
        assert_eq!(plain.audit.bootstrap, "default:9092");
        assert_eq!(plain.audit.topic, "orders");
        assert!(plain.audit.partitions.is_empty());
        assert_eq!(plain.audit.timeout, Duration::from_secs(10));
        assert!(plain.audit.sequence.is_none() && plain.audit.dedup.is_none());
        assert!(!plain.json && !plain.audit.fail_on_open);
        assert_eq!(plain.max_listed, 20);

        let full = cli(
            "--topic=orders --bootstrap b:1 --partition 2 --partition=0 --partition 2 \
             --timeout-ms 250 --key-field user.id --seq-field=seq --seq-start 1 \
             --dedup-record-key --prefix app- --fail-on-open --json --max-listed 0",
        );
        let audit = &full.audit;
        assert_eq!(audit.bootstrap, "b:1");
        assert_eq!(audit.partitions, [0, 2]);
        assert_eq!(audit.timeout, Duration::from_millis(250));
        assert_eq!(
            audit.sequence,
            Some(SequenceCheck {
                key: KeySource::Field(path("user.id")),
                field: path("seq"),
                start: Some(1),
            })
        );
        assert_eq!(audit.dedup, Some(DedupSource::RecordKey));
        assert_eq!(audit.transactional_id_prefix.as_deref(), Some("app-"));
        assert!(audit.fail_on_open && full.json);
        assert_eq!(full.max_listed, 0);

        let record_key = cli("--topic t --key-from-record-key --seq-field s --dedup-field id");
        assert_eq!(
            record_key.audit.sequence.map(|s| s.key),
            Some(KeySource::RecordKey)
        );
        assert_eq!(record_key.audit.dedup, Some(DedupSource::Field(path("id"))));
        assert!(matches!(args("--json --help"), Ok(Command::Help)));
    }

    #[test]
    fn command_line_mistakes_are_usage_errors_naming_the_mistake() {
        let cases = [
            ("", "--topic is required"),
            ("--topic", "--topic needs a value"),
            (
                "--topic t --partition x",
                "--partition 'x': not a valid number",
            ),
            ("--topic t --partition -1", "partitions are 0 or more"),
            (
                "--topic t --timeout-ms 0",
                "--timeout-ms must be at least 1",
            ),
            ("--topic t --verbose", "unknown option '--verbose'"),
            ("--topic t stray", "unexpected argument 'stray'"),
            ("--topic t --json=yes", "--json takes no value"),
            ("--topic t --seq-field a..b", "invalid field path 'a..b'"),
            ("--topic t --key-field k", "need --seq-field"),
            ("--topic t --seq-start 3", "need --seq-field"),
            (
                "--topic t --seq-field s --key-field k --key-from-record-key",
                "exclude each other",
            ),
            (
                "--topic t --dedup-field d --dedup-record-key",
                "exclude each other",
            ),
        ];
        for (line, expected) in cases {
            let error = usage_error(line);
            assert!(error.contains(expected), "{line}: {error}");
            assert!(
                error.ends_with("(see --help)") && !error.contains('\n'),
                "{error}"
            );
        }
    }

    #[test]
    fn field_paths_walk_objects_and_arrays() {
        let value: Value =
            serde_json::from_str(r#"{"a":{"b":[{"c":1},{"c":"two"}]},"d.e":3}"#).unwrap();
        assert_eq!(path("a.b.1.c").get(&value), Some(&Value::from("two")));
        assert_eq!(
            path("a.b.0").get(&value),
            Some(&serde_json::json!({"c": 1}))
        );
        assert_eq!(path("a.x").get(&value), None);
        assert_eq!(path("a.b.9").get(&value), None);
        assert_eq!(path("a.b.c").get(&value), None);
        assert_eq!(path("d").get(&value), None);
        assert_eq!(path("a.b.1.c").to_string(), "a.b.1.c");
        assert!(FieldPath::parse("").is_err() && FieldPath::parse("a.").is_err());
    }

    #[test]
    fn duplicates_and_gaps_are_named_by_key_sequence_and_location() {
        let p0 = [
            keyed("a", 0),
            keyed("a", 1),
            keyed("b", 0),
            keyed("a", 1),
            keyed("b", 3),
        ];
        let p1 = [keyed("a", 2), keyed("b", 4), keyed("a", 5), keyed("b", 4)];
        let report = analyze(
            with_checks("--key-field key --seq-field seq"),
            &[
                log(0, &p0.each_ref().map(String::as_str)),
                log(1, &p1.each_ref().map(String::as_str)),
            ],
            Lookups::none(NOW),
        );
        let sequence = report.sequence.as_ref().expect("a sequence report");
        assert_eq!((sequence.records_checked, sequence.keys), (9, 2));
        assert_eq!(
            sequence.duplicates,
            [
                SequenceDuplicate {
                    key: Some("a".to_owned()),
                    sequence: 1,
                    locations: vec![at(0, 1), at(0, 3)],
                },
                SequenceDuplicate {
                    key: Some("b".to_owned()),
                    sequence: 4,
                    locations: vec![at(1, 1), at(1, 3)],
                },
            ]
        );
        assert_eq!(
            sequence.gaps,
            [
                Gap {
                    key: Some("a".to_owned()),
                    first_missing: 3,
                    last_missing: 4,
                    missing: 2,
                    after: Some(SequenceAt {
                        sequence: 2,
                        location: at(1, 0),
                    }),
                    before: SequenceAt {
                        sequence: 5,
                        location: at(1, 2),
                    },
                },
                Gap {
                    key: Some("b".to_owned()),
                    first_missing: 1,
                    last_missing: 2,
                    missing: 2,
                    after: Some(SequenceAt {
                        sequence: 0,
                        location: at(0, 2),
                    }),
                    before: SequenceAt {
                        sequence: 3,
                        location: at(0, 4),
                    },
                },
            ]
        );
        assert!(sequence.unchecked.is_empty());
        assert_eq!((report.findings.duplicates, report.findings.gaps), (2, 2));
        assert_eq!(report.exit_code, EXIT_FINDINGS);

        let text = report.to_text(0);
        for line in [
            r#"  duplicate: key "a" sequence 1 2 times, at 0/1, 0/3"#,
            r#"  gap: key "a" sequences 3..=4 missing (2): after sequence 2 at 1/0, before sequence 5 at 1/2"#,
            "  9 records checked, 2 keys",
            "result: FAIL: 2 duplicates, 2 gaps, 0 open transactions; exit code 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn sequence_start_finds_a_gap_before_the_first_sequence_number() {
        let values = [keyed("a", 2), keyed("a", 3), keyed("b", 0)];
        let report = analyze(
            with_checks("--key-field key --seq-field seq --seq-start 0"),
            &[log(0, &values.each_ref().map(String::as_str))],
            Lookups::none(NOW),
        );
        let sequence = report.sequence.as_ref().unwrap();
        assert_eq!(
            sequence.gaps,
            [Gap {
                key: Some("a".to_owned()),
                first_missing: 0,
                last_missing: 1,
                missing: 2,
                after: None,
                before: SequenceAt {
                    sequence: 2,
                    location: at(0, 0),
                },
            }]
        );
        assert!(
            report
                .to_text(20)
                .contains(r#"gap: key "a" sequences 0..=1 missing (2): before sequence 2 at 0/0"#)
        );
    }

    #[test]
    fn without_a_key_option_the_whole_topic_is_one_sequence() {
        let report = analyze(
            with_checks("--seq-field n"),
            &[
                log(0, &[r#"{"n":0}"#, r#"{"n":"1"}"#]),
                log(1, &[r#"{"n":3}"#]),
            ],
            Lookups::none(NOW),
        );
        let sequence = report.sequence.as_ref().unwrap();
        assert_eq!(sequence.key, "none");
        assert_eq!(sequence.keys, 1);
        assert_eq!(sequence.gaps.len(), 1);
        assert_eq!(
            (sequence.gaps[0].key.clone(), sequence.gaps[0].first_missing),
            (None, 2)
        );
        assert!(report.to_text(20).contains(
            "  gap: sequence 2 missing: after sequence 1 at 0/1, before sequence 3 at 1/0"
        ));
    }

    #[test]
    fn record_keys_serve_as_keys_utf8_or_hex() {
        let mut records = log(0, &[r#"{"s":0}"#, r#"{"s":0}"#, r#"{"s":0}"#, r#"{"s":1}"#]);
        records.records[0].key = Some(Bytes::from_static(b"user-1"));
        records.records[1].key = Some(Bytes::from_static(&[0xff, 0x00]));
        records.records[2].key = Some(Bytes::from_static(b"user-1"));
        let report = analyze(
            with_checks("--key-from-record-key --seq-field s"),
            &[records],
            Lookups::none(NOW),
        );
        let sequence = report.sequence.as_ref().unwrap();
        assert_eq!(sequence.key, "record key");
        assert_eq!(sequence.records_checked, 3);
        assert_eq!(sequence.duplicates.len(), 1);
        assert_eq!(sequence.duplicates[0].key.as_deref(), Some("user-1"));
        assert_eq!(
            sequence.unchecked,
            [Unchecked {
                reason: "null record key".to_owned(),
                records: 1,
                first: at(0, 3),
            }]
        );
        assert_eq!(key_text(&[0xff, 0x00]), "0xff00");
    }

    #[test]
    fn unreadable_records_are_counted_by_reason_and_do_not_fail_the_audit() {
        let mut records = log(
            0,
            &[
                r#"{"key":"a","seq":0}"#,
                "not json",
                r#"{"key":"a"}"#,
                r#"{"key":"a","seq":1.5}"#,
                r#"{"key":"a","seq":"x"}"#,
                r#"{"seq":1}"#,
                "",
                "also not json",
            ],
        );
        records.records[6].value = None;
        let report = analyze(
            with_checks("--key-field key --seq-field seq"),
            &[records],
            Lookups::none(NOW),
        );
        let sequence = report.sequence.as_ref().unwrap();
        assert_eq!(sequence.records_checked, 1);
        let reasons: Vec<(&str, u64, Location)> = sequence
            .unchecked
            .iter()
            .map(|u| (u.reason.as_str(), u.records, u.first))
            .collect();
        assert_eq!(
            reasons,
            [
                ("field 'seq' is not an integer", 2, at(0, 3)),
                ("no field 'key'", 1, at(0, 5)),
                ("no field 'seq'", 1, at(0, 2)),
                ("null value", 1, at(0, 6)),
                ("value is not JSON", 2, at(0, 1)),
            ]
        );
        assert_eq!(report.exit_code, EXIT_CLEAN);
        assert!(
            report
                .to_text(20)
                .contains("  unchecked: 2 records: value is not JSON (first at 0/1)")
        );
    }

    #[test]
    fn plain_duplicate_detection_of_a_field_or_the_record_key() {
        let values = [
            r#"{"id":"x","n":1}"#,
            r#"{"id":7}"#,
            r#"{"id":"x"}"#,
            r#"{"id":"7"}"#,
            r#"{"id":{"deep":true}}"#,
            r#"{"other":1}"#,
        ];
        let report = analyze(
            with_checks("--dedup-field id"),
            &[log(0, &values), log(1, &[r#"{"id":"x"}"#])],
            Lookups::none(NOW),
        );
        let dedup = report.dedup.as_ref().expect("a dedup report");
        assert_eq!(dedup.source, "field 'id'");
        assert_eq!((dedup.records_checked, dedup.distinct), (6, 3));
        assert_eq!(
            dedup.duplicates,
            [
                ValueDuplicate {
                    value: "7".to_owned(),
                    locations: vec![at(0, 1), at(0, 3)],
                },
                ValueDuplicate {
                    value: "x".to_owned(),
                    locations: vec![at(0, 0), at(0, 2), at(1, 0)],
                },
            ]
        );
        assert_eq!(dedup.unchecked.len(), 1);
        assert_eq!(report.exit_code, EXIT_FINDINGS);
        assert!(
            report
                .to_text(1)
                .contains(r#"  duplicate: "7" 2 times, at 0/1, 0/3"#)
        );
        assert!(
            report
                .to_text(1)
                .contains("  ... and 1 more (--max-listed 0 lists all)")
        );

        let mut keyed = log(0, &["a", "b"]);
        keyed.records[0].key = Some(Bytes::from_static(b"k"));
        keyed.records[1].key = Some(Bytes::from_static(b"k"));
        let by_key = analyze(
            with_checks("--dedup-record-key"),
            &[keyed],
            Lookups::none(NOW),
        );
        assert_eq!(by_key.dedup.as_ref().unwrap().duplicates[0].value, "k");
        assert_eq!(by_key.findings.duplicates, 1);
    }

    #[test]
    fn a_clean_topic_exits_0_and_open_transactions_fail_only_when_asked() {
        let values = [keyed("a", 0), keyed("a", 1)];
        let clean = analyze(
            with_checks("--key-field key --seq-field seq"),
            &[log(0, &values.each_ref().map(String::as_str))],
            Lookups::none(NOW),
        );
        assert_eq!(clean.exit_code, EXIT_CLEAN);
        assert!(
            clean
                .to_text(20)
                .contains("result: OK: 0 duplicates, 0 gaps, 0 open transactions; exit code 0")
        );

        let open = analyze(with_checks(""), &[transactional_log()], Lookups::none(NOW));
        assert_eq!(open.findings.open_transactions, 1);
        assert_eq!(open.exit_code, EXIT_CLEAN);
        assert!(
            open.to_text(20)
                .contains("1 open transaction (not a failure without --fail-on-open); exit code 0")
        );
        let failing = analyze(
            with_checks("--fail-on-open"),
            &[transactional_log()],
            Lookups::none(NOW),
        );
        assert_eq!(failing.exit_code, EXIT_FINDINGS);
    }

    #[test]
    fn transactions_are_reported_per_partition_and_producer_with_the_stuck_lso() {
        let lookups = Lookups {
            first_record_timestamps: BTreeMap::from([((0, 5), NOW - 65_000)]),
            ..Lookups::none(NOW)
        };
        let report = analyze(
            with_checks(""),
            &[transactional_log(), log(1, &["x"])],
            lookups,
        );
        let p0 = &report.partitions[0];
        assert_eq!(p0.visible_records, 3);
        assert_eq!(p0.producers.len(), 4);
        assert_eq!(p0.open_transactions[0].open_for_ms, Some(65_000));
        assert_eq!(
            p0.open_transactions[0].first_record_timestamp_ms,
            Some(NOW - 65_000)
        );
        assert_eq!(p0.stuck_for_ms, Some(65_000));
        assert_eq!(report.partitions[1].stuck_for_ms, None);
        assert_eq!(
            report.totals,
            Totals {
                partitions: 2,
                visible_records: 4,
                committed_transactions: 1,
                committed_records: 2,
                aborted_transactions: 1,
                aborted_records: 1,
                open_transactions: 1,
                open_records: 1,
                non_transactional_records: 2,
            }
        );
        let text = report.to_text(20);
        for line in [
            "partition 0: offsets 0..7, 3 records visible under read_committed",
            "  last stable offset 5, high watermark 7: stuck for 1m 05s behind the open transaction \
             of producer id 9, epoch 3: 1 record from offset 5, first record at 2023-11-14T22:13:55.000Z",
            "  no producer id: 1 non-transactional record",
            "  producer id 7: 1 committed (2 records)",
            "  producer id 8: 1 aborted (1 record)",
            "  producer id 9: 1 open (1 record)",
            "  last stable offset 1 = high watermark: no open transaction",
            "visible under read_committed: 4 records (partition 0: 3, partition 1: 1)",
            "transactions: 1 committed (2 records), 1 aborted (1 record), 1 open (1 record); 2 non-transactional records",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn an_unknown_age_and_a_differing_broker_lso_are_said() {
        let mut log = transactional_log();
        log.broker_last_stable_offset = 7;
        let report = analyze(
            with_checks(""),
            &[log],
            Lookups {
                open_age_note: Some("first record timestamps unreadable: 0/5: gone".to_owned()),
                ..Lookups::none(NOW)
            },
        );
        let text = report.to_text(20);
        assert!(text.contains(
            "last stable offset 5 (the broker reports 7), high watermark 7: stuck (for how long is unknown)"
        ), "{text}");
        assert!(text.contains("note: first record timestamps unreadable: 0/5: gone"));
    }

    #[test]
    fn without_list_transactions_open_transactions_are_listed_by_producer_id() {
        let report = analyze(
            with_checks("--prefix app-"),
            &[transactional_log()],
            Lookups {
                transactions: TransactionLookup::Unsupported {
                    prefix: "app-".to_owned(),
                    reason: "the broker at b:1 does not list ListTransactions in its API versions"
                        .to_owned(),
                },
                first_record_timestamps: BTreeMap::from([((0, 5), NOW - 2_500)]),
                ..Lookups::none(NOW)
            },
        );
        let text = report.to_text(20);
        assert!(
            text.contains(
                "transactional ids with prefix 'app-': the broker does not support \
                 ListTransactions; open transactions by producer id: 9 (partition 0 from \
                 offset 5, open for 2.5s)"
            ),
            "{text}"
        );
        assert_eq!(report.exit_code, EXIT_CLEAN);
    }

    fn listed(id: &str, producer_id: i64) -> ListedTransaction {
        ListedTransaction {
            transactional_id: id.to_owned(),
            producer_id,
            state: "Ongoing".to_owned(),
            coordinator: "b:1".to_owned(),
            producer_epoch: None,
            start_time_ms: None,
            open_for_ms: None,
            timeout_ms: None,
            partitions_in_topic: Vec::new(),
            open_in_log: Vec::new(),
        }
    }

    #[test]
    fn listed_transactions_name_the_open_ones_in_the_log_and_count_the_others() {
        let report = analyze(
            with_checks("--prefix app- --fail-on-open"),
            &[transactional_log()],
            Lookups {
                transactions: TransactionLookup::Listed {
                    prefix: "app-".to_owned(),
                    transactions: vec![listed("app-1", 9), listed("app-2", 12)],
                    describe_note: None,
                },
                ..Lookups::none(NOW)
            },
        );
        assert_eq!(
            report.partitions[0].open_transactions[0]
                .transactional_id
                .as_deref(),
            Some("app-1")
        );
        let TransactionLookup::Listed { transactions, .. } = &report.transactional_ids else {
            panic!("{:?}", report.transactional_ids);
        };
        assert_eq!(transactions[0].open_in_log, [at(0, 5)]);
        assert!(transactions[1].open_in_log.is_empty());
        assert_eq!(report.findings.open_transactions, 2);
        assert_eq!(report.exit_code, EXIT_FINDINGS);
        let text = report.to_text(20);
        assert!(text.contains("transactional ids with prefix 'app-': 2 open transactions"));
        assert!(text.contains("  'app-1': producer id 9, Ongoing, open in this topic at 0/5"));
        assert!(text.contains("producer id 9 (transactional id 'app-1'), epoch 3"));
    }

    #[test]
    fn the_json_report_holds_everything() {
        let values = [keyed("a", 0), keyed("a", 0), keyed("a", 2)];
        let report = analyze(
            with_checks("--key-field key --seq-field seq --prefix p"),
            &[
                log(0, &values.each_ref().map(String::as_str)),
                transactional_log(),
            ],
            Lookups {
                transactions: TransactionLookup::Failed {
                    prefix: "p".to_owned(),
                    error: "refused".to_owned(),
                },
                ..Lookups::none(NOW)
            },
        );
        let json: Value = serde_json::from_str(&report.to_json()).expect("valid JSON");
        assert_eq!(json["topic"], "t");
        assert_eq!(json["exit_code"], 1);
        assert_eq!(json["totals"]["visible_records"], 6);
        assert_eq!(json["partitions"][1]["last_stable_offset"], 5);
        assert_eq!(
            json["partitions"][1]["open_transactions"][0]["producer_id"],
            9
        );
        assert_eq!(
            json["partitions"][1]["producers"][1]["committed_records"],
            2
        );
        assert_eq!(
            json["sequence"]["duplicates"][0]["locations"][1]["offset"],
            1
        );
        assert_eq!(json["sequence"]["gaps"][0]["first_missing"], 1);
        assert_eq!(
            json["sequence"]["gaps"][0]["before"]["location"]["offset"],
            2
        );
        assert_eq!(json["transactional_ids"]["status"], "failed");
        assert_eq!(json["findings"]["duplicates"], 1);
        assert_eq!(json["dedup"], Value::Null);
    }

    #[test]
    fn durations_and_timestamps_read_well() {
        assert_eq!(duration_text(-5), "0ms");
        assert_eq!(duration_text(450), "450ms");
        assert_eq!(duration_text(12_345), "12.3s");
        assert_eq!(duration_text(245_000), "4m 05s");
        assert_eq!(duration_text(7_384_000), "2h 03m 04s");
        assert_eq!(duration_text(273_900_000), "3d 04h 05m");
        assert_eq!(timestamp_text(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp_text(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(
            timestamp_text(1_700_000_100_000),
            "2023-11-14T22:15:00.000Z"
        );
        assert_eq!(timestamp_text(-1), "1969-12-31T23:59:59.999Z");
    }

    /// A fake broker for one topic with one partition: answers
    /// ApiVersions, Metadata, ListOffsets and Fetch (always `records`,
    /// high watermark `end`), and, when `transactions` is set,
    /// ListTransactions and DescribeTransactions.
    fn fake_broker(topic: &str, records: Bytes, end: i64, transactions: bool) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let port = listener.local_addr().expect("its address").port();
        let topic = topic.to_owned();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (topic, records) = (topic.clone(), records.clone());
                std::thread::spawn(move || {
                    serve(stream, port, &topic, &records, end, transactions)
                });
            }
        });
        format!("127.0.0.1:{port}")
    }

    fn serve(
        mut stream: TcpStream,
        port: u16,
        topic: &str,
        records: &Bytes,
        end: i64,
        transactions: bool,
    ) {
        let name = || TopicName(StrBytes::from_string(topic.to_owned()));
        loop {
            let mut size = [0; 4];
            if stream.read_exact(&mut size).is_err() {
                return;
            }
            let mut frame = vec![0; i32::from_be_bytes(size) as usize];
            if stream.read_exact(&mut frame).is_err() {
                return;
            }
            let mut frame = Bytes::from(frame);
            let header = decode_request_header_from_buffer(&mut frame).expect("a header");
            let version = header.request_api_version;
            let key = ApiKey::try_from(header.request_api_key).expect("a known API");
            let mut apis = vec![(18, 0, 3), (3, 1, 12), (2, 1, 10), (1, 4, 12)];
            if transactions {
                apis.extend([(66, 0, 1), (65, 0, 0)]);
            }
            let body = match key {
                ApiKey::ApiVersions => body(
                    ApiVersionsResponse::default().with_api_keys(
                        apis.into_iter()
                            .map(|(key, min, max)| {
                                ApiVersion::default()
                                    .with_api_key(key)
                                    .with_min_version(min)
                                    .with_max_version(max)
                            })
                            .collect(),
                    ),
                    version,
                ),
                ApiKey::Metadata => body(
                    MetadataResponse::default()
                        .with_brokers(vec![
                            MetadataResponseBroker::default()
                                .with_node_id(BrokerId(0))
                                .with_host(StrBytes::from_static_str("127.0.0.1"))
                                .with_port(i32::from(port)),
                        ])
                        .with_topics(vec![
                            MetadataResponseTopic::default()
                                .with_name(Some(name()))
                                .with_partitions(vec![
                                    MetadataResponsePartition::default()
                                        .with_partition_index(0)
                                        .with_leader_id(BrokerId(0)),
                                ]),
                        ]),
                    version,
                ),
                ApiKey::ListOffsets => body(
                    ListOffsetsResponse::default().with_topics(vec![
                        ListOffsetsTopicResponse::default()
                            .with_name(name())
                            .with_partitions(vec![
                                ListOffsetsPartitionResponse::default()
                                    .with_partition_index(0)
                                    .with_offset(0),
                            ]),
                    ]),
                    version,
                ),
                ApiKey::Fetch => body(
                    FetchResponse::default().with_responses(vec![
                        FetchableTopicResponse::default()
                            .with_topic(name())
                            .with_partitions(vec![
                                PartitionData::default()
                                    .with_partition_index(0)
                                    .with_high_watermark(end)
                                    .with_last_stable_offset(0)
                                    .with_records(Some(records.clone())),
                            ]),
                    ]),
                    version,
                ),
                ApiKey::ListTransactions => body(
                    ListTransactionsResponse::default().with_transaction_states(
                        [
                            ("app-1", 9, "Ongoing"),
                            ("app-2", 10, "CompleteCommit"),
                            ("app-3", 12, "PrepareCommit"),
                            ("other-1", 11, "Ongoing"),
                        ]
                        .map(|(id, producer_id, state)| {
                            ListedState::default()
                                .with_transactional_id(TransactionalId(StrBytes::from_static_str(
                                    id,
                                )))
                                .with_producer_id(ProducerId(producer_id))
                                .with_transaction_state(StrBytes::from_static_str(state))
                        })
                        .to_vec(),
                    ),
                    version,
                ),
                ApiKey::DescribeTransactions => body(
                    DescribeTransactionsResponse::default().with_transaction_states(vec![
                        DescribedState::default()
                            .with_transactional_id(TransactionalId(StrBytes::from_static_str(
                                "app-1",
                            )))
                            .with_transaction_state(StrBytes::from_static_str("Ongoing"))
                            .with_producer_id(ProducerId(9))
                            .with_producer_epoch(4)
                            .with_transaction_timeout_ms(60_000)
                            .with_transaction_start_time_ms(NOW - 90_000)
                            .with_topics(vec![
                                TopicData::default()
                                    .with_topic(name())
                                    .with_partitions(vec![0]),
                                TopicData::default()
                                    .with_topic(TopicName(StrBytes::from_static_str("else")))
                                    .with_partitions(vec![5]),
                            ]),
                        DescribedState::default()
                            .with_error_code(15)
                            .with_transactional_id(TransactionalId(StrBytes::from_static_str(
                                "app-3",
                            ))),
                    ]),
                    version,
                ),
                other => panic!("the fake broker does not serve {other:?}"),
            };
            let mut response = BytesMut::new();
            response.put_i32(0);
            ResponseHeader::default()
                .with_correlation_id(header.correlation_id)
                .encode(&mut response, key.response_header_version(version))
                .expect("a response header");
            response.put_slice(&body);
            let size = (response.len() - 4) as i32;
            response[..4].copy_from_slice(&size.to_be_bytes());
            if stream.write_all(&response).is_err() {
                return;
            }
        }
    }

    fn body<M: Encodable>(message: M, version: i16) -> Bytes {
        let mut buf = BytesMut::new();
        message
            .encode(&mut buf, version)
            .expect("an encodable response");
        buf.freeze()
    }

    /// Offset 0: an open transaction of producer id 9 (timestamp 1000);
    /// offset 1: a plain record.
    fn open_then_plain() -> Bytes {
        let mut records = BytesMut::new();
        records.put_slice(&encode(&TestBatch {
            base_offset: 0,
            producer_id: 9,
            transactional: true,
            control: false,
            records: vec![(None, Some(br#"{"k":"a","s":0}"#), vec![])],
        }));
        records.put_slice(&encode(&TestBatch {
            base_offset: 1,
            producer_id: -1,
            transactional: false,
            control: false,
            records: vec![(None, Some(br#"{"k":"a","s":1}"#), vec![])],
        }));
        records.freeze()
    }

    fn run(options: &AuditOptions) -> Result<AuditReport, ReadError> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(audit(options))
    }

    #[test]
    fn list_and_describe_transactions_name_the_open_transaction() {
        let address = fake_broker("t", open_then_plain(), 2, true);
        let options = AuditOptions {
            transactional_id_prefix: Some("app-".to_owned()),
            ..AuditOptions::new(address.clone(), "t")
        };
        let report = run(&options).expect("the audit runs");
        let open = &report.partitions[0].open_transactions[0];
        assert_eq!(open.first_record_timestamp_ms, Some(1_000));
        assert_eq!(open.open_for_ms, Some(report.now_ms - 1_000));
        assert_eq!(open.transactional_id.as_deref(), Some("app-1"));
        assert_eq!(report.partitions[0].visible_records, 1);
        let TransactionLookup::Listed {
            transactions,
            describe_note,
            ..
        } = &report.transactional_ids
        else {
            panic!("{:?}", report.transactional_ids);
        };
        let ids: Vec<&str> = transactions
            .iter()
            .map(|t| t.transactional_id.as_str())
            .collect();
        assert_eq!(ids, ["app-1", "app-3"]);
        let app1 = &transactions[0];
        assert_eq!(app1.producer_epoch, Some(4));
        assert_eq!(app1.timeout_ms, Some(60_000));
        assert_eq!(app1.partitions_in_topic, [0]);
        assert_eq!(app1.open_in_log, [at(0, 0)]);
        assert_eq!(app1.coordinator, address);
        assert_eq!(transactions[1].state, "PrepareCommit");
        assert!(
            describe_note
                .as_deref()
                .is_some_and(|n| n.contains("'app-3'") && n.contains("error 15")),
            "{describe_note:?}"
        );
        assert_eq!(report.findings.open_transactions, 2);
    }

    #[test]
    fn a_broker_without_list_transactions_gets_a_note_not_an_error() {
        let address = fake_broker("t", open_then_plain(), 2, false);
        let options = AuditOptions {
            transactional_id_prefix: Some("app-".to_owned()),
            ..AuditOptions::new(address.clone(), "t")
        };
        let report = run(&options).expect("the audit runs");
        assert_eq!(
            report.transactional_ids,
            TransactionLookup::Unsupported {
                prefix: "app-".to_owned(),
                reason: format!(
                    "the broker at {address} does not list ListTransactions in its API versions"
                ),
            }
        );
        assert!(report.to_text(20).contains(
            "the broker does not support ListTransactions; open transactions by producer id: 9 \
             (partition 0 from offset 0, open for"
        ));
    }

    #[test]
    fn an_unknown_partition_is_a_read_error() {
        let address = fake_broker("t", open_then_plain(), 2, false);
        let options = AuditOptions {
            partitions: vec![0, 3],
            ..AuditOptions::new(address, "t")
        };
        let error = run(&options).expect_err("partition 3 does not exist");
        assert_eq!(
            error.to_string(),
            "topic 't' has no partition 3 (it has 1 partitions)"
        );
    }
}
