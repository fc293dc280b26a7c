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
    /// A new CA would replace one whose certificates are already out there.
    #[error("{} already holds a CA: sign with it (--ca {}) or replace it (--force)", .0.display(), .0.display())]
    CaExists(PathBuf),
}

/// What `dev` wrote, as absolute paths.
#[derive(Debug)]
pub struct DevCertificates {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl DevCertificates {
    /// A `[federation]` section that uses these files, ready to paste.
    pub fn federation_toml(&self) -> String {
        format!(
            "[federation]\nenabled = true\ncert = {:?}\nkey = {:?}\nca = {:?}\n",
            self.cert.display().to_string(),
            self.key.display().to_string(),
            self.ca_cert.display().to_string()
        )
    }
}

/// Writes `cert.pem`/`key.pem` for `domain` (SAN = domain, usable as TLS
/// server and client) into `out`, signed by the CA in `ca_dir` (`ca.pem`,
/// `ca.key`), or by a new CA written into `out` when `ca_dir` is `None`.
/// A new CA never silently replaces one in `out` (every certificate it
/// signed would stop being trusted) unless `force`. Keys are written
/// readable by their owner only.
pub fn dev(domain: &str, out: &Path, ca_dir: Option<&Path>, force: bool) -> Result<DevCertificates, CertsError> {
    if domain.is_empty() || domain.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(CertsError::BadDomain(domain.to_owned()));
    }
    std::fs::create_dir_all(out).map_err(|source| CertsError::Io { path: out.to_owned(), source })?;
    // Absolute, so the printed config works wherever the SFT is started.
    let out = &std::fs::canonicalize(out).map_err(|source| CertsError::Io { path: out.to_owned(), source })?;
    // Signing with a CA from elsewhere also writes its ca.pem into `out`:
    // that replaces a CA of `out`'s own as much as a new one would.
    let signs_with_own = ca_dir.is_some_and(|dir| std::fs::canonicalize(dir).is_ok_and(|dir| dir == *out));
    if !force && !signs_with_own && out.join(CA_KEY).exists() {
        return Err(CertsError::CaExists(out.to_owned()));
    }
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
            write_private(&out.join(CA_KEY), &key.serialize_pem())?;
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
    write_private(&written.key, &key.serialize_pem())?;
    Ok(written)
}

fn read(path: &Path) -> Result<String, CertsError> {
    std::fs::read_to_string(path).map_err(|source| CertsError::Io { path: path.to_owned(), source })
}

fn write(path: &Path, contents: &str) -> Result<(), CertsError> {
    std::fs::write(path, contents).map_err(|source| CertsError::Io { path: path.to_owned(), source })
}

/// Writes a private key with mode 0600, also over an existing file.
fn write_private(path: &Path, contents: &str) -> Result<(), CertsError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |source| CertsError::Io { path: path.to_owned(), source };
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(io)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn keys_are_private_paths_absolute_and_a_ca_is_never_replaced_silently() {
        let dir = std::env::temp_dir().join(format!("sft-certs-test-{}", rand::random::<u64>()));
        let out = dir.join("a");
        let written = dev("a.example", &out, None, false).unwrap();
        for key in [&written.key, &out.join(CA_KEY)] {
            let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        assert!(written.cert.is_absolute() && written.key.is_absolute() && written.ca_cert.is_absolute());
        let toml = written.federation_toml();
        assert!(toml.starts_with("[federation]\n") && toml.contains(&written.cert.display().to_string()), "{toml}");

        let ca = std::fs::read_to_string(&written.ca_cert).unwrap();
        assert!(matches!(dev("a.example", &out, None, false), Err(CertsError::CaExists(_))));
        assert_eq!(std::fs::read_to_string(&written.ca_cert).unwrap(), ca, "the CA is untouched");
        // Signing with it, or replacing it on purpose, works; another CA's
        // ca.pem does not land on top of it.
        dev("b.example", &dir.join("b"), Some(&out), false).unwrap();
        dev("a.example", &out, Some(&out), false).unwrap();
        assert!(matches!(dev("a.example", &out, Some(&dir.join("b")), false), Err(CertsError::CaExists(_))));
        dev("a.example", &out, None, true).unwrap();
        assert_ne!(std::fs::read_to_string(&written.ca_cert).unwrap(), ca, "--force replaces the CA");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
