//! # exactly
//!
//! Stateful stream processing with end-to-end exactly-once results, built the
//! way Apache Flink does it.
#![doc = include_str!("../../README.md")]

extern crate self as exactly;

pub mod codec;
pub mod error;
pub mod operator;
pub mod source;
pub mod state;
pub mod storage;

#[doc(hidden)]
#[path = "macro_support.rs"]
pub mod __private;

pub use error::{BoxError, Error, Result};
pub use exactly_macros::{operator, state};
pub use operator::{Emitter, Operator, UnkeyedOperator};
pub use state::{State, StateSet};
