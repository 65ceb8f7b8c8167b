//! Running blocking calls (sink transactions, storage I/O) off the async
//! executor, and knowing when all of them have finished.
//!
//! Owns: [`BlockingCalls`], which counts an attempt's calls, and [`call`]
//! for the executor's own calls outside any attempt; both report a call
//! that panicked or was cancelled as a [`CallError`], and both run it with
//! the caller's log subscriber. Does not own what the
//! calls do.
//!
//! A task that is aborted while it awaits a blocking call does not stop the
//! call: tokio's blocking pool runs it to the end. Before a restart begins
//! recovery, the runtime waits until every call of the failed attempt has
//! returned, so that a late commit of the old attempt never races the new
//! attempt's recovery.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;
use tracing::Dispatch;

use crate::error::CallError;

/// Counts blocking calls in flight for one job attempt.
#[derive(Debug, Clone, Default)]
pub(crate) struct BlockingCalls {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    running: AtomicUsize,
    idle: Notify,
}

struct Guard(Arc<Inner>);

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl BlockingCalls {
    /// Runs `f` on the blocking pool and returns its result. A panic in `f`
    /// is returned as an error naming `what`.
    pub(crate) async fn run<R, F>(&self, what: &'static str, f: F) -> Result<R, CallError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.inner.running.fetch_add(1, Ordering::AcqRel);
        let guard = Guard(Arc::clone(&self.inner));
        let handle = tokio::task::spawn_blocking(in_current_subscriber(move || {
            let _guard = guard;
            f()
        }));
        handle.await.map_err(|e| CallError::from_join(what, e))
    }

    /// Runs `f` on the blocking pool without waiting for it (it still
    /// counts for [`Self::wait_idle`]); inline when there is no runtime.
    pub(crate) fn detach<F>(&self, f: F)
    where
        F: FnOnce() + Send + 'static,
    {
        if tokio::runtime::Handle::try_current().is_err() {
            f();
            return;
        }
        self.inner.running.fetch_add(1, Ordering::AcqRel);
        let guard = Guard(Arc::clone(&self.inner));
        drop(tokio::task::spawn_blocking(in_current_subscriber(
            move || {
                let _guard = guard;
                f();
            },
        )));
    }

    /// Waits until no blocking call is running.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            if self.inner.running.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// `f`, logging to the caller's current subscriber wherever it runs: a
/// thread of the blocking pool has none of its own.
fn in_current_subscriber<R>(f: impl FnOnce() -> R) -> impl FnOnce() -> R {
    let dispatch = tracing::dispatcher::get_default(Dispatch::clone);
    move || tracing::dispatcher::with_default(&dispatch, f)
}

/// Runs `f` on the blocking pool, uncounted: for the executor's calls
/// before and between attempts. A panic in `f` is returned as an error
/// naming `what`.
pub(crate) async fn call<R, F>(what: &'static str, f: F) -> Result<R, CallError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    tokio::task::spawn_blocking(in_current_subscriber(f))
        .await
        .map_err(|e| CallError::from_join(what, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wait_idle_outlasts_an_aborted_caller() {
        let calls = BlockingCalls::default();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (c, d) = (calls.clone(), Arc::clone(&done));
        let task = tokio::spawn(async move {
            c.run("slow", move || {
                std::thread::sleep(Duration::from_millis(100));
                d.store(true, Ordering::SeqCst);
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        task.abort();
        calls.wait_idle().await;
        assert!(
            done.load(Ordering::SeqCst),
            "wait_idle returned before the call finished"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_call_is_an_error() {
        let calls = BlockingCalls::default();
        let err = calls
            .run("commit", || panic!("disk on fire"))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "commit panicked: disk on fire");
        assert!(matches!(err, CallError::Panicked { what: "commit", .. }));
        calls.wait_idle().await;
    }
}
