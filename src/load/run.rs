//! A load run: which peers join which conference on which SFT, joins spread
//! over the ramp, a measurement window of `duration` once everyone is in.
#![allow(clippy::disallowed_methods)] // a load run measures real time

use std::time::{Duration, Instant};

use super::impair::Impairment;
use super::peer::{layer_of_width, Engine, LoadPeer, PeerPlan};
use super::report::{PeerReport, Received, Report, RunWindow};
use super::stats::{Totals, VideoSlot};
use super::usage::Probe;
use super::LoadError;
use crate::process::Usage;

/// Peers per run; each costs the load process a WebRTC stack.
pub const MAX_PEERS: usize = 1000;
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
pub const MAX_RAMP: Duration = Duration::from_secs(600);
pub const MAX_DELAY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// Signalling base URLs; participant `i` of a conference goes to
    /// `sfts[i % len]`, the first being the anchor.
    pub sfts: Vec<String>,
    /// The first SFT's domain, named as `anchor` by peers on the others.
    pub anchor_domain: Option<String>,
    pub conferences: usize,
    pub participants: usize,
    /// Participants per conference that publish (the first ones).
    pub publishers: usize,
    pub simulcast: bool,
    pub video_kbps: u32,
    pub duration: Duration,
    pub ramp: Duration,
    pub slots: usize,
    pub probes: Vec<Probe>,
    /// What the network does between the SFT and the impaired peers.
    pub impairment: Option<Impairment>,
    /// Per conference, how many participants (the last ones) are impaired.
    pub impaired: usize,
    pub engine: Engine,
}

impl LoadPlan {
    pub fn check(&self) -> Result<(), LoadError> {
        let fail = |why: &str| Err(LoadError::Plan(why.into()));
        let peers = self.conferences * self.participants;
        if self.sfts.is_empty() {
            return fail("name at least one --sft");
        }
        if self.sfts.len() > 1 && self.anchor_domain.is_none() {
            return fail("several --sft need --anchor-domain (the first SFT's domain)");
        }
        if peers == 0 || peers > MAX_PEERS {
            return fail(&format!("conferences × participants must be 1..={MAX_PEERS}, not {peers}"));
        }
        if self.publishers > self.participants {
            return fail("more publishers than participants");
        }
        if self.duration.is_zero() || self.duration > MAX_DURATION || self.ramp > MAX_RAMP {
            return fail(&format!("duration must be 1 s..{MAX_DURATION:?}, ramp at most {MAX_RAMP:?}"));
        }
        if !(16..=50_000).contains(&self.video_kbps) {
            return fail("video kbps must be 16..=50000");
        }
        if let Some(impairment) = &self.impairment {
            if impairment.rate_kbps.is_some_and(|kbps| !(16..=10_000_000).contains(&kbps)) {
                return fail("receiver kbps must be 16..=10000000");
            }
            if !(0.0..=100.0).contains(&impairment.loss_percent) {
                return fail("loss must be 0..=100 percent");
            }
            if impairment.delay > MAX_DELAY {
                return fail(&format!("delay must be at most {MAX_DELAY:?}"));
            }
        }
        if self.impaired > self.participants {
            return fail("more impaired participants than participants");
        }
        for url in &self.sfts {
            if !loopback_url(url) {
                return fail(&format!("{url}: sft-load talks to loopback addresses only (http://127.0.0.1:PORT)"));
            }
        }
        Ok(())
    }

    fn peer_plans(&self, run_id: u32) -> Vec<PeerPlan> {
        let mut plans = Vec::with_capacity(self.conferences * self.participants);
        for conference in 0..self.conferences {
            for participant in 0..self.participants {
                let sft_index = participant % self.sfts.len();
                plans.push(PeerPlan {
                    sft: self.sfts[sft_index].clone(),
                    conf_id: format!("load-{run_id:08x}-{conference}"),
                    userid: format!("load-{conference}-{participant}"),
                    anchor_domain: self.anchor_domain.clone().filter(|_| sft_index > 0),
                    sender: plans.len() as u32,
                    publish: participant < self.publishers,
                    simulcast: self.simulcast,
                    video_kbps: self.video_kbps,
                    audio_slots: self.slots,
                    video_slots: self.slots,
                    impairment: self.impairment.filter(|_| participant >= self.participants - self.impaired),
                    engine: self.engine,
                });
            }
        }
        plans
    }
}

/// Whether `url` is `http(s)://` to a loopback IP or `localhost`.
fn loopback_url(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")) else { return false };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// What a progress display gets once a second.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub joined: usize,
    pub failed: usize,
    pub peers: usize,
    /// Seconds into the measurement window (0 while joining).
    pub measured: Duration,
    pub duration: Duration,
    /// All peers' receive rate over the last second.
    pub receive_bits_per_second: f64,
}

