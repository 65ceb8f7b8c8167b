//! What the test broker (Apache Kafka, `scripts/kafka-up`) does with
//! transactions, one test per row of the behaviour table in
//! `docs/kafka-broker.md`. Raw requests go through the crate's wire
//! [`Connection`]; clients are rdkafka's.

use exactly_kafka::client::ClientSettings;
use std::time::{Duration, Instant};

use exactly_kafka::sink::RECOVERY_END_TXN_MAX_VERSION;
use exactly_kafka_tools::oracle;
use exactly_kafka_wire::connection::{Connection, ConnectionSettings, error_name};
use exactly_kafka_wire::{OpenTransaction, PartitionLog, ReadError, ReaderConfig};
use kafka_protocol::messages::describe_producers_request::TopicRequest;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    BrokerId, DescribeProducersRequest, DescribeTransactionsRequest, EndTxnRequest, FetchRequest,
    FindCoordinatorRequest, ListOffsetsRequest, ListTransactionsRequest, MetadataRequest,
    ProducerId, TopicName, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{RecordBatchDecoder, RecordSet};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, ConfigSource, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer};

use crate::common::{
    RDKAFKA_TIMEOUT, broker, create_topic, producer, read_topic, send, unique_topic, with_reader,
};

const READ_UNCOMMITTED: i8 = 0;
const READ_COMMITTED: i8 = 1;
/// ListOffsets timestamp asking for the end of the log.
const LATEST: i64 = -1;
/// The broker's `transaction.max.timeout.ms`, as `scripts/kafka-up` sets it.
const MAX_TRANSACTION_TIMEOUT_MS: i64 = 1_200_000;
/// The broker's `transaction.abort.timed.out.transaction.cleanup.interval.ms`.
const ABORT_CLEANUP_INTERVAL: Duration = Duration::from_secs(1);
/// How long a marker may take to land after the call that wrote it.
const MARKER_WAIT: Duration = Duration::from_secs(10);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn settings() -> ConnectionSettings {
    ConnectionSettings {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        client_id: "exactly-broker-behaviour".to_owned(),
        security: Default::default(),
    }
}

/// Runs `work` on a new connection to `address`; panics on a connection or
/// protocol error.
fn on_broker<T>(
    address: &str,
    work: impl AsyncFnOnce(&mut Connection) -> Result<T, ReadError>,
) -> T {
    runtime()
        .block_on(async {
            let mut connection = Connection::open(address, &settings()).await?;
            work(&mut connection).await
        })
        .unwrap_or_else(|e| panic!("talking to {address}: {e}"))
}

fn name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_owned()))
}

fn transactional_id(id: &str) -> TransactionalId {
    TransactionalId(StrBytes::from_string(id.to_owned()))
}

/// Partition 0 of `topic` fetched from `offset` with `isolation`
/// (Fetch v4 to v12: v13 names topics by id).
async fn fetch(
    connection: &mut Connection,
    topic: &str,
    offset: i64,
    isolation: i8,
) -> Result<PartitionData, ReadError> {
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(100)
        .with_min_bytes(1)
        .with_max_bytes(1024 * 1024)
        .with_isolation_level(isolation)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(name(topic))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(0)
                        .with_current_leader_epoch(-1)
                        .with_fetch_offset(offset)
                        .with_last_fetched_epoch(-1)
                        .with_log_start_offset(-1)
                        .with_partition_max_bytes(1024 * 1024),
                ]),
        ]);
    let (response, _) = connection.request(&request, 4, 12).await?;
    assert_eq!(
        response.error_code,
        0,
        "{}",
        error_name(response.error_code)
    );
    let data = response
        .responses
        .into_iter()
        .flat_map(|t| t.partitions)
        .find(|p| p.partition_index == 0)
        .expect("the Fetch response has partition 0");
    assert_eq!(data.error_code, 0, "Fetch: {}", error_name(data.error_code));
    Ok(data)
}

