//! [`KafkaSource`]: reads Kafka topics into an `exactly` pipeline, with the
//! read offsets kept in the job's checkpoints.
//!
//! Owns: assigning partitions to subtasks (explicitly, no consumer-group
//! rebalancing), the per-partition next offsets each subtask checkpoints and
//! restores (also across a change of parallelism), periodic discovery of
//! partitions that appear later (read from their earliest offset), the
//! isolation level, deserializing values and applying the
//! [`DeserializeErrorPolicy`], the dead-letter producer, and the optional
//! commit of checkpointed offsets to a consumer group for lag monitoring.
//! Does not own the cluster settings and topic checks ([`crate::client`]),
//! the deserializers ([`crate::deserialize`]), nor anything about writing
//! the job's results (sinks).
//!
//! The design, after Flink's `KafkaSource` (FLIP-27), is in
//! `docs/kafka-source.md`. In short:
//!
//! * Partition `p` of topic `t` is read by subtask [`partition_owner`]`(t,
//!   p, parallelism)`, Flink's formula. Each subtask `assign`s its
//!   partitions; there is no `subscribe` and no group membership.
//! * A subtask's [`KafkaPosition`] is the next offset of each of its
//!   partitions. On restore every subtask sees every old subtask's position
//!   and seeks its partitions to exactly those offsets; partitions without
//!   one start at the earliest offset (FLIP-288), never at the latest.
//! * `isolation.level=read_committed` by default: records of open
//!   transactions are held back, those of aborted ones never delivered.
//! * `.bounded()` stops each partition at its end offset when the source
//!   first opened ([`KafkaSourceBuilder::bounded`]), and the job then ends.
//! * Offsets are committed to a consumer group only when a group id is
//!   given, only after a checkpoint completes, and only for monitoring: the
//!   source never reads them back.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use exactly::prelude::*;
//! use exactly_kafka::client::ClientSettings;
//! use exactly_kafka::deserialize::Utf8;
//! use exactly_kafka::source::{KafkaRecord, KafkaSource};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let source = KafkaSource::builder(ClientSettings::from_env()?)
//!     .topics(["orders"])
//!     .deserializer(Utf8)
//!     .group_id("orders-audit") // optional: commit offsets for lag monitoring
//!     .build()?;
//! let skipped = source.metrics();
//!
//! let config = JobConfig::new()
//!     .parallelism(2)
//!     .checkpoint_interval(Duration::from_secs(5))
//!     .checkpoint_dir("/var/lib/orders-audit/checkpoints");
//! let job = Job::new("orders-audit", config);
//! job.source(source).sink(CollectSink::<KafkaRecord<String>>::new());
//! job.run()?;
//! println!("{} records skipped", skipped.skipped());
//! # Ok(())
//! # }
//! ```

mod assign;
mod bound;
mod dead_letter;
mod error;
mod metrics;
mod reader;
mod record;

use std::sync::Arc;
use std::time::Duration;

use exactly::BoxError;
use exactly::preflight::{JobSettings, PreflightReport};
use exactly::source::{Source, SourcePoll, SubtaskContext};

pub use assign::partition_owner;
pub use error::KafkaSourceError;
pub use metrics::KafkaSourceMetrics;
pub use record::{KafkaHeader, KafkaPosition, KafkaRecord, PartitionOffset, Timestamp};

use crate::client::{ClientSettings, MissingTopics, ensure_topics};
use crate::deserialize::{Bytes, DeserializeErrorPolicy, ValueDeserializer};
use reader::Reader;

/// The default interval of partition discovery.
pub const DEFAULT_DISCOVERY_INTERVAL: Duration = Duration::from_secs(10);

/// How long a consumer of the source waits before it fetches again from a
/// partition whose local queue was full: librdkafka's
/// `fetch.queue.backoff.ms`, which the source sets (a
/// [`ClientSettings::property`] overrides it).
///
/// librdkafka's default, 1 s, caps a consumer with a backlog: once a fetch
/// fills its queue past `queued.min.messages` (100 000 records, counted over
/// all its partitions), it asks for nothing more until a second has passed,
/// however fast the job drains the queue. On the benchmark's records of 25
/// bytes that held one consumer to about 200 000 records per second
/// (`docs/kafka-source.md`).
pub const FETCH_QUEUE_BACKOFF: Duration = Duration::from_millis(10);

