//! authd's configuration: one typed struct loaded from a TOML file and validated at start-up.
//! It composes the parts other modules own (each source's `Config` in `source::*`, the
//! mapping, the cluster policy, the `[[examples]]`); every error names the file and the
//! offending field ([`FieldError`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use authd_runtime::config::{millis, secs};
use serde::Deserialize;
use toml::de::DeValue;
use toml::Spanned;

use crate::check::Example;
pub use crate::field::FieldError;
use crate::field::Removed;
use crate::policy::{ClusterPolicy, ANY_CLUSTER};
use crate::source::common::resolve;
pub use crate::source::SourceConfig;
pub use crate::throttle::ThrottleConfig;

/// A configuration file authd could not use.
pub type ConfigError = authd_runtime::config::ConfigError<Invalid>;

/// Why configuration text was refused.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    /// Not TOML, an unknown or removed field, or a value of the wrong type; the message
    /// gives the line and the field.
    #[error(transparent)]
    Syntax(#[from] toml::de::Error),
    /// A source table that does not read; `field` is its path (`sources[1].url`, or just
    /// `sources[1]`), and the message gives the line.
    #[error("{field}: {error}")]
    Source {
        index: usize,
        field: String,
        error: Box<toml::de::Error>,
    },
    /// Well-formed, but a value is not acceptable.
    #[error(transparent)]
    Field(#[from] FieldError),
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
    #[serde(default = "secs::<25>", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    #[serde(default)]
    pub cache: CacheConfig,
    /// Identity sources, asked in order; each only for tokens it owns.
    pub sources: Vec<SourceConfig>,
    /// Per-cluster policy, and the set of clusters served: a cluster not listed is refused,
    /// unless `"*"` is listed (the policy for every other name).
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
    /// How revocations behave.
    #[serde(default)]
    pub revocation: RevocationConfig,
    /// How Envoy's external authorization `Check` reads requests and answers.
    #[serde(default)]
    pub ext_authz: ExtAuthzConfig,
    /// The audit log: one JSON line per decision.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Throttling of failed verifications (on by default; see `throttle.rs`).
    #[serde(default)]
    pub throttle: ThrottleConfig,
    /// Login sessions (`session.rs`): people exchange a directory password for a session
    /// and the session for short-lived tokens bound to one cluster. Off when absent.
    pub sessions: Option<SessionsConfig>,
}

/// `[sessions]`: login sessions and the tokens they issue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsConfig {
    /// The `[[sources]]` entry (by name, an `ldap` or `basic_auth` source, or for a demo a
    /// `token_file`, whose users' tokens are their passwords) that checks passwords at Login; an LDAP source is also asked again at every Token (the account
    /// still exists, its current groups).
    pub password_source: String,
    /// The longest a session lives, however much it is used.
    #[serde(default = "secs::<32400>", with = "humantime_serde")]
    pub max_lifetime: Duration,
    /// A session not used (no Token) for this long ends.
    #[serde(default = "secs::<7200>", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// The lifetime of an issued token (never past its session's end).
    #[serde(default = "secs::<300>", with = "humantime_serde")]
    pub token_lifetime: Duration,
    /// Failed logins for one username within `failed_login_window` after which its logins
    /// are refused (RESOURCE_EXHAUSTED) until the window ends, password unchecked.
    #[serde(default = "default_failed_per_user")]
    pub max_failed_logins_per_user: u32,
    /// The same, per client address (as the edge saw it).
    #[serde(default = "default_failed_per_address")]
    pub max_failed_logins_per_address: u32,
    /// The window failed logins are counted in, from the first.
    #[serde(default = "secs::<300>", with = "humantime_serde")]
    pub failed_login_window: Duration,
}

fn default_failed_per_user() -> u32 {
    5
}

fn default_failed_per_address() -> u32 {
    20
}

impl SessionsConfig {
    fn validate(&self, sources: &[SourceConfig]) -> Result<(), FieldError> {
        match sources.iter().find(|s| s.name() == self.password_source) {
            Some(SourceConfig::Ldap(_) | SourceConfig::BasicAuth(_) | SourceConfig::TokenFile(_)) => {
            }
            Some(_) => {
                return Err(FieldError::new(
                    "sessions.password_source",
                    format!(
                        "{:?} is not an ldap, basic_auth or token_file source (only those check passwords)",
                        self.password_source
                    ),
                ))
            }
            None => {
                return Err(FieldError::new(
                    "sessions.password_source",
                    format!("no source is named {:?}", self.password_source),
                ))
            }
        }
        for (field, value) in [
            ("sessions.max_lifetime", self.max_lifetime),
            ("sessions.idle_timeout", self.idle_timeout),
            ("sessions.token_lifetime", self.token_lifetime),
            ("sessions.failed_login_window", self.failed_login_window),
        ] {
            if value < Duration::from_secs(1) {
                return Err(FieldError::new(field, "must be at least 1s"));
            }
        }
        if self.token_lifetime > self.max_lifetime {
            return Err(FieldError::new(
                "sessions.token_lifetime",
                "must not be longer than sessions.max_lifetime",
            ));
        }
        for (field, value) in [
            (
                "sessions.max_failed_logins_per_user",
                self.max_failed_logins_per_user,
            ),
            (
                "sessions.max_failed_logins_per_address",
                self.max_failed_logins_per_address,
            ),
        ] {
            if value == 0 {
                return Err(FieldError::new(field, "must be at least 1"));
            }
        }
        Ok(())
    }
}

