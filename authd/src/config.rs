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

pub use authd_runtime::config::ConfigError;

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
    /// Who may call the Admin gRPC service (revocation).
    #[serde(default)]
    pub admin: AdminConfig,
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

impl Config {
    /// Identities that may call Admin: `admin.allowed_clients`, plus every `[clients.NAME]`
    /// whose `methods` list a Revoke RPC (the access layer has already checked the exact
    /// method), so a deployment with per-client allow-lists configures admins once.
    pub fn admin_clients(&self) -> Vec<String> {
        let mut names = self.admin.allowed_clients.clone();
        for (name, access) in &self.clients {
            let revokes = access.methods.iter().any(|m| m.starts_with("Revoke"));
            if revokes && !names.contains(name) {
                names.push(name.clone());
            }
        }
        names
    }
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
    /// External HTTP Basic-auth service for `user:password` tokens.
    BasicAuth(BasicAuthConfig),
    /// JWTs from one issuer (OIDC ID tokens, service tokens).
    Jwt(JwtConfig),
    /// `user:password` tokens checked against an LDAP directory.
    Ldap(Box<LdapConfig>),
    /// Opaque `<prefix><id>.<secret>` tokens stored (hashed) in PostgreSQL.
    Postgres(PostgresConfig),
}

impl SourceConfig {
    /// The unique name, reported as the deciding source.
    pub fn name(&self) -> &str {
        match self {
            SourceConfig::TokenFile(c) => &c.name,
            SourceConfig::BasicAuth(c) => &c.name,
            SourceConfig::Jwt(c) => &c.name,
            SourceConfig::Ldap(c) => &c.name,
            SourceConfig::Postgres(c) => &c.name,
        }
    }

    /// How this source's answers map to Kubernetes users.
    pub fn mapping(&self) -> &Mapping {
        match self {
            SourceConfig::TokenFile(c) => &c.mapping,
            SourceConfig::BasicAuth(c) => &c.mapping,
            SourceConfig::Jwt(c) => &c.mapping,
            SourceConfig::Ldap(c) => &c.mapping,
            SourceConfig::Postgres(c) => &c.mapping,
        }
    }

