//! [`KafkaSink`]: writes a stream to a Kafka topic, exactly once with
//! Kafka transactions.
//!
//! Owns: the delivery guarantees, the pool of transactional producers
//! (`{prefix}-{subtask}-{slot}`), the transaction handle stored in
//! checkpoints ([`KafkaTransaction`]), and the sink's preflight checks. The
//! lifecycle (when to pre-commit, commit, recover) is the SDK's
//! two-phase-commit driver; see `exactly::sink`.
//!
//! With [`DeliveryGuarantee::ExactlyOnce`]:
//! - each transaction runs on its own producer from a bounded pool, so the
//!   next checkpoint's records flow while the previous transaction waits
//!   for its commit (Flink keeps a pool of 5 for the same reason);
//! - pre-commit (at the barrier) flushes and fails on any delivery error;
//! - commit happens when the checkpoint is complete; a failed commit fails
//!   the job, naming the transactional id, checkpoint and partitions; the
//!   restarted attempt clones the sink from its prototype, so a producer
//!   left in a fatal state is never reused;
//! - a transaction with no records is aborted instead of committed
//!   (FLINK-31363);
//! - before its first transaction (on a fresh start, and after recovery on a
//!   restore), the sink initialises every id of its pool, which aborts
//!   transactions left open under them, and aborts the open transactions
//!   under its prefix that it owns but its pool does not cover (those of
//!   subtasks a smaller parallelism no longer runs, found with
//!   ListTransactions), so that none can pin the last stable offset; it
//!   then keeps only the first slot's producer and creates the others again
//!   when a transaction needs them, since an idle librdkafka producer costs
//!   threads and statistics callbacks;
//! - a producer fenced by a newer one with the same id fails the job with
//!   [`FencedError`], wrapped in [`Unrecoverable`]: no restart, which would
//!   fence the other instance in turn.
//!
//! Every method may block (librdkafka's transaction calls do); the SDK runs
//! them on the blocking pool. The exception is `try_write`, which only
//! enqueues records while librdkafka's queue has room and runs on the
//! task's own thread; what does not fit goes to `write` on the pool.

mod error;
mod preflight;
mod producer;
mod recovery;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use exactly::preflight::{JobSettings, PreflightReport};
use exactly::sink::{SinkContext, TwoPhaseCommitSink};
use exactly::{BoxError, Unrecoverable};
use exactly_kafka_wire::transactions::{ListError, Listed};
use serde::{Deserialize, Serialize};

use self::error::{failed, kafka_failed};
use self::producer::{RdClock, SinkProducer};
use crate::client::{ClientSettings, MissingTopics};
use crate::source::KafkaHeader;

pub use self::error::{FencedError, SinkError};
pub use self::recovery::{
    RECOVERY_END_TXN_MAX_VERSION, Recovered, RecoveryError, recover_transaction,
};

/// What a [`KafkaSink`] promises about each record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryGuarantee {
    /// Each record is visible to `read_committed` readers exactly once:
    /// Kafka transactions committed with the job's checkpoints. Needs
    /// checkpointing and a transactional-id prefix.
    ExactlyOnce,
    /// Each record is written at least once: flushed at every checkpoint,
    /// repeated after a failure.
    AtLeastOnce,
    /// Fire and forget: records in flight at a failure may be lost.
    None,
}

/// One record for Kafka: an optional key, a value and headers.
///
/// To pass an input record's headers through, hand them on:
/// `OutputRecord::keyed(key, value).with_headers(record.headers)`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutputRecord {
    /// The record key (decides the partition).
    pub key: Option<Vec<u8>>,
    /// The record value.
    pub value: Vec<u8>,
    /// The record headers, in order (a key may repeat).
    pub headers: Vec<KafkaHeader>,
}

impl OutputRecord {
    /// A record with a key.
    pub fn keyed(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        OutputRecord {
            key: Some(key.into()),
            value: value.into(),
            headers: Vec::new(),
        }
    }

    /// A record without a key.
    pub fn value(value: impl Into<Vec<u8>>) -> Self {
        OutputRecord {
            key: None,
            value: value.into(),
            headers: Vec::new(),
        }
    }

    /// The record with one more header; `value: None` writes a null header
    /// value.
    pub fn with_header(mut self, key: impl Into<String>, value: Option<Vec<u8>>) -> Self {
        self.headers.push(KafkaHeader {
            key: key.into(),
            value,
        });
        self
    }

    /// The record with `headers` appended, for example an input record's
    /// [`KafkaRecord::headers`](crate::source::KafkaRecord::headers).
    pub fn with_headers(mut self, headers: impl IntoIterator<Item = KafkaHeader>) -> Self {
        self.headers.extend(headers);
        self
    }
}

