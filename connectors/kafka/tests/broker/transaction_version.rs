//! The sink's recovery of pre-committed transactions on both kinds of
//! Kafka 4.x cluster: one with the default features (`transaction.version`
//! 2, KIP-890 part 2), read from `EXACTLY_KAFKA_BOOTSTRAP`, and one
//! formatted with `transaction.version=0`, read from
//! `EXACTLY_KAFKA_TV0_BOOTSTRAP` (default `127.0.0.1:9094`). Every test
//! first checks, with ApiVersions, that its broker finalizes the
//! transaction version it claims.
//!
//! Each test asserts the coordinator's answer, the `EndTxn` version used
//! and the outcome, and reads the output through both read_committed
//! oracles. `docs/kafka-sink.md` ("Transaction versions: what recovery is
//! answered") tabulates what these tests measure.

use std::future::Future;
use std::time::Duration;

use exactly::sink::TwoPhaseCommitSink;
use exactly_kafka::client::ClientSettings;
use exactly_kafka::sink::{
    DeliveryGuarantee, KafkaSink, KafkaTransaction, OutputRecord, RECOVERY_END_TXN_MAX_VERSION,
    Recovered, RecoveryError, recover_transaction,
};
use exactly_kafka_tools::oracle;
use exactly_kafka_wire::ReadError;
use exactly_kafka_wire::connection::{Connection, ConnectionSettings, error_name};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, EndTxnRequest, ProducerId, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;

use crate::common::{
    broker, create_topic, pre_committed, producer, read_topic, sink_context, unique_topic,
};

/// Where the test suite's `transaction.version=0` broker listens.
const TV0_BOOTSTRAP_ENV: &str = "EXACTLY_KAFKA_TV0_BOOTSTRAP";
const TV0_DEFAULT_BOOTSTRAP: &str = "127.0.0.1:9094";

/// The feature KIP-890 part 2 is gated by.
const TRANSACTION_VERSION: &str = "transaction.version";

/// Records each scenario's transaction writes.
const RECORDS: usize = 6;

/// The two kinds of cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cluster {
    /// Formatted with Kafka 4.x's default features: `transaction.version=2`.
    Tv2,
    /// Formatted with `--feature transaction.version=0`.
    Tv0,
}

impl Cluster {
    fn label(self) -> &'static str {
        match self {
            Cluster::Tv2 => "default (transaction.version=2)",
            Cluster::Tv0 => "transaction.version=0",
        }
    }

    /// The broker's address, after checking that it answers and finalizes
    /// the transaction version this cluster stands for. Panics (the test
    /// fails, it is never skipped) with the command that starts the right
    /// broker.
    fn broker(self) -> String {
        let (address, start) = match self {
            Cluster::Tv2 => (broker(), "scripts/kafka-up".to_owned()),
            Cluster::Tv0 => {
                let address = std::env::var(TV0_BOOTSTRAP_ENV)
                    .unwrap_or_else(|_| TV0_DEFAULT_BOOTSTRAP.to_owned());
                let start = format!(
                    "EXACTLY_KAFKA_BOOTSTRAP={address} EXACTLY_KAFKA_TRANSACTION_VERSION=0 scripts/kafka-up"
                );
                (address, start)
            }
        };
        let level = finalized_transaction_version(&address).unwrap_or_else(|e| {
            panic!(
                "the {} broker at {address} does not answer ApiVersions ({e}): start it with `{start}`",
                self.label()
            )
        });
        let found = level.map_or_else(
            || format!("does not finalize {TRANSACTION_VERSION} (level 0)"),
            |level| format!("finalizes {TRANSACTION_VERSION}={level}"),
        );
        match (self, level) {
            (Cluster::Tv2, Some(2)) | (Cluster::Tv0, None | Some(0)) => address,
            (Cluster::Tv2, _) => panic!(
                "the broker at {address} (EXACTLY_KAFKA_BOOTSTRAP) {found}, not 2: these tests need a Kafka 4.x \
                 broker formatted with the default features; start one on a free port with \
                 `EXACTLY_KAFKA_BOOTSTRAP=127.0.0.1:PORT scripts/kafka-up` and set EXACTLY_KAFKA_BOOTSTRAP to it"
            ),
            (Cluster::Tv0, Some(_)) => panic!(
                "the broker at {address} ({TV0_BOOTSTRAP_ENV}) {found}, not 0: these tests need a broker formatted \
                 with --feature {TRANSACTION_VERSION}=0; start one on a free port with \
                 `EXACTLY_KAFKA_BOOTSTRAP=127.0.0.1:PORT EXACTLY_KAFKA_TRANSACTION_VERSION=0 scripts/kafka-up` \
                 and set {TV0_BOOTSTRAP_ENV} to it"
            ),
        }
    }
}

