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
}

/// Where to reach a domain's control plane: the host name to verify its
/// certificate against is always the domain itself.
pub struct Discovery {
    peers: BTreeMap<String, String>,
    resolver: Result<TokioResolver, String>,
    cache: Mutex<HashMap<String, (Vec<SocketAddr>, Instant)>>,
}

impl Discovery {
    pub fn new(peers: BTreeMap<String, String>, dns: Option<SocketAddr>) -> Self {
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
        Self { peers, resolver, cache: Mutex::new(HashMap::new()) }
    }

    /// The addresses of `domain`'s control plane, best first.
    pub async fn control_plane(&self, domain: &str) -> Result<Vec<SocketAddr>, DiscoveryError> {
        if let Some(static_addr) = self.peers.get(domain) {
            return resolve_host_port(static_addr).await;
        }
        if let Some((addrs, until)) = self.cache.lock().expect("cache lock").get(domain) {
            if Instant::now() < *until {
                return Ok(addrs.clone());
            }
        }
        let resolver = self.resolver.as_ref().map_err(|e| DiscoveryError::Resolver(e.clone()))?;
        let name = format!("_sft-federation._tcp.{domain}.");
        let lookup = resolver
            .srv_lookup(name.as_str())
            .await
            .map_err(|e| DiscoveryError::NoRecord { domain: domain.to_owned(), why: e.to_string() })?;
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
        for (_, _, target, port) in records {
            let ips = resolver
                .lookup_ip(target.as_str())
                .await
                .map_err(|e| DiscoveryError::Host { host: target.clone(), why: e.to_string() })?;
            addrs.extend(ips.iter().map(|ip| SocketAddr::new(ip, port)));
        }
        if addrs.is_empty() {
            return Err(DiscoveryError::NoRecord {
                domain: domain.to_owned(),
                why: "the SRV targets have no address".into(),
            });
        }
        self.cache.lock().expect("cache lock").insert(domain.to_owned(), (addrs.clone(), Instant::now() + valid_for));
        Ok(addrs)
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
