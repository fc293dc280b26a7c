//! Draining: once started (SIGTERM or `POST /admin/drain`), no new sessions;
//! the process exits when the last call ends or `drain_timeout` passes.

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