fn connection_settings() -> ConnectionSettings {
    ConnectionSettings {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(30),
        client_id: "exactly-kafka-tests".to_owned(),
        security: Default::default(),
    }
}

fn block_on<T>(work: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(work)
}

/// What the broker says about itself in ApiVersions v3 or later.
struct BrokerFeatures {
    /// The finalized `transaction.version` (`None` when not listed).
    transaction_version: Option<i16>,
    /// The `EndTxn` versions it offers.
    end_txn: Option<(i16, i16)>,
}

fn broker_features(address: &str) -> Result<BrokerFeatures, ReadError> {
    block_on(async {
        let mut connection = Connection::open(address, &connection_settings()).await?;
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("exactly-kafka-tests"))
            .with_client_software_version(StrBytes::from_static_str("0.1"));
        let (response, version) = connection.request(&request, 3, 4).await?;
        assert_eq!(
            response.error_code,
            0,
            "ApiVersions v{version} at {address} answered {}",
            error_name(response.error_code)
        );
        Ok(BrokerFeatures {
            transaction_version: response
                .finalized_features
                .iter()
                .find(|f| f.name.as_str() == TRANSACTION_VERSION)
                .map(|f| f.max_version_level),
            end_txn: response
                .api_keys
                .iter()
                .find(|k| k.api_key == ApiKey::EndTxn as i16)
                .map(|k| (k.min_version, k.max_version)),
        })
    })
}

fn finalized_transaction_version(address: &str) -> Result<Option<i16>, ReadError> {
    broker_features(address).map(|f| f.transaction_version)
}

/// What the coordinator answered to a raw `EndTxn(commit)`.
#[derive(Debug)]
struct RawAnswer {
    /// Kafka's name for the error code (`NONE` for success).
    answer: String,
    /// The version sent.
    version: i16,
    /// The producer epoch in the response (-1 when none).
    epoch: i16,
}

/// Sends `EndTxn(commit)` for the transaction's (id, producer id, epoch) to
/// its coordinator, found with `FindCoordinator` as recovery finds it, at a
/// version in `min..=max`.
fn end_txn(
    broker: &str,
    transaction: &KafkaTransaction,
    min: i16,
    max: i16,
) -> Result<RawAnswer, ReadError> {
    let id = transaction
        .transactional_id
        .clone()
        .expect("an exactly-once transaction");
    block_on(async {
        let settings = connection_settings();
        let mut connection = Connection::open(broker, &settings).await?;
        let mut coordinator = connection
            .transaction_coordinator(&id)
            .await?
            .unwrap_or_else(|code| {
                panic!(
                    "FindCoordinator for {id} at {broker} answered {}",
                    error_name(code)
                )
            });
        let end = EndTxnRequest::default()
            .with_transactional_id(TransactionalId(StrBytes::from_string(id)))
            .with_producer_id(ProducerId(transaction.producer_id))
            .with_producer_epoch(transaction.epoch)
            .with_committed(true);
        let (response, version) = coordinator.request(&end, min, max).await?;
        Ok(RawAnswer {
            answer: error_name(response.error_code),
            version,
            epoch: response.producer_epoch,
        })
    })
}