/// `[audit]`: one JSON line per decision (see `audit.rs`). Off without `path`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// File the lines are appended to (created 0600), or `-` for stdout.
    pub path: Option<PathBuf>,
    /// Write the username and groups of each decision (off: only the keyed token id).
    #[serde(default = "yes")]
    pub include_identity: bool,
    /// Records waiting for the writer; beyond this they are dropped and counted, never
    /// waited for.
    #[serde(default = "default_audit_queue")]
    pub queue: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            path: None,
            include_identity: true,
            queue: default_audit_queue(),
        }
    }
}

fn yes() -> bool {
    true
}

fn default_audit_queue() -> usize {
    65_536
}

/// `[revocation]`: the deny-list (see `cache/revocations.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationConfig {
    /// How long `RevokeToken` denies a token whose own expiry authd cannot read (anything
    /// but a JWT), unless the call says until when. Remove the token from its source
    /// within this time, or revoke it again.
    #[serde(default = "secs::<604800>", with = "humantime_serde")]
    pub max_token_ttl: Duration,
    /// Between full reloads of the revocation list from Redis on every replica: the
    /// backstop for a lost pub/sub message.
    #[serde(default = "secs::<10>", with = "humantime_serde")]
    pub resync_every: Duration,
}

impl Default for RevocationConfig {
    fn default() -> Self {
        Self {
            max_token_ttl: secs::<604800>(),
            resync_every: secs::<10>(),
        }
    }
}

impl Config {
    /// The defaults for everything, serving `sources`; for configurations built in code
    /// (`kube-authd up`). Call [`Config::finish`] after setting fields.
    pub fn with_sources(sources: Vec<SourceConfig>) -> Self {
        Self {
            listen: default_listen(),
            admin_listen: None,
            shutdown_grace: secs::<25>(),
            cache: CacheConfig::default(),
            sources,
            clusters: BTreeMap::new(),
            examples: Vec::new(),
            tls: None,
            clients: BTreeMap::new(),
            max_concurrent_calls: default_max_concurrent_calls(),
            max_concurrent_calls_per_connection: default_max_calls_per_connection(),
            admin: AdminConfig::default(),
            revocation: RevocationConfig::default(),
            ext_authz: ExtAuthzConfig::default(),
            audit: AuditConfig::default(),
            throttle: ThrottleConfig::default(),
            sessions: None,
        }
    }
}

/// `[ext_authz]`: Envoy's `envoy.service.auth.v3.Authorization/Check` (see `ext_authz.rs`).
/// Header names are kept lower-case, as Envoy hands them over.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtAuthzConfig {
    /// The request header holding `Bearer <token>`.
    #[serde(default = "default_token_header")]
    pub token_header: String,
    /// Forward the token header to the upstream service. Off: it is removed, so a service
    /// behind Envoy never holds a credential it could replay.
    #[serde(default)]
    pub keep_token_header: bool,
    /// The key of the route's `context_extensions` naming the cluster whose policy applies.
    #[serde(default = "default_cluster_extension")]
    pub cluster_extension: String,
    /// The cluster whose policy applies when the route sets no such extension.
    #[serde(default = "default_ext_authz_cluster")]
    pub default_cluster: String,
    /// Request headers carrying the identity to the upstream service.
    #[serde(default = "default_user_header")]
    pub user_header: String,
    #[serde(default = "default_uid_header")]
    pub uid_header: String,
    /// The groups, comma-separated, in one header.
    #[serde(default = "default_groups_header")]
    pub groups_header: String,
}

impl Default for ExtAuthzConfig {
    fn default() -> Self {
        Self {
            token_header: default_token_header(),
            keep_token_header: false,
            cluster_extension: default_cluster_extension(),
            default_cluster: default_ext_authz_cluster(),
            user_header: default_user_header(),
            uid_header: default_uid_header(),
            groups_header: default_groups_header(),
        }
    }
}

fn default_token_header() -> String {
    "authorization".into()
}
fn default_cluster_extension() -> String {
    "cluster".into()
}
fn default_ext_authz_cluster() -> String {
    "default".into()
}
fn default_user_header() -> String {
    "x-kube-authd-user".into()
}
fn default_uid_header() -> String {
    "x-kube-authd-uid".into()
}
fn default_groups_header() -> String {
    "x-kube-authd-groups".into()
}

impl ExtAuthzConfig {
    /// The header names, lower-cased: Envoy hands request headers over in lower case.
    fn normalize(&mut self) {
        for h in [
            &mut self.token_header,
            &mut self.user_header,
            &mut self.uid_header,
            &mut self.groups_header,
        ] {
            h.make_ascii_lowercase();
        }
    }

