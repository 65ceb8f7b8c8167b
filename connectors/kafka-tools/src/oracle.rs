//! Two independent read_committed oracles on one topic, and their
//! comparison.
//!
//! Owns: reading a topic with the raw [`CommittedReader`] (which applies
//! KIP-98 client-side from the control records) and with an rdkafka
//! consumer at `isolation.level=read_committed` (where the broker applies
//! it), and failing at the first record where they differ. Exactly-once
//! tests and the crash harness assert output through
//! [`read_committed`]; a bug in either the broker's or our own reading of
//! transactions then shows up as a disagreement instead of a wrong verdict.
//!
//! Also owns [`settled`]: the check, after a job has stopped, that nothing
//! is left open on a topic (no open transaction, last stable offset equal
//! to the high watermark).
//!
//! Does not own how the raw log is decoded (`exactly-kafka-wire`). Every
//! function here blocks (the consumer does); call them from a plain thread.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use exactly_kafka::client::ClientSettings;
use exactly_kafka_wire::connection::block_on;
use exactly_kafka_wire::{CommittedReader, PartitionLog, ReadError, VisibleRecord};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};

/// How long [`read_committed`] waits for the consumer to reach the raw
/// reader's last stable offset, and [`settled`] for markers to land.
pub const ORACLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the two oracles could not be compared, or how they differ.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OracleError {
    /// The raw reader failed.
    #[error(transparent)]
    Raw(#[from] ReadError),
    /// The rdkafka consumer failed.
    #[error("the read_committed consumer of `{topic}` at {bootstrap} failed: {source}")]
    Consumer {
        /// The topic.
        topic: String,
        /// The bootstrap address.
        bootstrap: String,
        /// The consumer's error.
        #[source]
        source: Box<KafkaError>,
    },
    /// The consumer did not reach the raw reader's last stable offset.
    #[error(
        "the read_committed consumer of `{topic}` partition {partition} reached offset {reached} within {waited:?}, \
         but the raw reader's last stable offset is {last_stable_offset}: the broker holds back records that the \
         raw reader sees as committed"
    )]
    Incomplete {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The consumer's position when it gave up.
        reached: i64,
        /// The raw reader's last stable offset.
        last_stable_offset: i64,
        /// How long it waited.
        waited: Duration,
    },
    /// The oracles saw different records.
    #[error(
        "the oracles disagree on `{topic}` partition {partition} at offset {offset}: the raw reader saw {raw}, \
         the read_committed consumer saw {consumer}"
    )]
    Disagree {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The first offset where they differ.
        offset: i64,
        /// What the raw reader saw there.
        raw: String,
        /// What the consumer saw there.
        consumer: String,
    },
    /// A topic still has an open transaction, or a last stable offset below
    /// its high watermark, after the writers stopped.
    #[error("`{topic}` did not settle within {waited:?}: {what}")]
    Unsettled {
        /// The topic.
        topic: String,
        /// What is left open.
        what: String,
        /// How long it waited.
        waited: Duration,
    },
}

/// One record as both oracles can describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
}

impl Seen {
    fn describe(seen: Option<&Seen>) -> String {
        match seen {
            None => "no record".to_owned(),
            Some(s) => format!(
                "offset {} key {:?} value {:?}",
                s.offset,
                s.key.as_deref().map(String::from_utf8_lossy),
                s.value.as_deref().map(String::from_utf8_lossy)
            ),
        }
    }
}

impl From<&VisibleRecord> for Seen {
    fn from(record: &VisibleRecord) -> Self {
        Seen {
            offset: record.offset,
            key: record.key.as_ref().map(|k| k.to_vec()),
            value: record.value.as_ref().map(|v| v.to_vec()),
        }
    }
}

/// Every partition of `topic` read raw, applying read_committed here.
fn read_raw(cluster: &ClientSettings, topic: &str) -> Result<Vec<PartitionLog>, ReadError> {
    block_on(async {
        let mut reader = CommittedReader::connect(cluster.reader_config()?).await?;
        reader.read_topic(topic).await
    })
    .unwrap_or_else(|source| {
        Err(ReadError::Io {
            address: cluster.bootstrap.clone(),
            api: "runtime",
            source,
        })
    })
}

/// Reads `topic` with both oracles and returns the raw reader's logs once
/// the rdkafka read_committed consumer has seen exactly the same records,
/// in the same order, below each partition's last stable offset.
///
/// # Errors
///
/// [`OracleError::Disagree`] names the first differing offset; the other
/// variants say why a side could not read.
pub fn read_committed(
    cluster: &ClientSettings,
    topic: &str,
) -> Result<Vec<PartitionLog>, OracleError> {
    let logs = read_raw(cluster, topic)?;
    let targets: BTreeMap<i32, i64> = logs
        .iter()
        .map(|l| (l.partition, l.last_stable_offset))
        .collect();
    let consumed = consume(cluster, topic, &targets)?;
    for log in &logs {
        let raw: Vec<Seen> = log
            .records
            .iter()
            .filter(|r| r.offset < log.last_stable_offset)
            .map(Seen::from)
            .collect();
        let theirs = consumed.get(&log.partition).map_or(&[][..], Vec::as_slice);
        if let Some((offset, raw, consumer)) = first_difference(&raw, theirs) {
            return Err(OracleError::Disagree {
                topic: topic.to_owned(),
                partition: log.partition,
                offset,
                raw,
                consumer,
            });
        }
    }
    Ok(logs)
}

