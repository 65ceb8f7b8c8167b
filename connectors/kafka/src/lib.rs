//! Kafka connectors for `exactly`: exactly-once Kafka→Kafka pipelines.
//!
//! | module | owns |
//! |---|---|
//! | [`sink`] | [`sink::KafkaSink`]: `ExactlyOnce` with transactions committed on checkpoint completion, `AtLeastOnce`, `None`; its recovery and preflight |
//! | [`source`] | [`source::KafkaSource`]: explicit partition assignment, per-partition offsets in checkpoints (rescalable), earliest for partitions the checkpoint does not know, partition discovery, read_committed by default, group commits for monitoring only |
//! | [`deserialize`] | value deserializers (bytes, UTF-8, JSON, closures) and what to do with a record that does not deserialize (fail, skip, dead-letter) |
//! | [`client`] | how to reach a cluster, the broker address from the environment, and the topic checks at start |
//!
//! Does not own:
//!
//! * the raw Kafka protocol client (connections, record batch decoding, the
//!   read_committed rule applied by the reader itself, ListTransactions):
//!   that is `exactly-kafka-wire`, and only the sink's recovery
//!   (`sink/recovery.rs`: `EndTxn` for a recorded transaction, the log read
//!   that decides an ambiguous answer, the listing of lingering
//!   transactions) imports it;
//! * the tools (`exactly-audit`, `exactly-crash-harness`) and the
//!   read_committed oracles: `exactly-kafka-tools`.
//!
//! The broker address is read from one environment variable everywhere,
//! [`BOOTSTRAP_ENV`] (`EXACTLY_KAFKA_BOOTSTRAP`), default
//! [`DEFAULT_BOOTSTRAP`].

pub mod client;
pub mod deserialize;
pub mod sink;
pub mod source;

pub use client::{BOOTSTRAP_ENV, DEFAULT_BOOTSTRAP, bootstrap_from_env};
pub use source::{KafkaRecord, KafkaSource, KafkaSourceError};

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