    fn validate(&self) -> Result<(), FieldError> {
        let headers = [
            ("ext_authz.token_header", &self.token_header),
            ("ext_authz.user_header", &self.user_header),
            ("ext_authz.uid_header", &self.uid_header),
            ("ext_authz.groups_header", &self.groups_header),
        ];
        for (i, (field, name)) in headers.iter().enumerate() {
            // An HTTP field name (RFC 9110 token); Envoy refuses to touch pseudo-headers
            // and Host, so an identity there would never reach the service.
            let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            if name.is_empty() || !name.bytes().all(token) {
                return Err(FieldError::new(
                    *field,
                    format!("{name:?} is not an HTTP header name"),
                ));
            }
            if name.as_str() == "host" {
                return Err(FieldError::new(*field, "must not be host"));
            }
            if let Some((other, _)) = headers[..i].iter().find(|(_, n)| n == name) {
                return Err(FieldError::new(
                    *field,
                    format!("{name:?} is already {other}"),
                ));
            }
        }
        for (field, value) in [
            ("ext_authz.cluster_extension", &self.cluster_extension),
            ("ext_authz.default_cluster", &self.default_cluster),
        ] {
            if value.trim().is_empty() {
                return Err(FieldError::new(field, "must not be empty"));
            }
        }
        Ok(())
    }
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
    #[serde(default = "secs::<10>", with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

/// RPC method names a `[clients.NAME]` entry may list.
pub const KNOWN_METHODS: &[&str] = &[
    "Authenticate",
    "RevokeToken",
    "RevokeUser",
    "RevokeCredential",
    "Unrevoke",
    "ListRevocations",
    "ThrottleStatus",
    "ThrottleReset",
    "ListSessions",
    "EndSession",
    "Login",
    "Token",
    "Logout",
    "ServerReflectionInfo",
    // Envoy's envoy.service.auth.v3.Authorization/Check (ext_authz).
    "Check",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAccess {
    /// The RPCs (method names, e.g. "Authenticate") this client may call.
    pub methods: Vec<String>,
    /// The clusters this client may ask `Authenticate` (or, through a route's context
    /// extension, `Check`) for (`"*"`: every one authd serves); required with either.
    /// Another cluster is PERMISSION_DENIED.
    #[serde(default)]
    pub clusters: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// How long a positive verdict is cached.
    #[serde(default = "secs::<120>", with = "humantime_serde")]
    pub positive_ttl: Duration,
    /// How long a negative verdict is cached.
    #[serde(default = "secs::<30>", with = "humantime_serde")]
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
    /// Keys being rotated out (each at least 32 bytes): revocations made under them keep
    /// holding, and revocations made now are written under them too, so replicas that
    /// still use one as their current key refuse what this one revoked. See the rotation
    /// runbook in docs/operations.md.
    #[serde(default)]
    pub previous_hmac_key_files: Vec<PathBuf>,
    /// With a shared level, how long a replica trusts its in-process copy before asking
    /// Redis again (bounds the effect of a missed revocation message).
    #[serde(default = "secs::<10>", with = "humantime_serde")]
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
    /// Accept `redis://` (plaintext) to a host other than this machine (an on-path attacker
    /// can read and forge cached verdicts). Off: a start-up error.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Prepended to every key and the revocation channel.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Longest a review waits for one Redis command before answering from the sources.
    #[serde(default = "millis::<100>", with = "humantime_serde")]
    pub timeout: Duration,
    /// Longest one connection attempt may take.
    #[serde(default = "secs::<1>", with = "humantime_serde")]
    pub connect_timeout: Duration,
}

/// Callers allowed to use the Admin service: the holders of the shared secret, and the
/// clients whose `[clients.NAME] methods` list a Revoke RPC. With neither, every call is
/// refused.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Client certificate identities allowed to call Admin. Not a setting: filled at load
    /// from `[clients]`, the one place a client's RPCs are listed.
    #[serde(skip)]
    pub allowed_clients: Vec<String>,
    /// File holding a shared admin secret, presented as `authorization: Bearer <secret>`.
    pub token_file: Option<PathBuf>,
    /// Removed: a second list of admin clients beside `[clients]`.
    #[serde(
        default,
        rename = "allowed_clients",
        deserialize_with = "removed_allowed_clients"
    )]
    _allowed_clients: Removed,
}

fn removed_allowed_clients<'de, D: serde::Deserializer<'de>>(_: D) -> Result<Removed, D::Error> {
    Err(serde::de::Error::custom(
        "admin.allowed_clients was removed: give each admin client a [clients.NAME] table \
         with methods = [\"RevokeToken\", \"RevokeUser\"] (add \"Authenticate\" if it also \
         reviews tokens); with any [clients] table, unlisted clients are refused",
    ))
}

/// The Admin service's methods.
fn is_admin_method(method: &str) -> bool {
    method.starts_with("Revoke")
        || method.starts_with("Throttle")
        || method == "Unrevoke"
        || method == "ListRevocations"
}