/// A [`KafkaSink`] transaction, as stored in checkpoints: everything needed
/// to commit or abort it from another process after a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaTransaction {
    /// The transactional id, or `None` without [`DeliveryGuarantee::ExactlyOnce`].
    pub transactional_id: Option<String>,
    /// The pool slot of this sink subtask that ran the transaction.
    pub slot: usize,
    /// The producer id, once known (-1 before the first record).
    pub producer_id: i64,
    /// The producer epoch, once known (-1 before the first record).
    pub epoch: i16,
    /// The checkpoint the transaction was begun for.
    pub checkpoint: u64,
    /// Records written.
    pub records: u64,
    /// The topic written.
    pub topic: String,
    /// The partitions written, with the offset of the transaction's first
    /// record in each (recovery reads the log there to learn the
    /// transaction's fate when the broker's answer is ambiguous).
    pub partitions: BTreeMap<i32, i64>,
}

impl fmt::Display for KafkaTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "transaction `{}` (producer id {}, epoch {}) of checkpoint {} with {} records on {} partitions {:?}",
            self.transactional_id.as_deref().unwrap_or("-"),
            self.producer_id,
            self.epoch,
            self.checkpoint,
            self.records,
            self.topic,
            self.partitions.keys().collect::<Vec<_>>()
        )
    }
}

/// Turns a stream element into a Kafka record.
type Serializer<T> = Arc<dyn Fn(T) -> OutputRecord + Send + Sync>;

/// A Kafka sink. Build it with [`KafkaSink::builder`].
pub struct KafkaSink<T> {
    settings: ClientSettings,
    topic: String,
    guarantee: DeliveryGuarantee,
    guarantee_chosen: bool,
    prefix: Option<String>,
    transaction_timeout: Duration,
    restart_budget: Duration,
    pool_size: usize,
    missing_topics: MissingTopics,
    serialize: Serializer<T>,
    subtask: usize,
    parallelism: usize,
    slots: Vec<Option<SinkProducer>>,
    busy: HashSet<usize>,
    plain: Option<SinkProducer>,
    began: RdClock,
    /// Whether recovery trusts a completed checkpoint's commit when the
    /// log cannot tell ([`KafkaSinkBuilder::recovery_trusts_checkpoint`]).
    trust_checkpoint: bool,
    /// Transactions recovery trusted, over every clone of the prototype.
    trusted: Arc<AtomicU64>,
    /// The transactional-id prefixes of the transactions restored from the
    /// checkpoint (an earlier run's, if the prefix changed since): the
    /// start-up cleanup lists those too.
    restored_prefixes: BTreeSet<String>,
    /// A record [`TwoPhaseCommitSink::try_write`] serialized but found no
    /// room for in the producer's queue; the `write` that follows sends it
    /// first.
    unsent: Option<OutputRecord>,
}

impl<T> fmt::Debug for KafkaSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSink")
            .field("bootstrap", &self.settings.bootstrap)
            .field("topic", &self.topic)
            .field("guarantee", &self.guarantee)
            .field("prefix", &self.prefix)
            .field("subtask", &self.subtask)
            .finish_non_exhaustive()
    }
}

impl<T> Clone for KafkaSink<T> {
    /// A copy of the configuration, without the producers.
    fn clone(&self) -> Self {
        KafkaSink {
            settings: self.settings.clone(),
            topic: self.topic.clone(),
            guarantee: self.guarantee,
            guarantee_chosen: self.guarantee_chosen,
            prefix: self.prefix.clone(),
            transaction_timeout: self.transaction_timeout,
            restart_budget: self.restart_budget,
            pool_size: self.pool_size,
            missing_topics: self.missing_topics,
            serialize: Arc::clone(&self.serialize),
            subtask: self.subtask,
            parallelism: self.parallelism,
            slots: Vec::new(),
            busy: HashSet::new(),
            plain: None,
            began: RdClock::now(),
            trust_checkpoint: self.trust_checkpoint,
            trusted: Arc::clone(&self.trusted),
            restored_prefixes: BTreeSet::new(),
            unsent: None,
        }
    }
}

