//! The audit's cluster work: reading the partitions, and the look-ups the
//! committed reader does not make.
//!
//! Owns [`audit`]: the partitions read with the [`CommittedReader`] and fed
//! to the [`Analyzer`] one at a time, then the timestamp of the first
//! record of each open transaction (a READ_UNCOMMITTED Fetch at its first
//! offset, since [`exactly_kafka_wire::OpenTransaction`] carries no
//! timestamp) and the transactional ids behind producer ids
//! (ListTransactions and DescribeTransactions, Kafka 3.0+), which brokers
//! without those APIs turn into a note instead of an error.
//!
//! Does not own the analysis ([`super::analysis`]) or the protocol client
//! (`exactly-kafka-wire`).

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::time::{SystemTime, UNIX_EPOCH};

use exactly_kafka_wire::batch::{decode_batch, split_batches};
use exactly_kafka_wire::committed_reader::raw_fetch_request;
use exactly_kafka_wire::connection::{Connection, ConnectionSettings, error_name, topic_name};
use exactly_kafka_wire::transactions::{ListError, list_open};
use exactly_kafka_wire::{CommittedReader, ReadError, ReaderConfig};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{DescribeTransactionsRequest, MetadataRequest, TransactionalId};
use kafka_protocol::protocol::StrBytes;

use super::analysis::Analyzer;
use super::options::AuditOptions;
use super::report::{AuditReport, ListedTransaction, Location, Lookups, TransactionLookup};

/// The bytes the open-transaction probe fetches: the batch holding the
/// first record comes back whole even when it is larger (KIP-74).
const PROBE_FETCH_BYTES: i32 = 1024 * 1024;
/// How long the probe's Fetch may wait on the broker for data.
const PROBE_FETCH_MAX_WAIT_MS: i32 = 200;

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
            security: config.security.clone(),
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
                    .map(|t| {
                        ListedTransaction::new(
                            t.transactional_id,
                            t.producer_id,
                            t.state,
                            address.clone(),
                        )
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

#[cfg(test)]
mod tests {
    use bytes::{BufMut, Bytes, BytesMut};
    use exactly_kafka_wire::fake_broker::{self, Behaviour, Served, TestBatch, encode};
    use kafka_protocol::messages::describe_transactions_response::{
        TopicData, TransactionState as DescribedState,
    };
    use kafka_protocol::messages::list_transactions_response::TransactionState as ListedState;
    use kafka_protocol::messages::{
        DescribeTransactionsResponse, ListTransactionsResponse, ProducerId, TopicName,
    };

    use super::*;
    use crate::audit::fixtures::{NOW, at};

    /// A fake broker for one topic with one partition: answers
    /// ApiVersions, Metadata, ListOffsets and Fetch (always `records`,
    /// high watermark `end`, last stable offset 0), and, when
    /// `transactions` is set, ListTransactions and DescribeTransactions.
    fn fake_broker(topic: &str, records: Bytes, end: i64, transactions: bool) -> String {
        fake_broker::start(Behaviour::Serve(Served {
            last_stable_offset: 0,
            transactions: transactions.then(|| Box::new((listed(), described(topic)))),
            ..Served::new(topic, records, end)
        }))
    }

    /// Open transactions of app-1 (producer id 9), app-3 and other-1, and
    /// one app-2 already complete.
    fn listed() -> ListTransactionsResponse {
        ListTransactionsResponse::default().with_transaction_states(
            [
                ("app-1", 9, "Ongoing"),
                ("app-2", 10, "CompleteCommit"),
                ("app-3", 12, "PrepareCommit"),
                ("other-1", 11, "Ongoing"),
            ]
            .map(|(id, producer_id, state)| {
                ListedState::default()
                    .with_transactional_id(TransactionalId(StrBytes::from_static_str(id)))
                    .with_producer_id(ProducerId(producer_id))
                    .with_transaction_state(StrBytes::from_static_str(state))
            })
            .to_vec(),
        )
    }

    /// app-1 described (open for 90 s, partition 0 of `topic` and one
    /// elsewhere); app-3 answered with error 15.
    fn described(topic: &str) -> DescribeTransactionsResponse {
        DescribeTransactionsResponse::default().with_transaction_states(vec![
            DescribedState::default()
                .with_transactional_id(TransactionalId(StrBytes::from_static_str("app-1")))
                .with_transaction_state(StrBytes::from_static_str("Ongoing"))
                .with_producer_id(ProducerId(9))
                .with_producer_epoch(4)
                .with_transaction_timeout_ms(60_000)
                .with_transaction_start_time_ms(NOW - 90_000)
                .with_topics(vec![
                    TopicData::default()
                        .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
                        .with_partitions(vec![0]),
                    TopicData::default()
                        .with_topic(TopicName(StrBytes::from_static_str("else")))
                        .with_partitions(vec![5]),
                ]),
            DescribedState::default()
                .with_error_code(15)
                .with_transactional_id(TransactionalId(StrBytes::from_static_str("app-3"))),
        ])
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
