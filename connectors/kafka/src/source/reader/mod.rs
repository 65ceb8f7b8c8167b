//! One opened subtask of the source: its consumer, its partitions and next
//! offsets, partition discovery, the health of the cluster connection, and
//! the dead-letter producer.
//!
//! Nothing here blocks the executor: polling uses a zero timeout,
//! dead-letter deliveries are awaited as futures, and metadata requests
//! (opening, discovery, health probes) and offset commits run on tokio's
//! blocking pool. Clients are closed on a helper thread, because closing a
//! consumer may wait for the broker.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::task::JoinHandle;

use super::assign::{TopicPartition, merge_restored, partition_owner, start_offsets};
use super::error::KafkaSourceError;
use super::metrics::KafkaSourceMetrics;
use super::record::{KafkaPosition, KafkaRecord, PartitionOffset};
use super::{SKIP_LOG_EVERY, SourceConfig, dead_letter_headers};
use crate::client::ClientError;
use crate::deserialize::{DeserializeErrorPolicy, ValueDeserializer};
use exactly::source::{SourcePoll, SubtaskContext};

type SourceConsumer = BaseConsumer;

/// While the cluster is in trouble, metadata probes start at most this
/// often.
const PROBE_GAP: Duration = Duration::from_millis(500);

/// Partition counts by topic, or why they could not be read.
type Counts = Result<HashMap<String, usize>, KafkaSourceError>;

/// Errors a consumer reports that no amount of waiting fixes.
const FATAL_CODES: &[RDKafkaErrorCode] = &[
    RDKafkaErrorCode::Authentication,
    RDKafkaErrorCode::SaslAuthenticationFailed,
    RDKafkaErrorCode::TopicAuthorizationFailed,
    RDKafkaErrorCode::GroupAuthorizationFailed,
    RDKafkaErrorCode::ClusterAuthorizationFailed,
    RDKafkaErrorCode::AutoOffsetReset,
];

/// Errors seen since the cluster last proved usable.
#[derive(Debug)]
struct Trouble {
    since: Instant,
    last: String,
}

/// The dead-letter producer and its topic.
struct DeadLetter {
    producer: FutureProducer,
    topic: String,
}

/// Where a dead-lettered record came from, while its delivery is awaited.
struct Pending {
    delivery: DeliveryFuture,
    topic: String,
    partition: i32,
    offset: i64,
}

/// An opened subtask.
pub(crate) struct Reader {
    /// `None` only while dropping.
    consumer: Option<Arc<SourceConsumer>>,
    config: Arc<SourceConfig>,
    index: usize,
    parallelism: usize,
    /// Next offset per partition, for the owned partitions that have one
    /// (restored, or read since).
    next: BTreeMap<TopicPartition, i64>,
    assigned: BTreeSet<TopicPartition>,
    /// Restored positions of partitions not assigned yet (missing from the
    /// metadata so far): kept until discovery finds the partition, so that
    /// it resumes there rather than at the earliest offset.
    restored: BTreeMap<TopicPartition, i64>,
    discovery: Option<JoinHandle<Counts>>,
    next_discovery: Option<Instant>,
    last_probe: Instant,
    trouble: Option<Trouble>,
    dead_letter: Option<DeadLetter>,
    /// The consumer-group commit in flight, if any.
    committing: Option<JoinHandle<()>>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        let consumer = self.consumer.take();
        let producer = self.dead_letter.take();
        let close = move || drop((consumer, producer));
        // Closing waits for in-flight commits; keep it off the executor.
        if let Err(e) = std::thread::Builder::new()
            .name("exactly-kafka-close".into())
            .spawn(close)
        {
            tracing::warn!(error = %e, "Kafka source: no thread to close the consumer on");
        }
    }
}

impl Reader {
    fn consumer(&self) -> &Arc<SourceConsumer> {
        self.consumer
            .as_ref()
            .expect("the consumer lives until the reader is dropped")
    }

    fn bootstrap(&self) -> String {
        self.config.settings.bootstrap.clone()
    }

