//! Fraud alerts: two streams of card payments (two regions) merged with
//! `union`, parsed, filtered, keyed by card, and checked by an operator with
//! two pieces of keyed state. Alerts go to a transactional file sink.
//!
//! ```text
//! cargo run --example fraud_alerts
//! ```
//!
//! Shows: `union` (whose barriers are aligned), filter-map, filter,
//! a stateful operator with two `#[state]` parameters that emits zero or
//! more outputs, and per-operator parallelism.

use std::time::Duration;

use exactly::prelude::*;

/// A parsed payment.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Payment {
    card: String,
    cents: u64,
    country: String,
}

/// Total spent per card.
#[state]
#[derive(Default)]
struct Spending {
    total_cents: u64,
    payments: u64,
}

/// The countries a card was used in, in order of first use.
#[state]
#[derive(Default)]
struct Countries {
    seen: Vec<String>,
}

/// Parses `card,cents,country`; malformed lines are dropped.
#[operator]
fn parse(line: String) -> Option<Payment> {
    let mut fields = line.split(',');
    let card = fields.next()?.trim().to_owned();
    let cents = fields.next()?.trim().parse().ok()?;
    let country = fields.next()?.trim().to_owned();
    Some(Payment {
        card,
        cents,
        country,
    })
}

/// Zero-amount authorisations are not payments.
#[operator]
fn is_payment(payment: &Payment) -> bool {
    payment.cents > 0
}

/// Emits an alert when a card's total passes 1000.00, and one each time it
/// is used in a new country after the first.
#[operator]
fn check(
    payment: Payment,
    #[state] spending: &mut Spending,
    #[state] countries: &mut Countries,
    alerts: &mut Emitter<String>,
) {
    let before = spending.total_cents;
    spending.total_cents += payment.cents;
    spending.payments += 1;
    if before <= 100_000 && spending.total_cents > 100_000 {
        alerts.emit(format!(
            "{}: spent {:.2} in {} payments",
            payment.card,
            spending.total_cents as f64 / 100.0,
            spending.payments
        ));
    }
    if !countries.seen.contains(&payment.country) {
        countries.seen.push(payment.country.clone());
        if countries.seen.len() > 1 {
            alerts.emit(format!("{}: used in {:?}", payment.card, countries.seen));
        }
    }
}

/// Deterministic payments for one region.
fn payments(region: &str, countries: &[&str], count: u64) -> Vec<String> {
    (0..count)
        .map(|i| {
            let card = format!("card-{:03}", (i * 7919) % 97);
            let cents = (i * 2654435761) % 9_000;
            let country = countries[((i / 37) % countries.len() as u64) as usize];
            if i % 101 == 0 {
                format!("{region}: malformed record {i}")
            } else {
                format!("{card},{cents},{country}")
            }
        })
        .collect()
}

fn main() -> Result<(), exactly::BoxError> {
    exactly_examples::init_logging();
    let work = std::env::temp_dir().join("exactly-fraud-alerts");
    let _ = std::fs::remove_dir_all(&work);
    let config = JobConfig::new()
        .checkpoint_interval(Duration::from_millis(50))
        .checkpoint_dir(work.join("checkpoints"));
    let job = Job::new("fraud-alerts", config);
    let europe = job.source(VecSource::new(payments("eu", &["FR", "DE", "IT"], 20_000)));
    let america = job.source(VecSource::new(payments("us", &["US", "CA"], 20_000)));
    europe
        .union(america)
        .parallelism(2)
        .operator(parse)
        .operator(is_payment)
        .key_by(|p: &Payment| p.card.clone())
        .parallelism(2)
        .operator(check)
        .sink(FileSink::new(work.join("alerts")));
    let metrics = {
        let runtime = tokio::runtime::Runtime::new()?;
        runtime.block_on(async { job.spawn()?.join().await })?
    };
    let mut alerts = Vec::new();
    for entry in std::fs::read_dir(work.join("alerts"))? {
        let path = entry?.path();
        if path.is_file() {
            let text = std::fs::read_to_string(&path)?;
            alerts.extend(text.lines().map(str::to_owned));
        }
    }
    alerts.sort();
    println!(
        "{} payments read, {} alerts, {} checkpoints; the first ones:",
        metrics.records_in,
        alerts.len(),
        metrics.checkpoints_completed
    );
    for alert in alerts.iter().take(8) {
        println!("  {alert}");
    }
    println!("all alerts: {}", work.join("alerts").display());
    Ok(())
}
