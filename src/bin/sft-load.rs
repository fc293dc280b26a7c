//! `sft-load`: joins synthetic WebRTC participants to SFTs on this machine
//! and reports join latency, received rates, loss, end-to-end latency and
//! the SFT's CPU and memory. See `docs/performance.md`.
#![forbid(unsafe_code)]

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use sft::load::impair::Impairment;
use sft::load::peer::Engine;
use sft::load::report::verdict;
use sft::load::run::{self, LoadPlan, Progress};
use sft::load::usage::Probe;

#[derive(Debug, Parser)]
#[command(version, about = "Load-test SFTs with synthetic WebRTC participants (loopback only)")]
struct Args {
    /// Signalling base URL of an SFT; repeat to spread each conference over
    /// federated SFTs (the first is the anchor).
    #[arg(long = "sft", default_value = "http://127.0.0.1:8585")]
    sfts: Vec<String>,
    /// The first SFT's domain, named as the anchor by peers on the others.
    #[arg(long)]
    anchor_domain: Option<String>,
    #[arg(long, default_value_t = 1)]
    conferences: usize,
    /// Participants per conference.
    #[arg(long, default_value_t = 4)]
    participants: usize,
    /// Publishing participants per conference (default: all).
    #[arg(long)]
    publishers: Option<usize>,
    /// Publish three simulcast layers (full, 1/4 and 1/16 of --video-kbps).
    #[arg(long)]
    simulcast: bool,
    #[arg(long, default_value_t = 500)]
    video_kbps: u32,
    /// Seconds to measure once everyone has joined.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds over which joins are spread.
    #[arg(long, default_value_t = 0.0)]
    ramp: f64,
    /// Receive slots per kind and participant.
    #[arg(long, default_value_t = 4)]
    slots: usize,
    /// Read an SFT's CPU and memory from /proc/PID (repeatable).
    #[arg(long = "sft-pid")]
    sft_pids: Vec<u32>,
    /// Read an SFT's CPU and memory from its /metrics URL (repeatable).
    #[arg(long = "sft-metrics")]
    sft_metrics: Vec<String>,
    /// Cap what the SFT sends each impaired peer at this rate (a bottleneck
    /// with a 200 ms queue), to watch its layers adapt.
    #[arg(long)]
    receiver_kbps: Option<u64>,
    /// Lose this share (percent) of what the SFT sends each impaired peer, at random.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Delay what the SFT sends each impaired peer by this many milliseconds.
    #[arg(long, default_value_t = 0)]
    delay: u64,
    /// How many participants per conference (the last ones) the impairments
    /// apply to (default: all).
    #[arg(long)]
    impaired: Option<usize>,
    /// The participants' WebRTC stack: full webrtc-rs peers, or light str0m
    /// sessions that let one process drive hundreds of participants.
    #[arg(long, value_enum, default_value_t = Engine::WebrtcRs)]
    engine: Engine,
    /// Print the report as JSON on stdout (no progress bar).
    #[arg(long)]
    json: bool,
    /// Exit 1 when peers whose network is not impaired lose more than this
    /// share (percent) of their packets.
    #[arg(long, default_value_t = 1.0)]
    max_loss: f64,
}

fn seconds(value: f64, name: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(value).map_err(|_| format!("--{name} must be a number of seconds, not {value}"))
}

fn impairment(args: &Args) -> Option<Impairment> {
    let impairment =
        Impairment { rate_kbps: args.receiver_kbps, loss_percent: args.loss, delay: Duration::from_millis(args.delay) };
    (impairment != Impairment::default()).then_some(impairment)
}

fn plan(args: &Args) -> Result<LoadPlan, String> {
    let probes = args.sft_pids.iter().map(|pid| Probe::Pid(*pid));
    let probes = probes.chain(args.sft_metrics.iter().map(|url| Probe::Metrics(url.clone()))).collect();
    Ok(LoadPlan {
        sfts: args.sfts.clone(),
        anchor_domain: args.anchor_domain.clone(),
        conferences: args.conferences,
        participants: args.participants,
        publishers: args.publishers.unwrap_or(args.participants),
        simulcast: args.simulcast,
        video_kbps: args.video_kbps,
        duration: seconds(args.duration, "duration")?,
        ramp: seconds(args.ramp, "ramp")?,
        slots: args.slots,
        probes,
        impairment: impairment(args),
        impaired: args.impaired.unwrap_or(args.participants),
        engine: args.engine,
    })
}

/// A plain line a second, for logs and CI where stderr is not a terminal.
fn progress_line(progress: &Progress, last_second: &mut Option<u64>) {
    let second = progress.measured.as_secs();
    if *last_second == Some(second) {
        return;
    }
    *last_second = Some(second);
    eprintln!(
        "sft-load: {second}/{:.0} s measured, joined {}/{}{}, receiving {:.1} Mbit/s",
        progress.duration.as_secs_f64(),
        progress.joined,
        progress.peers,
        if progress.failed > 0 { format!(" ({} failed)", progress.failed) } else { String::new() },
        progress.receive_bits_per_second / 1e6,
    );
}

fn progress_bar(progress: &Progress) {
    const WIDTH: usize = 30;
    let done = progress.measured.as_secs_f64() / progress.duration.as_secs_f64().max(f64::EPSILON);
    let filled = ((done * WIDTH as f64) as usize).min(WIDTH);
    let mut stderr = std::io::stderr().lock();
    let _ = write!(
        stderr,
        "\r[{}{}] {:>4.0}/{:.0} s  joined {}/{}{}  receiving {:.1} Mbit/s   ",
        "#".repeat(filled),
        " ".repeat(WIDTH - filled),
        progress.measured.as_secs_f64(),
        progress.duration.as_secs_f64(),
        progress.joined,
        progress.peers,
        if progress.failed > 0 { format!(" ({} failed)", progress.failed) } else { String::new() },
        progress.receive_bits_per_second / 1e6,
    );
    let _ = stderr.flush();
}

fn main() -> ExitCode {
    let args = Args::parse();
    let plan = match plan(&args).and_then(|plan| plan.check().map(|()| plan).map_err(|e| e.to_string())) {
        Ok(plan) => plan,
        Err(why) => {
            eprintln!("sft-load: {why}");
            return ExitCode::from(2);
        }
    };
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    let (json, terminal) = (args.json, std::io::stderr().is_terminal());
    let mut last_second = None;
    let report = runtime.block_on(run::run(&plan, |progress| match (json, terminal) {
        (true, _) => {}
        (false, true) => progress_bar(progress),
        (false, false) => progress_line(progress, &mut last_second),
    }));
    match report {
        Ok(report) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&report).expect("a report serialises"));
            } else {
                if terminal {
                    eprintln!();
                }
                print!("{}", report.table());
            }
            if !report.failures.is_empty() {
                return ExitCode::FAILURE;
            }
            match verdict(&report.per_peer, args.max_loss) {
                Ok(()) => ExitCode::SUCCESS,
                Err(why) => {
                    eprintln!("sft-load: {why}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(why) => {
            eprintln!("sft-load: {why}");
            ExitCode::FAILURE
        }
    }
}
