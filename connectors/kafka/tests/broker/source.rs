//! The Kafka source against the broker: exactly-once positions across a
//! graceful stop and a change of parallelism, partition discovery, the
//! deserialization policies, consumer-group commits for monitoring only,
//! read_committed by default, and the start-up errors.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use exactly::prelude::*;
use exactly::{Error, MetricsSnapshot};
use exactly_kafka::client::ClientSettings;
use exactly_kafka::deserialize::{DeserializeErrorPolicy, Json, Utf8};
use exactly_kafka::source::{KafkaRecord, KafkaSource, dead_letter_headers};
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::Producer;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::common::{
    RDKAFKA_TIMEOUT, broker, create_topic, producer, read_topic, send_to, unique_topic,
};

/// How long a test waits for a job to get somewhere before giving up.
const PATIENCE: Duration = Duration::from_secs(60);

/// In [`stop_and_resume`], the first run reads `seq-00000` to `seq-00299`
/// and is stopped once something is committed. Records from `seq-00060` to
/// `seq-00299` take 10 ms each, so about a second of work remains when the
/// stop arrives even at parallelism 3: the stop lands mid-stream. Other
/// records take 1 ms. Batches are small (see [`config`]), so that a
/// subtask never blocks its tokio worker long enough to hold up the
/// checkpoint coordinator.
#[operator]
fn slowly(record: KafkaRecord<String>) -> KafkaRecord<String> {
    let seq: usize = record
        .value
        .strip_prefix("seq-")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let pause = if (60..300).contains(&seq) { 10 } else { 1 };
    std::thread::sleep(Duration::from_millis(pause));
    record
}

/// A runtime with a worker more than the largest parallelism used, so that
/// subtasks sleeping in [`slowly`] never starve the checkpoint coordinator.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn config(parallelism: usize, checkpoints: &Path) -> JobConfig {
    JobConfig::new()
        .parallelism(parallelism)
        .checkpoint_interval(Duration::from_millis(50))
        .checkpoint_dir(checkpoints)
        .restart_strategy(RestartStrategy::none())
        .batch_size(4)
}

/// Runs `job` until `done` holds (or [`PATIENCE`] has passed), then stops
/// it gracefully and returns what it ended with.
fn run_until(
    job: Job,
    done: impl Fn(&MetricsSnapshot) -> bool,
) -> exactly::Result<MetricsSnapshot> {
    runtime().block_on(async move {
        let handle = job.spawn()?;
        let deadline = Instant::now() + PATIENCE;
        while !done(&handle.metrics()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        handle.stop();
        handle.join().await
    })
}

/// Runs `job` until it ends by itself (at most [`PATIENCE`]).
fn run_to_end(job: Job) -> exactly::Result<MetricsSnapshot> {
    runtime().block_on(async move {
        let handle = job.spawn()?;
        tokio::time::timeout(PATIENCE, handle.join())
            .await
            .expect("the job ends by itself")
    })
}

/// Sends `values` to `topic`, value `i` to partition `i % partitions`.
fn produce(broker: &str, topic: &str, partitions: i32, values: &[String]) {
    let producer = producer(broker, None);
    for partition in 0..partitions {
        let mine: Vec<&str> = values
            .iter()
            .skip(partition as usize)
            .step_by(partitions as usize)
            .map(String::as_str)
            .collect();
        send_to(&producer, topic, partition, &mine);
    }
}

/// Waits (at most [`PATIENCE`]) until `done` holds.
async fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "waited {PATIENCE:?} for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sequence(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("seq-{i:05}")).collect()
}

fn utf8_source(broker: &str, topic: &str) -> KafkaSource<Utf8> {
    KafkaSource::builder(ClientSettings::new(broker))
        .topics([topic])
        .deserializer(Utf8)
        .partition_discovery_interval(Duration::from_secs(1))
        .build()
        .unwrap()
}

