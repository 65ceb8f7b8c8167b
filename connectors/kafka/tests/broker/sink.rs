//! The Kafka sink against the broker: transactions invisible until
//! committed, recovery of a dead producer's transaction, fencing of a
//! zombie, exactly-once output of whole jobs, and the preflight errors.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use exactly::Unrecoverable;
use exactly::prelude::*;
use exactly_kafka::client::ClientSettings;
use exactly_kafka::deserialize::Utf8;
use exactly_kafka::sink::{
    DeliveryGuarantee, KafkaSink, KafkaTransaction, OutputRecord, SinkConfigError,
    recover_transaction,
};
use exactly_kafka::source::{KafkaHeader, KafkaRecord, KafkaSource};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::common::{
    RDKAFKA_TIMEOUT, broker, create_topic, pre_committed, producer, read_topic, send, sink_context,
    unique_topic,
};

fn exactly_once(broker: &str, topic: &str, prefix: &str) -> KafkaSink<String> {
    KafkaSink::builder(ClientSettings::new(broker), topic, |v: String| {
        OutputRecord::keyed(v.clone(), v)
    })
    .delivery_guarantee(DeliveryGuarantee::ExactlyOnce)
    .transactional_id_prefix(prefix)
    .build()
    .unwrap()
}

fn records(n: usize, tag: &str) -> Vec<String> {
    (0..n).map(|i| format!("{tag}-{i}")).collect()
}

/// Every visible value of `topic`, sorted, read with the raw reader
/// (which applies read_committed itself) once no transaction is open on
/// it. A commit returns when the coordinator has logged its decision; the
/// COMMIT markers reach the partitions after that, so reading at once can
/// find a committed transaction still open on some partition.
fn visible(broker: &str, topic: &str) -> Vec<String> {
    exactly_kafka_tools::oracle::settled(&ClientSettings::new(broker), topic).unwrap();
    visible_now(broker, topic)
}

/// Every visible value of `topic`, sorted, as the log is now: for a topic
/// with a transaction the test keeps open.
fn visible_now(broker: &str, topic: &str) -> Vec<String> {
    let mut values: Vec<String> = read_topic(broker, topic)
        .unwrap()
        .into_iter()
        .flat_map(|p| p.records)
        .map(|r| String::from_utf8(r.value.unwrap_or_default().to_vec()).unwrap())
        .collect();
    values.sort();
    values
}

/// What a plain rdkafka read_committed consumer of partitions
/// `0..partitions` sees within `wait`.
fn consumed_read_committed(broker: &str, topic: &str, partitions: i32, wait: Duration) -> usize {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", unique_topic("group"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + wait;
    let mut seen = 0;
    while Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            assert!(message.payload().is_some());
            seen += 1;
        }
    }
    seen
}

#[test]
fn a_pre_committed_transaction_is_invisible_until_it_is_committed() {
    let broker = broker();
    let topic = unique_topic("sink-visibility");
    create_topic(&broker, &topic, 2);
    let mut sink = exactly_once(&broker, &topic, &unique_topic("prefix"));
    let txn = pre_committed(&mut sink, records(10, "a"));
    assert!(txn.producer_id >= 0 && txn.epoch >= 0, "{txn:?}");
    assert!(!txn.partitions.is_empty(), "{txn:?}");

    let logs = read_topic(&broker, &topic).unwrap();
    assert!(
        logs.iter().all(|p| p.records.is_empty()),
        "pre-committed records are visible"
    );
    let open: usize = logs.iter().map(|p| p.open_transactions.len()).sum();
    assert!(open >= 1, "the transaction is not open: {logs:?}");
    assert_eq!(
        consumed_read_committed(&broker, &topic, 2, Duration::from_secs(2)),
        0
    );

    sink.commit(txn).unwrap();
    assert_eq!(visible(&broker, &topic), {
        let mut r = records(10, "a");
        r.sort();
        r
    });
    assert_eq!(
        consumed_read_committed(&broker, &topic, 2, Duration::from_secs(3)),
        10
    );
}

