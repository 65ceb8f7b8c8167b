//! One opened subtask of the source: its consumer, its partitions and next
//! offsets, partition discovery, the health of the cluster connection, and
//! the deserialization policy. The dead-letter producer is
//! [`super::dead_letter`]'s, the end of a bounded source [`super::bound`]'s.
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
use rdkafka::message::BorrowedMessage;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::task::JoinHandle;

use super::assign::{TopicPartition, merge_restored, partition_owner, start_offsets};
use super::bound::Bound;
use super::dead_letter::{DeadLetter, Pending};
use super::error::KafkaSourceError;
use super::metrics::KafkaSourceMetrics;
use super::record::{KafkaPosition, KafkaRecord, PartitionOffset};
use super::{FETCH_QUEUE_BACKOFF, SKIP_LOG_EVERY, SourceConfig};
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
    /// The partitions still below their end, when the source is bounded.
    bound: Option<Bound>,
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
            bound: None,
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
        reader.take_bound(counts).await?;
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

    /// With a bounded source, takes the end offsets of the assigned
    /// partitions (all of `counts` when this subtask opens first; those
    /// another subtask or an earlier attempt took are kept), on the
    /// blocking pool.
    async fn take_bound(&mut self, counts: HashMap<String, usize>) -> Result<(), KafkaSourceError> {
        if self.config.bounded.is_none() {
            return Ok(());
        }
        let consumer = Arc::clone(self.consumer());
        let config = Arc::clone(&self.config);
        let assigned = self.assigned.clone();
        let bound = run_blocking("read the partitions' end offsets", move || {
            let shared = config.bounded.as_ref().expect("checked above");
            Bound::take(
                shared,
                &consumer,
                &counts,
                &assigned,
                config.settings.timeout,
            )
        })
        .await?
        .map_err(|source| self.consumer_error("read the partitions' end offsets", source))?;
        self.bound = Some(bound);
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
            if let Some(bound) = &self.bound
                && !bound.admits(message.topic(), message.partition(), message.offset())
            {
                continue;
            }
            match deserializer.deserialize(message.payload()) {
                Ok(value) => out.push(KafkaRecord::from_message(
                    &message,
                    value,
                    self.config.headers,
                )),
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
        if let Some(bound) = &mut self.bound {
            // A batch that is not full may have reached the end; the
            // consumer's position says so even when the last offsets are
            // control records.
            match bound.settle(&self.next, &consumer, taken < max) {
                Ok(true) => return Ok(SourcePoll::Finished),
                Ok(false) => {}
                Err(source) => return Err(self.consumer_error("read its positions", source)),
            }
        }
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
                Ok(Some(dead_letter.send(message, reason)?))
            }
        }
    }

    /// Waits until the broker has every dead-lettered record of this batch.
    async fn await_dead_letters(
        &self,
        pending: Vec<Pending>,
        metrics: &KafkaSourceMetrics,
    ) -> Result<(), KafkaSourceError> {
        match &self.dead_letter {
            Some(dead_letter) => dead_letter.await_deliveries(pending, metrics).await,
            None => Ok(()),
        }
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
    let consumer: SourceConsumer =
        consumer_config(config, &client_id, ctx)
            .create()
            .map_err(|source| KafkaSourceError::Consumer {
                action: "create the consumer",
                bootstrap: bootstrap(),
                source,
            })?;
    let counts = partition_counts(&consumer, config)?;
    let dead_letter = match &config.on_error {
        DeserializeErrorPolicy::DeadLetter { topic } => {
            Some(DeadLetter::create(&config.settings, &client_id, topic)?)
        }
        _ => None,
    };
    Ok(Clients {
        consumer,
        counts,
        dead_letter,
    })
}

/// The consumer's configuration: the source's own properties, then the
/// settings' extra ones, which win.
fn consumer_config(config: &SourceConfig, client_id: &str, ctx: &SubtaskContext) -> ClientConfig {
    let group_id = config
        .group_id
        .clone()
        .unwrap_or_else(|| format!("exactly-{}-{}-no-commits", ctx.job, config.name));
    let isolation = if config.read_committed {
        "read_committed"
    } else {
        "read_uncommitted"
    };
    config.settings.config(&[
        ("client.id", client_id.to_owned()),
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
        (
            "fetch.queue.backoff.ms",
            FETCH_QUEUE_BACKOFF.as_millis().to_string(),
        ),
    ])
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
mod tests;
