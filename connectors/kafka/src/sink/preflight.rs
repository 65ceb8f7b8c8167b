//! The Kafka sink's start-up checks: the exactly-once prerequisites that
//! Flink leaves to the user (reference notes §4).
//!
//! 1. `ExactlyOnce` without checkpointing is an error (Flink silently
//!    downgrades to `NONE`).
//! 2. A delivery guarantee the user did not choose is reported.
//! 3. (The source's isolation level is the source's check.)
//! 4. `transaction.timeout.ms` must not exceed the broker's
//!    `transaction.max.timeout.ms`, and must outlast a checkpoint interval
//!    plus the checkpoint timeout plus the restart budget.
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

/// The longest the check waits for the broker's configuration.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(3);

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
    let Some(interval) = job.checkpoint_interval else {
        return Err("DeliveryGuarantee::ExactlyOnce commits Kafka transactions when checkpoints complete, but checkpointing is off: \
                    set JobConfig::checkpoint_interval (Flink would silently fall back to no guarantee; this job does not start)"
            .into());
    };
    let timeout = sink.transaction_timeout;
    let reported = match sink.broker_max_timeout {
        // An explicit value is trusted: brokers that do not answer
        // DescribeConfigs would otherwise cost a timeout at every start.
        Some(_) => None,
        None => broker_max_timeout(&sink.settings),
    };
    let (max, origin) = match reported {
        Some(max) => (max, "reported by the broker"),
        None => match sink.broker_max_timeout {
            Some(max) => (max, "as configured with .broker_max_transaction_timeout()"),
            None => {
                report = report.notice(format!(
                    "the broker did not report transaction.max.timeout.ms; assuming Kafka's default of {} ms \
                     (set .broker_max_transaction_timeout() if the broker differs)",
                    KAFKA_DEFAULT_MAX_TIMEOUT.as_millis()
                ));
                (KAFKA_DEFAULT_MAX_TIMEOUT, "Kafka's default, assumed")
            }
        },
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
    let needed = interval + job.checkpoint_timeout + sink.restart_budget;
    if timeout <= needed {
        return Err(format!(
            "transaction.timeout.ms = {} ms does not outlast checkpoint interval {} ms + checkpoint timeout {} ms + restart budget {} ms = {} ms, \
             so the broker could abort a transaction before its checkpoint commits it; raise .transaction_timeout(..) (transaction.timeout.ms) \
             or lower JobConfig::checkpoint_interval / checkpoint_timeout / the sink's .restart_budget(..)",
            timeout.as_millis(),
            interval.as_millis(),
            job.checkpoint_timeout.as_millis(),
            sink.restart_budget.as_millis(),
            needed.as_millis()
        )
        .into());
    }
    let prefix = sink.prefix.as_deref().unwrap_or_default();
    Ok(report.claim(format!("Kafka transactional-id prefix `{prefix}`")))
}

/// The broker's `transaction.max.timeout.ms`, if it reports it.
fn broker_max_timeout(settings: &ClientSettings) -> Option<Duration> {
    let consumer: BaseConsumer = settings.config(&[]).create().ok()?;
    let metadata = consumer
        .fetch_metadata(None, settings.timeout.min(DESCRIBE_TIMEOUT))
        .ok()?;
    let broker = metadata.brokers().first()?.id();
    let admin: AdminClient<DefaultClientContext> = settings.config(&[]).create().ok()?;
    let options = AdminOptions::new().request_timeout(Some(settings.timeout.min(DESCRIBE_TIMEOUT)));
    let results = futures_executor::block_on(
        admin.describe_configs([&ResourceSpecifier::Broker(broker)], &options),
    )
    .ok()?;
    let config = results.into_iter().next()?.ok()?;
    let value = config.get("transaction.max.timeout.ms")?.value.as_ref()?;
    value.parse().ok().map(Duration::from_millis)
}
