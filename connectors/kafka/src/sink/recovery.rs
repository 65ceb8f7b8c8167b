//! Committing a pre-committed transaction after a restart, from a process
//! that never opened it.
//!
//! librdkafka cannot resume another producer's transaction (Flink does it on
//! the JVM by reflection; Arroyo cannot, ArroyoSystems/arroyo#224). The
//! checkpoint stores the transactional id, producer id and epoch of every
//! pre-committed transaction, so recovery finds the transaction coordinator
//! (`FindCoordinator`) and sends `EndTxn(commit)` for that triple itself,
//! over the Kafka protocol.
//!
//! The `EndTxn` version stays at 4 or below. librdkafka begins its
//! transactions under the pre-KIP-890 rules (transaction version 1), and on
//! a Kafka 4.x coordinator a version-5 `EndTxn` applies the version-2 rules,
//! under which repeating a commit that was already applied answers
//! `INVALID_TXN_STATE` instead of success (FLINK-40689 is the same trap).
//! `docs/kafka-sink.md` records the answers measured on both kinds of
//! cluster.
//!
//! Every answer is classified by [`decide`]: success; a transient error,
//! retried; or an answer that says the stored epoch no longer holds (fenced,
//! invalid state, unknown producer). That last kind is ambiguous: the
//! transaction may have been committed before its id was reused, or aborted
//! by its timeout. Recovery then reads the partitions it wrote, from the
//! first offsets the checkpoint recorded, applies read_committed itself, and
//! decides with [`fate`]: committed is done; aborted means its records are
//! lost, which is reported as such, with the checkpoint and partitions. It
//! is never dropped.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use exactly_kafka_wire::connection::{self, Connection, ConnectionSettings, error_name};
use exactly_kafka_wire::transactions::{
    ListError, Listed, list_open_in_cluster, open_transaction_starts,
};
use exactly_kafka_wire::{CommittedReader, ReadError, TransactionOutcome};
use kafka_protocol::error::{ParseResponseErrorCode, ResponseError};
use kafka_protocol::messages::{EndTxnRequest, ProducerId, TransactionalId};
use kafka_protocol::protocol::StrBytes;

use super::KafkaTransaction;
use crate::client::ClientSettings;

/// Attempts after a transient answer.
const RETRIES: u32 = 5;

/// The highest `EndTxn` version recovery sends (see the module docs).
pub const RECOVERY_END_TXN_MAX_VERSION: i16 = 4;

/// How a pre-committed transaction was settled on recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Recovered {
    /// The coordinator's last answer to `EndTxn(commit)`, by Kafka's error
    /// name (`NONE` for success).
    pub answer: String,
    /// The `EndTxn` version of the last answer (-1 when the last answer
    /// came from FindCoordinator).
    pub end_txn_version: i16,
    /// Whether the answer was a refusal and the log showed the transaction
    /// committed already.
    pub committed_earlier: bool,
}

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
    /// The broker refused the commit, and the log does not show the
    /// transaction committed.
    #[error(
        "committing {transaction} on recovery: the broker answered {answer}; its records are not visible"
    )]
    Refused {
        /// The transaction.
        transaction: String,
        /// What the broker answered, and what the log showed.
        answer: String,
    },
    /// The broker aborted the transaction: its records are lost.
    #[error(
        "the records of {transaction} are LOST: {reason}. The broker aborted the transaction: either its \
         transaction.timeout.ms expired while the job was down (then raise the sink's transaction timeout, and the \
         broker's transaction.max.timeout.ms, above the longest outage you must survive), or another producer took its \
         transactional id over (then make sure one instance of the job runs per transactional-id prefix)"
    )]
    Lost {
        /// The transaction.
        transaction: String,
        /// What the broker and the log said.
        reason: String,
    },
    /// The broker refused the commit, or was not asked, and the log cannot
    /// tell whether the transaction was committed.
    #[error(
        "committing {transaction} on recovery: {answer}, and the log cannot tell whether it was committed: \
         {reason}. Restore a newer checkpoint, or check the output by hand; once checked, \
         KafkaSinkBuilder::recovery_trusts_checkpoint(true) lets recovery take such a transaction as committed, as its \
         completed checkpoint says"
    )]
    Undecidable {
        /// The transaction.
        transaction: String,
        /// What the broker answered, or why it was not asked.
        answer: String,
        /// Why the log cannot tell.
        reason: String,
    },
    /// The transaction handle lacks the producer id, epoch or partitions.
    #[error(
        "cannot commit {transaction} on recovery: the checkpoint does not record its producer id, epoch and \
         partitions"
    )]
    Incomplete {
        /// The transaction.
        transaction: String,
    },
}

