#![doc = include_str!("../../README.md")]
//!
//! # This crate
//!
//! Owns: the pipeline API ([`Job`], [`Stream`], [`KeyedStream`]); the
//! contracts of operators ([`mod@operator`]), sources ([`source`]) and sinks
//! ([`sink`]) with the built-in ones; keys ([`key`]), checkpointed state
//! ([`mod@state`]), configuration ([`config`]), checkpoint storage
//! ([`storage`]) and codecs ([`codec`]); errors ([`error`]); and the
//! private runtime that executes a job. Does not own any connector to an
//! external system (Kafka is the `exactly-kafka` crate, which builds on
//! this one) or the expansion of `#[operator]` and `#[state]`
//! (`exactly-macros`, re-exported here). Imports go one way: connectors
//! depend on this crate, this crate on `exactly-macros`.

extern crate self as exactly;

pub mod codec;
pub mod config;
pub mod context;
pub mod error;
pub mod fault;
pub mod key;
pub mod metrics;
pub mod operator;
pub mod pipeline;
pub mod preflight;
pub(crate) mod runtime;
pub mod sink;
pub mod source;
pub mod state;
pub mod storage;

#[doc(hidden)]
#[path = "macro_support.rs"]
pub mod __private;

#[doc(hidden)]
#[path = "bench_support.rs"]
pub mod __bench;

pub use config::{JobConfig, RestartStrategy};
pub use context::SubtaskContext;
pub use error::{BoxError, CallError, Error, Result, SavepointError, Unrecoverable};
pub use exactly_macros::{operator, state};
pub use key::Key;
pub use metrics::{JobMetrics, MetricsSnapshot};
pub use operator::{Emitter, Operator, UnkeyedOperator};
pub use pipeline::{Job, JobHandle, KeyedStream, Stream};
pub use state::{State, StateSet};

/// The names most pipelines need: `use exactly::prelude::*;`.
pub mod prelude {
    pub use crate::config::{JobConfig, RestartStrategy};
    pub use crate::operator::Emitter;
    pub use crate::pipeline::{Job, KeyedStream, Stream};
    pub use crate::sink::{CollectSink, DiscardSink, FileSink, TwoPhaseCommitSink};
    pub use crate::source::{LineFileSource, Source, VecSource};
    pub use exactly_macros::{operator, state};
}
