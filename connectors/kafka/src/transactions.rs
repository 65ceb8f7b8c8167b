//! Open transactions as the cluster lists them (ListTransactions, KIP-664,
//! Kafka 3.0+).
//!
//! Owns: asking every broker (each lists the transactions it coordinates)
//! for the open transactions whose transactional id starts with a prefix.
//! Two users: the sink's start-up cleanup of lingering transactions (ids of
//! subtasks that a smaller parallelism no longer runs), and the audit's
//! lingering-by-prefix report. Does not own what is done with them.
//!
//! librdkafka has no ListTransactions, so this speaks the protocol through
//! [`crate::connection`].

use kafka_protocol::messages::{ListTransactionsRequest, MetadataRequest};
use kafka_protocol::protocol::StrBytes;

use crate::connection::{Connection, ConnectionSettings, error_name};
use crate::error::ReadError;

/// Transaction states (as ListTransactions names them) of a transaction
/// that has begun and not completed.
pub(crate) const OPEN_STATES: [&str; 4] = [
    "Ongoing",
    "PrepareCommit",
    "PrepareAbort",
    "PrepareEpochFence",
];

/// One transaction ListTransactions reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listed {
    /// The transactional id.
    pub(crate) transactional_id: String,
    /// Its current producer id.
    pub(crate) producer_id: i64,
    /// Its state, one of [`OPEN_STATES`].
    pub(crate) state: String,
}

/// Why the transactions could not be listed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ListError {
    /// The broker does not offer ListTransactions.
    #[error("{0}")]
    Unsupported(String),
    /// The request failed (connection, authorization, error code).
    #[error("{0}")]
    Failed(String),
}

/// The open transactions under `prefix` that the broker behind
/// `connection` coordinates.
pub(crate) async fn list_open(
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
pub(crate) async fn list_open_in_cluster(
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