/// A sink configuration mistake, found when the sink is built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SinkConfigError {
    /// `ExactlyOnce` without a transactional-id prefix.
    #[error(
        "KafkaSink to `{topic}`: ExactlyOnce needs a transactional-id prefix, unique per sink and job; call .transactional_id_prefix(\"...\")"
    )]
    MissingPrefix {
        /// The topic.
        topic: String,
    },
    /// A pool of zero producers.
    #[error(
        "KafkaSink to `{topic}`: the transactional producer pool needs at least 1 producer, got 0"
    )]
    EmptyPool {
        /// The topic.
        topic: String,
    },
    /// A [`ClientSettings`] property that the sink sets itself, and that
    /// its preflight, lifetime guard or recovery rely on.
    #[error(
        "KafkaSink to `{topic}`: remove the ClientSettings property `{key}`: the sink sets it itself; {advice}"
    )]
    ControlledProperty {
        /// The topic.
        topic: String,
        /// The property.
        key: String,
        /// What to do instead.
        advice: String,
    },
    /// A TLS or SASL setting that the raw protocol client, which recovers
    /// pre-committed transactions, cannot honour: a job could write
    /// transactions it could never recover.
    #[error("KafkaSink to `{topic}`: {message}")]
    Security {
        /// The topic.
        topic: String,
        /// What cannot be honoured, naming the property, and what to do.
        message: String,
    },
}

/// librdkafka properties the sink sets itself; [`KafkaSinkBuilder::build`]
/// rejects them in [`ClientSettings::properties`], naming what to use
/// instead. Were they to win over the builder (the settings' properties
/// are applied last), the preflight and the lifetime guard would check a
/// transaction timeout that the broker does not use, and recovery would
/// look for the wrong ids.
const CONTROLLED_PROPERTIES: &[(&str, &str)] = &[
    (
        "transactional.id",
        "it is derived per subtask and slot from .transactional_id_prefix(..)",
    ),
    (
        "transaction.timeout.ms",
        "set it with .transaction_timeout(..), which the preflight and the lifetime guard check",
    ),
    (
        "enable.idempotence",
        "it follows .delivery_guarantee(..): on for ExactlyOnce",
    ),
    (
        "statistics.interval.ms",
        "the sink reads its producers' statistics every 100 ms to learn their producer id and epoch",
    ),
    (
        "isolation.level",
        "it is a consumer property: the sink's recovery reads the log with its own, and readers of the output set theirs",
    ),
];

/// Builds a [`KafkaSink`].
pub struct KafkaSinkBuilder<T> {
    sink: KafkaSink<T>,
}

impl<T> fmt::Debug for KafkaSinkBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KafkaSinkBuilder").field(&self.sink).finish()
    }
}

impl<T: Send + 'static> KafkaSink<T> {
    /// A sink writing to `topic` on the cluster `settings` names, turning
    /// each element into a record with `serialize`. The element is given by
    /// value, so its bytes can become the record's without a copy.
    pub fn builder(
        settings: ClientSettings,
        topic: impl Into<String>,
        serialize: impl Fn(T) -> OutputRecord + Send + Sync + 'static,
    ) -> KafkaSinkBuilder<T> {
        KafkaSinkBuilder {
            sink: KafkaSink {
                settings,
                topic: topic.into(),
                guarantee: DeliveryGuarantee::AtLeastOnce,
                guarantee_chosen: false,
                prefix: None,
                transaction_timeout: Duration::from_secs(900),
                restart_budget: Duration::from_secs(60),
                pool_size: 5,
                missing_topics: MissingTopics::Fail,
                serialize: Arc::new(serialize),
                subtask: 0,
                parallelism: 1,
                slots: Vec::new(),
                busy: HashSet::new(),
                plain: None,
                began: RdClock::now(),
                trust_checkpoint: false,
                trusted: Arc::default(),
                restored_prefixes: BTreeSet::new(),
                unsent: None,
            },
        }
    }

    /// How many pre-committed transactions recovery took as committed on
    /// the completed checkpoint's word, the log being unable to tell
    /// ([`KafkaSinkBuilder::recovery_trusts_checkpoint`]); counted over
    /// every subtask and restart of this sink.
    pub fn transactions_trusted_on_recovery(&self) -> u64 {
        self.trusted.load(Ordering::Relaxed)
    }
}

impl<T> KafkaSinkBuilder<T> {
    /// The delivery guarantee. Without this call the sink uses
    /// `AtLeastOnce` and says so at start.
    #[must_use]
    pub fn delivery_guarantee(mut self, guarantee: DeliveryGuarantee) -> Self {
        self.sink.guarantee = guarantee;
        self.sink.guarantee_chosen = true;
        self
    }

