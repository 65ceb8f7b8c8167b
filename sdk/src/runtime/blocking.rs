//! Running blocking calls (sink transactions, storage I/O) off the async
//! executor, and knowing when all of them have finished.
//!
//! A task that is aborted while it awaits a blocking call does not stop the
//! call: tokio's blocking pool runs it to the end. Before a restart begins
//! recovery, the runtime waits until every call of the failed attempt has
//! returned, so that a late commit of the old attempt never races the new
//! attempt's recovery.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

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
    pub(crate) async fn run<R, F>(&self, what: &str, f: F) -> Result<R, String>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.inner.running.fetch_add(1, Ordering::AcqRel);
        let guard = Guard(Arc::clone(&self.inner));
        let handle = tokio::task::spawn_blocking(move || {
            let _guard = guard;
            f()
        });
        handle.await.map_err(|e| match e.try_into_panic() {
            Ok(payload) => panicked(what, payload.as_ref()),
            Err(_) => format!("{what} was cancelled"),
        })
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
        drop(tokio::task::spawn_blocking(move || {
            let _guard = guard;
            f();
        }));
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

/// The error message of a call `what` that panicked with `payload`.
pub(crate) fn panicked(what: &str, payload: &(dyn std::any::Any + Send)) -> String {
    format!("{what} panicked: {}", panic_message(payload))
}

/// The message of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
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
        assert_eq!(err, "commit panicked: disk on fire");
        calls.wait_idle().await;
    }
}
