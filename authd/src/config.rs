//! authd's configuration: one typed struct loaded from a TOML file and validated at start-up.
//! Every error names the file and the offending field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::policy::ClusterPolicy;

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
    /// gRPC listen address (Authenticator, Admin, health, reflection).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Plain-HTTP admin listener for /healthz, /readyz and /metrics; off when absent.
    pub admin_listen: Option<SocketAddr>,
    /// How long in-flight calls may take to finish after SIGTERM.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    #[serde(default)]
    pub cache: CacheConfig,
    /// Identity sources, asked in order; each only for tokens it owns.
    pub sources: Vec<SourceConfig>,
    /// Per-cluster policy. A cluster not listed here has no restrictions.
    #[serde(default)]
    pub clusters: BTreeMap<String, ClusterPolicy>,
    /// gRPC over TLS (mutual TLS with `client_ca`); plaintext when absent.
    pub tls: Option<TlsConfig>,
    /// Per-client RPC allow-lists, keyed by client certificate identity (CN, or first DNS
    /// SAN). Empty: every caller may call every RPC. Set: unlisted callers are refused.
    #[serde(default)]
    pub clients: BTreeMap<String, ClientAccess>,
    /// Most gRPC calls in progress at once; more are refused at once with
    /// RESOURCE_EXHAUSTED rather than queued (bounded latency under overload).
    #[serde(default = "default_max_concurrent_calls")]
    pub max_concurrent_calls: usize,
    /// Most calls in progress on one connection (also its HTTP/2 stream limit, so a client
    /// waits for a stream rather than being refused). An edge uses one connection per
    /// replica: keep this at least the edge's max_in_flight_reviews / replicas.
    #[serde(default = "default_max_calls_per_connection")]
    pub max_concurrent_calls_per_connection: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain served to gRPC clients; re-read when it changes.
    pub cert: PathBuf,
    /// PEM private key for `cert`.
    pub key: PathBuf,
    /// PEM CA(s) whose client certificates are accepted; with it, client certificates are
    /// required.
    pub client_ca: Option<PathBuf>,
    /// The TLS handshake must finish within this time.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

/// RPC method names a `[clients.NAME]` entry may list.
pub const KNOWN_METHODS: &[&str] = &[
    "Authenticate",
    "RevokeToken",
    "RevokeUser",
    "ServerReflectionInfo",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAccess {
    /// The RPCs (method names, e.g. "Authenticate") this client may call.
    pub methods: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// How long a positive verdict is cached.
    #[serde(default = "default_positive_ttl", with = "humantime_serde")]
    pub positive_ttl: Duration,
    /// How long a negative verdict is cached.
    #[serde(default = "default_negative_ttl", with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// Serve a cached positive verdict this long past its TTL while its source cannot
    /// decide. Zero (the default) turns stale-if-error off.
    #[serde(default, with = "humantime_serde")]
    pub stale_if_error: Duration,
    /// Most verdicts held in process.
    #[serde(default = "default_max_entries")]
    pub max_entries: u64,
    /// File holding the HMAC key for cache keys (any bytes, at least 32). Without it a
    /// random key is made at start-up.
    pub hmac_key_file: Option<PathBuf>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            positive_ttl: default_positive_ttl(),
            negative_ttl: default_negative_ttl(),
            stale_if_error: Duration::ZERO,
            max_entries: default_max_entries(),
            hmac_key_file: None,
        }
    }
}

/// One identity source; `type` selects the kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SourceConfig {
    /// kube-apiserver `--token-auth-file` CSV.
    TokenFile(TokenFileConfig),
}