/// With [`DeserializeErrorPolicy::Skip`], the first skipped record and every
/// `SKIP_LOG_EVERY`-th after it are logged (as warnings, with topic,
/// partition, offset and reason).
pub const SKIP_LOG_EVERY: u64 = 1000;

/// The headers the source adds to a record it sends to the dead-letter
/// topic, after the record's own headers. Values are UTF-8 text.
pub mod dead_letter_headers {
    /// The topic the record was read from.
    pub const TOPIC: &str = "exactly.dlq.topic";
    /// The partition it was read from, in decimal.
    pub const PARTITION: &str = "exactly.dlq.partition";
    /// Its offset, in decimal.
    pub const OFFSET: &str = "exactly.dlq.offset";
    /// Why its value did not deserialize.
    pub const ERROR: &str = "exactly.dlq.error";
}

/// librdkafka properties the source sets itself; the builder rejects them
/// in [`ClientSettings::properties`], naming the method to use instead.
const CONTROLLED_PROPERTIES: &[(&str, &str)] = &[
    ("group.id", "set it with .group_id(..)"),
    (
        "enable.auto.commit",
        "it is always false: positions live in checkpoints; .group_id(..) commits them for monitoring",
    ),
    (
        "enable.auto.offset.store",
        "it is always false: positions live in checkpoints",
    ),
    (
        "isolation.level",
        "read_committed is the default; opt out with .read_uncommitted()",
    ),
];

/// Everything a [`KafkaSource`] was built with; shared by its subtasks.
#[derive(Debug)]
pub(crate) struct SourceConfig {
    pub(crate) name: String,
    pub(crate) settings: ClientSettings,
    pub(crate) topics: Vec<String>,
    pub(crate) group_id: Option<String>,
    pub(crate) read_committed: bool,
    pub(crate) discovery: Option<Duration>,
    pub(crate) on_error: DeserializeErrorPolicy,
    pub(crate) missing: MissingTopics,
    pub(crate) reset_out_of_range: bool,
    /// Whether records carry their headers ([`KafkaSourceBuilder::ignore_headers`]).
    pub(crate) headers: bool,
    /// With [`KafkaSourceBuilder::bounded`], the end offsets taken so far.
    pub(crate) bounded: Option<bound::SharedEnds>,
}

/// A Kafka source whose read positions are part of the job's checkpoints.
/// Build it with [`KafkaSource::builder`]; see the [module docs](self).
///
/// The source is a prototype: the runtime clones it once per subtask and
/// opens the clones. A clone shares the configuration, the deserializer and
/// the [metrics](KafkaSource::metrics), never a connection.
pub struct KafkaSource<D: ValueDeserializer = Bytes> {
    config: Arc<SourceConfig>,
    deserializer: D,
    metrics: Arc<KafkaSourceMetrics>,
    reader: Option<Reader>,
}

impl<D: ValueDeserializer> Clone for KafkaSource<D> {
    fn clone(&self) -> Self {
        KafkaSource {
            config: Arc::clone(&self.config),
            deserializer: self.deserializer.clone(),
            metrics: Arc::clone(&self.metrics),
            reader: None,
        }
    }
}

impl<D: ValueDeserializer> std::fmt::Debug for KafkaSource<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("config", &self.config)
            .field("open", &self.reader.is_some())
            .finish_non_exhaustive()
    }
}

impl KafkaSource {
    /// A builder for a source reading from the cluster in `settings`, with
    /// the [`Bytes`] deserializer until [`deserializer`](KafkaSourceBuilder::deserializer)
    /// picks another.
    pub fn builder(settings: ClientSettings) -> KafkaSourceBuilder<Bytes> {
        KafkaSourceBuilder {
            name: "kafka".to_owned(),
            settings,
            topics: Vec::new(),
            deserializer: Bytes,
            group_id: None,
            read_committed: true,
            discovery: Some(DEFAULT_DISCOVERY_INTERVAL),
            on_error: DeserializeErrorPolicy::Fail,
            missing: MissingTopics::Fail,
            reset_out_of_range: false,
            headers: true,
            bounded: false,
        }
    }
}

