//! This or another process's CPU time and resident memory, from `/proc`:
//! exported on `/metrics` and read by `sft-load` for the SFT under test;
//! and the calling thread's CPU time, for each media worker's
//! `sft_worker_cpu_seconds_total`.

use serde::Serialize;

/// One reading.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
}

/// Linux reports CPU time in clock ticks of `sysconf(_SC_CLK_TCK)`, which is
/// 100 on every mainstream architecture.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// Reads `/proc/<pid>/{stat,status}`; `pid` may be `self`.
pub fn usage(pid: &str) -> Result<Usage, std::io::Error> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse(&stat, &status).ok_or_else(|| std::io::Error::other("unreadable /proc entries"))
}

/// utime + stime from `/proc/<pid>/stat` (fields 14 and 15; the command
/// name before them may hold spaces, so count from its closing parenthesis)
/// and `VmRSS` from `/proc/<pid>/status`.
fn parse(stat: &str, status: &str) -> Option<Usage> {
    let after_name = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let rss_kib: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(Usage { cpu_seconds: ticks as f64 / CLOCK_TICKS_PER_SECOND, rss_bytes: rss_kib * 1024 })
}

/// Nanoseconds the calling thread spent on a CPU: the first field of
/// `/proc/thread-self/schedstat` (no `unsafe` clock call, and precise where
/// `stat`'s clock ticks are not). `None` where the file is missing (not
/// Linux, or no scheduler statistics).
pub fn thread_cpu_nanos() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Remembers the calling thread's last CPU reading, to hand out the CPU
/// time spent since.
#[derive(Default)]
pub struct ThreadCpu {
    last_nanos: u64,
}

impl ThreadCpu {
    /// CPU seconds the calling thread spent since the previous call (since
    /// the thread started, on the first); 0 where it cannot be read.
    pub fn seconds_since_last(&mut self) -> f64 {
        let Some(now) = thread_cpu_nanos() else { return 0.0 };
        let spent = now.saturating_sub(self.last_nanos);
        self.last_nanos = now;
        spent as f64 / 1e9
    }
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

    #[test]
    fn proc_entries_parse_even_with_spaces_in_the_name() {
        let stat = "4242 (sft (worker) 1) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 123 456 789";
        let status = "Name:\tsft\nVmPeak:\t 9000 kB\nVmRSS:\t   20480 kB\nThreads:\t4\n";
        assert_eq!(parse(stat, status), Some(Usage { cpu_seconds: 3.0, rss_bytes: 20480 * 1024 }));
        assert_eq!(parse("garbage", status), None);
        assert_eq!(parse("1 (x)", status), None);
    }

    #[test]
    fn this_process_has_memory() {
        assert!(usage("self").unwrap().rss_bytes > 0);
    }
}