#[test]
fn recovery_commits_a_dead_producers_transaction_from_its_checkpointed_handle() {
    let broker = broker();
    let topic = unique_topic("sink-recovery");
    create_topic(&broker, &topic, 1);
    let prefix = unique_topic("prefix");
    // The sink and its producer die at the end of the statement, without
    // committing.
    let txn: KafkaTransaction =
        pre_committed(&mut exactly_once(&broker, &topic, &prefix), records(5, "r"));
    assert!(
        read_topic(&broker, &topic)
            .unwrap()
            .iter()
            .all(|p| p.records.is_empty()),
        "pre-committed records are visible"
    );
    let mut recovered = exactly_once(&broker, &topic, &prefix);
    recovered.open(&sink_context(Some(1))).unwrap();
    recovered.recover_and_commit(txn.clone()).unwrap();
    assert_eq!(visible(&broker, &topic).len(), 5);
}

/// Review finding 4 of issue 19: a savepoint older than the topic's
/// retention holds a transaction whose records are gone from the log.
/// Recovery cannot tell whether it was committed: by default the job
/// stops, saying so; with `recovery_trusts_checkpoint(true)` recovery takes
/// it as committed, and counts it.
#[test]
fn a_transaction_whose_records_retention_removed_stops_recovery_unless_the_checkpoint_is_trusted() {
    let broker = broker();
    let topic = unique_topic("sink-retention");
    create_topic(&broker, &topic, 1);
    let prefix = unique_topic("prefix");
    let recorded = {
        let mut sink = exactly_once(&broker, &topic, &prefix);
        let txn = pre_committed(&mut sink, records(3, "old"));
        let recorded = txn.clone();
        sink.commit(txn).unwrap();
        recorded
    };
    assert_eq!(visible(&broker, &topic).len(), 3);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker)
        .create()
        .unwrap();
    let mut everything = TopicPartitionList::new();
    everything
        .add_partition_offset(&topic, 0, Offset::End)
        .unwrap();
    futures_executor::block_on(admin.delete_records(
        &everything,
        &AdminOptions::new().request_timeout(Some(RDKAFKA_TIMEOUT)),
    ))
    .unwrap();

    let recover = |trust: bool| {
        let mut sink = KafkaSink::builder(ClientSettings::new(&broker), &topic, |v: String| {
            OutputRecord::value(v)
        })
        .delivery_guarantee(DeliveryGuarantee::ExactlyOnce)
        .transactional_id_prefix(&prefix)
        .recovery_trusts_checkpoint(trust)
        .build()
        .unwrap();
        sink.open(&sink_context(Some(1))).unwrap();
        let result = sink.recover_and_commit(recorded.clone());
        (result, sink.transactions_trusted_on_recovery())
    };
    let (stopped, trusted) = recover(false);
    let error = stopped.expect_err("the log cannot tell, and nothing is trusted");
    assert!(error.is::<Unrecoverable>(), "{error}");
    let text = error.to_string();
    assert!(
        text.contains("the log cannot tell") && text.contains("recovery_trusts_checkpoint(true)"),
        "{text}"
    );
    assert_eq!(trusted, 0);
    let (settled, trusted) = recover(true);
    settled.unwrap();
    assert_eq!(trusted, 1);
}

/// Review finding 5 of issue 19: a job restored from a checkpoint that an
/// earlier run wrote under another transactional-id prefix also aborts
/// the transactions that run left open under its prefix, which the
/// cleanup missed when it listed only the current prefix.
#[test]
fn the_start_up_cleanup_aborts_what_an_earlier_prefix_left_open() {
    let broker = broker();
    let topic = unique_topic("sink-old-prefix");
    create_topic(&broker, &topic, 1);
    let old = unique_topic("old");
    let lingering = producer(&broker, Some(&format!("{old}-0-3")));
    lingering.begin_transaction().unwrap();
    send(&lingering, &topic, &["left-open"]);
    let open = |what: &str| -> usize {
        read_topic(&broker, &topic)
            .unwrap_or_else(|e| panic!("{what}: {e}"))
            .iter()
            .map(|p| p.open_transactions.len())
            .sum()
    };
    assert_eq!(open("before"), 1);
    let restored = KafkaTransaction {
        transactional_id: Some(format!("{old}-0-0")),
        slot: 0,
        producer_id: -1,
        epoch: -1,
        checkpoint: 1,
        records: 0,
        topic: topic.clone(),
        partitions: BTreeMap::new(),
    };
    let mut sink = exactly_once(&broker, &topic, &unique_topic("new"));
    sink.open(&sink_context(Some(1))).unwrap();
    sink.recover_and_abort(restored).unwrap();
    sink.begin_transaction(2).unwrap();
    assert_eq!(
        open("after"),
        0,
        "the old prefix's transaction is still open"
    );
    drop(lingering);
}

