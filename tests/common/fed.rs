//! Federation test helpers: certificates from one test CA, configs, peers.

use std::path::PathBuf;

use super::{PeerOptions, TestSft};

pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    /// A CA and a certificate per domain, all under one temp dir.
    pub fn new(domains: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("sft-fed-{}-{}", std::process::id(), rand::random::<u32>()));
        let ca = dir.join("ca");
        sft::certs::dev("ca.invalid", &ca, None, false).unwrap();
        for domain in domains {
            sft::certs::dev(domain, &dir.join(domain), Some(&ca), false).unwrap();
        }
        Self { dir }
    }

    pub fn federation_toml(&self, domain: &str, ip: &str, extra: &str) -> String {
        let d = self.dir.join(domain);
        let strategy = if extra.contains("strategy =") { "" } else { "strategy = \"allowAll\"\n" };
        format!(
            "domain = \"{domain}\"\n[federation]\nenabled = true\nlisten = \"{ip}:0\"\nrelay_listen = \"{ip}:0\"\n\
             cert = {:?}\nkey = {:?}\nca = {:?}\nlink_timeout = 3\n{strategy}{extra}",
            d.join("cert.pem"),
            d.join("key.pem"),
            self.dir.join("ca").join("ca.pem"),
        )
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn peers_table(entries: &[(&str, &TestSft)]) -> String {
    let list: Vec<String> = entries
        .iter()
        .map(|(domain, sft)| format!("\"{domain}\" = \"{}\"", sft.server.federation.as_ref().unwrap().control))
        .collect();
    format!("peers = {{ {} }}\n", list.join(", "))
}

pub fn on(domain: &str, conf: &str, user: &str, marker: u8) -> PeerOptions {
    let anchor = (domain != "a.example").then(|| "a.example".to_string());
    PeerOptions { audio_slots: 4, video_slots: 4, anchor, ..PeerOptions::new(conf, user, marker) }
}

/// The PEM of a file the certificates were written to.
pub fn read(path: PathBuf) -> String {
    std::fs::read_to_string(path).unwrap()
}

pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `peers = { "domain" = "address" }`: where a federated SFT finds the
/// anchor's control plane.
pub fn peers_at(domain: &str, control: &str) -> String {
    format!("peers = {{ \"{domain}\" = \"{control}\" }}\n")
}

/// A federation config for `domain` on `ip` whose control plane and relay
/// keep their ports across restarts; returns it with the control address.
pub fn fixed_ports_toml(certs: &Certs, domain: &str, ip: &str, extra: &str) -> (String, String) {
    let (control, relay) = (free_tcp_port(), free_udp_port());
    let toml = certs.federation_toml(domain, ip, extra).replace(
        &format!("listen = \"{ip}:0\"\nrelay_listen = \"{ip}:0\""),
        &format!("listen = \"{ip}:{control}\"\nrelay_listen = \"{ip}:{relay}\""),
    );
    assert!(toml.contains(&format!(":{relay}\"")), "fixed ports in {toml}");
    (toml, format!("{ip}:{control}"))
}

/// `sft_federation_rejected_total{reason}` of `sft`.
pub async fn rejected(sft: &TestSft, reason: &str) -> f64 {
    sft.metric(&format!("sft_federation_rejected_total{{reason=\"{reason}\"}}")).await
}
