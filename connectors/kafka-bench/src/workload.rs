//! The benchmark's input: topics, the record format, the pre-loaded
//! backlog and the paced live producer.
//!
//! Every input record has the key `k<n>` (`n` below the key count) and the
//! value `<seq> <micros>`: a sequence number unique in its topic and the
//! wall-clock time it was produced, in microseconds since the Unix epoch.
//! Every contender writes one output record per input record, with the same
//! key and the value `<input value> <count>`, `count` being that key's
//! running count. The watcher (`watch`) relies on this format and nothing
//! else. This module does not read output.

use std::sync::atomic::{AtomicI64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use exactly_kafka::client::{ClientSettings, MissingTopics, ensure_topics};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// How long a metadata or flush call may wait for the broker.
const BROKER_WAIT: Duration = Duration::from_secs(60);

/// Partitions of every topic the benchmark creates.
pub const PARTITIONS: i32 = 8;

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Creates `topics` with [`PARTITIONS`] partitions each, unless they exist.
pub fn create_topics(bootstrap: &str, topics: &[String]) -> Result<(), String> {
    let counts = ensure_topics(
        &cluster(bootstrap)?,
        topics,
        MissingTopics::Create {
            partitions: PARTITIONS,
        },
    )
    .map_err(|e| format!("creating topics {topics:?} on {bootstrap}: {e}"))?;
    match counts.iter().find(|(_, n)| **n != PARTITIONS as usize) {
        Some((topic, n)) => Err(format!(
            "`{topic}` has {n} partitions, not {PARTITIONS}: delete it and run again"
        )),
        None => Ok(()),
    }
}

/// The run's settings for the cluster at `bootstrap`: with the client
/// properties (TLS, SASL) of the file `EXACTLY_KAFKA_PROPERTIES_FILE`
/// names, which every client of the run uses, the contenders' included
/// (they inherit the variable).
pub fn cluster(bootstrap: &str) -> Result<ClientSettings, String> {
    let settings = ClientSettings::from_env().map_err(|e| e.to_string())?;
    Ok(ClientSettings {
        bootstrap: bootstrap.to_owned(),
        ..settings
    })
}

/// An rdkafka configuration for the cluster at `bootstrap`, as
/// [`cluster`].
pub fn client_config(bootstrap: &str) -> Result<ClientConfig, String> {
    Ok(cluster(bootstrap)?.rdkafka_config())
}

/// Deletes every topic whose name contains `-{tag}`: a contender run's
/// output and live topics, and the internal topics Kafka Streams made for
/// it. Without this the broker keeps every run's topics, and after a few
/// full runs it holds thousands of partitions and starts slowly.
pub fn delete_topics_of(bootstrap: &str, tag: &str) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap)?
        .create()
        .map_err(|e| format!("an admin client for {bootstrap}: {e}"))?;
    let metadata = admin
        .inner()
        .fetch_metadata(None, BROKER_WAIT)
        .map_err(|e| format!("listing topics on {bootstrap}: {e}"))?;
    let needle = format!("-{tag}");
    let names: Vec<&str> = metadata
        .topics()
        .iter()
        .map(|t| t.name())
        .filter(|name| name.contains(&needle))
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| format!("a runtime to delete topics: {e}"))?;
    let options = AdminOptions::new().operation_timeout(Some(BROKER_WAIT));
    let results = runtime
        .block_on(admin.delete_topics(&names, &options))
        .map_err(|e| format!("deleting topics {names:?}: {e}"))?;
    for result in results {
        if let Err((topic, code)) = result {
            return Err(format!("deleting topic {topic}: {code}"));
        }
    }
    Ok(())
}

/// The offsets in `topic`: the sum over its partitions of the high
/// watermark less the low one. For the input topics, written without
/// transactions, that is the number of records; for a transactional
/// topic it counts the commit markers too.
pub fn offsets_in(bootstrap: &str, topic: &str) -> Result<i64, String> {
    let consumer: BaseConsumer = client_config(bootstrap)?
        .create()
        .map_err(|e| format!("a consumer for {bootstrap}: {e}"))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), BROKER_WAIT)
        .map_err(|e| format!("metadata of {topic}: {e}"))?;
    let mut total = 0;
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition.id(), BROKER_WAIT)
            .map_err(|e| format!("watermarks of {topic}/{}: {e}", partition.id()))?;
        total += high - low;
    }
    Ok(total)
}