/// The values committed, sorted, after checking that no record (topic,
/// partition, offset) was committed twice.
fn committed_values(sink: &CollectSink<KafkaRecord<String>>) -> Vec<String> {
    let mut seen = BTreeMap::new();
    for record in sink.committed() {
        let previous = seen.insert(
            (record.topic.clone(), record.partition, record.offset),
            record.value.clone(),
        );
        assert!(
            previous.is_none(),
            "{}/{} offset {} committed twice ({})",
            record.topic,
            record.partition,
            record.offset,
            record.value
        );
    }
    let mut values: Vec<String> = seen.into_values().collect();
    values.sort();
    values
}

/// Reads 300 records with parallelism `before`, stops mid-stream, adds 300
/// more, resumes with parallelism `after`: every record exactly once.
fn stop_and_resume(before: usize, after: usize) {
    let broker = broker();
    let topic = unique_topic("source-resume");
    create_topic(&broker, &topic, 3);
    let checkpoints = tempfile::tempdir().unwrap();
    let sink = CollectSink::<KafkaRecord<String>>::new();
    let job = |parallelism: usize| {
        let job = Job::new("source-resume", config(parallelism, checkpoints.path()));
        job.source(utf8_source(&broker, &topic))
            .operator(slowly)
            .sink(sink.clone());
        job
    };

    produce(&broker, &topic, 3, &sequence(0..300));
    let first = run_until(job(before), |m| {
        m.checkpoints_completed >= 1 && !sink.committed().is_empty()
    })
    .unwrap();
    let after_first = sink.committed().len();
    assert!(
        first.checkpoints_completed >= 1 && (1..300).contains(&after_first),
        "the first run should stop mid-stream after a checkpoint: {after_first} of 300 committed, {first:?}"
    );

    produce(&broker, &topic, 3, &sequence(300..600));
    run_until(job(after), |_| sink.committed().len() >= 600).unwrap();
    assert_eq!(committed_values(&sink), sequence(0..600));
}

#[test]
fn a_stopped_job_resumes_at_the_checkpointed_offsets() {
    stop_and_resume(2, 2);
}

#[test]
fn a_restore_with_more_subtasks_redistributes_the_offsets() {
    stop_and_resume(2, 3);
}

#[test]
fn a_restore_with_fewer_subtasks_redistributes_the_offsets() {
    stop_and_resume(3, 1);
}

/// Partitions added to a topic while the job runs are discovered and read
/// from their earliest offset (FLIP-288): records written to the new
/// partitions before discovery finds them are not skipped.
#[test]
fn partitions_added_while_the_job_runs_are_read_from_the_earliest_offset() {
    let broker = broker();
    let topic = unique_topic("source-grow");
    create_topic(&broker, &topic, 1);
    produce(&broker, &topic, 1, &sequence(0..20));
    let checkpoints = tempfile::tempdir().unwrap();
    let sink = CollectSink::<KafkaRecord<String>>::new();
    let job = Job::new("source-grow", config(2, checkpoints.path()));
    job.source(utf8_source(&broker, &topic)).sink(sink.clone());
    runtime().block_on(async {
        let handle = job.spawn().unwrap();
        wait_for("the first 20 records", || sink.committed().len() >= 20).await;
        add_partitions(&broker, &topic, 3);
        produce(&broker, &topic, 3, &sequence(20..80));
        wait_for("the records of the new partitions", || {
            sink.committed().len() >= 80
        })
        .await;
        handle.stop();
        handle.join().await.unwrap();
    });
    assert_eq!(committed_values(&sink), sequence(0..80));
    let partitions: BTreeSet<i32> = sink.committed().iter().map(|r| r.partition).collect();
    assert_eq!(partitions, BTreeSet::from([0, 1, 2]));
}

