//! Configuration: one plain serde struct, read from the embedded default or
//! a TOML file, overridden by `SFT_<SECTION>__<KEY>` variables, and checked
//! once at start-up into [`Config`].

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::core::ids::canonical_domain;
use crate::core::relay_demand::RelayMode;
use crate::signalling::MAX_SESSID_CHARS;

/// The embedded default: `config/sft.toml` as shipped.
pub const DEFAULT_TOML: &str = include_str!("../config/sft.toml");

/// A configuration that cannot be used; printed as one line, exit code 2.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config: {0}")]
    Parse(String),
    #[error("invalid config key `{key}`: {why}")]
    Invalid { key: &'static str, why: String },
    /// A key whose value has the wrong type, or that no section knows;
    /// `origin` names the environment variable that set it, if one did.
    #[error("invalid config key `{key}`{origin}: {why}")]
    Key { key: String, origin: String, why: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    domain: String,
    drain_timeout: u64,
    drain_grace: u64,
    signalling: RawSignalling,
    media: RawMedia,
    limits: Limits,
    metrics: RawMetrics,
    federation: RawFederation,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignalling {
    listen: String,
    allow_origin: Vec<String>,
    auth_secret: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMedia {
    listen: String,
    public_ip: Option<String>,
    idle_timeout: f64,
    bandwidth_estimation: bool,
    max_receive_kbps: Option<u32>,
    workers: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: String,
    admin_token: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFederation {
    enabled: bool,
    listen: String,
    relay_listen: String,
    /// The relay address peers are told to dial; defaults to `relay_listen`.
    relay_public: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    strategy: String,
    allow: Vec<String>,
    peers: BTreeMap<String, String>,
    dns: Option<String>,
    dns_timeout: f64,
    via_federator: Option<String>,
    relay_secret: Option<String>,
    link_timeout: f64,
    link_linger: f64,
    relay: String,
    max_conferences_per_link: usize,
    max_control_rate: u32,
}

/// Which peer domains this SFT federates with, inbound and outbound alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    AllowNone,
    AllowList(Vec<String>),
    AllowAll,
}

impl Strategy {
    pub fn allows(&self, domain: &str) -> bool {
        match self {
            Self::AllowNone => false,
            Self::AllowList(list) => list.iter().any(|d| d.eq_ignore_ascii_case(domain)),
            Self::AllowAll => true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct FederationConfig {
    pub listen: SocketAddr,
    pub relay_listen: SocketAddr,
    pub relay_public: Option<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `None`: the system's roots.
    pub ca: Option<PathBuf>,
    pub strategy: Strategy,
    /// Static `domain -> host:port` of control planes; wins over DNS.
    pub peers: BTreeMap<String, String>,
    pub dns: Option<SocketAddr>,
    /// How long one DNS look-up (the SRV record, then each target) may take.
    pub dns_timeout: Duration,
    pub via_federator: Option<String>,
    /// Keys relay tokens instead of the private key, so that every replica
    /// of the domain (whatever its key) accepts the others' tokens.
    pub relay_secret: Option<String>,
    /// How long a peer's participants stay after its relay link dropped.
    pub link_timeout: Duration,
    /// How long a relay link to an anchor stays once no conference uses it.
    pub link_linger: Duration,
    /// Whether relay links bring every stream or what this SFT's clients use.
    pub relay: RelayMode,
    /// Conferences one peer's relay link may attach here.
    pub max_conferences_per_link: usize,
    /// Control messages a second this SFT reads from one relay link.
    pub max_control_rate: u32,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_participants: usize,
    pub max_conference_size: usize,
    /// Open connections per HTTP listener.
    pub max_http_connections: usize,
    /// Seconds a request's headers (or an idle keep-alive) may take.
    pub http_header_timeout: u64,
    /// SETUP and DELETE requests a second from one source address (IPv6: its /64).
    pub signalling_rate: u32,
    /// Requests a source may make at once before `signalling_rate` applies.
    pub signalling_burst: u32,
    /// Sessions set up but not connected yet (ICE and DTLS), in all.
    pub max_pending_sessions: usize,
    /// Sessions set up but not connected yet, from one source address.
    pub max_pending_sessions_per_source: usize,
    /// Sessions one bearer token may hold at once (with `signalling.auth_secret`).
    pub max_sessions_per_token: usize,
    /// Data channel messages a second one client may send (after a burst
    /// of twice that); more are dropped and counted.
    pub client_messages_per_second: u32,
    /// The shortest `sessid` a SETUP may name. Without
    /// `signalling.auth_secret` the `sessid` is what lets a caller end a
    /// session, so a deployment whose clients choose long random ones
    /// raises this to 16.
    pub min_sessid_chars: usize,
    /// Spare loopback callers the per-source limits (a reverse proxy on
    /// this host speaks for every client).
    pub exempt_loopback: bool,
}

/// The most media workers a process runs.
const MAX_WORKERS: usize = 256;

/// One media worker per core the process may use (its CPU affinity and
/// cgroup quota count), at least one.
fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from).min(MAX_WORKERS)
}

/// The checked configuration the server runs on.
#[derive(Debug, Clone)]
pub struct Config {
    pub domain: String,
    pub drain_timeout: Duration,
    /// The least a drain lasts, calls or not.
    pub drain_grace: Duration,
    pub signalling: SignallingConfig,
    pub media: MediaConfig,
    pub limits: Limits,
    pub metrics_listen: SocketAddr,
    /// With it, `/admin/*` needs `Authorization: Bearer <token>` from
    /// anywhere; without it, `/admin/*` answers only loopback callers.
    pub admin_token: Option<String>,
    /// `None` while federation is off.
    pub federation: Option<FederationConfig>,
    /// Where this configuration came from, to read it again on reload.
    source: Source,
    /// What was accepted but looks like a mistake, one line each (for
    /// warnings once logging is up).
    warnings: Vec<String>,
}

/// The file and the `SFT_*` environment variables a configuration was read from.
#[derive(Debug, Clone, Default)]
struct Source {
    file: Option<PathBuf>,
    env: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct SignallingConfig {
    pub listen: SocketAddr,
    /// `None` allows any origin.
    pub allow_origin: Option<Vec<String>>,
    pub auth_secret: Option<String>,
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct MediaConfig {
    pub listen: SocketAddr,
    /// The address put in the host candidate.
    pub public_addr: SocketAddr,
    pub idle_timeout: Duration,
    /// Estimate each client's downlink from its transport-cc feedback.
    pub bandwidth_estimation: bool,
    /// A ceiling (bits/s) on every client's estimate, and the estimate of
    /// clients that give none.
    pub max_receive_bps: Option<u32>,
    /// Media worker threads, each with its own UDP socket: worker `i`
    /// listens on `listen`'s port + `i` (every worker on an ephemeral port
    /// when that is 0).
    pub workers: usize,
}

impl Config {
    /// Loads the file (or the embedded default), applies the environment
    /// overrides from `env`, and checks the result.
    pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let mut table: toml::Table =
            DEFAULT_TOML.parse().map_err(|e| ConfigError::Parse(format!("embedded default: {e}")))?;
        if let Some(path) = file {
            let text =
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
            let overlay: toml::Table = text.parse().map_err(|e: toml::de::Error| {
                let (line, column) = e.span().map_or((1, 1), |span| line_and_column(&text, span.start));
                let why = e.message().trim().replace('\n', "; ");
                ConfigError::Parse(format!("{}:{line}:{column}: {why}", path.display()))
            })?;
            merge(&mut table, overlay);
        }
        let (env, ignored) = config_variables(env);
        for (name, value) in &env {
            apply_env(&mut table, name, value);
        }
        // Read back from text, so an error has a position to name its key by.
        let text = toml::to_string(&table).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let raw: RawConfig = toml::from_str(&text).map_err(|e: toml::de::Error| {
            let why = e.message().trim().replace('\n', "; ");
            let Some(key) = e.span().and_then(|span| key_at(&text, span.start)) else {
                return ConfigError::Parse(why);
            };
            let origin = env
                .iter()
                .find(|(name, _)| variable_key(name) == key)
                .map_or(String::new(), |(name, _)| format!(" (from {name})"));
            ConfigError::Key { key, origin, why }
        })?;
        let mut config = raw.check()?;
        config.source = Source { file: file.map(Path::to_owned), env };
        config.warnings.extend(ignored.into_iter().map(|why| format!("ignoring environment variable {why}")));
        Ok(config)
    }

    /// What was accepted but looks like a mistake (an ignored `SFT_*`
    /// variable, an allow list that the strategy ignores), one line each.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The same file and environment read again: what a reload applies.
    pub fn reread(&self) -> Result<Self, ConfigError> {
        Self::load(self.source.file.as_deref(), self.source.env.clone())
    }

    /// `--public-ip` from the command line wins over the files.
    pub fn set_public_ip(&mut self, ip: IpAddr) {
        self.media.public_addr = SocketAddr::new(ip, self.media.listen.port());
    }
}

/// Merges `overlay` into `base`, table by table.
fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base_table)), toml::Value::Table(overlay_table)) => {
                merge(base_table, overlay_table)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Top-level keys, the only ones set by a variable without `__`.
const TOP_LEVEL_KEYS: [&str; 3] = ["domain", "drain_timeout", "drain_grace"];

/// The configuration variables among `env`: `SFT_<SECTION>__<KEY>` (any
/// depth) and `SFT_<TOP_LEVEL_KEY>`. Other `SFT_*` variables (Kubernetes
/// puts `<SERVICE>_SERVICE_HOST` for every service into every pod) are
/// ignored; the second list says which, and why when one looks like a typo.
fn config_variables(env: impl IntoIterator<Item = (String, String)>) -> (Vec<(String, String)>, Vec<String>) {
    let mut ignored = Vec::new();
    let taken = env
        .into_iter()
        .filter(|(name, _)| {
            let Some(rest) = name.strip_prefix("SFT_") else { return false };
            let shaped = rest.contains("__") || TOP_LEVEL_KEYS.contains(&rest.to_lowercase().as_str());
            if !shaped {
                let section = SECTIONS.iter().find(|s| rest.to_lowercase().starts_with(&format!("{s}_")));
                ignored.push(match section {
                    Some(section) => format!(
                        "{name} is not configuration (did you mean SFT_{}__{}?)",
                        section.to_uppercase(),
                        &rest[section.len() + 1..]
                    ),
                    None => format!("{name} is not configuration"),
                });
            }
            shaped
        })
        .collect();
    (taken, ignored)
}

/// The sections of the configuration.
const SECTIONS: [&str; 5] = ["signalling", "media", "limits", "metrics", "federation"];

/// The `section.key` a configuration variable sets.
fn variable_key(name: &str) -> String {
    name.trim_start_matches("SFT_").split("__").map(str::to_lowercase).collect::<Vec<_>>().join(".")
}

/// 1-based line and column of byte `at` in `text`.
fn line_and_column(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (before.matches('\n').count() + 1, before[line_start..].chars().count() + 1)
}

/// The `section.key` whose line holds byte `at` of serialized TOML `text`.
fn key_at(text: &str, at: usize) -> Option<String> {
    let before = &text[..at.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    let section = before[..line_start].lines().rev().find_map(|l| l.trim().strip_prefix('[')?.strip_suffix(']'));
    Some(section.map_or_else(|| key.to_owned(), |section| format!("{section}.{key}")))
}

/// `SFT_MEDIA__PUBLIC_IP=1.2.3.4` sets `media.public_ip`; `SFT_DOMAIN=x`
/// sets `domain`. The value is read as TOML when it parses as one (numbers,
/// booleans, arrays), else taken as a string.
fn apply_env(table: &mut toml::Table, name: &str, value: &str) {
    let Some(path) = name.strip_prefix("SFT_") else {
        return;
    };
    let value = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    let parts: Vec<String> = path.split("__").map(str::to_lowercase).collect();
    let (key, sections) = parts.split_last().expect("split yields at least one part");
    let mut target = table;
    for section in sections {
        let entry = target.entry(section.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(inner) = entry else {
            return;
        };
        target = inner;
    }
    target.insert(key.clone(), value);
}

fn socket_addr(key: &'static str, raw: &str) -> Result<SocketAddr, ConfigError> {
    raw.parse().map_err(|_| ConfigError::Invalid { key, why: format!("{raw:?} is not an address like 127.0.0.1:8585") })
}

impl RawConfig {
    fn check(self) -> Result<Config, ConfigError> {
        if self.domain.is_empty() || self.domain.contains(|c: char| c.is_whitespace() || c == '/') {
            return Err(ConfigError::Invalid { key: "domain", why: format!("{:?} is not a domain name", self.domain) });
        }
        if self.drain_grace > 3600 {
            return Err(ConfigError::Invalid { key: "drain_grace", why: "must be at most 3600 seconds".into() });
        }
        let media_listen = socket_addr("media.listen", &self.media.listen)?;
        let public_addr = match &self.media.public_ip {
            Some(ip) => {
                let ip: IpAddr = ip.parse().map_err(|_| ConfigError::Invalid {
                    key: "media.public_ip",
                    why: format!("{ip:?} is not an IP address"),
                })?;
                SocketAddr::new(ip, media_listen.port())
            }
            None if media_listen.ip().is_unspecified() => {
                return Err(ConfigError::Invalid {
                    key: "media.public_ip",
                    why: format!("required when media.listen is the wildcard address {media_listen}"),
                })
            }
            None => media_listen,
        };
        if media_listen.port() == 0 && self.media.public_ip.is_some() {
            return Err(ConfigError::Invalid {
                key: "media.listen",
                why: "port 0 cannot be combined with media.public_ip".into(),
            });
        }
        let workers = self.media.workers.unwrap_or_else(available_cores);
        if !(1..=MAX_WORKERS).contains(&workers) {
            return Err(ConfigError::Invalid {
                key: "media.workers",
                why: format!("must be between 1 and {MAX_WORKERS}"),
            });
        }
        if media_listen.port() != 0 && usize::from(media_listen.port()) + workers - 1 > usize::from(u16::MAX) {
            return Err(ConfigError::Invalid {
                key: "media.workers",
                why: format!("{workers} workers need the ports {} and up, past 65535", media_listen.port()),
            });
        }
        if !(self.media.idle_timeout.is_finite() && self.media.idle_timeout > 0.0 && self.media.idle_timeout <= 3600.0)
        {
            return Err(ConfigError::Invalid {
                key: "media.idle_timeout",
                why: "must be more than 0 and at most 3600 seconds".into(),
            });
        }
        if self.media.max_receive_kbps.is_some_and(|kbps| !(32..=1_000_000).contains(&kbps)) {
            return Err(ConfigError::Invalid {
                key: "media.max_receive_kbps",
                why: "must be between 32 and 1000000 (leave it out for no ceiling)".into(),
            });
        }
        let allow_origin = if self.signalling.allow_origin.iter().any(|o| o == "*") {
            None
        } else {
            Some(self.signalling.allow_origin)
        };
        if self.signalling.auth_secret.as_deref() == Some("") {
            return Err(ConfigError::Invalid {
                key: "signalling.auth_secret",
                why: "must not be empty (leave it out to turn auth off)".into(),
            });
        }
        let tls = match (self.signalling.tls_cert, self.signalling.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::Invalid {
                    key: "signalling.tls_key",
                    why: "needed with signalling.tls_cert".into(),
                })
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    key: "signalling.tls_cert",
                    why: "needed with signalling.tls_key".into(),
                })
            }
        };
        let limits = &self.limits;
        let counts = [
            limits.max_participants,
            limits.max_conference_size,
            limits.max_http_connections,
            limits.max_pending_sessions,
            limits.max_pending_sessions_per_source,
            limits.max_sessions_per_token,
        ];
        if counts.contains(&0)
            || [limits.signalling_rate, limits.signalling_burst, limits.client_messages_per_second].contains(&0)
        {
            return Err(ConfigError::Invalid { key: "limits", why: "limits must be at least 1".into() });
        }
        if !(1..=MAX_SESSID_CHARS).contains(&limits.min_sessid_chars) {
            return Err(ConfigError::Invalid {
                key: "limits.min_sessid_chars",
                why: format!("must be between 1 and {MAX_SESSID_CHARS} (the contract's longest sessid)"),
            });
        }
        if !(1..=3600).contains(&limits.http_header_timeout) {
            return Err(ConfigError::Invalid {
                key: "limits.http_header_timeout",
                why: "must be between 1 and 3600 seconds".into(),
            });
        }
        let mut warnings = Vec::new();
        if self.federation.enabled && self.federation.strategy != "allowList" && !self.federation.allow.is_empty() {
            warnings.push(format!(
                "federation.allow is ignored under strategy = {:?}; use strategy = \"allowList\"",
                self.federation.strategy
            ));
        }
        let federation = self.federation.check()?;
        Ok(Config {
            domain: canonical_domain(&self.domain),
            drain_timeout: Duration::from_secs(self.drain_timeout),
            drain_grace: Duration::from_secs(self.drain_grace),
            signalling: SignallingConfig {
                listen: socket_addr("signalling.listen", &self.signalling.listen)?,
                allow_origin,
                auth_secret: self.signalling.auth_secret,
                tls,
            },
            media: MediaConfig {
                listen: media_listen,
                public_addr,
                idle_timeout: Duration::from_secs_f64(self.media.idle_timeout),
                bandwidth_estimation: self.media.bandwidth_estimation,
                max_receive_bps: self.media.max_receive_kbps.map(|kbps| kbps * 1000),
                workers,
            },
            limits: self.limits,
            metrics_listen: socket_addr("metrics.listen", &self.metrics.listen)?,
            admin_token: self.metrics.admin_token.filter(|token| !token.is_empty()),
            federation,
            source: Source::default(),
            warnings,
        })
    }
}

impl RawFederation {
    fn check(self) -> Result<Option<FederationConfig>, ConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        let required = |key: &'static str, value: Option<PathBuf>| {
            value.ok_or(ConfigError::Invalid { key, why: "required when federation.enabled = true".into() })
        };
        let strategy = match self.strategy.as_str() {
            "allowNone" => Strategy::AllowNone,
            "allowAll" => Strategy::AllowAll,
            "allowList" => Strategy::AllowList(self.allow.iter().map(|domain| canonical_domain(domain)).collect()),
            other => {
                return Err(ConfigError::Invalid {
                    key: "federation.strategy",
                    why: format!("{other:?} is not one of allowNone, allowList, allowAll"),
                })
            }
        };
        for (domain, addr) in &self.peers {
            if !addr.contains(':') {
                return Err(ConfigError::Invalid {
                    key: "federation.peers",
                    why: format!("{domain} = {addr:?} is not host:port"),
                });
            }
        }
        let dns = match &self.dns {
            Some(raw) => Some(socket_addr("federation.dns", raw)?),
            None => None,
        };
        if !(self.dns_timeout.is_finite() && self.dns_timeout > 0.0 && self.dns_timeout <= 60.0) {
            return Err(ConfigError::Invalid {
                key: "federation.dns_timeout",
                why: "must be more than 0 and at most 60 seconds".into(),
            });
        }
        if let Some(url) = &self.via_federator {
            if !url.starts_with("http://") && !url.starts_with("https://") {
                return Err(ConfigError::Invalid {
                    key: "federation.via_federator",
                    why: format!("{url:?} is not an http(s) URL"),
                });
            }
        }
        if self.relay_secret.as_ref().is_some_and(|secret| secret.len() < 32) {
            return Err(ConfigError::Invalid {
                key: "federation.relay_secret",
                why: "must be at least 32 characters (e.g. `openssl rand -hex 32`)".into(),
            });
        }
        if !(self.link_timeout.is_finite() && self.link_timeout > 0.0 && self.link_timeout <= 3600.0) {
            return Err(ConfigError::Invalid {
                key: "federation.link_timeout",
                why: "must be more than 0 and at most 3600 seconds".into(),
            });
        }
        if !(self.link_linger.is_finite() && self.link_linger > 0.0 && self.link_linger <= 86_400.0) {
            return Err(ConfigError::Invalid {
                key: "federation.link_linger",
                why: "must be more than 0 and at most 86400 seconds".into(),
            });
        }
        if self.max_conferences_per_link == 0 {
            return Err(ConfigError::Invalid {
                key: "federation.max_conferences_per_link",
                why: "must be at least 1".into(),
            });
        }
        if !(10..=100_000).contains(&self.max_control_rate) {
            return Err(ConfigError::Invalid {
                key: "federation.max_control_rate",
                why: "must be between 10 and 100000 messages a second".into(),
            });
        }
        let relay_listen = socket_addr("federation.relay_listen", &self.relay_listen)?;
        if relay_listen.ip().is_unspecified() && self.relay_public.is_none() {
            // `join` answers would send peers to the wildcard address.
            return Err(ConfigError::Invalid {
                key: "federation.relay_public",
                why: format!("required when federation.relay_listen is the wildcard address {relay_listen}"),
            });
        }
        let relay = match self.relay.as_str() {
            "all" => RelayMode::All,
            "demand" => RelayMode::Demand,
            other => {
                return Err(ConfigError::Invalid {
                    key: "federation.relay",
                    why: format!("{other:?} is not one of all, demand"),
                })
            }
        };
        Ok(Some(FederationConfig {
            listen: socket_addr("federation.listen", &self.listen)?,
            relay_listen,
            relay_public: self.relay_public,
            cert: required("federation.cert", self.cert)?,
            key: required("federation.key", self.key)?,
            ca: self.ca,
            strategy,
            peers: self.peers.into_iter().map(|(domain, addr)| (canonical_domain(&domain), addr)).collect(),
            dns,
            dns_timeout: Duration::from_secs_f64(self.dns_timeout),
            via_federator: self.via_federator.map(|u| u.trim_end_matches('/').to_owned()),
            relay_secret: self.relay_secret,
            link_timeout: Duration::from_secs_f64(self.link_timeout),
            link_linger: Duration::from_secs_f64(self.link_linger),
            relay,
            max_conferences_per_link: self.max_conferences_per_link,
            max_control_rate: self.max_control_rate,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("sft-config-test-{}", rand::random::<u64>()));
        std::fs::write(&dir, toml).unwrap();
        let result = Config::load(Some(&dir), env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        std::fs::remove_file(&dir).unwrap();
        result
    }

    #[test]
    fn embedded_default_runs_on_localhost() {
        let config = Config::load(None, []).unwrap();
        assert_eq!(config.signalling.listen.port(), 8585);
        assert_eq!(config.media.listen.port(), 20000);
        assert_eq!(config.metrics_listen.port(), 49090);
        assert_eq!(config.media.idle_timeout, Duration::from_secs(10));
        assert_eq!(config.drain_timeout, Duration::from_secs(3600));
        assert!(config.signalling.allow_origin.is_none());
        assert!(config.media.listen.ip().is_loopback());
    }

    #[test]
    fn file_and_env_override_defaults() {
        let config = load_str(
            "domain = \"a.example\"\n[media]\nlisten = \"0.0.0.0:30000\"\n",
            &[("SFT_MEDIA__PUBLIC_IP", "203.0.113.7"), ("SFT_MEDIA__IDLE_TIMEOUT", "2.5"), ("OTHER", "x")],
        )
        .unwrap();
        assert_eq!(config.domain, "a.example");
        assert_eq!(config.media.public_addr, "203.0.113.7:30000".parse::<SocketAddr>().unwrap());
        assert_eq!(config.media.idle_timeout, Duration::from_millis(2500));
    }

    #[test]
    fn bad_config_names_the_key() {
        let cases = [
            ("[media]\nlisten = \"nope\"\n", "media.listen"),
            ("[media]\nlisten = \"0.0.0.0:1\"\n", "media.public_ip"),
            ("[media]\nidle_timeout = -1\n", "media.idle_timeout"),
            ("[signalling]\ntls_cert = \"x\"\n", "signalling.tls_key"),
            ("[media]\nbogus = 1\n", "media.bogus"),
            ("[limits]\nmax_participants = \"lots\"\n", "limits.max_participants"),
            ("[media]\nidle_timeout = 0\n", "more than 0"),
            ("[limits]\nmax_participants = 1\n[limits\n", ":3:8: invalid table header"),
            ("domain = \"a b\"\n", "domain"),
        ];
        for (toml, key) in cases {
            let err = load_str(toml, &[]).unwrap_err().to_string();
            assert!(err.contains(key), "{toml:?} gave {err:?}");
            assert!(!err.contains('\n'), "one line: {err:?}");
        }
    }

    #[test]
    fn federation_settings() {
        let config = load_str(
            "[federation]\nenabled = true\ncert = \"c.pem\"\nkey = \"k.pem\"\nstrategy = \"allowList\"\nallow = [\"b.example\"]\n\
             peers = { \"b.example\" = \"127.0.0.2:8443\" }\n",
            &[],
        )
        .unwrap();
        let federation = config.federation.unwrap();
        assert!(federation.strategy.allows("B.example") && !federation.strategy.allows("c.example"));
        assert_eq!(federation.peers["b.example"], "127.0.0.2:8443");
        assert!(Config::load(None, []).unwrap().federation.is_none());
        for (toml, key) in [
            ("[federation]\nenabled = true\n", "federation.cert"),
            (
                "[federation]\nenabled = true\ncert = \"c\"\nkey = \"k\"\nstrategy = \"allowSome\"\n",
                "federation.strategy",
            ),
            ("[federation]\nenabled = true\ncert = \"c\"\nkey = \"k\"\ndns = \"x\"\n", "federation.dns"),
            (
                "[federation]\nenabled = true\ncert = \"c\"\nkey = \"k\"\nrelay_listen = \"0.0.0.0:8443\"\n",
                "federation.relay_public",
            ),
        ] {
            let err = load_str(toml, &[]).unwrap_err().to_string();
            assert!(err.contains(key), "{toml:?} gave {err:?}");
        }
        assert!(!Strategy::AllowNone.allows("a") && Strategy::AllowAll.allows("a"));
        let ignored_list = "[federation]\nenabled = true\ncert = \"c\"\nkey = \"k\"\nstrategy = \"allowNone\"\nallow = [\"b.example\"]\n";
        let warnings = load_str(ignored_list, &[]).unwrap().warnings().to_vec();
        assert!(warnings.len() == 1 && warnings[0].contains("federation.allow is ignored"), "{warnings:?}");
    }

    #[test]
    fn a_bad_variable_is_named_and_other_sft_variables_are_ignored() {
        let err = load_str("", &[("SFT_MEDIA__IDLE_TIMEOUT", "soon")]).unwrap_err().to_string();
        assert!(err.contains("media.idle_timeout") && err.contains("SFT_MEDIA__IDLE_TIMEOUT"), "{err}");
        // Kubernetes service links and near misses: ignored, the near miss explained.
        let env = [("SFT_SFT_MEDIA_SERVICE_HOST", "10.0.0.1"), ("SFT_MEDIA_LISTEN", "x"), ("SFT_DOMAIN", "b.example")];
        let config = load_str("", &env).unwrap();
        assert_eq!(config.domain, "b.example");
        let ignored = config.warnings();
        assert_eq!(ignored.len(), 2, "{ignored:?}");
        assert!(ignored[1].contains("did you mean SFT_MEDIA__LISTEN"), "{ignored:?}");
        // A misspelt key in a config-shaped variable is still an error.
        let err = load_str("", &[("SFT_MEDIA__LISTN", "\"127.0.0.1:1\"")]).unwrap_err().to_string();
        assert!(err.contains("media.listn") && err.contains("SFT_MEDIA__LISTN"), "{err}");
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = Config::load(Some(Path::new("/nonexistent/sft.toml")), []).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/sft.toml"));
    }
}