impl Config {
    /// Admin callers by certificate: every `[clients.NAME]` whose `methods` list a Revoke
    /// RPC (the access layer has already checked the exact method).
    fn derive_admin_clients(&mut self) {
        self.admin.allowed_clients = self
            .clients
            .iter()
            .filter(|(_, access)| access.methods.iter().any(|m| is_admin_method(m)))
            .map(|(name, _)| name.clone())
            .collect();
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            positive_ttl: secs::<120>(),
            negative_ttl: secs::<30>(),
            stale_if_error: Duration::ZERO,
            max_entries: default_max_entries(),
            hmac_key_file: None,
            previous_hmac_key_files: Vec::new(),
            local_ttl: secs::<10>(),
            redis: None,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50051))
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
fn default_key_prefix() -> String {
    "kube-authd:".into()
}

/// Points an error inside `[[sources]]` at its source and field (see
/// [`crate::source::locate_error`]); any other error is kept as it is.
fn locate(text: &str, error: toml::de::Error) -> Invalid {
    let Ok(doc) = toml::de::DeTable::parse(text) else {
        return error.into();
    };
    let sources = doc.into_inner().remove("sources").map(Spanned::into_inner);
    let Some(DeValue::Array(sources)) = sources else {
        return error.into();
    };
    for (index, table) in sources.into_iter().enumerate() {
        if let Some((field, mut error)) = crate::source::locate_error(table) {
            error.set_input(Some(text));
            let field = match field {
                Some(f) => format!("sources[{index}].{f}"),
                None => format!("sources[{index}]"),
            };
            return Invalid::Source {
                index,
                field,
                error: Box::new(error),
            };
        }
    }
    error.into()
}