/// A restored offset that is no longer in the log (retention, here
/// DeleteRecords) stops the job naming the partition, the offset and the
/// log's range, instead of silently starting over at the earliest offset;
/// with the opt-in, the partition resumes from its earliest offset.
#[test]
fn a_restored_offset_deleted_from_the_log_stops_the_job_unless_reset_is_allowed() {
    let broker = broker();
    let topic = unique_topic("source-deleted");
    create_topic(&broker, &topic, 1);
    produce(&broker, &topic, 1, &sequence(0..300));
    let checkpoints = tempfile::tempdir().unwrap();
    let sink = CollectSink::<KafkaRecord<String>>::new();
    let job = |source: KafkaSource<Utf8>| {
        let job = Job::new("source-deleted", config(1, checkpoints.path()));
        job.source(source).operator(slowly).sink(sink.clone());
        job
    };
    run_until(job(utf8_source(&broker, &topic)), |m| {
        m.checkpoints_completed >= 1 && !sink.committed().is_empty()
    })
    .unwrap();
    let resume_at = sink.committed().len();
    assert!(resume_at < 250, "stopped too late: {resume_at}");
    delete_records_before(&broker, &topic, 250);

    let err = run_to_end(job(utf8_source(&broker, &topic)))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("{topic}/0"))
            && err.contains(&format!("resumes at offset {resume_at}"))
            && err.contains("250..300")
            && err.contains("reset_out_of_range_offsets_to_earliest"),
        "{err}"
    );

    let resetting = KafkaSource::builder(ClientSettings::new(&broker))
        .topics([&topic])
        .deserializer(Utf8)
        .reset_out_of_range_offsets_to_earliest()
        .build()
        .unwrap();
    run_until(job(resetting), |_| sink.committed().len() >= resume_at + 50).unwrap();
    let after: Vec<String> = sink.committed()[resume_at..]
        .iter()
        .map(|r| r.value.clone())
        .collect();
    assert_eq!(after, sequence(250..300));
}

/// Deletes the records of partition 0 of `topic` before `offset`.
fn delete_records_before(broker: &str, topic: &str, offset: i64) {
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker)
        .create()
        .expect("an rdkafka admin client");
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Offset(offset))
        .expect("a partition offset");
    let options = AdminOptions::new().operation_timeout(Some(RDKAFKA_TIMEOUT));
    let deleted = futures_executor::block_on(admin.delete_records(&list, &options))
        .unwrap_or_else(|e| panic!("deleting records of {topic}: {e}"));
    for element in deleted.elements() {
        element
            .error()
            .unwrap_or_else(|e| panic!("deleting records of {topic}: {e}"));
    }
}

/// Grows `topic` to `partitions` partitions (CreatePartitions).
fn add_partitions(broker: &str, topic: &str, partitions: usize) {
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker)
        .create()
        .expect("an rdkafka admin client");
    let options = AdminOptions::new().operation_timeout(Some(RDKAFKA_TIMEOUT));
    let results = futures_executor::block_on(
        admin.create_partitions([&NewPartitions::new(topic, partitions)], &options),
    )
    .unwrap_or_else(|e| panic!("adding partitions to {topic}: {e}"));
    for result in results {
        result.unwrap_or_else(|(name, code)| panic!("adding partitions to {name}: {code}"));
    }
}

/// Partitions the checkpoint does not know are read from their earliest
/// offset (FLIP-288), here the partitions of a topic added to the source
/// between two runs, which already hold records.
#[test]
fn partitions_unknown_to_the_checkpoint_are_read_from_the_earliest_offset() {
    let broker = broker();
    let old = unique_topic("source-old");
    let added = unique_topic("source-added");
    create_topic(&broker, &old, 3);
    create_topic(&broker, &added, 2);
    produce(&broker, &old, 3, &sequence(0..30));
    produce(&broker, &added, 2, &sequence(30..50));
    let checkpoints = tempfile::tempdir().unwrap();
    let sink = CollectSink::<KafkaRecord<String>>::new();
    let job = |topics: &[&String]| {
        let source = KafkaSource::builder(ClientSettings::new(&broker))
            .topics(topics.iter().copied())
            .deserializer(Utf8)
            .build()
            .unwrap();
        let job = Job::new("source-added", config(2, checkpoints.path()));
        job.source(source).sink(sink.clone());
        job
    };
    run_until(job(&[&old]), |_| sink.committed().len() >= 30).unwrap();
    assert_eq!(committed_values(&sink), sequence(0..30));

    produce(&broker, &old, 3, &sequence(50..80));
    run_until(job(&[&old, &added]), |_| sink.committed().len() >= 80).unwrap();
    assert_eq!(committed_values(&sink), sequence(0..80));
}