/// What the coordinator answered to `EndTxn(commit)`: a Kafka error code
/// (0 for success).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Answer(pub(crate) i16);

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", error_name(self.0), self.0)
    }
}

/// What to do about an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The transaction is committed.
    Committed,
    /// A transient condition: ask again.
    Retry,
    /// The stored epoch no longer holds: the log must say what happened.
    CheckLog,
    /// An answer that no retry or log can turn into a commit.
    Refused,
}

/// Classifies an `EndTxn(commit)` answer (Kafka error codes).
pub(crate) fn decide(answer: Answer) -> Decision {
    use ResponseError::{
        ConcurrentTransactions, CoordinatorLoadInProgress, CoordinatorNotAvailable,
        InvalidProducerEpoch, InvalidProducerIdMapping, InvalidTxnState, NotCoordinator,
        ProducerFenced, RequestTimedOut, TransactionalIdNotFound, UnknownProducerId,
    };
    match answer.0.err() {
        None => Decision::Committed,
        Some(
            RequestTimedOut
            | CoordinatorLoadInProgress
            | CoordinatorNotAvailable
            | NotCoordinator
            | ConcurrentTransactions,
        ) => Decision::Retry,
        // The epoch was bumped, or the transaction ended (committed or
        // aborted) and was forgotten.
        Some(
            InvalidProducerEpoch
            | InvalidTxnState
            | InvalidProducerIdMapping
            | UnknownProducerId
            | ProducerFenced
            | TransactionalIdNotFound,
        ) => Decision::CheckLog,
        Some(_) => Decision::Refused,
    }
}

/// What the log says happened to a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Its producer committed it in every partition it wrote.
    Committed,
    /// Its producer aborted it.
    Aborted,
    /// It is still open somewhere.
    Open,
    /// The log cannot tell, and why.
    Unknown(String),
}

/// The fate of `transaction` from how it ended in each partition it wrote
/// (the producer's first control record after the recorded first offset).
pub(crate) fn fate(
    transaction: &KafkaTransaction,
    outcomes: &BTreeMap<i32, TransactionOutcome>,
) -> Fate {
    if transaction.partitions.is_empty() {
        return Fate::Unknown("the checkpoint recorded no partition".to_owned());
    }
    let producer = transaction.producer_id;
    let mut fate = Fate::Committed;
    for (partition, first) in &transaction.partitions {
        match outcomes.get(partition) {
            Some(TransactionOutcome::Committed) => {}
            Some(TransactionOutcome::Aborted) => fate = Fate::Aborted,
            Some(TransactionOutcome::Open) => {
                if fate == Fate::Committed {
                    fate = Fate::Open;
                }
            }
            Some(TransactionOutcome::Deleted { log_start_offset }) => {
                return Fate::Unknown(format!(
                    "offset {first} of partition {partition} is below its log start offset {log_start_offset} \
                     (retention or compaction removed it)"
                ));
            }
            Some(TransactionOutcome::Removed) => {
                return Fate::Unknown(format!(
                    "the record at offset {first} of partition {partition} is no longer in the log (compaction removed \
                     it, and may have removed the transaction's marker with it, so the producer's next marker may end \
                     another transaction)"
                ));
            }
            Some(TransactionOutcome::NotItsRecord { producer_id }) => {
                return Fate::Unknown(format!(
                    "the record at offset {first} of partition {partition} is producer {producer_id}'s, not \
                     producer {producer}'s"
                ));
            }
            None => {
                return Fate::Unknown(format!("partition {partition} was not read"));
            }
        }
    }
    fate
}

