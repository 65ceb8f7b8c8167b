//! Where a sink's calls run: on the blocking pool, or inline for a sink
//! that never blocks.
//!
//! Owns: [`SinkCalls`], which holds the sink between calls, hands it to
//! tokio's blocking pool through [`BlockingCalls`] for a sink that may block
//! ([`TwoPhaseCommitSink::may_block`]) or calls it on the task's own thread
//! for one that never does, reports a panic the same way on both paths,
//! and drops the sink where dropping cannot stall a worker. Does not own
//! which call runs when: that is the driver in [`super`].

use std::panic::AssertUnwindSafe;

use crate::error::{CallError, Error, Result};
use crate::runtime::blocking::BlockingCalls;
use crate::sink::TwoPhaseCommitSink;

/// One sink subtask's sink, and where its calls run.
pub(super) struct SinkCalls<S: TwoPhaseCommitSink> {
    /// `None` once a call that failed lost it.
    sink: Option<S>,
    /// The sink never blocks: its calls run inline, not on the blocking
    /// pool.
    inline: bool,
    blocking: BlockingCalls,
    /// The task, as errors name it.
    task: String,
}

impl<S: TwoPhaseCommitSink> SinkCalls<S> {
    /// Calls of `sink`, for the task named `task`.
    pub(super) fn new(sink: S, blocking: BlockingCalls, task: String) -> Self {
        SinkCalls {
            inline: !sink.may_block(),
            sink: Some(sink),
            blocking,
            task,
        }
    }

    /// Whether the calls run inline, on the caller's thread.
    pub(super) fn inline(&self) -> bool {
        self.inline
    }

    /// Runs `f` with the sink: on the blocking pool, or inline if the sink
    /// never blocks.
    pub(super) async fn call<R, F>(&mut self, phase: &'static str, f: F) -> Result<R>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        if self.inline {
            return self.call_inline(phase, f);
        }
        let mut sink = self.take_sink(phase)?;
        let (sink, result) = self
            .blocking
            .run(phase, move || {
                let result = f(&mut sink);
                (sink, result)
            })
            .await
            .map_err(|e| Error::Task {
                task: self.task.clone(),
                phase,
                source: Box::new(e),
            })?;
        self.sink = Some(sink);
        Ok(result)
    }

    /// Runs `f` with the sink on this thread. A panic is an error, as on the
    /// blocking pool, and loses the sink as it does there.
    pub(super) fn call_inline<R>(
        &mut self,
        phase: &'static str,
        f: impl FnOnce(&mut S) -> R,
    ) -> Result<R> {
        let mut sink = self.take_sink(phase)?;
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| f(&mut sink)));
        match result {
            Ok(result) => {
                self.sink = Some(sink);
                Ok(result)
            }
            Err(payload) => Err(Error::Task {
                task: self.task.clone(),
                phase,
                source: Box::new(CallError::panicked(phase, payload.as_ref())),
            }),
        }
    }

    fn take_sink(&mut self, phase: &'static str) -> Result<S> {
        self.sink.take().ok_or_else(|| Error::Task {
            task: self.task.clone(),
            phase,
            source: "the sink was lost by an earlier failed call".into(),
        })
    }
}

impl<S: TwoPhaseCommitSink> Drop for SinkCalls<S> {
    /// Drops the sink on the blocking pool: dropping may block (an rdkafka
    /// producer flushes for up to 500 ms), and an aborted attempt drops its
    /// tasks on the async workers. The restart waits for it, so an old
    /// producer is gone before recovery begins. A sink that never blocks is
    /// dropped here.
    fn drop(&mut self) {
        let Some(sink) = self.sink.take() else {
            return;
        };
        if self.inline {
            drop(sink);
        } else {
            self.blocking.detach(move || drop(sink));
        }
    }
}
