//! The job graph: what a pipeline built with [`crate::Job`] compiles to.
//!
//! A *stage* is a chain of fused elements with one parallelism: a head (a
//! source, or an exchange's receiving side), chained operators, and a tail
//! (a sink, or an exchange's sending side). An *exchange* connects the
//! tails of one or more stages to the head of the next. Both are built
//! fresh for every attempt from the factories stored here.

use super::chain::BoxFuture;
use super::env::SubtaskEnv;
use super::exchange::GateFactory;
use crate::error::{Error, Result};
use crate::preflight::PreflightCheck;
use crate::storage::StageMetadata;

/// Builds one subtask of a stage for an attempt: returns its task future.
pub(crate) type StageRunner =
    Box<dyn Fn(SubtaskEnv) -> Result<BoxFuture<'static, Result<()>>> + Send + Sync>;

/// One stage.
pub(crate) struct StageSpec {
    /// Display names of the chained elements, head first.
    pub(crate) parts: Vec<String>,
    /// Ids of the elements that keep state, in chain order.
    pub(crate) operators: Vec<String>,
    pub(crate) parallelism: usize,
    pub(crate) is_source: bool,
    /// Set when the chain gets its tail.
    pub(crate) runner: Option<StageRunner>,
}

impl StageSpec {
    pub(crate) fn name(&self) -> String {
        self.parts.join(" -> ")
    }

    pub(crate) fn metadata(&self) -> StageMetadata {
        StageMetadata {
            name: self.name(),
            operators: self.operators.clone(),
            parallelism: self.parallelism,
        }
    }
}

/// One exchange.
pub(crate) struct GateSpec {
    pub(crate) upstream: Vec<usize>,
    pub(crate) downstream: usize,
    pub(crate) create: GateFactory,
}

/// All stages and exchanges of a job, plus the mistakes found while building
/// it (reported when the job starts).
#[derive(Default)]
pub(crate) struct JobGraph {
    pub(crate) stages: Vec<StageSpec>,
    pub(crate) gates: Vec<GateSpec>,
    pub(crate) errors: Vec<Error>,
    /// The start-up checks of every source and sink, by element name.
    pub(crate) preflight: Vec<(String, PreflightCheck)>,
}

impl JobGraph {
    /// Checks that the graph can run.
    pub(crate) fn validate(&mut self) -> Result<()> {
        if let Some(first) = self.errors.drain(..).next() {
            return Err(first);
        }
        if self.stages.is_empty() {
            return Err(Error::Pipeline(
                "the job has no source; add one with Job::source".into(),
            ));
        }
        for stage in &self.stages {
            if stage.runner.is_none() {
                return Err(Error::Pipeline(format!(
                    "the stream `{}` does not end in a sink; finish it with .sink(...)",
                    stage.name()
                )));
            }
        }
        Ok(())
    }
}
