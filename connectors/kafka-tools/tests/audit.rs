//! The audit (`exactly_kafka_tools::audit` and the `exactly-audit` binary)
//! against the real broker: committed, aborted and open transactions, a
//! duplicate and a gap in JSON `{"key":..,"seq":..}` values; and its exit
//! code 2 with a one-line error, in bounded time, for an unknown topic, an
//! unreachable or silent broker, and a corrupt batch (fake brokers).

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use exactly_kafka_tools::audit::{
    self, AuditOptions, AuditReport, EXIT_ERROR, EXIT_FINDINGS, Gap, KeySource, Location,
    SequenceAt, SequenceCheck, SequenceDuplicate, TransactionLookup,
};
use rdkafka::producer::{BaseProducer, Producer};

use exactly_kafka_tools::testing::{
    RDKAFKA_TIMEOUT, broker, create_topic, producer, send_to, unique_topic,
};
use exactly_kafka_wire::fake_broker::{self, Behaviour, Served, batch};

/// The bound on every failing run of the binary.
const ERROR_BOUND: Duration = Duration::from_secs(10);

fn json(key: &str, seq: i64) -> String {
    format!(r#"{{"key":"{key}","seq":{seq}}}"#)
}

fn send_json(producer: &BaseProducer, topic: &str, partition: i32, values: &[(&str, i64)]) {
    let values: Vec<String> = values.iter().map(|&(k, s)| json(k, s)).collect();
    let values: Vec<&str> = values.iter().map(String::as_str).collect();
    send_to(producer, topic, partition, &values);
}

/// Writes, to a new two-partition topic, with Kafka's offsets:
///
/// | partition/offset | record |
/// | --- | --- |
/// | 0/0, 0/1 | a:0, a:1 (transaction of `<topic>-app-a`, committed) |
/// | 0/2 | COMMIT marker |
/// | 0/3 | a:2 (transaction of `<topic>-app-b`, aborted) |
/// | 0/4 | ABORT marker |
/// | 0/5, 0/6, 0/7 | a:2, a:2, a:3 (plain: a duplicate of a:2) |
/// | 0/8 | a:4 (transaction of `<topic>-app-c`, left open) |
/// | 1/0, 1/1 | b:0, b:2 (plain: b:1 is missing) |
///
/// and returns the topic with the producer whose transaction is open.
fn write_scenario(broker: &str) -> (String, BaseProducer) {
    let topic = unique_topic("audit");
    create_topic(broker, &topic, 2);

    let committing = producer(broker, Some(&format!("{topic}-app-a")));
    committing.begin_transaction().expect("begin a");
    send_json(&committing, &topic, 0, &[("a", 0), ("a", 1)]);
    committing
        .commit_transaction(RDKAFKA_TIMEOUT)
        .expect("commit a");

    let aborting = producer(broker, Some(&format!("{topic}-app-b")));
    aborting.begin_transaction().expect("begin b");
    send_json(&aborting, &topic, 0, &[("a", 2)]);
    aborting
        .abort_transaction(RDKAFKA_TIMEOUT)
        .expect("abort b");

    let plain = producer(broker, None);
    send_json(&plain, &topic, 0, &[("a", 2), ("a", 2), ("a", 3)]);
    send_json(&plain, &topic, 1, &[("b", 0), ("b", 2)]);

    let open = producer(broker, Some(&format!("{topic}-app-c")));
    open.begin_transaction().expect("begin c");
    send_json(&open, &topic, 0, &[("a", 4)]);
    (topic, open)
}

fn run_audit(options: &AuditOptions) -> AuditReport {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(audit::audit(options))
        .unwrap_or_else(|e| panic!("auditing {}: {e}", options.topic))
}

fn at(partition: i32, offset: i64) -> Location {
    Location { partition, offset }
}

/// Runs the binary with `args`, checking it ends within [`ERROR_BOUND`].
fn exactly_audit(args: &[&str]) -> Output {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_exactly-audit"))
        .args(args)
        .output()
        .expect("the exactly-audit binary runs");
    let elapsed = started.elapsed();
    assert!(
        elapsed < ERROR_BOUND,
        "exactly-audit {args:?} took {elapsed:?}"
    );
    output
}

/// Checks that the binary failed with exit code 2 and one stderr line
/// starting with `expected`, and returns that line.
fn assert_error(output: &Output, expected: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(i32::from(EXIT_ERROR)),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "nothing on stdout on error");
    let line = stderr.trim_end();
    assert!(
        !line.contains('\n') && line.starts_with(expected),
        "expected one line starting with {expected:?}, got {line:?}"
    );
    line.to_owned()
}