/// A plain producer. `bulk` batches harder for the backlog; live records
/// keep librdkafka's defaults (5 ms linger), as a contender's own
/// producer would.
fn producer(bootstrap: &str, bulk: bool) -> Result<BaseProducer, String> {
    let mut config = client_config(bootstrap)?;
    if bulk {
        config.set("linger.ms", "20").set("batch.size", "1000000");
    }
    config
        .create()
        .map_err(|e| format!("a producer for {bootstrap}: {e}"))
}

/// Sends one record to `topic`, serving delivery reports while
/// librdkafka's queue is full.
pub fn send(producer: &BaseProducer, topic: &str, key: &[u8], value: &[u8]) -> Result<(), String> {
    let mut record = BaseRecord::<[u8], [u8]>::to(topic).key(key).payload(value);
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(1));
            }
            Err((e, _)) => return Err(format!("producing to {topic}: {e}")),
        }
    }
}

/// Sends input record `seq`, stamped with the time now.
fn send_input(producer: &BaseProducer, topic: &str, keys: u64, seq: u64) -> Result<(), String> {
    let key = format!("k{}", seq % keys);
    let value = format!("{seq} {}", now_micros());
    send(producer, topic, key.as_bytes(), value.as_bytes())
}

fn flush(producer: &BaseProducer, topic: &str) -> Result<(), String> {
    producer
        .flush(BROKER_WAIT)
        .map_err(|e| format!("flushing records to {topic}: {e}"))
}

/// Writes `records` input records to `topic` as fast as the broker takes
/// them, unless the topic already holds exactly that many (a backlog
/// loaded by an earlier run is reused).
pub fn preload(bootstrap: &str, topic: &str, records: u64, keys: u64) -> Result<(), String> {
    create_topics(bootstrap, &[topic.to_owned()])?;
    let present = offsets_in(bootstrap, topic)?;
    if present == records as i64 {
        eprintln!("kafka-bench: reusing the {records} records already in `{topic}`");
        return Ok(());
    }
    if present != 0 {
        return Err(format!(
            "`{topic}` holds {present} records, not {records}: delete it or pass another --records"
        ));
    }
    let started = Instant::now();
    let producer = producer(bootstrap, true)?;
    for seq in 0..records {
        send_input(&producer, topic, keys, seq)?;
        if seq % 1_000_000 == 999_999 {
            eprintln!("kafka-bench: loaded {} records", seq + 1);
        }
    }
    flush(&producer, topic)?;
    eprintln!(
        "kafka-bench: loaded {records} records into `{topic}` in {:.1?}",
        started.elapsed()
    );
    Ok(())
}

/// Writes input records to `topic` at `rate` records per second, each
/// stamped with its send time, until the time in `stop_at` (microseconds
/// since the Unix epoch; 0 means not set yet) has passed. Fails when
/// `stop_at` is still unset after `give_up`. Returns how many it wrote.
pub fn produce_paced(
    bootstrap: &str,
    topic: &str,
    keys: u64,
    rate: u64,
    stop_at: &AtomicI64,
    give_up: Duration,
) -> Result<u64, String> {
    let producer = producer(bootstrap, false)?;
    let started = Instant::now();
    let mut seq = 0;
    loop {
        let stop = stop_at.load(Ordering::Acquire);
        if stop != 0 && now_micros() >= stop {
            break;
        }
        if stop == 0 && started.elapsed() > give_up {
            return Err(format!(
                "no output appeared within {give_up:?} of writing to `{topic}`"
            ));
        }
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while seq < due {
            send_input(&producer, topic, keys, seq)?;
            seq += 1;
        }
        producer.poll(Duration::ZERO);
        thread::sleep(Duration::from_millis(1));
    }
    flush(&producer, topic)?;
    Ok(seq)
}
