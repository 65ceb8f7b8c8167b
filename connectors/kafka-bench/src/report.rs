//! The benchmark's figures: one [`Measurement`] per contender and round,
//! and the tables and summary line printed at the end.
//!
//! A ratio is taken within a round (both figures measured side by side),
//! then summarised over the rounds as median, min and max (`stats`). The
//! summary compares systems, each at its best within the round: of the
//! contenders in one group (the same system and interval at parallelism 1
//! and 2), the highest records/s, the lowest CPU per record and the lowest
//! latency, each taken on its own. This module measures nothing itself.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write};

use crate::contender::Contender;
use crate::stats::{Spread, median};
use crate::visible::per_second;
use crate::watch::Outcome;

/// What a throughput phase gave besides the watched output.
#[derive(Debug, Default)]
pub struct Throughput {
    /// The watched output and its window.
    pub outcome: Outcome,
    /// The contender's peak resident memory, in bytes.
    pub peak_rss: u64,
    /// For Kafka Streams: the sum of its changelog topic's end offsets
    /// (records and transaction markers).
    pub changelog_end_offsets: Option<i64>,
}

/// What one contender did in one round.
#[derive(Debug, Clone, Default)]
pub struct Measurement {
    /// Records per second in the throughput window.
    pub rate: f64,
    /// Records per second in each quarter of the window.
    pub quarters: [f64; 4],
    /// The window's length in seconds.
    pub window_seconds: f64,
    /// The contender's CPU seconds per million records in the window.
    pub cpu_per_million: f64,
    /// The broker's CPU seconds per million records in the window.
    pub broker_cpu_per_million: f64,
    /// The contender's JIT compiler threads' CPU seconds per million
    /// records in the window (zero for a Rust contender).
    pub jit_per_million: f64,
    /// Its garbage collector threads' CPU seconds per million records.
    pub gc_per_million: f64,
    /// Peak resident memory in MiB.
    pub peak_rss_mib: f64,
    /// Changelog end offsets per input record (Kafka Streams).
    pub changelog_per_record: Option<f64>,
    /// Seconds from start to the first visible output record.
    pub first_visible: f64,
    /// Median visibility latency in milliseconds, when measured.
    pub p50_ms: Option<f64>,
    /// 99th-percentile visibility latency in milliseconds, when measured.
    pub p99_ms: Option<f64>,
    /// `None` when both phases' outputs were exactly-once, else what was
    /// wrong.
    pub violation: Option<String>,
    /// Consumer errors the watcher rode out in both phases: a round with
    /// any measured a pause of the broker too.
    pub broker_errors: u64,
    /// Milliseconds the checking reader ran inside the window (normally 0).
    pub reader_overlap_ms: f64,
}

fn percentile(sorted: &[i64], fraction: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let index = ((last as f64) * fraction).round() as usize;
    Some(sorted[index.min(last)] as f64 / 1000.0)
}

fn violation(phase: &str, outcome: &Outcome) -> Option<String> {
    (!outcome.exactly_once()).then(|| {
        format!(
            "{phase}: {} duplicated, {} missing, {} out-of-order counts",
            outcome.duplicates, outcome.missing, outcome.count_errors
        )
    })
}

impl Measurement {
    /// The figures of a throughput phase and an optional latency phase.
    pub fn new(throughput: &Throughput, latency: Option<&Outcome>) -> Self {
        let outcome = &throughput.outcome;
        let window = &outcome.window;
        let per_million =
            |d: std::time::Duration| d.as_secs_f64() * 1e6 / (window.records.max(1) as f64);
        let mut latencies = latency.map(|l| l.latencies_us.clone()).unwrap_or_default();
        latencies.sort_unstable();
        let violations: Vec<String> = [
            violation("throughput", outcome),
            latency.and_then(|l| violation("latency", l)),
        ]
        .into_iter()
        .flatten()
        .collect();
        Measurement {
            rate: per_second(window.records, window.length),
            quarters: window.quarters,
            window_seconds: window.length.as_secs_f64(),
            cpu_per_million: per_million(window.cpu.contender),
            broker_cpu_per_million: per_million(window.cpu.broker),
            jit_per_million: per_million(window.threads.jit),
            gc_per_million: per_million(window.threads.gc),
            peak_rss_mib: throughput.peak_rss as f64 / (1024.0 * 1024.0),
            changelog_per_record: throughput
                .changelog_end_offsets
                .map(|offsets| offsets as f64 / outcome.expected.max(1) as f64),
            first_visible: outcome.first_visible.as_secs_f64(),
            p50_ms: percentile(&latencies, 0.5),
            p99_ms: percentile(&latencies, 0.99),
            violation: (!violations.is_empty()).then(|| violations.join("; ")),
            broker_errors: outcome.broker_errors + latency.map_or(0, |l| l.broker_errors),
            reader_overlap_ms: window.reader_overlap.as_secs_f64() * 1000.0,
        }
    }

