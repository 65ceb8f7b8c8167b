//! Bad input gives a typed error naming what was wrong, within bounded
//! time: unknown topics and partitions (real broker), unreachable, silent
//! or hanging-up brokers, corrupt and truncated batches (fake brokers).

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use exactly_kafka_wire::fake_broker::{self, Behaviour, Served, batch};
use exactly_kafka_wire::{ReadError, ReaderConfig};

use crate::common::{broker, create_topic, unique_topic, with_reader};

fn quick(address: &str) -> ReaderConfig {
    ReaderConfig {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_millis(500),
        ..ReaderConfig::new(address)
    }
}

/// Reads every partition of `topic` at `address`, expecting an error within
/// `bound`.
fn read_error(address: &str, topic: &str, bound: Duration) -> ReadError {
    let started = Instant::now();
    let result = with_reader(quick(address), async |reader| {
        reader.read_topic(topic).await
    });
    let elapsed = started.elapsed();
    assert!(
        elapsed < bound,
        "the error took {elapsed:?}, more than {bound:?}"
    );
    result.expect_err("the read must fail")
}

#[test]
fn an_unknown_topic_is_named_with_the_broker() {
    let broker = broker();
    let topic = unique_topic("missing");
    let error = read_error(&broker, &topic, Duration::from_secs(5));
    assert!(
        matches!(&error, ReadError::UnknownTopic { topic: t, .. } if *t == topic),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!("unknown topic '{topic}' on Kafka broker at {broker}")
    );
    let again = with_reader(quick(&broker), async |reader| {
        reader.partitions(&topic).await
    });
    assert!(
        matches!(again, Err(ReadError::UnknownTopic { .. })),
        "reading must not create the topic: {again:?}"
    );
}

#[test]
fn an_unknown_partition_is_named_with_the_topic() {
    let broker = broker();
    let topic = unique_topic("two-partitions");
    create_topic(&broker, &topic, 2);
    let error = with_reader(quick(&broker), async |reader| {
        reader.read_partition(&topic, 5).await
    })
    .expect_err("partition 5 does not exist");
    assert_eq!(
        error.to_string(),
        format!("topic '{topic}' has no partition 5 (it has 2 partitions)")
    );
}

#[test]
fn an_unreachable_broker_fails_fast_naming_the_address() {
    let error = read_error("127.0.0.1:1", "any", Duration::from_secs(3));
    assert!(matches!(error, ReadError::Connect { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .starts_with("Kafka broker not reachable at 127.0.0.1:1: "),
        "{error}"
    );
}

#[test]
fn an_address_without_a_port_is_rejected() {
    let error = read_error("localhost", "any", Duration::from_secs(1));
    assert_eq!(
        error.to_string(),
        "invalid Kafka bootstrap address 'localhost': expected host:port"
    );
}

#[test]
fn a_silent_broker_times_out_within_the_request_timeout() {
    let address = fake_broker::start(Behaviour::Silent);
    let error = read_error(&address, "any", Duration::from_secs(3));
    assert_eq!(
        error.to_string(),
        format!("Kafka broker at {address} did not answer ApiVersions within 500ms")
    );
}

#[test]
fn a_broker_hanging_up_is_an_io_error_naming_the_address() {
    let address = fake_broker::start(Behaviour::HangUp);
    let error = read_error(&address, "any", Duration::from_secs(3));
    assert!(matches!(error, ReadError::Io { .. }), "{error:?}");
    assert!(
        error.to_string().starts_with(&format!(
            "I/O error talking to Kafka broker at {address} during ApiVersions: "
        )),
        "{error}"
    );
}

fn serve(records: Bytes, high_watermark: i64) -> (String, String) {
    let topic = "fake-topic".to_owned();
    let address = fake_broker::start(Behaviour::Serve(Served::new(
        topic.clone(),
        records,
        high_watermark,
    )));
    (address, topic)
}

fn concat(parts: &[&[u8]]) -> Bytes {
    let mut bytes = BytesMut::new();
    for part in parts {
        bytes.extend_from_slice(part);
    }
    bytes.freeze()
}

#[test]
fn the_fake_broker_serves_a_readable_partition() {
    let (address, topic) = serve(concat(&[&batch(0, &["a", "b"]), &batch(2, &["c"])]), 3);
    let logs = with_reader(quick(&address), async |reader| {
        reader.read_topic(&topic).await
    })
    .expect("a clean read");
    assert_eq!(
        logs[0].values(),
        [Some(&b"a"[..]), Some(&b"b"[..]), Some(&b"c"[..])]
    );
    assert_eq!(logs[0].broker_last_stable_offset, 3);
}

#[test]
fn a_corrupt_batch_names_topic_partition_and_offset() {
    let mut second = BytesMut::from(&batch(2, &["c"])[..]);
    let last = second.len() - 1;
    second[last] ^= 0x55;
    let (address, topic) = serve(concat(&[&batch(0, &["a", "b"]), &second]), 3);
    let error = read_error(&address, &topic, Duration::from_secs(3));
    assert!(
        matches!(
            error,
            ReadError::CorruptBatch {
                partition: 0,
                offset: 2,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .starts_with("corrupt record batch in fake-topic/0 at offset 2: CRC32C mismatch"),
        "{error}"
    );
}

#[test]
fn a_truncated_batch_names_topic_partition_and_offset() {
    let second = batch(1, &["b"]);
    let cut = &second[..second.len() - 3];
    let (address, topic) = serve(concat(&[&batch(0, &["a"]), cut]), 3);
    let error = read_error(&address, &topic, Duration::from_secs(3));
    assert_eq!(
        error.to_string(),
        format!(
            "truncated record batch in fake-topic/0 at offset 1: the batch needs {} bytes \
             but the fetch response holds {}",
            second.len(),
            cut.len()
        )
    );
}

#[test]
fn fetches_without_records_below_the_high_watermark_stop_with_an_error() {
    let (address, topic) = serve(Bytes::new(), 4);
    let error = read_error(&address, &topic, Duration::from_secs(3));
    assert_eq!(
        error.to_string(),
        format!(
            "no progress reading fake-topic/0 at offset 0, below the high watermark 4: \
             5 fetches from {address} returned no record batch"
        )
    );
}