/// FLINK-8132: librdkafka keeps one producer id and epoch for every
/// transaction of a producer, so an `EndTxn(commit)` for a recorded
/// transaction's triple would commit a later transaction on the same id.
/// Recovery checks with DescribeProducers that the producer's open
/// transaction is the recorded one, and here it is not: it sends no
/// `EndTxn`, reads the recorded one committed, and "late" stays invisible.
#[test]
fn recovery_never_commits_a_later_transaction_on_the_same_id() {
    let broker = broker();
    let topic = unique_topic("sink-8132");
    create_topic(&broker, &topic, 1);
    let prefix = unique_topic("prefix");
    let single = || {
        KafkaSink::builder(ClientSettings::new(&broker), &topic, |v: String| {
            OutputRecord::value(v)
        })
        .delivery_guarantee(DeliveryGuarantee::ExactlyOnce)
        .transactional_id_prefix(&prefix)
        .producer_pool_size(1)
        .build()
        .unwrap()
    };
    let recorded = {
        let mut sink = single();
        let t1 = pre_committed(&mut sink, records(2, "early"));
        let recorded = t1.clone();
        sink.commit(t1).unwrap();
        let mut t3 = sink.begin_transaction(3).unwrap();
        assert_eq!(t3.transactional_id, recorded.transactional_id);
        sink.write(&mut t3, records(1, "late")).unwrap();
        sink.pre_commit(&mut t3).unwrap();
        assert_eq!(
            (t3.producer_id, t3.epoch),
            (recorded.producer_id, recorded.epoch),
            "librdkafka reuses the producer id and epoch"
        );
        recorded
        // The process is abandoned here, "late" open.
    };
    let recovered = recover_transaction(&ClientSettings::new(&broker), &recorded).unwrap();
    assert_eq!(
        visible_now(&broker, &topic),
        ["early-0", "early-1"],
        "recovery committed the later transaction ({recovered:?})"
    );
    assert!(
        recovered.answer == "NOT_SENT" && recovered.committed_earlier,
        "{recovered:?}"
    );
    // A restarted sink's first transaction initialises the id, which
    // aborts "late" for good.
    let mut restarted = single();
    restarted.open(&sink_context(Some(1))).unwrap();
    restarted.begin_transaction(4).unwrap();
    assert_eq!(visible(&broker, &topic), ["early-0", "early-1"]);
}

/// Recovery tries every bootstrap address, as librdkafka does: the first
/// one being down does not make a healthy cluster unreachable.
#[test]
fn recovery_reaches_the_cluster_when_the_first_bootstrap_address_is_down() {
    let broker = broker();
    let topic = unique_topic("sink-recovery-bootstrap");
    create_topic(&broker, &topic, 1);
    let prefix = unique_topic("prefix");
    let txn = pre_committed(&mut exactly_once(&broker, &topic, &prefix), records(4, "b"));
    let down_first = ClientSettings {
        timeout: Duration::from_secs(5),
        ..ClientSettings::new(format!("127.0.0.1:1,{broker}"))
    };
    let recovered = recover_transaction(&down_first, &txn)
        .unwrap_or_else(|e| panic!("recovery with a dead first address: {e}"));
    assert_eq!(recovered.answer, "NONE");
    assert_eq!(visible(&broker, &topic).len(), 4);
}

#[test]
fn a_zombie_sink_is_fenced_stops_for_good_and_a_restarted_sink_works() {
    let broker = broker();
    let topic = unique_topic("sink-zombie");
    create_topic(&broker, &topic, 1);
    let prefix = unique_topic("prefix");
    let mut zombie = exactly_once(&broker, &topic, &prefix);
    zombie.open(&sink_context(None)).unwrap();
    let mut txn = zombie.begin_transaction(1).unwrap();
    zombie.write(&mut txn, records(3, "z")).unwrap();
    zombie.pre_commit(&mut txn).unwrap();

    // The successor's first transaction initialises the ids, which fences
    // the zombie and aborts its transaction.
    let mut successor = exactly_once(&broker, &topic, &prefix);
    successor.open(&sink_context(None)).unwrap();
    let mut next = successor.begin_transaction(1).unwrap();
    successor.write(&mut next, records(2, "s")).unwrap();
    successor.pre_commit(&mut next).unwrap();

    let started = Instant::now();
    let err = zombie.commit(txn).unwrap_err();
    assert!(
        started.elapsed() < RDKAFKA_TIMEOUT,
        "the fenced commit took {:?}",
        started.elapsed()
    );
    assert!(
        err.is::<Unrecoverable>(),
        "fencing must stop the job, not restart it: {err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("commit of transaction") && text.contains("was fenced"),
        "{text}"
    );
    successor.commit(next).unwrap();
    assert_eq!(
        visible(&broker, &topic),
        ["s-0", "s-1"],
        "only the successor's records are visible"
    );

    // A restart clones the sink from its prototype, without the fenced
    // producers: its transactions work.
    let mut restarted = zombie.clone();
    restarted.open(&sink_context(None)).unwrap();
    let mut again = restarted.begin_transaction(2).unwrap();
    restarted.write(&mut again, records(1, "r")).unwrap();
    restarted.pre_commit(&mut again).unwrap();
    restarted.commit(again).unwrap();
    assert_eq!(visible(&broker, &topic), ["r-0", "s-0", "s-1"]);
}