/// Partition 0 of `topic` fetched once from `offset` with `isolation`.
fn fetch_once(broker: &str, topic: &str, offset: i64, isolation: i8) -> PartitionData {
    on_broker(broker, async |c| fetch(c, topic, offset, isolation).await)
}

/// The batches a Fetch returned.
fn batches(data: &PartitionData) -> Vec<RecordSet> {
    let mut records = data.records.clone().unwrap_or_default();
    RecordBatchDecoder::decode_all(&mut records).expect("decodable record batches")
}

/// Every offset a Fetch returned with what it holds: the value of a data
/// record, or `COMMIT` / `ABORT` for a control record.
fn layout(data: &PartitionData) -> Vec<(i64, String)> {
    batches(data)
        .iter()
        .flat_map(|set| &set.records)
        .map(|record| {
            let what = if record.control {
                let key = record.key.as_deref().expect("a control record has a key");
                match i16::from_be_bytes([key[2], key[3]]) {
                    0 => "ABORT".to_owned(),
                    1 => "COMMIT".to_owned(),
                    other => format!("control type {other}"),
                }
            } else {
                let value = record.value.as_deref().unwrap_or_default();
                String::from_utf8_lossy(value).into_owned()
            };
            (record.offset, what)
        })
        .collect()
}

fn expected(layout: &[(i64, &str)]) -> Vec<(i64, String)> {
    layout.iter().map(|(o, w)| (*o, (*w).to_owned())).collect()
}

