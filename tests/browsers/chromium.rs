//! Headless Chromium driven over the W3C WebDriver protocol (chromedriver).

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub struct ChromeDriver {
    process: Child,
    url: String,
}

impl ChromeDriver {
    pub fn start() -> Self {
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

/// One Chromium window.
pub struct Chromium {
    http: reqwest::Client,
    session: String,
}

impl Chromium {
    pub async fn open(driver: &ChromeDriver, profile: &Path) -> Self {
        // Bounded: a hung renderer fails the test instead of stalling CI.
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
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

    pub async fn goto(&self, url: &str) {
        let response = self.http.post(format!("{}/url", self.session)).json(&json!({"url": url})).send().await.unwrap();
        assert!(response.status().is_success(), "navigate: {}", response.text().await.unwrap());
    }

    /// The value of a JavaScript expression (a promise is awaited).
    pub async fn eval(&self, expression: &str) -> Value {
        let script = format!(
            "const done = arguments[arguments.length - 1]; \
             Promise.resolve({expression}).then(done, (e) => done({{error: String(e)}}));"
        );
        let body = json!({"script": script, "args": []});
        let response = self.http.post(format!("{}/execute/async", self.session)).json(&body).send().await.unwrap();
        let value: Value = response.json().await.unwrap();
        value["value"].clone()
    }

    pub async fn close(self) {
        let _ = self.http.delete(&self.session).send().await;
    }
}