    /// CPU seconds per million records of the contender and the broker.
    fn total_cpu_per_million(&self) -> f64 {
        self.cpu_per_million + self.broker_cpu_per_million
    }
}

fn millis(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.0} ms"))
}

impl fmt::Display for Measurement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d] = self.quarters.map(|q| q / 1000.0);
        write!(
            f,
            "{:.0} records/s over {:.1} s (quarters {a:.0} / {b:.0} / {c:.0} / {d:.0} k/s), \
             CPU s per M records {:.2} + broker {:.2} (JIT {:.2}, GC {:.2}), peak RSS {:.0} MiB, \
             first output after {:.1} s, latency p50 {} p99 {}, {}",
            self.rate,
            self.window_seconds,
            self.cpu_per_million,
            self.broker_cpu_per_million,
            self.jit_per_million,
            self.gc_per_million,
            self.peak_rss_mib,
            self.first_visible,
            millis(self.p50_ms),
            millis(self.p99_ms),
            self.violation.as_deref().unwrap_or("exactly-once")
        )?;
        if let Some(per_record) = self.changelog_per_record {
            write!(f, ", changelog {per_record:.3} offsets per input record")?;
        }
        if self.reader_overlap_ms > 0.0 {
            write!(
                f,
                " (the checking reader ran for the window's last {:.0} ms)",
                self.reader_overlap_ms
            )?;
        }
        if self.broker_errors > 0 {
            write!(
                f,
                " ({} broker errors while reading: the figures include the broker's pause)",
                self.broker_errors
            )?;
        }
        Ok(())
    }
}

/// A figure of a measurement, and which end of it is better.
#[derive(Clone, Copy)]
struct Figure {
    of: fn(&Measurement) -> Option<f64>,
    higher_is_better: bool,
}

const RATE: Figure = Figure {
    of: |m| Some(m.rate),
    higher_is_better: true,
};
/// Records/s over the window's second half: its last two quarters hold
/// equal numbers of records, so their rate is the harmonic mean of
/// theirs. It shows whether a contender still warming up in the first
/// half changes a ratio.
const SECOND_HALF_RATE: Figure = Figure {
    of: |m| {
        let [_, _, third, fourth] = m.quarters;
        (third > 0.0 && fourth > 0.0).then(|| 2.0 / (1.0 / third + 1.0 / fourth))
    },
    higher_is_better: true,
};
const CPU: Figure = Figure {
    of: |m| Some(m.cpu_per_million),
    higher_is_better: false,
};
const TOTAL_CPU: Figure = Figure {
    of: |m| Some(m.total_cpu_per_million()),
    higher_is_better: false,
};
const P99: Figure = Figure {
    of: |m| m.p99_ms,
    higher_is_better: false,
};

/// Every measurement of a run, by round and contender.
pub struct Report {
    /// Contender names in line-up order, with their groups.
    contenders: Vec<(String, String)>,
    /// Per round, the measurements in the order they were taken.
    rounds: BTreeMap<usize, Vec<(String, Measurement)>>,
}

/// The group the summary line compares exactly with.
const EXACTLY: &str = "exactly-eos-1s";

