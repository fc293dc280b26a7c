//! The Prometheus metrics of `docs/contract.md` section 6, on a registry of their own
//! so several servers can run in one process (tests) without mixing counts.

use prometheus::{
    Counter, CounterVec, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Why a SETUP was turned away; the `reason` label of `sft_sessions_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    BadRequest,
    Unauthorized,
    FederationDenied,
    SessionExists,
    TooLarge,
    Unavailable,
    AnchorUnreachable,
    RateLimited,
}

impl RejectReason {
    pub const ALL: [RejectReason; 8] = [
        Self::BadRequest,
        Self::Unauthorized,
        Self::FederationDenied,
        Self::SessionExists,
        Self::TooLarge,
        Self::Unavailable,
        Self::AnchorUnreachable,
        Self::RateLimited,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::BadRequest => "bad-request",
            Self::Unauthorized => "unauthorized",
            Self::FederationDenied => "federation-denied",
            Self::SessionExists => "session-exists",
            Self::TooLarge => "too-large",
            Self::Unavailable => "unavailable",
            Self::AnchorUnreachable => "anchor-unreachable",
            Self::RateLimited => "rate-limited",
        }
    }
}

/// The `listener` label of each HTTP listener.
pub const LISTENERS: [&str; 3] = ["signalling", "federation", "metrics"];

/// Why a peer was turned away; the `reason` label of
/// `sft_federation_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// A client asked to federate while federation is off here.
    FederationDisabled,
    /// The peer's domain fails the strategy.
    DomainNotAllowed,
    /// No client certificate was presented.
    NoCertificate,
    /// The certificate does not chain to `federation.ca`, or is invalid.
    BadCertificate,
    /// `Wire-Origin-Domain` (or the relay hello) names a domain the
    /// certificate is not for.
    OriginMismatch,
    /// A relay attach with a token this SFT did not issue for that peer.
    BadToken,
    /// Outbound: the peer's server certificate is not for the domain we dialled.
    PeerCertificateMismatch,
    /// A roster entry of a domain the link's peer may not announce.
    RosterDomain,
    /// A roster entry beyond the conference's `limits.max_conference_size`.
    RosterCapacity,
    /// An attach beyond `federation.max_conferences_per_link`.
    ConferenceCapacity,
    /// A `join`, or an attach that would start a conference, while this SFT drains.
    Draining,
    /// A control message that had to wait for `federation.max_control_rate`.
    ControlRate,
    /// An attach naming a channel outside the peer's half of the channel
    /// numbers (`sft-relay/2`), or one that carries a conference of this
    /// SFT's own.
    ChannelInUse,
}

impl Rejection {
    pub const ALL: [Rejection; 13] = [
        Self::FederationDisabled,
        Self::DomainNotAllowed,
        Self::NoCertificate,
        Self::BadCertificate,
        Self::OriginMismatch,
        Self::BadToken,
        Self::PeerCertificateMismatch,
        Self::RosterDomain,
        Self::RosterCapacity,
        Self::ConferenceCapacity,
        Self::Draining,
        Self::ControlRate,
        Self::ChannelInUse,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::FederationDisabled => "federation-disabled",
            Self::DomainNotAllowed => "domain-not-allowed",
            Self::NoCertificate => "no-certificate",
            Self::BadCertificate => "bad-certificate",
            Self::OriginMismatch => "origin-mismatch",
            Self::BadToken => "bad-token",
            Self::PeerCertificateMismatch => "peer-certificate-mismatch",
            Self::RosterDomain => "roster-domain",
            Self::RosterCapacity => "roster-capacity",
            Self::ConferenceCapacity => "conference-capacity",
            Self::Draining => "draining",
            Self::ControlRate => "control-rate",
            Self::ChannelInUse => "channel-in-use",
        }
    }
}

/// What a client's downlink estimate came from; the `source` label of
/// `sft_receiver_estimate_bitrate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EstimateSource {
    /// The SFT's own send-side estimate from the client's transport-cc feedback.
    Twcc,
    /// The client's REMB reports.
    Remb,
    /// `media.max_receive_kbps`, for a client that gives neither (or less).
    Ceiling,
}