    /// The transactional-id prefix (required for `ExactlyOnce`): ids are
    /// `{prefix}-{subtask}-{slot}`. Use one prefix per sink and job: two
    /// users of one prefix fence each other.
    #[must_use]
    pub fn transactional_id_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.sink.prefix = Some(prefix.into());
        self
    }

    /// `transaction.timeout.ms` (default 15 minutes, Kafka's default
    /// broker maximum). It must outlast the longest a transaction can live
    /// while checkpoints complete, `max(interval, checkpoint timeout + min
    /// pause) + checkpoint timeout`, plus the restart budget, or the broker
    /// could abort a transaction before it is committed; and it must not
    /// exceed the broker's `transaction.max.timeout.ms`, which the
    /// preflight reads with DescribeConfigs.
    #[must_use]
    pub fn transaction_timeout(mut self, timeout: Duration) -> Self {
        self.sink.transaction_timeout = timeout;
        self
    }

    /// How long a restart may take (default 60 s); part of the transaction
    /// timeout check.
    #[must_use]
    pub fn restart_budget(mut self, budget: Duration) -> Self {
        self.sink.restart_budget = budget;
        self
    }

    /// What recovery does with a pre-committed transaction that the broker
    /// will not commit again and whose fate the log cannot tell, because
    /// retention or compaction removed its records (a savepoint older than
    /// the topic's retention, or a compacted output topic).
    ///
    /// By default (`false`) the job stops, naming the transaction: its
    /// records may be lost, and only the user can check. With `true`,
    /// recovery trusts the completed checkpoint: the sink committed the
    /// transaction when that checkpoint completed, unless the job died
    /// before it could and the broker then aborted it at its timeout. Each
    /// transaction trusted is logged as a warning, with why the log could
    /// not tell, and counted ([`KafkaSink::transactions_trusted_on_recovery`]).
    ///
    /// ```
    /// use exactly_kafka::client::ClientSettings;
    /// use exactly_kafka::sink::{DeliveryGuarantee, KafkaSink, OutputRecord};
    ///
    /// let sink = KafkaSink::builder(ClientSettings::new("127.0.0.1:9092"), "totals", |line: String| {
    ///     OutputRecord::value(line)
    /// })
    /// .delivery_guarantee(DeliveryGuarantee::ExactlyOnce)
    /// .transactional_id_prefix("totals-job")
    /// .recovery_trusts_checkpoint(true)
    /// .build()
    /// .unwrap();
    /// assert_eq!(sink.transactions_trusted_on_recovery(), 0);
    /// ```
    #[must_use]
    pub fn recovery_trusts_checkpoint(mut self, trust: bool) -> Self {
        self.sink.trust_checkpoint = trust;
        self
    }

    /// Transactional producers per subtask (default 5).
    #[must_use]
    pub fn producer_pool_size(mut self, size: usize) -> Self {
        self.sink.pool_size = size;
        self
    }

    /// Creates the topic at start, with this many partitions, if it is
    /// missing (default: report it as an error).
    #[must_use]
    pub fn create_missing_topic(mut self, partitions: i32) -> Self {
        self.sink.missing_topics = MissingTopics::Create { partitions };
        self
    }

    /// The sink.
    ///
    /// # Errors
    ///
    /// [`SinkConfigError`] for a configuration that cannot work.
    pub fn build(self) -> Result<KafkaSink<T>, SinkConfigError> {
        let sink = self.sink;
        if sink.guarantee == DeliveryGuarantee::ExactlyOnce && sink.prefix.is_none() {
            return Err(SinkConfigError::MissingPrefix { topic: sink.topic });
        }
        if sink.pool_size == 0 {
            return Err(SinkConfigError::EmptyPool { topic: sink.topic });
        }
        if let Err(error) = sink.settings.security() {
            return Err(SinkConfigError::Security {
                topic: sink.topic,
                message: error.to_string(),
            });
        }
        if let Some((key, advice)) = sink.settings.overridden(CONTROLLED_PROPERTIES) {
            return Err(SinkConfigError::ControlledProperty {
                topic: sink.topic,
                key: (*key).to_owned(),
                advice: (*advice).to_owned(),
            });
        }
        Ok(sink)
    }
}

/// The prefix of a pool's transactional id `{prefix}-{subtask}-{slot}`.
fn id_prefix(id: &str) -> Option<&str> {
    let (rest, slot) = id.rsplit_once('-')?;
    let (prefix, subtask) = rest.rsplit_once('-')?;
    (slot.parse::<usize>().is_ok() && subtask.parse::<usize>().is_ok()).then_some(prefix)
}

