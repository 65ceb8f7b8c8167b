//! An exactly-once Kafka→Kafka word count.
//!
//! ```text
//! scripts/kafka-up && cargo run --example kafka_wordcount
//! ```
//!
//! 1. A generator job writes the lines of `examples/data/words.txt` to an
//!    input topic (3 partitions) with an exactly-once Kafka sink.
//! 2. The word-count job reads the input with a `KafkaSource` (parallelism
//!    2, offsets in checkpoints, read_committed), splits lines into words,
//!    keys them, keeps a count per word in keyed `#[state]`, and writes
//!    every update `word count` to an output topic with an exactly-once
//!    `KafkaSink` (a transaction per checkpoint, committed when the
//!    checkpoint completes). The source is bounded: the job stops by
//!    itself once it has read the input as it was when the job started.
//! 3. The output is read by two independent oracles that must agree
//!    record for record (`exactly_kafka_tools::oracle`): the raw committed reader,
//!    which applies Kafka's read_committed rule itself, and an rdkafka
//!    consumer with `isolation.level=read_committed`. No transaction may be
//!    left open. The output is checked against a direct count: every word's
//!    updates must be exactly 1..n, once each.
//!
//! Options: `--lines N` (default 20000). The broker address comes from
//! `EXACTLY_KAFKA_BOOTSTRAP` (default 127.0.0.1:9092). Each run uses new
//! topics, named after the time it started.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use exactly::prelude::*;
use exactly_kafka::client::{ClientSettings, MissingTopics, ensure_topics};
use exactly_kafka::deserialize::Utf8;
use exactly_kafka::sink::{DeliveryGuarantee, KafkaSink, OutputRecord};
use exactly_kafka::source::{KafkaRecord, KafkaSource};
use exactly_kafka_tools::oracle;

/// The running count of one word.
#[state]
#[derive(Default)]
struct WordCount {
    count: u64,
}

/// Splits a line into lower-case words without punctuation.
#[operator]
fn split_words(record: KafkaRecord<String>, out: &mut Emitter<String>) {
    for word in record.value.split_whitespace() {
        let word = word.trim_matches(|c: char| !c.is_alphanumeric());
        if !word.is_empty() {
            out.emit(word.to_lowercase());
        }
    }
}

/// Counts a word and emits its new count.
#[operator]
fn count(word: String, #[state] counts: &mut WordCount) -> (String, u64) {
    counts.count += 1;
    (word, counts.count)
}

fn error(e: impl std::fmt::Display) -> exactly::BoxError {
    e.to_string().into()
}

fn exactly_once_sink<T: Send + 'static>(
    settings: &ClientSettings,
    topic: &str,
    prefix: String,
    serialize: impl Fn(T) -> OutputRecord + Send + Sync + 'static,
) -> exactly::Result<KafkaSink<T>> {
    Ok(KafkaSink::builder(settings.clone(), topic, serialize)
        .delivery_guarantee(DeliveryGuarantee::ExactlyOnce)
        .transactional_id_prefix(prefix)
        .build()?)
}

fn run(lines: usize) -> Result<(), exactly::BoxError> {
    let settings = ClientSettings::from_env()?;
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (input, output) = (
        format!("wordcount-input-{run}"),
        format!("wordcount-output-{run}"),
    );
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/data/words.txt"))?;
    let text: Vec<String> = text.lines().take(lines).map(str::to_owned).collect();
    count_words(&settings, &text, run, &input, &output)?;
    check(&settings, &text, &input, &output)
}

