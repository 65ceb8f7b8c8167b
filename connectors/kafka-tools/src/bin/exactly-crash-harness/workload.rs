//! The harness's input and its verdict on the output: `N` records over 16
//! keys, and the check that every one had its effect exactly once, in
//! order, with both oracles agreeing and nothing left open.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use exactly_kafka::client::{ClientSettings, MissingTopics, ensure_topics};
use exactly_kafka_tools::oracle;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::args::InputArgs;

/// Keys of the input.
pub(crate) const KEYS: u64 = 16;

/// The key of input record `i`: 7 is prime to 16, so every 16
/// consecutive records hold every key once.
fn key_of_record(i: u64) -> u64 {
    (i * 7) % KEYS
}

/// Input record `i`: `k<key> <seq>`, `seq` counting from 0 per key.
fn record_text(i: u64) -> (String, String) {
    let key = format!("k{}", key_of_record(i));
    let line = format!("{key} {}", i / KEYS);
    (key, line)
}

/// How many of `records` input records have key `key`.
pub(crate) fn records_of_key(records: u64, key: u64) -> u64 {
    (0..records).filter(|&i| key_of_record(i) == key).count() as u64
}

/// Writes input records `range` (of the whole input's numbering) to
/// `topic`.
pub(crate) fn produce_input(
    settings: &ClientSettings,
    topic: &str,
    range: Range<u64>,
) -> Result<(), String> {
    let producer: BaseProducer = settings
        .rdkafka_config()
        .set("enable.idempotence", "true")
        .create()
        .map_err(|e| e.to_string())?;
    for i in range {
        let (key_text, line) = record_text(i);
        let mut record = BaseRecord::to(topic).key(&key_text).payload(&line);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .map_err(|e| e.to_string())
}

/// Creates the topics (input: 3 partitions, output: 2) and writes the
/// input.
pub(crate) fn input(settings: &ClientSettings, args: &InputArgs) -> Result<(), String> {
    for (topic, partitions) in [(&args.input, 3), (&args.output, 2)] {
        let missing = MissingTopics::Create { partitions };
        ensure_topics(settings, std::slice::from_ref(topic), missing).map_err(|e| e.to_string())?;
    }
    produce_input(settings, &args.input, 0..args.records)
        .map_err(|e| format!("cannot write the input to {}: {e}", settings.bootstrap))
}

/// What the output check found.
pub(crate) struct Verdict {
    pub(crate) lost: u64,
    pub(crate) duplicated: u64,
    pub(crate) problems: Vec<String>,
    /// What the two oracles and the open-transaction check said.
    pub(crate) oracles: String,
}

/// Checks the output: both oracles agree, nothing is left open, and per
/// key the counts 1..n appear once each, with sequence numbers in order.
pub(crate) fn check(
    settings: &ClientSettings,
    output: &str,
    records: u64,
) -> Result<Verdict, String> {
    let logs = oracle::read_committed(settings, output).map_err(|e| e.to_string())?;
    let mut problems = Vec::new();
    let visible: usize = logs.iter().map(|p| p.records.len()).sum();
    let open = match oracle::settled(settings, output) {
        Ok(_) => "no transaction left open".to_owned(),
        Err(e) => {
            problems.push(e.to_string());
            "a transaction is left open".to_owned()
        }
    };
    let oracles = format!(
        "oracles: the raw KIP-98 log reader and the rdkafka read_committed consumer agree on all {visible} visible \
         records of {} partitions; {open}",
        logs.len()
    );
    let mut by_key: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for record in logs.iter().flat_map(|p| &p.records) {
        let text =
            String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()).into_owned();
        let fields: Vec<&str> = text.split(' ').collect();
        let [key, seq, count] = fields[..] else {
            return Err(format!("malformed output record {text:?}"));
        };
        let (seq, count) = (
            seq.parse().map_err(|_| text.clone())?,
            count.parse().map_err(|_| text.clone())?,
        );
        by_key.entry(key.to_owned()).or_default().push((seq, count));
    }
    let (mut lost, mut duplicated) = (0, 0);
    for key in 0..KEYS {
        let name = format!("k{key}");
        let expected = records_of_key(records, key);
        let mut updates = by_key.remove(&name).unwrap_or_default();
        updates.sort_unstable();
        updates.dedup_by(|a, b| {
            let same = a.0 == b.0;
            if same {
                duplicated += 1;
                problems.push(format!("{name} seq {} appears twice", a.0));
            }
            same
        });
        for seq in 0..expected {
            if updates.binary_search_by_key(&seq, |u| u.0).is_err() {
                lost += 1;
                if problems.len() < 20 {
                    problems.push(format!("{name} seq {seq} is lost"));
                }
            }
        }
        for (seq, count) in &updates {
            if *count != seq + 1 && problems.len() < 20 {
                problems.push(format!(
                    "{name} seq {seq} was counted as number {count}: per-key order or state is wrong"
                ));
            }
        }
    }
    Ok(Verdict {
        lost,
        duplicated,
        problems,
        oracles,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_count_per_key_from_zero() {
        let mut next = [0u64; KEYS as usize];
        for i in 0..1000 {
            let (key, line) = record_text(i);
            let k = key_of_record(i) as usize;
            assert_eq!(line, format!("{key} {}", next[k]));
            next[k] += 1;
        }
        for key in 0..KEYS {
            assert_eq!(records_of_key(1000, key), next[key as usize]);
        }
    }
}
