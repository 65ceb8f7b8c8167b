//! Open transactions as the cluster lists them (ListTransactions, KIP-664,
//! Kafka 3.0+).
//!
//! Owns: asking every broker (each lists the transactions it coordinates)
//! for the open transactions whose transactional id starts with a prefix,
//! and asking partition leaders where a producer's open transaction began
//! (DescribeProducers). Users: the sink's start-up cleanup of lingering
//! transactions (ids of subtasks that a smaller parallelism no longer
//! runs), the sink's recovery (which commits only the transaction a
//! checkpoint recorded), and the audit's lingering-by-prefix report. Does
//! not own what is done with the answers.
//!
//! librdkafka has no ListTransactions, so this speaks the protocol through
//! [`crate::connection`].

use std::collections::BTreeMap;

use kafka_protocol::messages::describe_producers_request::TopicRequest;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    DescribeProducersRequest, ListTransactionsRequest, MetadataRequest,
};
use kafka_protocol::protocol::StrBytes;

use crate::connection::{Connection, ConnectionSettings, error_name, topic_name};
use crate::error::ReadError;

/// Transaction states (as ListTransactions names them) of a transaction
/// that has begun and not completed.
pub const OPEN_STATES: [&str; 4] = [
    "Ongoing",
    "PrepareCommit",
    "PrepareAbort",
    "PrepareEpochFence",
];

/// One transaction ListTransactions reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The transactional id.
    pub transactional_id: String,
    /// Its current producer id.
    pub producer_id: i64,
    /// Its state, one of [`OPEN_STATES`].
    pub state: String,
}

/// Why the transactions could not be listed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    /// The broker does not offer ListTransactions.
    #[error("{0}")]
    Unsupported(String),
    /// The request failed (connection, authorization, error code).
    #[error("{0}")]
    Failed(String),
}

/// The open transactions under `prefix` that the broker behind
/// `connection` coordinates.
pub async fn list_open(
    connection: &mut Connection,
    prefix: &str,
) -> Result<Vec<Listed>, ListError> {
    let address = connection.address().to_owned();
    let request = ListTransactionsRequest::default().with_state_filters(
        OPEN_STATES
            .iter()
            .map(|s| StrBytes::from_static_str(s))
            .collect(),
    );
    let listed = match connection.request(&request, 0, 1).await {
        Ok((listed, _)) => listed,
        Err(ReadError::UnsupportedApi {
            broker_min,
            broker_max,
            ..
        }) => {
            return Err(ListError::Unsupported(if broker_max < 0 {
                format!(
                    "the broker at {address} does not list ListTransactions in its API versions"
                )
            } else {
                format!(
                    "the broker at {address} offers ListTransactions versions {broker_min}..={broker_max}, \
                     this client speaks 0..=1"
                )
            }));
        }
        Err(error) => return Err(ListError::Failed(format!("ListTransactions: {error}"))),
    };
    if listed.error_code != 0 {
        return Err(ListError::Failed(format!(
            "ListTransactions at {address}: error {} ({})",
            listed.error_code,
            error_name(listed.error_code)
        )));
    }
    Ok(listed
        .transaction_states
        .iter()
        .filter(|t| t.transactional_id.0.as_str().starts_with(prefix))
        .filter(|t| OPEN_STATES.contains(&t.transaction_state.as_str()))
        .map(|t| Listed {
            transactional_id: t.transactional_id.0.as_str().to_owned(),
            producer_id: t.producer_id.0,
            state: t.transaction_state.as_str().to_owned(),
        })
        .collect())
}

/// The open transactions under `prefix` in the whole cluster reached at
/// `bootstrap`: the brokers from Metadata, then [`list_open`] on each.
pub async fn list_open_in_cluster(
    bootstrap: &str,
    settings: &ConnectionSettings,
    prefix: &str,
) -> Result<Vec<Listed>, ListError> {
    let failed = |e: ReadError| ListError::Failed(e.to_string());
    let mut connection = Connection::open_any(bootstrap, settings)
        .await
        .map_err(failed)?;
    let (metadata, _) = connection
        .request(
            &MetadataRequest::default().with_topics(Some(Vec::new())),
            1,
            12,
        )
        .await
        .map_err(failed)?;
    let mut found = Vec::new();
    for broker in &metadata.brokers {
        let address = format!("{}:{}", broker.host.as_str(), broker.port);
        let mut broker_connection = Connection::open(&address, settings).await.map_err(failed)?;
        found.extend(list_open(&mut broker_connection, prefix).await?);
    }
    found.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
    Ok(found)
}

/// Where `producer_id`'s open transaction began in each of `partitions` of
/// `topic`: DescribeProducers (KIP-664, Kafka 3.0+) at each partition's
/// leader. `None` for a partition where the producer has no open
/// transaction.
pub async fn open_transaction_starts(
    bootstrap: &str,
    settings: &ConnectionSettings,
    topic: &str,
    partitions: &[i32],
    producer_id: i64,
) -> Result<BTreeMap<i32, Option<i64>>, ReadError> {
    let mut connection = Connection::open_any(bootstrap, settings).await?;
    let request = MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name(topic))),
        ]))
        .with_allow_auto_topic_creation(false);
    let (metadata, _) = connection.request(&request, 1, 12).await?;
    let brokers: BTreeMap<i32, String> = metadata
        .brokers
        .iter()
        .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
        .collect();
    let leaders: BTreeMap<i32, i32> = metadata
        .topics
        .iter()
        .filter(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
        .flat_map(|t| &t.partitions)
        .map(|p| (p.partition_index, p.leader_id.0))
        .collect();
    let mut by_leader: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for &partition in partitions {
        let leader = leaders
            .get(&partition)
            .and_then(|id| brokers.get(id))
            .ok_or_else(|| ReadError::NoLeader {
                topic: topic.to_owned(),
                partition,
                leader_id: leaders.get(&partition).copied().unwrap_or(-1),
            })?;
        by_leader.entry(leader.clone()).or_default().push(partition);
    }
    let mut starts = BTreeMap::new();
    for (leader, asked) in by_leader {
        let mut at_leader = Connection::open(&leader, settings).await?;
        let request = DescribeProducersRequest::default().with_topics(vec![
            TopicRequest::default()
                .with_name(topic_name(topic))
                .with_partition_indexes(asked.clone()),
        ]);
        let (described, _) = at_leader.request(&request, 0, 0).await?;
        for partition in described.topics.iter().flat_map(|t| &t.partitions) {
            if partition.error_code != 0 {
                return Err(ReadError::Broker {
                    address: leader.clone(),
                    api: "DescribeProducers",
                    topic: topic.to_owned(),
                    partition: partition.partition_index,
                    code: partition.error_code,
                    name: error_name(partition.error_code),
                });
            }
            let start = partition
                .active_producers
                .iter()
                .find(|p| p.producer_id.0 == producer_id)
                .map(|p| p.current_txn_start_offset)
                .filter(|&offset| offset >= 0);
            starts.insert(partition.partition_index, start);
        }
    }
    Ok(starts)
}