/// Sends `EndTxn(commit)` for the transaction to its coordinator; returns
/// the answer and the version used (none when FindCoordinator answered an
/// error and no `EndTxn` was sent).
async fn end_transaction(
    bootstrap: &str,
    settings: &ConnectionSettings,
    id: &str,
    transaction: &KafkaTransaction,
) -> Result<(Answer, Option<i16>), ReadError> {
    let mut connection = Connection::open_any(bootstrap, settings).await?;
    let mut coordinator = match connection.transaction_coordinator(id).await? {
        Ok(coordinator) => coordinator,
        Err(code) => return Ok((Answer(code), None)),
    };
    let end = EndTxnRequest::default()
        .with_transactional_id(TransactionalId(StrBytes::from_string(id.to_owned())))
        .with_producer_id(ProducerId(transaction.producer_id))
        .with_producer_epoch(transaction.epoch)
        .with_committed(true);
    let (response, version) = coordinator
        .request(&end, 0, RECOVERY_END_TXN_MAX_VERSION)
        .await?;
    Ok((Answer(response.error_code), Some(version)))
}

/// How the transaction ended in each partition it wrote, from the log,
/// read from its recorded first offsets only.
async fn read_outcomes(
    settings: &ClientSettings,
    transaction: &KafkaTransaction,
) -> Result<BTreeMap<i32, TransactionOutcome>, ReadError> {
    let mut reader = CommittedReader::connect(settings.reader_config()?).await?;
    let mut outcomes = BTreeMap::new();
    for (&partition, &first) in &transaction.partitions {
        let outcome = reader
            .transaction_outcome(
                &transaction.topic,
                partition,
                first,
                transaction.producer_id,
            )
            .await?;
        outcomes.insert(partition, outcome);
    }
    Ok(outcomes)
}

/// The open transactions under `prefix` in the cluster (ListTransactions
/// on every broker): what the sink's start-up cleanup aborts when its pool
/// no longer covers them. The outer error is a failure to run the request
/// at all (no async runtime); the inner one, a cluster that cannot list.
pub(super) fn open_transactions_under(
    settings: &ClientSettings,
    prefix: &str,
) -> std::io::Result<Result<Vec<Listed>, ListError>> {
    let connection = match settings.connection_settings("exactly-kafka-sink") {
        Ok(connection) => connection,
        Err(error) => return Ok(Err(ListError::Failed(error.to_string()))),
    };
    connection::block_on(list_open_in_cluster(
        &settings.bootstrap,
        &connection,
        prefix,
    ))
}

/// Runs `work` to completion from blocking code.
fn block_on<T>(
    work: impl std::future::Future<Output = Result<T, ReadError>>,
) -> Result<T, ReadError> {
    connection::block_on(work).unwrap_or_else(|source| {
        Err(ReadError::Io {
            address: "local".to_owned(),
            api: "runtime",
            source,
        })
    })
}