/// librdkafka's in-process mock cluster stands in for a broker that goes
/// away mid-run (the shared test broker must stay up): the source fails
/// with a clear error within about its client timeout, not a hang.
#[test]
fn a_broker_that_goes_away_fails_the_source_within_the_client_timeout() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("mocked", 1, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    produce(&bootstrap, "mocked", 1, &sequence(0..10));
    let mut settings = ClientSettings::new(&bootstrap);
    settings.timeout = Duration::from_secs(3);
    let source = KafkaSource::builder(settings)
        .topics(["mocked"])
        .deserializer(Utf8)
        .build()
        .unwrap();
    let checkpoints = tempfile::tempdir().unwrap();
    let sink = CollectSink::<KafkaRecord<String>>::new();
    let job = Job::new("source-broker-down", config(1, checkpoints.path()));
    job.source(source).sink(sink.clone());
    let (error, took) = runtime().block_on(async {
        let handle = job.spawn().unwrap();
        wait_for("10 records", || sink.committed().len() >= 10).await;
        cluster.broker_down(1).unwrap();
        let down = Instant::now();
        let ended = tokio::time::timeout(PATIENCE, handle.join())
            .await
            .expect("the job fails by itself");
        (ended.unwrap_err(), down.elapsed())
    });
    let text = error.to_string();
    assert!(
        text.contains(&bootstrap) && text.contains("unusable"),
        "{text}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Reading {
    seq: u64,
}

/// Ten records on one partition; offsets 3 and 7 are not JSON.
fn readings_with_two_bad_ones(broker: &str, topic: &str) -> Vec<String> {
    create_topic(broker, topic, 1);
    let values: Vec<String> = (0..10)
        .map(|i| {
            if i == 3 || i == 7 {
                format!("not json {i}")
            } else {
                format!(r#"{{"seq":{i}}}"#)
            }
        })
        .collect();
    produce(broker, topic, 1, &values);
    values
}

fn json_source(
    broker: &str,
    topic: &str,
    policy: DeserializeErrorPolicy,
) -> KafkaSource<Json<Reading>> {
    KafkaSource::builder(ClientSettings::new(broker))
        .topics([topic])
        .deserializer(Json::<Reading>::new())
        .on_deserialize_error(policy)
        .build()
        .unwrap()
}

fn good_seqs(sink: &CollectSink<KafkaRecord<Reading>>) -> Vec<u64> {
    let mut seqs: Vec<u64> = sink.committed().iter().map(|r| r.value.seq).collect();
    seqs.sort_unstable();
    seqs
}

const GOOD: [u64; 8] = [0, 1, 2, 4, 5, 6, 8, 9];

#[test]
fn a_record_that_does_not_deserialize_fails_the_job_naming_its_offset() {
    let broker = broker();
    let topic = unique_topic("source-fail");
    readings_with_two_bad_ones(&broker, &topic);
    let checkpoints = tempfile::tempdir().unwrap();
    let job = Job::new("source-fail", config(1, checkpoints.path()));
    job.source(json_source(&broker, &topic, DeserializeErrorPolicy::Fail))
        .sink(CollectSink::new());
    let error = run_to_end(job).unwrap_err().to_string();
    assert!(
        error.contains(&format!("{topic}/0 offset 3")) && error.contains("not valid JSON"),
        "{error}"
    );
}

#[test]
fn skipped_records_are_counted_exactly() {
    let broker = broker();
    let topic = unique_topic("source-skip");
    readings_with_two_bad_ones(&broker, &topic);
    let checkpoints = tempfile::tempdir().unwrap();
    let source = json_source(&broker, &topic, DeserializeErrorPolicy::Skip);
    let metrics = source.metrics();
    let sink = CollectSink::new();
    let job = Job::new("source-skip", config(1, checkpoints.path()));
    job.source(source).sink(sink.clone());
    run_until(job, |_| sink.committed().len() >= GOOD.len()).unwrap();
    assert_eq!(good_seqs(&sink), GOOD);
    assert_eq!(metrics.skipped(), 2);
    assert_eq!(metrics.dead_lettered(), 0);
}

#[test]
fn bad_records_go_to_the_dead_letter_topic_with_where_and_why() {
    let broker = broker();
    let topic = unique_topic("source-dlq-in");
    let dead_letters = unique_topic("source-dlq");
    let values = readings_with_two_bad_ones(&broker, &topic);
    create_topic(&broker, &dead_letters, 1);
    let checkpoints = tempfile::tempdir().unwrap();
    let source = json_source(
        &broker,
        &topic,
        DeserializeErrorPolicy::DeadLetter {
            topic: dead_letters.clone(),
        },
    );
    let metrics = source.metrics();
    let sink = CollectSink::new();
    let job = Job::new("source-dlq", config(1, checkpoints.path()));
    job.source(source).sink(sink.clone());
    run_until(job, |_| sink.committed().len() >= GOOD.len()).unwrap();
    assert_eq!(good_seqs(&sink), GOOD);
    assert_eq!(metrics.dead_lettered(), 2);

    let logs = read_topic(&broker, &dead_letters).unwrap();
    let rejected: Vec<_> = logs.into_iter().flat_map(|p| p.records).collect();
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    for (record, offset) in rejected.iter().zip([3usize, 7]) {
        let header = |key: &str| {
            record
                .headers
                .iter()
                .find(|h| h.key == key)
                .and_then(|h| h.value.as_ref())
                .map(|v| String::from_utf8(v.to_vec()).unwrap())
                .unwrap_or_else(|| panic!("header {key} missing in {record:?}"))
        };
        assert_eq!(
            record.value.as_deref(),
            Some(values[offset].as_bytes()),
            "the raw value"
        );
        assert_eq!(record.key.as_deref(), Some(values[offset].as_bytes()));
        assert_eq!(header(dead_letter_headers::TOPIC), topic);
        assert_eq!(header(dead_letter_headers::PARTITION), "0");
        assert_eq!(header(dead_letter_headers::OFFSET), offset.to_string());
        assert!(header(dead_letter_headers::ERROR).contains("not valid JSON"));
    }
}

/// The group's committed offsets follow the checkpoints, and a job with a
/// fresh checkpoint directory ignores them: it starts at the earliest
/// offsets again.
#[test]
fn group_offsets_are_committed_for_monitoring_and_never_used_to_restore() {
    let broker = broker();
    let topic = unique_topic("source-group");
    let group = unique_topic("group");
    create_topic(&broker, &topic, 3);
    produce(&broker, &topic, 3, &sequence(0..30));
    let run = || {
        let source = KafkaSource::builder(ClientSettings::new(&broker))
            .topics([&topic])
            .deserializer(Utf8)
            .group_id(&group)
            .build()
            .unwrap();
        let metrics = source.metrics();
        let checkpoints = tempfile::tempdir().unwrap();
        let sink = CollectSink::new();
        let job = Job::new("source-group", config(2, checkpoints.path()));
        job.source(source).sink(sink.clone());
        run_until(job, |_| sink.committed().len() >= 30).unwrap();
        assert_eq!(committed_values(&sink), sequence(0..30));
        metrics
    };
    let metrics = run();
    assert!(metrics.offset_commits() >= 1, "no offset commit succeeded");
    assert_eq!(metrics.offset_commit_failures(), 0);

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker)
        .set("group.id", &group)
        .create()
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    for partition in 0..3 {
        partitions.add_partition(&topic, partition);
    }
    // The commit of the last checkpoint may still be on its way.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let committed = consumer
            .committed_offsets(partitions.clone(), RDKAFKA_TIMEOUT)
            .unwrap();
        let offsets: Vec<Offset> = committed.elements().iter().map(|e| e.offset()).collect();
        if offsets == [Offset::Offset(10); 3] {
            break;
        }
        assert!(Instant::now() < deadline, "group offsets {offsets:?}");
        std::thread::sleep(Duration::from_millis(50));
    }

    run();
}

