//! The dead-letter producer of one source subtask, for
//! [`DeserializeErrorPolicy::DeadLetter`](crate::deserialize::DeserializeErrorPolicy::DeadLetter).
//!
//! Owns: creating the idempotent producer, sending a rejected record with
//! its own headers plus the [`dead_letter_headers`] that say where it came
//! from and why, and awaiting the deliveries of a batch. Does not own
//! deciding which records are rejected (the reader applies the policy).

use rdkafka::Message;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use super::dead_letter_headers;
use super::error::KafkaSourceError;
use super::metrics::KafkaSourceMetrics;
use crate::client::ClientSettings;

/// The dead-letter producer and its topic.
pub(crate) struct DeadLetter {
    producer: FutureProducer,
    topic: String,
    bootstrap: String,
}

/// Where a dead-lettered record came from, while its delivery is awaited.
pub(crate) struct Pending {
    delivery: DeliveryFuture,
    topic: String,
    partition: i32,
    offset: i64,
}

impl DeadLetter {
    /// A producer for `topic`, with acks from every replica and deliveries
    /// bounded by the client timeout.
    pub(crate) fn create(
        settings: &ClientSettings,
        client_id: &str,
        topic: &str,
    ) -> Result<DeadLetter, KafkaSourceError> {
        let timeout = settings.timeout.as_millis().max(1).to_string();
        let producer: FutureProducer = settings
            .config(&[
                ("client.id", format!("{client_id}-dead-letter")),
                ("enable.idempotence", "true".into()),
                ("acks", "all".into()),
                ("message.timeout.ms", timeout),
            ])
            .create()
            .map_err(|source| KafkaSourceError::Consumer {
                action: "create the dead-letter producer",
                bootstrap: settings.bootstrap.clone(),
                source,
            })?;
        Ok(DeadLetter {
            producer,
            topic: topic.to_owned(),
            bootstrap: settings.bootstrap.clone(),
        })
    }

    /// Sends `message`, which did not deserialize because of `reason`.
    pub(crate) fn send(
        &self,
        message: &BorrowedMessage<'_>,
        reason: &str,
    ) -> Result<Pending, KafkaSourceError> {
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        let mut headers = OwnedHeaders::new();
        if let Some(own) = message.headers() {
            for header in own.iter() {
                headers = headers.insert(header);
            }
        }
        let (partition_text, offset_text) = (partition.to_string(), offset.to_string());
        for (key, value) in [
            (dead_letter_headers::TOPIC, topic),
            (dead_letter_headers::PARTITION, &partition_text),
            (dead_letter_headers::OFFSET, &offset_text),
            (dead_letter_headers::ERROR, reason),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(value) = message.payload() {
            record = record.payload(value);
        }
        let delivery = self
            .producer
            .send_result(record)
            .map_err(|(e, _)| self.error(topic, partition, offset, e.to_string()))?;
        Ok(Pending {
            delivery,
            topic: topic.to_owned(),
            partition,
            offset,
        })
    }

    /// Waits until the broker has every record of `pending`, so the
    /// source's position never moves past a record that is not safe
    /// somewhere. Bounded by the producer's `message.timeout.ms`.
    pub(crate) async fn await_deliveries(
        &self,
        pending: Vec<Pending>,
        metrics: &KafkaSourceMetrics,
    ) -> Result<(), KafkaSourceError> {
        for Pending {
            delivery,
            topic,
            partition,
            offset,
        } in pending
        {
            let failure = match delivery.await {
                Ok(Ok(_)) => None,
                Ok(Err((error, _))) => Some(error.to_string()),
                Err(_) => Some("the producer was closed before the broker answered".to_owned()),
            };
            if let Some(reason) = failure {
                return Err(self.error(&topic, partition, offset, reason));
            }
            metrics.add_dead_lettered(1);
        }
        Ok(())
    }

    fn error(&self, topic: &str, partition: i32, offset: i64, reason: String) -> KafkaSourceError {
        KafkaSourceError::DeadLetter {
            topic: topic.to_owned(),
            partition,
            offset,
            dead_letter_topic: self.topic.clone(),
            bootstrap: self.bootstrap.clone(),
            reason,
        }
    }
}