impl Config {
    /// Reads, parses and validates; relative paths are resolved against the file's folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        authd_runtime::config::load(path, Self::parse)
    }

    /// Parses and validates TOML text; `base` anchors relative paths.
    pub fn parse(text: &str, base: &Path) -> Result<Self, Invalid> {
        let config: Config = toml::from_str(text).map_err(|e| locate(text, e))?;
        Ok(config.finish(base)?)
    }

    /// Completes a configuration read or built in code: anchors relative paths at `base`,
    /// validates, and derives what other settings imply.
    pub fn finish(mut self, base: &Path) -> Result<Self, FieldError> {
        self.resolve_paths(base);
        self.ext_authz.normalize();
        self.validate()?;
        self.derive_admin_clients();
        Ok(self)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| resolve(base, p);
        if let Some(p) = self.cache.hmac_key_file.as_mut() {
            fix(p);
        }
        self.cache.previous_hmac_key_files.iter_mut().for_each(fix);
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
        if let Some(p) = self.audit.path.as_mut().filter(|p| p.as_os_str() != "-") {
            fix(p);
        }
        for s in &mut self.sources {
            s.resolve_paths(base);
        }
        if let Some(t) = self.tls.as_mut() {
            fix(&mut t.cert);
            fix(&mut t.key);
            if let Some(ca) = t.client_ca.as_mut() {
                fix(ca);
            }
        }
    }

    /// Checks every value and how values fit together; the error names the field.
    fn validate(&self) -> Result<(), FieldError> {
        if self.sources.is_empty() {
            return Err(FieldError::new(
                "sources",
                "at least one identity source is required",
            ));
        }
        let mut seen = BTreeMap::new();
        for (i, s) in self.sources.iter().enumerate() {
            let at = format!("sources[{i}]");
            s.validate().map_err(|e| e.within(&at))?;
            if let Some(j) = seen.insert(s.name(), i) {
                return Err(FieldError::new(
                    format!("{at}.name"),
                    format!("{:?} is already used by sources[{j}]", s.name()),
                ));
            }
        }
        if self.cache.positive_ttl.is_zero() && !self.cache.stale_if_error.is_zero() {
            return Err(FieldError::new(
                "cache.stale_if_error",
                "needs a non-zero cache.positive_ttl",
            ));
        }
        if let Some(r) = &self.cache.redis {
            self.validate_redis(r)?;
        }
        if !self.cache.previous_hmac_key_files.is_empty() && self.cache.hmac_key_file.is_none() {
            return Err(FieldError::new(
                "cache.previous_hmac_key_files",
                "needs cache.hmac_key_file (the current key of the ring)",
            ));
        }
        if self.audit.path.is_some() {
            if self.cache.hmac_key_file.is_none() {
                return Err(FieldError::new(
                    "cache.hmac_key_file",
                    "required when audit.path is set (the audit log names credentials by \
                     their keyed id, which `kube-authd audit hash` must reproduce)",
                ));
            }
            if self.audit.queue == 0 {
                return Err(FieldError::new("audit.queue", "must be at least 1"));
            }
        }
        for (field, value) in [
            ("revocation.max_token_ttl", self.revocation.max_token_ttl),
            ("revocation.resync_every", self.revocation.resync_every),
        ] {
            if value.is_zero() {
                return Err(FieldError::new(field, "must be more than zero"));
            }
        }
        self.ext_authz.validate()?;
        self.throttle.validate(&self.sources)?;
        if let Some(sessions) = &self.sessions {
            sessions.validate(&self.sources)?;
        }
        self.validate_access()
    }

    fn validate_access(&self) -> Result<(), FieldError> {
        if self.max_concurrent_calls == 0 {
            return Err(FieldError::new(
                "max_concurrent_calls",
                "must be greater than 0",
            ));
        }
        if self.max_concurrent_calls_per_connection == 0 {
            return Err(FieldError::new(
                "max_concurrent_calls_per_connection",
                "must be greater than 0",
            ));
        }
        let mutual = self.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        if !self.clients.is_empty() && !mutual {
            return Err(FieldError::new(
                "clients",
                "allow-lists need tls.client_ca (client identities come from client certificates)",
            ));
        }
        for (name, c) in &self.clients {
            for m in &c.methods {
                if !KNOWN_METHODS.contains(&m.as_str()) {
                    return Err(FieldError::new(
                        format!("clients.{name}.methods"),
                        format!("unknown RPC {m:?} (known: {})", KNOWN_METHODS.join(", ")),
                    ));
                }
            }
            self.validate_client_clusters(name, c)?;
        }
        self.validate_clusters()
    }

    /// A client that may call `Authenticate` or `Check` names its clusters, each one
    /// served here.
    fn validate_client_clusters(&self, name: &str, c: &ClientAccess) -> Result<(), FieldError> {
        let field = || format!("clients.{name}.clusters");
        if let Some(m) = c
            .methods
            .iter()
            .find(|m| *m == "Authenticate" || *m == "Check")
        {
            if c.clusters.is_empty() {
                return Err(FieldError::new(
                    field(),
                    format!(
                        "required with {m}: the clusters this client may ask for \
                         (\"*\" for every cluster authd serves)"
                    ),
                ));
            }
        }
        let served = |cluster: &str| {
            cluster == ANY_CLUSTER
                || self.clusters.contains_key(cluster)
                || self.clusters.contains_key(ANY_CLUSTER)
        };
        match c.clusters.iter().find(|cluster| !served(cluster)) {
            Some(unknown) => Err(FieldError::new(
                field(),
                format!("{unknown:?} is not a configured cluster (no [clusters.{unknown}])"),
            )),
            None => Ok(()),
        }
    }

    /// Cluster names are the metric labels and the keys kube-apiserver's edge sends.
    fn validate_clusters(&self) -> Result<(), FieldError> {
        if self.clusters.keys().any(|k| k.trim().is_empty()) {
            return Err(FieldError::new(
                "clusters",
                "a cluster name must not be empty",
            ));
        }
        if self.clusters.is_empty() {
            tracing::warn!(
                "no [clusters] configured: every review is refused (declare the edge's \
                 default cluster, [clusters.default], or [clusters.\"*\"] for any name)"
            );
        }
        Ok(())
    }

    fn validate_redis(&self, r: &RedisConfig) -> Result<(), FieldError> {
        if self.cache.hmac_key_file.is_none() {
            return Err(FieldError::new(
                "cache.hmac_key_file",
                "required when cache.redis is set (every replica must use the same key)",
            ));
        }
        if self.cache.local_ttl.is_zero() {
            return Err(FieldError::new(
                "cache.local_ttl",
                "must be greater than zero",
            ));
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
                return Err(FieldError::new(
                    "cache.redis",
                    "set either url or cluster_urls, not both",
                ))
            }
            (None, true) => {
                return Err(FieldError::new(
                    "cache.redis",
                    "url or cluster_urls is required",
                ))
            }
        };
        for (field, url) in &urls {
            let tls = if url.starts_with("rediss://") {
                true
            } else if url.starts_with("redis://") {
                false
            } else {
                return Err(FieldError::new(
                    field,
                    "must start with redis:// or rediss://",
                ));
            };
            // The URL is logged and shown in errors; a password belongs in password_file.
            let authority = url.split_once("://").map_or("", |(_, rest)| rest);
            let authority = authority.split('/').next().unwrap_or("");
            if let Some((userinfo, _)) = authority.rsplit_once('@') {
                if userinfo.contains(':') {
                    return Err(FieldError::new(
                        field,
                        "must not contain a password; use cache.redis.password_file",
                    ));
                }
            }
            if r.ca_file.is_some() && !tls {
                return Err(FieldError::new(
                    "cache.redis.ca_file",
                    format!("only used with rediss:// URLs, but {field} is redis://"),
                ));
            }
        }
        if r.password_file.is_some() && r.username.is_none() {
            // Redis's legacy AUTH <password> is the "default" user; say so explicitly.
            return Err(FieldError::new(
                "cache.redis.username",
                "required with password_file (use \"default\" for a requirepass server)",
            ));
        }
        if r.timeout.is_zero() {
            return Err(FieldError::new(
                "cache.redis.timeout",
                "must be greater than zero",
            ));
        }
        if r.connect_timeout.is_zero() {
            return Err(FieldError::new(
                "cache.redis.connect_timeout",
                "must be greater than zero",
            ));
        }
        // Cached verdicts are identities: forged ones would authenticate anyone.
        for (field, url) in urls.iter().filter(|(_, u)| u.starts_with("redis://")) {
            let host = reqwest::Url::parse(url)
                .map_err(|e| FieldError::new(field, format!("not a valid URL: {e}")))?
                .host_str()
                .unwrap_or("")
                .to_owned();
            crate::source::common::check_plaintext(
                field,
                &host,
                "redis:// (cached verdicts sent without TLS)",
                "cache.redis.allow_plaintext",
                r.allow_plaintext,
            )?;
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
        let e = Config::parse("lisen = \"x\"\nsources = []\n", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(e.contains("lisen"), "{e}");
        let e = Config::parse("sources = []\n", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(e.contains("sources"), "{e}");
        let dup = "[[sources]]\nname='a'\ntype='token_file'\npath='x'\n\
                   [[sources]]\nname='a'\ntype='token_file'\npath='y'\n";
        let e = Config::parse(dup, Path::new(".")).unwrap_err().to_string();
        assert!(e.contains("sources[1].name"), "{e}");
        let e = Config::parse(
            "[cache]\npositive_ttl = \"soon\"\n[[sources]]\nname='a'\ntype='token_file'\npath='x'\n",
            Path::new("."),
        )
        .unwrap_err().to_string();
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
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }

    #[test]
    fn source_typos_point_at_their_line() {
        let two = "[[sources]]\nname='a'\ntype='token_file'\npath='x'\n\
                   [[sources]]\nname='b'\ntype='token_file'\npaht='x'\n";
        let e = Config::parse(two, Path::new(".")).unwrap_err();
        assert!(matches!(e, Invalid::Source { index: 1, .. }), "{e:?}");
        let e = e.to_string();
        assert!(e.starts_with("sources[1].paht: "), "{e}");
        assert!(
            e.contains("line 8") && e.contains("unknown field `paht`"),
            "{e}"
        );
        let nested = "[[sources]]\nname='a'\ntype='token_file'\npath='x'\n\
                      [sources.mapping]\nusername='{user}'\ngroup_prefx='x:'\n";
        let e = Config::parse(nested, Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("sources[0].mapping.group_prefx: "), "{e}");
        assert!(e.contains("line 7"), "{e}");
    }

    #[test]
    fn the_old_jwt_prefixes_say_what_to_write() {
        let jwt = "[[sources]]\nname='j'\ntype='jwt'\nissuer='i'\naudiences=['a']\n\
                   algorithms=['ES256']\nkeys=['k']\n";
        let e = Config::parse(&format!("{jwt}username_prefix='p:'\n"), Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 8") && e.contains("username_prefix was removed"),
            "{e}"
        );
        assert!(e.contains("mapping.username = \"<prefix>{user}\""), "{e}");
        let e = Config::parse(&format!("{jwt}groups_prefix='p:'\n"), Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(e.contains("mapping.group_prefix"), "{e}");
        assert!(Config::parse(jwt, Path::new(".")).is_ok());
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
        let e = Config::parse(&format!("{ldap}user_filter='(uid=x)'\n"), Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(e.contains("sources[0].user_filter"), "{e}");
        let e = Config::parse(
            &format!("{ldap}starttls=true\n").replace("ldap://", "ldaps://"),
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("sources[0].starttls"), "{e}");
        let e = Config::parse(&ldap.replace("ldap://", "http://"), Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("sources[0].url: ") && e.contains("line 4"),
            "{e}"
        );
        assert!(e.contains("must start with ldap:// or ldaps://"), "{e}");
        let pg = "[[sources]]\nname='db'\ntype='postgres'\n\
                  database_url='postgres://u@127.0.0.1/db'\nsecret_key_file='k'\n";
        let c = Config::parse(pg, Path::new(".")).unwrap();
        match &c.sources[0] {
            SourceConfig::Postgres(p) => assert_eq!(p.prefix, "kad_"),
            other => panic!("unexpected source {other:?}"),
        }
        let e = Config::parse(&format!("{pg}prefix='a.b'\n"), Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(e.contains("sources[0].prefix"), "{e}");
        let e = Config::parse(&format!("{pg}max_connection=3\n"), Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_connection"), "{e}");
    }

    #[test]
    fn sessions_name_a_password_source() {
        let ldap = "[[sources]]\nname='dir'\ntype='ldap'\nurl='ldap://127.0.0.1'\n\
                    bind_dn='cn=x'\nbind_password_file='pw'\nuser_base='dc=x'\n\
                    [[sources]]\nname='jwt'\ntype='jwt'\nissuer='i'\n\
                    audiences=['a']\nalgorithms=['ES256']\nkeys=['k']\n";
        let c = Config::parse(
            &format!("{ldap}[sessions]\npassword_source='dir'\n"),
            Path::new("."),
        )
        .unwrap();
        let s = c.sessions.unwrap();
        assert_eq!(s.max_lifetime, Duration::from_secs(9 * 3600));
        assert_eq!(s.token_lifetime, Duration::from_secs(300));
        for (extra, field) in [
            ("password_source='jwt'", "sessions.password_source"),
            ("password_source='nope'", "sessions.password_source"),
            (
                "password_source='dir'\ntoken_lifetime='10h'",
                "sessions.token_lifetime",
            ),
            (
                "password_source='dir'\nidle_timeout='0s'",
                "sessions.idle_timeout",
            ),
            (
                "password_source='dir'\nmax_failed_logins_per_user=0",
                "sessions.max_failed_logins_per_user",
            ),
        ] {
            let e = Config::parse(&format!("{ldap}[sessions]\n{extra}\n"), Path::new("."))
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{extra}: {e}");
        }
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
            &format!("[tls]\ncert='a.crt'\nkey='a.key'\nclient_ca='ca.crt'\n[clients.edge]\nmethods=['Authenticate']\nclusters=['*']\n{SOURCE}"),
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
        .unwrap_err()
        .to_string();
        assert!(e.contains("tls.client_ca"), "{e}");
        let e = Config::parse(
            &format!("[tls]\ncert='a'\nkey='b'\nclient_ca='c'\n[clients.ops]\nmethods=['Revoke']\n{SOURCE}"),
            Path::new("."),
        )
        .unwrap_err().to_string();
        assert!(e.contains("clients.ops.methods"), "{e}");
        let e = Config::parse(
            &format!("max_concurrent_calls = 0\n{SOURCE}"),
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("max_concurrent_calls"), "{e}");
    }

    #[test]
    fn clients_allowed_to_revoke_are_admins() {
        let clients = "[tls]\ncert='c'\nkey='k'\nclient_ca='ca'\n\
             [clients.break-glass]\nmethods = ['RevokeToken', 'RevokeUser']\n\
             [clients.edge]\nmethods = ['Authenticate']\nclusters = ['*']\n\
             [clients.ops]\nmethods = ['Authenticate', 'RevokeUser']\nclusters = ['*']\n";
        let c = Config::parse(&format!("{clients}{SOURCE}"), Path::new(".")).unwrap();
        assert_eq!(c.admin.allowed_clients, vec!["break-glass", "ops"]);
    }

    #[test]
    fn a_client_names_the_clusters_it_may_ask_for() {
        let tls = "[tls]\ncert='c'\nkey='k'\nclient_ca='ca'\n";
        let parse = |rest: &str| Config::parse(&format!("{tls}{rest}{SOURCE}"), Path::new("."));
        let e = parse("[clients.edge]\nmethods = ['Authenticate']\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("clients.edge.clusters") && e.contains("required"),
            "{e}"
        );
        let e = parse(
            "[clients.edge]\nmethods = ['Authenticate']\nclusters = ['prd']\n[clusters.prod]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("clients.edge.clusters") && e.contains("\"prd\""),
            "{e}"
        );
        let c = parse(
            "[clients.edge]\nmethods = ['Authenticate']\nclusters = ['prod']\n[clusters.prod]\n",
        )
        .unwrap();
        assert_eq!(c.clients["edge"].clusters, ["prod"]);
        // Only a client that may call Authenticate needs clusters.
        assert!(parse("[clients.ops]\nmethods = ['RevokeUser']\n").is_ok());
        let e = parse("[clusters.'']\n").unwrap_err().to_string();
        assert!(e.contains("clusters") && e.contains("empty"), "{e}");
    }

    #[test]
    fn ext_authz_headers_are_names_kept_lower_case_and_distinct() {
        let c = Config::parse(SOURCE, Path::new(".")).unwrap();
        assert_eq!(c.ext_authz.token_header, "authorization");
        assert_eq!(c.ext_authz.default_cluster, "default");
        assert!(!c.ext_authz.keep_token_header);
        let c = Config::parse(
            &format!("[ext_authz]\ntoken_header = 'X-Api-Token'\nuser_header = 'X-User'\n{SOURCE}"),
            Path::new("."),
        )
        .unwrap();
        assert_eq!(c.ext_authz.token_header, "x-api-token");
        assert_eq!(c.ext_authz.user_header, "x-user");
        for (table, field) in [
            ("user_header = 'x user'", "ext_authz.user_header"),
            ("uid_header = ''", "ext_authz.uid_header"),
            ("groups_header = ':path'", "ext_authz.groups_header"),
            ("user_header = 'Host'", "ext_authz.user_header"),
            (
                "groups_header = 'X-Kube-Authd-User'",
                "ext_authz.groups_header",
            ),
            ("token_header = 'x-kube-authd-uid'", "ext_authz.uid_header"),
            ("default_cluster = ' '", "ext_authz.default_cluster"),
            ("cluster_extension = ''", "ext_authz.cluster_extension"),
            ("user_heder = 'x'", "user_heder"),
        ] {
            let e = Config::parse(&format!("[ext_authz]\n{table}\n{SOURCE}"), Path::new("."))
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{table}: {e}");
        }
    }

    /// The authd side of docs/envoy.md loads as it is written.
    #[test]
    fn the_documented_envoy_configuration_parses() {
        let doc = include_str!("../../docs/envoy.md");
        let block = doc
            .split("```toml\n")
            .nth(1)
            .and_then(|b| b.split_once("```"))
            .map(|(toml, _)| toml)
            .expect("a TOML block in docs/envoy.md");
        let c = Config::parse(&format!("{block}{SOURCE}"), Path::new("/etc"))
            .unwrap_or_else(|e| panic!("{e}\n{block}"));
        assert_eq!(c.clients["envoy"].methods, ["Check"]);
        assert_eq!(c.ext_authz.cluster_extension, "cluster");
    }

    #[test]
    fn a_check_client_names_its_clusters() {
        let tls = "[tls]\ncert='c'\nkey='k'\nclient_ca='ca'\n[clusters.default]\n";
        let parse = |rest: &str| Config::parse(&format!("{tls}{rest}{SOURCE}"), Path::new("."));
        let e = parse("[clients.envoy]\nmethods = ['Check']\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("clients.envoy.clusters") && e.contains("required with Check"),
            "{e}"
        );
        assert!(parse("[clients.envoy]\nmethods = ['Check']\nclusters = ['default']\n").is_ok());
    }

    #[test]
    fn the_old_admin_list_says_what_to_write() {
        let text = format!("[admin]\nallowed_clients = ['ops']\n{SOURCE}");
        let e = Config::parse(&text, Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(e.contains("admin.allowed_clients was removed"), "{e}");
        assert!(e.contains("[clients.NAME]"), "{e}");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn redis_needs_a_shared_hmac_key() {
        let e = Config::parse(
            &format!("[cache.redis]\nurl='redis://127.0.0.1:1'\n{SOURCE}"),
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
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

    /// Each remote transport without TLS is a load error naming the field and the source's
    /// `allow_plaintext`; loopback, unix sockets, TLS and the opt-out load.
    #[test]
    fn plaintext_sources_are_for_loopback_or_the_opt_out() {
        let jwt = |url: &str| {
            format!(
                "type='jwt'\nissuer='i'\naudiences=['a']\nalgorithms=['RS256']\njwks_url='{url}'"
            )
        };
        let basic = |url: &str| format!("type='basic_auth'\nurl='{url}'");
        let ldap = |url: &str| {
            format!("type='ldap'\nurl='{url}'\nbind_dn='cn=x'\nbind_password_file='pw'\nuser_base='dc=x'")
        };
        let pg = |url: &str| format!("type='postgres'\ndatabase_url='{url}'\nsecret_key_file='k'");
        let parse = |table: &str| {
            Config::parse(&format!("[[sources]]\nname='s'\n{table}\n"), Path::new("."))
                .map_err(|e| e.to_string())
        };
        for (table, field) in [
            (jwt("http://idp.example/jwks"), "sources[0].jwks_url"),
            (jwt("http://10.1.2.3:8080/jwks"), "sources[0].jwks_url"),
            (basic("http://idp.example/basic/{user}"), "sources[0].url"),
            (ldap("ldap://dir.example:389"), "sources[0].url"),
            (
                pg("postgres://authd@db.example/authd"),
                "sources[0].database_url",
            ),
            (
                pg("postgres://authd@db.example/authd?sslmode=disable"),
                "sources[0].database_url",
            ),
            (
                pg("postgres://authd@10.0.0.9/authd?sslmode=prefer"),
                "sources[0].database_url",
            ),
        ] {
            let e = parse(&table).unwrap_err();
            assert!(e.contains(field), "{table}: {e}");
            assert!(e.contains("allow_plaintext = true"), "{table}: {e}");
            assert!(
                parse(&format!("{table}\nallow_plaintext = true")).is_ok(),
                "{table} with the opt-out"
            );
        }
        for table in [
            jwt("https://idp.example/jwks"),
            jwt("http://127.0.0.1:8080/jwks"),
            jwt("http://localhost/jwks"),
            basic("https://idp.example/basic/{user}"),
            basic("http://[::1]:9000/basic/{user}"),
            ldap("ldaps://dir.example:636"),
            format!("{}\nstarttls = true", ldap("ldap://dir.example:389")),
            ldap("ldap://127.0.0.1:389"),
            pg("postgres://authd@db.example/authd?sslmode=verify-full"),
            pg("postgres://authd@db.example/authd?sslmode=require"),
            pg("postgres://authd@127.0.0.1:5432/authd"),
            pg("postgres://authd@localhost/authd?sslmode=disable"),
            pg("postgres://authd@%2Fvar%2Frun%2Fpostgresql/authd"),
        ] {
            assert!(parse(&table).is_ok(), "{table}: {:?}", parse(&table));
        }
    }

    /// Plaintext Redis is accepted to this machine, or anywhere with the opt-out.
    #[test]
    fn plaintext_redis_is_for_loopback_or_the_opt_out() {
        for redis in [
            "url='redis://127.0.0.1:6379'",
            "url='redis://localhost:6379/2'",
            "url='redis://[::1]:6379'",
            "url='redis://cache.example:6379'\nallow_plaintext=true",
            "url='rediss://cache.example:6380'",
        ] {
            let text = format!("[cache]\nhmac_key_file='k'\n[cache.redis]\n{redis}\n{SOURCE}");
            assert!(Config::parse(&text, Path::new(".")).is_ok(), "{redis}");
        }
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
            (
                "url='redis://cache.example:6379'",
                "cache.redis.allow_plaintext = true",
            ),
            (
                "cluster_urls=['rediss://a', 'redis://10.0.0.2:6379']",
                "cache.redis.cluster_urls[1]",
            ),
        ];
        for (redis, field) in bad {
            let text = format!("[cache]\nhmac_key_file='k'\n[cache.redis]\n{redis}\n{SOURCE}");
            let e = Config::parse(&text, Path::new("."))
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{redis}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
    }
}