    /// Local files this source reads; a change to any of them triggers a reload.
    pub fn files(&self) -> Vec<PathBuf> {
        match self {
            SourceConfig::TokenFile(c) => vec![c.path.clone()],
            SourceConfig::BasicAuth(c) => c.ca_file.iter().cloned().collect(),
            SourceConfig::Jwt(c) => c.files(),
            SourceConfig::Ldap(c) => [Some(&c.bind_password_file), c.ca_file.as_ref()]
                .into_iter()
                .flatten()
                .cloned()
                .collect(),
            SourceConfig::Postgres(c) => [Some(&c.secret_key_file), c.password_file.as_ref()]
                .into_iter()
                .flatten()
                .cloned()
                .collect(),
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

/// LDAP source: find the user with a service bind and search, check the password with a
/// bind as the user, read groups and attributes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapConfig {
    pub name: String,
    /// How answers map to Kubernetes users.
    #[serde(default)]
    pub mapping: Mapping,
    /// `ldap://host:389` or `ldaps://host:636`.
    pub url: String,
    /// Upgrade an `ldap://` connection with StartTLS before any bind.
    #[serde(default)]
    pub starttls: bool,
    /// PEM CA bundle trusted for ldaps/StartTLS instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// DN of the service account used to search for users and groups.
    pub bind_dn: String,
    /// File holding the service account's password (trailing newline ignored).
    pub bind_password_file: PathBuf,
    /// Only tokens starting with this are owned (and it is stripped before splitting).
    pub prefix: Option<String>,
    /// Between user name and password; the token is split at its first occurrence.
    #[serde(default = "default_ldap_separator")]
    pub separator: String,
    /// Search base for users (subtree).
    pub user_base: String,
    /// Filter template; `{user}` is replaced by the RFC 4515-escaped user name.
    #[serde(default = "default_ldap_user_filter")]
    pub user_filter: String,
    /// Attribute giving the Kubernetes user name; the typed name when absent.
    #[serde(default = "default_ldap_username_attribute")]
    pub username_attribute: String,
    /// Attribute giving the Kubernetes uid; the entry's DN when absent.
    #[serde(default = "default_ldap_uid_attribute")]
    pub uid_attribute: String,
    /// Groups by search: base for the group search. Without it, groups are read from
    /// `member_of_attribute` on the user entry.
    pub group_base: Option<String>,
    /// Group search filter template; `{dn}` is replaced by the escaped member DN.
    #[serde(default = "default_ldap_group_filter")]
    pub group_filter: String,
    /// Attribute of a group entry giving the group name.
    #[serde(default = "default_ldap_group_name_attribute")]
    pub group_name_attribute: String,
    /// How many levels of groups-in-groups to follow in group search mode (0: direct only).
    #[serde(default)]
    pub group_nesting_depth: u32,
    /// User attribute listing group DNs (memberOf overlay) when `group_base` is not set.
    #[serde(default = "default_ldap_member_of_attribute")]
    pub member_of_attribute: String,
    /// LDAP attribute -> key in the user's `extra`.
    #[serde(default)]
    pub extra_attributes: BTreeMap<String, String>,
    /// Connect and per-operation limit, and the bound on one whole check.
    #[serde(default = "default_source_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// PostgreSQL source: opaque tokens looked up by id, secret checked against a keyed hash.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    pub name: String,
    /// How answers map to Kubernetes users.
    #[serde(default)]
    pub mapping: Mapping,
    /// `postgres://user@host:port/db`; put the password in `password_file`, not here.
    pub database_url: String,
    /// File holding the database password (trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// Key (at least 32 bytes) for the HMAC-SHA256 of token secrets.
    pub secret_key_file: PathBuf,
    /// Token prefix; the source owns only tokens of the form `<prefix><id>.<secret>`.
    #[serde(default = "default_postgres_prefix")]
    pub prefix: String,
    /// Apply the schema migrations at start.
    #[serde(default)]
    pub migrate: bool,
    /// Pool size.
    #[serde(default = "default_postgres_max_connections")]
    pub max_connections: u32,
    /// Acquire and statement limit, and the bound on one whole lookup.
    #[serde(default = "default_source_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_ldap_separator() -> String {
    ":".into()
}
fn default_ldap_user_filter() -> String {
    "(uid={user})".into()
}
fn default_ldap_username_attribute() -> String {
    "uid".into()
}
fn default_ldap_uid_attribute() -> String {
    "entryUUID".into()
}
fn default_ldap_group_filter() -> String {
    "(member={dn})".into()
}
fn default_ldap_group_name_attribute() -> String {
    "cn".into()
}
fn default_ldap_member_of_attribute() -> String {
    "memberOf".into()
}
fn default_postgres_prefix() -> String {
    "kad_".into()
}
fn default_postgres_max_connections() -> u32 {
    8
}
fn default_source_timeout() -> Duration {
    Duration::from_secs(2)
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
        authd_runtime::config::load(path, |text, base| {
            Self::parse(text, base).map_err(|m| match m.split_once(": ") {
                Some((field, message)) => authd_runtime::config::FieldError::new(field, message),
                None => authd_runtime::config::FieldError::new("config", m),
            })
        })
    }

    /// Parses and validates TOML text; `base` anchors relative paths.
    pub fn parse(text: &str, base: &Path) -> Result<Self, String> {
        let mut config: Config =
            authd_runtime::config::from_toml(text).map_err(|e| e.to_string())?;
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
                SourceConfig::BasicAuth(c) => c.ca_file.iter_mut().for_each(fix),
                SourceConfig::Jwt(c) => c.resolve_paths(&fix),
                SourceConfig::Ldap(c) => {
                    fix(&mut c.bind_password_file);
                    if let Some(p) = c.ca_file.as_mut() {
                        fix(p);
                    }
                }
                SourceConfig::Postgres(c) => {
                    fix(&mut c.secret_key_file);
                    if let Some(p) = c.password_file.as_mut() {
                        fix(p);
                    }
                }
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
                SourceConfig::BasicAuth(c) => {
                    c.validate().map_err(|e| format!("sources[{i}].{e}"))?
                }
                SourceConfig::Jwt(c) => c.validate().map_err(|e| format!("sources[{i}].{e}"))?,
                SourceConfig::Ldap(c) => c.validate().map_err(|e| format!("sources[{i}].{e}"))?,
                SourceConfig::Postgres(c) => {
                    c.validate().map_err(|e| format!("sources[{i}].{e}"))?
                }
            }
            s.mapping()
                .validate()
                .map_err(|e| format!("sources[{i}].{e}"))?;
        }
        if self.cache.positive_ttl.is_zero() && !self.cache.stale_if_error.is_zero() {
            return Err("cache.stale_if_error: needs a non-zero cache.positive_ttl".into());
        }
        if let Some(r) = &self.cache.redis {
            self.validate_redis(r)?;
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

impl LdapConfig {
    /// Errors start with the field name.
    fn validate(&self) -> Result<(), String> {
        if !(self.url.starts_with("ldap://") || self.url.starts_with("ldaps://")) {
            return Err(format!(
                "url: {:?} must start with ldap:// or ldaps://",
                self.url
            ));
        }
        if self.starttls && self.url.starts_with("ldaps://") {
            return Err("starttls: cannot be combined with an ldaps:// url".into());
        }
        if self.separator.is_empty() {
            return Err("separator: must not be empty".into());
        }
        if self.prefix.as_deref() == Some("") {
            return Err("prefix: must not be empty when set".into());
        }
        if !self.user_filter.contains("{user}") {
            return Err("user_filter: must contain {user}".into());
        }
        if self.group_base.is_some() && !self.group_filter.contains("{dn}") {
            return Err("group_filter: must contain {dn}".into());
        }
        if self.group_nesting_depth > 8 {
            return Err("group_nesting_depth: at most 8".into());
        }
        if self.timeout.is_zero() {
            return Err("timeout: must be more than zero".into());
        }
        Ok(())
    }
}

impl PostgresConfig {
    /// Errors start with the field name.
    fn validate(&self) -> Result<(), String> {
        if !(self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://"))
        {
            return Err("database_url: must start with postgres:// or postgresql://".into());
        }
        // The id/secret split is at the first '.', and the prefix is matched literally.
        if self.prefix.is_empty() || self.prefix.contains('.') {
            return Err("prefix: must be non-empty and contain no '.'".into());
        }
        if self.max_connections == 0 {
            return Err("max_connections: must be at least 1".into());
        }
        if self.timeout.is_zero() {
            return Err("timeout: must be more than zero".into());
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

    #[test]
    fn ldap_and_postgres_sources_validate() {
        let ldap = "[[sources]]\nname='dir'\ntype='ldap'\nurl='ldap://127.0.0.1:389'\n\
                    bind_dn='cn=svc'\nbind_password_file='pw'\nuser_base='dc=x'\n";
        let c = Config::parse(ldap, Path::new("/etc")).unwrap();
        match &c.sources[0] {
            SourceConfig::Ldap(l) => {
                assert_eq!(l.user_filter, "(uid={user})");
                assert_eq!(l.bind_password_file, Path::new("/etc/pw"));
                assert_eq!(l.timeout, Duration::from_secs(2));
            }
            other => panic!("unexpected source {other:?}"),
        }
        let e =
            Config::parse(&format!("{ldap}user_filter='(uid=x)'\n"), Path::new(".")).unwrap_err();
        assert!(e.contains("sources[0].user_filter"), "{e}");
        let e = Config::parse(
            &format!("{ldap}starttls=true\n").replace("ldap://", "ldaps://"),
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.contains("sources[0].starttls"), "{e}");
        let pg = "[[sources]]\nname='db'\ntype='postgres'\n\
                  database_url='postgres://u@127.0.0.1/db'\nsecret_key_file='k'\n";
        let c = Config::parse(pg, Path::new(".")).unwrap();
        match &c.sources[0] {
            SourceConfig::Postgres(p) => assert_eq!(p.prefix, "kad_"),
            other => panic!("unexpected source {other:?}"),
        }
        let e = Config::parse(&format!("{pg}prefix='a.b'\n"), Path::new(".")).unwrap_err();
        assert!(e.contains("sources[0].prefix"), "{e}");
        let e = Config::parse(&format!("{pg}max_connection=3\n"), Path::new(".")).unwrap_err();
        assert!(e.contains("max_connection"), "{e}");
    }

    #[test]
    fn documented_ldap_and_postgres_examples_parse() {
        let doc = include_str!("../../docs/configuration.md");
        let blocks: Vec<&str> = doc
            .split("```toml\n")
            .skip(1)
            .filter_map(|b| b.split_once("```").map(|(toml, _)| toml))
            .filter(|b| b.contains("type = \"ldap\"") || b.contains("type = \"postgres\""))
            .collect();
        assert_eq!(blocks.len(), 2, "one example per source");
        for b in blocks {
            Config::parse(b, Path::new("/etc")).unwrap_or_else(|e| panic!("{e}\n{b}"));
        }
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

    #[test]
    fn clients_allowed_to_revoke_are_admins() {
        let text = format!(
            "[admin]\nallowed_clients = ['break-glass']\n\
             [tls]\ncert='c'\nkey='k'\nclient_ca='ca'\n\
             [clients.edge]\nmethods = ['Authenticate']\n\
             [clients.ops]\nmethods = ['Authenticate', 'RevokeUser']\n{SOURCE}"
        );
        let c = Config::parse(&text, Path::new(".")).unwrap();
        assert_eq!(c.admin_clients(), vec!["break-glass", "ops"]);
    }

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
