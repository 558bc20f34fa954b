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
    /// Who may call the Admin gRPC service (revocation).
    #[serde(default)]
    pub admin: AdminConfig,
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
    /// random key is made at start-up. Required with `redis`: replicas must share it.
    pub hmac_key_file: Option<PathBuf>,
    /// With a shared level, how long a replica trusts its in-process copy before asking
    /// Redis again (bounds the effect of a missed revocation message).
    #[serde(default = "default_local_ttl", with = "humantime_serde")]
    pub local_ttl: Duration,
    /// The shared level behind the in-process cache; off when absent.
    pub redis: Option<RedisConfig>,
}

/// The shared verdict cache in Redis (single server or Redis Cluster).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port[/db]` or `rediss://…` (TLS) of a single Redis.
    pub url: Option<String>,
    /// Seed nodes of a Redis Cluster (`redis://` or `rediss://`); instead of `url`.
    #[serde(default)]
    pub cluster_urls: Vec<String>,
    /// ACL user name.
    pub username: Option<String>,
    /// File holding the password (trailing newline ignored). Never put it in the URL.
    pub password_file: Option<PathBuf>,
    /// PEM CA bundle that signed Redis's certificate, for `rediss://`.
    pub ca_file: Option<PathBuf>,
    /// Prepended to every key and the revocation channel.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Longest a review waits for one Redis command before answering from the sources.
    #[serde(default = "default_redis_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Longest one connection attempt may take.
    #[serde(default = "default_redis_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
}

/// Callers allowed to use the Admin service. With neither field set every call is refused.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Client certificate identities (as the TLS layer names them) allowed to call Admin.
    #[serde(default)]
    pub allowed_clients: Vec<String>,
    /// File holding a shared admin secret, presented as `authorization: Bearer <secret>`.
    pub token_file: Option<PathBuf>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            positive_ttl: default_positive_ttl(),
            negative_ttl: default_negative_ttl(),
            stale_if_error: Duration::ZERO,
            max_entries: default_max_entries(),
            hmac_key_file: None,
            local_ttl: default_local_ttl(),
            redis: None,
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
fn default_local_ttl() -> Duration {
    Duration::from_secs(10)
}
fn default_key_prefix() -> String {
    "kube-authd:".into()
}
fn default_redis_timeout() -> Duration {
    Duration::from_millis(100)
}
fn default_redis_connect_timeout() -> Duration {
    Duration::from_secs(1)
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
        if let Some(r) = self.cache.redis.as_mut() {
            for p in [r.password_file.as_mut(), r.ca_file.as_mut()]
                .into_iter()
                .flatten()
            {
                fix(p);
            }
        }
        if let Some(p) = self.admin.token_file.as_mut() {
            fix(p);
        }
        for s in &mut self.sources {
            match s {
                SourceConfig::TokenFile(c) => fix(&mut c.path),
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
        if let Some(r) = &self.cache.redis {
            self.validate_redis(r)?;
        }
        Ok(())
    }

    fn validate_redis(&self, r: &RedisConfig) -> Result<(), String> {
        if self.cache.hmac_key_file.is_none() {
            return Err("cache.hmac_key_file: required when cache.redis is set \
                        (every replica must use the same key)"
                .into());
        }
        if self.cache.local_ttl.is_zero() {
            return Err("cache.local_ttl: must be greater than zero".into());
        }
        let urls: Vec<(String, &String)> = match (&r.url, r.cluster_urls.is_empty()) {
            (Some(u), true) => vec![("cache.redis.url".into(), u)],
            (None, false) => r
                .cluster_urls
                .iter()
                .enumerate()
                .map(|(i, u)| (format!("cache.redis.cluster_urls[{i}]"), u))
                .collect(),
            (Some(_), false) => {
                return Err("cache.redis: set either url or cluster_urls, not both".into())
            }
            (None, true) => return Err("cache.redis: url or cluster_urls is required".into()),
        };
        for (field, url) in urls {
            let tls = if url.starts_with("rediss://") {
                true
            } else if url.starts_with("redis://") {
                false
            } else {
                return Err(format!("{field}: must start with redis:// or rediss://"));
            };
            // The URL is logged and shown in errors; a password belongs in password_file.
            let authority = url.split_once("://").map_or("", |(_, rest)| rest);
            let authority = authority.split('/').next().unwrap_or("");
            if let Some((userinfo, _)) = authority.rsplit_once('@') {
                if userinfo.contains(':') {
                    return Err(format!(
                        "{field}: must not contain a password; use cache.redis.password_file"
                    ));
                }
            }
            if r.ca_file.is_some() && !tls {
                return Err(format!(
                    "cache.redis.ca_file: only used with rediss:// URLs, but {field} is redis://"
                ));
            }
        }
        if r.password_file.is_some() && r.username.is_none() {
            // Redis's legacy AUTH <password> is the "default" user; say so explicitly.
            return Err("cache.redis.username: required with password_file (use \"default\" for a requirepass server)".into());
        }
        if r.timeout.is_zero() {
            return Err("cache.redis.timeout: must be greater than zero".into());
        }
        if r.connect_timeout.is_zero() {
            return Err("cache.redis.connect_timeout: must be greater than zero".into());
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

    const SOURCE: &str = "[[sources]]\nname='a'\ntype='token_file'\npath='x'\n";

    #[test]
    fn redis_needs_a_shared_hmac_key() {
        let e = Config::parse(
            &format!("[cache.redis]\nurl='redis://127.0.0.1:1'\n{SOURCE}"),
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.contains("cache.hmac_key_file"), "{e}");
        let c = Config::parse(
            &format!(
                "[cache]\nhmac_key_file='k'\n[cache.redis]\nurl='rediss://r:6380'\nca_file='ca.pem'\n\
                 username='authd'\npassword_file='pw'\n[admin]\ntoken_file='admin'\n{SOURCE}"
            ),
            Path::new("/etc/authd"),
        )
        .unwrap();
        let r = c.cache.redis.unwrap();
        assert_eq!(r.timeout, Duration::from_millis(100));
        assert_eq!(r.ca_file.unwrap(), Path::new("/etc/authd/ca.pem"));
        assert_eq!(c.admin.token_file.unwrap(), Path::new("/etc/authd/admin"));
    }

    #[test]
    fn redis_errors_name_the_field() {
        let bad = [
            ("url='http://x'", "cache.redis.url"),
            ("url='redis://u:secret@x'", "cache.redis.url"),
            (
                "cluster_urls=['redis://a', 'tcp://b']",
                "cache.redis.cluster_urls[1]",
            ),
            ("url='redis://a'\ncluster_urls=['redis://b']", "not both"),
            ("username='u'", "url or cluster_urls"),
            ("url='redis://a'\nca_file='c'", "cache.redis.ca_file"),
            ("url='redis://a'\npassword_file='p'", "cache.redis.username"),
            ("url='redis://a'\ntimeout='0s'", "cache.redis.timeout"),
        ];
        for (redis, field) in bad {
            let text = format!("[cache]\nhmac_key_file='k'\n[cache.redis]\n{redis}\n{SOURCE}");
            let e = Config::parse(&text, Path::new(".")).unwrap_err();
            assert!(e.contains(field), "{redis}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
    }
}