fn exactly_once(broker: &str, topic: &str, prefix: &str) -> KafkaSink<String> {
    KafkaSink::builder(ClientSettings::new(broker), topic, |v: String| {
        OutputRecord::keyed(v.clone(), v)
    })
    .delivery_guarantee(DeliveryGuarantee::ExactlyOnce)
    .transactional_id_prefix(prefix)
    .producer_pool_size(1)
    .build()
    .unwrap()
}

fn records(tag: &str) -> Vec<String> {
    (0..RECORDS).map(|i| format!("{tag}-{i}")).collect()
}

/// A two-partition topic of its own, and a transactional-id prefix of its
/// own.
fn topic_and_prefix(broker: &str, test: &str) -> (String, String) {
    let topic = unique_topic(test);
    create_topic(broker, &topic, 2);
    (topic, unique_topic("prefix"))
}

/// The handle a checkpoint would hold of a transaction that a sink
/// pre-committed before its process died: the sink is dropped without
/// committing. Asserts that the transaction is open and its records
/// invisible.
fn pre_committed_by_a_dead_sink(
    broker: &str,
    topic: &str,
    prefix: &str,
    tag: &str,
) -> KafkaTransaction {
    let txn = pre_committed(&mut exactly_once(broker, topic, prefix), records(tag));
    assert!(txn.producer_id >= 0 && txn.epoch >= 0, "{txn:?}");
    let logs = read_topic(broker, topic).unwrap();
    assert!(
        logs.iter().all(|p| p.records.is_empty()),
        "pre-committed records are visible: {logs:?}"
    );
    assert!(
        logs.iter().any(|p| !p.open_transactions.is_empty()),
        "the dead sink's transaction is not open: {logs:?}"
    );
    txn
}

/// Asserts that, once no transaction is left open on `topic`, both
/// read_committed oracles see exactly `expected` (in any order), each
/// value once.
fn assert_visible_once(broker: &str, topic: &str, expected: &[String]) {
    oracle::settled(&ClientSettings::new(broker), topic).unwrap();
    let mut seen: Vec<String> = read_topic(broker, topic)
        .unwrap()
        .into_iter()
        .flat_map(|p| p.records)
        .map(|r| String::from_utf8(r.value.unwrap_or_default().to_vec()).unwrap())
        .collect();
    seen.sort();
    let mut expected = expected.to_vec();
    expected.sort();
    assert_eq!(seen, expected, "the visible records of {topic}");
}

fn recover(broker: &str, txn: &KafkaTransaction) -> Result<Recovered, RecoveryError> {
    recover_transaction(&ClientSettings::new(broker), txn)
}

/// A success answered by the coordinator itself (not settled by the log),
/// at the highest version recovery sends.
fn assert_answered_none(recovered: &Recovered) {
    assert_eq!(recovered.answer, "NONE", "{recovered:?}");
    assert_eq!(
        recovered.end_txn_version, RECOVERY_END_TXN_MAX_VERSION,
        "{recovered:?}"
    );
    assert!(!recovered.committed_earlier, "{recovered:?}");
}

/// A recovery that found, with DescribeProducers, that the producer's open
/// transaction is not the recorded one, sent no `EndTxn`, and read the
/// transaction committed in the log.
fn assert_settled_without_end_txn(recovered: &Recovered) {
    assert_eq!(recovered.answer, "NOT_SENT", "{recovered:?}");
    assert_eq!(recovered.end_txn_version, -1, "{recovered:?}");
    assert!(recovered.committed_earlier, "{recovered:?}");
}

