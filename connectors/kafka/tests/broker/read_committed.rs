//! The committed reader against a real broker (`scripts/kafka-up`): one
//! committed, one aborted and one open transaction among non-transactional
//! records, compared with what an rdkafka read_committed consumer sees.

use exactly_kafka::client::ClientSettings;
use std::time::{Duration, Instant};

use exactly_kafka_tools::oracle;
use exactly_kafka_wire::PartitionLog;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::Producer;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::common::{
    RDKAFKA_TIMEOUT, broker, create_topic, producer, read_topic, send, send_to, unique_topic,
};

/// Writes, to partition 0 of a new topic, with Kafka's offsets:
///
/// | offset | record |
/// | --- | --- |
/// | 0 | plain-0 |
/// | 1, 2 | committed-1, committed-2 (transaction of producer A) |
/// | 3 | COMMIT marker of A |
/// | 4, 5 | aborted-1, aborted-2 (transaction of producer B) |
/// | 6 | ABORT marker of B |
/// | 7 | plain-1 |
/// | 8 | open-1 (transaction of producer C, left open) |
/// | 9 | plain-2 |
///
/// and returns the topic with producer C, whose transaction is still open.
fn write_scenario(broker: &str, test: &str) -> (String, rdkafka::producer::BaseProducer) {
    let topic = unique_topic(test);
    create_topic(broker, &topic, 1);
    let plain = producer(broker, None);
    send(&plain, &topic, &["plain-0"]);

    ended_transaction(
        broker,
        &topic,
        "a",
        &["committed-1", "committed-2"],
        End::Commit,
    );
    ended_transaction(broker, &topic, "b", &["aborted-1", "aborted-2"], End::Abort);

    send(&plain, &topic, &["plain-1"]);
    let open = producer(broker, Some(&format!("{topic}-c")));
    open.begin_transaction().expect("begin C");
    send(&open, &topic, &["open-1"]);
    send(&plain, &topic, &["plain-2"]);
    (topic, open)
}

/// How [`ended_transaction`] ends its transaction.
enum End {
    Commit,
    Abort,
}

/// Writes `values` to `topic` in one transaction of the producer
/// `<topic>-<suffix>`, ends it as told, and waits for its marker: the broker
/// writes the marker after the call returns, and the next record must land
/// after it.
fn ended_transaction(broker: &str, topic: &str, suffix: &str, values: &[&str], end: End) {
    let transactional = producer(broker, Some(&format!("{topic}-{suffix}")));
    transactional.begin_transaction().expect("begin");
    send(&transactional, topic, values);
    match end {
        End::Commit => transactional.commit_transaction(RDKAFKA_TIMEOUT),
        End::Abort => transactional.abort_transaction(RDKAFKA_TIMEOUT),
    }
    .unwrap_or_else(|e| panic!("ending the transaction of {values:?}: {e}"));
    oracle::settled(&ClientSettings::new(broker), topic)
        .unwrap_or_else(|e| panic!("the marker after {values:?}: {e}"));
}

fn values(log: &PartitionLog) -> Vec<&str> {
    log.values()
        .into_iter()
        .map(|v| std::str::from_utf8(v.expect("a value")).expect("UTF-8"))
        .collect()
}

fn single_partition(broker: &str, topic: &str) -> PartitionLog {
    let mut logs = read_topic(broker, topic).unwrap_or_else(|e| panic!("reading {topic}: {e}"));
    assert_eq!(logs.len(), 1, "{topic} has one partition");
    logs.remove(0)
}