impl SourceConfig {
    /// The unique name, reported as the deciding source.
    pub fn name(&self) -> &str {
        match self {
            SourceConfig::TokenFile(c) => &c.name,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFileConfig {
    pub name: String,
    pub path: PathBuf,
    /// Only tokens starting with this are looked up; a miss is then a definitive no.
    pub prefix: Option<String>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50051))
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(25)
}
fn default_positive_ttl() -> Duration {
    Duration::from_secs(120)
}
fn default_negative_ttl() -> Duration {
    Duration::from_secs(30)
}
fn default_max_entries() -> u64 {
    100_000
}
fn default_max_concurrent_calls() -> usize {
    1024
}
fn default_max_calls_per_connection() -> usize {
    512
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Config {
    /// Reads, parses and validates; relative paths are resolved against the file's folder.
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

    /// Parses and validates TOML text; `base` anchors relative paths.
    pub fn parse(text: &str, base: &Path) -> Result<Self, String> {
        let mut config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        config.resolve_paths(base);
        config.validate()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(p) = self.cache.hmac_key_file.as_mut() {
            fix(p);
        }
        for s in &mut self.sources {
            match s {
                SourceConfig::TokenFile(c) => fix(&mut c.path),
            }
        }
        if let Some(t) = self.tls.as_mut() {
            fix(&mut t.cert);
            fix(&mut t.key);
            if let Some(ca) = t.client_ca.as_mut() {
                fix(ca);
            }
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.sources.is_empty() {
            return Err("sources: at least one identity source is required".into());
        }
        let mut seen = BTreeMap::new();
        for (i, s) in self.sources.iter().enumerate() {
            let name = s.name();
            if name.trim().is_empty() {
                return Err(format!("sources[{i}].name: must not be empty"));
            }
            if let Some(j) = seen.insert(name, i) {
                return Err(format!(
                    "sources[{i}].name: {name:?} is already used by sources[{j}]"
                ));
            }
            match s {
                SourceConfig::TokenFile(c) => {
                    if c.prefix.as_deref() == Some("") {
                        return Err(format!("sources[{i}].prefix: must not be empty when set"));
                    }
                }
            }
        }
        if self.cache.positive_ttl.is_zero() && !self.cache.stale_if_error.is_zero() {
            return Err("cache.stale_if_error: needs a non-zero cache.positive_ttl".into());
        }
        self.validate_access()
    }

    fn validate_access(&self) -> Result<(), String> {
        if self.max_concurrent_calls == 0 {
            return Err("max_concurrent_calls: must be greater than 0".into());
        }
        if self.max_concurrent_calls_per_connection == 0 {
            return Err("max_concurrent_calls_per_connection: must be greater than 0".into());
        }
        let mutual = self.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        if !self.clients.is_empty() && !mutual {
            return Err("clients: allow-lists need tls.client_ca (client identities come from client certificates)".into());
        }
        for (name, c) in &self.clients {
            for m in &c.methods {
                if !KNOWN_METHODS.contains(&m.as_str()) {
                    return Err(format!(
                        "clients.{name}.methods: unknown RPC {m:?} (known: {})",
                        KNOWN_METHODS.join(", ")
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults_and_resolved_paths() {
        let c = Config::parse(
            "[[sources]]\nname = \"static\"\ntype = \"token_file\"\npath = \"t.csv\"\n",
            Path::new("/etc/authd"),
        )
        .unwrap();
        assert_eq!(c.listen, default_listen());
        assert_eq!(c.cache.positive_ttl, Duration::from_secs(120));
        match &c.sources[0] {
            SourceConfig::TokenFile(t) => assert_eq!(t.path, Path::new("/etc/authd/t.csv")),
        }
    }

    #[test]
    fn errors_name_the_field() {
        let e = Config::parse("lisen = \"x\"\nsources = []\n", Path::new(".")).unwrap_err();
        assert!(e.contains("lisen"), "{e}");
        let e = Config::parse("sources = []\n", Path::new(".")).unwrap_err();
        assert!(e.contains("sources"), "{e}");
        let dup = "[[sources]]\nname='a'\ntype='token_file'\npath='x'\n\
                   [[sources]]\nname='a'\ntype='token_file'\npath='y'\n";
        let e = Config::parse(dup, Path::new(".")).unwrap_err();
        assert!(e.contains("sources[1].name"), "{e}");
        let e = Config::parse(
            "[cache]\npositive_ttl = \"soon\"\n[[sources]]\nname='a'\ntype='token_file'\npath='x'\n",
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.contains("positive_ttl"), "{e}");
    }
}

#[cfg(test)]
mod access_tests {
    use super::*;

    const SOURCE: &str = "[[sources]]\nname='a'\ntype='token_file'\npath='x'\n";

    #[test]
    fn tls_and_clients() {
        let c = Config::parse(
            &format!("[tls]\ncert='a.crt'\nkey='a.key'\nclient_ca='ca.crt'\n[clients.edge]\nmethods=['Authenticate']\n{SOURCE}"),
            Path::new("/etc/authd"),
        )
        .unwrap();
        let t = c.tls.unwrap();
        assert_eq!(t.client_ca.unwrap(), Path::new("/etc/authd/ca.crt"));
        assert_eq!(c.clients["edge"].methods, ["Authenticate"]);
        let e = Config::parse(
            &format!("[clients.edge]\nmethods=['Authenticate']\n{SOURCE}"),
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.contains("tls.client_ca"), "{e}");
        let e = Config::parse(
            &format!("[tls]\ncert='a'\nkey='b'\nclient_ca='c'\n[clients.ops]\nmethods=['Revoke']\n{SOURCE}"),
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.contains("clients.ops.methods"), "{e}");
        let e = Config::parse(
            &format!("max_concurrent_calls = 0\n{SOURCE}"),
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.contains("max_concurrent_calls"), "{e}");
    }
}