/// Fetches partition 0 of `topic` (READ_UNCOMMITTED, from 0) until `done`
/// holds, for at most [`MARKER_WAIT`]; returns the last answer and how long
/// it took.
fn fetch_until(
    broker: &str,
    topic: &str,
    what: &str,
    done: impl Fn(&PartitionData) -> bool,
) -> (PartitionData, Duration) {
    let started = Instant::now();
    loop {
        let data = fetch_once(broker, topic, 0, READ_UNCOMMITTED);
        if done(&data) {
            return (data, started.elapsed());
        }
        assert!(
            started.elapsed() < MARKER_WAIT,
            "{what} did not happen on {topic} within {MARKER_WAIT:?}: high watermark {}, last stable offset {}, \
             log {:?}",
            data.high_watermark,
            data.last_stable_offset,
            layout(&data)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Partition 0 of `topic` as the raw committed reader sees it.
fn raw_log(broker: &str, topic: &str) -> PartitionLog {
    with_reader(ReaderConfig::new(broker), async |reader| {
        reader.read_partition(topic, 0).await
    })
    .unwrap_or_else(|e| panic!("reading {topic}: {e}"))
}

/// The one open transaction on partition 0 of `topic`.
fn open_transaction(broker: &str, topic: &str) -> OpenTransaction {
    let log = raw_log(broker, topic);
    assert_eq!(
        log.open_transactions.len(),
        1,
        "one open transaction on {topic}: {:?}",
        log.open_transactions
    );
    log.open_transactions[0]
}

fn settled(broker: &str, topic: &str) -> PartitionLog {
    let mut logs = oracle::settled(&ClientSettings::new(broker), topic)
        .unwrap_or_else(|e| panic!("settling {topic}: {e}"));
    assert_eq!(logs.len(), 1, "{topic} has one partition");
    logs.remove(0)
}

/// The transaction coordinator of `id`, found with FindCoordinator.
async fn coordinator(connection: &mut Connection, id: &str) -> Result<Connection, ReadError> {
    Ok(connection
        .transaction_coordinator(id)
        .await?
        .unwrap_or_else(|code| panic!("FindCoordinator({id}): {}", error_name(code))))
}

/// Sends EndTxn for (`id`, `producer_id`, `epoch`) to its coordinator on a
/// new connection, with the version recovery uses; returns the error code,
/// and whether the same connection still answers afterwards.
fn end_txn(broker: &str, id: &str, producer_id: i64, epoch: i16, commit: bool) -> (i16, bool) {
    on_broker(broker, async |c| {
        let mut coordinator = coordinator(c, id).await?;
        let end = EndTxnRequest::default()
            .with_transactional_id(transactional_id(id))
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(epoch)
            .with_committed(commit);
        let (response, version) = coordinator
            .request(&end, 0, RECOVERY_END_TXN_MAX_VERSION)
            .await?;
        assert_eq!(version, RECOVERY_END_TXN_MAX_VERSION);
        let find = FindCoordinatorRequest::default()
            .with_key(StrBytes::from_string(id.to_owned()))
            .with_key_type(1);
        let still_answers = coordinator.request(&find, 1, 3).await.is_ok();
        Ok((response.error_code, still_answers))
    })
}

/// A transactional producer with the given `transaction.timeout.ms`, not
/// yet initialised.
fn transactional_producer(broker: &str, id: &str, timeout_ms: i64) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("linger.ms", "0")
        .set("transactional.id", id)
        .set("transaction.timeout.ms", timeout_ms.to_string())
        .create()
        .expect("an rdkafka producer")
}

/// The librdkafka error code of a failed transactional call, and whether
/// librdkafka calls it fatal.
fn transaction_error(error: &KafkaError) -> (RDKafkaErrorCode, bool) {
    match error {
        KafkaError::Transaction(e) => (e.code(), e.is_fatal()),
        other => panic!("expected a transaction error, got {other:?}"),
    }
}

#[test]
fn read_committed_fetch_stops_at_the_first_offset_of_an_open_transaction() {
    let broker = broker();
    let topic = unique_topic("behaviour-hidden");
    create_topic(&broker, &topic, 1);
    let plain = producer(&broker, None);
    send(&plain, &topic, &["plain-0"]);
    let open = producer(&broker, Some(&format!("{topic}-open")));
    open.begin_transaction().expect("begin");
    send(&open, &topic, &["open-1"]);
    send(&plain, &topic, &["plain-1"]);

    let uncommitted = fetch_once(&broker, &topic, 0, READ_UNCOMMITTED);
    assert_eq!(
        layout(&uncommitted),
        expected(&[(0, "plain-0"), (1, "open-1"), (2, "plain-1")])
    );
    let committed = fetch_once(&broker, &topic, 0, READ_COMMITTED);
    assert_eq!(
        (committed.high_watermark, committed.last_stable_offset),
        (3, 1)
    );
    assert_eq!(
        layout(&committed),
        expected(&[(0, "plain-0")]),
        "READ_COMMITTED returns nothing at or after the last stable offset"
    );
    let from_open = fetch_once(&broker, &topic, 1, READ_COMMITTED);
    assert_eq!(layout(&from_open), expected(&[]));

    open.commit_transaction(RDKAFKA_TIMEOUT).expect("commit");
    settled(&broker, &topic);
    let committed = fetch_once(&broker, &topic, 0, READ_COMMITTED);
    assert_eq!(
        layout(&committed),
        expected(&[(0, "plain-0"), (1, "open-1"), (2, "plain-1"), (3, "COMMIT")])
    );
}

#[test]
fn commit_and_abort_markers_take_one_offset_each() {
    let broker = broker();
    let topic = unique_topic("behaviour-markers");
    create_topic(&broker, &topic, 1);
    let committing = producer(&broker, Some(&format!("{topic}-a")));
    committing.begin_transaction().expect("begin A");
    send(&committing, &topic, &["a-1", "a-2"]);
    committing
        .commit_transaction(RDKAFKA_TIMEOUT)
        .expect("commit A");
    settled(&broker, &topic);
    let aborting = producer(&broker, Some(&format!("{topic}-b")));
    aborting.begin_transaction().expect("begin B");
    send(&aborting, &topic, &["b-1", "b-2"]);
    aborting
        .abort_transaction(RDKAFKA_TIMEOUT)
        .expect("abort B");
    let log = settled(&broker, &topic);
    assert_eq!((log.high_watermark, log.last_stable_offset), (6, 6));

    let data = fetch_once(&broker, &topic, 0, READ_UNCOMMITTED);
    assert_eq!(
        layout(&data),
        expected(&[
            (0, "a-1"),
            (1, "a-2"),
            (2, "COMMIT"),
            (3, "b-1"),
            (4, "b-2"),
            (5, "ABORT"),
        ])
    );
    let sets = batches(&data);
    assert_eq!(
        sets.len(),
        4,
        "two data batches and two one-record control batches"
    );
    for (set, control) in sets.iter().zip([false, true, false, true]) {
        assert!(
            set.records
                .iter()
                .all(|r| r.control == control && r.transactional)
        );
    }
    assert_eq!(
        sets[0].records[0].producer_id, sets[1].records[0].producer_id,
        "A's marker carries A's producer id"
    );
    assert_eq!(
        sets[2].records[0].producer_id,
        sets[3].records[0].producer_id
    );
}

#[test]
fn the_last_stable_offset_is_the_first_offset_of_the_oldest_open_transaction() {
    let broker = broker();
    let topic = unique_topic("behaviour-lso");
    create_topic(&broker, &topic, 1);
    let plain = producer(&broker, None);
    send(&plain, &topic, &["plain-0", "plain-1"]);
    let older = producer(&broker, Some(&format!("{topic}-older")));
    older.begin_transaction().expect("begin older");
    send(&older, &topic, &["older-2"]);
    send(&plain, &topic, &["plain-3"]);
    let newer = producer(&broker, Some(&format!("{topic}-newer")));
    newer.begin_transaction().expect("begin newer");
    send(&newer, &topic, &["newer-4"]);
    send(&plain, &topic, &["plain-5"]);

    let data = fetch_once(&broker, &topic, 0, READ_UNCOMMITTED);
    assert_eq!((data.high_watermark, data.last_stable_offset), (6, 2));

    older
        .commit_transaction(RDKAFKA_TIMEOUT)
        .expect("commit older");
    let (data, _) = fetch_until(&broker, &topic, "the older COMMIT marker", |d| {
        d.high_watermark == 7
    });
    assert_eq!(
        data.last_stable_offset, 4,
        "with the older transaction committed, the newer one (from offset 4) holds the last stable offset"
    );

    newer
        .abort_transaction(RDKAFKA_TIMEOUT)
        .expect("abort newer");
    let (data, _) = fetch_until(&broker, &topic, "the newer ABORT marker", |d| {
        d.high_watermark == 8
    });
    assert_eq!(data.last_stable_offset, 8);
    assert_eq!(layout(&data)[6..], expected(&[(6, "COMMIT"), (7, "ABORT")]));
}

#[test]
fn read_committed_fetch_lists_the_aborted_transaction() {
    let broker = broker();
    let topic = unique_topic("behaviour-aborted-list");
    create_topic(&broker, &topic, 1);
    let plain = producer(&broker, None);
    send(&plain, &topic, &["plain-0"]);
    let aborting = producer(&broker, Some(&format!("{topic}-aborting")));
    aborting.begin_transaction().expect("begin");
    send(&aborting, &topic, &["aborted-1", "aborted-2"]);
    let aborted = open_transaction(&broker, &topic);
    aborting.abort_transaction(RDKAFKA_TIMEOUT).expect("abort");
    settled(&broker, &topic);
    send(&plain, &topic, &["plain-4"]);

    let data = fetch_once(&broker, &topic, 0, READ_COMMITTED);
    let listed: Vec<(i64, i64)> = data
        .aborted_transactions
        .iter()
        .flatten()
        .map(|t| (t.producer_id.0, t.first_offset))
        .collect();
    assert_eq!(listed, [(aborted.producer_id, 1)]);
    assert_eq!(
        layout(&data),
        expected(&[
            (0, "plain-0"),
            (1, "aborted-1"),
            (2, "aborted-2"),
            (3, "ABORT"),
            (4, "plain-4")
        ]),
        "the broker still sends the aborted batch: the client drops it using the list"
    );
    let after = fetch_once(&broker, &topic, 4, READ_COMMITTED);
    assert!(
        after.aborted_transactions.iter().flatten().next().is_none(),
        "a fetch past the aborted transaction lists none: {:?}",
        after.aborted_transactions
    );
}

#[test]
fn list_offsets_latest_is_the_high_watermark_after_a_multi_record_batch() {
    let broker = broker();
    let topic = unique_topic("behaviour-list-offsets");
    create_topic(&broker, &topic, 1);
    let batching: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker)
        .set("linger.ms", "1000")
        .create()
        .expect("an rdkafka producer");
    send(&batching, &topic, &["one", "two", "three"]);

    let data = fetch_once(&broker, &topic, 0, READ_UNCOMMITTED);
    let sets = batches(&data);
    assert_eq!(
        sets.iter().map(|s| s.records.len()).collect::<Vec<_>>(),
        [3],
        "the three records form one batch"
    );
    assert_eq!(data.high_watermark, 3);

    let latest = on_broker(&broker, async |c| {
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_isolation_level(READ_UNCOMMITTED)
            .with_topics(vec![
                ListOffsetsTopic::default()
                    .with_name(name(&topic))
                    .with_partitions(vec![
                        ListOffsetsPartition::default()
                            .with_partition_index(0)
                            .with_current_leader_epoch(-1)
                            .with_timestamp(LATEST),
                    ]),
            ]);
        let (response, _) = c.request(&request, 1, 10).await?;
        let answer = &response.topics[0].partitions[0];
        assert_eq!(answer.error_code, 0, "{}", error_name(answer.error_code));
        Ok(answer.offset)
    });
    assert_eq!(latest, 3, "raw ListOffsets(LATEST)");
    let watermarks = batching
        .client()
        .fetch_watermarks(&topic, 0, RDKAFKA_TIMEOUT)
        .expect("watermarks");
    assert_eq!(watermarks, (0, 3), "rdkafka fetch_watermarks");
}

#[test]
fn a_second_init_transactions_fences_the_first_producer_at_once() {
    let broker = broker();
    let topic = unique_topic("behaviour-fencing");
    create_topic(&broker, &topic, 1);
    let id = format!("{topic}-id");
    let zombie = producer(&broker, Some(&id));
    zombie.begin_transaction().expect("begin");
    send(&zombie, &topic, &["zombie"]);
    let zombie_txn = open_transaction(&broker, &topic);

    let started = Instant::now();
    let successor = producer(&broker, Some(&id));
    let init_took = started.elapsed();
    let started = Instant::now();
    let error = zombie
        .commit_transaction(RDKAFKA_TIMEOUT)
        .expect_err("the fenced producer's commit must fail");
    let commit_took = started.elapsed();
    eprintln!(
        "fencing: init_transactions took {init_took:?}; the zombie's commit failed after {commit_took:?}: {error}"
    );
    assert_eq!(
        transaction_error(&error),
        (RDKafkaErrorCode::Fenced, true),
        "{error}"
    );
    assert!(
        commit_took < Duration::from_secs(5),
        "the fenced commit took {commit_took:?}"
    );

    let log = settled(&broker, &topic);
    assert!(log.records.is_empty(), "the zombie's record is aborted");
    assert_eq!(
        log.producers[&zombie_txn.producer_id].aborted_transactions,
        1
    );
    let data = fetch_once(&broker, &topic, 0, READ_UNCOMMITTED);
    assert_eq!(layout(&data), expected(&[(0, "zombie"), (1, "ABORT")]));
    let marker = &batches(&data)[1].records[0];
    assert_eq!(marker.producer_id, zombie_txn.producer_id);
    assert!(
        marker.producer_epoch > zombie_txn.producer_epoch,
        "the abort is written with the bumped epoch ({} after {})",
        marker.producer_epoch,
        zombie_txn.producer_epoch
    );

    successor.begin_transaction().expect("the successor begins");
    send(&successor, &topic, &["successor"]);
    successor
        .commit_transaction(RDKAFKA_TIMEOUT)
        .expect("the successor commits");
    let log = settled(&broker, &topic);
    assert_eq!(log.values(), [Some(&b"successor"[..])]);
}

#[test]
fn end_txn_commit_from_another_connection_commits_an_idle_producers_transaction() {
    let broker = broker();
    let topic = unique_topic("behaviour-end-txn");
    create_topic(&broker, &topic, 1);
    let id = format!("{topic}-id");
    let idle = producer(&broker, Some(&id));
    idle.begin_transaction().expect("begin");
    send(&idle, &topic, &["pre-1", "pre-2"]);
    let txn = open_transaction(&broker, &topic);

    let (code, _) = end_txn(&broker, &id, txn.producer_id, txn.producer_epoch, true);
    assert_eq!(error_name(code), "NONE");
    settled(&broker, &topic);
    let logs = read_topic(&broker, &topic).unwrap_or_else(|e| panic!("reading {topic}: {e}"));
    assert_eq!(logs[0].values(), [Some(&b"pre-1"[..]), Some(&b"pre-2"[..])]);
    assert_eq!(
        logs[0].producers[&txn.producer_id].committed_transactions,
        1
    );
    drop(idle);
}

#[test]
fn end_txn_with_an_older_epoch_answers_producer_fenced() {
    let broker = broker();
    let topic = unique_topic("behaviour-stale-epoch");
    create_topic(&broker, &topic, 1);
    let id = format!("{topic}-id");
    drop(producer(&broker, Some(&id)));
    let current = producer(&broker, Some(&id));
    current.begin_transaction().expect("begin");
    send(&current, &topic, &["current"]);
    let txn = open_transaction(&broker, &topic);
    assert!(txn.producer_epoch >= 1, "the second init bumped the epoch");

    let (code, still_answers) =
        end_txn(&broker, &id, txn.producer_id, txn.producer_epoch - 1, true);
    assert_eq!((code, error_name(code).as_str()), (90, "ProducerFenced"));
    assert!(still_answers, "the connection stays open after the error");
    assert_eq!(
        open_transaction(&broker, &topic),
        txn,
        "the stale EndTxn left the transaction open"
    );
    current.commit_transaction(RDKAFKA_TIMEOUT).expect("commit");
    assert_eq!(settled(&broker, &topic).values(), [Some(&b"current"[..])]);
}

#[test]
fn describe_configs_answers_the_broker_transaction_max_timeout() {
    let broker = broker();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker)
        .create()
        .expect("an rdkafka admin client");
    let metadata = admin
        .inner()
        .fetch_metadata(None, RDKAFKA_TIMEOUT)
        .expect("metadata");
    let brokers: Vec<i32> = metadata.brokers().iter().map(|b| b.id()).collect();
    assert_eq!(brokers.len(), 1, "a single-node cluster: {brokers:?}");
    let options = AdminOptions::new().request_timeout(Some(RDKAFKA_TIMEOUT));
    let results = runtime()
        .block_on(admin.describe_configs([&ResourceSpecifier::Broker(brokers[0])], &options))
        .expect("DescribeConfigs");
    let resource = results
        .into_iter()
        .next()
        .expect("one resource")
        .expect("the broker's configs");
    let entry = resource
        .get("transaction.max.timeout.ms")
        .expect("transaction.max.timeout.ms is listed");
    assert_eq!(
        entry.value.as_deref(),
        Some(MAX_TRANSACTION_TIMEOUT_MS.to_string().as_str())
    );
    assert_eq!(entry.source, ConfigSource::StaticBroker);
    assert!(!entry.is_default);
}