impl EstimateSource {
    pub const ALL: [EstimateSource; 3] = [Self::Twcc, Self::Remb, Self::Ceiling];

    pub fn label(self) -> &'static str {
        match self {
            Self::Twcc => "twcc",
            Self::Remb => "remb",
            Self::Ceiling => "ceiling",
        }
    }
}

/// Where a packet on the media port was dropped; the `reason` label of
/// `sft_media_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Not STUN/DTLS/RTP/RTCP at all.
    Malformed,
    /// From an address no session knows and not a STUN request for one.
    UnknownSource,
    /// A session's WebRTC stack refused it (bad SRTP, bad DTLS, ...).
    Rejected,
    /// A data channel message that is not a valid client message.
    BadMessage,
    /// A data channel message beyond `limits.client_messages_per_second`.
    MessageRate,
    /// The receiver has not negotiated the source's codec.
    NoCodec,
    /// A relay frame whose media worker's queue was full.
    WorkerBusy,
}

impl DropReason {
    pub const ALL: [DropReason; 7] = [
        Self::Malformed,
        Self::UnknownSource,
        Self::Rejected,
        Self::BadMessage,
        Self::MessageRate,
        Self::NoCodec,
        Self::WorkerBusy,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownSource => "unknown-source",
            Self::Rejected => "rejected",
            Self::BadMessage => "bad-message",
            Self::MessageRate => "message-rate",
            Self::NoCodec => "no-codec",
            Self::WorkerBusy => "worker-busy",
        }
    }
}

const LINKS_HELP: &str = "Federation links to peer SFTs, by state";
const RELAY_BYTES_HELP: &str = "Bytes on federation relay links";
const CONNECTIONS_HELP: &str =
    "Relay connections established with peer SFTs (in: the peer dialled); a count that keeps rising means a flapping link";

/// The labelled families that may have no series yet: name, help, type.
const PEER_FAMILIES: [(&str, &str, &str); 3] = [
    ("sft_federation_links", LINKS_HELP, "gauge"),
    ("sft_federation_relay_bytes_total", RELAY_BYTES_HELP, "counter"),
    ("sft_federation_connections_total", CONNECTIONS_HELP, "counter"),
];

pub struct Metrics {
    registry: Registry,
    pub conferences: IntGauge,
    participants: IntGaugeVec,
    pub rtp_packets_forwarded: IntCounter,
    pub rtp_bytes_forwarded: IntCounter,
    pub join_duration: Histogram,
    sessions_rejected: IntCounterVec,
    sessions_ended: IntCounterVec,
    media_dropped: IntCounterVec,
    pub draining: IntGauge,
    federation_links: IntGaugeVec,
    federation_relay_bytes: IntCounterVec,
    federation_connections: IntCounterVec,
    federation_rejected: IntCounterVec,
    certificate_expiry: IntGauge,
    reloads: IntCounterVec,
    http_refused: IntCounterVec,
    stream_loss: HistogramVec,
    receiver_estimate: HistogramVec,
    workers: WorkerFamilies,
}

/// The series of one media worker (`worker` label), handed to it at start.
#[derive(Clone)]
pub struct WorkerMetrics {
    /// Clients connected to the worker.
    pub sessions: IntGauge,
    pub conferences: IntGauge,
    pub packets_forwarded: IntCounter,
    /// CPU time of the worker's thread.
    pub cpu_seconds: Counter,
}

#[derive(Clone)]
struct WorkerFamilies {
    sessions: IntGaugeVec,
    conferences: IntGaugeVec,
    packets_forwarded: IntCounterVec,
    cpu_seconds: CounterVec,
}

