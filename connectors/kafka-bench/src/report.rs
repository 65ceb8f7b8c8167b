//! The benchmark's figures: one [`Measurement`] per contender and round,
//! and the medians and ratios to the raw pipe printed at the end.
//!
//! A ratio is taken within a round (both figures measured side by side),
//! then the median is taken over the rounds. This module measures
//! nothing itself.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write};

use crate::watch::Outcome;

/// What one contender did in one round.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// Records per second in the throughput window.
    pub rate: f64,
    /// CPU seconds per million records in that window.
    pub cpu_per_million: f64,
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
    pub fn new(throughput: &Outcome, latency: Option<&Outcome>) -> Self {
        let mut latencies = latency.map(|l| l.latencies_us.clone()).unwrap_or_default();
        latencies.sort_unstable();
        let violations: Vec<String> = [
            violation("throughput", throughput),
            latency.and_then(|l| violation("latency", l)),
        ]
        .into_iter()
        .flatten()
        .collect();
        Measurement {
            rate: throughput.rate(),
            cpu_per_million: throughput.cpu_per_million(),
            first_visible: throughput.first_visible.as_secs_f64(),
            p50_ms: percentile(&latencies, 0.5),
            p99_ms: percentile(&latencies, 0.99),
            violation: (!violations.is_empty()).then(|| violations.join("; ")),
            broker_errors: throughput.broker_errors + latency.map_or(0, |l| l.broker_errors),
        }
    }
}

fn millis(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.0} ms"))
}

impl fmt::Display for Measurement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.0} records/s, {:.2} CPU s per M records, first output after {:.1} s, latency p50 {} p99 {}, {}",
            self.rate,
            self.cpu_per_million,
            self.first_visible,
            millis(self.p50_ms),
            millis(self.p99_ms),
            self.violation.as_deref().unwrap_or("exactly-once")
        )?;
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

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// Every measurement of a run, by contender and round.
pub struct Report {
    contenders: Vec<String>,
    rounds: BTreeMap<usize, BTreeMap<String, Measurement>>,
}

impl Report {
    /// An empty report for `contenders`, in their line-up order.
    pub fn new(contenders: Vec<String>) -> Self {
        Report {
            contenders,
            rounds: BTreeMap::new(),
        }
    }

    /// Records `contender`'s figures in `round`.
    pub fn add(&mut self, round: usize, contender: &str, measurement: Measurement) {
        self.rounds
            .entry(round)
            .or_default()
            .insert(contender.to_owned(), measurement);
    }

    /// Whether every output of every round was exactly-once.
    pub fn all_exactly_once(&self) -> bool {
        self.rounds
            .values()
            .flat_map(BTreeMap::values)
            .all(|m| m.violation.is_none())
    }

    /// The median over the rounds of `figure(a) / figure(b)`, both from
    /// the same round.
    fn ratio(&self, a: &str, b: &str, figure: fn(&Measurement) -> Option<f64>) -> Option<f64> {
        let mut ratios: Vec<f64> = self
            .rounds
            .values()
            .filter_map(|round| Some(figure(round.get(a)?)? / figure(round.get(b)?)?))
            .collect();
        median(&mut ratios)
    }

    /// The median over the rounds of one contender's figure.
    fn median_of(&self, name: &str, figure: fn(&Measurement) -> Option<f64>) -> Option<f64> {
        let mut values: Vec<f64> = self
            .rounds
            .values()
            .filter_map(|round| figure(round.get(name)?))
            .collect();
        median(&mut values)
    }