fn job_config(dir: &std::path::Path) -> JobConfig {
    JobConfig::new()
        .checkpoint_interval(Duration::from_millis(200))
        .checkpoint_timeout(Duration::from_secs(60))
        .checkpoint_dir(dir)
        .restart_strategy(RestartStrategy::none())
        .batch_size(50)
}

#[exactly::operator]
fn slowly(value: String) -> String {
    std::thread::sleep(Duration::from_micros(300));
    value
}

fn job(dir: &std::path::Path, values: Vec<String>, sink: KafkaSink<String>) -> Job {
    let job = Job::new("kafka-sink", job_config(dir));
    job.source(VecSource::new(values))
        .operator(slowly)
        .parallelism(2)
        .sink(sink);
    job
}

#[test]
fn a_job_writes_every_record_exactly_once_even_across_a_stop_and_restart() {
    let broker = broker();
    let topic = unique_topic("sink-job");
    create_topic(&broker, &topic, 3);
    let prefix = unique_topic("prefix");
    let dir = tempfile::tempdir().unwrap();
    let values = records(3000, "job");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let handle = job(
            dir.path(),
            values.clone(),
            exactly_once(&broker, &topic, &prefix),
        )
        .spawn()
        .unwrap();
        while handle.metrics().checkpoints_completed < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        handle.stop();
        handle.join().await.unwrap();
    });
    let after_stop = visible(&broker, &topic).len();
    assert!(
        after_stop > 0 && after_stop < values.len(),
        "stopped after {after_stop}"
    );
    job(
        dir.path(),
        values.clone(),
        exactly_once(&broker, &topic, &prefix),
    )
    .run()
    .unwrap();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for value in visible(&broker, &topic) {
        *counts.entry(value).or_default() += 1;
    }
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "records written twice: {doubled:?}");
    let lost: Vec<_> = values.iter().filter(|v| !counts.contains_key(*v)).collect();
    assert!(
        lost.is_empty(),
        "{} records lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
}

/// An exactly-once sink with the given `transaction.timeout.ms`.
fn timed_sink(broker: &str, topic: &str, timeout: Duration) -> KafkaSink<String> {
    KafkaSink::builder(ClientSettings::new(broker), topic, |v: String| {
        OutputRecord::value(v)
    })
    .delivery_guarantee(DeliveryGuarantee::ExactlyOnce)
    .transactional_id_prefix(unique_topic("prefix"))
    .transaction_timeout(timeout)
    .build()
    .unwrap()
}

/// The broker's `transaction.max.timeout.ms` is read with DescribeConfigs
/// (scripts/kafka-up sets 1200000, not Kafka's default of 900000), and a
/// larger sink timeout stops the job at start, without waiting for a
/// timeout.
#[test]
fn preflight_refuses_a_transaction_timeout_above_the_brokers_maximum() {
    let broker = broker();
    let topic = unique_topic("sink-max-timeout");
    create_topic(&broker, &topic, 1);
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let err = preflight_error(
        job_config(dir.path()),
        timed_sink(&broker, &topic, Duration::from_millis(1_300_000)),
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the check waited {:?}: it must not wait for a timeout",
        started.elapsed()
    );
    assert!(
        err.contains(
            "transaction.timeout.ms = 1300000 ms exceeds the broker's transaction.max.timeout.ms = 1200000 ms \
             (reported by the broker)"
        ),
        "{err}"
    );
    let fits = Job::new("preflight-fits", job_config(dir.path()));
    fits.source(VecSource::new(records(3, "p")))
        .sink(timed_sink(
            &broker,
            &topic,
            Duration::from_millis(1_200_000),
        ));
    fits.run()
        .expect("a timeout equal to the broker's maximum is accepted");
}