/// Commits `transaction`, a pre-committed transaction that a completed
/// checkpoint recorded, from a process that never opened it: what the
/// sink's `recover_and_commit` does. Blocks; call it from a plain thread or
/// the blocking pool.
///
/// # Errors
///
/// [`RecoveryError`]: the cluster could not be reached, the broker
/// refused, or the transaction was aborted (its records are lost).
pub fn recover_transaction(
    settings: &ClientSettings,
    transaction: &KafkaTransaction,
) -> Result<Recovered, RecoveryError> {
    let name = transaction.to_string();
    let (Some(id), true) = (
        &transaction.transactional_id,
        transaction.producer_id >= 0
            && transaction.epoch >= 0
            && !transaction.partitions.is_empty(),
    ) else {
        return Err(RecoveryError::Incomplete { transaction: name });
    };
    let connection_error = |source| RecoveryError::Connection {
        transaction: name.clone(),
        source,
    };
    let bootstrap = settings.bootstrap.as_str();
    let conn_settings = settings
        .connection_settings("exactly-kafka-recovery")
        .map_err(|e| connection_error(e.into()))?;
    let settle = |answer: String| -> Result<bool, RecoveryError> {
        let outcomes = block_on(read_outcomes(settings, transaction)).map_err(connection_error)?;
        match fate(transaction, &outcomes) {
            Fate::Committed => {
                tracing::info!(transaction = %name, %answer, "the transaction was already committed");
                Ok(true)
            }
            Fate::Aborted => Err(RecoveryError::Lost {
                reason: format!("{answer}, and the log shows the transaction aborted"),
                transaction: name.clone(),
            }),
            Fate::Open => Err(RecoveryError::Refused {
                answer: format!("{answer}, and the log shows the transaction still open"),
                transaction: name.clone(),
            }),
            Fate::Unknown(reason) => Err(RecoveryError::Undecidable {
                transaction: name.clone(),
                answer,
                reason,
            }),
        }
    };
    // Commit only the transaction the checkpoint recorded: the producer id
    // and epoch stay the same across a librdkafka producer's transactions,
    // so EndTxn would commit a later one on the same id too (FLINK-8132).
    let partitions: Vec<i32> = transaction.partitions.keys().copied().collect();
    let starts = block_on(open_transaction_starts(
        bootstrap,
        &conn_settings,
        &transaction.topic,
        &partitions,
        transaction.producer_id,
    ));
    match starts {
        Ok(starts) => {
            if let Some(not_ours) = not_the_recorded_transaction(transaction, &starts) {
                let committed_earlier = settle(format!("EndTxn not sent: {not_ours}"))?;
                return Ok(Recovered {
                    answer: "NOT_SENT".to_owned(),
                    end_txn_version: -1,
                    committed_earlier,
                });
            }
        }
        Err(ReadError::UnsupportedApi { .. }) => tracing::warn!(
            transaction = %name,
            "the cluster has no DescribeProducers (Kafka before 3.0): committing without checking that the \
             producer's open transaction is the recorded one"
        ),
        Err(error) => return Err(connection_error(error)),
    }
    let mut attempt = 0;
    loop {
        let (answer, version) =
            block_on(end_transaction(bootstrap, &conn_settings, id, transaction))
                .map_err(connection_error)?;
        let recovered = |committed_earlier| Recovered {
            answer: error_name(answer.0),
            end_txn_version: version.unwrap_or(-1),
            committed_earlier,
        };
        match decide(answer) {
            Decision::Committed => return Ok(recovered(false)),
            Decision::Retry if attempt < RETRIES => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(200 * u64::from(attempt)));
            }
            Decision::Retry | Decision::Refused => {
                return Err(RecoveryError::Refused {
                    transaction: name,
                    answer: answer.to_string(),
                });
            }
            Decision::CheckLog => {
                return settle(format!("the broker answered {answer}")).map(recovered);
            }
        }
    }
}

