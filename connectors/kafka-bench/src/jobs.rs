//! The Rust contenders, each run in a child process of the driver so that
//! its CPU time can be read from `/proc` like a JVM's.
//!
//! All do the same work: read the input topic, keep a running count per
//! record key, and write one record `<input value> <count>` per input
//! record, keyed like the input. They differ only in their guarantees:
//! - [`raw_pipe`]: rdkafka consume → produce with automatic offset
//!   commits, no transactions (at-least-once): the broker's and machine's
//!   physical limit for this work;
//! - [`hand_written`]: one transactional producer that commits the
//!   consumer's positions with `send_offsets_to_transaction` every
//!   interval, what a careful user writes by hand (its counts live only in
//!   memory, so it is cheaper than a correct loop with a changelog);
//! - [`exactly_job`]: an `exactly` job, `KafkaSource` → `key_by` → keyed
//!   `#[state]` count → `KafkaSink`, with either guarantee.
//!
//! Each runs until the driver kills it. Producer settings are librdkafka's
//! defaults everywhere, apart from what transactions require and what the
//! run's profile sets (`profile`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use exactly::prelude::*;
use exactly_kafka::client::ClientSettings;
use exactly_kafka::deserialize::Utf8;
use exactly_kafka::sink::{DeliveryGuarantee, KafkaSink, OutputRecord};
use exactly_kafka::source::{FETCH_QUEUE_BACKOFF, KafkaRecord, KafkaSource};

use crate::workload::{client_config, cluster, send};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// The hand-written loop's transaction timeout: below the test broker's
/// `transaction.max.timeout.ms` (20 min). The `exactly` job keeps its
/// sink's default.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(600);

/// How long a blocking transactional call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// What every contender is told.
#[derive(Debug, Clone, clap::Args)]
pub struct JobArgs {
    /// The broker.
    #[arg(long)]
    pub bootstrap: String,
    /// The input topic.
    #[arg(long)]
    pub input: String,
    /// The output topic.
    #[arg(long)]
    pub output: String,
    /// Checkpoint or commit interval, in milliseconds.
    #[arg(long)]
    pub interval_ms: u64,
    /// Parallelism (exactly, Flink) or stream threads (Kafka Streams).
    #[arg(long)]
    pub parallelism: usize,
    /// A name unique to this run: consumer group, transactional id prefix.
    #[arg(long)]
    pub id: String,
    /// Records the exactly job's source takes per poll
    /// (`JobConfig::batch_size`; its default when absent). The loops poll
    /// one record at a time, as rdkafka's consumer hands them out.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Extra librdkafka properties.
    #[command(flatten)]
    pub properties: ClientProperties,
}

/// Extra librdkafka properties for the Rust contenders' clients, to profile
/// a setting (the JVM contenders take theirs from
/// `contender::JavaProperties`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientProperties {
    /// A librdkafka property for the producers of the Rust contenders (the
    /// raw pipe's, the hand-written loop's and exactly's sink), `KEY=VALUE`;
    /// repeatable.
    #[arg(long = "producer-property", value_name = "KEY=VALUE")]
    pub producer: Vec<String>,
    /// A librdkafka property for the consumers of the Rust contenders (the
    /// raw pipe's, the hand-written loop's and exactly's source),
    /// `KEY=VALUE`; repeatable.
    #[arg(long = "consumer-property", value_name = "KEY=VALUE")]
    pub consumer: Vec<String>,
}

impl ClientProperties {
    /// The properties as this program's own command-line arguments.
    pub fn to_args(&self) -> Vec<String> {
        let flagged = |flag: &str, pairs: &[String]| {
            pairs
                .iter()
                .flat_map(|pair| [flag.to_owned(), pair.clone()])
                .collect::<Vec<_>>()
        };
        let mut args = flagged("--producer-property", &self.producer);
        args.extend(flagged("--consumer-property", &self.consumer));
        args
    }

    /// The producer properties, split at their first `=`.
    fn producer(&self) -> Result<Vec<(&str, &str)>, String> {
        split_pairs(&self.producer, "--producer-property")
    }

    /// The consumer properties, split at their first `=`.
    fn consumer(&self) -> Result<Vec<(&str, &str)>, String> {
        split_pairs(&self.consumer, "--consumer-property")
    }
}

