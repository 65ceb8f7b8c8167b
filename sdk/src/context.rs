//! What a parallel instance of a stage knows about itself.
//!
//! Owns: [`SubtaskContext`], handed to every source when it opens and to
//! every sink inside its [`crate::sink::SinkContext`]. Does not own how
//! subtasks are built or numbered: that is the runtime's executor.

/// Which parallel instance of a stage a source, operator or sink runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubtaskContext {
    /// The job name.
    pub job: String,
    /// The stage name (its chained operators).
    pub stage: String,
    /// This subtask's index, `0..parallelism`.
    pub index: usize,
    /// How many subtasks the stage has.
    pub parallelism: usize,
    /// Zero on the first run, then one more for every restart.
    pub attempt: u32,
}