    /// Creates the consumer, reads the partition counts, assigns the owned
    /// partitions at their restored offsets (earliest when there is none).
    pub(crate) async fn open(
        config: Arc<SourceConfig>,
        ctx: &SubtaskContext,
        restored: Vec<KafkaPosition>,
    ) -> Result<Reader, KafkaSourceError> {
        let restored = merge_restored(restored)?;
        let Clients {
            consumer,
            counts,
            dead_letter,
        } = {
            let config = Arc::clone(&config);
            let ctx = ctx.clone();
            run_blocking(
                "create its clients and read the topics' metadata",
                move || create_clients(&config, &ctx),
            )
            .await??
        };
        let mut reader = Reader {
            consumer: Some(Arc::new(consumer)),
            config,
            index: ctx.index,
            parallelism: ctx.parallelism,
            next: BTreeMap::new(),
            assigned: BTreeSet::new(),
            restored,
            discovery: None,
            next_discovery: None,
            last_probe: Instant::now(),
            trouble: None,
            dead_letter,
            committing: None,
        };
        let unknown: Vec<&TopicPartition> = reader
            .restored
            .keys()
            .filter(|(topic, partition)| {
                reader.config.topics.contains(topic)
                    && counts
                        .get(topic)
                        .is_none_or(|&n| usize::try_from(*partition).is_ok_and(|p| p >= n))
            })
            .collect();
        if !unknown.is_empty() {
            tracing::warn!(
                partitions = ?unknown,
                "Kafka source: the checkpoint has offsets for partitions the cluster does not list \
                 (yet); they are kept, and such a partition resumes there once discovery finds it"
            );
        }
        reader.check_restored_offsets(&counts).await?;
        reader.assign_new(&counts, true)?;
        reader.next_discovery = reader.config.discovery.map(|every| Instant::now() + every);
        Ok(reader)
    }