#[test]
fn a_transaction_timeout_above_the_broker_maximum_fails_init_transactions() {
    let broker = broker();
    let id = unique_topic("behaviour-max-timeout");
    let at_max = transactional_producer(&broker, &format!("{id}-at"), MAX_TRANSACTION_TIMEOUT_MS);
    at_max
        .init_transactions(RDKAFKA_TIMEOUT)
        .expect("the maximum itself is accepted");
    let above = transactional_producer(
        &broker,
        &format!("{id}-above"),
        MAX_TRANSACTION_TIMEOUT_MS + 1,
    );
    let started = Instant::now();
    let error = above
        .init_transactions(RDKAFKA_TIMEOUT)
        .expect_err("one millisecond above the maximum is refused");
    let took = started.elapsed();
    eprintln!("max timeout: init_transactions failed after {took:?}: {error}");
    assert_eq!(
        transaction_error(&error),
        (RDKafkaErrorCode::InvalidTransactionTimeout, true),
        "{error}"
    );
    assert!(took < Duration::from_secs(5), "the refusal took {took:?}");
}

#[test]
fn the_broker_aborts_a_transaction_left_open_past_its_timeout() {
    let broker = broker();
    let topic = unique_topic("behaviour-timeout");
    create_topic(&broker, &topic, 1);
    let timeout = Duration::from_secs(2);
    let late = transactional_producer(
        &broker,
        &format!("{topic}-id"),
        i64::try_from(timeout.as_millis()).expect("milliseconds"),
    );
    late.init_transactions(RDKAFKA_TIMEOUT).expect("init");
    late.begin_transaction().expect("begin");
    let started = Instant::now();
    send(&late, &topic, &["late"]);
    let txn = open_transaction(&broker, &topic);

    let (data, _) = fetch_until(&broker, &topic, "the timeout abort", |d| {
        d.high_watermark == 2 && d.last_stable_offset == 2
    });
    let aborted_after = started.elapsed();
    eprintln!("timeout: aborted {aborted_after:?} after the first record");
    assert_eq!(layout(&data), expected(&[(0, "late"), (1, "ABORT")]));
    assert!(
        aborted_after >= timeout,
        "aborted after {aborted_after:?}, before the {timeout:?} timeout"
    );
    let bound = timeout + ABORT_CLEANUP_INTERVAL + Duration::from_secs(2);
    assert!(
        aborted_after < bound,
        "aborted after {aborted_after:?}, later than {bound:?}"
    );
    let marker = &batches(&data)[1].records[0];
    assert_eq!(marker.producer_id, txn.producer_id);

    let started = Instant::now();
    let error = late
        .commit_transaction(RDKAFKA_TIMEOUT)
        .expect_err("the late commit must fail");
    let took = started.elapsed();
    eprintln!("timeout: the late commit failed after {took:?}: {error}");
    assert_eq!(
        transaction_error(&error),
        (RDKafkaErrorCode::Fenced, true),
        "{error}"
    );
    assert!(
        took < Duration::from_secs(5),
        "the late commit took {took:?}"
    );
    assert!(settled(&broker, &topic).records.is_empty());
}

