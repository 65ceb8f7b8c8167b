//! `exactly-kafka-wire`: the raw Kafka protocol client of `exactly`.
//!
//! Speaks the Kafka protocol itself (over [`kafka_protocol`]'s message
//! types) for what librdkafka does not offer: reading a partition raw and
//! applying the read_committed rule without trusting the broker, and the
//! transaction APIs the sink's recovery and the tools need.
//!
//! `kafka-protocol` serves for everything it gets right for us: the
//! message types and their encoding, version-aware request headers, error
//! names ([`connection::error_name`], `ResponseError` in the callers) and
//! the decompressors. Own code remains in one place only, record batch
//! decoding, where `kafka-protocol` 0.18 is measurably wrong for this
//! reader (repeated header keys lost, allocations sized from unchecked
//! counts, a truncated last batch an error): see [`batch`].
//!
//! | module | owns |
//! |---|---|
//! | [`connection`] | one connection to one broker: framing, version negotiation, TLS and SASL on connect, timeouts; Kafka's error names |
//! | [`security`] | [`security::Security`]: librdkafka's TLS and SASL properties (`security.protocol`, `ssl.*`, `sasl.*`), validated and loaded once, the TLS configuration built from them; [`security::SecurityError`] |
//! | `sasl` | (private) the client messages of SASL PLAIN and SCRAM-SHA-256/512, the server's signature checked |
//! | [`batch`] | decoding record batches (message format v2) with every header kept |
//! | [`header`] | [`RecordHeader`], shared by the decoder and the visibility rule |
//! | [`visibility`] | the read_committed rule (KIP-98) and the result types of a partition read |
//! | [`committed_reader`] | [`CommittedReader`]: whole partitions read raw, the rule applied; one transaction's outcome |
//! | [`transactions`] | open transactions as the cluster lists them (ListTransactions, DescribeProducers) |
//! | [`error`] | [`ReadError`], the typed errors of everything above |
//! | `fake_broker` | (feature `test-support`) a fake broker on the loopback interface and a record batch encoder, for tests |
//!
//! Does not own: the connector (`exactly-kafka`: sources, sinks, client
//! settings, the broker address from the environment), the oracles that
//! compare this reader with an rdkafka consumer, and the command-line tools
//! (`exactly-kafka-tools`). It depends on no other crate of the workspace
//! and not on rdkafka. Its users are the sink's recovery and preflight in
//! `exactly-kafka`, and `exactly-kafka-tools`.
//!
//! Within the crate the modules import downwards only: `committed_reader`
//! and `transactions` use `connection`, which uses `security` and `sasl`;
//! `sasl` uses `security`'s credential types; `committed_reader` uses
//! `visibility`, which uses `batch`; `batch` and `visibility` share
//! `header`; everything uses `error`.

pub mod batch;
pub mod committed_reader;
pub mod connection;
pub mod error;
#[cfg(any(test, feature = "test-support"))]
pub mod fake_broker;
pub mod header;
mod sasl;
pub mod security;
pub mod transactions;
pub mod visibility;

pub use committed_reader::{CommittedReader, ReaderConfig};
pub use error::ReadError;
pub use header::RecordHeader;
pub use visibility::{
    OpenTransaction, PartitionLog, TransactionCounts, TransactionOutcome, VisibleRecord,
};
