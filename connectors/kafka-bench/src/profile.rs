//! The client tuning every contender runs with: one profile per run,
//! applied alike to the Rust (librdkafka) and the JVM (Java client)
//! contenders.
//!
//! - **client defaults**: every contender keeps its own client's
//!   defaults, apart from what exactly-once needs. Kafka Streams keeps its
//!   own producer default (`linger.ms=100`), Flink and the Java clients
//!   theirs (`linger.ms=5`, `batch.size=16384`, `max.poll.records=500`),
//!   exactly its source's and sink's.
//! - **tuned-equal**: the same three knobs set to the same values for
//!   every contender: the producer's linger and batch size, and how many
//!   records one poll hands to the job. The values were chosen by a sweep
//!   (`docs/kafka-bench.md`, "The tuned-equal profile").
//!
//! Each knob maps to what each client calls it. librdkafka's consumer has
//! no poll size (it hands out one record per call); the poll size is the
//! Java consumer's `max.poll.records` and exactly's `JobConfig::batch_size`,
//! the records the source takes per poll. This module decides values and
//! names only; `contender` passes them on.

use std::fmt;

/// The tuning profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// Each client's own defaults, apart from what exactly-once needs.
    ClientDefaults,
    /// One setting of linger, batch size and poll size for every contender.
    TunedEqual,
}

/// The tuned-equal profile's producer linger, in milliseconds.
pub const TUNED_LINGER_MS: u64 = 50;
/// The tuned-equal profile's producer batch size, in bytes.
pub const TUNED_BATCH_BYTES: u64 = 1_048_576;
/// The tuned-equal profile's poll size, in records.
pub const TUNED_POLL_RECORDS: u64 = 5_000;

/// The three knobs of a run; `None` keeps each client's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tuning {
    /// The producer's `linger.ms`.
    pub linger_ms: Option<u64>,
    /// The producer's `batch.size`, in bytes.
    pub batch_bytes: Option<u64>,
    /// Records per poll: `max.poll.records`, or exactly's batch size.
    pub poll_records: Option<u64>,
}

/// How a run picks its tuning: a profile, and for a sweep any knob set by
/// hand on top of it.
#[derive(Debug, Clone, clap::Args)]
pub struct TuningArgs {
    /// The client tuning of every contender.
    #[arg(long, value_enum, default_value = "client-defaults")]
    pub profile: Profile,
    /// Overrides the profile's producer `linger.ms`, for every contender
    /// (for a sweep).
    #[arg(long)]
    pub linger_ms: Option<u64>,
    /// Overrides the profile's producer `batch.size` in bytes, for every
    /// contender (for a sweep).
    #[arg(long)]
    pub batch_bytes: Option<u64>,
    /// Overrides the profile's records per poll (`max.poll.records`,
    /// exactly's batch size), for every contender (for a sweep).
    #[arg(long)]
    pub poll_records: Option<u64>,
}

impl TuningArgs {
    /// The profile's knobs with the overrides applied.
    pub fn tuning(&self) -> Tuning {
        let base = match self.profile {
            Profile::ClientDefaults => Tuning::default(),
            Profile::TunedEqual => Tuning {
                linger_ms: Some(TUNED_LINGER_MS),
                batch_bytes: Some(TUNED_BATCH_BYTES),
                poll_records: Some(TUNED_POLL_RECORDS),
            },
        };
        Tuning {
            linger_ms: self.linger_ms.or(base.linger_ms),
            batch_bytes: self.batch_bytes.or(base.batch_bytes),
            poll_records: self.poll_records.or(base.poll_records),
        }
    }

    /// The profile's name as the report gives it: `client-defaults`,
    /// `tuned-equal`, or `custom` when a knob was set by hand.
    pub fn name(&self) -> &'static str {
        let by_hand = [self.linger_ms, self.batch_bytes, self.poll_records];
        match self.profile {
            _ if by_hand.iter().any(Option::is_some) => "custom",
            Profile::ClientDefaults => "client-defaults",
            Profile::TunedEqual => "tuned-equal",
        }
    }
}

impl Tuning {
    /// The producer properties, by the name librdkafka and the Java client
    /// share (`linger.ms`, `batch.size`).
    pub fn producer_properties(&self) -> Vec<String> {
        let mut properties = Vec::new();
        if let Some(ms) = self.linger_ms {
            properties.push(format!("linger.ms={ms}"));
        }
        if let Some(bytes) = self.batch_bytes {
            properties.push(format!("batch.size={bytes}"));
        }
        properties
    }

    /// The Java consumer's properties (`max.poll.records`).
    pub fn java_consumer_properties(&self) -> Vec<String> {
        self.poll_records
            .map(|records| format!("max.poll.records={records}"))
            .into_iter()
            .collect()
    }
}

impl fmt::Display for Tuning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let knob =
            |value: Option<u64>| value.map_or_else(|| "default".to_owned(), |v| v.to_string());
        write!(
            f,
            "linger.ms {}, batch.size {}, records per poll {}",
            knob(self.linger_ms),
            knob(self.batch_bytes),
            knob(self.poll_records)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(profile: Profile, linger_ms: Option<u64>) -> TuningArgs {
        TuningArgs {
            profile,
            linger_ms,
            batch_bytes: None,
            poll_records: None,
        }
    }

    #[test]
    fn client_defaults_set_nothing() {
        let defaults = args(Profile::ClientDefaults, None);
        assert_eq!(defaults.name(), "client-defaults");
        let tuning = defaults.tuning();
        assert!(tuning.producer_properties().is_empty());
        assert!(tuning.java_consumer_properties().is_empty());
        assert_eq!(
            tuning.to_string(),
            "linger.ms default, batch.size default, records per poll default"
        );
    }

    #[test]
    fn tuned_equal_sets_each_knob_by_each_clients_name() {
        let tuned = args(Profile::TunedEqual, None);
        assert_eq!(tuned.name(), "tuned-equal");
        let tuning = tuned.tuning();
        assert_eq!(
            tuning.producer_properties(),
            [
                format!("linger.ms={TUNED_LINGER_MS}"),
                format!("batch.size={TUNED_BATCH_BYTES}")
            ]
        );
        assert_eq!(
            tuning.java_consumer_properties(),
            [format!("max.poll.records={TUNED_POLL_RECORDS}")]
        );
    }

    #[test]
    fn a_knob_set_by_hand_overrides_the_profile_and_makes_it_custom() {
        let swept = args(Profile::TunedEqual, Some(50));
        assert_eq!(swept.name(), "custom");
        assert_eq!(swept.tuning().linger_ms, Some(50));
        assert_eq!(swept.tuning().batch_bytes, Some(TUNED_BATCH_BYTES));
    }
}
