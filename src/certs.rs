//! `sft certs dev`: a test CA and a certificate for one domain, for trying
//! federation locally. Not for production: keys are written unencrypted.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use thiserror::Error;

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const CERT: &str = "cert.pem";
pub const KEY: &str = "key.pem";

#[derive(Debug, Error)]
pub enum CertsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0:?} is not a domain name")]
    BadDomain(String),
}

/// What `dev` wrote.
#[derive(Debug)]
pub struct DevCertificates {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Writes `cert.pem`/`key.pem` for `domain` (SAN = domain, usable as TLS
/// server and client) into `out`, signed by the CA in `ca_dir` (`ca.pem`,
/// `ca.key`), or by a new CA written into `out` when `ca_dir` is `None`.
pub fn dev(domain: &str, out: &Path, ca_dir: Option<&Path>) -> Result<DevCertificates, CertsError> {
    if domain.is_empty() || domain.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(CertsError::BadDomain(domain.to_owned()));
    }
    std::fs::create_dir_all(out).map_err(|source| CertsError::Io { path: out.to_owned(), source })?;
    let (ca_pem, ca_key) = match ca_dir {
        Some(dir) => (read(&dir.join(CA_CERT))?, KeyPair::from_pem(&read(&dir.join(CA_KEY))?)?),
        None => {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, "sft development CA");
            params.key_usages =
                vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
            let pem = params.self_signed(&key)?.pem();
            write(&out.join(CA_KEY), &key.serialize_pem())?;
            (pem, key)
        }
    };
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
    let mut params = CertificateParams::new(vec![domain.to_owned()])?;
    params.distinguished_name.push(DnType::CommonName, domain);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let written = DevCertificates { ca_cert: out.join(CA_CERT), cert: out.join(CERT), key: out.join(KEY) };
    write(&written.ca_cert, &ca_pem)?;
    write(&written.cert, &cert.pem())?;
    write(&written.key, &key.serialize_pem())?;
    Ok(written)
}

fn read(path: &Path) -> Result<String, CertsError> {
    std::fs::read_to_string(path).map_err(|source| CertsError::Io { path: path.to_owned(), source })
}

fn write(path: &Path, contents: &str) -> Result<(), CertsError> {
    std::fs::write(path, contents).map_err(|source| CertsError::Io { path: path.to_owned(), source })
}