#[test]
fn metadata_for_an_unknown_topic_answers_unknown_topic_and_creates_nothing() {
    let broker = broker();
    let topic = unique_topic("behaviour-unknown");
    let ask = || {
        on_broker(&broker, async |c| {
            let request = MetadataRequest::default()
                .with_topics(Some(vec![
                    MetadataRequestTopic::default().with_name(Some(name(&topic))),
                ]))
                .with_allow_auto_topic_creation(true);
            let (response, _) = c.request(&request, 4, 12).await?;
            Ok(response
                .topics
                .iter()
                .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.error_code))
                .collect::<Vec<_>>())
        })
    };
    let unknown = vec![(Some(topic.clone()), 3)];
    assert_eq!(
        ask(),
        unknown,
        "UNKNOWN_TOPIC_OR_PARTITION, although the request allows auto-creation"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ask(), unknown, "the topic was not created");
    assert_eq!(error_name(3), "UnknownTopicOrPartition");
}

#[test]
fn list_transactions_describe_transactions_and_describe_producers_show_an_open_transaction() {
    let broker = broker();
    let topic = unique_topic("behaviour-kip-664");
    create_topic(&broker, &topic, 1);
    let plain = producer(&broker, None);
    send(&plain, &topic, &["plain-0"]);
    let id = format!("{topic}-id");
    let open = producer(&broker, Some(&id));
    open.begin_transaction().expect("begin");
    send(&open, &topic, &["open-1"]);
    let txn = open_transaction(&broker, &topic);
    assert_eq!(txn.first_offset, 1);

    let (listed, described, producers) = on_broker(&broker, async |c| {
        let list = ListTransactionsRequest::default()
            .with_producer_id_filters(vec![ProducerId(txn.producer_id)]);
        let (listed, _) = c.request(&list, 0, 2).await?;
        let describe = DescribeTransactionsRequest::default()
            .with_transactional_ids(vec![transactional_id(&id)]);
        let (described, _) = coordinator(c, &id).await?.request(&describe, 0, 0).await?;
        let producers = DescribeProducersRequest::default().with_topics(vec![
            TopicRequest::default()
                .with_name(name(&topic))
                .with_partition_indexes(vec![0]),
        ]);
        let (producers, _) = c.request(&producers, 0, 0).await?;
        Ok((listed, described, producers))
    });

    assert_eq!(listed.error_code, 0, "{}", error_name(listed.error_code));
    let listed: Vec<(String, i64, String)> = listed
        .transaction_states
        .iter()
        .map(|t| {
            (
                t.transactional_id.0.to_string(),
                t.producer_id.0,
                t.transaction_state.to_string(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [(id.clone(), txn.producer_id, "Ongoing".to_owned())]
    );

    let [state] = &described.transaction_states[..] else {
        panic!("one described transaction: {described:?}");
    };
    assert_eq!(state.error_code, 0, "{}", error_name(state.error_code));
    assert_eq!(
        (
            state.transactional_id.0.as_str(),
            state.transaction_state.as_str(),
            state.producer_id.0,
            state.producer_epoch,
            state.transaction_timeout_ms
        ),
        (
            id.as_str(),
            "Ongoing",
            txn.producer_id,
            txn.producer_epoch,
            60_000
        )
    );
    let partitions: Vec<(String, Vec<i32>)> = state
        .topics
        .iter()
        .map(|t| (t.topic.0.to_string(), t.partitions.clone()))
        .collect();
    assert_eq!(partitions, [(topic.clone(), vec![0])]);

    let partition = &producers.topics[0].partitions[0];
    assert_eq!(
        partition.error_code,
        0,
        "{}",
        error_name(partition.error_code)
    );
    let active = partition
        .active_producers
        .iter()
        .find(|p| p.producer_id.0 == txn.producer_id)
        .expect("the transactional producer is active on the partition");
    assert_eq!(active.current_txn_start_offset, 1);
    assert_eq!(active.producer_epoch, i32::from(txn.producer_epoch));

    open.commit_transaction(RDKAFKA_TIMEOUT).expect("commit");
    settled(&broker, &topic);
    let after = on_broker(&broker, async |c| {
        let producers = DescribeProducersRequest::default().with_topics(vec![
            TopicRequest::default()
                .with_name(name(&topic))
                .with_partition_indexes(vec![0]),
        ]);
        Ok(c.request(&producers, 0, 0).await?.0)
    });
    let active = after.topics[0].partitions[0]
        .active_producers
        .iter()
        .find(|p| p.producer_id.0 == txn.producer_id)
        .expect("the producer is still listed");
    assert_eq!(
        active.current_txn_start_offset, -1,
        "no transaction open after the commit"
    );
}
