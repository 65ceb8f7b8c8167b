//! Unit tests of the reader: discovery, restored positions missing at
//! open, and the trouble window, against a consumer with no cluster.

use super::*;
use crate::client::{ClientSettings, MissingTopics};

/// A reader of topic `t` for subtask `index` of `parallelism`, with a
/// real consumer that has no cluster to talk to: assignments are local
/// bookkeeping, so the discovery step can be checked without a broker.
fn reader(index: usize, parallelism: usize, timeout: Duration) -> Reader {
    let mut settings = ClientSettings::new("127.0.0.1:1");
    settings.timeout = timeout;
    let consumer: SourceConsumer = settings
        .config(&[("group.id", "unit-test".into())])
        .create()
        .unwrap();
    Reader {
        consumer: Some(Arc::new(consumer)),
        config: Arc::new(source_config(settings)),
        index,
        parallelism,
        next: BTreeMap::new(),
        assigned: BTreeSet::new(),
        restored: BTreeMap::new(),
        discovery: None,
        next_discovery: None,
        last_probe: Instant::now(),
        trouble: None,
        dead_letter: None,
        committing: None,
        bound: None,
    }
}

/// The configuration of a source of topic `t` with `settings`.
fn source_config(settings: ClientSettings) -> SourceConfig {
    SourceConfig {
        name: "kafka".into(),
        settings,
        topics: vec!["t".into()],
        group_id: None,
        read_committed: true,
        discovery: Some(Duration::from_secs(1)),
        on_error: DeserializeErrorPolicy::Fail,
        missing: MissingTopics::Fail,
        reset_out_of_range: false,
        headers: true,
        bounded: None,
    }
}

fn partitions(n: usize) -> HashMap<String, usize> {
    HashMap::from([("t".to_owned(), n)])
}

fn assignment(reader: &Reader) -> Vec<i32> {
    let mut assigned: Vec<i32> = reader
        .consumer()
        .assignment()
        .unwrap()
        .elements()
        .iter()
        .map(|e| e.partition())
        .collect();
    assigned.sort_unstable();
    assigned
}

#[test]
fn discovered_partitions_join_the_assignment_without_a_position() {
    let mut reader = reader(0, 1, Duration::from_secs(30));
    reader.restored = BTreeMap::from([(("t".to_owned(), 0), 5)]);
    reader.assign_new(&partitions(1), true).unwrap();
    assert_eq!(assignment(&reader), [0]);

    reader.on_metadata(Ok(partitions(3))).unwrap();
    assert_eq!(assignment(&reader), [0, 1, 2]);
    reader.on_metadata(Ok(partitions(3))).unwrap();
    assert_eq!(assignment(&reader), [0, 1, 2]);
    // Only the restored partition has a position; the new ones start
    // at the earliest offset, which a restore would choose again.
    assert_eq!(
        reader.position().partitions,
        [PartitionOffset {
            topic: "t".into(),
            partition: 0,
            next_offset: 5
        }]
    );
}

#[test]
fn a_restored_partition_missing_at_open_resumes_at_its_restored_offset() {
    let mut reader = reader(0, 1, Duration::from_secs(30));
    reader.restored = BTreeMap::from([(("t".to_owned(), 0), 5), (("t".to_owned(), 1), 7)]);
    reader.assign_new(&partitions(1), true).unwrap();
    assert_eq!(assignment(&reader), [0]);
    let offset = |partition, next_offset| PartitionOffset {
        topic: "t".into(),
        partition,
        next_offset,
    };
    assert_eq!(
        reader.position().partitions,
        [offset(0, 5), offset(1, 7)],
        "a checkpoint taken before the partition appears keeps its position"
    );
    reader.on_metadata(Ok(partitions(2))).unwrap();
    assert_eq!(assignment(&reader), [0, 1]);
    assert_eq!(reader.position().partitions, [offset(0, 5), offset(1, 7)]);
    assert!(reader.restored.is_empty());
}

#[test]
fn a_subtask_takes_only_the_new_partitions_it_owns() {
    let mut reader = reader(1, 2, Duration::from_secs(30));
    reader.assign_new(&partitions(1), true).unwrap();
    let before = assignment(&reader);
    reader.on_metadata(Ok(partitions(6))).unwrap();
    let expected: Vec<i32> = (0..6)
        .filter(|&p| super::super::partition_owner("t", p, 2) == 1)
        .collect();
    assert_eq!(assignment(&reader), expected);
    assert!(before.iter().all(|p| expected.contains(p)));
}

#[test]
fn trouble_ends_with_a_good_answer_and_fails_the_source_after_the_timeout() {
    let missing = || {
        Err(KafkaSourceError::MissingTopic {
            topic: "t".into(),
            bootstrap: "127.0.0.1:1".into(),
        })
    };
    let mut patient = reader(0, 1, Duration::from_secs(30));
    patient.on_metadata(missing()).unwrap();
    assert!(patient.trouble.is_some());
    patient.check_trouble().unwrap();
    patient.on_metadata(Ok(partitions(1))).unwrap();
    assert!(patient.trouble.is_none());

    let mut impatient = reader(0, 1, Duration::from_millis(1));
    impatient.on_metadata(missing()).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    let error = impatient.check_trouble().unwrap_err().to_string();
    assert!(
        error.contains("127.0.0.1:1") && error.contains("`t` does not exist"),
        "{error}"
    );
}

#[test]
fn the_consumer_fetches_again_soon_after_a_full_queue_unless_told_otherwise() {
    let ctx = SubtaskContext {
        job: "job".into(),
        stage: "stage".into(),
        index: 0,
        parallelism: 1,
        attempt: 0,
    };
    let defaults = consumer_config(&source_config(ClientSettings::new("b:9092")), "c", &ctx);
    assert_eq!(
        defaults.get("fetch.queue.backoff.ms"),
        Some(FETCH_QUEUE_BACKOFF.as_millis().to_string().as_str())
    );
    assert!(FETCH_QUEUE_BACKOFF < Duration::from_millis(100));

    let told = ClientSettings::new("b:9092").property("fetch.queue.backoff.ms", "250");
    let told = consumer_config(&source_config(told), "c", &ctx);
    assert_eq!(told.get("fetch.queue.backoff.ms"), Some("250"));
}