/// What a raw `EndTxn(commit)` at recovery's version answers for the
/// recorded triple now (recovery itself no longer sends it).
fn raw_v4_answer(broker: &str, txn: &KafkaTransaction) -> String {
    let raw = end_txn(broker, txn, 0, RECOVERY_END_TXN_MAX_VERSION).unwrap();
    assert_eq!(raw.version, RECOVERY_END_TXN_MAX_VERSION);
    raw.answer
}

#[test]
fn both_brokers_finalize_the_transaction_version_they_claim_and_offer_end_txn_v5() {
    for (cluster, level) in [(Cluster::Tv2, Some(2)), (Cluster::Tv0, None)] {
        let address = cluster.broker();
        let features = broker_features(&address).unwrap();
        assert_eq!(
            features.transaction_version, level,
            "{cluster:?} at {address}"
        );
        // Both offer EndTxn v5: a TV0 cluster does not hide it.
        assert_eq!(features.end_txn, Some((0, 5)), "{cluster:?} at {address}");
    }
}

/// librdkafka runs its transactions under the version-1 rules: its
/// producer keeps one producer id and epoch across transactions (under the
/// version-2 rules every commit bumps the epoch).
fn librdkafka_keeps_producer_id_and_epoch_across_transactions(cluster: Cluster) {
    let broker = cluster.broker();
    let (topic, prefix) = topic_and_prefix(&broker, "tv-epochs");
    let mut sink = exactly_once(&broker, &topic, &prefix);
    sink.open(&sink_context(None)).unwrap();
    let mut identities = Vec::new();
    let mut written = Vec::new();
    for checkpoint in 1..=3 {
        let mut txn = sink.begin_transaction(checkpoint).unwrap();
        let batch = records(&format!("e{checkpoint}"));
        written.extend(batch.clone());
        sink.write(&mut txn, batch).unwrap();
        sink.pre_commit(&mut txn).unwrap();
        identities.push((txn.transactional_id.clone(), txn.producer_id, txn.epoch));
        sink.commit(txn).unwrap();
    }
    assert!(
        identities.windows(2).all(|w| w[0] == w[1]),
        "{identities:?}"
    );
    assert_visible_once(&broker, &topic, &written);
}

#[test]
fn tv2_librdkafka_keeps_producer_id_and_epoch_across_transactions() {
    librdkafka_keeps_producer_id_and_epoch_across_transactions(Cluster::Tv2);
}

#[test]
fn tv0_librdkafka_keeps_producer_id_and_epoch_across_transactions() {
    librdkafka_keeps_producer_id_and_epoch_across_transactions(Cluster::Tv0);
}

/// Scenario a: the sink pre-commits, its process dies, recovery commits.
fn recovery_commits_a_dead_sinks_transaction(cluster: Cluster) {
    let broker = cluster.broker();
    let (topic, prefix) = topic_and_prefix(&broker, "tv-recover");
    let txn = pre_committed_by_a_dead_sink(&broker, &topic, &prefix, "a");
    let recovered = recover(&broker, &txn).unwrap();
    assert_answered_none(&recovered);
    assert_visible_once(&broker, &topic, &records("a"));
}

#[test]
fn tv2_recovery_commits_a_dead_sinks_transaction() {
    recovery_commits_a_dead_sinks_transaction(Cluster::Tv2);
}

#[test]
fn tv0_recovery_commits_a_dead_sinks_transaction() {
    recovery_commits_a_dead_sinks_transaction(Cluster::Tv0);
}