/// read_committed (the default) hides an open transaction; records of
/// committed transactions arrive once the commit is written.
/// (With this broker, records of *aborted* transactions would arrive as
/// well: see docs/kafka-broker.md.)
#[test]
fn read_committed_holds_back_an_open_transaction_until_it_commits() {
    let broker = broker();
    let topic = unique_topic("source-txn");
    create_topic(&broker, &topic, 1);
    produce(&broker, &topic, 1, &sequence(0..5));
    let transactional = producer(&broker, Some(&unique_topic("txn")));
    transactional.begin_transaction().unwrap();
    send_to(&transactional, &topic, 0, &["txn-1", "txn-2"]);

    let checkpoints = tempfile::tempdir().unwrap();
    let sink = CollectSink::<KafkaRecord<String>>::new();
    let job = Job::new("source-txn", config(1, checkpoints.path()));
    job.source(utf8_source(&broker, &topic)).sink(sink.clone());
    let ended = runtime().block_on(async {
        let handle = job.spawn().unwrap();
        wait_for("5 records", || sink.committed().len() >= 5).await;
        let checkpoints_then = handle.metrics().checkpoints_completed;
        wait_for("3 more checkpoints", || {
            handle.metrics().checkpoints_completed >= checkpoints_then + 3
        })
        .await;
        let before_commit = committed_values(&sink);
        let transactional = tokio::task::spawn_blocking(move || {
            transactional.commit_transaction(RDKAFKA_TIMEOUT).unwrap();
        });
        transactional.await.unwrap();
        wait_for("the committed transaction", || sink.committed().len() >= 7).await;
        handle.stop();
        handle.join().await.map(|_| before_commit)
    });
    assert_eq!(ended.unwrap(), sequence(0..5));
    let mut expected = sequence(0..5);
    expected.extend(["txn-1".to_owned(), "txn-2".to_owned()]);
    expected.sort();
    assert_eq!(committed_values(&sink), expected);
}

