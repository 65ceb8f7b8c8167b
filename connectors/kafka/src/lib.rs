//! Kafka connector for `exactly`: the groundwork.
//!
//! For now this crate holds the [`CommittedReader`]: it reads Kafka
//! partitions raw over the Kafka protocol (its own TCP connections, Fetch
//! with READ_UNCOMMITTED so that control batches arrive too), decodes the
//! record batches, and applies Kafka's read_committed rule (KIP-98) itself.
//! Per partition it reports the visible records, what each producer id
//! committed, aborted or left open, the last stable offset and the high
//! watermark. It is meant as the oracle of exactly-once tests and as an
//! audit tool: it trusts no broker-side transaction bookkeeping, so it gives
//! the right answer even against brokers that do not (see
//! `docs/kafka-broker.md`).
//!
//! The broker address is read from one environment variable everywhere,
//! [`BOOTSTRAP_ENV`] (`EXACTLY_KAFKA_BOOTSTRAP`), default
//! [`DEFAULT_BOOTSTRAP`].
//!
//! Not here yet: sources and sinks for `exactly` pipelines.

mod batch;
pub mod client;
mod committed_reader;
mod connection;
mod error;
pub mod sink;
mod visibility;

pub use committed_reader::{
    BOOTSTRAP_ENV, CommittedReader, DEFAULT_BOOTSTRAP, ReaderConfig, bootstrap_from_env,
};
pub use error::ReadError;
pub use visibility::{OpenTransaction, PartitionLog, ProducerSummary, RecordHeader, VisibleRecord};