/// Scenario b: a restored sink commits the transaction, and a second
/// restore from the same checkpoint recovers it again: recovery sees the
/// producer has no transaction open, sends no `EndTxn`, and reads it
/// committed (a raw v4 repeat would be answered `NONE`).
fn a_repeated_recovery_sends_no_end_txn_and_doubles_nothing(cluster: Cluster) {
    let broker = cluster.broker();
    let (topic, prefix) = topic_and_prefix(&broker, "tv-repeat");
    let txn = pre_committed_by_a_dead_sink(&broker, &topic, &prefix, "b");
    let mut restored = exactly_once(&broker, &topic, &prefix);
    restored.open(&sink_context(Some(1))).unwrap();
    restored.recover_and_commit(txn.clone()).unwrap();
    assert_visible_once(&broker, &topic, &records("b"));

    let again = recover(&broker, &txn).unwrap();
    assert_settled_without_end_txn(&again);
    assert_eq!(raw_v4_answer(&broker, &txn), "NONE");
    let mut restored_again = exactly_once(&broker, &topic, &prefix);
    restored_again.open(&sink_context(Some(1))).unwrap();
    restored_again.recover_and_commit(txn).unwrap();
    assert_visible_once(&broker, &topic, &records("b"));
}

#[test]
fn tv2_a_repeated_recovery_sends_no_end_txn_and_doubles_nothing() {
    a_repeated_recovery_sends_no_end_txn_and_doubles_nothing(Cluster::Tv2);
}

#[test]
fn tv0_a_repeated_recovery_sends_no_end_txn_and_doubles_nothing() {
    a_repeated_recovery_sends_no_end_txn_and_doubles_nothing(Cluster::Tv0);
}

/// Scenario b after the restored sink went on: its next transaction
/// re-initialised the id (a new epoch), and the job then failed before
/// its next checkpoint, so the same checkpoint is restored once more.
fn a_repeated_recovery_after_the_id_moved_on_is_settled_by_the_log(cluster: Cluster) {
    let broker = cluster.broker();
    let (topic, prefix) = topic_and_prefix(&broker, "tv-repeat-reused");
    let txn = pre_committed_by_a_dead_sink(&broker, &topic, &prefix, "b2");
    let mut restored = exactly_once(&broker, &topic, &prefix);
    restored.open(&sink_context(Some(1))).unwrap();
    restored.recover_and_commit(txn.clone()).unwrap();
    let mut next = restored.begin_transaction(2).unwrap();
    assert_eq!(next.transactional_id, txn.transactional_id);
    restored.write(&mut next, records("next")).unwrap();
    restored.pre_commit(&mut next).unwrap();
    assert_eq!(next.producer_id, txn.producer_id, "{next:?}");
    assert!(next.epoch > txn.epoch, "{next:?} after {txn:?}");
    restored.commit(next).unwrap();

    let again = recover(&broker, &txn).unwrap();
    assert_settled_without_end_txn(&again);
    assert_eq!(raw_v4_answer(&broker, &txn), "ProducerFenced");
    let mut expected = records("b2");
    expected.extend(records("next"));
    assert_visible_once(&broker, &topic, &expected);
}

#[test]
fn tv2_a_repeated_recovery_after_the_id_moved_on_is_settled_by_the_log() {
    a_repeated_recovery_after_the_id_moved_on_is_settled_by_the_log(Cluster::Tv2);
}

#[test]
fn tv0_a_repeated_recovery_after_the_id_moved_on_is_settled_by_the_log() {
    a_repeated_recovery_after_the_id_moved_on_is_settled_by_the_log(Cluster::Tv0);
}

/// Scenario c: before recovery, a new producer with the same
/// transactional id initialises, which aborts the pre-committed
/// transaction.
fn a_transaction_aborted_by_a_takeover_is_reported_lost(cluster: Cluster) {
    let broker = cluster.broker();
    let (topic, prefix) = topic_and_prefix(&broker, "tv-takeover");
    let txn = pre_committed_by_a_dead_sink(&broker, &topic, &prefix, "c");
    let takeover = producer(&broker, txn.transactional_id.as_deref());
    let error = recover(&broker, &txn).unwrap_err();
    let RecoveryError::Lost {
        transaction,
        reason,
    } = &error
    else {
        panic!("expected the records reported lost, got {error:?}");
    };
    assert_eq!(*transaction, txn.to_string());
    assert!(
        reason.contains("EndTxn not sent: producer")
            && reason.contains("has no transaction open")
            && reason.contains("aborted"),
        "{reason}"
    );
    assert_eq!(raw_v4_answer(&broker, &txn), "ProducerFenced");
    let message = error.to_string();
    assert!(message.contains("LOST"), "{message}");
    drop(takeover);
    assert_visible_once(&broker, &topic, &[]);
}

