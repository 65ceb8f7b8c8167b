//! What the source emits ([`KafkaRecord`]) and what it checkpoints
//! ([`KafkaPosition`]).

use rdkafka::Message;
use rdkafka::message::{BorrowedMessage, Headers};
use serde::{Deserialize, Serialize};

/// One Kafka record, with its value deserialized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaRecord<V> {
    /// The topic it was read from.
    pub topic: String,
    /// The partition it was read from.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// Its timestamp.
    pub timestamp: Timestamp,
    /// Its key, `None` when the record has none.
    pub key: Option<Vec<u8>>,
    /// Its headers, in order (a key may repeat).
    pub headers: Vec<KafkaHeader>,
    /// Its value, as the source's deserializer made it.
    pub value: V,
}

/// One record header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaHeader {
    /// The header key.
    pub key: String,
    /// The header value, `None` for a null value.
    pub value: Option<Vec<u8>>,
}

/// A record timestamp, in milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Timestamp {
    /// The record has no timestamp.
    NotAvailable,
    /// Set by the producer.
    CreateTime(i64),
    /// Set by the broker when it appended the record.
    LogAppendTime(i64),
}

impl Timestamp {
    /// The milliseconds since the epoch, if there is a timestamp.
    pub fn millis(self) -> Option<i64> {
        match self {
            Timestamp::NotAvailable => None,
            Timestamp::CreateTime(ms) | Timestamp::LogAppendTime(ms) => Some(ms),
        }
    }
}

impl From<rdkafka::Timestamp> for Timestamp {
    fn from(timestamp: rdkafka::Timestamp) -> Self {
        match timestamp {
            rdkafka::Timestamp::NotAvailable => Timestamp::NotAvailable,
            rdkafka::Timestamp::CreateTime(ms) => Timestamp::CreateTime(ms),
            rdkafka::Timestamp::LogAppendTime(ms) => Timestamp::LogAppendTime(ms),
        }
    }
}

impl<V> KafkaRecord<V> {
    /// A record read from `partition` of `topic` at `offset`, without a key,
    /// timestamp or headers: for unit tests of operators that take
    /// `KafkaRecord`s. Set the other fields with [`Self::with_key`] or
    /// struct update syntax.
    ///
    /// ```
    /// use exactly_kafka::source::{KafkaRecord, Timestamp};
    ///
    /// let record = KafkaRecord::new("orders", 3, 42, "one order".to_owned()).with_key("k1");
    /// let stamped = KafkaRecord {
    ///     timestamp: Timestamp::CreateTime(1_700_000_000_000),
    ///     ..record.clone()
    /// };
    /// assert_eq!(record.key.as_deref(), Some(&b"k1"[..]));
    /// assert_eq!(stamped.timestamp.millis(), Some(1_700_000_000_000));
    /// ```
    pub fn new(topic: impl Into<String>, partition: i32, offset: i64, value: V) -> Self {
        KafkaRecord {
            topic: topic.into(),
            partition,
            offset,
            timestamp: Timestamp::NotAvailable,
            key: None,
            headers: Vec::new(),
            value,
        }
    }

    /// The record with `key`.
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// The record `message`, carrying `value`; with its headers if
    /// `headers`.
    pub(crate) fn from_message(message: &BorrowedMessage<'_>, value: V, headers: bool) -> Self {
        KafkaRecord {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp: message.timestamp().into(),
            key: message.key().map(<[u8]>::to_vec),
            headers: if headers {
                headers_of(message)
            } else {
                Vec::new()
            },
            value,
        }
    }
}

/// The headers of `message`, copied.
pub(crate) fn headers_of(message: &BorrowedMessage<'_>) -> Vec<KafkaHeader> {
    message.headers().map_or_else(Vec::new, |headers| {
        headers
            .iter()
            .map(|h| KafkaHeader {
                key: h.key.to_owned(),
                value: h.value.map(<[u8]>::to_vec),
            })
            .collect()
    })
}

/// The checkpointed position of one source subtask: the next offset to read
/// in each partition it owns and has a position for.
///
/// A partition the subtask owns but has no entry for is read from its
/// earliest offset on restore; so are partitions that appeared after the
/// checkpoint. On restore every subtask receives the positions of all old
/// subtasks and keeps the entries of the partitions it now owns, so the
/// parallelism may change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaPosition {
    /// One entry per partition, sorted by topic and partition.
    pub partitions: Vec<PartitionOffset>,
}

/// The next offset to read in one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOffset {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset of the next record not yet emitted (one past the last
    /// record emitted, skipped or dead-lettered).
    pub next_offset: i64,
}