impl Report {
    /// An empty report for `contenders`, in their line-up order.
    pub fn new(contenders: &[Contender]) -> Self {
        Report {
            contenders: contenders
                .iter()
                .map(|c| (c.name.clone(), c.group.clone()))
                .collect(),
            rounds: BTreeMap::new(),
        }
    }

    /// Records `contender`'s figures in `round`.
    pub fn add(&mut self, round: usize, contender: &str, measurement: Measurement) {
        self.rounds
            .entry(round)
            .or_default()
            .push((contender.to_owned(), measurement));
    }

    /// Whether every output of every round was exactly-once.
    pub fn all_exactly_once(&self) -> bool {
        self.rounds
            .values()
            .flatten()
            .all(|(_, m)| m.violation.is_none())
    }

    /// The members of `group`.
    fn members(&self, group: &str) -> Vec<&str> {
        self.contenders
            .iter()
            .filter(|(_, g)| g == group)
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// The best of `figure` among `names` in one round.
    fn best_in(round: &[(String, Measurement)], names: &[&str], figure: Figure) -> Option<f64> {
        let values = round
            .iter()
            .filter(|(name, _)| names.contains(&name.as_str()))
            .filter_map(|(_, m)| (figure.of)(m));
        if figure.higher_is_better {
            values.reduce(f64::max)
        } else {
            values.reduce(f64::min)
        }
    }

    /// Over the rounds, the spread of `figure(a) / figure(b)`, each the
    /// best of its contenders within the round.
    fn ratio(&self, a: &[&str], b: &[&str], figure: Figure) -> Option<Spread> {
        let ratios = self
            .rounds
            .values()
            .filter_map(|round| {
                Some(Self::best_in(round, a, figure)? / Self::best_in(round, b, figure)?)
            })
            .collect();
        Spread::of(ratios)
    }

    /// The median over the rounds of the best of `figure` among `names`.
    fn median_of(&self, names: &[&str], figure: Figure) -> Option<f64> {
        let mut values: Vec<f64> = self
            .rounds
            .values()
            .filter_map(|round| Self::best_in(round, names, figure))
            .collect();
        median(&mut values)
    }

    /// The median over the rounds of one contender's figure.
    fn median_figure(&self, name: &str, of: fn(&Measurement) -> Option<f64>) -> Option<f64> {
        let figure = Figure {
            of,
            higher_is_better: true,
        };
        self.median_of(&[name], figure)
    }

    /// Prints the per-round lines, then [`Report::print_tables`].
    pub fn print(&self, out: &mut dyn Write) -> io::Result<()> {
        for (round, measurements) in &self.rounds {
            for (name, m) in measurements {
                writeln!(out, "round {round} {name}: {m}")?;
            }
        }
        self.print_tables(out)
    }

    /// Prints the tables (Markdown) and the summary line.
    pub fn print_tables(&self, out: &mut dyn Write) -> io::Result<()> {
        self.print_contenders(out)?;
        self.print_systems(out)?;
        let ratio = |group: &str, figure| {
            let spread = self.ratio(&self.members(EXACTLY), &self.members(group), figure);
            spread.map_or_else(|| "-".to_owned(), |s| format!("{:.2}", s.median))
        };
        writeln!(out)?;
        writeln!(
            out,
            "kafka-bench: {EXACTLY}/raw = {}, {EXACTLY}/flink = {}, {EXACTLY}/kstreams = {}, p99 latency at 1s = {}",
            ratio("raw", RATE),
            ratio("flink-eos-1s", RATE),
            ratio("kstreams-eos-1s", RATE),
            millis(self.median_of(&self.members(EXACTLY), P99)),
        )
    }

    /// One row per contender: medians, and its ratios to the raw pipe.
    fn print_contenders(&self, out: &mut dyn Write) -> io::Result<()> {
        let number = |v: Option<f64>, digits: usize| {
            v.map_or_else(|| "-".to_owned(), |x| format!("{x:.digits$}"))
        };
        let spread = |s: Option<Spread>| s.map_or_else(|| "-".to_owned(), |s| s.to_string());
        writeln!(out)?;
        writeln!(
            out,
            "| contender | records/s | of raw | CPU s / M records | of raw | broker CPU s / M | contender + broker | JIT | GC | peak RSS MiB | latency p50 | p99 | exactly-once |"
        )?;
        writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|")?;
        for (name, _) in &self.contenders {
            let checked = self
                .rounds
                .values()
                .flatten()
                .filter(|(n, _)| n == name)
                .all(|(_, m)| m.violation.is_none());
            let one = [name.as_str()];
            let figure = |of, digits| number(self.median_figure(name, of), digits);
            writeln!(
                out,
                "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                figure(|m| Some(m.rate), 0),
                spread(self.ratio(&one, &["raw"], RATE)),
                figure(|m| Some(m.cpu_per_million), 2),
                spread(self.ratio(&one, &["raw"], CPU)),
                figure(|m| Some(m.broker_cpu_per_million), 2),
                figure(|m| Some(m.total_cpu_per_million()), 2),
                figure(|m| Some(m.jit_per_million), 2),
                figure(|m| Some(m.gc_per_million), 2),
                figure(|m| Some(m.peak_rss_mib), 0),
                millis(self.median_figure(name, |m| m.p50_ms)),
                millis(self.median_figure(name, |m| m.p99_ms)),
                if checked { "yes" } else { "NO" }
            )?;
        }
        Ok(())
    }

    /// exactly against each other system at 1 s, each at its best
    /// parallelism within the round.
    fn print_systems(&self, out: &mut dyn Write) -> io::Result<()> {
        let spread = |s: Option<Spread>| s.map_or_else(|| "-".to_owned(), |s| s.to_string());
        writeln!(out)?;
        writeln!(
            out,
            "| {EXACTLY} at its best against | records/s ratio | the same over the window's second half | CPU per record ratio | contender + broker CPU ratio |"
        )?;
        writeln!(out, "|---|---|---|---|---|")?;
        for group in ["raw", "hand-eos-1s", "flink-eos-1s", "kstreams-eos-1s"] {
            let (ours, theirs) = (self.members(EXACTLY), self.members(group));
            if theirs.is_empty() {
                continue;
            }
            writeln!(
                out,
                "| {group} ({}) | {} | {} | {} | {} |",
                theirs.join(", "),
                spread(self.ratio(&ours, &theirs, RATE)),
                spread(self.ratio(&ours, &theirs, SECOND_HALF_RATE)),
                spread(self.ratio(&ours, &theirs, CPU)),
                spread(self.ratio(&ours, &theirs, TOTAL_CPU)),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contender::System;

    fn at(rate: f64, cpu: f64) -> Measurement {
        Measurement {
            rate,
            cpu_per_million: cpu,
            broker_cpu_per_million: 1.0,
            p99_ms: Some(rate),
            ..Measurement::default()
        }
    }

    fn contender(name: &str, group: &str) -> Contender {
        Contender {
            name: name.to_owned(),
            group: group.to_owned(),
            system: System::Raw,
            interval_ms: 1000,
            parallelism: 1,
        }
    }

    fn printed(report: &Report) -> String {
        let mut out = Vec::new();
        report.print(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_round_that_rode_out_broker_errors_says_so() {
        let quiet = Throughput::default();
        let paused = Outcome {
            broker_errors: 3,
            ..Outcome::default()
        };
        let line = Measurement::new(&quiet, Some(&paused)).to_string();
        assert!(line.contains("(3 broker errors while reading"), "{line}");
        assert!(
            !Measurement::new(&quiet, None)
                .to_string()
                .contains("broker errors")
        );
    }

    #[test]
    fn ratios_are_taken_within_a_round_then_summarised_over_rounds() {
        let mut report = Report::new(&[contender("raw", "raw"), contender(EXACTLY, EXACTLY)]);
        for (round, raw, eos) in [(1, 100.0, 90.0), (2, 200.0, 100.0), (3, 50.0, 40.0)] {
            report.add(round, "raw", at(raw, 1.0));
            report.add(round, EXACTLY, at(eos, 2.0));
        }
        let ratio = report.ratio(&[EXACTLY], &["raw"], RATE).unwrap();
        assert_eq!((ratio.min, ratio.max), (0.5, 0.9));
        assert!((ratio.median - 0.8).abs() < 1e-9, "{ratio}");
        let printed = printed(&report);
        assert!(
            printed.ends_with(
                "kafka-bench: exactly-eos-1s/raw = 0.80, exactly-eos-1s/flink = -, exactly-eos-1s/kstreams = -, p99 latency at 1s = 90 ms\n"
            ),
            "{printed}"
        );
        assert!(
            printed.contains(
                "| raw (raw) | 0.80 (0.50–0.90) | - | 2.00 (2.00–2.00) | 1.50 (1.50–1.50) |"
            ),
            "{printed}"
        );
    }

    #[test]
    fn each_system_is_taken_at_its_best_parallelism_within_the_round_figure_by_figure() {
        let mut report = Report::new(&[
            contender(EXACTLY, EXACTLY),
            contender("exactly-eos-1s-p1", EXACTLY),
            contender("flink-eos-1s", "flink-eos-1s"),
            contender("flink-eos-1s-p1", "flink-eos-1s"),
        ]);
        // Round 1: exactly best at p2, Flink at p1 in records/s; Flink's
        // lower CPU is at p2. Round 2 the other way round.
        report.add(1, EXACTLY, at(800.0, 2.0));
        report.add(1, "exactly-eos-1s-p1", at(600.0, 1.5));
        report.add(1, "flink-eos-1s", at(300.0, 2.5));
        report.add(1, "flink-eos-1s-p1", at(400.0, 3.0));
        report.add(2, EXACTLY, at(500.0, 2.0));
        report.add(2, "exactly-eos-1s-p1", at(700.0, 1.0));
        report.add(2, "flink-eos-1s", at(350.0, 4.0));
        report.add(2, "flink-eos-1s-p1", at(200.0, 3.0));
        let both = ["flink-eos-1s", "flink-eos-1s-p1"];
        let mine = [EXACTLY, "exactly-eos-1s-p1"];
        let rate = report.ratio(&mine, &both, RATE).unwrap();
        assert_eq!((rate.min, rate.max), (2.0, 2.0));
        let cpu = report.ratio(&mine, &both, CPU).unwrap();
        assert_eq!((cpu.min, cpu.max), (1.0 / 3.0, 1.5 / 2.5));
        let line = printed(&report);
        assert!(line.contains("exactly-eos-1s/flink = 2.00,"), "{line}");
        // p99 is the rate here: the lowest of exactly's in each round.
        assert!(line.ends_with("p99 latency at 1s = 550 ms\n"), "{line}");
    }

    #[test]
    fn the_second_half_rate_is_that_of_the_last_two_quarters() {
        // Equal records per quarter: 100 records at 100/s and 100 at
        // 300/s take 1.33 s, 150 records/s.
        let warming = Measurement {
            quarters: [10.0, 50.0, 100.0, 300.0],
            ..Measurement::default()
        };
        let rate = (SECOND_HALF_RATE.of)(&warming).unwrap();
        assert!((rate - 150.0).abs() < 1e-9, "{rate}");
        assert_eq!((SECOND_HALF_RATE.of)(&Measurement::default()), None);
    }

    #[test]
    fn a_contender_row_shows_medians_and_spreads() {
        let mut report = Report::new(&[contender("raw", "raw"), contender(EXACTLY, EXACTLY)]);
        for (round, eos) in [(1, 90.0), (2, 110.0), (3, 95.0), (4, 80.0), (5, 100.0)] {
            report.add(round, "raw", at(100.0, 1.0));
            report.add(round, EXACTLY, at(eos, 1.5));
        }
        let printed = printed(&report);
        assert!(
            printed.contains("| exactly-eos-1s | 95 | 0.95 (0.80–1.10) | 1.50 | 1.50 (1.50–1.50) | 1.00 | 2.50 | 0.00 | 0.00 | 0 | - | 95 ms | yes |"),
            "{printed}"
        );
    }

    #[test]
    fn percentiles() {
        let sorted: Vec<i64> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(percentile(&sorted, 0.5), Some(51.0));
        assert_eq!(percentile(&sorted, 0.99), Some(99.0));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