impl<D: ValueDeserializer> KafkaSource<D> {
    /// The source's counters (skipped and dead-lettered records, offset
    /// commits), shared by all its subtasks. Take the handle before giving
    /// the source to the job.
    pub fn metrics(&self) -> Arc<KafkaSourceMetrics> {
        Arc::clone(&self.metrics)
    }

    /// The topics this source reads.
    pub fn topics(&self) -> &[String] {
        &self.config.topics
    }
}

/// Builds a [`KafkaSource`]; from [`KafkaSource::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until .build()"]
pub struct KafkaSourceBuilder<D> {
    name: String,
    settings: ClientSettings,
    topics: Vec<String>,
    deserializer: D,
    group_id: Option<String>,
    read_committed: bool,
    discovery: Option<Duration>,
    on_error: DeserializeErrorPolicy,
    missing: MissingTopics,
    reset_out_of_range: bool,
    headers: bool,
    bounded: bool,
}

impl<D: ValueDeserializer> KafkaSourceBuilder<D> {
    /// Adds topics to read (at least one is needed).
    pub fn topics<T: Into<String>>(mut self, topics: impl IntoIterator<Item = T>) -> Self {
        self.topics.extend(topics.into_iter().map(Into::into));
        self
    }

    /// Adds one topic to read.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topics.push(topic.into());
        self
    }

    /// How record values are deserialized (default [`Bytes`]).
    pub fn deserializer<E: ValueDeserializer>(self, deserializer: E) -> KafkaSourceBuilder<E> {
        KafkaSourceBuilder {
            name: self.name,
            settings: self.settings,
            topics: self.topics,
            deserializer,
            group_id: self.group_id,
            read_committed: self.read_committed,
            discovery: self.discovery,
            on_error: self.on_error,
            missing: self.missing,
            reset_out_of_range: self.reset_out_of_range,
            headers: self.headers,
            bounded: self.bounded,
        }
    }

    /// The source's name in the job (default `kafka`). Checkpoints are
    /// matched to sources by name, so give each Kafka source of a job its
    /// own, and keep it when the job changes. The topics are deliberately
    /// not part of the default name: adding a topic must not make the old
    /// checkpoints unusable.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Commits the checkpointed offsets to this consumer group whenever a
    /// checkpoint completes, so that lag-monitoring tools see the job's
    /// progress. Never used for recovery. A failed commit is a warning and a
    /// [counter](KafkaSourceMetrics::offset_commit_failures), not a job
    /// failure. Without a group id nothing is committed.
    pub fn group_id(mut self, group_id: impl Into<String>) -> Self {
        self.group_id = Some(group_id.into());
        self
    }

    /// Reads with `isolation.level=read_uncommitted`: records of open and
    /// aborted transactions are read as data. The default is
    /// read_committed; this opt-out is reported as a notice at start.
    pub fn read_uncommitted(mut self) -> Self {
        self.read_committed = false;
        self
    }

    /// How often each subtask looks for new partitions of its topics
    /// (default [`DEFAULT_DISCOVERY_INTERVAL`]). New partitions are read
    /// from their earliest offset.
    pub fn partition_discovery_interval(mut self, interval: Duration) -> Self {
        self.discovery = Some(interval);
        self
    }

    /// Turns partition discovery off: the partitions that exist when a
    /// subtask opens are all it reads until the job restarts.
    pub fn without_partition_discovery(mut self) -> Self {
        self.discovery = None;
        self
    }

    /// What to do with a record whose value does not deserialize (default
    /// [`DeserializeErrorPolicy::Fail`]).
    pub fn on_deserialize_error(mut self, policy: DeserializeErrorPolicy) -> Self {
        self.on_error = policy;
        self
    }

    /// Creates missing topics (and the dead-letter topic) at start, with
    /// `partitions` partitions, instead of failing.
    pub fn create_missing_topics(mut self, partitions: i32) -> Self {
        self.missing = MissingTopics::Create { partitions };
        self
    }

    /// Resumes a partition from its earliest offset, with a warning, when
    /// the checkpoint's offset is no longer in the log (retention deleted
    /// it, or the log was truncated). Without this, such an offset stops
    /// the job with [`KafkaSourceError::OffsetOutOfRange`]: resuming
    /// anywhere else skips or repeats records. The same holds for an offset
    /// that falls out of the log while the job runs.
    pub fn reset_out_of_range_offsets_to_earliest(mut self) -> Self {
        self.reset_out_of_range = true;
        self
    }

    /// Leaves every record's [`headers`](KafkaRecord::headers) empty, for a
    /// job that does not read them. librdkafka parses a record's headers
    /// only when asked, but then allocates a parsing buffer even for a
    /// record with none: about 6 % of the benchmark job's CPU
    /// (`docs/kafka-source.md`). A dead-lettered record keeps its headers
    /// either way.
    pub fn ignore_headers(mut self) -> Self {
        self.headers = false;
        self
    }

    /// Makes the source bounded, like Flink's
    /// `setBounded(OffsetsInitializer.latest())`: each partition is read up
    /// to the end offset it had when the source first opened (the last
    /// stable offset with read_committed), and a subtask finishes once all
    /// its partitions reached theirs. When every source has finished, the
    /// job takes its final checkpoint, commits, and [`Job::run`] returns.
    /// Partition discovery is off. Restarted attempts of the job keep the
    /// end offsets; a new process that restores a checkpoint takes them
    /// again.
    ///
    /// [`Job::run`]: exactly::Job::run
    pub fn bounded(mut self) -> Self {
        self.bounded = true;
        self
    }

    /// Checks the settings and builds the source. The cluster is not
    /// contacted here; that happens in the job's preflight check.
    ///
    /// # Errors
    ///
    /// [`KafkaSourceError::Config`] naming the setting and what to change.
    pub fn build(self) -> Result<KafkaSource<D>, KafkaSourceError> {
        let config_error = |setting: &str, message: String| KafkaSourceError::Config {
            setting: setting.to_owned(),
            message,
        };
        if self.topics.is_empty() {
            return Err(config_error(
                ".topics(..)",
                "no topic to read; name at least one".into(),
            ));
        }
        if let Some(topic) = self.topics.iter().find(|t| t.trim().is_empty()) {
            return Err(config_error(
                ".topics(..)",
                format!("topic name {topic:?} is empty"),
            ));
        }
        let mut topics = self.topics;
        topics.sort();
        topics.dedup();
        if self.name.trim().is_empty() {
            return Err(config_error(".name(..)", "the name is empty".into()));
        }
        if self
            .group_id
            .as_deref()
            .is_some_and(|g| g.trim().is_empty())
        {
            return Err(config_error(
                ".group_id(..)",
                "the group id is empty".into(),
            ));
        }
        if self.discovery.is_some_and(|d| d.is_zero()) {
            return Err(config_error(
                ".partition_discovery_interval(..)",
                "must be more than zero; use .without_partition_discovery() to turn it off".into(),
            ));
        }
        if let DeserializeErrorPolicy::DeadLetter { topic } = &self.on_error {
            if topic.trim().is_empty() {
                return Err(config_error(
                    ".on_deserialize_error(DeadLetter { topic })",
                    "the dead-letter topic name is empty".into(),
                ));
            }
            if topics.contains(topic) {
                return Err(config_error(
                    ".on_deserialize_error(DeadLetter { topic })",
                    format!(
                        "`{topic}` is also an input topic; the source would read its own rejects"
                    ),
                ));
            }
        }
        if let MissingTopics::Create { partitions } = self.missing
            && partitions < 1
        {
            return Err(config_error(
                ".create_missing_topics(..)",
                format!("a topic needs at least one partition, got {partitions}"),
            ));
        }
        if let Some((key, advice)) = self.settings.overridden(CONTROLLED_PROPERTIES) {
            return Err(config_error(
                &format!("ClientSettings property `{key}`"),
                format!("the Kafka source sets it; {advice}"),
            ));
        }
        Ok(KafkaSource {
            config: Arc::new(SourceConfig {
                name: self.name,
                settings: self.settings,
                topics,
                group_id: self.group_id,
                read_committed: self.read_committed,
                discovery: if self.bounded { None } else { self.discovery },
                on_error: self.on_error,
                missing: self.missing,
                reset_out_of_range: self.reset_out_of_range,
                headers: self.headers,
                bounded: self.bounded.then(bound::SharedEnds::default),
            }),
            deserializer: self.deserializer,
            metrics: Arc::new(KafkaSourceMetrics::default()),
            reader: None,
        })
    }
}