/// A bounded source reads each partition up to the end offset it had when
/// the source opened, past the control records of a committed and an
/// aborted transaction at the end of the log, and its job then ends by
/// itself; a subtask with no partition ends too. Records written after the
/// source opened are not read.
#[test]
fn a_bounded_source_stops_at_the_end_offsets_taken_when_it_opened() {
    let broker = broker();
    let topic = unique_topic("source-bounded");
    create_topic(&broker, &topic, 2);
    produce(&broker, &topic, 2, &sequence(0..40));
    let transactional = producer(&broker, Some(&unique_topic("bounded-txn")));
    transactional.begin_transaction().unwrap();
    send_to(&transactional, &topic, 0, &["committed-1", "committed-2"]);
    transactional.commit_transaction(RDKAFKA_TIMEOUT).unwrap();
    transactional.begin_transaction().unwrap();
    send_to(&transactional, &topic, 1, &["aborted-1"]);
    transactional.abort_transaction(RDKAFKA_TIMEOUT).unwrap();

    let checkpoints = tempfile::tempdir().unwrap();
    let sink = CollectSink::<KafkaRecord<String>>::new();
    let source = KafkaSource::builder(ClientSettings::new(&broker))
        .topics([&topic])
        .deserializer(Utf8)
        .bounded()
        .build()
        .unwrap();
    let job = Job::new("source-bounded", config(3, checkpoints.path()));
    job.source(source).operator(slowly).sink(sink.clone());
    let ended = runtime().block_on(async {
        let handle = job.spawn().unwrap();
        wait_for("the first record", || handle.metrics().records_in >= 1).await;
        let late = broker.clone();
        let topic = topic.clone();
        tokio::task::spawn_blocking(move || produce(&late, &topic, 2, &sequence(40..60)))
            .await
            .unwrap();
        tokio::time::timeout(PATIENCE, handle.join())
            .await
            .expect("a bounded job ends by itself")
    });
    ended.unwrap();
    let mut expected = sequence(0..40);
    expected.extend(["committed-1".to_owned(), "committed-2".to_owned()]);
    expected.sort();
    assert_eq!(committed_values(&sink), expected);
}