/// `KEY=VALUE` pairs split at their first `=`; `flag` names them in errors.
fn split_pairs<'a>(pairs: &'a [String], flag: &str) -> Result<Vec<(&'a str, &'a str)>, String> {
    pairs
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .ok_or_else(|| format!("{flag} `{pair}`: expected KEY=VALUE, e.g. linger.ms=20"))
        })
        .collect()
}

impl JobArgs {
    /// A producer configuration for the broker, with the extra properties.
    fn producer_config(&self) -> Result<ClientConfig, String> {
        let mut config = client_config(&self.bootstrap)?;
        for (key, value) in self.properties.producer()? {
            config.set(key, value);
        }
        Ok(config)
    }
}

/// The per-key running count of the [`raw_pipe`] and [`hand_written`]
/// loops, and the output value it gives.
#[derive(Default)]
struct Counts(HashMap<Vec<u8>, u64>);

impl Counts {
    fn next_value(&mut self, key: &[u8], value: &[u8]) -> String {
        let n = match self.0.get_mut(key) {
            Some(n) => n,
            None => self.0.entry(key.to_vec()).or_default(),
        };
        *n += 1;
        format!("{} {n}", String::from_utf8_lossy(value))
    }
}

fn consumer(args: &JobArgs, transactional: bool) -> Result<BaseConsumer, String> {
    let mut config = client_config(&args.bootstrap)?;
    config
        .set("group.id", &args.id)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", (!transactional).to_string())
        // As exactly's source sets it: the physical limit is not capped by
        // librdkafka's 1 s pause after a full local queue.
        .set(
            "fetch.queue.backoff.ms",
            FETCH_QUEUE_BACKOFF.as_millis().to_string(),
        );
    for (key, value) in args.properties.consumer()? {
        config.set(key, value);
    }
    let consumer: BaseConsumer = config
        .create()
        .map_err(|e| format!("a consumer for {}: {e}", args.bootstrap))?;
    consumer
        .subscribe(&[&args.input])
        .map_err(|e| format!("subscribing to {}: {e}", args.input))?;
    Ok(consumer)
}

/// Reads one input record and writes its output; `false` when no record
/// came within the poll timeout.
fn pipe_one(
    consumer: &BaseConsumer,
    producer: &BaseProducer,
    counts: &mut Counts,
    output: &str,
) -> Result<bool, String> {
    match consumer.poll(Duration::from_millis(100)) {
        None => Ok(false),
        Some(Err(e)) => Err(format!("consuming: {e}")),
        Some(Ok(message)) => {
            let key = message.key().unwrap_or_default();
            let value = counts.next_value(key, message.payload().unwrap_or_default());
            send(producer, output, key, value.as_bytes())?;
            producer.poll(Duration::ZERO);
            Ok(true)
        }
    }
}

/// rdkafka consume → produce, at-least-once, no transactions.
pub fn raw_pipe(args: &JobArgs) -> Result<(), String> {
    let consumer = consumer(args, false)?;
    let producer: BaseProducer = args
        .producer_config()?
        .create()
        .map_err(|e| format!("a producer for {}: {e}", args.bootstrap))?;
    let mut counts = Counts::default();
    loop {
        pipe_one(&consumer, &producer, &mut counts, &args.output)?;
    }
}

