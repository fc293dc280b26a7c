//! Tests with third-party clients run inside a fresh network namespace that
//! has only loopback, so no packet of theirs can leave the machine, and a
//! fresh PID namespace, so every browser or client they start dies with the
//! test, whatever way it ends.

use std::future::Future;
use std::process::Command;

const IN_NAMESPACE: &str = "SFT_TEST_IN_NETNS";
/// The most one isolated test may take, start-up of its browsers included.
const LIMIT: &str = "600";

/// Runs the test named `test` inside a fresh namespace: this process first
/// calls `outside` (whatever it returns lives until the namespace run ends),
/// then re-runs this test binary, filtered to `test`, under `unshare --net`,
/// where `inside` runs on a tokio runtime.
pub fn isolated<Guard, Body: Future<Output = ()>>(
    test: &str,
    outside: impl FnOnce() -> Guard,
    inside: impl FnOnce() -> Body,
) {
    if std::env::var(IN_NAMESPACE).is_ok() {
        tokio::runtime::Runtime::new().unwrap().block_on(inside());
        return;
    }
    let _guard = outside();
    let exe = std::env::current_exe().unwrap();
    let script = format!("ip link set lo up && exec \"{}\" --exact {test} --nocapture --test-threads=1", exe.display());
    let mut unshare = Command::new("timeout");
    unshare.args(["--kill-after=10", LIMIT, "unshare"]);
    if !is_root() {
        // Without root, a user namespace grants the right to make the others.
        unshare.arg("--map-root-user");
    }
    // The test binary becomes PID 1 of its namespace: when it exits, the
    // kernel ends everything it started.
    unshare.args(["--net", "--pid", "--fork", "--kill-child", "--mount-proc"]);
    let status = unshare.args(["sh", "-c", &script]).env(IN_NAMESPACE, "1").status().expect("unshare runs");
    assert!(status.success(), "{test} failed inside its namespaces (or ran past {LIMIT} s)");
}

fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}
