//! End to end: an exactly-once Kafka→Kafka word count with parallelism 2
//! over a topic with several partitions, run straight through, and run in
//! two parts with a graceful stop in between. The output, read with the
//! committed reader (which applies read_committed itself), must equal a
//! direct count exactly.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use exactly::prelude::*;
use exactly_kafka::client::ClientSettings;
use exactly_kafka::deserialize::Utf8;
use exactly_kafka::sink::{DeliveryGuarantee, KafkaSink, OutputRecord};
use exactly_kafka::source::{KafkaRecord, KafkaSource};

use crate::common::{broker, create_topic, producer, read_topic, send_to, unique_topic};

#[exactly::state]
#[derive(Default)]
struct Count {
    n: u64,
}

#[exactly::operator]
fn words(record: KafkaRecord<String>, out: &mut Emitter<String>) {
    record
        .value
        .split_whitespace()
        .for_each(|w| out.emit(w.to_owned()));
}

#[exactly::operator]
fn count(word: String, #[state] c: &mut Count) -> (String, u64) {
    std::thread::sleep(Duration::from_micros(300));
    c.n += 1;
    (word, c.n)
}

/// Lines of words `w0`..`w12`, written round robin to the input's
/// partitions; returns the expected count per word.
fn fill_input(broker: &str, topic: &str, partitions: i32, lines: usize) -> HashMap<String, u64> {
    let producer = producer(broker, None);
    let mut expected: HashMap<String, u64> = HashMap::new();
    let text: Vec<String> = (0..lines)
        .map(|i| {
            let line: Vec<String> = (0..(i % 5 + 1))
                .map(|j| format!("w{}", (i * 7 + j) % 13))
                .collect();
            for word in &line {
                *expected.entry(word.clone()).or_default() += 1;
            }
            line.join(" ")
        })
        .collect();
    for partition in 0..partitions {
        let part: Vec<&str> = text
            .iter()
            .enumerate()
            .filter(|(i, _)| *i as i32 % partitions == partition)
            .map(|(_, l)| l.as_str())
            .collect();
        send_to(&producer, topic, partition, &part);
    }
    expected
}

fn wordcount(broker: &str, input: &str, output: &str, prefix: &str, checkpoints: &Path) -> Job {
    let settings = ClientSettings::new(broker);
    let source = KafkaSource::builder(settings.clone())
        .topic(input)
        .deserializer(Utf8)
        .build()
        .unwrap();
    let sink = KafkaSink::builder(settings, output, |(w, n): (String, u64)| {
        let value = format!("{w} {n}");
        OutputRecord::keyed(w, value)
    })
    .delivery_guarantee(DeliveryGuarantee::ExactlyOnce)
    .transactional_id_prefix(prefix)
    .build()
    .unwrap();
    let job = Job::new(
        "kafka-wordcount-test",
        JobConfig::new()
            .parallelism(2)
            .checkpoint_interval(Duration::from_millis(200))
            .checkpoint_dir(checkpoints)
            .restart_strategy(RestartStrategy::none())
            // Small batches and queues: the slow count backpressures the
            // source, so a stop lands mid-stream rather than after the
            // whole input was read ahead into the queues.
            .batch_size(20)
            .queue_capacity(2),
    );
    job.source(source)
        .operator(words)
        .key_by(|w: &String| w.clone())
        .operator(count)
        .sink(sink);
    job
}

/// How many updates are visible in `output`.
fn visible_updates(broker: &str, output: &str) -> u64 {
    read_topic(broker, output)
        .unwrap()
        .iter()
        .map(|p| p.records.len() as u64)
        .sum()
}

/// Runs the job until `updates` records are visible in `output` (or, with
/// `stop_early`, until it has completed a checkpoint), then stops it
/// gracefully. The source never ends by itself: Kafka is unbounded.
fn run_until(job: Job, broker: &str, output: &str, updates: u64, stop_early: bool) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let handle = {
        let _context = runtime.enter();
        job.spawn().unwrap()
    };
    // Far beyond the ten seconds the whole test takes; a run that gets
    // here fails with what it saw instead of waiting forever.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        if stop_early && handle.metrics().checkpoints_completed >= 1 {
            break;
        }
        if !stop_early && visible_updates(broker, output) >= updates {
            break;
        }
        if handle.is_finished() {
            let ended = runtime.block_on(handle.join());
            panic!("the job ended before its output was complete: {ended:?}");
        }
        if std::time::Instant::now() >= deadline {
            let metrics = handle.metrics();
            panic!(
                "after 120 s, {} of {updates} updates are visible in `{output}` under read_committed, with {} \
                 checkpoints completed and {} records read; `exactly-audit --bootstrap {broker} --topic {output}` \
                 shows the transactions that hold the rest",
                visible_updates(broker, output),
                metrics.checkpoints_completed,
                metrics.records_in
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    handle.stop();
    runtime.block_on(handle.join()).unwrap();
}

/// Checks that every word's updates in `output` are exactly 1..=n.
fn assert_exact(broker: &str, output: &str, expected: &HashMap<String, u64>) {
    let mut updates: HashMap<String, Vec<u64>> = HashMap::new();
    for record in read_topic(broker, output)
        .unwrap()
        .into_iter()
        .flat_map(|p| p.records)
    {
        let value = String::from_utf8(record.value.unwrap().to_vec()).unwrap();
        let (word, n) = value.rsplit_once(' ').unwrap();
        updates
            .entry(word.to_owned())
            .or_default()
            .push(n.parse().unwrap());
    }
    for (word, total) in expected {
        let mut seen = updates.remove(word).unwrap_or_default();
        seen.sort_unstable();
        assert_eq!(
            seen,
            (1..=*total).collect::<Vec<_>>(),
            "updates of `{word}`"
        );
    }
    assert!(updates.is_empty(), "unexpected words: {:?}", updates.keys());
}

/// A 3-partition input topic holding 1500 lines and an empty 2-partition
/// output topic; returns the broker, both names and the expected counts.
fn topics_with_input() -> (String, String, String, HashMap<String, u64>) {
    let broker = broker();
    let (input, output) = (unique_topic("wc-in"), unique_topic("wc-out"));
    create_topic(&broker, &input, 3);
    create_topic(&broker, &output, 2);
    let expected = fill_input(&broker, &input, 3, 1500);
    (broker, input, output, expected)
}

#[test]
fn a_kafka_to_kafka_word_count_is_exact() {
    let (broker, input, output, expected) = topics_with_input();
    let dir = tempfile::tempdir().unwrap();
    let total = expected.values().sum();
    run_until(
        wordcount(&broker, &input, &output, &unique_topic("wc"), dir.path()),
        &broker,
        &output,
        total,
        false,
    );
    assert_exact(&broker, &output, &expected);
}

#[test]
fn a_word_count_stopped_mid_stream_and_started_again_is_exact() {
    let (broker, input, output, expected) = topics_with_input();
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique_topic("wc");
    let total: u64 = expected.values().sum();
    run_until(
        wordcount(&broker, &input, &output, &prefix, dir.path()),
        &broker,
        &output,
        total,
        true,
    );
    let partial = visible_updates(&broker, &output);
    assert!(
        partial > 0 && partial < total,
        "the first run wrote {partial} of {total} updates"
    );
    // The second run resumes from the first one's final checkpoint; it has
    // only the rest of the input to read.
    run_until(
        wordcount(&broker, &input, &output, &prefix, dir.path()),
        &broker,
        &output,
        total,
        false,
    );
    assert_exact(&broker, &output, &expected);
}