impl WorkerFamilies {
    fn new() -> Self {
        let opts = |name: &str, help: &str| Opts::new(name, help);
        Self {
            sessions: IntGaugeVec::new(opts("sft_worker_sessions", "Clients connected, by media worker"), &["worker"])
                .expect("valid metric"),
            conferences: IntGaugeVec::new(
                opts("sft_worker_conferences", "Conferences, by the media worker they live on"),
                &["worker"],
            )
            .expect("valid metric"),
            packets_forwarded: IntCounterVec::new(
                opts("sft_worker_packets_forwarded_total", "RTP packets sent into receive slots, by media worker"),
                &["worker"],
            )
            .expect("valid metric"),
            cpu_seconds: CounterVec::new(
                opts("sft_worker_cpu_seconds_total", "CPU time of each media worker's thread"),
                &["worker"],
            )
            .expect("valid metric"),
        }
    }

    fn register(&self, registry: &Registry) {
        for collector in [
            Box::new(self.sessions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(self.conferences.clone()),
            Box::new(self.packets_forwarded.clone()),
            Box::new(self.cpu_seconds.clone()),
        ] {
            registry.register(collector).expect("metric names are unique");
        }
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let conferences = IntGauge::new("sft_conferences", "Conferences with at least one participant on this SFT")
            .expect("valid metric");
        let participants =
            IntGaugeVec::new(Opts::new("sft_participants", "Participants in conferences on this SFT"), &["role"])
                .expect("valid metric");
        let rtp_packets_forwarded =
            IntCounter::new("sft_rtp_packets_forwarded_total", "RTP packets sent into receive slots")
                .expect("valid metric");
        let rtp_bytes_forwarded =
            IntCounter::new("sft_rtp_bytes_forwarded_total", "RTP payload bytes sent into receive slots")
                .expect("valid metric");
        let join_duration = Histogram::with_opts(
            HistogramOpts::new("sft_join_duration_seconds", "Time from SETUP received to answer sent")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
        )
        .expect("valid metric");
        let sessions_rejected = IntCounterVec::new(
            Opts::new("sft_sessions_rejected_total", "SETUP requests turned away, by error code"),
            &["reason"],
        )
        .expect("valid metric");
        let sessions_ended =
            IntCounterVec::new(Opts::new("sft_sessions_ended_total", "Sessions that ended, by cause"), &["cause"])
                .expect("valid metric");
        let media_dropped = IntCounterVec::new(
            Opts::new("sft_media_dropped_total", "Datagrams and messages dropped at the media edge, by reason"),
            &["reason"],
        )
        .expect("valid metric");
        let draining =
            IntGauge::new("sft_draining", "1 while the SFT drains and takes no new sessions").expect("valid metric");
        let federation_links =
            IntGaugeVec::new(Opts::new("sft_federation_links", LINKS_HELP), &["peer_domain", "state"])
                .expect("valid metric");
        let federation_relay_bytes = IntCounterVec::new(
            Opts::new("sft_federation_relay_bytes_total", RELAY_BYTES_HELP),
            &["peer_domain", "direction"],
        )
        .expect("valid metric");
        let federation_connections = IntCounterVec::new(
            Opts::new("sft_federation_connections_total", CONNECTIONS_HELP),
            &["peer_domain", "direction"],
        )
        .expect("valid metric");
        let federation_rejected = IntCounterVec::new(
            Opts::new("sft_federation_rejected_total", "Federation requests rejected, by reason"),
            &["reason"],
        )
        .expect("valid metric");
        let certificate_expiry = IntGauge::new(
            "sft_federation_certificate_expiry_timestamp_seconds",
            "When this SFT's federation certificate expires (Unix time); 0 if unknown",
        )
        .expect("valid metric");
        let reloads = IntCounterVec::new(
            Opts::new("sft_config_reloads_total", "Reloads of the federation credentials (SIGHUP, POST /admin/reload)"),
            &["result"],
        )
        .expect("valid metric");
        let http_refused = IntCounterVec::new(
            Opts::new(
                "sft_http_connections_refused_total",
                "HTTP connections closed at once because limits.max_http_connections were open, by listener",
            ),
            &["listener"],
        )
        .expect("valid metric");
        let stream_loss = HistogramVec::new(
            HistogramOpts::new(
                "sft_stream_loss_ratio",
                "Fraction of packets lost per stream and stats interval (RTCP): in = client to SFT, out = SFT to client",
            )
            .buckets(vec![0.001, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5]),
            &["direction"],
        )
        .expect("valid metric");
        let receiver_estimate = HistogramVec::new(
            HistogramOpts::new(
                "sft_receiver_estimate_bitrate",
                "Each client's downlink estimate (bits/s) that its layers are sized to, by source",
            )
            .buckets(vec![64e3, 128e3, 256e3, 512e3, 1e6, 2e6, 4e6, 8e6, 16e6]),
            &["source"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(conferences.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(participants.clone()),
            Box::new(rtp_packets_forwarded.clone()),
            Box::new(rtp_bytes_forwarded.clone()),
            Box::new(join_duration.clone()),
            Box::new(sessions_rejected.clone()),
            Box::new(sessions_ended.clone()),
            Box::new(media_dropped.clone()),
            Box::new(draining.clone()),
            Box::new(federation_links.clone()),
            Box::new(federation_relay_bytes.clone()),
            Box::new(federation_connections.clone()),
            Box::new(federation_rejected.clone()),
            Box::new(certificate_expiry.clone()),
            Box::new(reloads.clone()),
            Box::new(http_refused.clone()),
            Box::new(stream_loss.clone()),
            Box::new(receiver_estimate.clone()),
        ] {
            registry.register(collector).expect("metric names are unique");
        }
        let workers = WorkerFamilies::new();
        workers.register(&registry);
        // Make every labelled series visible at zero before its first event.
        for role in ["local", "remote"] {
            participants.with_label_values(&[role]).set(0);
        }
        for reason in RejectReason::ALL {
            sessions_rejected.with_label_values(&[reason.label()]);
        }
        for reason in DropReason::ALL {
            media_dropped.with_label_values(&[reason.label()]);
        }
        for reason in Rejection::ALL {
            federation_rejected.with_label_values(&[reason.label()]);
        }
        for result in ["success", "failure"] {
            reloads.with_label_values(&[result]);
        }
        for listener in LISTENERS {
            http_refused.with_label_values(&[listener]);
        }
        for direction in ["in", "out"] {
            stream_loss.with_label_values(&[direction]);
        }
        for source in EstimateSource::ALL {
            receiver_estimate.with_label_values(&[source.label()]);
        }
        Self {
            registry,
            conferences,
            participants,
            rtp_packets_forwarded,
            rtp_bytes_forwarded,
            join_duration,
            sessions_rejected,
            sessions_ended,
            media_dropped,
            draining,
            federation_links,
            federation_relay_bytes,
            federation_connections,
            federation_rejected,
            certificate_expiry,
            reloads,
            http_refused,
            stream_loss,
            receiver_estimate,
            workers,
        }
    }

    /// The series of media worker `index`, visible at zero from now on.
    pub fn worker(&self, index: usize) -> WorkerMetrics {
        let label = [index.to_string()];
        let label = [label[0].as_str()];
        WorkerMetrics {
            sessions: self.workers.sessions.with_label_values(&label),
            conferences: self.workers.conferences.with_label_values(&label),
            packets_forwarded: self.workers.packets_forwarded.with_label_values(&label),
            cpu_seconds: self.workers.cpu_seconds.with_label_values(&label),
        }
    }

    /// One stream's loss over a stats interval; `direction` is `in` (client
    /// to SFT, measured here) or `out` (SFT to client, as the client reports).
    pub fn stream_loss(&self, direction: &str, ratio: f32) {
        self.stream_loss.with_label_values(&[direction]).observe(f64::from(ratio.clamp(0.0, 1.0)));
    }

    pub fn local_participants(&self) -> IntGauge {
        self.participants.with_label_values(&["local"])
    }

    pub fn remote_participants(&self) -> IntGauge {
        self.participants.with_label_values(&["remote"])
    }

    pub fn federation_rejected(&self, reason: &str) {
        self.federation_rejected_many(reason, 1);
    }

    /// Counts `count` rejections at once (entries of one roster).
    pub fn federation_rejected_many(&self, reason: &str, count: usize) {
        self.federation_rejected.with_label_values(&[reason]).inc_by(count as u64);
    }

    /// Marks the link to `peer_domain` as `state` (`up`, `down`, `connecting`).
    pub fn link_state(&self, peer_domain: &str, state: &str) {
        for s in ["up", "down", "connecting"] {
            self.federation_links.with_label_values(&[peer_domain, s]).set(i64::from(s == state));
        }
    }

    /// Counts a relay connection with `peer_domain` that came up; `inbound`
    /// when the peer dialled.
    pub fn federation_connection(&self, peer_domain: &str, inbound: bool) {
        let direction = if inbound { "in" } else { "out" };
        self.federation_connections.with_label_values(&[peer_domain, direction]).inc();
    }

    /// When the federation certificate in use expires (Unix seconds).
    pub fn federation_certificate_expiry(&self, expires_at: Option<i64>) {
        self.certificate_expiry.set(expires_at.unwrap_or(0));
    }

    /// The counter of connections `listener` refused for being full.
    pub fn http_connections_refused(&self, listener: &str) -> IntCounter {
        self.http_refused.with_label_values(&[listener])
    }

    /// Counts a reload and whether it took.
    pub fn reloaded(&self, success: bool) {
        self.reloads.with_label_values(&[if success { "success" } else { "failure" }]).inc();
    }

    pub fn relay_bytes(&self, peer_domain: &str, direction: &str) -> IntCounter {
        self.federation_relay_bytes.with_label_values(&[peer_domain, direction])
    }

    pub fn rejected(&self, reason: RejectReason) {
        self.sessions_rejected.with_label_values(&[reason.label()]).inc();
    }

    pub fn ended(&self, cause: &str) {
        self.sessions_ended.with_label_values(&[cause]).inc();
    }

    pub fn receiver_estimate(&self, source: EstimateSource, bits_per_second: u64) {
        self.receiver_estimate.with_label_values(&[source.label()]).observe(bits_per_second as f64);
    }

    pub fn dropped(&self, reason: DropReason) {
        self.media_dropped.with_label_values(&[reason.label()]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding cannot fail");
        let mut text = String::from_utf8(buf).expect("the text format is UTF-8");
        // Families whose labels name a peer have no series before the first
        // link; announce them anyway so scrapers and alerts see the names.
        for (name, help, kind) in PEER_FAMILIES {
            if !text.contains(&format!("# TYPE {name} ")) {
                text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            }
        }
        // The standard process families, which the prometheus crate only
        // offers through a procfs dependency.
        if let Ok(usage) = crate::process::usage("self") {
            text.push_str(&format!(
                "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n\
                 # TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {}\n\
                 # HELP process_resident_memory_bytes Resident memory size in bytes.\n\
                 # TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}\n",
                usage.cpu_seconds, usage.rss_bytes
            ));
        }
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_metric_is_named_on_a_fresh_server() {
        let text = Metrics::new().render();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "sft_conferences",
            "sft_participants",
            "sft_rtp_packets_forwarded_total",
            "sft_rtp_bytes_forwarded_total",
            "sft_join_duration_seconds",
            "sft_federation_links",
            "sft_federation_relay_bytes_total",
            "sft_federation_rejected_total",
            "sft_sessions_rejected_total",
            "sft_stream_loss_ratio",
            "sft_receiver_estimate_bitrate",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing from:\n{text}");
        }
        assert!(text.contains("sft_participants{role=\"remote\"} 0"));
    }

    #[test]
    fn peer_families_are_announced_once_they_have_series_too() {
        let metrics = Metrics::new();
        metrics.link_state("b.example", "up");
        let text = metrics.render();
        assert_eq!(text.matches("# TYPE sft_federation_links ").count(), 1);
        assert!(text.contains("sft_federation_links{peer_domain=\"b.example\",state=\"up\"} 1"));
    }
}
