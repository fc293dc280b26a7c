//! Who this SFT trusts: its own certificate, the CAs for peers, the
//! strategy, and the checks every inbound request and link passes.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::control::Tokens;
use crate::config::{FederationConfig, Strategy};
pub use crate::metrics::Rejection;
use crate::tls::{self, TlsError};

/// Classifies a failed TLS handshake with a peer.
pub fn rejection_of_tls_error(error: &rustls::Error) -> Rejection {
    match error {
        rustls::Error::NoCertificatesPresented => Rejection::NoCertificate,
        rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
        | rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext { .. }) => {
            Rejection::PeerCertificateMismatch
        }
        _ => Rejection::BadCertificate,
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
