//! Committing a pre-committed transaction after a restart, from a process
//! that never opened it.
//!
//! librdkafka cannot resume another producer's transaction (Flink does it on
//! the JVM by reflection; Arroyo cannot, ArroyoSystems/arroyo#224). The
//! checkpoint stores the transactional id, producer id and epoch of every
//! pre-committed transaction, so recovery finds the transaction coordinator
//! (`FindCoordinator`) and sends `EndTxn(commit)` for that triple itself,
//! over the Kafka protocol. A commit the broker refuses is returned as an
//! error naming the transaction; it is never dropped.

use std::time::Duration;

use kafka_protocol::messages::{
    EndTxnRequest, FindCoordinatorRequest, ProducerId, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;

use super::KafkaTransaction;
use crate::client::ClientSettings;
use crate::connection::{Connection, ConnectionSettings, error_name};
use crate::error::ReadError;

/// Why a pre-committed transaction could not be committed on recovery.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryError {
    /// The cluster could not be reached.
    #[error("committing {transaction} on recovery: {source}")]
    Connection {
        /// The transaction.
        transaction: String,
        /// Why.
        #[source]
        source: ReadError,
    },
    /// The broker refused the commit: the records may be lost.
    #[error(
        "committing {transaction} on recovery: the broker answered {error} ({code}); \
         if the transaction was aborted (for example by transaction.timeout.ms while the job was down), its records are LOST"
    )]
    Refused {
        /// The transaction.
        transaction: String,
        /// The error name.
        error: String,
        /// The error code.
        code: i16,
    },
    /// The transaction handle lacks the producer id or epoch.
    #[error(
        "cannot commit {transaction} on recovery: the checkpoint does not record its producer id and epoch"
    )]
    Incomplete {
        /// The transaction.
        transaction: String,
    },
}

fn connection_settings(settings: &ClientSettings) -> ConnectionSettings {
    ConnectionSettings {
        connect_timeout: settings.timeout.min(Duration::from_secs(10)),
        request_timeout: settings.timeout,
        client_id: "exactly-kafka-recovery".to_owned(),
    }
}

/// Sends `EndTxn(commit)` for `transaction` to its coordinator. Blocks.
pub(super) fn commit(
    settings: &ClientSettings,
    transaction: &KafkaTransaction,
) -> Result<(), RecoveryError> {
    let (Some(id), true) = (
        &transaction.transactional_id,
        transaction.producer_id >= 0 && transaction.epoch >= 0,
    ) else {
        return Err(RecoveryError::Incomplete {
            transaction: transaction.to_string(),
        });
    };
    let connection_error = |source| RecoveryError::Connection {
        transaction: transaction.to_string(),
        source,
    };
    let bootstrap = settings
        .bootstrap
        .split(',')
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let conn_settings = connection_settings(settings);
    let work = async {
        let mut connection = Connection::open(&bootstrap, &conn_settings)
            .await
            .map_err(connection_error)?;
        // Versions 1 to 3 take one key (version 4 moved to a list).
        let find = FindCoordinatorRequest::default()
            .with_key(StrBytes::from_string(id.clone()))
            .with_key_type(1);
        let (found, _) = connection
            .request(&find, 1, 3)
            .await
            .map_err(connection_error)?;
        let (code, host, port) = (found.error_code, found.host.to_string(), found.port);
        if code != 0 {
            return Err(RecoveryError::Refused {
                transaction: transaction.to_string(),
                error: format!("FindCoordinator: {}", error_name(code)),
                code,
            });
        }
        let mut coordinator = Connection::open(&format!("{host}:{port}"), &conn_settings)
            .await
            .map_err(connection_error)?;
        let end = EndTxnRequest::default()
            .with_transactional_id(TransactionalId(StrBytes::from_string(id.clone())))
            .with_producer_id(ProducerId(transaction.producer_id))
            .with_producer_epoch(transaction.epoch)
            .with_committed(true);
        let (answer, _) = coordinator
            .request(&end, 0, 4)
            .await
            .map_err(connection_error)?;
        match answer.error_code {
            0 => Ok(()),
            code => Err(RecoveryError::Refused {
                transaction: transaction.to_string(),
                error: format!("EndTxn: {}", error_name(code)),
                code,
            }),
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle.block_on(work),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| RecoveryError::Connection {
                transaction: transaction.to_string(),
                source: ReadError::Io {
                    address: bootstrap.clone(),
                    api: "runtime",
                    source: e,
                },
            })?
            .block_on(work),
    }
}
