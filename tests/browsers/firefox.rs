//! Headless Firefox ESR driven over WebDriver BiDi, which Firefox serves
//! itself with `--remote-debugging-port` (no geckodriver).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Profile preferences: fake camera and microphone without a prompt, ICE
/// on loopback (which Firefox otherwise leaves out), no start-up chatter.
const PREFS: &[(&str, &str)] = &[
    ("media.navigator.streams.fake", "true"),
    ("media.navigator.permission.disabled", "true"),
    ("media.peerconnection.ice.loopback", "true"),
    ("media.peerconnection.ice.default_address_only", "false"),
    ("media.peerconnection.ice.obfuscate_host_addresses", "false"),
    ("permissions.default.camera", "1"),
    ("permissions.default.microphone", "1"),
    ("media.autoplay.default", "0"),
    ("browser.shell.checkDefaultBrowser", "false"),
    ("datareporting.policy.dataSubmissionEnabled", "false"),
    ("app.update.enabled", "false"),
    ("network.captive-portal-service.enabled", "false"),
    ("network.connectivity-service.enabled", "false"),
    ("remote.prefs.recommended", "true"),
];

/// Every BiDi command gets an answer within this.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Firefox {
    process: Child,
    profile: PathBuf,
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    context: String,
    next_id: u64,
}

impl Firefox {
    /// Starts `firefox-esr` on a fresh profile in `profile` and opens a BiDi session.
    pub async fn open(profile: &Path) -> Self {
        std::fs::create_dir_all(profile).unwrap();
        let prefs: String = PREFS.iter().map(|(name, value)| format!("user_pref(\"{name}\", {value});\n")).collect();
        std::fs::write(profile.join("user.js"), prefs).unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let process = Command::new("firefox-esr")
            .args(["--headless", "--no-remote", "--profile"])
            .arg(profile)
            .arg(format!("--remote-debugging-port={port}"))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("firefox-esr is installed (Debian package firefox-esr)");
        let url = format!("ws://127.0.0.1:{port}/session");
        // A cold Firefox on a fresh profile is slow to start on a busy 2-core machine.
        let deadline = Instant::now() + Duration::from_secs(60);
        let socket = loop {
            match tokio_tungstenite::connect_async(url.as_str()).await {
                Ok((socket, _)) => break socket,
                Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(e) => panic!("Firefox serves no WebDriver BiDi at {url}: {e}"),
            }
        };
        let mut firefox = Self { process, profile: profile.to_owned(), socket, context: String::new(), next_id: 0 };
        firefox.command("session.new", json!({"capabilities": {}})).await;
        let tree = firefox.command("browsingContext.getTree", json!({})).await;
        firefox.context = tree["contexts"][0]["context"].as_str().expect("a browsing context").to_owned();
        firefox
    }

    pub async fn goto(&mut self, url: &str) {
        let context = self.context.clone();
        self.command("browsingContext.navigate", json!({"context": context, "url": url, "wait": "complete"})).await;
    }

    /// The value of a JavaScript expression (a promise is awaited).
    pub async fn eval(&mut self, expression: &str) -> Value {
        let wrapped = format!("Promise.resolve({expression}).then((v) => JSON.stringify(v))");
        let params = json!({
            "expression": wrapped,
            "target": {"context": self.context},
            "awaitPromise": true,
        });
        let result = self.command("script.evaluate", params).await;
        match result["result"]["value"].as_str() {
            Some(text) => serde_json::from_str(text).unwrap_or(Value::Null),
            None => json!({"error": result}),
        }
    }

    /// Sends one command and returns its `result`, skipping events.
    async fn command(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let message = json!({"id": id, "method": method, "params": params}).to_string();
        self.socket.send(Message::text(message)).await.unwrap();
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = tokio::time::timeout(left, self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("Firefox did not answer {method} in time"))
                .unwrap_or_else(|| panic!("Firefox closed the BiDi socket during {method}"))
                .unwrap();
            let Message::Text(text) = frame else { continue };
            let reply: Value = serde_json::from_str(&text).unwrap();
            if reply["id"] != id {
                continue;
            }
            assert_eq!(reply["type"], "success", "{method}: {reply}");
            return reply["result"].clone();
        }
    }
}

impl Drop for Firefox {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