pub async fn run(plan: &LoadPlan, mut on_progress: impl FnMut(&Progress)) -> Result<Report, LoadError> {
    plan.check()?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .map_err(|e| LoadError::Plan(e.to_string()))?;
    let epoch = Instant::now();
    let plans = plan.peer_plans(rand::random());
    let peers_total = plans.len();
    let mut joins = tokio::task::JoinSet::new();
    for (index, peer_plan) in plans.into_iter().enumerate() {
        let delay = plan.ramp.mul_f64(index as f64 / peers_total as f64);
        let http = http.clone();
        joins.spawn(async move {
            tokio::time::sleep(delay).await;
            LoadPeer::join(peer_plan, epoch, &http).await
        });
    }
    let mut peers = Vec::with_capacity(peers_total);
    let mut failures = Vec::new();
    let mut progress = Progress {
        joined: 0,
        failed: 0,
        peers: peers_total,
        measured: Duration::ZERO,
        duration: plan.duration,
        receive_bits_per_second: 0.0,
    };
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    while !joins.is_empty() {
        tokio::select! {
            Some(joined) = joins.join_next() => match joined {
                Ok(Ok(peer)) => peers.push(peer),
                Ok(Err(e)) => failures.push(e.to_string()),
                Err(e) => failures.push(format!("join task: {e}")),
            },
            _ = ticks.tick() => {
                progress.joined = peers.len();
                progress.failed = failures.len();
                on_progress(&progress);
            }
        }
    }
    progress.joined = peers.len();
    progress.failed = failures.len();

    // The window starts once everyone is in: joins do not dilute the rates.
    let usage_start = read_usage(&plan.probes, &http).await;
    let started = Instant::now();
    let mut start_totals = Vec::with_capacity(peers.len());
    for peer in &peers {
        let mut stats = peer.stats.lock().expect("stats lock");
        stats.take_latencies();
        start_totals.push(stats.totals());
    }
    let mut last = start_totals.iter().map(|t| t.bytes).sum::<u64>();
    let mut layers = LayerTimeline::new(&peers);
    // The window ends on time, not at the first progress tick after it
    // (ticks keep the phase they had during the joins).
    let end = tokio::time::Instant::from_std(started + plan.duration);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = tokio::time::sleep_until(end) => break,
        }
        layers.sample(&peers);
        let bytes: u64 = peers.iter().map(|p| p.stats.lock().expect("stats lock").totals().bytes).sum();
        progress.measured = started.elapsed().min(plan.duration);
        progress.receive_bits_per_second = (bytes - last) as f64 * 8.0;
        last = bytes;
        on_progress(&progress);
    }
    let window = started.elapsed();
    let usage_end = read_usage(&plan.probes, &http).await;

    let mut latencies = Vec::new();
    let mut peer_reports = Vec::with_capacity(peers.len());
    for ((peer, start), layers_over_time) in peers.iter().zip(&start_totals).zip(layers.seconds) {
        let mut stats = peer.stats.lock().expect("stats lock");
        latencies.extend(stats.take_latencies());
        let totals: Totals = stats.totals().since(*start);
        let others = expected_senders(plan, &peer.plan);
        let heard_from = stats.heard().iter().filter(|s| others.contains(s)).count();
        let expected_from = others.len().min(plan.slots);
        let received = Received { heard_from, expected_from, totals, layers_over_time };
        peer_reports.push(PeerReport::new(&peer.plan, peer.join_latency, received, window));
    }
    for peer in &mut peers {
        peer.close().await;
    }
    let usage = plan
        .probes
        .iter()
        .zip(usage_start.into_iter().zip(usage_end))
        .map(|(probe, (start, end))| (probe.describe(), start, end))
        .collect();
    Ok(Report::new(plan, RunWindow { peers: peers_total, failures, window }, peer_reports, latencies, usage))
}

/// Each peer's video slots, once a second: which layer each one received
/// in that second.
struct LayerTimeline {
    /// Per peer, the slots as last sampled.
    last: Vec<Vec<VideoSlot>>,
    /// Per peer, a string per second (see [`slot_layers`]).
    seconds: Vec<Vec<String>>,
}

impl LayerTimeline {
    fn new(peers: &[LoadPeer]) -> Self {
        let last = peers.iter().map(|p| p.stats.lock().expect("stats lock").video_slots()).collect();
        Self { last, seconds: vec![Vec::new(); peers.len()] }
    }

    fn sample(&mut self, peers: &[LoadPeer]) {
        for ((peer, last), seconds) in peers.iter().zip(&mut self.last).zip(&mut self.seconds) {
            let now = peer.stats.lock().expect("stats lock").video_slots();
            seconds.push(slot_layers(last, &now));
            *last = now;
        }
    }
}