/// The error of a source driven before `open`.
fn not_open() -> KafkaSourceError {
    KafkaSourceError::Config {
        setting: "KafkaSource".into(),
        message: "the source was used before open(); only the exactly runtime should drive it"
            .into(),
    }
}

impl<D: ValueDeserializer> Source for KafkaSource<D> {
    type Item = KafkaRecord<D::Value>;
    type Position = KafkaPosition;

    fn name(&self) -> String {
        self.config.name.clone()
    }

    /// Checks that the cluster answers within the client timeout and that
    /// the topics (and the dead-letter topic) exist, creating them if the
    /// builder asked; then reports the isolation level and where offsets
    /// go.
    fn preflight(&self, settings: &JobSettings) -> Result<PreflightReport, BoxError> {
        let config = &self.config;
        let mut needed = config.topics.clone();
        if let DeserializeErrorPolicy::DeadLetter { topic } = &config.on_error {
            needed.push(topic.clone());
        }
        ensure_topics(&config.settings, &needed, config.missing)?;
        let mut report = PreflightReport::new();
        report = if config.read_committed {
            report.notice(format!(
                "reads {:?} with isolation.level=read_committed; downstream consumers of this job's \
                 output topics need isolation.level=read_committed too, or they also see records of \
                 open and aborted transactions",
                config.topics
            ))
        } else {
            report.notice(format!(
                "reads {:?} with isolation.level=read_uncommitted (opted out with .read_uncommitted()): \
                 records of open and aborted upstream transactions are read as data; downstream \
                 consumers of this job's output topics still need isolation.level=read_committed",
                config.topics
            ))
        };
        if let Some(group) = &config.group_id {
            report = report.notice(format!(
                "commits checkpointed offsets to consumer group `{group}` for monitoring only; \
                 restores use the checkpoint, never the group's offsets"
            ));
        }
        if settings.checkpoint_interval.is_none() {
            report = report.notice(
                "periodic checkpoints are off: after a failure the source starts again from the \
                 earliest offsets (or the last savepoint); set JobConfig::checkpoint_interval",
            );
        }
        Ok(report)
    }

    async fn open(
        &mut self,
        ctx: &SubtaskContext,
        restored: Vec<KafkaPosition>,
    ) -> Result<(), BoxError> {
        let reader = Reader::open(Arc::clone(&self.config), ctx, restored).await?;
        self.reader = Some(reader);
        Ok(())
    }

    async fn poll_batch(
        &mut self,
        out: &mut Vec<KafkaRecord<D::Value>>,
        max: usize,
    ) -> Result<SourcePoll, BoxError> {
        let KafkaSource {
            deserializer,
            metrics,
            reader,
            ..
        } = self;
        let reader = reader.as_mut().ok_or_else(not_open)?;
        Ok(reader.poll_batch(deserializer, metrics, out, max).await?)
    }

    fn position(&self) -> KafkaPosition {
        self.reader
            .as_ref()
            .map_or_else(KafkaPosition::default, Reader::position)
    }

    async fn checkpoint_complete(
        &mut self,
        checkpoint_id: u64,
        position: &KafkaPosition,
    ) -> Result<(), BoxError> {
        let reader = self.reader.as_mut().ok_or_else(not_open)?;
        reader.commit_offsets(checkpoint_id, position, &self.metrics);
        Ok(())
    }
}
