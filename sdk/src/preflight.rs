//! Preflight: checks that sources and sinks run once, when the job starts,
//! before any record is read.
//!
//! Owns: the [`JobSettings`] a check may look at, the [`PreflightReport`] it
//! returns, and the job-wide rules applied to the reports: notices are
//! logged, and two elements that claim the same exclusive resource (for
//! example one Kafka transactional-id prefix) are a start-up error. Does not
//! own the checks themselves; each source or sink implements its own
//! (`Source::preflight`, `TwoPhaseCommitSink::preflight`).

use std::collections::HashMap;
use std::time::Duration;

use crate::config::RestartStrategy;
use crate::error::{BoxError, Error, Result};

/// The job settings a preflight check may depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobSettings {
    /// The job name.
    pub job: String,
    /// The checkpoint interval, or `None` when periodic checkpoints are off.
    pub checkpoint_interval: Option<Duration>,
    /// The checkpoint timeout.
    pub checkpoint_timeout: Duration,
    /// The least pause between the end of one checkpoint and the start of
    /// the next.
    pub min_pause: Duration,
    /// The restart strategy.
    pub restart: RestartStrategy,
}

impl JobSettings {
    /// The longest a two-phase-commit sink's transaction can live, from
    /// its beginning to the completion of the checkpoint that commits it,
    /// in a run where every checkpoint completes within the checkpoint
    /// timeout; `None` without periodic checkpoints.
    ///
    /// A transaction begins when the barrier of the checkpoint before
    /// reaches the sink, no earlier than that checkpoint's trigger, and is
    /// committed when its own checkpoint completes, no later than that
    /// checkpoint's trigger plus the timeout. Checkpoints are triggered
    /// one interval apart, or, after one that took up to the whole
    /// timeout, the minimum pause after it ended: so the bound is
    /// `max(interval, timeout + min pause) + timeout`. The runtime fails an
    /// attempt rather than let a transaction outlive its sink's
    /// [`transaction_timeout`](crate::sink::TwoPhaseCommitSink::transaction_timeout),
    /// and it does so in such a run exactly when this bound reaches it.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use exactly::preflight::JobSettings;
    /// # fn bound(settings: &JobSettings) -> Option<Duration> {
    /// settings.longest_transaction_lifetime()
    /// # }
    /// ```
    pub fn longest_transaction_lifetime(&self) -> Option<Duration> {
        let interval = self.checkpoint_interval?;
        Some(interval.max(self.checkpoint_timeout + self.min_pause) + self.checkpoint_timeout)
    }
}

/// What a preflight check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreflightReport {
    /// Things the user should know, logged at start (for example a default
    /// the user did not choose).
    pub notices: Vec<String>,
    /// Resources this element must be the only user of within the job, such
    /// as `kafka transactional.id prefix "orders"`.
    pub exclusive: Vec<String>,
}

impl PreflightReport {
    /// An empty report: nothing to say, nothing claimed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a notice.
    #[must_use]
    pub fn notice(mut self, text: impl Into<String>) -> Self {
        self.notices.push(text.into());
        self
    }

    /// Claims an exclusive resource.
    #[must_use]
    pub fn claim(mut self, resource: impl Into<String>) -> Self {
        self.exclusive.push(resource.into());
        self
    }
}

/// One element's check, as registered by the pipeline builder.
pub(crate) type PreflightCheck =
    Box<dyn Fn(&JobSettings) -> Result<PreflightReport, BoxError> + Send + Sync>;

/// Runs every check (blocking), applies the job-wide rules, and returns the
/// notices to log, each prefixed with its element.
pub(crate) fn run(
    checks: &[(String, PreflightCheck)],
    settings: &JobSettings,
) -> Result<Vec<String>> {
    let mut notices = Vec::new();
    let mut claimed: HashMap<String, &str> = HashMap::new();
    for (element, check) in checks {
        let report = check(settings).map_err(|source| Error::Preflight {
            element: element.clone(),
            source,
        })?;
        notices.extend(
            report
                .notices
                .into_iter()
                .map(|n| format!("{element}: {n}")),
        );
        for resource in report.exclusive {
            if let Some(first) = claimed.insert(resource.clone(), element) {
                return Err(Error::config(
                    resource,
                    format!("both `{first}` and `{element}` use it; give each its own"),
                ));
            }
        }
    }
    Ok(notices)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(interval: Option<u64>) -> JobSettings {
        JobSettings {
            job: "j".into(),
            checkpoint_interval: interval.map(Duration::from_millis),
            checkpoint_timeout: Duration::from_secs(60),
            min_pause: Duration::ZERO,
            restart: RestartStrategy::default(),
        }
    }

    fn check(
        f: impl Fn(&JobSettings) -> Result<PreflightReport, BoxError> + Send + Sync + 'static,
    ) -> PreflightCheck {
        Box::new(f)
    }

    #[test]
    fn the_longest_transaction_lifetime_follows_a_slow_checkpoint_with_another() {
        let mut job = settings(Some(1_000));
        assert_eq!(
            job.longest_transaction_lifetime(),
            Some(Duration::from_secs(120)),
            "a 60 s checkpoint, then another"
        );
        job.min_pause = Duration::from_secs(5);
        assert_eq!(
            job.longest_transaction_lifetime(),
            Some(Duration::from_secs(125))
        );
        let slow_interval = settings(Some(100_000));
        assert_eq!(
            slow_interval.longest_transaction_lifetime(),
            Some(Duration::from_secs(160))
        );
        assert_eq!(settings(None).longest_transaction_lifetime(), None);
    }

    #[test]
    fn notices_are_collected_and_errors_name_the_element() {
        let checks = vec![
            (
                "source a".to_owned(),
                check(|_| Ok(PreflightReport::new().notice("read_committed"))),
            ),
            (
                "sink b".to_owned(),
                check(|s| {
                    if s.checkpoint_interval.is_none() {
                        Err("needs checkpoints".into())
                    } else {
                        Ok(PreflightReport::new())
                    }
                }),
            ),
        ];
        assert_eq!(
            run(&checks, &settings(Some(100))).unwrap(),
            ["source a: read_committed"]
        );
        let err = run(&checks, &settings(None)).unwrap_err().to_string();
        assert_eq!(err, "preflight check of `sink b` failed: needs checkpoints");
    }

    #[test]
    fn two_claims_on_one_resource_are_a_start_up_error() {
        let claim = || check(|_| Ok(PreflightReport::new().claim("prefix \"orders\"")));
        let checks = vec![
            ("sink 1".to_owned(), claim()),
            ("sink 2".to_owned(), claim()),
        ];
        let err = run(&checks, &settings(Some(1))).unwrap_err().to_string();
        assert!(
            err.contains("prefix \"orders\"") && err.contains("`sink 1` and `sink 2`"),
            "{err}"
        );
    }
}
