//! The `sft` binary as a child process on loopback, for tests that kill it.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Signalling;

pub struct SftProcess {
    child: Child,
    pub signalling: SocketAddr,
    pub metrics: SocketAddr,
    media: SocketAddr,
    config: PathBuf,
}

fn free_tcp(ip: &str) -> SocketAddr {
    TcpListener::bind(format!("{ip}:0")).unwrap().local_addr().unwrap()
}

impl SftProcess {
    /// Starts `sft --config` with `toml` on `ip`, and waits until it is ready.
    pub async fn start(toml: &str, ip: &str) -> Self {
        let config =
            std::env::temp_dir().join(format!("sft-process-{}-{}.toml", std::process::id(), rand::random::<u32>()));
        std::fs::write(&config, toml).unwrap();
        let (signalling, metrics) = (free_tcp(ip), free_tcp(ip));
        let media = UdpSocket::bind(format!("{ip}:0")).unwrap().local_addr().unwrap();
        let child = spawn(&config, signalling, metrics, media);
        let process = Self { child, signalling, metrics, media, config };
        process.wait_until_ready().await;
        process
    }

    /// Starts `sft --config <file>` in `dir`, as an operator would: no
    /// environment overrides, every address as the file says.
    pub async fn start_from_file(file: &Path, dir: &Path) -> Self {
        let config = sft::config::Config::load(Some(file), []).expect("the config file is valid");
        let child = Command::new(env!("CARGO_BIN_EXE_sft"))
            .arg("--config")
            .arg(file)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the sft binary starts");
        let (signalling, metrics, media) = (config.signalling.listen, config.metrics_listen, config.media.listen);
        let process = Self { child, signalling, metrics, media, config: file.to_owned() };
        process.wait_until_ready().await;
        process
    }

    /// SIGKILL: no drain, no goodbye, as a crashed or unplugged machine.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGKILL, then the same binary again with the same config and ports,
    /// as a supervisor restarts a crashed SFT.
    pub async fn restart(&mut self) {
        self.kill();
        self.child = spawn(&self.config, self.signalling, self.metrics, self.media);
        self.wait_until_ready().await;
    }

    /// SIGHUP: the SFT reloads its configuration.
    pub fn hangup(&self) {
        let status = Command::new("kill").arg("-HUP").arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success(), "kill -HUP");
    }

    /// Replaces the config file the process reads (on its next reload or restart).
    pub fn rewrite_config(&self, toml: &str) {
        std::fs::write(&self.config, toml).unwrap();
    }

    /// The value of one sample line of its `/metrics`.
    pub async fn metric(&self, series: &str) -> f64 {
        super::metric_at(self.metrics, series).await
    }

    async fn wait_until_ready(&self) {
        let deadline = Instant::now() + super::TIMEOUT;
        let ready = format!("http://{}/readyz", self.metrics);
        while !reqwest::get(&ready).await.is_ok_and(|r| r.status().is_success()) {
            assert!(Instant::now() < deadline, "the sft process never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn spawn(config: &Path, signalling: SocketAddr, metrics: SocketAddr, media: SocketAddr) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sft"))
        .arg("--config")
        .arg(config)
        .env("SFT_SIGNALLING__LISTEN", format!("\"{signalling}\""))
        .env("SFT_METRICS__LISTEN", format!("\"{metrics}\""))
        .env("SFT_MEDIA__LISTEN", format!("\"{media}\""))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the sft binary starts")
}

impl Signalling for SftProcess {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.signalling)
    }
}

impl Drop for SftProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}
