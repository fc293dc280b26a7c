//! Finding a peer domain's control plane: `federation.peers` first, else DNS
//! SRV `_sft-federation._tcp.<domain>`, cached for the records' TTL.

#![allow(clippy::disallowed_methods)] // the cache reads the clock for TTLs

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use thiserror::Error;

/// Never trust a record for longer than this, whatever its TTL.
const MAX_CACHE: Duration = Duration::from_secs(300);

#[derive(Debug, Error)]
pub enum DiscoveryError {
    #[error("no DNS resolver: {0}")]
    Resolver(String),
    #[error("no _sft-federation._tcp SRV record for {domain}: {why}")]
    NoRecord { domain: String, why: String },
    #[error("cannot resolve {host}: {why}")]
    Host { host: String, why: String },
    #[error("DNS look-up of {name} got no answer within {after:?}")]
    Timeout { name: String, after: Duration },
}

/// Where to reach a domain's control plane: the host name to verify its
/// certificate against is always the domain itself.
pub struct Discovery {
    peers: BTreeMap<String, String>,
    resolver: Result<TokioResolver, String>,
    /// How long one look-up may take.
    timeout: Duration,
    cache: Mutex<HashMap<String, (Vec<SocketAddr>, Instant)>>,
}

impl Discovery {
    pub fn new(peers: BTreeMap<String, String>, dns: Option<SocketAddr>, timeout: Duration) -> Self {
        let resolver = match dns {
            Some(addr) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                let server = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
                let config = ResolverConfig::from_name_servers(vec![server]);
                Ok(TokioResolver::builder_with_config(config, TokioRuntimeProvider::default()).build())
            }
            None => TokioResolver::builder_tokio().map(|b| b.build()).map_err(|e| e.to_string()),
        };
        let resolver = resolver.and_then(|r| r.map_err(|e| e.to_string()));
        Self { peers, resolver, timeout, cache: Mutex::new(HashMap::new()) }
    }

    /// The addresses of `domain`'s control plane, best first.
    pub async fn control_plane(&self, domain: &str) -> Result<Vec<SocketAddr>, DiscoveryError> {
        if let Some(static_addr) = self.peers.get(domain) {
            return self.bounded(static_addr, resolve_host_port(static_addr)).await;
        }
        if let Some((addrs, until)) = self.cache.lock().expect("cache lock").get(domain) {
            if Instant::now() < *until {
                return Ok(addrs.clone());
            }
        }
        let resolver = self.resolver.as_ref().map_err(|e| DiscoveryError::Resolver(e.clone()))?;
        let name = format!("_sft-federation._tcp.{domain}.");
        let lookup = self
            .bounded(&name, async {
                resolver
                    .srv_lookup(name.as_str())
                    .await
                    .map_err(|e| DiscoveryError::NoRecord { domain: domain.to_owned(), why: e.to_string() })
            })
            .await?;
        let valid_for = lookup.valid_until().saturating_duration_since(Instant::now()).min(MAX_CACHE);
        let mut records: Vec<_> = lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::SRV(srv) => Some((srv.priority, std::cmp::Reverse(srv.weight), srv.target.to_utf8(), srv.port)),
                _ => None,
            })
            .collect();
        records.sort();
        let mut addrs = Vec::new();
        let mut last_error = None;
        for (_, _, target, port) in records {
            // A target that does not resolve is skipped: the others may.
            let ips = self
                .bounded(&target, async {
                    resolver
                        .lookup_ip(target.as_str())
                        .await
                        .map_err(|e| DiscoveryError::Host { host: target.clone(), why: e.to_string() })
                })
                .await;
            match ips {
                Ok(ips) => addrs.extend(ips.iter().map(|ip| SocketAddr::new(ip, port))),
                Err(error) => {
                    tracing::debug!(%domain, "SRV target skipped: {error}");
                    last_error = Some(error);
                }
            }
        }
        if addrs.is_empty() {
            return Err(last_error.unwrap_or_else(|| DiscoveryError::NoRecord {
                domain: domain.to_owned(),
                why: "the SRV targets have no address".into(),
            }));
        }
        self.cache.lock().expect("cache lock").insert(domain.to_owned(), (addrs.clone(), Instant::now() + valid_for));
        Ok(addrs)
    }
}

impl Discovery {
    /// `lookup` of `name`, or a timeout error once `self.timeout` passed.
    async fn bounded<T>(
        &self,
        name: &str,
        lookup: impl std::future::Future<Output = Result<T, DiscoveryError>>,
    ) -> Result<T, DiscoveryError> {
        tokio::time::timeout(self.timeout, lookup)
            .await
            .unwrap_or_else(|_| Err(DiscoveryError::Timeout { name: name.to_owned(), after: self.timeout }))
    }
}

async fn resolve_host_port(host_port: &str) -> Result<Vec<SocketAddr>, DiscoveryError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(host_port)
        .await
        .map_err(|e| DiscoveryError::Host { host: host_port.to_owned(), why: e.to_string() })?
        .collect();
    if addrs.is_empty() {
        return Err(DiscoveryError::Host { host: host_port.to_owned(), why: "no address".into() });
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resolver that never answers fails the look-up within the timeout,
    /// naming what was looked up (a SETUP then gets 502 at once).
    #[tokio::test]
    async fn a_silent_resolver_times_out_and_the_error_names_the_lookup() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let timeout = Duration::from_millis(300);
        let discovery = Discovery::new(BTreeMap::new(), Some(silent.local_addr().unwrap()), timeout);
        let started = Instant::now();
        let error = discovery.control_plane("b.example").await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        assert!(matches!(error, DiscoveryError::Timeout { .. }), "{error}");
        assert!(error.to_string().contains("_sft-federation._tcp.b.example."), "{error}");
    }
}
