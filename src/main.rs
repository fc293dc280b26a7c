//! The `sft` binary: run the SFT.
#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use sft::config::Config;
use sft::server::{DrainOutcome, Server};

/// Exit status when the media thread died: EX_SOFTWARE, an internal error.
const EXIT_MEDIA_STOPPED: u8 = 70;

#[derive(Debug, Parser)]
#[command(version, about = "sft: a federated selective forwarding unit for group video calls")]
struct Cli {
    /// TOML config file; without it the embedded default runs on localhost.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The IP address clients send media to (overrides media.public_ip).
    #[arg(long, value_name = "IP")]
    public_ip: Option<IpAddr>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Certificates for trying federation locally.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Write a test CA (ca.pem, ca.key) and a certificate for DOMAIN (cert.pem, key.pem).
    Dev {
        /// The domain the certificate is for (its SAN).
        #[arg(long)]
        domain: String,
        /// Where to write the files.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Sign with the CA in this directory (ca.pem, ca.key) instead of a new one.
        #[arg(long, value_name = "DIR")]
        ca: Option<PathBuf>,
        /// Replace a CA already in DIR (certificates it signed stop being trusted).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Certs { command: CertsCommand::Dev { domain, out, ca, force } }) = &cli.command {
        return match sft::certs::dev(domain, out, ca.as_deref(), *force) {
            Ok(written) => {
                print!("{}", written.federation_toml());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sft: {e}");
                ExitCode::from(2)
            }
        };
    }
    init_logging(cli.log_format);
    let mut config = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("sft: {e}");
            return ExitCode::from(2);
        }
    };
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    if let Some(ip) = cli.public_ip {
        config.set_public_ip(ip);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime starts");
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    let server = match Server::start(&config).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("sft: {e}");
            // A certificate or key that cannot be read is the configuration's
            // fault (exit 2, like every config error); a port in use is not.
            return ExitCode::from(if e.is_configuration() { 2 } else { 1 });
        }
    };
    let scheme = if config.signalling.tls.is_some() { "https" } else { "http" };
    println!("sft: demo page at {scheme}://{}/", server.signalling_addr);
    tracing::info!(
        signalling = %server.signalling_addr,
        media = ?server.media_addrs,
        media_workers = server.media_addrs.len(),
        metrics = %server.metrics_addr,
        domain = %config.domain,
        advertised_media = %config.media.public_addr,
        "sft running"
    );
    match (&config.federation, &server.federation) {
        (Some(federation), Some(listening)) => {
            let relay = federation.relay_public.clone().unwrap_or_else(|| listening.relay.to_string());
            tracing::info!(
                strategy = ?federation.strategy,
                control = %listening.control,
                advertised_relay = %relay,
                "federation on: anchors the calls {}'s users start, joins other domains' calls as a federated SFT",
                config.domain
            );
        }
        _ => tracing::info!("federation off: calls stay on this SFT"),
    }
    let mut hangup =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).expect("SIGHUP handler installs");
    let reloader = server.reloader.clone();
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading");
            // The outcome is logged and counted; a failed reload changes nothing.
            let _ = reloader.reload();
        }
    });
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler installs");
    loop {
        tokio::select! {
            _ = terminate.recv() => {
                tracing::info!("SIGTERM: draining");
                server.drain.start();
            }
            _ = server.drain.started() => tracing::info!("drain requested"),
            _ = server.media_stopped() => {
                tracing::error!("the media thread stopped; exiting so that a supervisor restarts the SFT");
                return ExitCode::from(EXIT_MEDIA_STOPPED);
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("interrupted; exiting without draining");
                return ExitCode::SUCCESS;
            }
        }
        match server.wait_drained(config.drain_timeout, config.drain_grace).await {
            // `DELETE /admin/drain`: back to serving.
            DrainOutcome::Cancelled => continue,
            DrainOutcome::Drained | DrainOutcome::TimedOut => return ExitCode::SUCCESS,
            DrainOutcome::MediaStopped => {
                tracing::error!("the media thread stopped while draining");
                return ExitCode::from(EXIT_MEDIA_STOPPED);
            }
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,str0m=warn"));
    // Colours only on a terminal: log files and journald get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
