//! Who this SFT trusts: its own certificate, the CAs for peers, the
//! strategy, and the checks every inbound request and link passes.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::control::Tokens;
use crate::config::{FederationConfig, Strategy};
use crate::tls::{self, TlsError};

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
}

impl Rejection {
    pub const ALL: [Rejection; 12] = [
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
        }
    }

    /// Classifies a failed TLS handshake.
    pub fn of_tls_error(error: &rustls::Error) -> Self {
        match error {
            rustls::Error::NoCertificatesPresented => Self::NoCertificate,
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
            | rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext { .. }) => {
                Self::PeerCertificateMismatch
            }
            _ => Self::BadCertificate,
        }
    }
}

pub struct Trust {
    pub domain: String,
    pub strategy: Strategy,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Trust {
    pub fn load(domain: &str, config: &FederationConfig) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        match &config.ca {
            Some(path) => {
                for cert in tls::certificates(path)? {
                    roots.add(cert).map_err(TlsError::Config)?;
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        Ok(Self {
            domain: domain.to_owned(),
            strategy: config.strategy.clone(),
            roots: Arc::new(roots),
            chain: tls::certificates(&config.cert)?,
            key: tls::private_key(&config.key)?,
        })
    }

    /// This SFT's own (leaf) certificate.
    pub fn certificate(&self) -> Option<&CertificateDer<'static>> {
        self.chain.first()
    }

    /// Relay tokens keyed by this SFT's private key (see [`Tokens`]).
    pub fn relay_tokens(&self) -> Tokens {
        Tokens::derived_from(self.key.secret_der())
    }

    /// A TLS server that demands a client certificate chaining to the peer CAs.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), tls::provider())
            .build()
            .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
        let mut config = ServerConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }

    /// A TLS client that presents this SFT's certificate; rustls checks the
    /// peer's certificate against the name it is asked to reach.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<ClientConfig, TlsError> {
        let mut config = ClientConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }

    /// Accepts a peer that proved (by its verified certificate) to be
    /// `claimed_domain`, if the strategy allows it.
    pub fn admit(&self, certificate: Option<&CertificateDer<'_>>, claimed_domain: &str) -> Result<(), Rejection> {
        let certificate = certificate.ok_or(Rejection::NoCertificate)?;
        if !certificate_is_for(certificate, claimed_domain) {
            return Err(Rejection::OriginMismatch);
        }
        if !self.strategy.allows(claimed_domain) {
            return Err(Rejection::DomainNotAllowed);
        }
        Ok(())
    }
}

/// Whether the (already chain-verified) certificate has `domain` as a DNS SAN.
pub fn certificate_is_for(certificate: &CertificateDer<'_>, domain: &str) -> bool {
    let Ok(name) = ServerName::try_from(domain) else {
        return false;
    };
    let Ok(cert) = webpki::EndEntityCert::try_from(certificate) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}
