//! What a worker publishes about itself: `EdgeStats` and the gauges.

use super::*;

/// What the edge holds, for `/metrics` and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EdgeStats {
    /// Clients connected here.
    pub participants: usize,
    /// Participants on other SFTs, in conferences on this one.
    pub remote_participants: usize,
    pub conferences: usize,
}

/// What the worker last added to the process-wide gauges.
#[derive(Default)]
pub(super) struct Published {
    pub(super) local: i64,
    pub(super) remote: i64,
    pub(super) conferences: i64,
}

impl Driver {
    pub(super) fn stats(&self) -> EdgeStats {
        EdgeStats {
            participants: self.clients.len(),
            remote_participants: self.conferences.values().map(|c| c.counts().1).sum(),
            conferences: self.conferences.len(),
        }
    }

    /// Publishes this worker's counts: its own series, and its share of
    /// the process-wide ones (as the change since it last published).
    pub(super) fn update_gauges(&mut self) {
        let stats = self.stats();
        let now = Published {
            local: stats.participants as i64,
            remote: stats.remote_participants as i64,
            conferences: stats.conferences as i64,
        };
        self.metrics.local_participants().add(now.local - self.published.local);
        self.metrics.remote_participants().add(now.remote - self.published.remote);
        self.metrics.conferences.add(now.conferences - self.published.conferences);
        self.worker_metrics.sessions.set(now.local);
        self.worker_metrics.conferences.set(now.conferences);
        self.published = now;
    }
}