#[test]
fn the_audit_reports_transactions_duplicates_gaps_and_the_stuck_lso() {
    let broker = broker();
    let (topic, open) = write_scenario(&broker);
    let options = AuditOptions {
        sequence: Some(SequenceCheck {
            key: KeySource::Field(audit::FieldPath::parse("key").expect("a path")),
            field: audit::FieldPath::parse("seq").expect("a path"),
            start: None,
        }),
        transactional_id_prefix: Some(format!("{topic}-app-")),
        ..AuditOptions::new(broker.clone(), topic.clone())
    };
    let report = run_audit(&options);

    let (p0, p1) = (&report.partitions[0], &report.partitions[1]);
    assert_eq!(
        (
            p0.visible_records,
            p1.visible_records,
            report.totals.visible_records
        ),
        (5, 2, 7)
    );
    assert_eq!((p0.high_watermark, p0.last_stable_offset), (9, 8));
    assert_eq!(p1.last_stable_offset, p1.high_watermark);
    let totals = &report.totals;
    assert_eq!(
        (
            totals.counts.committed_transactions,
            totals.counts.committed_records,
            totals.counts.aborted_transactions,
            totals.counts.aborted_records,
            totals.counts.open_transactions,
            totals.counts.open_records,
            totals.counts.non_transactional_records,
        ),
        (1, 2, 1, 1, 1, 1, 5)
    );
    let committer = p0
        .producers
        .iter()
        .find(|p| p.counts.committed_transactions == 1)
        .expect("the committing producer");
    assert_eq!(committer.counts.committed_records, 2);
    assert!(p0.producers.iter().any(|p| p.counts.aborted_records == 1));

    let oldest = &p0.open_transactions[0];
    assert_eq!((oldest.first_offset, oldest.records), (8, 1));
    let age = oldest.open_for_ms.unwrap_or_else(|| {
        panic!(
            "no age for the open transaction: {:?}",
            report.open_age_note
        )
    });
    assert!(
        (0..120_000).contains(&age),
        "the transaction opened moments ago, not {age} ms ago"
    );
    assert_eq!(p0.stuck_for_ms, Some(age));

    let sequence = report.sequence.as_ref().expect("the sequence check");
    assert_eq!((sequence.records_checked, sequence.keys), (7, 2));
    assert_eq!(
        sequence.duplicates,
        [SequenceDuplicate {
            key: Some("a".to_owned()),
            sequence: 2,
            locations: vec![at(0, 5), at(0, 6)],
        }],
        "the aborted a:2 at 0/3 is no duplicate"
    );
    assert_eq!(
        sequence.gaps,
        [Gap {
            key: Some("b".to_owned()),
            first_missing: 1,
            last_missing: 1,
            missing: 1,
            after: Some(SequenceAt {
                sequence: 0,
                location: at(1, 0),
            }),
            before: SequenceAt {
                sequence: 2,
                location: at(1, 1),
            },
        }]
    );
    assert_eq!(report.exit_code, EXIT_FINDINGS);

    let text = report.to_text(20);
    match &report.transactional_ids {
        TransactionLookup::Unsupported { .. } => assert!(
            text.contains(&format!(
                "the broker does not support ListTransactions; open transactions by producer \
                 id: {} (partition 0 from offset 8, open for",
                oldest.producer_id
            )),
            "{text}"
        ),
        TransactionLookup::Listed { transactions, .. } => {
            assert_eq!(
                oldest.transactional_id.as_deref(),
                Some(format!("{topic}-app-c").as_str())
            );
            assert_eq!(transactions[0].open_in_log, [at(0, 8)]);
        }
        other => panic!("the transactional-id look-up failed: {other:?}"),
    }
    assert!(text.contains("  duplicate: key \"a\" sequence 2 2 times, at 0/5, 0/6"));
    assert!(text.contains(
        "  gap: key \"b\" sequence 1 missing: after sequence 0 at 1/0, before sequence 2 at 1/1"
    ));
    assert!(text.contains("last stable offset 8, high watermark 9: stuck for "));

    open.commit_transaction(RDKAFKA_TIMEOUT).expect("commit c");
    let after = run_audit(&AuditOptions {
        partitions: vec![0],
        fail_on_open: true,
        ..options
    });
    assert_eq!(after.partitions.len(), 1);
    assert_eq!(after.partitions[0].last_stable_offset, 10);
    assert!(after.partitions[0].open_transactions.is_empty());
    assert!(after.sequence.as_ref().unwrap().gaps.is_empty());
    assert_eq!(after.findings.open_transactions, 0);
}