#[test]
fn tv2_a_transaction_aborted_by_a_takeover_is_reported_lost() {
    a_transaction_aborted_by_a_takeover_is_reported_lost(Cluster::Tv2);
}

#[test]
fn tv0_a_transaction_aborted_by_a_takeover_is_reported_lost() {
    a_transaction_aborted_by_a_takeover_is_reported_lost(Cluster::Tv0);
}

/// The trap recovery's version cap avoids: `EndTxn` v5 repeating the
/// commit of a librdkafka transaction that recovery already committed. The
/// refusal changes nothing: a raw v4 repeat is still answered NONE, and a
/// later recovery reads the transaction committed.
fn end_txn_v5_repeating_a_recovered_commit_answers_invalid_txn_state(cluster: Cluster) {
    let broker = cluster.broker();
    let (topic, prefix) = topic_and_prefix(&broker, "tv-v5-repeat");
    let txn = pre_committed_by_a_dead_sink(&broker, &topic, &prefix, "t");
    assert_answered_none(&recover(&broker, &txn).unwrap());
    // Until the markers are written the coordinator answers
    // CONCURRENT_TRANSACTIONS to anything.
    assert_visible_once(&broker, &topic, &records("t"));

    let v5 = end_txn(&broker, &txn, 5, 5).unwrap();
    assert_eq!(v5.version, 5);
    assert_eq!(v5.answer, "InvalidTxnState", "{v5:?}");
    assert_visible_once(&broker, &topic, &records("t"));

    assert_eq!(raw_v4_answer(&broker, &txn), "NONE");
    assert_settled_without_end_txn(&recover(&broker, &txn).unwrap());
    assert_visible_once(&broker, &topic, &records("t"));
}

#[test]
fn tv2_end_txn_v5_repeating_a_recovered_commit_answers_invalid_txn_state() {
    end_txn_v5_repeating_a_recovered_commit_answers_invalid_txn_state(Cluster::Tv2);
}

#[test]
fn tv0_end_txn_v5_repeating_a_recovered_commit_answers_invalid_txn_state() {
    end_txn_v5_repeating_a_recovered_commit_answers_invalid_txn_state(Cluster::Tv0);
}

/// What a version-5 recovery would do on the default cluster: its first
/// `EndTxn` commits and bumps the epoch (the version-2 rules), so every
/// later `EndTxn` at v4 or below is refused with the stored epoch; recovery
/// sends none (the producer has no transaction open) and reads the log.
#[test]
fn tv2_end_txn_v5_as_the_first_commit_bumps_the_epoch() {
    let broker = Cluster::Tv2.broker();
    let (topic, prefix) = topic_and_prefix(&broker, "tv-v5-first");
    let txn = pre_committed_by_a_dead_sink(&broker, &topic, &prefix, "f");
    let first = end_txn(&broker, &txn, 5, 5).unwrap();
    assert_eq!(first.answer, "NONE", "{first:?}");
    assert_eq!(first.epoch, txn.epoch + 1, "{first:?} for {txn:?}");
    assert_visible_once(&broker, &topic, &records("f"));

    let repeated_v5 = end_txn(&broker, &txn, 5, 5).unwrap();
    assert_eq!(repeated_v5.answer, "NONE", "{repeated_v5:?}");
    assert_eq!(raw_v4_answer(&broker, &txn), "ProducerFenced");
    assert_settled_without_end_txn(&recover(&broker, &txn).unwrap());
    assert_visible_once(&broker, &topic, &records("f"));
}
