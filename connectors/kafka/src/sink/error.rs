//! The sink's errors: [`FencedError`] (wrapped in [`Unrecoverable`]) and
//! [`SinkError`] for every other failed call, each keeping the librdkafka
//! or cluster error that caused it as its source. Does not own deciding
//! when a call fails (the sink) or the recovery's errors
//! ([`super::RecoveryError`]).

use std::fmt;

use exactly::{BoxError, Unrecoverable};
use rdkafka::error::KafkaError;

use super::KafkaTransaction;
use super::producer::SinkProducer;

/// A transactional id of the sink was fenced: a newer producer with the
/// same id took it over, or the broker aborted the transaction after its
/// timeout and bumped the epoch. The sink returns it wrapped in
/// [`Unrecoverable`], so the job stops instead of restarting and fencing
/// the other instance in turn.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
#[error(
    "{during} of {transaction} failed: its transactional id was fenced ({source}). Another instance of this job, or \
     another job with the same transactional-id prefix, took the id over; or the broker aborted the transaction after \
     transaction.timeout.ms. This instance stops rather than restart and fence the other in turn: stop the other \
     instance, or give each job its own .transactional_id_prefix(..)"
)]
pub struct FencedError {
    /// What the sink was doing.
    pub during: String,
    /// The transaction, as its `Display` form.
    pub transaction: String,
    /// The producer's error.
    #[source]
    pub source: KafkaError,
}

/// `error` of `what` on `transaction`, as the job should see it: fencing
/// is [`Unrecoverable`], anything else fails the attempt.
pub(super) fn kafka_failed(
    what: &str,
    transaction: &KafkaTransaction,
    producer: &SinkProducer,
    error: KafkaError,
) -> BoxError {
    if transaction.transactional_id.is_some() && producer.is_fenced(&error) {
        return Unrecoverable::boxed(FencedError {
            during: what.to_owned(),
            transaction: transaction.to_string(),
            source: error,
        });
    }
    failed(what, Some(transaction), error)
}

/// A call of the sink that failed, keeping the librdkafka or cluster
/// error that caused it as its source.
#[derive(Debug)]
pub struct SinkError {
    /// What the sink was doing, e.g. `pre-commit`.
    pub what: String,
    /// The transaction it was doing it for, as its `Display` form.
    pub transaction: Option<String>,
    /// Why it failed.
    pub source: BoxError,
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.transaction {
            Some(t) => write!(f, "{} of {t} failed: {}", self.what, self.source),
            None => write!(f, "{} failed: {}", self.what, self.source),
        }
    }
}

impl std::error::Error for SinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

pub(super) fn failed(
    what: &str,
    transaction: Option<&KafkaTransaction>,
    error: impl Into<BoxError>,
) -> BoxError {
    Box::new(SinkError {
        what: what.to_owned(),
        transaction: transaction.map(ToString::to_string),
        source: error.into(),
    })
}

#[cfg(test)]
mod tests {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};

    use super::{SinkError, failed};

    #[test]
    fn a_failed_call_keeps_the_kafka_error_as_its_source() {
        let timed_out = KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut);
        let error = failed("flushing", None, timed_out.clone());
        assert_eq!(error.to_string(), format!("flushing failed: {timed_out}"));
        let sink = error.downcast_ref::<SinkError>().expect("a SinkError");
        let source = std::error::Error::source(sink).expect("a source");
        assert_eq!(source.downcast_ref::<KafkaError>(), Some(&timed_out));
    }
}