#[test]
fn reader_shows_committed_and_plain_records_counts_aborted_and_reports_the_open_transaction() {
    let broker = broker();
    let (topic, open) = write_scenario(&broker, "scenario");

    let log = single_partition(&broker, &topic);
    assert_eq!(
        values(&log),
        [
            "plain-0",
            "committed-1",
            "committed-2",
            "plain-1",
            "plain-2"
        ]
    );
    assert_eq!(
        log.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
        [0, 1, 2, 7, 9]
    );
    assert_eq!(log.records[1].key.as_deref(), Some(&b"committed-1"[..]));
    assert!(log.records[1].transactional && !log.records[0].transactional);
    assert_eq!((log.log_start_offset, log.high_watermark), (0, 10));

    let committer = log.records[1].producer_id;
    assert_eq!(log.producers[&committer].committed_transactions, 1);
    assert_eq!(log.producers[&committer].committed_records, 2);
    assert_eq!(log.aborted_records(), 2);
    let (aborter, aborted) = log
        .producers
        .iter()
        .find(|(_, p)| p.aborted_transactions > 0)
        .expect("a producer with an aborted transaction");
    assert_eq!(
        (aborted.aborted_transactions, aborted.aborted_records),
        (1, 2)
    );

    let oldest = log
        .oldest_open_transaction()
        .expect("producer C's transaction is open");
    assert_eq!(log.open_transactions.len(), 1);
    assert_eq!((oldest.first_offset, oldest.records), (8, 1));
    assert_eq!(log.last_stable_offset, 8);
    let opener = oldest.producer_id;
    assert_eq!(log.producers[&opener].open_transactions, 1);
    let distinct = [committer, *aborter, opener];
    assert!(
        distinct.iter().all(|&id| id >= 0)
            && distinct[0] != distinct[1]
            && distinct[1] != distinct[2],
        "three distinct transactional producer ids: {distinct:?}"
    );

    open.commit_transaction(RDKAFKA_TIMEOUT).expect("commit C");
    let log = single_partition(&broker, &topic);
    assert_eq!(
        values(&log),
        [
            "plain-0",
            "committed-1",
            "committed-2",
            "plain-1",
            "open-1",
            "plain-2"
        ]
    );
    assert!(log.open_transactions.is_empty());
    assert_eq!(log.high_watermark, 11);
    assert_eq!(log.last_stable_offset, 11);
    assert_eq!(log.producers[&opener].committed_transactions, 1);
}

/// What a plain rdkafka consumer with `isolation.level=read_committed`
/// receives from partition 0 of `topic`, waiting until `last` arrived and
/// then until nothing more came for a while.
fn consume_read_committed(broker: &str, topic: &str, last: &str) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("an rdkafka consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .expect("partition 0");
    consumer.assign(&assignment).expect("assign partition 0");

    let mut seen = Vec::new();
    let deadline = Instant::now() + RDKAFKA_TIMEOUT;
    let mut quiet_since = None;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(message) => {
                let message = message.unwrap_or_else(|e| panic!("consuming {topic}: {e}"));
                let value = String::from_utf8_lossy(message.payload().unwrap_or_default());
                seen.push(value.into_owned());
                quiet_since = None;
            }
            None if seen.iter().any(|v| v == last) => {
                let since = *quiet_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(2) {
                    return seen;
                }
            }
            None => {}
        }
    }
    panic!(
        "the read_committed consumer did not receive {last} from {topic} within {RDKAFKA_TIMEOUT:?}; it saw {seen:?}"
    );
}

#[test]
fn an_rdkafka_read_committed_consumer_does_not_see_the_open_transaction() {
    let broker = broker();
    let (topic, _open) = write_scenario(&broker, "rdkafka");

    let seen = consume_read_committed(&broker, &topic, "plain-1");
    assert!(
        !seen.iter().any(|v| v == "open-1" || v == "plain-2"),
        "nothing at or after the open transaction (offset 8) may be delivered: {seen:?}"
    );
    assert_eq!(
        seen,
        ["plain-0", "committed-1", "committed-2", "plain-1"],
        "the aborted records must not be delivered either"
    );
}

#[test]
fn read_topic_reads_every_partition_in_order() {
    let broker = broker();
    let topic = unique_topic("partitions");
    create_topic(&broker, &topic, 3);
    let plain = producer(&broker, None);
    send_to(&plain, &topic, 2, &["two-a", "two-b"]);
    send_to(&plain, &topic, 0, &["zero"]);

    let logs = read_topic(&broker, &topic).unwrap_or_else(|e| panic!("reading {topic}: {e}"));
    assert_eq!(
        logs.iter().map(|l| l.partition).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert_eq!(values(&logs[0]), ["zero"]);
    assert!(logs[1].records.is_empty());
    assert_eq!((logs[1].high_watermark, logs[1].last_stable_offset), (0, 0));
    assert_eq!(values(&logs[2]), ["two-a", "two-b"]);
    assert_eq!(logs[2].high_watermark, 2);
}
