//! The CPU time of the calling thread, for `sft_worker_cpu_seconds_total`.
//!
//! Read from `/proc/thread-self/schedstat` (nanoseconds on a CPU, the
//! first field): no `unsafe` clock call, and cheap enough for the twice a
//! second a worker reads it. Where the file is missing (not Linux, or no
//! scheduler statistics) the worker counts nothing.

/// Remembers the last reading, to hand out the CPU time since.
#[derive(Default)]
pub struct ThreadCpu {
    last_nanos: u64,
}

impl ThreadCpu {
    /// CPU seconds the calling thread spent since the previous call (since
    /// the thread started, on the first).
    pub fn seconds_since_last(&mut self) -> f64 {
        let Some(now) = read_nanos() else { return 0.0 };
        let spent = now.saturating_sub(self.last_nanos);
        self.last_nanos = now;
        spent as f64 / 1e9
    }
}

fn read_nanos() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_thread_is_seen_spending_cpu() {
        let mut cpu = ThreadCpu::default();
        cpu.seconds_since_last();
        // Spin for real CPU time (a sleep would spend none).
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let spent = cpu.seconds_since_last();
        assert!(spent > 0.0, "spinning spent {spent} s");
        assert!(spent < 60.0, "the reading is in seconds: {spent}");
    }
}
