//! What the benchmarks share: the release `sft` binary as a child process,
//! and CPU time read from `/proc`.
#![allow(dead_code)] // each bench takes a different part

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SETUP_TIMEOUT: Duration = Duration::from_secs(20);

/// CPU nanoseconds of every thread of `pid`.
pub fn process_cpu_ns(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc is readable");
    tasks.filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok()).map(|s| first_number(&s)).sum()
}

pub fn first_number(text: &str) -> u64 {
    text.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// The SFT on its embedded defaults, every port on loopback.
pub struct SftProcess {
    pub child: Child,
    pub signalling: SocketAddr,
    pub media: SocketAddr,
    pub metrics: SocketAddr,
}

impl SftProcess {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// With extra `SFT_*` variables.
    pub fn start_with(env: &[(&str, &str)]) -> Self {
        let free = || TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let (signalling, metrics) = (free(), free());
        let media = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sft"))
            .env("SFT_SIGNALLING__LISTEN", signalling.to_string())
            .env("SFT_METRICS__LISTEN", metrics.to_string())
            .env("SFT_MEDIA__LISTEN", media.to_string())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the sft binary starts");
        let deadline = Instant::now() + SETUP_TIMEOUT;
        while reqwest::blocking::get(format!("http://{metrics}/healthz")).is_err() {
            assert!(Instant::now() < deadline, "the SFT never answered");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, signalling, media, metrics }
    }

    /// The value of one sample of `/metrics` (0 when absent).
    pub fn metric(&self, sample: &str) -> f64 {
        let text = reqwest::blocking::get(format!("http://{}/metrics", self.metrics))
            .and_then(|r| r.text())
            .unwrap_or_default();
        text.lines().find_map(|line| line.strip_prefix(sample)?.trim().parse().ok()).unwrap_or(0.0)
    }
}

impl Drop for SftProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