/// Why the producer's open transactions (first offset per partition, from
/// DescribeProducers) are not the one `transaction` recorded, if they are
/// not: a later transaction is open, or none is open on a partition the
/// transaction wrote (it ended already).
fn not_the_recorded_transaction(
    transaction: &KafkaTransaction,
    starts: &BTreeMap<i32, Option<i64>>,
) -> Option<String> {
    let producer = transaction.producer_id;
    for (partition, first) in &transaction.partitions {
        match starts.get(partition).copied().flatten() {
            Some(start) if start == *first => {}
            Some(start) => {
                return Some(format!(
                    "producer {producer} has a later transaction open at offset {start} of partition {partition}, \
                     not the recorded one at {first}"
                ));
            }
            None => {
                return Some(format!(
                    "producer {producer} has no transaction open at offset {first} of partition {partition}"
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn every_answer_the_broker_can_give_is_classified() {
        assert_eq!(decide(Answer(0)), Decision::Committed);
        for transient in [7, 14, 15, 16, 51] {
            assert_eq!(
                decide(Answer(transient)),
                Decision::Retry,
                "code {transient}"
            );
        }
        for ambiguous in [47, 48, 49, 59, 90, 105] {
            assert_eq!(
                decide(Answer(ambiguous)),
                Decision::CheckLog,
                "code {ambiguous}"
            );
        }
        for fatal in [35, 53, 87, -1] {
            assert_eq!(decide(Answer(fatal)), Decision::Refused, "code {fatal}");
        }
        assert_eq!(Answer(90).to_string(), format!("{} (90)", error_name(90)));
    }

    fn transaction(partitions: &[(i32, i64)]) -> KafkaTransaction {
        KafkaTransaction {
            transactional_id: Some("p-0-1".into()),
            slot: 1,
            producer_id: 7,
            epoch: 2,
            checkpoint: 4,
            records: 10,
            topic: "out".into(),
            partitions: partitions.iter().copied().collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn only_the_recorded_open_transaction_is_committed() {
        let txn = transaction(&[(0, 10), (1, 4)]);
        let starts = |p0, p1| BTreeMap::from([(0, p0), (1, p1)]);
        assert_eq!(
            not_the_recorded_transaction(&txn, &starts(Some(10), Some(4))),
            None
        );
        let later = not_the_recorded_transaction(&txn, &starts(Some(10), Some(9))).unwrap();
        assert!(
            later.contains("later transaction open at offset 9 of partition 1"),
            "{later}"
        );
        let ended = not_the_recorded_transaction(&txn, &starts(None, Some(4))).unwrap();
        assert!(
            ended.contains("no transaction open at offset 10 of partition 0"),
            "{ended}"
        );
        let unlisted = not_the_recorded_transaction(&txn, &BTreeMap::new()).unwrap();
        assert!(unlisted.contains("no transaction open"), "{unlisted}");
    }

    #[test]
    fn the_log_tells_committed_aborted_open_and_unknown_apart() {
        use TransactionOutcome::{Aborted, Committed, Deleted, NotItsRecord, Open, Removed};
        let txn = transaction(&[(0, 10), (1, 4)]);
        let outcomes = |p0, p1| BTreeMap::from([(0, p0), (1, p1)]);
        assert_eq!(fate(&txn, &outcomes(Committed, Committed)), Fate::Committed);
        assert_eq!(fate(&txn, &outcomes(Committed, Aborted)), Fate::Aborted);
        assert_eq!(fate(&txn, &outcomes(Open, Committed)), Fate::Open);
        let deleted = fate(
            &txn,
            &outcomes(
                Committed,
                Deleted {
                    log_start_offset: 5,
                },
            ),
        );
        let Fate::Unknown(deleted) = deleted else {
            panic!("a deleted offset is not aborted: {deleted:?}");
        };
        assert!(
            deleted.contains("offset 4 of partition 1 is below its log start offset 5"),
            "{deleted}"
        );
        let Fate::Unknown(removed) = fate(&txn, &outcomes(Removed, Committed)) else {
            panic!("a compacted first record is not committed");
        };
        assert!(
            removed.contains("offset 10 of partition 0 is no longer in the log"),
            "{removed}"
        );
        let other = fate(&txn, &outcomes(NotItsRecord { producer_id: 8 }, Committed));
        let Fate::Unknown(other) = other else {
            panic!("another producer's record is not the transaction's: {other:?}");
        };
        assert!(other.contains("producer 8's, not producer 7's"), "{other}");
        let none = fate(&transaction(&[]), &BTreeMap::new());
        let Fate::Unknown(none) = none else {
            panic!("no partition recorded is not committed: {none:?}");
        };
        assert!(none.contains("no partition"), "{none}");
    }
}
