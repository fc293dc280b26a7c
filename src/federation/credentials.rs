//! What this SFT presents and whom it trusts in federation, replaceable
//! while it runs: a reload (SIGHUP or `POST /admin/reload`) reads the
//! certificate, key, CAs and allow list again, new connections use them,
//! and live links carry on.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;

use super::control::Tokens;
use super::trust::Trust;
use crate::config::FederationConfig;
use crate::tls::TlsError;

/// ALPN of the control plane's server side, and of its client side.
const CONTROL_SERVER_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];
const CONTROL_CLIENT_ALPN: [&[u8]; 1] = [b"http/1.1"];
/// A certificate closer than this to its expiry is warned about.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

pub struct Credentials {
    pub trust: Trust,
    tokens: Tokens,
    /// The tokens of the key before the last reload: conferences attached
    /// under it can still re-attach after an outage.
    previous_tokens: Option<Tokens>,
    pub control_server: Arc<rustls::ServerConfig>,
    pub control_client: rustls::ClientConfig,
    /// When this SFT's certificate expires, in seconds since the Unix epoch.
    pub expires_at: Option<i64>,
}

impl Credentials {
    /// Reads `config`'s files; `previous` is what they replace.
    pub fn load(domain: &str, config: &FederationConfig, previous: Option<&Credentials>) -> Result<Self, TlsError> {
        let trust = Trust::load(domain, config)?;
        if let Some(certificate) = trust.certificate() {
            let names = dns_names(certificate);
            if !names.iter().any(|name| name_matches(name, domain)) {
                return Err(TlsError::NotForDomain { domain: domain.to_owned(), names });
            }
        }
        let tokens = match &config.relay_secret {
            Some(secret) => Tokens::derived_from(secret.as_bytes()),
            None => trust.relay_tokens(),
        };
        let previous_tokens = previous.map(|p| p.tokens.clone()).filter(|old| *old != tokens);
        Ok(Self {
            control_server: Arc::new(trust.server_config(&CONTROL_SERVER_ALPN)?),
            control_client: trust.client_config(&CONTROL_CLIENT_ALPN)?,
            expires_at: trust.certificate().and_then(expiry),
            tokens,
            previous_tokens,
            trust,
        })
    }

    /// Warns when the certificate expires within [`EXPIRY_WARNING`]: at
    /// start and on every reload, next to the alert on the expiry gauge.
    #[allow(clippy::disallowed_methods)] // compared with the wall clock
    pub fn warn_if_expiring(&self) {
        let Some(expires_at) = self.expires_at else { return };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let left = expires_at.saturating_sub(i64::try_from(now).unwrap_or(i64::MAX));
        if left <= 0 {
            tracing::warn!("the federation certificate has expired: peers refuse it; renew it and reload");
        } else if left < i64::try_from(EXPIRY_WARNING.as_secs()).unwrap_or(i64::MAX) {
            tracing::warn!(
                days_left = left / 86_400,
                "the federation certificate expires within 14 days: renew it and reload"
            );
        }
    }

    pub fn issue_token(&self, peer_domain: &str, conf_id: &str) -> String {
        self.tokens.issue(peer_domain, conf_id)
    }

    /// Whether `token` was issued to `peer_domain` for `conf_id` under the
    /// current key or the one before it.
    pub fn check_token(&self, peer_domain: &str, conf_id: &str, token: &str) -> bool {
        self.tokens.check(peer_domain, conf_id, token)
            || self.previous_tokens.as_ref().is_some_and(|old| old.check(peer_domain, conf_id, token))
    }
}

/// The DNS names (subject alternative names) a certificate is for.
fn dns_names(certificate: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(certificate) else { return Vec::new() };
    let Ok(Some(names)) = parsed.subject_alternative_name() else { return Vec::new() };
    names
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(name) => Some((*name).to_owned()),
            _ => None,
        })
        .collect()
}

