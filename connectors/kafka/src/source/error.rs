//! [`KafkaSourceError`]: why the Kafka source could not be built, opened or
//! read. Every variant names what was wrong and, where there is one, what to
//! change.

use std::time::Duration;

use crate::client::ClientError;

/// Why the Kafka source failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaSourceError {
    /// A builder setting is invalid.
    #[error("invalid Kafka source configuration: {setting}: {message}")]
    Config {
        /// The builder method or property.
        setting: String,
        /// What is wrong and what to do.
        message: String,
    },

    /// A cluster call (metadata, topic creation) failed.
    #[error(transparent)]
    Client(Box<ClientError>),

    /// An rdkafka client could not be created or configured.
    #[error("Kafka source cannot {action} for {bootstrap}: {source}")]
    Consumer {
        /// What the source was doing, e.g. `assign partitions`.
        action: &'static str,
        /// The bootstrap address.
        bootstrap: String,
        /// rdkafka's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },

    /// A restored offset lies outside the partition's log.
    #[error(
        "{topic}/{partition}: the checkpoint resumes at offset {offset}, but the log holds offsets {log_start}..{log_end}: \
         {cause}; resuming anywhere else would skip or repeat records. Restore another checkpoint, or allow it with \
         KafkaSource::builder(..).reset_out_of_range_offsets_to_earliest()"
    )]
    OffsetOutOfRange {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The restored offset.
        offset: i64,
        /// The partition's log start offset.
        log_start: i64,
        /// The partition's high watermark.
        log_end: i64,
        /// What removed it.
        cause: &'static str,
    },

    /// A topic the source reads does not exist (any more).
    #[error(
        "topic `{topic}` does not exist on {bootstrap}; the Kafka source reads it, so create it \
         (or build the source with .create_missing_topics(partitions))"
    )]
    MissingTopic {
        /// The topic.
        topic: String,
        /// The bootstrap address.
        bootstrap: String,
    },

    /// A record's value did not deserialize and the policy is `Fail`.
    #[error(
        "cannot deserialize the value of the record at {topic}/{partition} offset {offset}: {reason}; \
         fix or remove the record, or choose DeserializeErrorPolicy::Skip or ::DeadLetter"
    )]
    Deserialize {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The record's offset.
        offset: i64,
        /// The deserializer's error.
        reason: String,
    },

    /// A record could not be written to the dead-letter topic.
    #[error(
        "cannot dead-letter the record at {topic}/{partition} offset {offset} to `{dead_letter_topic}` \
         on {bootstrap}: {reason}; the source stops rather than lose it"
    )]
    DeadLetter {
        /// The record's topic.
        topic: String,
        /// The record's partition.
        partition: i32,
        /// The record's offset.
        offset: i64,
        /// The dead-letter topic.
        dead_letter_topic: String,
        /// The bootstrap address.
        bootstrap: String,
        /// Why the write failed.
        reason: String,
    },

    /// The cluster kept failing for longer than the client timeout.
    #[error(
        "Kafka cluster at {bootstrap} unusable for {waited:?} (more than the client timeout): \
         {last_error}; check that the broker runs and is reachable"
    )]
    Unavailable {
        /// The bootstrap address.
        bootstrap: String,
        /// How long the trouble lasted.
        waited: Duration,
        /// The last error seen.
        last_error: String,
    },

    /// The consumer reported an error it cannot recover from.
    #[error("Kafka consumer for {bootstrap} failed: {source}")]
    Fatal {
        /// The bootstrap address.
        bootstrap: String,
        /// rdkafka's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },

    /// A call the source ran on the blocking pool did not return (it
    /// panicked, or the runtime shut down under it).
    #[error("the Kafka source could not {action}: the blocking call did not finish ({reason})")]
    BlockingCall {
        /// What the call was for.
        action: &'static str,
        /// Why it did not finish.
        reason: String,
    },

    /// The restored checkpoint holds two offsets for one partition.
    #[error(
        "the restored checkpoint has two next offsets for {topic}/{partition} ({first} and {second}); \
         the checkpoint is inconsistent, restore an older checkpoint or a savepoint"
    )]
    ConflictingRestoredOffsets {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// One offset.
        first: i64,
        /// The other.
        second: i64,
    },
}

impl From<ClientError> for KafkaSourceError {
    fn from(error: ClientError) -> Self {
        KafkaSourceError::Client(Box::new(error))
    }
}
