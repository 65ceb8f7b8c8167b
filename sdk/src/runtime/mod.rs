//! The runtime: everything that runs a built pipeline.
//!
//! | module | owns |
//! |---|---|
//! | [`graph`] | the stages and exchanges a pipeline compiles to |
//! | [`executor`] | attempts, restore, and the restart strategy |
//! | [`coordinator`] | triggering and completing checkpoints |
//! | [`task`] | the source and exchange-fed task loops |
//! | [`alignment`] | barrier alignment across a task's inputs |
//! | [`exchange`] | `key_by` and `union` repartitioning, bounded queues |
//! | [`chain`] | fused operators, keyed state, snapshots and restore |
//! | [`keyed`] | the keyed state map, its snapshot layout and its restore |
//! | [`state_hasher`] | the keyed state map's hasher |
//! | [`two_phase_commit`] | the sink lifecycle |
//! | [`blocking`] | blocking calls kept off the executor |

pub(crate) mod alignment;
pub(crate) mod blocking;
pub(crate) mod chain;
pub(crate) mod coordinator;
pub(crate) mod element;
pub(crate) mod env;
pub(crate) mod exchange;
pub(crate) mod executor;
pub(crate) mod graph;
pub(crate) mod keyed;
pub(crate) mod message;
pub(crate) mod progress;
pub(crate) mod state_hasher;
pub(crate) mod task;
pub(crate) mod two_phase_commit;