/// Whether a certificate name covers `domain` (`*.example` covers one label).
fn name_matches(name: &str, domain: &str) -> bool {
    match name.strip_prefix("*.") {
        Some(suffix) => domain.split_once('.').is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(suffix)),
        None => name.eq_ignore_ascii_case(domain),
    }
}

/// The `notAfter` of a certificate, in seconds since the Unix epoch.
fn expiry(certificate: &CertificateDer<'_>) -> Option<i64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

/// The credentials in use, shared by the control plane and the relay; a
/// reload swaps them for all at once.
#[derive(Clone)]
pub struct SharedCredentials(Arc<RwLock<Arc<Credentials>>>);

impl SharedCredentials {
    pub fn new(credentials: Credentials) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(credentials))))
    }

    pub fn current(&self) -> Arc<Credentials> {
        self.0.read().expect("credentials lock").clone()
    }

    pub fn replace(&self, credentials: Credentials) {
        *self.0.write().expect("credentials lock") = Arc::new(credentials);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// The federation settings of `domain` with a fresh certificate and key
    /// under `dir` (each call a new key), plus `extra` TOML.
    fn federation(dir: &std::path::Path, domain: &str, extra: &str) -> FederationConfig {
        let out = dir.join(format!("{domain}-{}", rand::random::<u32>()));
        let written = crate::certs::dev(domain, &out, None, false).unwrap();
        let toml = format!(
            "domain = \"{domain}\"\n[federation]\nenabled = true\ncert = {:?}\nkey = {:?}\nca = {:?}\n{extra}",
            written.cert, written.key, written.ca_cert
        );
        let path = out.join("sft.toml");
        std::fs::write(&path, toml).unwrap();
        Config::load(Some(&path), Vec::new()).unwrap().federation.unwrap()
    }

    #[test]
    fn replicas_with_their_own_keys_accept_each_others_tokens_through_the_relay_secret() {
        let dir = std::env::temp_dir().join(format!("sft-credentials-{}", rand::random::<u32>()));
        let secret = "relay_secret = \"0123456789abcdef0123456789abcdef\"\n";
        let one = Credentials::load("a.example", &federation(&dir, "a.example", secret), None).unwrap();
        let two = Credentials::load("a.example", &federation(&dir, "a.example", secret), None).unwrap();
        let token = one.issue_token("b.example", "room");
        assert!(two.check_token("b.example", "room", &token));
        // Without the secret, each key issues its own.
        let three = Credentials::load("a.example", &federation(&dir, "a.example", ""), None).unwrap();
        assert!(!three.check_token("b.example", "room", &token));
        // A reload to a new key keeps accepting the previous key's tokens.
        let four = Credentials::load("a.example", &federation(&dir, "a.example", ""), Some(&three)).unwrap();
        let from_three = three.issue_token("b.example", "room");
        assert!(four.check_token("b.example", "room", &from_three));
        assert!(!four.check_token("b.example", "other", &from_three));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_certificate_for_another_name_is_refused() {
        let dir = std::env::temp_dir().join(format!("sft-credentials-{}", rand::random::<u32>()));
        let config = federation(&dir, "b.example", "");
        match Credentials::load("a.example", &config, None) {
            Err(TlsError::NotForDomain { names, .. }) => assert_eq!(names, vec!["b.example".to_string()]),
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("a certificate for b.example accepted for a.example"),
        }
        assert!(Credentials::load("B.Example", &config, None).is_ok(), "names compare without case");
        assert!(name_matches("*.example", "a.example") && !name_matches("*.example", "x.a.example"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_certificate_expires_when_it_says() {
        let dir = std::env::temp_dir().join(format!("sft-credentials-{}", rand::random::<u32>()));
        let written = crate::certs::dev("a.example", &dir, None, false).unwrap();
        let chain = crate::tls::certificates(&written.cert).unwrap();
        // `sft certs dev` leaves rcgen's default validity: until 4096-01-01.
        assert_eq!(expiry(&chain[0]), Some(67_090_118_400));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(expiry(&CertificateDer::from(vec![0x30, 0x00])), None);
    }
}