#[test]
fn the_binary_exits_1_on_findings_and_prints_parsable_json() {
    let broker = broker();
    let (topic, _open) = write_scenario(&broker);
    let output = exactly_audit(&[
        "--bootstrap",
        &broker,
        "--topic",
        &topic,
        "--key-field",
        "key",
        "--seq-field",
        "seq",
        "--json",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert_eq!(report["topic"], topic.as_str());
    assert_eq!(report["exit_code"], 1);
    assert_eq!(report["totals"]["visible_records"], 7);
    assert_eq!(report["findings"]["duplicates"], 1);
    assert_eq!(report["findings"]["gaps"], 1);
    assert_eq!(report["partitions"][0]["last_stable_offset"], 8);

    let text = exactly_audit(&[
        "--bootstrap",
        &broker,
        "--topic",
        &topic,
        "--partition",
        "1",
    ]);
    assert_eq!(text.status.code(), Some(0), "no checks, nothing open in 1");
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.contains("visible under read_committed: 2 records (partition 1: 2)"),
        "{stdout}"
    );

    let open = exactly_audit(&["--bootstrap", &broker, "--topic", &topic, "--fail-on-open"]);
    assert_eq!(
        open.status.code(),
        Some(1),
        "partition 0 has an open transaction"
    );
}

#[test]
fn usage_errors_and_unknown_topics_and_partitions_exit_2() {
    let broker = broker();
    let topic = unique_topic("audit-missing");
    let line = assert_error(
        &exactly_audit(&["--bootstrap", &broker, "--topic", &topic]),
        "exactly-audit: error: ",
    );
    assert_eq!(
        line,
        format!("exactly-audit: error: unknown topic '{topic}' on Kafka broker at {broker}")
    );

    let existing = unique_topic("audit-partitions");
    create_topic(&broker, &existing, 1);
    assert_error(
        &exactly_audit(&[
            "--bootstrap",
            &broker,
            "--topic",
            &existing,
            "--partition",
            "4",
        ]),
        &format!("exactly-audit: error: topic '{existing}' has no partition 4"),
    );

    assert_error(
        &exactly_audit(&["--topic", "t", "--seq-start", "1"]),
        "exactly-audit: error: usage error: the following required arguments were not provided: --seq-field <PATH> (see --help)",
    );
    let help = exactly_audit(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("--key-from-record-key"));
}

#[test]
fn unreachable_and_silent_brokers_exit_2_within_the_timeout() {
    assert_error(
        &exactly_audit(&["--bootstrap", "127.0.0.1:1", "--topic", "t"]),
        "exactly-audit: error: Kafka broker not reachable at 127.0.0.1:1: ",
    );
    let silent = fake_broker::start(Behaviour::Silent);
    let line = assert_error(
        &exactly_audit(&[
            "--bootstrap",
            &silent,
            "--topic",
            "t",
            "--timeout-ms",
            "500",
        ]),
        "exactly-audit: error: ",
    );
    assert_eq!(
        line,
        format!(
            "exactly-audit: error: Kafka broker at {silent} did not answer ApiVersions within 500ms"
        )
    );
}

#[test]
fn a_corrupt_batch_exits_2_naming_topic_partition_and_offset() {
    let mut records = BytesMut::from(&batch(0, &["a"])[..]);
    let last = records.len() - 1;
    records[last] ^= 0xff;
    let address = fake_broker::start(Behaviour::Serve(Served::new(
        "fake-topic",
        Bytes::from(records),
        2,
    )));
    assert_error(
        &exactly_audit(&["--bootstrap", &address, "--topic", "fake-topic"]),
        "exactly-audit: error: corrupt record batch in fake-topic/0 at offset 0: CRC32C mismatch",
    );
}
