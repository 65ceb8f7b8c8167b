//! Which subtask reads which partition, and where it starts.
//!
//! Owns: the owner function (Flink's `KafkaSourceEnumerator` formula, with
//! Java's `String.hashCode`, so it is stable across processes and matches
//! Flink's spread), merging the positions of every old subtask on restore,
//! and choosing the start offset of each partition a subtask owns. Does not
//! own talking to Kafka.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rdkafka::Offset;

use super::error::KafkaSourceError;
use super::record::{KafkaPosition, PartitionOffset};

/// A topic and a partition.
pub(crate) type TopicPartition = (String, i32);

/// The subtask, out of `parallelism`, that reads `partition` of `topic`:
/// `((hash(topic) * 31 & i32::MAX) % parallelism + partition) % parallelism`,
/// where `hash` is Java's `String.hashCode`. This is the formula of Flink's
/// `KafkaSourceEnumerator::getSplitOwner`, so a topic's partitions go
/// round-robin over the subtasks starting at a topic-dependent subtask, and
/// the result depends on nothing but its arguments.
///
/// # Panics
///
/// When `parallelism` is zero or `partition` is negative.
pub fn partition_owner(topic: &str, partition: i32, parallelism: usize) -> usize {
    assert!(parallelism > 0, "parallelism must be at least 1");
    let partition = usize::try_from(partition).expect("partitions are not negative");
    let start = (java_string_hash(topic).wrapping_mul(31) & i32::MAX) as usize % parallelism;
    (start + partition % parallelism) % parallelism
}

/// Java's `String.hashCode`: `s[0]*31^(n-1) + ... + s[n-1]` over UTF-16
/// code units, in wrapping 32-bit arithmetic.
fn java_string_hash(text: &str) -> i32 {
    text.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    })
}

/// Merges the positions of every subtask of a restored checkpoint into one
/// map of next offsets. Each partition is owned by one subtask at a time, so
/// two different offsets for one partition mean the checkpoint is not one
/// this source wrote consistently: that is an error, not a guess.
pub(crate) fn merge_restored(
    restored: Vec<KafkaPosition>,
) -> Result<BTreeMap<TopicPartition, i64>, KafkaSourceError> {
    let mut merged = BTreeMap::new();
    for position in restored {
        for PartitionOffset {
            topic,
            partition,
            next_offset,
        } in position.partitions
        {
            match merged.insert((topic.clone(), partition), next_offset) {
                Some(other) if other != next_offset => {
                    return Err(KafkaSourceError::ConflictingRestoredOffsets {
                        topic,
                        partition,
                        first: other,
                        second: next_offset,
                    });
                }
                _ => {}
            }
        }
    }
    Ok(merged)
}

/// The partitions of the topics in `counts` (topic to partition count) that
/// subtask `index` of `parallelism` owns and that are not `assigned` yet,
/// each with the offset to start at: the restored next offset if there is
/// one, otherwise the earliest offset (FLIP-288: a partition the checkpoint
/// does not know may hold records nobody has read yet).
pub(crate) fn start_offsets(
    counts: &HashMap<String, usize>,
    index: usize,
    parallelism: usize,
    restored: &BTreeMap<TopicPartition, i64>,
    assigned: &BTreeSet<TopicPartition>,
) -> Vec<(TopicPartition, Offset)> {
    let mut topics: Vec<(&String, &usize)> = counts.iter().collect();
    topics.sort();
    let mut starts = Vec::new();
    for (topic, &count) in topics {
        for partition in 0..count {
            let partition = i32::try_from(partition).expect("fewer than 2^31 partitions");
            let key = (topic.clone(), partition);
            if assigned.contains(&key) || partition_owner(topic, partition, parallelism) != index {
                continue;
            }
            let offset = restored
                .get(&key)
                .map_or(Offset::Beginning, |&next| Offset::Offset(next));
            starts.push((key, offset));
        }
    }
    starts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_hash_matches_java() {
        // Values from java.lang.String.hashCode.
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("hello"), 99_162_322);
        assert_eq!(java_string_hash("orders"), -1_008_770_331);
        assert_eq!(java_string_hash("é"), 233);
    }

    #[test]
    fn owners_follow_flinks_formula() {
        // (("hello".hashCode() * 31) & MAX) % 3 = 3_074_031_982 wraps to
        // -1_220_935_314, & MAX = 926_548_334, % 3 = 2.
        assert_eq!(partition_owner("hello", 0, 3), 2);
        assert_eq!(partition_owner("hello", 1, 3), 0);
        assert_eq!(partition_owner("hello", 2, 3), 1);
        assert_eq!(partition_owner("hello", 5, 1), 0);
        for parallelism in 1..8 {
            let mut load = vec![0; parallelism];
            for partition in 0..(parallelism as i32 * 4) {
                load[partition_owner("orders", partition, parallelism)] += 1;
            }
            assert!(load.iter().all(|&n| n == 4), "{load:?}");
        }
    }

    fn position(entries: &[(&str, i32, i64)]) -> KafkaPosition {
        KafkaPosition {
            partitions: entries
                .iter()
                .map(|&(topic, partition, next_offset)| PartitionOffset {
                    topic: topic.to_owned(),
                    partition,
                    next_offset,
                })
                .collect(),
        }
    }

    #[test]
    fn restored_positions_are_merged_and_conflicts_rejected() {
        let merged = merge_restored(vec![
            position(&[("a", 0, 5), ("a", 2, 7)]),
            position(&[("a", 1, 3)]),
            position(&[]),
        ])
        .unwrap();
        assert_eq!(merged.len(), 3);
        assert_eq!(merged[&("a".to_owned(), 1)], 3);
        let err = merge_restored(vec![position(&[("a", 0, 5)]), position(&[("a", 0, 6)])])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a/0") && err.contains('5') && err.contains('6'),
            "{err}"
        );
    }

    #[test]
    fn owned_partitions_start_at_restored_offsets_or_earliest() {
        let counts = HashMap::from([("hello".to_owned(), 6)]);
        let restored = BTreeMap::from([(("hello".to_owned(), 0), 10)]);
        let starts = start_offsets(&counts, 2, 3, &restored, &BTreeSet::new());
        assert_eq!(
            starts,
            [
                (("hello".to_owned(), 0), Offset::Offset(10)),
                (("hello".to_owned(), 3), Offset::Beginning),
            ]
        );
        let assigned = BTreeSet::from([("hello".to_owned(), 0)]);
        let later = start_offsets(&counts, 2, 3, &restored, &assigned);
        assert_eq!(later, [(("hello".to_owned(), 3), Offset::Beginning)]);
    }
}
