//! The Kafka sink's start-up checks: the exactly-once prerequisites that
//! Flink leaves to the user (its legacy `FlinkKafkaProducer` switches to
//! `NONE` without checkpointing; its `KafkaSink` does not check).
//!
//! 1. `ExactlyOnce` without checkpointing is an error (Flink silently
//!    downgrades to `NONE`).
//! 2. A delivery guarantee the user did not choose is reported.
//! 3. (The source's isolation level is the source's check.)
//! 4. `transaction.timeout.ms` must not exceed the broker's
//!    `transaction.max.timeout.ms`, and must outlast the longest a
//!    transaction can live while checkpoints complete
//!    ([`JobSettings::longest_transaction_lifetime`]) plus the restart
//!    budget: exactly what the runtime's lifetime guard lets run.
//!
//! Also: the topic exists (or is created when asked), and the
//! transactional-id prefix is claimed so that a second sink with the same
//! prefix in the job is a start-up error.

use std::time::Duration;

use exactly::BoxError;
use exactly::preflight::{JobSettings, PreflightReport};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::{DeliveryGuarantee, KafkaSink};
use crate::client::{ClientSettings, ensure_topics};

/// Kafka's default `transaction.max.timeout.ms`.
const KAFKA_DEFAULT_MAX_TIMEOUT: Duration = Duration::from_millis(900_000);

/// The longest the check waits for each answer about the broker's
/// configuration.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn check<T>(
    sink: &KafkaSink<T>,
    job: &JobSettings,
) -> Result<PreflightReport, BoxError> {
    let mut report = PreflightReport::new();
    if !sink.guarantee_chosen {
        report = report.notice(format!(
            "no delivery guarantee was chosen, so {:?} is used; choose one with .delivery_guarantee(DeliveryGuarantee::...)",
            sink.guarantee
        ));
    }
    ensure_topics(
        &sink.settings,
        std::slice::from_ref(&sink.topic),
        sink.missing_topics,
    )?;
    if sink.guarantee != DeliveryGuarantee::ExactlyOnce {
        return Ok(report);
    }
    let Some(longest) = job.longest_transaction_lifetime() else {
        return Err("DeliveryGuarantee::ExactlyOnce commits Kafka transactions when checkpoints complete, but checkpointing is off: \
                    set JobConfig::checkpoint_interval (Flink would silently fall back to no guarantee; this job does not start)"
            .into());
    };
    let timeout = sink.transaction_timeout;
    let (max, origin) = match broker_max_timeout(&sink.settings) {
        Ok(max) => (max, "reported by the broker"),
        Err(why) => {
            report = report.notice(format!(
                "could not read transaction.max.timeout.ms from the broker ({why}); assuming Kafka's default of {} ms",
                KAFKA_DEFAULT_MAX_TIMEOUT.as_millis()
            ));
            (KAFKA_DEFAULT_MAX_TIMEOUT, "Kafka's default, assumed")
        }
    };
    if timeout > max {
        return Err(format!(
            "transaction.timeout.ms = {} ms exceeds the broker's transaction.max.timeout.ms = {} ms ({origin}); \
             lower it with .transaction_timeout(..) or raise transaction.max.timeout.ms on the broker",
            timeout.as_millis(),
            max.as_millis()
        )
        .into());
    }
    let needed = longest + sink.restart_budget;
    if timeout <= needed {
        return Err(format!(
            "transaction.timeout.ms = {} ms does not outlast the longest a transaction can live while checkpoints complete, \
             max(checkpoint interval {} ms, checkpoint timeout {} ms + min pause {} ms) + checkpoint timeout = {} ms, \
             plus the restart budget {} ms = {} ms, so the broker could abort a transaction before its checkpoint commits it \
             (and the runtime would fail the job rather than let it); raise .transaction_timeout(..) (transaction.timeout.ms) \
             or lower JobConfig::checkpoint_timeout / checkpoint_interval / min_pause_between_checkpoints / the sink's \
             .restart_budget(..)",
            timeout.as_millis(),
            job.checkpoint_interval.unwrap_or_default().as_millis(),
            job.checkpoint_timeout.as_millis(),
            job.min_pause.as_millis(),
            longest.as_millis(),
            sink.restart_budget.as_millis(),
            needed.as_millis()
        )
        .into());
    }
    let prefix = sink.prefix.as_deref().unwrap_or_default();
    Ok(report.claim(format!("Kafka transactional-id prefix `{prefix}`")))
}

/// The broker's `transaction.max.timeout.ms`, read with DescribeConfigs
/// from the first broker in the cluster metadata; or why it could not be.
fn broker_max_timeout(settings: &ClientSettings) -> Result<Duration, String> {
    let wait = settings.timeout.min(DESCRIBE_TIMEOUT);
    let consumer: BaseConsumer = settings.config(&[]).create().map_err(|e| e.to_string())?;
    let metadata = consumer
        .fetch_metadata(None, wait)
        .map_err(|e| format!("Metadata: {e}"))?;
    let broker = metadata
        .brokers()
        .first()
        .ok_or("the cluster metadata lists no broker")?
        .id();
    let admin: AdminClient<DefaultClientContext> =
        settings.config(&[]).create().map_err(|e| e.to_string())?;
    let options = AdminOptions::new().request_timeout(Some(wait));
    let results = futures_executor::block_on(
        admin.describe_configs([&ResourceSpecifier::Broker(broker)], &options),
    )
    .map_err(|e| format!("DescribeConfigs: {e}"))?;
    let config = results
        .into_iter()
        .next()
        .ok_or("DescribeConfigs answered nothing")?
        .map_err(|e| format!("DescribeConfigs of broker {broker}: {e}"))?;
    let value = config
        .get("transaction.max.timeout.ms")
        .and_then(|entry| entry.value.as_ref())
        .ok_or_else(|| format!("broker {broker} did not list transaction.max.timeout.ms"))?;
    value
        .parse()
        .map(Duration::from_millis)
        .map_err(|_| format!("broker {broker} reported transaction.max.timeout.ms = {value:?}"))
}
