//! The committed reader: reads whole partitions raw over the Kafka protocol
//! and tells what a read_committed consumer may see.
//!
//! Owns the read itself: Metadata to find a topic's partitions and their
//! leaders, ListOffsets for the log start offset, then Fetch with isolation
//! level READ_UNCOMMITTED from the log start up to the high watermark of the
//! first Fetch response, so that every batch arrives, control batches
//! included. The batches go through [`crate::visibility`], which applies the
//! KIP-98 rule without trusting the broker's transaction bookkeeping. This
//! makes the reader usable as an oracle against brokers that get
//! read_committed wrong.
//!
//! Does not own consuming in the usual sense: it keeps no group, commits no
//! offsets, and reads each partition from its start every time. It writes
//! nothing and never creates topics.

use std::collections::HashMap;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    BrokerId, FetchRequest, ListOffsetsRequest, MetadataRequest, MetadataResponse,
};

use crate::batch::{BatchError, DecodedBatch, decode_batch, split_batches};
use crate::connection::{Connection, ConnectionSettings, error_name, topic_name};
use crate::error::ReadError;
use crate::security::Security;
use crate::visibility::{OutcomeScan, PartitionLog, PartitionScan, TransactionOutcome};

/// Kafka's `READ_UNCOMMITTED` isolation level.
const READ_UNCOMMITTED: i8 = 0;
/// ListOffsets timestamp asking for the log start offset.
const EARLIEST: i64 = -2;
/// Kafka's `UNKNOWN_TOPIC_OR_PARTITION` error code.
const UNKNOWN_TOPIC_OR_PARTITION: i16 = ResponseError::UnknownTopicOrPartition.code();
/// How long a Fetch may wait on the broker for data.
const FETCH_MAX_WAIT_MS: i32 = 200;
/// Fetches in a row that may return nothing below the high watermark
/// before the read gives up.
const MAX_EMPTY_FETCHES: u32 = 5;

/// How to reach the cluster and how long to wait for it.
#[derive(Debug, Clone)]
pub struct ReaderConfig {
    /// Brokers of the cluster, `host:port`, several separated by commas
    /// (the first that answers is used).
    pub bootstrap: String,
    /// The bound on opening a TCP connection.
    pub connect_timeout: Duration,
    /// The bound on each request's round trip.
    pub request_timeout: Duration,
    /// The client id sent with every request.
    pub client_id: String,
    /// The most bytes one Fetch asks for per partition.
    pub fetch_max_bytes: i32,
    /// TLS and SASL (default: neither).
    pub security: Security,
}

impl ReaderConfig {
    /// A configuration for the broker at `bootstrap` (`host:port`), with
    /// a 5 s connect timeout, a 10 s request timeout and 8 MiB fetches.
    pub fn new(bootstrap: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            client_id: "exactly-committed-reader".to_owned(),
            fetch_max_bytes: 8 * 1024 * 1024,
            security: Security::default(),
        }
    }

    fn connection_settings(&self) -> ConnectionSettings {
        ConnectionSettings {
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            client_id: self.client_id.clone(),
            security: self.security.clone(),
        }
    }
}

/// Where a partition lives.
#[derive(Debug, Clone, Copy)]
struct PartitionLeader {
    partition: i32,
    leader_id: i32,
}

/// Reads partitions and applies Kafka's read_committed rule to them.
///
/// ```no_run
/// # async fn audit() -> Result<(), exactly_kafka_wire::ReadError> {
/// use exactly_kafka_wire::{CommittedReader, ReaderConfig};
///
/// let mut reader = CommittedReader::connect(ReaderConfig::new("127.0.0.1:9092")).await?;
/// for log in reader.read_topic("payments").await? {
///     println!(
///         "partition {}: {} visible records, {} aborted, last stable offset {}",
///         log.partition,
///         log.records.len(),
///         log.aborted_records(),
///         log.last_stable_offset,
///     );
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct CommittedReader {
    config: ReaderConfig,
    bootstrap: Connection,
    brokers: HashMap<i32, String>,
    leaders: HashMap<i32, Connection>,
}

impl CommittedReader {
    /// Connects to the bootstrap broker and negotiates API versions.
    pub async fn connect(config: ReaderConfig) -> Result<Self, ReadError> {
        let bootstrap =
            Connection::open_any(&config.bootstrap, &config.connection_settings()).await?;
        Ok(Self {
            config,
            bootstrap,
            brokers: HashMap::new(),
            leaders: HashMap::new(),
        })
    }

