//! Helpers for tests against a real broker (feature `test-support`): the
//! broker address, unique topics, rdkafka clients, and reads through both
//! oracles. rdkafka calls block, so tests call them from their own (plain)
//! thread and run only the committed reader on a tokio runtime.
//!
//! Shared by the broker tests of `exactly-kafka` and of this crate (the
//! audit's); failures a real broker will not produce on demand are the
//! fake broker's (`exactly_kafka_wire::fake_broker`).

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use exactly_kafka::bootstrap_from_env;
use exactly_kafka::client::ClientSettings;
use exactly_kafka_wire::{CommittedReader, PartitionLog, ReadError, ReaderConfig};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::oracle::{self, OracleError};

/// The bound on every blocking rdkafka call.
pub const RDKAFKA_TIMEOUT: Duration = Duration::from_secs(30);

/// The broker address from `EXACTLY_KAFKA_BOOTSTRAP`, after checking that
/// it accepts connections. Panics (the test fails, it is not skipped) when
/// it does not.
pub fn broker() -> String {
    let address = bootstrap_from_env();
    let reachable = address.to_socket_addrs().is_ok_and(|mut addrs| {
        addrs.any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
    });
    assert!(
        reachable,
        "Kafka broker not reachable at {address}: start it with scripts/kafka-up"
    );
    address
}

/// A topic name no other test or run uses.
pub fn unique_topic(test: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("exactly-kafka-{test}-{}-{nanos}-{n}", std::process::id())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Creates `topic` with `partitions` partitions.
pub fn create_topic(broker: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .create()
        .expect("an rdkafka admin client");
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    let options = AdminOptions::new().operation_timeout(Some(RDKAFKA_TIMEOUT));
    let results = runtime()
        .block_on(admin.create_topics([&new_topic], &options))
        .unwrap_or_else(|e| panic!("creating topic {topic} at {broker}: {e}"));
    for result in results {
        result.unwrap_or_else(|(name, code)| panic!("creating topic {name} at {broker}: {code}"));
    }
}

/// Every partition of `topic`, read by both oracles: the raw committed
/// reader, and an rdkafka read_committed consumer that must have seen
/// exactly the same records in the same order (else the error names the
/// first differing offset).
pub fn read_topic(broker: &str, topic: &str) -> Result<Vec<PartitionLog>, OracleError> {
    oracle::read_committed(&ClientSettings::new(broker), topic)
}

/// Runs `read` on a reader connected with `config`.
pub fn with_reader<T>(
    config: ReaderConfig,
    read: impl AsyncFnOnce(&mut CommittedReader) -> Result<T, ReadError>,
) -> Result<T, ReadError> {
    runtime().block_on(async {
        let mut reader = CommittedReader::connect(config).await?;
        read(&mut reader).await
    })
}

/// A producer; transactional (and initialised) when `transactional_id` is
/// given.
pub fn producer(broker: &str, transactional_id: Option<&str>) -> BaseProducer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", broker)
        .set("message.timeout.ms", "30000")
        .set("linger.ms", "0");
    if let Some(id) = transactional_id {
        config
            .set("transactional.id", id)
            .set("transaction.timeout.ms", "60000");
    }
    let producer: BaseProducer = config.create().expect("an rdkafka producer");
    if transactional_id.is_some() {
        producer
            .init_transactions(RDKAFKA_TIMEOUT)
            .unwrap_or_else(|e| panic!("init_transactions at {broker}: {e}"));
    }
    producer
}

/// Sends `values` to partition 0 of `topic` (keyed by the value) and waits
/// until the broker has them.
pub fn send(producer: &BaseProducer, topic: &str, values: &[&str]) {
    send_to(producer, topic, 0, values);
}

/// Sends `values` to `partition` of `topic` (keyed by the value) and waits
/// until the broker has them.
pub fn send_to(producer: &BaseProducer, topic: &str, partition: i32, values: &[&str]) {
    for value in values {
        producer
            .send(
                BaseRecord::to(topic)
                    .partition(partition)
                    .key(*value)
                    .payload(*value),
            )
            .unwrap_or_else(|(e, _)| panic!("sending {value} to {topic}: {e}"));
    }
    producer
        .flush(RDKAFKA_TIMEOUT)
        .unwrap_or_else(|e| panic!("flushing {values:?} to {topic}: {e}"));
}
