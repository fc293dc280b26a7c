//! Draining: once started (SIGTERM or `POST /admin/drain`), no new sessions;
//! the process exits when the last call ends (but not before `drain_grace`)
//! or `drain_timeout` passes, unless `DELETE /admin/drain` cancels it.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct Drain {
    draining: AtomicBool,
    started: Notify,
}

impl Drain {
    pub fn start(&self) {
        if !self.draining.swap(true, Ordering::SeqCst) {
            tracing::info!("draining: no new sessions from now on");
        }
        self.started.notify_waiters();
        // A waiter that registers after this call still sees the flag.
        self.started.notify_one();
    }

    /// Takes new sessions again.
    pub fn cancel(&self) {
        if self.draining.swap(false, Ordering::SeqCst) {
            tracing::info!("drain cancelled: taking new sessions again");
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Resolves once draining has started.
    pub async fn started(&self) {
        while !self.is_draining() {
            self.started.notified().await;
        }
    }
}