/// The first place where two record sequences differ: its offset, and
/// what each side holds there.
fn first_difference(ours: &[Seen], theirs: &[Seen]) -> Option<(i64, String, String)> {
    let at = (0..ours.len().max(theirs.len())).find(|&i| ours.get(i) != theirs.get(i))?;
    let (a, b) = (ours.get(at), theirs.get(at));
    let offset = match (a, b) {
        (Some(a), Some(b)) => a.offset.min(b.offset),
        (Some(x), None) | (None, Some(x)) => x.offset,
        (None, None) => unreachable!("the sequences differ at this index"),
    };
    Some((offset, Seen::describe(a), Seen::describe(b)))
}

/// What an rdkafka read_committed consumer delivers from every partition
/// in `targets`, from the beginning up to (not including) its target
/// offset.
fn consume(
    cluster: &ClientSettings,
    topic: &str,
    targets: &BTreeMap<i32, i64>,
) -> Result<BTreeMap<i32, Vec<Seen>>, OracleError> {
    let failed = |source| OracleError::Consumer {
        topic: topic.to_owned(),
        bootstrap: cluster.bootstrap.clone(),
        source: Box::new(source),
    };
    let consumer: BaseConsumer = cluster
        .rdkafka_config()
        .set("group.id", format!("exactly-oracle-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        // The loop below stops on positions, not on end-of-partition
        // events, which librdkafka would also report as a global error.
        .set("enable.partition.eof", "false")
        .create()
        .map_err(failed)?;
    let mut assignment = TopicPartitionList::new();
    for partition in targets.keys() {
        assignment
            .add_partition_offset(topic, *partition, Offset::Beginning)
            .map_err(failed)?;
    }
    consumer.assign(&assignment).map_err(failed)?;
    let mut seen: BTreeMap<i32, Vec<Seen>> = targets.keys().map(|p| (*p, Vec::new())).collect();
    let mut reached: BTreeMap<i32, i64> = targets.keys().map(|p| (*p, 0)).collect();
    let started = Instant::now();
    while let Some((&partition, _)) = reached.iter().find(|(p, at)| **at < targets[*p]) {
        if started.elapsed() > ORACLE_TIMEOUT {
            return Err(OracleError::Incomplete {
                topic: topic.to_owned(),
                partition,
                reached: reached[&partition],
                last_stable_offset: targets[&partition],
                waited: ORACLE_TIMEOUT,
            });
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(error)) => return Err(failed(error)),
            Some(Ok(message)) => {
                let p = message.partition();
                if message.offset() < targets.get(&p).copied().unwrap_or(0) {
                    seen.entry(p).or_default().push(Seen {
                        offset: message.offset(),
                        key: message.key().map(<[u8]>::to_vec),
                        value: message.payload().map(<[u8]>::to_vec),
                    });
                }
            }
        }
        // The position moves past control records and aborted batches too.
        let position = consumer.position().map_err(failed)?;
        for element in position.elements_for_topic(topic) {
            if let Offset::Offset(at) = element.offset() {
                reached.insert(element.partition(), at);
            }
        }
    }
    Ok(seen)
}

/// Waits until no transaction is open on any partition of `topic` and its
/// last stable offset (as computed from the log, and as the broker reports
/// it) equals its high watermark. Commit markers are written after the
/// commit returns (FLINK-40585), so this polls.
///
/// # Errors
///
/// [`OracleError::Unsettled`] names the partitions left open and the
/// producers that hold them.
pub fn settled(cluster: &ClientSettings, topic: &str) -> Result<Vec<PartitionLog>, OracleError> {
    let started = Instant::now();
    loop {
        let logs = read_raw(cluster, topic)?;
        let open: Vec<String> = logs
            .iter()
            .filter(|l| {
                !l.open_transactions.is_empty()
                    || l.last_stable_offset != l.high_watermark
                    || l.broker_last_stable_offset != l.high_watermark
            })
            .map(|l| {
                format!(
                    "partition {} has high watermark {}, last stable offset {} (broker: {}), open transactions {:?}",
                    l.partition,
                    l.high_watermark,
                    l.last_stable_offset,
                    l.broker_last_stable_offset,
                    l.open_transactions
                )
            })
            .collect();
        if open.is_empty() {
            return Ok(logs);
        }
        if started.elapsed() > ORACLE_TIMEOUT {
            return Err(OracleError::Unsettled {
                topic: topic.to_owned(),
                what: open.join("; "),
                waited: ORACLE_TIMEOUT,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(offset: i64, value: &str) -> Seen {
        Seen {
            offset,
            key: Some(b"k".to_vec()),
            value: Some(value.as_bytes().to_vec()),
        }
    }

    #[test]
    fn equal_sequences_agree() {
        let records = [seen(0, "a"), seen(2, "b")];
        assert_eq!(first_difference(&records, &records), None);
        assert_eq!(first_difference(&[], &[]), None);
    }

    #[test]
    fn the_first_differing_offset_is_named() {
        let ours = [seen(0, "a"), seen(2, "b"), seen(3, "c")];
        let (offset, raw, consumer) =
            first_difference(&ours, &[seen(0, "a"), seen(2, "x")]).expect("they differ");
        assert_eq!(offset, 2);
        assert_eq!(raw, "offset 2 key Some(\"k\") value Some(\"b\")");
        assert_eq!(consumer, "offset 2 key Some(\"k\") value Some(\"x\")");
        let skipped =
            first_difference(&ours, &[seen(0, "a"), seen(3, "c")]).expect("one is missing");
        assert_eq!(skipped.0, 2, "a record the consumer skipped");
        let extra = first_difference(&ours[..1], &ours).expect("one is extra");
        assert_eq!((extra.0, extra.1.as_str()), (2, "no record"));
    }
}