fn preflight_error(config: JobConfig, sink: KafkaSink<String>) -> String {
    let job = Job::new("preflight", config);
    job.source(VecSource::new(records(3, "p"))).sink(sink);
    let started = Instant::now();
    let err = job.run().unwrap_err().to_string();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the error took {:?}",
        started.elapsed()
    );
    err
}

#[test]
fn preflight_stops_a_job_that_cannot_be_exactly_once() {
    let broker = broker();
    let topic = unique_topic("sink-preflight");
    create_topic(&broker, &topic, 1);
    let dir = tempfile::tempdir().unwrap();
    let sink = |timeout: Duration| timed_sink(&broker, &topic, timeout);
    let minute = Duration::from_secs(60);

    let err = preflight_error(JobConfig::new(), sink(15 * minute));
    assert!(
        err.contains("checkpointing is off") && err.contains("JobConfig::checkpoint_interval"),
        "{err}"
    );

    let err = preflight_error(job_config(dir.path()), sink(Duration::from_secs(30)));
    assert!(
        err.contains("transaction.timeout.ms = 30000 ms does not outlast")
            && err.contains(
                "max(checkpoint interval 200 ms, checkpoint timeout 60000 ms + min pause 0 ms) + checkpoint timeout = 120000 ms"
            ),
        "{err}"
    );

    let missing = KafkaSink::builder(
        ClientSettings::new(&broker),
        unique_topic("missing"),
        |v: String| OutputRecord::value(v),
    )
    .delivery_guarantee(DeliveryGuarantee::AtLeastOnce)
    .build()
    .unwrap();
    let err = preflight_error(job_config(dir.path()), missing);
    assert!(
        err.contains("do not exist") && err.contains("create_missing_topic"),
        "{err}"
    );

    let unreachable = ClientSettings {
        timeout: Duration::from_secs(3),
        ..ClientSettings::new("127.0.0.1:1")
    };
    let nowhere = KafkaSink::builder(unreachable, &topic, |v: String| OutputRecord::value(v))
        .delivery_guarantee(DeliveryGuarantee::AtLeastOnce)
        .build()
        .unwrap();
    let err = preflight_error(job_config(dir.path()), nowhere);
    assert!(
        err.contains("127.0.0.1:1") && err.contains("did not answer"),
        "{err}"
    );

    let same_prefix = Job::new("two-sinks", job_config(dir.path()));
    let prefix = unique_topic("shared");
    same_prefix
        .source(VecSource::new(records(1, "a")))
        .sink(exactly_once(&broker, &topic, &prefix));
    same_prefix
        .source(VecSource::new(records(1, "b")))
        .sink(exactly_once(&broker, &topic, &prefix));
    let err = same_prefix.run().unwrap_err().to_string();
    assert!(
        err.contains(&format!("transactional-id prefix `{prefix}`")) && err.contains("both"),
        "{err}"
    );

    let no_prefix = KafkaSink::builder(ClientSettings::new(&broker), &topic, |v: String| {
        OutputRecord::value(v)
    })
    .delivery_guarantee(DeliveryGuarantee::ExactlyOnce)
    .build()
    .unwrap_err();
    assert!(
        matches!(no_prefix, SinkConfigError::MissingPrefix { .. }),
        "{no_prefix}"
    );
}

/// A producer queue of five records, so that nearly every batch fills it:
/// the sink enqueues what fits on the task's thread, then sends the rest,
/// beginning with the record that found the queue full, on the blocking
/// pool. Every record arrives once, in order.
#[test]
fn records_that_find_the_producer_queue_full_arrive_once_and_in_order() {
    let broker = broker();
    let topic = unique_topic("sink-queue-full");
    create_topic(&broker, &topic, 1);
    let dir = tempfile::tempdir().unwrap();
    let settings = ClientSettings::new(&broker)
        .property("queue.buffering.max.messages", "5")
        .property("linger.ms", "20");
    let sink = KafkaSink::builder(settings, &topic, |v: String| OutputRecord::value(v))
        .delivery_guarantee(DeliveryGuarantee::ExactlyOnce)
        .transactional_id_prefix(unique_topic("queue-full"))
        .build()
        .unwrap();
    let values = records(2000, "full");
    let job = Job::new("kafka-sink-queue-full", job_config(dir.path()));
    job.source(VecSource::new(values.clone())).sink(sink);
    job.run().unwrap();
    let in_order: Vec<String> = read_topic(&broker, &topic)
        .unwrap()
        .into_iter()
        .flat_map(|p| p.records)
        .map(|r| String::from_utf8(r.value.unwrap_or_default().to_vec()).unwrap())
        .collect();
    assert_eq!(in_order, values);
}