    /// Checks the restored offsets of the owned partitions of `counts`
    /// against each log's range (ListOffsets, on the blocking pool): an
    /// offset outside it fails, or with the opt-in starts the partition
    /// from its earliest offset.
    async fn check_restored_offsets(
        &mut self,
        counts: &HashMap<String, usize>,
    ) -> Result<(), KafkaSourceError> {
        let owned: Vec<(TopicPartition, i64)> = self
            .restored
            .iter()
            .filter(|((topic, partition), _)| {
                counts
                    .get(topic)
                    .is_some_and(|&n| usize::try_from(*partition).is_ok_and(|p| p < n))
                    && partition_owner(topic, *partition, self.parallelism) == self.index
            })
            .map(|(key, &offset)| (key.clone(), offset))
            .collect();
        if owned.is_empty() {
            return Ok(());
        }
        let consumer = Arc::clone(self.consumer());
        let timeout = self.config.settings.timeout;
        let bootstrap = self.bootstrap();
        let ranges = run_blocking("read the partitions' offset ranges", move || {
            owned
                .into_iter()
                .map(|((topic, partition), offset)| {
                    consumer
                        .fetch_watermarks(&topic, partition, timeout)
                        .map(|range| ((topic, partition), offset, range))
                        .map_err(|source| KafkaSourceError::Consumer {
                            action: "read a partition's offset range",
                            bootstrap: bootstrap.clone(),
                            source,
                        })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await??;
        for ((topic, partition), offset, (log_start, log_end)) in ranges {
            let cause = if offset < log_start {
                "the records before its start were deleted (retention, or DeleteRecords)"
            } else if offset > log_end {
                "the log ends before it (was the topic truncated or re-created?)"
            } else {
                continue;
            };
            if !self.config.reset_out_of_range {
                return Err(KafkaSourceError::OffsetOutOfRange {
                    topic,
                    partition,
                    offset,
                    log_start,
                    log_end,
                    cause,
                });
            }
            tracing::warn!(
                %topic,
                partition,
                offset,
                log_start,
                log_end,
                cause,
                "Kafka source: the restored offset is outside the log; resuming from the earliest offset as configured"
            );
            self.restored.remove(&(topic, partition));
        }
        Ok(())
    }

    /// Assigns the owned partitions of `counts` not assigned yet, at their
    /// restored positions, or the earliest offset when there is none.
    fn assign_new(
        &mut self,
        counts: &HashMap<String, usize>,
        first: bool,
    ) -> Result<(), KafkaSourceError> {
        let starts = start_offsets(
            counts,
            self.index,
            self.parallelism,
            &self.restored,
            &self.assigned,
        );
        if starts.is_empty() && !first {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in &starts {
            list.add_partition_offset(topic, *partition, *offset)
                .map_err(|source| self.consumer_error("set a start offset", source))?;
        }
        let assigned = if first {
            self.consumer().assign(&list)
        } else {
            self.consumer().incremental_assign(&list)
        };
        assigned.map_err(|source| self.consumer_error("assign partitions", source))?;
        for (key, offset) in starts {
            self.restored.remove(&key);
            if let Offset::Offset(next) = offset {
                self.next.insert(key.clone(), next);
            }
            if !first {
                tracing::info!(
                    topic = %key.0,
                    partition = key.1,
                    subtask = self.index,
                    start = ?offset,
                    "Kafka source: discovered a partition; reading it from its restored offset, or the earliest"
                );
            }
            self.assigned.insert(key);
        }
        Ok(())
    }

    fn consumer_error(&self, action: &'static str, source: KafkaError) -> KafkaSourceError {
        KafkaSourceError::Consumer {
            action,
            bootstrap: self.bootstrap(),
            source,
        }
    }

    /// Starts a metadata request when discovery is due, or a health probe
    /// when the cluster is in trouble; handles the answer of a finished one.
    async fn discover(&mut self) -> Result<(), KafkaSourceError> {
        if self.discovery.as_ref().is_some_and(JoinHandle::is_finished) {
            let handle = self.discovery.take().expect("checked above");
            let counts = handle.await.unwrap_or_else(|e| {
                Err(KafkaSourceError::BlockingCall {
                    action: "read the topics' metadata",
                    reason: e.to_string(),
                })
            });
            self.on_metadata(counts)?;
        }
        let now = Instant::now();
        let due = self.next_discovery.is_some_and(|at| now >= at)
            || (self.trouble.is_some() && now.duration_since(self.last_probe) >= PROBE_GAP);
        if due && self.discovery.is_none() {
            let consumer = Arc::clone(self.consumer());
            let config = Arc::clone(&self.config);
            self.discovery = Some(tokio::task::spawn_blocking(move || {
                partition_counts(&consumer, &config)
            }));
            self.last_probe = now;
            self.next_discovery = self.config.discovery.map(|every| now + every);
        }
        Ok(())
    }

    /// Handles the answer of a metadata request: assigns the owned
    /// partitions that are new (from the earliest offset) and ends any
    /// trouble, or notes the failure as trouble.
    fn on_metadata(&mut self, counts: Counts) -> Result<(), KafkaSourceError> {
        match counts {
            Ok(counts) => {
                self.trouble = None;
                self.assign_new(&counts, false)
            }
            Err(error) => {
                self.note_trouble(error.to_string());
                Ok(())
            }
        }
    }

    fn note_trouble(&mut self, error: String) {
        match &mut self.trouble {
            Some(trouble) => trouble.last = error,
            None => {
                tracing::warn!(
                    %error,
                    "Kafka source: cluster trouble; probing it, failing if it lasts longer than the client timeout"
                );
                self.trouble = Some(Trouble {
                    since: Instant::now(),
                    last: error,
                });
            }
        }
    }

    /// Fails when the trouble has lasted longer than the client timeout.
    fn check_trouble(&self) -> Result<(), KafkaSourceError> {
        match &self.trouble {
            Some(trouble) if trouble.since.elapsed() > self.config.settings.timeout => {
                Err(KafkaSourceError::Unavailable {
                    bootstrap: self.bootstrap(),
                    waited: trouble.since.elapsed(),
                    last_error: trouble.last.clone(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Reads what the consumer has ready, up to `max` records, without
    /// waiting for more.
    pub(crate) async fn poll_batch<D: ValueDeserializer>(
        &mut self,
        deserializer: &D,
        metrics: &KafkaSourceMetrics,
        out: &mut Vec<KafkaRecord<D::Value>>,
        max: usize,
    ) -> Result<SourcePoll, KafkaSourceError> {
        self.discover().await?;
        let consumer = Arc::clone(self.consumer());
        let mut pending = Vec::new();
        // The batch's next offset per partition, merged into `self.next`
        // once: a lookup by borrowed topic name allocates nothing per
        // record.
        let mut advanced: Vec<(TopicPartition, i64)> = Vec::new();
        let mut taken = 0;
        while taken < max {
            let Some(polled) = consumer.poll(Duration::ZERO) else {
                break;
            };
            let message = match polled {
                Ok(message) => message,
                Err(KafkaError::PartitionEOF(_)) => continue,
                Err(source @ KafkaError::MessageConsumptionFatal(_)) => {
                    return Err(KafkaSourceError::Fatal {
                        bootstrap: self.bootstrap(),
                        source,
                    });
                }
                Err(KafkaError::MessageConsumption(code)) if FATAL_CODES.contains(&code) => {
                    return Err(KafkaSourceError::Fatal {
                        bootstrap: self.bootstrap(),
                        source: KafkaError::MessageConsumption(code),
                    });
                }
                Err(error) => {
                    self.note_trouble(error.to_string());
                    continue;
                }
            };
            self.trouble = None;
            taken += 1;
            match deserializer.deserialize(message.payload()) {
                Ok(value) => out.push(KafkaRecord::from_message(&message, value)),
                Err(reason) => {
                    if let Some(delivery) = self.reject(&message, &reason.to_string(), metrics)? {
                        pending.push(delivery);
                    }
                }
            }
            note_next(&mut advanced, &message);
        }
        self.next.extend(advanced);
        self.await_dead_letters(pending, metrics).await?;
        self.check_trouble()?;
        Ok(if taken > 0 {
            SourcePoll::Data
        } else {
            SourcePoll::Idle
        })
    }

    /// Applies the policy to a record whose value did not deserialize;
    /// returns the delivery to await when it was dead-lettered.
    fn reject(
        &self,
        message: &BorrowedMessage<'_>,
        reason: &str,
        metrics: &KafkaSourceMetrics,
    ) -> Result<Option<Pending>, KafkaSourceError> {
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        match &self.config.on_error {
            DeserializeErrorPolicy::Fail => Err(KafkaSourceError::Deserialize {
                topic: topic.to_owned(),
                partition,
                offset,
                reason: reason.to_owned(),
            }),
            DeserializeErrorPolicy::Skip => {
                let skipped = metrics.add_skipped();
                if skipped == 1 || skipped.is_multiple_of(SKIP_LOG_EVERY) {
                    tracing::warn!(
                        topic,
                        partition,
                        offset,
                        reason,
                        skipped,
                        "Kafka source: skipped a record whose value does not deserialize"
                    );
                }
                Ok(None)
            }
            DeserializeErrorPolicy::DeadLetter { .. } => {
                let dead_letter = self
                    .dead_letter
                    .as_ref()
                    .expect("the dead-letter producer exists with the DeadLetter policy");
                let mut headers = OwnedHeaders::new();
                if let Some(own) = message.headers() {
                    for header in own.iter() {
                        headers = headers.insert(header);
                    }
                }
                let (partition_text, offset_text) = (partition.to_string(), offset.to_string());
                for (key, value) in [
                    (dead_letter_headers::TOPIC, topic),
                    (dead_letter_headers::PARTITION, &partition_text),
                    (dead_letter_headers::OFFSET, &offset_text),
                    (dead_letter_headers::ERROR, reason),
                ] {
                    headers = headers.insert(Header {
                        key,
                        value: Some(value),
                    });
                }
                let mut record =
                    FutureRecord::<[u8], [u8]>::to(&dead_letter.topic).headers(headers);
                if let Some(key) = message.key() {
                    record = record.key(key);
                }
                if let Some(value) = message.payload() {
                    record = record.payload(value);
                }
                let delivery = dead_letter.producer.send_result(record).map_err(|(e, _)| {
                    self.dead_letter_error(topic, partition, offset, e.to_string())
                })?;
                Ok(Some(Pending {
                    delivery,
                    topic: topic.to_owned(),
                    partition,
                    offset,
                }))
            }
        }
    }

    fn dead_letter_error(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        reason: String,
    ) -> KafkaSourceError {
        KafkaSourceError::DeadLetter {
            topic: topic.to_owned(),
            partition,
            offset,
            dead_letter_topic: self
                .dead_letter
                .as_ref()
                .map_or_else(String::new, |d| d.topic.clone()),
            bootstrap: self.bootstrap(),
            reason,
        }
    }

    /// Waits until the broker has every dead-lettered record of this batch,
    /// so the position never moves past a record that is not safe
    /// somewhere. Bounded by the producer's `message.timeout.ms`.
    async fn await_dead_letters(
        &self,
        pending: Vec<Pending>,
        metrics: &KafkaSourceMetrics,
    ) -> Result<(), KafkaSourceError> {
        for Pending {
            delivery,
            topic,
            partition,
            offset,
        } in pending
        {
            let failure = match delivery.await {
                Ok(Ok(_)) => None,
                Ok(Err((error, _))) => Some(error.to_string()),
                Err(_) => Some("the producer was closed before the broker answered".to_owned()),
            };
            if let Some(reason) = failure {
                return Err(self.dead_letter_error(&topic, partition, offset, reason));
            }
            metrics.add_dead_lettered(1);
        }
        Ok(())
    }

    /// The next offsets of this subtask's partitions.
    pub(crate) fn position(&self) -> KafkaPosition {
        // Restored positions of owned partitions that the metadata has not
        // listed yet are carried into every checkpoint until they are read.
        let pending = self.restored.iter().filter(|((topic, partition), _)| {
            self.config.topics.contains(topic)
                && partition_owner(topic, *partition, self.parallelism) == self.index
        });
        KafkaPosition {
            partitions: self
                .next
                .iter()
                .chain(pending)
                .map(|((topic, partition), &next_offset)| PartitionOffset {
                    topic: topic.clone(),
                    partition: *partition,
                    next_offset,
                })
                .collect(),
        }
    }

    /// Commits `position` to the consumer group, when the source has one,
    /// on the blocking pool; the outcome is counted there. A commit still in
    /// flight from an earlier checkpoint makes this one be skipped: the next
    /// checkpoint commits newer offsets anyway.
    pub(crate) fn commit_offsets(
        &mut self,
        checkpoint_id: u64,
        position: &KafkaPosition,
        metrics: &Arc<KafkaSourceMetrics>,
    ) {
        if self.config.group_id.is_none() || position.partitions.is_empty() {
            return;
        }
        if self
            .committing
            .as_ref()
            .is_some_and(|commit| !commit.is_finished())
        {
            tracing::debug!(
                checkpoint_id,
                "Kafka source: previous offset commit still running; skipping this one"
            );
            return;
        }
        let mut list = TopicPartitionList::new();
        for p in &position.partitions {
            if let Err(error) =
                list.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.next_offset))
            {
                metrics.add_commit_failure();
                tracing::warn!(checkpoint_id, %error, "Kafka source: cannot build the offset commit");
                return;
            }
        }
        let consumer = Arc::clone(self.consumer());
        let metrics = Arc::clone(metrics);
        self.committing = Some(tokio::task::spawn_blocking(move || {
            match consumer.commit(&list, CommitMode::Sync) {
                Ok(()) => metrics.add_commit(),
                Err(error) => {
                    metrics.add_commit_failure();
                    tracing::warn!(
                        checkpoint_id,
                        %error,
                        "Kafka source: committing offsets to the consumer group failed \
                         (monitoring only; the checkpoint holds the real positions)"
                    );
                }
            }
        }));
    }
}

/// Runs `f`, which does `action`, on tokio's blocking pool.
async fn run_blocking<R: Send + 'static>(
    action: &'static str,
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, KafkaSourceError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| KafkaSourceError::BlockingCall {
            action,
            reason: e.to_string(),
        })
}

/// What [`create_clients`] made.
struct Clients {
    consumer: SourceConsumer,
    counts: HashMap<String, usize>,
    dead_letter: Option<DeadLetter>,
}

/// Creates the consumer (and the dead-letter producer) and reads the
/// partition counts. Blocks for up to the client timeout per topic.
fn create_clients(
    config: &SourceConfig,
    ctx: &SubtaskContext,
) -> Result<Clients, KafkaSourceError> {
    let bootstrap = || config.settings.bootstrap.clone();
    let client_id = format!("exactly-{}-{}-{}", ctx.job, config.name, ctx.index);
    let group_id = config
        .group_id
        .clone()
        .unwrap_or_else(|| format!("exactly-{}-{}-no-commits", ctx.job, config.name));
    let isolation = if config.read_committed {
        "read_committed"
    } else {
        "read_uncommitted"
    };
    let consumer: SourceConsumer = config
        .settings
        .config(&[
            ("client.id", client_id.clone()),
            ("group.id", group_id),
            ("enable.auto.commit", "false".into()),
            ("enable.auto.offset.store", "false".into()),
            ("isolation.level", isolation.into()),
            (
                "auto.offset.reset",
                if config.reset_out_of_range {
                    "earliest"
                } else {
                    "error"
                }
                .into(),
            ),
            ("enable.partition.eof", "false".into()),
        ])
        .create()
        .map_err(|source| KafkaSourceError::Consumer {
            action: "create the consumer",
            bootstrap: bootstrap(),
            source,
        })?;
    let counts = partition_counts(&consumer, config)?;
    let dead_letter = match &config.on_error {
        DeserializeErrorPolicy::DeadLetter { topic } => {
            let timeout = config.settings.timeout.as_millis().max(1).to_string();
            let producer: FutureProducer = config
                .settings
                .config(&[
                    ("client.id", format!("{client_id}-dead-letter")),
                    ("enable.idempotence", "true".into()),
                    ("acks", "all".into()),
                    ("message.timeout.ms", timeout),
                ])
                .create()
                .map_err(|source| KafkaSourceError::Consumer {
                    action: "create the dead-letter producer",
                    bootstrap: bootstrap(),
                    source,
                })?;
            Some(DeadLetter {
                producer,
                topic: topic.clone(),
            })
        }
        _ => None,
    };
    Ok(Clients {
        consumer,
        counts,
        dead_letter,
    })
}

/// The partition count of each topic the source reads. Blocks for up to
/// the client timeout per topic.
fn partition_counts(consumer: &SourceConsumer, config: &SourceConfig) -> Counts {
    let settings = &config.settings;
    let mut counts = HashMap::new();
    for topic in &config.topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), settings.timeout)
            .map_err(|source| ClientError::Unreachable {
                bootstrap: settings.bootstrap.clone(),
                timeout: settings.timeout,
                source,
            })?;
        let found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
        let Some(found) = found else {
            return Err(KafkaSourceError::MissingTopic {
                topic: topic.clone(),
                bootstrap: settings.bootstrap.clone(),
            });
        };
        counts.insert(topic.clone(), found.partitions().len());
    }
    Ok(counts)
}

/// Records that the next offset of `message`'s partition is after it.
fn note_next(advanced: &mut Vec<(TopicPartition, i64)>, message: &BorrowedMessage<'_>) {
    let (topic, partition, next) = (message.topic(), message.partition(), message.offset() + 1);
    match advanced
        .iter_mut()
        .find(|((t, p), _)| *p == partition && t == topic)
    {
        Some((_, offset)) => *offset = next,
        None => advanced.push(((topic.to_owned(), partition), next)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{ClientSettings, MissingTopics};

    /// A reader of topic `t` for subtask `index` of `parallelism`, with a
    /// real consumer that has no cluster to talk to: assignments are local
    /// bookkeeping, so the discovery step can be checked without a broker.
    fn reader(index: usize, parallelism: usize, timeout: Duration) -> Reader {
        let mut settings = ClientSettings::new("127.0.0.1:1");
        settings.timeout = timeout;
        let consumer: SourceConsumer = settings
            .config(&[("group.id", "unit-test".into())])
            .create()
            .unwrap();
        Reader {
            consumer: Some(Arc::new(consumer)),
            config: Arc::new(SourceConfig {
                name: "kafka".into(),
                settings,
                topics: vec!["t".into()],
                group_id: None,
                read_committed: true,
                discovery: Some(Duration::from_secs(1)),
                on_error: DeserializeErrorPolicy::Fail,
                missing: MissingTopics::Fail,
                reset_out_of_range: false,
            }),
            index,
            parallelism,
            next: BTreeMap::new(),
            assigned: BTreeSet::new(),
            restored: BTreeMap::new(),
            discovery: None,
            next_discovery: None,
            last_probe: Instant::now(),
            trouble: None,
            dead_letter: None,
            committing: None,
        }
    }

    fn partitions(n: usize) -> HashMap<String, usize> {
        HashMap::from([("t".to_owned(), n)])
    }

    fn assignment(reader: &Reader) -> Vec<i32> {
        let mut assigned: Vec<i32> = reader
            .consumer()
            .assignment()
            .unwrap()
            .elements()
            .iter()
            .map(|e| e.partition())
            .collect();
        assigned.sort_unstable();
        assigned
    }

    #[test]
    fn discovered_partitions_join_the_assignment_without_a_position() {
        let mut reader = reader(0, 1, Duration::from_secs(30));
        reader.restored = BTreeMap::from([(("t".to_owned(), 0), 5)]);
        reader.assign_new(&partitions(1), true).unwrap();
        assert_eq!(assignment(&reader), [0]);

        reader.on_metadata(Ok(partitions(3))).unwrap();
        assert_eq!(assignment(&reader), [0, 1, 2]);
        reader.on_metadata(Ok(partitions(3))).unwrap();
        assert_eq!(assignment(&reader), [0, 1, 2]);
        // Only the restored partition has a position; the new ones start
        // at the earliest offset, which a restore would choose again.
        assert_eq!(
            reader.position().partitions,
            [PartitionOffset {
                topic: "t".into(),
                partition: 0,
                next_offset: 5
            }]
        );
    }

    #[test]
    fn a_restored_partition_missing_at_open_resumes_at_its_restored_offset() {
        let mut reader = reader(0, 1, Duration::from_secs(30));
        reader.restored = BTreeMap::from([(("t".to_owned(), 0), 5), (("t".to_owned(), 1), 7)]);
        reader.assign_new(&partitions(1), true).unwrap();
        assert_eq!(assignment(&reader), [0]);
        let offset = |partition, next_offset| PartitionOffset {
            topic: "t".into(),
            partition,
            next_offset,
        };
        assert_eq!(
            reader.position().partitions,
            [offset(0, 5), offset(1, 7)],
            "a checkpoint taken before the partition appears keeps its position"
        );
        reader.on_metadata(Ok(partitions(2))).unwrap();
        assert_eq!(assignment(&reader), [0, 1]);
        assert_eq!(reader.position().partitions, [offset(0, 5), offset(1, 7)]);
        assert!(reader.restored.is_empty());
    }

    #[test]
    fn a_subtask_takes_only_the_new_partitions_it_owns() {
        let mut reader = reader(1, 2, Duration::from_secs(30));
        reader.assign_new(&partitions(1), true).unwrap();
        let before = assignment(&reader);
        reader.on_metadata(Ok(partitions(6))).unwrap();
        let expected: Vec<i32> = (0..6)
            .filter(|&p| super::super::partition_owner("t", p, 2) == 1)
            .collect();
        assert_eq!(assignment(&reader), expected);
        assert!(before.iter().all(|p| expected.contains(p)));
    }

    #[test]
    fn trouble_ends_with_a_good_answer_and_fails_the_source_after_the_timeout() {
        let missing = || {
            Err(KafkaSourceError::MissingTopic {
                topic: "t".into(),
                bootstrap: "127.0.0.1:1".into(),
            })
        };
        let mut patient = reader(0, 1, Duration::from_secs(30));
        patient.on_metadata(missing()).unwrap();
        assert!(patient.trouble.is_some());
        patient.check_trouble().unwrap();
        patient.on_metadata(Ok(partitions(1))).unwrap();
        assert!(patient.trouble.is_none());

        let mut impatient = reader(0, 1, Duration::from_millis(1));
        impatient.on_metadata(missing()).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let error = impatient.check_trouble().unwrap_err().to_string();
        assert!(
            error.contains("127.0.0.1:1") && error.contains("`t` does not exist"),
            "{error}"
        );
    }
}