/// One character per video slot that has received anything, in SSRC
/// order: the rid of the layer it carried (by its newest keyframe's width)
/// if packets arrived since `before`, `-` if none did.
fn slot_layers(before: &[VideoSlot], now: &[VideoSlot]) -> String {
    now.iter()
        .map(|slot| {
            let earlier = before.iter().find(|b| b.ssrc == slot.ssrc).map_or(0, |b| b.packets);
            match slot.width {
                _ if slot.packets == earlier => "-",
                Some(width) => layer_of_width(width),
                None => "?",
            }
        })
        .collect()
}

/// The senders a peer may hear: its conference's publishers but itself.
fn expected_senders(plan: &LoadPlan, peer: &PeerPlan) -> Vec<u32> {
    let conference_start = peer.sender - peer.sender % plan.participants as u32;
    (conference_start..conference_start + plan.publishers as u32).filter(|s| *s != peer.sender).collect()
}

async fn read_usage(probes: &[Probe], http: &reqwest::Client) -> Vec<Result<Usage, String>> {
    let mut readings = Vec::with_capacity(probes.len());
    for probe in probes {
        readings.push(probe.read(http).await);
    }
    readings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> LoadPlan {
        LoadPlan {
            sfts: vec!["http://127.0.0.1:8585".into(), "http://127.0.0.2:8585".into()],
            anchor_domain: Some("a.example".into()),
            conferences: 2,
            participants: 3,
            publishers: 2,
            simulcast: true,
            video_kbps: 500,
            duration: Duration::from_secs(5),
            ramp: Duration::ZERO,
            slots: 4,
            probes: vec![],
            impairment: Some(Impairment { loss_percent: 5.0, ..Impairment::default() }),
            impaired: 1,
            engine: Engine::Str0m,
        }
    }

    #[test]
    fn peers_spread_over_sfts_and_name_the_anchor_off_it() {
        let plans = plan().peer_plans(1);
        assert_eq!(plans.len(), 6);
        let on_b: Vec<_> = plans.iter().filter(|p| p.sft.contains("127.0.0.2")).collect();
        assert_eq!(on_b.len(), 2);
        assert!(on_b.iter().all(|p| p.anchor_domain.as_deref() == Some("a.example")));
        assert!(plans.iter().filter(|p| p.sft.contains("127.0.0.1")).all(|p| p.anchor_domain.is_none()));
        assert_eq!(plans.iter().filter(|p| p.publish).count(), 4);
        assert_eq!(plans[3].conf_id, plans[5].conf_id);
        let impaired: Vec<&str> = plans.iter().filter(|p| p.impairment.is_some()).map(|p| p.userid.as_str()).collect();
        assert_eq!(impaired, vec!["load-0-2", "load-1-2"], "the last participant of each conference");
        assert_ne!(plans[0].conf_id, plans[3].conf_id);
    }

    #[test]
    fn a_peer_expects_its_conference_publishers_but_itself() {
        let plan = plan();
        let plans = plan.peer_plans(1);
        assert_eq!(expected_senders(&plan, &plans[0]), vec![1]);
        assert_eq!(expected_senders(&plan, &plans[5]), vec![3, 4]);
    }

    #[test]
    fn plans_are_bounded_and_loopback_only() {
        assert!(plan().check().is_ok());
        let bad = [
            LoadPlan { conferences: 1000, ..plan() },
            LoadPlan { publishers: 4, ..plan() },
            LoadPlan { duration: Duration::ZERO, ..plan() },
            LoadPlan { anchor_domain: None, ..plan() },
            LoadPlan { sfts: vec!["http://10.0.0.1:8585".into()], ..plan() },
            LoadPlan { sfts: vec!["http://example.com".into()], ..plan() },
            LoadPlan { impaired: 4, ..plan() },
            LoadPlan { impairment: Some(Impairment { loss_percent: 101.0, ..Impairment::default() }), ..plan() },
            LoadPlan { impairment: Some(Impairment { rate_kbps: Some(1), ..Impairment::default() }), ..plan() },
            LoadPlan {
                impairment: Some(Impairment { delay: Duration::from_secs(11), ..Impairment::default() }),
                ..plan()
            },
        ];
        for plan in bad {
            assert!(plan.check().is_err(), "{plan:?}");
        }
        assert!(loopback_url("http://localhost:8585/"));
        assert!(loopback_url("http://[::1]:8585"));
    }

    #[test]
    fn each_second_shows_the_layer_of_every_slot_or_that_it_got_nothing() {
        let slot = |ssrc, packets, width| VideoSlot { ssrc, packets, width };
        let before = [slot(1, 10, Some(1280)), slot(2, 5, Some(320))];
        let now = [slot(1, 40, Some(1280)), slot(2, 5, Some(320)), slot(3, 7, Some(640)), slot(4, 2, None)];
        assert_eq!(slot_layers(&before, &now), "h-m?");
    }
}
