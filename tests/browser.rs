//! Headless Chromium opens the demo page twice, joins one conference, and
//! each page decodes the other's video. Runs inside a fresh network
//! namespace that has only loopback, so no packet can leave the machine.
#![allow(clippy::disallowed_methods)] // tests read the real clock to bound their waits

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Signalling, TestSft};
use serde_json::{json, Value};

const IN_NAMESPACE: &str = "SFT_TEST_IN_NETNS";

/// Re-runs this test binary, filtered to `test`, under `unshare --net`.
fn run_in_fresh_namespace(test: &str) {
    let exe = std::env::current_exe().unwrap();
    let script = format!("ip link set lo up && exec \"{}\" --exact {test} --nocapture --test-threads=1", exe.display());
    let mut unshare = Command::new("unshare");
    if !is_root() {
        // Without root, a user namespace grants the right to make a network namespace.
        unshare.arg("--map-root-user");
    }
    let status = unshare.args(["--net", "sh", "-c", &script]).env(IN_NAMESPACE, "1").status().expect("unshare runs");
    assert!(status.success(), "{test} failed inside its network namespace");
}

fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

struct ChromeDriver {
    process: Child,
    url: String,
}

impl ChromeDriver {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let process = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is installed (Debian package chromium-driver)");
        Self { process, url: format!("http://127.0.0.1:{port}") }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// One browser window driven over the W3C WebDriver protocol.
struct Browser {
    http: reqwest::Client,
    session: String,
}

impl Browser {
    async fn open(driver: &ChromeDriver, profile: &std::path::Path) -> Self {
        let http = reqwest::Client::new();
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            "--allow-loopback-in-peer-connection",
            "--autoplay-policy=no-user-gesture-required",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", profile.display())])
        .collect::<Vec<_>>();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}
        }}});
        let deadline = Instant::now() + Duration::from_secs(10);
        let response = loop {
            match http.post(format!("{}/session", driver.url)).json(&capabilities).send().await {
                Ok(response) => break response,
                Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => panic!("chromedriver does not answer: {e}"),
            }
        };
        let body: Value = response.json().await.unwrap();
        let session = body["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {body}")).to_owned();
        Self { http, session: format!("{}/session/{session}", driver.url) }
    }

    async fn goto(&self, url: &str) {
        let response = self.http.post(format!("{}/url", self.session)).json(&json!({"url": url})).send().await.unwrap();
        assert!(response.status().is_success(), "navigate: {}", response.text().await.unwrap());
    }

    /// Runs an async script; `arguments[arguments.length - 1]` is the callback.
    async fn run(&self, script: &str) -> Value {
        let body = json!({"script": script, "args": []});
        let response = self.http.post(format!("{}/execute/async", self.session)).json(&body).send().await.unwrap();
        let value: Value = response.json().await.unwrap();
        value["value"].clone()
    }

    async fn close(self) {
        let _ = self.http.delete(&self.session).send().await;
    }
}

#[test]
fn two_demo_pages_see_each_other() {
    if std::env::var(IN_NAMESPACE).is_err() {
        run_in_fresh_namespace("two_demo_pages_see_each_other");
        return;
    }
    tokio::runtime::Runtime::new().unwrap().block_on(two_pages());
}

async fn two_pages() {
    let sft = TestSft::start("").await;
    let driver = ChromeDriver::start();
    let profiles = std::env::temp_dir().join(format!("sft-chromium-{}", std::process::id()));
    let mut browsers = Vec::new();
    for name in ["ada", "grace"] {
        let browser = Browser::open(&driver, &profiles.join(name)).await;
        browser.goto(&sft.url(&format!("/?conf=browsers&name={name}&autojoin=1"))).await;
        browsers.push(browser);
    }
    let frames = "const done = arguments[arguments.length - 1]; window.sftFramesDecoded().then(done, e => done(-1));";
    let names = "const done = arguments[arguments.length - 1]; \
                 done([...document.querySelectorAll('.tile:not(.empty) .name')].map(e => e.textContent));";
    let deadline = Instant::now() + Duration::from_secs(45);
    for (browser, other) in browsers.iter().zip(["grace", "ada"]) {
        loop {
            let decoded = browser.run(frames).await.as_i64().unwrap_or(0);
            let tiles = browser.run(names).await;
            let names_other =
                tiles.as_array().is_some_and(|t| t.iter().any(|n| n.as_str().unwrap_or("").starts_with(other)));
            if decoded > 10 && names_other {
                break;
            }
            assert!(Instant::now() < deadline, "page never decoded {other}'s video (frames {decoded}, tiles {tiles})");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    assert_eq!(sft.metric("sft_participants{role=\"local\"}").await, 2.0);
    for browser in browsers {
        browser.close().await;
    }
    let _ = std::fs::remove_dir_all(profiles);
}