/// What the start-up cleanup does with a listing of open transactions:
/// a cluster without ListTransactions (Kafka before 3.0) leaves them to
/// their timeout, with a warning; any other failure is an error, so that
/// the restart strategy tries again rather than leave read_committed
/// readers stalled behind them for up to the transaction timeout.
fn listed_or_retry(
    prefix: &str,
    listed: Result<Vec<Listed>, ListError>,
) -> Result<Vec<Listed>, BoxError> {
    match listed {
        Ok(listed) => Ok(listed),
        Err(ListError::Unsupported(why)) => {
            tracing::warn!(
                %why,
                prefix = %prefix,
                "the cluster cannot list open transactions, so transactions left open under the prefix by subtasks \
                 that no longer run are aborted only by their transaction.timeout.ms"
            );
            Ok(Vec::new())
        }
        Err(error) => Err(format!(
            "listing the open transactions under `{prefix}` to abort those left by an earlier run: {error}; the \
             restart strategy tries again (check that every broker is reachable and that the principal may \
             Describe the transactional ids)"
        )
        .into()),
    }
}

/// The subtask and slot of a transactional id `{prefix}{subtask}-{slot}`
/// (with `prefix` ending in `-`), or `None` for another id that merely
/// starts with the prefix.
fn pool_position(prefix: &str, id: &str) -> Option<(usize, usize)> {
    let (subtask, slot) = id.strip_prefix(prefix)?.split_once('-')?;
    Some((subtask.parse().ok()?, slot.parse().ok()?))
}

impl<T> KafkaSink<T> {
    fn transactional_id(&self, subtask: usize, slot: usize) -> String {
        format!(
            "{}-{subtask}-{slot}",
            self.prefix.as_deref().unwrap_or_default()
        )
    }

    /// The producer of `slot`, created and initialised (which fences any
    /// earlier producer with its id and aborts its open transaction).
    fn slot(&mut self, slot: usize) -> Result<&SinkProducer, BoxError> {
        if self.slots.len() < self.pool_size {
            self.slots.resize_with(self.pool_size, || None);
        }
        if self.slots[slot].is_none() {
            let id = self.transactional_id(self.subtask, slot);
            let producer =
                SinkProducer::create(&self.settings, Some((&id, self.transaction_timeout)), true)
                    .map_err(|e| {
                    failed(
                        &format!("creating the transactional producer `{id}`"),
                        None,
                        e,
                    )
                })?;
            producer.init_transactions().map_err(|e| {
                failed(
                    &format!(
                        "initialising transactions for `{id}` at {}",
                        self.settings.bootstrap
                    ),
                    None,
                    e,
                )
            })?;
            self.slots[slot] = Some(producer);
        }
        Ok(self.slots[slot].as_ref().expect("created above"))
    }

    /// Aborts the open transactions under the prefix that this subtask
    /// owns but its pool does not cover: those of subtasks that a smaller
    /// parallelism no longer runs (`{prefix}-{s}-{slot}` with
    /// `s % parallelism == subtask`, as restored state is handed over) and
    /// of slots beyond a smaller pool. Initialising a producer with such an
    /// id aborts its transaction, which would otherwise pin the last stable
    /// offset until it times out (FLINK-40626). Found with ListTransactions;
    /// a broker that cannot list them leaves them to their timeout, with a
    /// warning.
    fn abort_lingering(&mut self) -> Result<(), BoxError> {
        let current = self.prefix.clone().unwrap_or_default();
        let mut prefixes = self.restored_prefixes.clone();
        prefixes.insert(current.clone());
        for prefix in prefixes {
            self.abort_lingering_under(&prefix, prefix == current)?;
        }
        Ok(())
    }

    /// [`Self::abort_lingering`] for one prefix; `current` when it is the
    /// pool's own, whose ids the pool covers.
    fn abort_lingering_under(&mut self, prefix: &str, current: bool) -> Result<(), BoxError> {
        let prefix = format!("{prefix}-");
        let listed = recovery::open_transactions_under(&self.settings, &prefix)
            .map_err(|error| failed("listing open transactions", None, error))?;
        for lingering in listed_or_retry(&prefix, listed)? {
            let Some((subtask, slot)) = pool_position(&prefix, &lingering.transactional_id) else {
                continue;
            };
            let covered = current && subtask == self.subtask && slot < self.pool_size;
            if subtask % self.parallelism != self.subtask || covered {
                continue;
            }
            let id = &lingering.transactional_id;
            let producer =
                SinkProducer::create(&self.settings, Some((id, self.transaction_timeout)), true)
                    .map_err(|e| {
                        failed(&format!("creating a producer to abort `{id}`"), None, e)
                    })?;
            producer.init_transactions().map_err(|e| {
                failed(
                    &format!("aborting the lingering transaction of `{id}`"),
                    None,
                    e,
                )
            })?;
            tracing::info!(
                transactional_id = %id,
                producer_id = lingering.producer_id,
                state = %lingering.state,
                "aborted a lingering transaction"
            );
        }
        Ok(())
    }

