//! The runtime: everything that runs a described pipeline.
//!
//! Owns execution: building every subtask for an attempt, moving records
//! and barriers between them, checkpoints, the sinks' two-phase commit,
//! restore and restarts. Does not own the user-facing API (the pipeline
//! builder, the source, sink and operator contracts, configuration,
//! storage and codecs); it only depends on those.
//!
//! | module | owns |
//! |---|---|
//! | [`graph`] | the stages and exchanges a pipeline compiles to, and the task loops, pipes, queues and sink drivers built from them |
//! | [`executor`] | starting a job, attempts, restore, and the restart strategy |
//! | [`coordinator`] | triggering, completing and expiring checkpoints; savepoints |
//! | [`mod@env`] | what one subtask is given for an attempt |
//! | [`task`] | the source and exchange-fed task loops |
//! | [`alignment`] | barrier alignment across a task's inputs |
//! | [`exchange`] | `key_by` and `union` repartitioning, bounded queues |
//! | [`message`] | what flows on the queues: batches, barriers, the end marker |
//! | [`element`] | the element contract: [`element::Pipe`], snapshot writer, restore view |
//! | [`chain`] | user operators as chained elements, unkeyed or keyed |
//! | [`keyed`] | the keyed state map, its snapshot layout and its restore |
//! | [`incremental`] | incremental keyed state: deltas, the chain of shared segments, compaction |
//! | [`state_hasher`] | the keyed state map's hasher |
//! | [`two_phase_commit`] | the sink lifecycle, where sink calls run, and commit markers |
//! | [`blocking`] | blocking calls kept off the executor |
//! | [`progress`] | progress reports, and the fallback log subscriber |
//!
//! Dependencies point down the table's layers, never back: [`graph`]
//! and [`executor`] build on everything else; the elements ([`chain`],
//! [`exchange`], [`two_phase_commit`]) on [`element`], [`mod@env`] and
//! [`message`]; [`element`] only on [`keyed`] and [`message`].

pub(crate) mod alignment;
pub(crate) mod blocking;
pub(crate) mod chain;
pub(crate) mod coordinator;
pub(crate) mod element;
pub(crate) mod env;
pub(crate) mod exchange;
pub(crate) mod executor;
pub(crate) mod graph;
pub(crate) mod incremental;
pub(crate) mod keyed;
pub(crate) mod message;
pub(crate) mod progress;
pub(crate) mod state_hasher;
pub(crate) mod task;
pub(crate) mod two_phase_commit;