#[test]
fn at_least_once_and_no_guarantee_deliver_every_record_without_transactions() {
    let broker = broker();
    for guarantee in [DeliveryGuarantee::AtLeastOnce, DeliveryGuarantee::None] {
        let topic = unique_topic("sink-plain");
        create_topic(&broker, &topic, 2);
        let dir = tempfile::tempdir().unwrap();
        let sink = KafkaSink::builder(ClientSettings::new(&broker), &topic, |v: String| {
            OutputRecord::value(v)
        })
        .delivery_guarantee(guarantee)
        .build()
        .unwrap();
        let values = records(500, "plain");
        job(dir.path(), values.clone(), sink).run().unwrap();
        let logs = read_topic(&broker, &topic).unwrap();
        assert!(
            logs.iter()
                .all(|p| p.producers.values().all(|s| s.committed_transactions == 0)),
            "{guarantee:?} used transactions"
        );
        let mut expected = values;
        expected.sort();
        assert_eq!(visible(&broker, &topic), expected, "{guarantee:?}");
    }
}

/// Headers written by the sink arrive with the record: an input record's
/// headers passed through (a repeated key and a null value included), and
/// one the pipeline adds; a source that ignores headers reads none.
#[test]
fn output_records_carry_headers_and_pass_input_headers_through() {
    let broker = broker();
    let (input, output) = (unique_topic("headers-in"), unique_topic("headers-out"));
    create_topic(&broker, &input, 1);
    create_topic(&broker, &output, 1);
    let producer = crate::common::producer(&broker, None);
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "trace",
            value: Some("t-1"),
        })
        .insert(Header {
            key: "trace",
            value: Some("t-2"),
        })
        .insert(Header::<&str> {
            key: "empty",
            value: None,
        });
    producer
        .send(
            BaseRecord::to(&input)
                .key("k")
                .payload("v")
                .headers(headers),
        )
        .unwrap();
    producer.flush(RDKAFKA_TIMEOUT).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let settings = ClientSettings::new(&broker);
    let source = |topic: &str| {
        KafkaSource::builder(settings.clone())
            .topic(topic)
            .deserializer(Utf8)
            .bounded()
            .build()
            .unwrap()
    };
    let sink = KafkaSink::builder(settings.clone(), &output, |r: KafkaRecord<String>| {
        OutputRecord::value(r.value)
            .with_headers(r.headers)
            .with_header("added", Some(b"by-the-job".to_vec()))
    })
    .delivery_guarantee(DeliveryGuarantee::ExactlyOnce)
    .transactional_id_prefix(unique_topic("headers"))
    .build()
    .unwrap();
    let pass = Job::new("headers-pass", job_config(&dir.path().join("pass")));
    pass.source(source(&input)).sink(sink);
    pass.run().unwrap();

    let read = CollectSink::<KafkaRecord<String>>::new();
    let check = Job::new("headers-read", job_config(&dir.path().join("read")));
    check.source(source(&output)).sink(read.clone());
    check.run().unwrap();
    let header = |key: &str, value: Option<&[u8]>| KafkaHeader {
        key: key.to_owned(),
        value: value.map(<[u8]>::to_vec),
    };
    let records = read.committed();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].value, "v");
    assert_eq!(
        records[0].headers,
        vec![
            header("trace", Some(b"t-1")),
            header("trace", Some(b"t-2")),
            header("empty", None),
            header("added", Some(b"by-the-job")),
        ]
    );

    // A source told to ignore headers reads the same record without them.
    let bare = CollectSink::<KafkaRecord<String>>::new();
    let ignoring = KafkaSource::builder(settings)
        .topic(&output)
        .deserializer(Utf8)
        .ignore_headers()
        .bounded()
        .build()
        .unwrap();
    let check = Job::new("headers-ignored", job_config(&dir.path().join("ignored")));
    check.source(ignoring).sink(bare.clone());
    check.run().unwrap();
    let records = bare.committed();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].value, "v");
    assert!(records[0].headers.is_empty(), "{:?}", records[0].headers);
}
