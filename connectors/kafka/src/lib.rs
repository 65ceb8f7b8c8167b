//! Kafka connectors for `exactly`: exactly-once Kafka→Kafka pipelines.
//!
//! | module | owns |
//! |---|---|
//! | [`sink`] | [`sink::KafkaSink`]: `ExactlyOnce` with transactions committed on checkpoint completion, `AtLeastOnce`, `None` |
//! | [`source`] | [`source::KafkaSource`]: explicit partition assignment, per-partition offsets in checkpoints (rescalable), earliest for partitions the checkpoint does not know, partition discovery, read_committed by default, group commits for monitoring only |
//! | [`deserialize`] | value deserializers (bytes, UTF-8, JSON, closures) and what to do with a record that does not deserialize (fail, skip, dead-letter) |
//! | [`client`] | how to reach a cluster, and the topic checks at start |
//! | [`CommittedReader`] | reads partitions raw over the Kafka protocol and applies the read_committed rule (KIP-98) itself: the oracle of the tests and of the audit |
//! | [`connection`] | one connection to one broker over the Kafka protocol (framing, version negotiation, timeouts), for requests the crate does not wrap |
//! | [`oracle`] | the two independent read_committed oracles (the raw reader and an rdkafka consumer) compared record by record, and the check that nothing is left open on a topic |
//! | [`audit`] | the `exactly-audit` report: transactions, visibility, duplicates, gaps, stuck last stable offsets |
//!
//! Binaries: `exactly-audit` (check a topic of an exactly-once deployment)
//! and `exactly-crash-harness` (kill the exactly-once pipeline at every
//! phase of the checkpoint protocol and check its output).
//!
//! The committed reader trusts no broker-side transaction bookkeeping, so it
//! gives the right answer even against brokers that list no aborted
//! transactions in Fetch responses (see `docs/kafka-broker.md`).
//!
//! The broker address is read from one environment variable everywhere,
//! [`BOOTSTRAP_ENV`] (`EXACTLY_KAFKA_BOOTSTRAP`), default
//! [`DEFAULT_BOOTSTRAP`].

pub mod audit;
mod batch;
pub mod client;
mod committed_reader;
pub mod connection;
pub mod deserialize;
mod error;
pub mod oracle;
pub mod sink;
pub mod source;
mod transactions;
mod visibility;

pub use committed_reader::{
    BOOTSTRAP_ENV, CommittedReader, DEFAULT_BOOTSTRAP, ReaderConfig, bootstrap_from_env,
};
pub use error::ReadError;
pub use source::{KafkaRecord, KafkaSource, KafkaSourceError};
pub use visibility::{OpenTransaction, PartitionLog, ProducerSummary, RecordHeader, VisibleRecord};