    /// Keeps the prefix of a restored transaction for the start-up cleanup.
    fn remember_prefix(&mut self, transaction: &KafkaTransaction) {
        if let Some(prefix) = transaction.transactional_id.as_deref().and_then(id_prefix) {
            self.restored_prefixes.insert(prefix.to_owned());
        }
    }

    fn plain(&mut self) -> Result<&SinkProducer, BoxError> {
        if self.plain.is_none() {
            let idempotent = self.guarantee == DeliveryGuarantee::AtLeastOnce;
            let producer = SinkProducer::create(&self.settings, None, idempotent)
                .map_err(|e| failed("creating the Kafka producer", None, e))?;
            self.plain = Some(producer);
        }
        Ok(self.plain.as_ref().expect("created above"))
    }

    fn producer_for(&mut self, transaction: &KafkaTransaction) -> Result<&SinkProducer, BoxError> {
        if transaction.transactional_id.is_some() {
            self.slots
                .get(transaction.slot)
                .and_then(Option::as_ref)
                .ok_or_else(|| {
                    failed(
                        "using the producer",
                        Some(transaction),
                        "it no longer exists (an earlier call failed)",
                    )
                })
        } else {
            self.plain()
        }
    }
}

impl<T: Send + 'static> TwoPhaseCommitSink for KafkaSink<T> {
    type Item = T;
    type Transaction = KafkaTransaction;

    fn name(&self) -> String {
        format!("kafka({})", self.topic)
    }

    fn preflight(&self, settings: &JobSettings) -> Result<PreflightReport, BoxError> {
        preflight::check(self, settings)
    }

    /// `transaction.timeout.ms` less the restart budget: a transaction
    /// committed by recovery after a restart must still be open then.
    fn transaction_timeout(&self) -> Option<Duration> {
        (self.guarantee == DeliveryGuarantee::ExactlyOnce)
            .then(|| self.transaction_timeout.saturating_sub(self.restart_budget))
    }

    fn open(&mut self, ctx: &SinkContext) -> Result<(), BoxError> {
        self.subtask = ctx.subtask.index;
        self.parallelism = ctx.subtask.parallelism.max(1);
        Ok(())
    }

    fn begin_transaction(&mut self, checkpoint_id: u64) -> Result<KafkaTransaction, BoxError> {
        let mut transaction = KafkaTransaction {
            transactional_id: None,
            slot: 0,
            producer_id: -1,
            epoch: -1,
            checkpoint: checkpoint_id,
            records: 0,
            topic: self.topic.clone(),
            partitions: BTreeMap::new(),
        };
        if self.guarantee != DeliveryGuarantee::ExactlyOnce {
            return Ok(transaction);
        }
        if self.slots.is_empty() {
            // The first transaction of this sink instance, after recovery
            // has committed or aborted every transaction the restored
            // checkpoint knew of: initialising every id of the pool fences
            // earlier producers and aborts whatever else they left open
            // (on a fresh start, or from an attempt that crashed after the
            // restored checkpoint), so that nothing pins the last stable
            // offset.
            for slot in 0..self.pool_size {
                self.slot(slot)?;
            }
            self.abort_lingering()?;
            // Every id is fenced now. Only the producers that transactions
            // use stay: a slot's producer is created again (initialising its
            // id once more) when a transaction needs it. At checkpoints that
            // complete before the next one, two slots take turns, and each
            // idle producer would cost threads and statistics callbacks.
            self.slots
                .iter_mut()
                .skip(1)
                .for_each(|producer| *producer = None);
        }
        let free = (0..self.pool_size).find(|s| !self.busy.contains(s)).ok_or_else(|| {
            format!(
                "all {} transactional producers of kafka({}) subtask {} hold transactions waiting for their checkpoint to complete; \
                 raise .producer_pool_size() or checkpoint less often",
                self.pool_size, self.topic, self.subtask
            )
        })?;
        transaction.slot = free;
        transaction.transactional_id = Some(self.transactional_id(self.subtask, free));
        self.began = RdClock::now();
        let producer = self.slot(free)?;
        producer
            .begin_transaction()
            .map_err(|e| kafka_failed("begin", &transaction, producer, e))?;
        self.busy.insert(free);
        Ok(transaction)
    }

    /// Enqueues records until librdkafka's queue is full: sending never
    /// waits here. The record that found the queue full stays in the sink
    /// for the `write` that follows on the blocking pool.
    fn try_write(
        &mut self,
        transaction: &mut KafkaTransaction,
        batch: Vec<T>,
    ) -> Result<Option<Vec<T>>, BoxError> {
        if self.unsent.is_some() {
            return Ok(Some(batch));
        }
        let serialize = Arc::clone(&self.serialize);
        let topic = self.topic.clone();
        let producer = self.producer_for(transaction)?;
        let mut elements = batch.into_iter();
        let mut sent = 0;
        let mut full = None;
        for element in elements.by_ref() {
            let record = serialize(element);
            let enqueued = producer
                .try_send(&topic, &record)
                .map_err(|e| kafka_failed("writing a record", transaction, producer, e))?;
            if !enqueued {
                full = Some(record);
                break;
            }
            sent += 1;
        }
        transaction.records += sent;
        Ok(full.map(|record| {
            self.unsent = Some(record);
            elements.collect()
        }))
    }

    fn write(&mut self, transaction: &mut KafkaTransaction, batch: Vec<T>) -> Result<(), BoxError> {
        let serialize = Arc::clone(&self.serialize);
        let topic = self.topic.clone();
        let unsent = self.unsent.take();
        let producer = self.producer_for(transaction)?;
        let records = batch.len() as u64 + u64::from(unsent.is_some());
        for record in unsent
            .into_iter()
            .chain(batch.into_iter().map(|e| serialize(e)))
        {
            producer
                .send(&topic, &record)
                .map_err(|e| kafka_failed("writing a record", transaction, producer, e))?;
        }
        transaction.records += records;
        Ok(())
    }

    fn pre_commit(&mut self, transaction: &mut KafkaTransaction) -> Result<(), BoxError> {
        if self.guarantee == DeliveryGuarantee::None {
            return Ok(());
        }
        if transaction.records == 0 && transaction.transactional_id.is_some() {
            return Ok(());
        }
        let began = self.began;
        let producer = self.producer_for(transaction)?;
        producer
            .flush()
            .map_err(|e| kafka_failed("flushing", transaction, producer, e))?;
        let deliveries = producer.take_deliveries();
        for (partition, offset) in deliveries.first_offsets {
            let first = transaction.partitions.entry(partition).or_insert(offset);
            *first = (*first).min(offset);
        }
        if let Some(first) = deliveries.first_error {
            let what = format!(
                "pre-commit ({} records were not delivered)",
                deliveries.errors
            );
            return Err(kafka_failed(&what, transaction, producer, first));
        }
        if transaction.transactional_id.is_some() {
            let (id, epoch) = producer.identity(began).ok_or_else(|| {
                failed(
                    "pre-commit",
                    Some(transaction),
                    "librdkafka did not report the producer id and epoch",
                )
            })?;
            transaction.producer_id = id;
            transaction.epoch = epoch;
        }
        Ok(())
    }

    fn commit(&mut self, transaction: KafkaTransaction) -> Result<(), BoxError> {
        if transaction.transactional_id.is_none() {
            return Ok(());
        }
        let producer = self.producer_for(&transaction)?;
        let result = if transaction.records == 0 {
            producer.abort_transaction()
        } else {
            producer.commit_transaction(
                (transaction.producer_id >= 0)
                    .then_some((transaction.producer_id, transaction.epoch)),
            )
        };
        if let Err(error) = result {
            return Err(kafka_failed("commit", &transaction, producer, error));
        }
        self.busy.remove(&transaction.slot);
        Ok(())
    }

    fn abort(&mut self, transaction: KafkaTransaction) -> Result<(), BoxError> {
        if transaction.transactional_id.is_none() {
            return Ok(());
        }
        let producer = self.producer_for(&transaction)?;
        if let Err(error) = producer.abort_transaction() {
            return Err(kafka_failed("abort", &transaction, producer, error));
        }
        self.busy.remove(&transaction.slot);
        Ok(())
    }

    fn recover_and_commit(&mut self, transaction: KafkaTransaction) -> Result<(), BoxError> {
        self.remember_prefix(&transaction);
        if transaction.transactional_id.is_none() || transaction.records == 0 {
            return Ok(());
        }
        // No restart changes what the log says (lost, or undecidable): stop.
        let recovered = match recover_transaction(&self.settings, &transaction) {
            Ok(recovered) => recovered,
            Err(RecoveryError::Undecidable { answer, reason, .. }) if self.trust_checkpoint => {
                self.trusted.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    transaction = %transaction,
                    %answer,
                    %reason,
                    trusted = self.trusted.load(Ordering::Relaxed),
                    "the log cannot tell whether this transaction was committed; taking it as committed, as its \
                     completed checkpoint says (recovery_trusts_checkpoint)"
                );
                return Ok(());
            }
            Err(e @ (RecoveryError::Lost { .. } | RecoveryError::Undecidable { .. })) => {
                return Err(Unrecoverable::boxed(e));
            }
            Err(other) => return Err(other.into()),
        };
        tracing::info!(
            transaction = %transaction,
            answer = %recovered.answer,
            end_txn_version = recovered.end_txn_version,
            committed_earlier = recovered.committed_earlier,
            "recovered a pre-committed transaction"
        );
        Ok(())
    }

    /// Without transactions, waits for the records still in flight at the
    /// end of the input: `None` does not flush at checkpoints, and dropping
    /// a producer discards what it has not delivered. Delivery errors fail
    /// the job with `AtLeastOnce` (already flushed at every checkpoint) and
    /// are only counted in a warning with `None`.
    fn close(&mut self) -> Result<(), BoxError> {
        let Some(producer) = &self.plain else {
            return Ok(());
        };
        producer
            .flush()
            .map_err(|e| failed("flushing at the end of the input", None, e))?;
        let deliveries = producer.take_deliveries();
        if let Some(first) = deliveries.first_error {
            if self.guarantee == DeliveryGuarantee::AtLeastOnce {
                return Err(failed(
                    &format!(
                        "the final flush ({} records were not delivered)",
                        deliveries.errors
                    ),
                    None,
                    first,
                ));
            }
            tracing::warn!(
                topic = %self.topic,
                undelivered = deliveries.errors,
                first_error = %first,
                "records were not delivered (DeliveryGuarantee::None)"
            );
        }
        Ok(())
    }

    fn recover_and_abort(&mut self, transaction: KafkaTransaction) -> Result<(), BoxError> {
        self.remember_prefix(&transaction);
        let Some(id) = &transaction.transactional_id else {
            return Ok(());
        };
        // Initialising a producer with the id fences the old one and aborts
        // its open transaction.
        let producer =
            SinkProducer::create(&self.settings, Some((id, self.transaction_timeout)), true)
                .map_err(|e| failed("creating a producer to abort", Some(&transaction), e))?;
        producer.init_transactions().map_err(|e| {
            failed(
                "aborting (initialising transactions)",
                Some(&transaction),
                e,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_property_the_sink_sets_itself_is_refused_at_build_naming_what_to_use() {
        for (key, method) in [
            ("transactional.id", ".transactional_id_prefix(..)"),
            ("transaction.timeout.ms", ".transaction_timeout(..)"),
            ("enable.idempotence", ".delivery_guarantee(..)"),
            ("statistics.interval.ms", "statistics"),
            ("isolation.level", "consumer property"),
        ] {
            let settings = ClientSettings::new("127.0.0.1:9092").property(key, "1");
            let built = KafkaSink::builder(settings, "out", |line: String| {
                OutputRecord::value(line.into_bytes())
            })
            .delivery_guarantee(DeliveryGuarantee::ExactlyOnce)
            .transactional_id_prefix("job")
            .build();
            let error = built.expect_err("the property must be refused").to_string();
            assert!(error.contains(&format!("`{key}`")), "{error}");
            assert!(error.contains(method), "{error}");
        }
    }

    #[test]
    fn a_restored_transactions_prefix_is_found_in_its_id() {
        assert_eq!(id_prefix("orders-v1-3-4"), Some("orders-v1"));
        assert_eq!(id_prefix("job-0-0"), Some("job"));
        assert_eq!(id_prefix("job-x-0"), None);
        assert_eq!(id_prefix("job-1"), None);
    }

    /// Review finding 5 of issue 19: a listing that failed was a warning,
    /// and transactions left open stalled read_committed readers until
    /// their timeout. Now only a cluster without ListTransactions is.
    #[test]
    fn a_listing_that_failed_is_an_error_for_the_restart_strategy() {
        let error = listed_or_retry(
            "job-",
            Err(ListError::Failed(
                "ListTransactions: connection refused".into(),
            )),
        )
        .expect_err("a failed listing must fail the attempt");
        let text = error.to_string();
        assert!(
            text.contains("`job-`") && text.contains("connection refused"),
            "{text}"
        );
        let unsupported = listed_or_retry("job-", Err(ListError::Unsupported("Kafka 2.8".into())));
        assert!(unsupported.unwrap().is_empty());
    }

    #[test]
    fn pool_ids_are_told_from_other_ids_under_the_prefix() {
        assert_eq!(pool_position("job-", "job-3-4"), Some((3, 4)));
        assert_eq!(pool_position("job-", "job-12-0"), Some((12, 0)));
        assert_eq!(pool_position("job-", "job-x-0-1"), None, "another prefix");
        assert_eq!(pool_position("job-", "job-1-0-1"), None, "prefix job-1");
        assert_eq!(pool_position("job-", "other-1-0"), None);
        assert_eq!(pool_position("job-", "job-1"), None);
    }
}
