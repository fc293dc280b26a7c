//! The result of a load run: as a table for people, as JSON for machines.

use std::fmt::Write;
use std::time::Duration;

use clap::ValueEnum;
use serde::Serialize;

use super::peer::{Engine, PeerPlan};
use super::run::LoadPlan;
use super::stats::{percentile, Totals};
use crate::process::Usage;

/// Peers whose layers over time the table shows.
const LAYER_ROWS: usize = 12;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub sfts: Vec<String>,
    pub engine: Engine,
    pub conferences: usize,
    pub participants: usize,
    pub publishers: usize,
    pub simulcast: bool,
    pub video_kbps: u32,
    /// The impairment of the SFT-to-peer direction, when there is one.
    pub impairment: Option<ImpairmentReport>,
    pub window_seconds: f64,
    pub peers: usize,
    pub joined: usize,
    pub failures: Vec<String>,
    pub join_ms: Percentiles,
    pub latency_ms: Percentiles,
    /// Mean over peers.
    pub receive_kbps: f64,
    /// Mean over peers: video frames received per second (all slots).
    pub video_fps: f64,
    pub packets_received: u64,
    pub packets_lost: u64,
    pub loss_percent: f64,
    /// Peers that heard as many of their conference's other publishers as
    /// they have receive slots for (all of them when slots suffice).
    pub peers_fully_served: usize,
    pub sft_usage: Vec<SftUsage>,
    pub per_peer: Vec<PeerReport>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct ImpairmentReport {
    pub receiver_kbps: Option<u64>,
    pub loss_percent: f64,
    pub delay_ms: f64,
    /// Impaired participants per conference (the last ones).
    pub impaired: usize,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

impl Percentiles {
    fn of(samples: &mut [u32], scale: f64) -> Self {
        let at = |samples: &mut [u32], p| percentile(samples, p).map(|v| f64::from(v) * scale);
        Self { p50: at(samples, 50.0), p95: at(samples, 95.0), p99: at(samples, 99.0) }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerReport {
    pub userid: String,
    pub conf_id: String,
    pub sft: String,
    pub join_ms: f64,
    /// Distinct other publishers of its conference this peer heard.
    pub heard_from: usize,
    /// How many it should hear: the other publishers, at most its slots.
    pub expected_from: usize,
    pub packets: u64,
    pub lost: u64,
    pub receive_kbps: f64,
    pub video_fps: f64,
    /// Whether the network to this peer was impaired.
    pub impaired: bool,
    /// A string per second of the window, a character per video slot: the
    /// layer it received (`l`, `m`, `h`), `-` for nothing, `?` for unknown.
    pub layers_over_time: Vec<String>,
}

/// What one peer received over the window.
pub struct Received {
    /// Distinct other publishers of its conference it heard.
    pub heard_from: usize,
    /// How many it should hear.
    pub expected_from: usize,
    pub totals: Totals,
    pub layers_over_time: Vec<String>,
}

impl PeerReport {
    pub fn new(plan: &PeerPlan, join: Duration, received: Received, window: Duration) -> Self {
        let Received { heard_from, expected_from, totals, layers_over_time } = received;
        let seconds = window.as_secs_f64().max(f64::EPSILON);
        Self {
            userid: plan.userid.clone(),
            conf_id: plan.conf_id.clone(),
            sft: plan.sft.clone(),
            join_ms: join.as_secs_f64() * 1000.0,
            heard_from,
            expected_from,
            packets: totals.packets,
            lost: totals.lost(),
            receive_kbps: totals.bytes as f64 * 8.0 / 1000.0 / seconds,
            video_fps: totals.video_frames as f64 / seconds,
            impaired: plan.impairment.is_some(),
            layers_over_time,
        }
    }
}

/// The SFT's resource use over the measurement window.
#[derive(Debug, Clone, Serialize)]
pub struct SftUsage {
    pub probe: String,
    pub cpu_seconds: Option<f64>,
    /// CPU time over wall time (100 = one core busy).
    pub cpu_percent: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub error: Option<String>,
}

/// Who joined and how long the window lasted.
pub struct RunWindow {
    pub peers: usize,
    pub failures: Vec<String>,
    pub window: Duration,
}

type UsageReading = (String, Result<Usage, String>, Result<Usage, String>);

impl Report {
    pub fn new(
        plan: &LoadPlan,
        run: RunWindow,
        per_peer: Vec<PeerReport>,
        mut latencies_micros: Vec<u32>,
        usage: Vec<UsageReading>,
    ) -> Self {
        let mut join_micros: Vec<u32> = per_peer.iter().map(|p| (p.join_ms * 1000.0) as u32).collect();
        let packets: u64 = per_peer.iter().map(|p| p.packets).sum();
        let lost: u64 = per_peer.iter().map(|p| p.lost).sum();
        let mean = |f: fn(&PeerReport) -> f64| {
            if per_peer.is_empty() {
                0.0
            } else {
                per_peer.iter().map(f).sum::<f64>() / per_peer.len() as f64
            }
        };
        let seconds = run.window.as_secs_f64().max(f64::EPSILON);
        let sft_usage = usage
            .into_iter()
            .map(|(probe, start, end)| match (start, end) {
                (Ok(start), Ok(end)) => SftUsage {
                    probe,
                    cpu_seconds: Some(end.cpu_seconds - start.cpu_seconds),
                    cpu_percent: Some((end.cpu_seconds - start.cpu_seconds) / seconds * 100.0),
                    rss_bytes: Some(end.rss_bytes),
                    error: None,
                },
                (Err(e), _) | (_, Err(e)) => {
                    SftUsage { probe, cpu_seconds: None, cpu_percent: None, rss_bytes: None, error: Some(e) }
                }
            })
            .collect();
        Self {
            sfts: plan.sfts.clone(),
            engine: plan.engine,
            conferences: plan.conferences,
            participants: plan.participants,
            publishers: plan.publishers,
            simulcast: plan.simulcast,
            video_kbps: plan.video_kbps,
            impairment: plan.impairment.map(|i| ImpairmentReport {
                receiver_kbps: i.rate_kbps,
                loss_percent: i.loss_percent,
                delay_ms: i.delay.as_secs_f64() * 1000.0,
                impaired: plan.impaired,
            }),
            window_seconds: seconds,
            peers: run.peers,
            joined: per_peer.len(),
            failures: run.failures,
            join_ms: Percentiles::of(&mut join_micros, 0.001),
            latency_ms: Percentiles::of(&mut latencies_micros, 0.001),
            receive_kbps: mean(|p| p.receive_kbps),
            video_fps: mean(|p| p.video_fps),
            packets_received: packets,
            packets_lost: lost,
            loss_percent: if packets + lost == 0 { 0.0 } else { lost as f64 * 100.0 / (packets + lost) as f64 },
            peers_fully_served: per_peer.iter().filter(|p| p.heard_from >= p.expected_from).count(),
            sft_usage,
            per_peer,
        }
    }

    /// The final table.
    pub fn table(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
        let mut out = String::new();
        let _ = writeln!(
            out,
            "sft-load: {} conference(s) × {} participants ({} publishing{}, {}), {:.0} s window",
            self.conferences,
            self.participants,
            self.publishers,
            if self.simulcast { ", simulcast" } else { "" },
            self.engine.to_possible_value().expect("every engine is selectable").get_name(),
            self.window_seconds
        );
        let rows = [
            ("joined", format!("{} / {}", self.joined, self.peers)),
            (
                "join p50 / p95 / p99",
                format!("{} / {} / {}", ms(self.join_ms.p50), ms(self.join_ms.p95), ms(self.join_ms.p99)),
            ),
            ("end-to-end p50 / p99", format!("{} / {}", ms(self.latency_ms.p50), ms(self.latency_ms.p99))),
            ("received per peer", format!("{:.0} kbit/s, {:.1} video frames/s", self.receive_kbps, self.video_fps)),
            (
                "packet loss",
                format!(
                    "{:.3} % ({} of {})",
                    self.loss_percent,
                    self.packets_lost,
                    self.packets_received + self.packets_lost
                ),
            ),
            (
                "heard every sender",
                format!(
                    "{} of {} peers (every participant their slots have room for)",
                    self.peers_fully_served, self.joined
                ),
            ),
        ];
        for (name, value) in rows {
            let _ = writeln!(out, "  {name:<24} {value}");
        }
        for usage in &self.sft_usage {
            let value = match (&usage.error, usage.cpu_percent, usage.rss_bytes) {
                (None, Some(cpu), Some(rss)) => format!("{cpu:.1} % CPU, {:.1} MiB RSS", rss as f64 / 1048576.0),
                (error, _, _) => format!("unavailable: {}", error.as_deref().unwrap_or("?")),
            };
            let _ = writeln!(out, "  {:<24} {value}", format!("SFT {}", usage.probe));
        }
        for failure in &self.failures {
            let _ = writeln!(out, "  failed: {failure}");
        }
        self.write_layers_over_time(&mut out);
        out
    }

    /// The layers each receiver got, second by second: the impaired peers,
    /// then as many others as fit in [`LAYER_ROWS`].
    fn write_layers_over_time(&self, out: &mut String) {
        if self.per_peer.iter().all(|p| p.layers_over_time.iter().all(String::is_empty)) {
            return;
        }
        if let Some(i) = &self.impairment {
            let cap = i.receiver_kbps.map_or("no cap".into(), |kbps| format!("{kbps} kbit/s"));
            let _ = writeln!(
                out,
                "  impaired: the last {} per conference: {cap}, {} % loss, {:.0} ms delay",
                i.impaired, i.loss_percent, i.delay_ms
            );
        }
        let _ = writeln!(out, "  video layers per second (a column per slot: l/m/h, - nothing received):");
        let mut rows: Vec<&PeerReport> = self.per_peer.iter().filter(|p| p.impaired).collect();
        rows.extend(self.per_peer.iter().filter(|p| !p.impaired));
        for peer in rows.iter().take(LAYER_ROWS) {
            let mark = if peer.impaired { " (impaired)" } else { "" };
            let _ = writeln!(out, "  {:<24} {}", format!("{}{mark}", peer.userid), peer.layers_over_time.join(" "));
        }
        if rows.len() > LAYER_ROWS {
            let _ = writeln!(out, "  … {} more peers in --json", rows.len() - LAYER_ROWS);
        }
    }
}

/// Whether a run's media arrived as it should: the peers whose network was
/// not impaired lost at most `max_loss_percent` of their packets, and were
/// still receiving video in the window's last second (an SFT that died
/// mid-run counts as no loss, but shows as silence). `Err` says what failed.
pub fn verdict(peers: &[PeerReport], max_loss_percent: f64) -> Result<(), String> {
    let clear: Vec<&PeerReport> = peers.iter().filter(|p| !p.impaired && p.expected_from > 0).collect();
    let (packets, lost) = clear.iter().fold((0, 0), |(packets, lost), p| (packets + p.packets, lost + p.lost));
    if packets + lost > 0 {
        let loss = lost as f64 * 100.0 / (packets + lost) as f64;
        if loss > max_loss_percent {
            return Err(format!(
                "{loss:.2} % packet loss on unimpaired peers, more than --max-loss {max_loss_percent} %"
            ));
        }
    }
    let silent = |p: &&&PeerReport| {
        p.packets == 0 || p.layers_over_time.last().is_some_and(|s| !s.is_empty() && s.chars().all(|c| c == '-'))
    };
    let silent = clear.iter().filter(silent).count();
    if !clear.is_empty() && silent == clear.len() {
        return Err(format!("none of the {silent} unimpaired peers received video at the end: did the SFT stop?"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(packets: u64, lost: u64, impaired: bool, last_second: &str) -> PeerReport {
        PeerReport {
            userid: "p".into(),
            conf_id: "c".into(),
            sft: "http://127.0.0.1:8585".into(),
            join_ms: 1.0,
            heard_from: 1,
            expected_from: 1,
            packets,
            lost,
            receive_kbps: 1.0,
            video_fps: 1.0,
            impaired,
            layers_over_time: vec!["hh".into(), last_second.into()],
        }
    }

    #[test]
    fn loss_of_unimpaired_peers_and_a_silent_end_fail_the_run() {
        assert!(
            verdict(&[peer(1000, 0, false, "hh"), peer(500, 400, true, "l-")], 1.0).is_ok(),
            "impaired loss is expected"
        );
        let lossy = verdict(&[peer(700, 300, false, "hh")], 1.0).unwrap_err();
        assert!(lossy.contains("30.00 %"), "{lossy}");
        assert!(verdict(&[peer(995, 5, false, "hh")], 1.0).is_ok());
        let dead = verdict(&[peer(1000, 0, false, "--"), peer(900, 0, false, "--")], 1.0).unwrap_err();
        assert!(dead.contains("did the SFT stop"), "{dead}");
        assert!(verdict(&[peer(1000, 0, false, "--"), peer(900, 0, false, "h-")], 1.0).is_ok(), "one still receives");
        assert!(verdict(&[peer(0, 0, false, "")], 1.0).is_err(), "nothing at all");
    }
}
