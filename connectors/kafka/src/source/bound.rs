//! The end of a bounded [`KafkaSource`](super::KafkaSource), like Flink's
//! `setBounded(OffsetsInitializer.latest())`: each partition stops at the
//! end offset it had when the source first opened.
//!
//! Owns: taking the end offsets of all the source's partitions at once
//! (ListOffsets under the source's isolation level, so that read_committed
//! stops at the last stable offset), keeping them for every subtask and for
//! the restarted attempts of the job in this process, and deciding when a partition and a subtask are done. Does not
//! own reading records or positions ([`super::reader`]).
//!
//! A new process that restores a checkpoint takes the end offsets again:
//! the checkpoint keeps read positions, not the bound.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use super::assign::TopicPartition;

/// The end offsets taken so far, shared by the source's subtasks and the
/// attempts of its job.
pub(crate) type SharedEnds = Mutex<BTreeMap<TopicPartition, i64>>;

/// The partitions of one subtask that are still being read, each with its
/// end offset.
#[derive(Debug)]
pub(crate) struct Bound {
    /// `(topic, partition, end)`; few per subtask, so searched in order
    /// without building a key per record.
    open: Vec<(String, i32, i64)>,
}

impl Bound {
    /// The bound of `assigned`. The first subtask to open takes the end
    /// offsets of every partition in `counts` (all partitions of the
    /// source's topics) and leaves them in `shared`; later subtasks and
    /// restarted attempts use those, so that the bound is one moment for
    /// the whole source, not each subtask's opening. Blocks for up to
    /// `timeout` per partition.
    pub(crate) fn take<'a>(
        shared: &SharedEnds,
        consumer: &BaseConsumer,
        counts: &HashMap<String, usize>,
        assigned: impl IntoIterator<Item = &'a TopicPartition>,
        timeout: Duration,
    ) -> Result<Bound, KafkaError> {
        let mut ends = shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if ends.is_empty() {
            for (topic, &partitions) in counts {
                for partition in 0..i32::try_from(partitions).unwrap_or(i32::MAX) {
                    let (_, end) = consumer.fetch_watermarks(topic, partition, timeout)?;
                    ends.insert((topic.clone(), partition), end);
                }
            }
        }
        let mut open = Vec::new();
        for key in assigned {
            let end = match ends.get(key) {
                Some(&end) => end,
                None => {
                    let (_, end) = consumer.fetch_watermarks(&key.0, key.1, timeout)?;
                    ends.insert(key.clone(), end);
                    end
                }
            };
            open.push((key.0.clone(), key.1, end));
        }
        Ok(Bound { open })
    }

    /// Whether the record at `offset` of `topic`/`partition` is below the
    /// end, so the source emits it.
    pub(crate) fn admits(&self, topic: &str, partition: i32, offset: i64) -> bool {
        self.open
            .iter()
            .find(|(t, p, _)| *p == partition && t == topic)
            .is_none_or(|&(_, _, end)| offset < end)
    }

    /// Drops the partitions whose next offset reached their end: in `next`
    /// (the records emitted), or, with `read_positions`, in the consumer's
    /// position, which also moves past control records and aborted
    /// transactions. Pauses those partitions and returns whether none is
    /// left.
    pub(crate) fn settle(
        &mut self,
        next: &BTreeMap<TopicPartition, i64>,
        consumer: &BaseConsumer,
        read_positions: bool,
    ) -> Result<bool, KafkaError> {
        let positions = if read_positions {
            Some(consumer.position()?)
        } else {
            None
        };
        let mut done = TopicPartitionList::new();
        self.open.retain(|(topic, partition, end)| {
            let emitted = next
                .get(&(topic.clone(), *partition))
                .is_some_and(|next| next >= end);
            let passed = positions.as_ref().is_some_and(|list| {
                list.find_partition(topic, *partition)
                    .is_some_and(|p| matches!(p.offset(), Offset::Offset(at) if at >= *end))
            });
            if emitted || passed {
                done.add_partition(topic, *partition);
            }
            !(emitted || passed)
        });
        if done.count() > 0
            && let Err(error) = consumer.pause(&done)
        {
            // Only costs reads past the end, which the source drops.
            tracing::debug!(%error, "Kafka source: pausing finished partitions failed");
        }
        Ok(self.open.is_empty())
    }
}
