//! authd's configuration: one typed struct loaded from a TOML file and validated at start-up.
//! Every error names the file and the offending field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::check::Example;
use crate::mapping::Mapping;
use crate::policy::ClusterPolicy;
use crate::verifiers::basic_auth::BasicAuthConfig;
use crate::verifiers::jwt::JwtConfig;

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
    /// Example identities `kube-authd config check` runs through mapping and policy;
    /// ignored by `authd serve`.
    #[serde(default)]
    pub examples: Vec<Example>,
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
    /// External HTTP Basic-auth service for `user:password` tokens.
    BasicAuth(BasicAuthConfig),
    /// JWTs from one issuer (OIDC ID tokens, service tokens).
    Jwt(JwtConfig),
}

impl SourceConfig {
    /// The unique name, reported as the deciding source.
    pub fn name(&self) -> &str {
        match self {
            SourceConfig::TokenFile(c) => &c.name,
            SourceConfig::BasicAuth(c) => &c.name,
            SourceConfig::Jwt(c) => &c.name,
        }
    }

    /// How this source's answers map to Kubernetes users.
    pub fn mapping(&self) -> &Mapping {
        match self {
            SourceConfig::TokenFile(c) => &c.mapping,
            SourceConfig::BasicAuth(c) => &c.mapping,
            SourceConfig::Jwt(c) => &c.mapping,
        }
    }

    /// Local files this source reads; a change to any of them triggers a reload.
    pub fn files(&self) -> Vec<PathBuf> {
        match self {
            SourceConfig::TokenFile(c) => vec![c.path.clone()],
            SourceConfig::BasicAuth(c) => c.ca_file.iter().cloned().collect(),
            SourceConfig::Jwt(c) => c.files(),
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
    #[serde(default)]
    pub mapping: Mapping,
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
                SourceConfig::BasicAuth(c) => c.ca_file.iter_mut().for_each(fix),
                SourceConfig::Jwt(c) => c.resolve_paths(&fix),
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
                SourceConfig::BasicAuth(c) => {
                    c.validate().map_err(|e| format!("sources[{i}].{e}"))?
                }
                SourceConfig::Jwt(c) => c.validate().map_err(|e| format!("sources[{i}].{e}"))?,
            }
            s.mapping()
                .validate()
                .map_err(|e| format!("sources[{i}].{e}"))?;
        }
        if self.cache.positive_ttl.is_zero() && !self.cache.stale_if_error.is_zero() {
            return Err("cache.stale_if_error: needs a non-zero cache.positive_ttl".into());
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
            other => panic!("not a token file: {other:?}"),
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

    #[test]
    fn source_errors_name_the_source_and_field() {
        let cases = [
            (
                "type='basic_auth'\nurl='idp.example/{user}'",
                "sources[0].url",
            ),
            (
                "type='basic_auth'\nurl='https://idp/{user}'\ntimeout='0s'",
                "sources[0].timeout",
            ),
            (
                "type='jwt'\nissuer='i'\naudiences=['a']\nalgorithms=['HS256']\nkeys=['k']",
                "sources[0].algorithms",
            ),
            (
                "type='jwt'\nissuer='i'\naudiences=[]\nalgorithms=['ES256']\nkeys=['k']",
                "sources[0].audiences",
            ),
            (
                "type='jwt'\nissuer='i'\naudiences=['a']\nalgorithms=['ES256']",
                "sources[0].keys",
            ),
            (
                "type='token_file'\npath='t'\nmapping={username='{usr}'}",
                "sources[0].mapping.username",
            ),
            (
                "type='token_file'\npath='t'\nmapping={usrname='x'}",
                "usrname",
            ),
        ];
        for (body, needle) in cases {
            let e = Config::parse(&format!("[[sources]]\nname='s'\n{body}\n"), Path::new("."))
                .unwrap_err();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }
}
