//! What a running job tells its user: periodic progress, and where log
//! events go when the application chose no subscriber.
//!
//! Owns: the progress reporter (one `info` event every
//! [`crate::JobConfig::progress_interval`], with the job's counters) and
//! the fallback subscriber. Every warning and progress line of the runtime
//! is a [`tracing`] event; an application that installs a subscriber
//! decides what it sees. One that installs none still sees them: the job
//! then runs with a subscriber of its own that writes `info` and above to
//! stderr, filtered by `RUST_LOG` when that is set: progress stays visible
//! by default.
//!
//! Does not own the counters ([`crate::metrics`]).

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Dispatch;
use tracing::subscriber::NoSubscriber;
use tracing_subscriber::EnvFilter;

use crate::metrics::JobMetrics;

/// The subscriber the job's tasks log to: the caller's, or the fallback
/// when the caller has none.
pub(crate) fn dispatch() -> Dispatch {
    let current = tracing::dispatcher::get_default(Dispatch::clone);
    if !current.is::<NoSubscriber>() {
        return current;
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    Dispatch::new(
        tracing_subscriber::fmt()
            .with_writer(|| Stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_env_filter(filter)
            .finish(),
    )
}

/// Writes through `eprint!`, as the SDK's lines were written before it
/// used `tracing`: to stderr, and captured with a test's output.
struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        eprint!("{}", String::from_utf8_lossy(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reports the job's counters every `every`, until aborted.
pub(crate) async fn report(job: String, every: Duration, metrics: Arc<JobMetrics>) {
    let mut last = (Instant::now(), 0u64);
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let m = metrics.snapshot();
        let now = Instant::now();
        let rate = (m.records_in - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        last = (now, m.records_in);
        tracing::info!(
            job = %job,
            "{} records in ({}/s), {} out, {} checkpoints (last #{} in {:.1} ms, {} bytes), {} restarts",
            m.records_in,
            rate as u64,
            m.records_out,
            m.checkpoints_completed,
            m.last_checkpoint_id,
            m.last_checkpoint_micros as f64 / 1000.0,
            m.last_checkpoint_bytes,
            m.restarts
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::Registry;

    #[test]
    fn a_job_keeps_its_callers_subscriber_and_falls_back_without_one() {
        assert!(dispatch().is::<EnvFilter>(), "no fallback subscriber");
        let callers = Dispatch::new(tracing_subscriber::registry());
        tracing::dispatcher::with_default(&callers, || {
            let used = dispatch();
            assert!(used.is::<Registry>() && !used.is::<EnvFilter>());
        });
    }
}
