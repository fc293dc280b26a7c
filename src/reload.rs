//! Reloading while running (SIGHUP, `POST /admin/reload`): the
//! configuration is read again from the same file and environment, and
//! what can change without a restart is applied: the federation
//! certificate, key, CAs, strategy, allow list and peers. Everything else
//! keeps its start-up value until the next restart.

use std::sync::Arc;

use thiserror::Error;

use crate::config::{Config, ConfigError};
use crate::federation::Federation;
use crate::metrics::Metrics;
use crate::tls::TlsError;

pub struct Reloader {
    started_with: Config,
    federation: Option<Arc<Federation>>,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("federation TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("federation.enabled changed: restart the SFT to apply it")]
    FederationToggled,
}

impl Reloader {
    pub fn new(started_with: Config, federation: Option<Arc<Federation>>, metrics: Arc<Metrics>) -> Self {
        Self { started_with, federation, metrics }
    }

    /// Applies the configuration as it reads now; on an error nothing changes.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let result = self.apply();
        self.metrics.reloaded(result.is_ok());
        match &result {
            Ok(()) => tracing::info!("reloaded the federation credentials"),
            Err(e) => tracing::warn!("reload failed, nothing changed: {e}"),
        }
        result
    }

    fn apply(&self) -> Result<(), ReloadError> {
        let fresh = self.started_with.reread()?;
        match (&self.federation, &fresh.federation) {
            (Some(federation), Some(config)) => Ok(federation.reload(config)?),
            (None, None) => Ok(()),
            _ => Err(ReloadError::FederationToggled),
        }
    }
}