    /// The partitions of `topic`, in ascending order.
    pub async fn partitions(&mut self, topic: &str) -> Result<Vec<i32>, ReadError> {
        Ok(self
            .topic_metadata(topic)
            .await?
            .into_iter()
            .map(|p| p.partition)
            .collect())
    }

    /// Reads every partition of `topic`, in partition order.
    pub async fn read_topic(&mut self, topic: &str) -> Result<Vec<PartitionLog>, ReadError> {
        let mut logs = Vec::new();
        for leader in self.topic_metadata(topic).await? {
            logs.push(self.read_from_leader(topic, leader).await?);
        }
        Ok(logs)
    }

    /// Reads one partition of `topic` from its log start offset up to its
    /// current high watermark.
    pub async fn read_partition(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<PartitionLog, ReadError> {
        let leader = self.partition_leader(topic, partition).await?;
        self.read_from_leader(topic, leader).await
    }

    async fn bootstrap(&mut self) -> Result<&mut Connection, ReadError> {
        if self.bootstrap.is_broken() {
            self.bootstrap =
                Connection::open_any(&self.config.bootstrap, &self.config.connection_settings())
                    .await?;
        }
        Ok(&mut self.bootstrap)
    }

    /// Asks for the topic's metadata, remembers the brokers, and returns
    /// the partitions with their leaders.
    async fn topic_metadata(&mut self, topic: &str) -> Result<Vec<PartitionLeader>, ReadError> {
        let request = MetadataRequest::default()
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(topic_name(topic))),
            ]))
            .with_allow_auto_topic_creation(false);
        let connection = self.bootstrap().await?;
        let (response, _) = connection.request(&request, 1, 12).await?;
        let address = connection.address().to_owned();
        self.remember_brokers(&response);
        let found = response
            .topics
            .into_iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
            .ok_or_else(|| ReadError::UnknownTopic {
                topic: topic.to_owned(),
                address: address.clone(),
            })?;
        match found.error_code {
            0 => {}
            UNKNOWN_TOPIC_OR_PARTITION => {
                return Err(ReadError::UnknownTopic {
                    topic: topic.to_owned(),
                    address,
                });
            }
            code => {
                return Err(ReadError::Broker {
                    address,
                    api: "Metadata",
                    topic: topic.to_owned(),
                    partition: -1,
                    code,
                    name: error_name(code),
                });
            }
        }
        if found.partitions.is_empty() {
            return Err(ReadError::UnknownTopic {
                topic: topic.to_owned(),
                address,
            });
        }
        let mut partitions = Vec::with_capacity(found.partitions.len());
        for p in found.partitions {
            if p.error_code != 0 {
                return Err(ReadError::Broker {
                    address,
                    api: "Metadata",
                    topic: topic.to_owned(),
                    partition: p.partition_index,
                    code: p.error_code,
                    name: error_name(p.error_code),
                });
            }
            partitions.push(PartitionLeader {
                partition: p.partition_index,
                leader_id: p.leader_id.0,
            });
        }
        partitions.sort_by_key(|p| p.partition);
        Ok(partitions)
    }

    fn remember_brokers(&mut self, response: &MetadataResponse) {
        for broker in &response.brokers {
            let address = format!("{}:{}", broker.host.as_str(), broker.port);
            if self.brokers.get(&broker.node_id.0) != Some(&address) {
                self.leaders.remove(&broker.node_id.0);
                self.brokers.insert(broker.node_id.0, address);
            }
        }
    }

    /// The connection to a partition's leader, opened on first use and
    /// reopened after it broke.
    async fn leader(
        &mut self,
        topic: &str,
        leader: PartitionLeader,
    ) -> Result<&mut Connection, ReadError> {
        let no_leader = || ReadError::NoLeader {
            topic: topic.to_owned(),
            partition: leader.partition,
            leader_id: leader.leader_id,
        };
        let address = self.brokers.get(&leader.leader_id).ok_or_else(no_leader)?;
        let usable = self
            .leaders
            .get(&leader.leader_id)
            .is_some_and(|c| !c.is_broken());
        if !usable {
            let connection = Connection::open(address, &self.config.connection_settings()).await?;
            self.leaders.insert(leader.leader_id, connection);
        }
        self.leaders
            .get_mut(&leader.leader_id)
            .ok_or_else(no_leader)
    }

    async fn read_from_leader(
        &mut self,
        topic: &str,
        leader: PartitionLeader,
    ) -> Result<PartitionLog, ReadError> {
        let log_start_offset = self.log_start_offset(topic, leader).await?;
        let mut scan: Option<PartitionScan> = None;
        let end = self
            .scan(
                topic,
                leader,
                log_start_offset,
                &mut |batch, high_watermark| {
                    scan.get_or_insert_with(|| PartitionScan::new(log_start_offset, high_watermark))
                        .apply(batch)
                        .map(|()| Flow::Continue)
                },
            )
            .await?;
        Ok(scan
            .unwrap_or_else(|| PartitionScan::new(log_start_offset, end.high_watermark))
            .finish(
                topic,
                leader.partition,
                log_start_offset,
                end.last_stable_offset,
            ))
    }

    /// How the transaction of `producer_id` whose first record in
    /// `topic`/`partition` is at `first_offset` ended, read from the log
    /// itself: from that offset only, batch by batch (never the whole
    /// partition in memory), up to that producer's first control record
    /// after it.
    ///
    /// # Errors
    ///
    /// [`ReadError`] when the partition cannot be read.
    pub async fn transaction_outcome(
        &mut self,
        topic: &str,
        partition: i32,
        first_offset: i64,
        producer_id: i64,
    ) -> Result<TransactionOutcome, ReadError> {
        let leader = self.partition_leader(topic, partition).await?;
        let log_start_offset = self.log_start_offset(topic, leader).await?;
        if first_offset < log_start_offset {
            return Ok(TransactionOutcome::Deleted { log_start_offset });
        }
        let mut outcome = OutcomeScan::new(first_offset, producer_id);
        self.scan(topic, leader, first_offset, &mut |batch, _| {
            Ok(if outcome.visit(&batch)? {
                Flow::Continue
            } else {
                Flow::Stop
            })
        })
        .await?;
        Ok(outcome.finish())
    }

    /// The leader of `topic`/`partition`.
    async fn partition_leader(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<PartitionLeader, ReadError> {
        let partitions = self.topic_metadata(topic).await?;
        partitions
            .iter()
            .find(|p| p.partition == partition)
            .copied()
            .ok_or_else(|| ReadError::UnknownPartition {
                topic: topic.to_owned(),
                partition,
                partition_count: partitions.len(),
            })
    }

    /// Fetches the partition from `from` up to the high watermark of the
    /// first Fetch, handing every batch at or after `from`, in log order,
    /// to `visit` with that high watermark, until it says stop.
    async fn scan(
        &mut self,
        topic: &str,
        leader: PartitionLeader,
        from: i64,
        visit: &mut dyn FnMut(DecodedBatch, i64) -> Result<Flow, BatchError>,
    ) -> Result<ScanEnd, ReadError> {
        let partition = leader.partition;
        let mut fetched = self.fetch(topic, leader, from).await?;
        // The first Fetch fixes the end of the read: its high watermark
        // (the same as ListOffsets(LATEST), one round trip fewer).
        let high_watermark = fetched.high_watermark;
        let mut next_offset = from;
        let mut empty_fetches = 0;
        loop {
            let corrupt = |error: BatchError| ReadError::CorruptBatch {
                topic: topic.to_owned(),
                partition,
                offset: error.offset,
                reason: error.reason,
            };
            let framed = split_batches(std::mem::take(&mut fetched.records)).map_err(corrupt)?;
            let mut progressed = false;
            for raw in &framed.batches {
                let batch = decode_batch(raw).map_err(corrupt)?;
                if batch.last_offset < next_offset {
                    continue;
                }
                next_offset = batch.last_offset + 1;
                progressed = true;
                if visit(batch, high_watermark).map_err(corrupt)? == Flow::Stop {
                    return Ok(ScanEnd {
                        high_watermark,
                        last_stable_offset: fetched.last_stable_offset,
                    });
                }
            }
            if next_offset >= high_watermark {
                break;
            }
            if progressed {
                empty_fetches = 0;
            } else if let Some(tail) = framed.truncated_tail {
                return Err(ReadError::TruncatedBatch {
                    topic: topic.to_owned(),
                    partition,
                    offset: tail.base_offset.unwrap_or(next_offset),
                    needed: tail.needed,
                    available: tail.available,
                });
            } else {
                empty_fetches += 1;
                if empty_fetches >= MAX_EMPTY_FETCHES {
                    return Err(ReadError::Stalled {
                        address: fetched.address,
                        topic: topic.to_owned(),
                        partition,
                        offset: next_offset,
                        high_watermark,
                        fetches: empty_fetches,
                    });
                }
            }
            fetched = self.fetch(topic, leader, next_offset).await?;
        }
        Ok(ScanEnd {
            high_watermark,
            last_stable_offset: fetched.last_stable_offset,
        })
    }

    /// The partition's log start offset, from ListOffsets.
    async fn log_start_offset(
        &mut self,
        topic: &str,
        leader: PartitionLeader,
    ) -> Result<i64, ReadError> {
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_isolation_level(READ_UNCOMMITTED)
            .with_topics(vec![
                ListOffsetsTopic::default()
                    .with_name(topic_name(topic))
                    .with_partitions(vec![
                        ListOffsetsPartition::default()
                            .with_partition_index(leader.partition)
                            .with_current_leader_epoch(-1)
                            .with_timestamp(EARLIEST),
                    ]),
            ]);
        let connection = self.leader(topic, leader).await?;
        let address = connection.address().to_owned();
        let (response, _) = connection.request(&request, 2, 10).await?;
        let answer = response
            .topics
            .iter()
            .filter(|t| t.name.0.as_str() == topic)
            .flat_map(|t| &t.partitions)
            .find(|p| p.partition_index == leader.partition)
            .ok_or_else(|| ReadError::Protocol {
                address: address.clone(),
                api: "ListOffsets",
                reason: format!("the response has no entry for {topic}/{}", leader.partition),
            })?;
        if answer.error_code != 0 {
            return Err(ReadError::Broker {
                address,
                api: "ListOffsets",
                topic: topic.to_owned(),
                partition: leader.partition,
                code: answer.error_code,
                name: error_name(answer.error_code),
            });
        }
        Ok(answer.offset)
    }

    async fn fetch(
        &mut self,
        topic: &str,
        leader: PartitionLeader,
        offset: i64,
    ) -> Result<Fetched, ReadError> {
        let max_bytes = self.config.fetch_max_bytes;
        let request = raw_fetch_request(
            topic,
            leader.partition,
            offset,
            FETCH_MAX_WAIT_MS,
            max_bytes,
        );
        let connection = self.leader(topic, leader).await?;
        let address = connection.address().to_owned();
        // v13 and later name topics by id only.
        let (response, _) = connection.request(&request, 4, 12).await?;
        let broker_error = |code: i16| ReadError::Broker {
            address: address.clone(),
            api: "Fetch",
            topic: topic.to_owned(),
            partition: leader.partition,
            code,
            name: error_name(code),
        };
        if response.error_code != 0 {
            return Err(broker_error(response.error_code));
        }
        let data = response
            .responses
            .into_iter()
            .filter(|t| t.topic.0.as_str() == topic)
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index == leader.partition)
            .ok_or_else(|| ReadError::Protocol {
                address: address.clone(),
                api: "Fetch",
                reason: format!("the response has no entry for {topic}/{}", leader.partition),
            })?;
        if data.error_code != 0 {
            return Err(broker_error(data.error_code));
        }
        Ok(Fetched {
            address,
            high_watermark: data.high_watermark,
            last_stable_offset: data.last_stable_offset,
            records: data.records.unwrap_or_default(),
        })
    }
}

/// Whether a scan goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// Where a scan ended: the high watermark it read up to, and the last
/// stable offset of its last Fetch.
struct ScanEnd {
    high_watermark: i64,
    last_stable_offset: i64,
}

/// What one Fetch returned for the partition.
struct Fetched {
    address: String,
    high_watermark: i64,
    last_stable_offset: i64,
    records: bytes::Bytes,
}
/// A READ_UNCOMMITTED Fetch of one partition from `offset`: it returns
/// every batch, control batches included, so that the caller can apply the
/// read_committed rule itself. Versions 4 to 12 (13 names topics by id).
pub fn raw_fetch_request(
    topic: &str,
    partition: i32,
    offset: i64,
    max_wait_ms: i32,
    max_bytes: i32,
) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(max_bytes)
        .with_isolation_level(READ_UNCOMMITTED)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(topic_name(topic))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(partition)
                        .with_current_leader_epoch(-1)
                        .with_fetch_offset(offset)
                        .with_last_fetched_epoch(-1)
                        .with_log_start_offset(-1)
                        .with_partition_max_bytes(max_bytes),
                ]),
        ])
}