#[test]
fn a_missing_topic_stops_the_job_at_start_unless_asked_to_create_it() {
    let broker = broker();
    let topic = unique_topic("source-missing");
    let checkpoints = tempfile::tempdir().unwrap();
    let job = Job::new("source-missing", config(1, checkpoints.path()));
    job.source(utf8_source(&broker, &topic))
        .sink(CollectSink::new());
    let error = run_to_end(job).unwrap_err();
    assert!(matches!(error, Error::Preflight { .. }), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains(&topic) && text.contains("do not exist"),
        "{text}"
    );

    let source = KafkaSource::builder(ClientSettings::new(&broker))
        .topics([&topic])
        .deserializer(Utf8)
        .create_missing_topics(2)
        .build()
        .unwrap();
    let checkpoints = tempfile::tempdir().unwrap();
    let job = Job::new("source-create", config(1, checkpoints.path()));
    job.source(source).sink(CollectSink::new());
    run_until(job, |m| m.checkpoints_completed >= 1).unwrap();
    let logs = read_topic(&broker, &topic).unwrap();
    assert_eq!(logs.len(), 2, "the topic was created with two partitions");
}

#[test]
fn a_wrong_bootstrap_address_fails_within_the_client_timeout() {
    let mut settings = ClientSettings::new("127.0.0.1:1");
    settings.timeout = Duration::from_secs(2);
    let source = KafkaSource::builder(settings)
        .topics(["anything"])
        .deserializer(Utf8)
        .build()
        .unwrap();
    let checkpoints = tempfile::tempdir().unwrap();
    let job = Job::new("source-unreachable", config(1, checkpoints.path()));
    job.source(source).sink(CollectSink::new());
    let started = Instant::now();
    let error = run_to_end(job).unwrap_err();
    let took = started.elapsed();
    let text = error.to_string();
    assert!(matches!(error, Error::Preflight { .. }), "{error:?}");
    assert!(
        text.contains("127.0.0.1:1") && text.contains("did not answer"),
        "{text}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn the_builder_rejects_settings_it_owns() {
    let settings = ClientSettings::new("127.0.0.1:9092").property("enable.auto.commit", "true");
    let error = KafkaSource::builder(settings)
        .topics(["in"])
        .build()
        .unwrap_err()
        .to_string();
    assert!(error.contains("enable.auto.commit"), "{error}");
    let error = KafkaSource::builder(ClientSettings::new("127.0.0.1:9092"))
        .build()
        .unwrap_err()
        .to_string();
    assert!(error.contains("no topic"), "{error}");
    let error = KafkaSource::builder(ClientSettings::new("127.0.0.1:9092"))
        .topics(["in"])
        .on_deserialize_error(DeserializeErrorPolicy::DeadLetter { topic: "in".into() })
        .build()
        .unwrap_err()
        .to_string();
    assert!(error.contains("also an input topic"), "{error}");
}
