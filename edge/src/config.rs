//! The edge's configuration: one TOML file, validated at start-up; errors name the field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HTTPS listen address for TokenReviews.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Plain-HTTP admin listener (/healthz, /readyz, /metrics); off when absent.
    pub admin_listen: Option<SocketAddr>,
    /// Largest accepted request body; larger ones get 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// A client must finish sending request headers within this time.
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A client must finish sending the body within this time (408 otherwise).
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// The TLS handshake must finish within this time.
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Deadline for authd's verdict; past it the review is answered 500 (retryable).
    #[serde(default = "default_review_timeout", with = "humantime_serde")]
    pub review_timeout: Duration,
    /// How long in-flight reviews may take to finish after SIGTERM.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Cluster name sent to authd for `POST /authenticate`.
    #[serde(default = "default_cluster")]
    pub default_cluster: String,
    pub tls: TlsConfig,
    /// authd location; required by `authd-edge serve`, unused in the all-in-one binary.
    pub authd: Option<AuthdConfig>,
    /// Clusters served at `POST /clusters/{name}/authenticate`.
    #[serde(default)]
    pub clusters: BTreeMap<String, ClusterConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain served to kube-apiserver.
    pub cert: PathBuf,
    /// PEM private key for `cert`.
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthdConfig {
    /// gRPC endpoint, e.g. `http://127.0.0.1:50051`.
    pub endpoint: String,
    /// Time allowed to establish a connection to authd.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8443))
}
fn default_max_body() -> usize {
    1024 * 1024
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_review_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(25)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_cluster() -> String {
    "default".into()
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base).map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })
    }

    pub fn parse(text: &str, base: &Path) -> Result<Self, String> {
        let mut c: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        for p in [&mut c.tls.cert, &mut c.tls.key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.max_body_bytes == 0 {
            return Err("max_body_bytes: must be greater than 0".into());
        }
        if self.default_cluster.is_empty() {
            return Err("default_cluster: must not be empty".into());
        }
        for name in self.clusters.keys() {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            {
                return Err(format!(
                    "clusters.{name:?}: cluster names may only hold letters, digits, '-', '_' and '.'"
                ));
            }
        }
        if let Some(a) = &self.authd {
            if !(a.endpoint.starts_with("http://") || a.endpoint.starts_with("https://")) {
                return Err(format!(
                    "authd.endpoint: {:?} must start with http:// or https://",
                    a.endpoint
                ));
            }
        }
        Ok(())
    }
}
