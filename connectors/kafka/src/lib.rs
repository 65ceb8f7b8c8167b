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

/// `exactly-kafka`'s errors become [`exactly::Error::Connector`], so that `?`
/// works in a job's `main`; the original error stays its source.
macro_rules! into_job_error {
    ($($error:ty),+ $(,)?) => {$(
        impl From<$error> for exactly::Error {
            fn from(error: $error) -> Self {
                exactly::Error::Connector {
                    connector: "kafka",
                    source: Box::new(error),
                }
            }
        }
    )+};
}

into_job_error!(
    KafkaSourceError,
    sink::SinkConfigError,
    sink::RecoveryError,
    client::ClientError,
);

#[cfg(test)]
mod tests {
    use crate::client::ClientSettings;
    use crate::sink::{KafkaSink, OutputRecord, SinkConfigError};
    use crate::source::{KafkaSource, KafkaSourceError};

    fn sink() -> exactly::Result<KafkaSink<String>> {
        let builder = KafkaSink::builder(ClientSettings::new("127.0.0.1:1"), "out", |v: String| {
            OutputRecord::value(v)
        });
        Ok(builder.producer_pool_size(0).build()?)
    }

    fn source() -> exactly::Result<KafkaSource> {
        Ok(KafkaSource::builder(ClientSettings::new("127.0.0.1:1")).build()?)
    }

    #[test]
    fn kafka_errors_become_the_jobs_error_with_their_source_kept() {
        for (error, is_ours) in [
            (
                sink().unwrap_err(),
                (|e| e.is::<SinkConfigError>()) as fn(&exactly::BoxError) -> bool,
            ),
            (source().unwrap_err(), |e| e.is::<KafkaSourceError>()),
        ] {
            let message = error.to_string();
            match error {
                exactly::Error::Connector { connector, source } => {
                    assert_eq!(connector, "kafka");
                    assert!(is_ours(&source), "{source:?}");
                    assert!(message.starts_with("kafka: "), "{message}");
                }
                other => panic!("not a connector error: {other:?}"),
            }
        }
    }
}