    /// Prints the per-round lines, the median table (Markdown) and the
    /// summary line.
    pub fn print(&self, out: &mut dyn Write) -> io::Result<()> {
        for (round, measurements) in &self.rounds {
            for name in &self.contenders {
                if let Some(m) = measurements.get(name) {
                    writeln!(out, "round {round} {name}: {m}")?;
                }
            }
        }
        let rate: fn(&Measurement) -> Option<f64> = |m| Some(m.rate);
        let cpu: fn(&Measurement) -> Option<f64> = |m| Some(m.cpu_per_million);
        let p50: fn(&Measurement) -> Option<f64> = |m| m.p50_ms;
        let p99: fn(&Measurement) -> Option<f64> = |m| m.p99_ms;
        let percent =
            |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |r| format!("{:.0} %", r * 100.0));
        let number = |v: Option<f64>, digits: usize| {
            v.map_or_else(|| "-".to_owned(), |x| format!("{x:.digits$}"))
        };
        writeln!(out)?;
        writeln!(
            out,
            "| contender | records/s | of raw | CPU s / M records | of raw | latency p50 | p99 | exactly-once |"
        )?;
        writeln!(out, "|---|---|---|---|---|---|---|---|")?;
        for name in &self.contenders {
            let checked = self
                .rounds
                .values()
                .filter_map(|round| round.get(name))
                .all(|m| m.violation.is_none());
            writeln!(
                out,
                "| {name} | {} | {} | {} | {} | {} | {} | {} |",
                number(self.median_of(name, rate), 0),
                percent(self.ratio(name, "raw", rate)),
                number(self.median_of(name, cpu), 2),
                percent(self.ratio(name, "raw", cpu)),
                millis(self.median_of(name, p50)),
                millis(self.median_of(name, p99)),
                if checked { "yes" } else { "NO" }
            )?;
        }
        writeln!(out)?;
        let eos = "exactly-eos-1s";
        writeln!(
            out,
            "kafka-bench: {eos}/raw = {}, {eos}/flink = {}, {eos}/kstreams = {}, p99 latency at 1s = {}",
            number(self.ratio(eos, "raw", rate), 2),
            number(self.ratio(eos, "flink-eos-1s", rate), 2),
            number(self.ratio(eos, "kstreams-eos-1s", rate), 2),
            millis(self.median_of(eos, p99)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rate: f64) -> Measurement {
        Measurement {
            rate,
            cpu_per_million: 1.0,
            first_visible: 0.0,
            p50_ms: None,
            p99_ms: Some(rate),
            violation: None,
            broker_errors: 0,
        }
    }

    #[test]
    fn a_round_that_rode_out_broker_errors_says_so() {
        let quiet = Outcome::default();
        let paused = Outcome {
            broker_errors: 3,
            ..Outcome::default()
        };
        let line = Measurement::new(&quiet, Some(&paused)).to_string();
        assert!(line.contains("(3 broker errors while reading"), "{line}");
        assert!(
            !Measurement::new(&quiet, None)
                .to_string()
                .contains("broker")
        );
    }

    #[test]
    fn ratios_are_taken_within_a_round_then_the_median_over_rounds() {
        let mut report = Report::new(vec!["raw".into(), "exactly-eos-1s".into()]);
        for (round, raw, eos) in [(1, 100.0, 90.0), (2, 200.0, 100.0), (3, 50.0, 40.0)] {
            report.add(round, "raw", at(raw));
            report.add(round, "exactly-eos-1s", at(eos));
        }
        let ratio = report
            .ratio("exactly-eos-1s", "raw", |m| Some(m.rate))
            .unwrap();
        assert!((ratio - 0.8).abs() < 1e-9, "{ratio}");
        let mut printed = Vec::new();
        report.print(&mut printed).unwrap();
        let printed = String::from_utf8(printed).unwrap();
        assert!(
            printed.ends_with(
                "kafka-bench: exactly-eos-1s/raw = 0.80, exactly-eos-1s/flink = -, exactly-eos-1s/kstreams = -, p99 latency at 1s = 90 ms\n"
            ),
            "{printed}"
        );
    }

    #[test]
    fn percentiles_and_medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
        let sorted: Vec<i64> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(percentile(&sorted, 0.5), Some(51.0));
        assert_eq!(percentile(&sorted, 0.99), Some(99.0));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