/// The consumer's next offsets, for `send_offsets_to_transaction`.
fn positions(consumer: &BaseConsumer) -> Result<TopicPartitionList, String> {
    let all = consumer.position().map_err(|e| format!("positions: {e}"))?;
    let mut known = TopicPartitionList::new();
    for element in all.elements() {
        if let Offset::Offset(offset) = element.offset() {
            known
                .add_partition_offset(element.topic(), element.partition(), Offset::Offset(offset))
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(known)
}

/// One transactional producer; the consumer's positions are committed in
/// the transaction every interval.
pub fn hand_written(args: &JobArgs) -> Result<(), String> {
    let consumer = consumer(args, true)?;
    let producer: BaseProducer = args
        .producer_config()?
        .set("transactional.id", &args.id)
        .set(
            "transaction.timeout.ms",
            TRANSACTION_TIMEOUT.as_millis().to_string(),
        )
        .create()
        .map_err(|e| format!("a transactional producer for {}: {e}", args.bootstrap))?;
    let fail = |what: &str, e: KafkaError| format!("{what}: {e}");
    producer
        .init_transactions(CALL_TIMEOUT)
        .map_err(|e| fail("init_transactions", e))?;
    producer
        .begin_transaction()
        .map_err(|e| fail("begin_transaction", e))?;
    let interval = Duration::from_millis(args.interval_ms);
    let mut counts = Counts::default();
    let mut last_commit = Instant::now();
    loop {
        pipe_one(&consumer, &producer, &mut counts, &args.output)?;
        if last_commit.elapsed() >= interval {
            let metadata = consumer
                .group_metadata()
                .ok_or("the consumer has no group metadata")?;
            producer
                .send_offsets_to_transaction(&positions(&consumer)?, &metadata, CALL_TIMEOUT)
                .map_err(|e| fail("send_offsets_to_transaction", e))?;
            producer
                .commit_transaction(CALL_TIMEOUT)
                .map_err(|e| fail("commit_transaction", e))?;
            producer
                .begin_transaction()
                .map_err(|e| fail("begin_transaction", e))?;
            last_commit = Instant::now();
        }
    }
}

/// A key's running count in the `exactly` job.
#[state]
#[derive(Default)]
struct KeyCount {
    count: u64,
}

/// Counts a record under its key and gives its output value.
#[operator]
fn count_per_key(record: KafkaRecord<String>, #[state] state: &mut KeyCount) -> (Vec<u8>, String) {
    state.count += 1;
    let mut value = record.value;
    // Formatted in place: no string for the count alone.
    write!(value, " {}", state.count).expect("writing to a String does not fail");
    (record.key.unwrap_or_default(), value)
}

/// `settings` with extra librdkafka properties.
fn with_properties(settings: &ClientSettings, properties: Vec<(&str, &str)>) -> ClientSettings {
    properties
        .into_iter()
        .fold(settings.clone(), |all, (key, value)| {
            all.property(key, value)
        })
}

/// The `exactly` job with `guarantee`; checkpoints go to a temporary
/// directory.
pub fn exactly_job(args: &JobArgs, guarantee: DeliveryGuarantee) -> Result<(), String> {
    let settings = cluster(&args.bootstrap)?;
    let source = KafkaSource::builder(with_properties(&settings, args.properties.consumer()?))
        .topic(&args.input)
        .group_id(&args.id)
        .deserializer(Utf8)
        .ignore_headers()
        .build()
        .map_err(|e| format!("the Kafka source: {e}"))?;
    let sink_settings = with_properties(&settings, args.properties.producer()?);
    let sink = KafkaSink::builder(
        sink_settings,
        &args.output,
        |(key, value): (Vec<u8>, String)| OutputRecord::keyed(key, value),
    )
    .delivery_guarantee(guarantee)
    .transactional_id_prefix(&args.id)
    .build()
    .map_err(|e| format!("the Kafka sink: {e}"))?;
    let checkpoints = tempfile::tempdir().map_err(|e| format!("a checkpoint directory: {e}"))?;
    let mut config = JobConfig::new()
        .parallelism(args.parallelism)
        .checkpoint_interval(Duration::from_millis(args.interval_ms))
        .checkpoint_dir(checkpoints.path())
        // The contender's log then shows each checkpoint's duration.
        .progress_interval(Duration::from_secs(5));
    if let Some(records) = args.batch_size {
        config = config.batch_size(records);
    }
    let job = Job::new("kafka-bench", config);
    job.source(source)
        .key_by(|record: &KafkaRecord<String>| record.key.clone().unwrap_or_default())
        .operator(count_per_key)
        .sink(sink);
    job.run().map_err(|e| format!("the exactly job: {e}"))
}

#[cfg(test)]
mod tests {
    use super::Counts;

    #[test]
    fn counts_run_per_key_and_extend_the_input_value() {
        let mut counts = Counts::default();
        assert_eq!(counts.next_value(b"k1", b"0 10"), "0 10 1");
        assert_eq!(counts.next_value(b"k2", b"1 11"), "1 11 1");
        assert_eq!(counts.next_value(b"k1", b"2 12"), "2 12 2");
    }
}
