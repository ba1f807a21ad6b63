//! Authentication and authorization (issue 18): who may publish, read, play back recordings,
//! use the API and read the metrics, per path pattern. Being built: `[auth]` parses to nothing
//! yet and everything is allowed.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

/// `[auth]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {}

/// Counters (metrics).
#[derive(Debug, Default)]
pub struct AuthStats {
    /// Requests refused: no or wrong credentials, or no permission.
    pub denied: AtomicU64,
    /// Requests refused without a check because their address failed too often.
    pub blocked: AtomicU64,
}

/// The server's authorization, on the hub; replaced whole on a config reload.
#[derive(Debug, Default)]
pub struct Auth {
    config: RwLock<Arc<AuthConfig>>,
    /// Counters.
    pub stats: AuthStats,
}

impl Auth {
    /// Authorization by `config`.
    pub fn new(config: AuthConfig) -> Arc<Auth> {
        Arc::new(Auth { config: RwLock::new(Arc::new(config)), stats: AuthStats::default() })
    }

    /// The settings now.
    pub fn config(&self) -> Arc<AuthConfig> {
        self.config.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Applies new settings (a reload): checked first; on an error the old ones stay.
    pub fn replace(&self, config: AuthConfig) -> anyhow::Result<()> {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        Ok(())
    }
}
