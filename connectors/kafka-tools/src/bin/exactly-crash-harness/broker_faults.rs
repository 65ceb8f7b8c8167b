//! Broker faults on a multi-broker cluster (`--cluster`): which broker to
//! SIGKILL (the leader of an output partition, or the transaction
//! coordinator of the job's transactional ids), and the commands that
//! kill and restart one broker by node id.
//!
//! Owns the choice of the victim and running the two commands. Does not
//! own when, in a cycle, the fault happens (that is [`crate::run`]).
//!
//! The coordinator is found the way the broker assigns it
//! (`TransactionStateManager.partitionFor`): the leader of the partition
//! `abs(javaHashCode(transactional id)) % partitions` of
//! `__transaction_state`. librdkafka offers no FindCoordinator call, and
//! the metadata request below needs no permission beyond Describe.

use std::process::Command;
use std::time::{Duration, Instant};

use exactly_kafka::client::ClientSettings;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// The broker a cluster fault kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Victim {
    /// The leader of an output partition.
    OutputLeader,
    /// The transaction coordinator of the sink's first transactional id.
    Coordinator,
    /// The transaction coordinator, killed while a restarted child
    /// recovers the transaction a kill at `after-checkpoint-complete` left
    /// pre-committed.
    CoordinatorDuringRecovery,
}

impl Victim {
    /// The victims in the order a run's cluster faults take them.
    pub(crate) const ROTATION: [Victim; 3] = [
        Victim::OutputLeader,
        Victim::Coordinator,
        Victim::CoordinatorDuringRecovery,
    ];

    /// How the report names a kill of this victim.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Victim::OutputLeader => "broker SIGKILL: output partition leader",
            Victim::Coordinator => "broker SIGKILL: transaction coordinator",
            Victim::CoordinatorDuringRecovery => {
                "broker SIGKILL: transaction coordinator during recovery"
            }
        }
    }
}

/// Java's `String.hashCode`, which places a transactional id on a
/// partition of `__transaction_state`.
fn java_hash(text: &str) -> i32 {
    text.encode_utf16().fold(0i32, |hash, unit| {
        hash.wrapping_mul(31).wrapping_add(i32::from(unit))
    })
}

/// The partition of `__transaction_state` that coordinates
/// `transactional_id` among `partitions` (Kafka's `Utils.abs` is
/// `n & 0x7fffffff`).
fn coordinator_partition(transactional_id: &str, partitions: usize) -> i32 {
    let partitions = i32::try_from(partitions).unwrap_or(i32::MAX).max(1);
    (java_hash(transactional_id) & 0x7fff_ffff) % partitions
}

/// How long a Metadata request is retried while the cluster recovers from
/// the previous fault.
const METADATA_PATIENCE: Duration = Duration::from_secs(60);

/// The leader's node id of each partition of `topic`, by partition, from
/// one Metadata request; a failed request (a broker just restarted, or
/// still loading) is retried for [`METADATA_PATIENCE`].
fn leaders(settings: &ClientSettings, topic: &str) -> Result<Vec<(i32, i32)>, String> {
    let consumer: BaseConsumer = settings
        .rdkafka_config()
        .create()
        .map_err(|e| format!("cannot create a metadata client: {e}"))?;
    let deadline = Instant::now() + METADATA_PATIENCE;
    let metadata = loop {
        match consumer.fetch_metadata(Some(topic), Duration::from_secs(15)) {
            Ok(metadata) => break metadata,
            Err(e) if Instant::now() < deadline => {
                println!("crash-harness: metadata of `{topic}`: {e}; retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => {
                return Err(format!(
                    "metadata of `{topic}`: {e} (still after {METADATA_PATIENCE:?})"
                ));
            }
        }
    };
    let mut leaders: Vec<(i32, i32)> = metadata
        .topics()
        .first()
        .map(|t| {
            t.partitions()
                .iter()
                .map(|p| (p.id(), p.leader()))
                .collect()
        })
        .unwrap_or_default();
    leaders.sort_unstable();
    if leaders.is_empty() {
        return Err(format!(
            "`{topic}` has no partitions in the cluster metadata"
        ));
    }
    Ok(leaders)
}

/// Kafka's transaction log topic.
const TRANSACTION_STATE: &str = "__transaction_state";

/// The node id of the broker to kill.
pub(crate) fn victim_node(
    settings: &ClientSettings,
    victim: Victim,
    output: &str,
    transactional_id: &str,
) -> Result<i32, String> {
    let (topic, partition, leaders) = match victim {
        Victim::OutputLeader => (output, 0, leaders(settings, output)?),
        Victim::Coordinator | Victim::CoordinatorDuringRecovery => {
            let leaders = leaders(settings, TRANSACTION_STATE)?;
            let partition = coordinator_partition(transactional_id, leaders.len());
            (TRANSACTION_STATE, partition, leaders)
        }
    };
    leaders
        .iter()
        .find(|(id, _)| *id == partition)
        .map(|(_, leader)| *leader)
        .filter(|leader| *leader >= 0)
        .ok_or_else(|| {
            format!(
                "partition {partition} of `{topic}` has no leader ({} partitions)",
                leaders.len()
            )
        })
}

/// Runs `template` with `{node}` replaced by `node`, through `sh -c`.
pub(crate) fn run_for_node(template: &str, node: i32) -> Result<(), String> {
    let command = template.replace("{node}", &node.to_string());
    let status = Command::new("sh")
        .arg("-c")
        .arg(&command)
        .status()
        .map_err(|e| format!("cannot run `{command}`: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{command}` failed ({status})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coordinator_partition_follows_javas_string_hash() {
        // Values of Java's "...".hashCode().
        assert_eq!(java_hash(""), 0);
        assert_eq!(java_hash("ab"), 3105);
        assert_eq!(java_hash("hello"), 99_162_322);
        assert_eq!(java_hash("Hello World"), -862_545_276);
        // A negative hash: Utils.abs masks the sign bit off.
        assert_eq!(
            coordinator_partition("Hello World", 50),
            (-862_545_276_i32 & 0x7fff_ffff) % 50
        );
        assert_eq!(coordinator_partition("hello", 50), 99_162_322 % 50);
    }
}
