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
            Err(payload) => {
                // A sink that may block can run a call here too (its
                // `try_write`); dropping it here could stall the worker.
                self.dispose(sink);
                Err(Error::Task {
                    task: self.task.clone(),
                    phase,
                    source: Box::new(CallError::panicked(phase, payload.as_ref())),
                })
            }
        }
    }

    /// Drops `sink` where dropping cannot stall a worker: on the blocking
    /// pool (dropping may block: an rdkafka producer flushes for up to
    /// 500 ms), or here for a sink that never blocks.
    fn dispose(&self, sink: S) {
        if self.inline {
            drop(sink);
        } else {
            self.blocking.detach(move || drop(sink));
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
    /// Disposes of the sink: an aborted attempt drops its tasks on the
    /// async workers. The restart waits for the blocking pool, so an old
    /// producer is gone before recovery begins.
    fn drop(&mut self) {
        if let Some(sink) = self.sink.take() {
            self.dispose(sink);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::thread::ThreadId;

    use super::SinkCalls;
    use crate::BoxError;
    use crate::runtime::blocking::BlockingCalls;
    use crate::sink::TwoPhaseCommitSink;

    /// A sink that may block, whose `try_write` panics (as a user's
    /// serializer might), and which records the thread that drops it.
    #[derive(Clone, Default)]
    struct PanickingSink {
        dropped_on: Arc<Mutex<Option<ThreadId>>>,
    }

    impl Drop for PanickingSink {
        fn drop(&mut self) {
            *self.dropped_on.lock().unwrap() = Some(std::thread::current().id());
        }
    }

    impl TwoPhaseCommitSink for PanickingSink {
        type Item = u32;
        type Transaction = ();

        fn name(&self) -> String {
            "panicking".into()
        }

        fn begin_transaction(&mut self, _: u64) -> Result<(), BoxError> {
            Ok(())
        }

        fn write(&mut self, _: &mut (), _: Vec<u32>) -> Result<(), BoxError> {
            Ok(())
        }

        fn try_write(&mut self, _: &mut (), _: Vec<u32>) -> Result<Option<Vec<u32>>, BoxError> {
            panic!("the serializer panicked")
        }

        fn pre_commit(&mut self, _: &mut ()) -> Result<(), BoxError> {
            Ok(())
        }

        fn commit(&mut self, _: ()) -> Result<(), BoxError> {
            Ok(())
        }

        fn abort(&mut self, _: ()) -> Result<(), BoxError> {
            Ok(())
        }
    }

    /// Review finding 6 of issue 19: a panic during the inline write of a
    /// sink that may block dropped the sink (and its Kafka producers) on
    /// the async worker that ran the write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_sink_that_panics_in_an_inline_write_is_dropped_on_the_blocking_pool() {
        let sink = PanickingSink::default();
        let dropped_on = Arc::clone(&sink.dropped_on);
        let blocking = BlockingCalls::default();
        let mut calls = SinkCalls::new(sink, blocking.clone(), "sink".into());
        assert!(!calls.inline());
        let error = calls
            .call_inline("write", |s| s.try_write(&mut (), vec![1]))
            .expect_err("the panic is an error");
        assert!(error.to_string().contains("panicked"), "{error}");
        let worker = std::thread::current().id();
        blocking.wait_idle().await;
        let dropped_on = dropped_on.lock().unwrap().expect("the sink was dropped");
        assert_ne!(
            dropped_on, worker,
            "dropped on the worker that ran the write"
        );
        drop(calls);
    }
}