/// Writes `text` to `input` and counts its words into `output`, with two
/// exactly-once jobs.
fn count_words(
    settings: &ClientSettings,
    text: &[String],
    run: u64,
    input: &str,
    output: &str,
) -> exactly::Result<()> {
    let work = std::env::temp_dir().join(format!("exactly-kafka-wordcount-{run}"));
    ensure_topics(
        settings,
        &[input.to_owned(), output.to_owned()],
        MissingTopics::Create { partitions: 3 },
    )?;
    println!(
        "kafka_wordcount: writing {} lines to `{input}` at {}",
        text.len(),
        settings.bootstrap
    );
    let generator = Job::new(
        "wordcount-generator",
        JobConfig::new()
            .checkpoint_interval(Duration::from_millis(500))
            .checkpoint_dir(work.join("generator")),
    );
    let line_sink = exactly_once_sink(
        settings,
        input,
        format!("wordcount-generator-{run}"),
        |line: String| OutputRecord::value(line),
    )?;
    generator
        .source(VecSource::new(text.to_vec()))
        .sink(line_sink);
    generator.run()?;

    println!("kafka_wordcount: counting words from `{input}` into `{output}`");
    let source = KafkaSource::builder(settings.clone())
        .topic(input)
        .deserializer(Utf8)
        .bounded()
        .build()?;
    let count_sink = exactly_once_sink(
        settings,
        output,
        format!("wordcount-{run}"),
        |(word, n): (String, u64)| {
            let line = format!("{word} {n}");
            OutputRecord::keyed(word, line)
        },
    )?;
    let job = Job::new(
        "kafka-wordcount",
        JobConfig::new()
            .parallelism(2)
            .checkpoint_interval(Duration::from_millis(500))
            .checkpoint_dir(work.join("wordcount"))
            .progress_interval(Duration::from_secs(1)),
    );
    job.source(source)
        .operator(split_words)
        .key_by(|word: &String| word.clone())
        .operator(count)
        .sink(count_sink);
    job.run()?;
    Ok(())
}

/// Reads `output` with both oracles and checks it against a direct count
/// of `text`'s words.
fn check(
    settings: &ClientSettings,
    text: &[String],
    input: &str,
    output: &str,
) -> Result<(), exactly::BoxError> {
    let mut expected: HashMap<String, u64> = HashMap::new();
    for line in text {
        let mut out = Emitter::new();
        split_words::call(KafkaRecord::new(input, 0, 0, line.clone()), &mut out);
        for word in out.take() {
            *expected.entry(word).or_default() += 1;
        }
    }
    let logs = oracle::read_committed(settings, output)?;
    oracle::settled(settings, output)?;
    let mut updates: HashMap<String, Vec<u64>> = HashMap::new();
    for record in logs.into_iter().flat_map(|p| p.records) {
        let value =
            String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()).into_owned();
        let (word, n) = value
            .rsplit_once(' ')
            .ok_or_else(|| error(format!("malformed output {value:?}")))?;
        updates
            .entry(word.to_owned())
            .or_default()
            .push(n.parse().map_err(error)?);
    }
    let mut problems = Vec::new();
    for (word, total) in &expected {
        let mut seen = updates.remove(word).unwrap_or_default();
        seen.sort_unstable();
        if seen != (1..=*total).collect::<Vec<_>>() {
            problems.push(format!(
                "`{word}`: expected updates 1..={total}, found {} updates",
                seen.len()
            ));
        }
    }
    problems.extend(
        updates
            .keys()
            .map(|w| format!("`{w}` is in the output but not the input")),
    );
    let words: u64 = expected.values().sum();
    println!(
        "kafka_wordcount: {words} words, {} distinct, in `{output}`",
        expected.len()
    );
    println!(
        "the raw log reader and a read_committed consumer agree on every record; no transaction is left open"
    );
    if problems.is_empty() {
        println!("exactly-once: OK");
        Ok(())
    } else {
        problems.sort();
        Err(error(format!(
            "exactly-once: FAILED, {} words differ:\n  {}",
            problems.len(),
            problems[..problems.len().min(10)].join("\n  ")
        )))
    }
}

fn main() -> ExitCode {
    exactly_examples::init_logging();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let lines = match args.as_slice() {
        [] => 20_000,
        [flag, n] if flag == "--lines" && n.parse::<usize>().is_ok() => n.parse().unwrap_or(20_000),
        _ => {
            eprintln!("kafka_wordcount: usage: cargo run --example kafka_wordcount [-- --lines N]");
            return ExitCode::from(2);
        }
    };
    match run(lines) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kafka_wordcount: {e}");
            ExitCode::FAILURE
        }
    }
}
