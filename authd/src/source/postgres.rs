//! PostgreSQL source: opaque tokens `<prefix><id>.<secret>` looked up by id.
//!
//! The table (`authd_tokens`, schema in `authd/migrations/`) holds only HMAC-SHA256 of
//! `<id>.<secret>` under a secret key kept outside the database, so a leaked table (or
//! backup) does not yield usable tokens, and the final comparison is constant-time. A token
//! whose shape is wrong is not owned, so it never reaches the database. The query is
//! parameterised and prepared once per connection (sqlx caches the statement). Disabled or
//! expired rows are rejected; the row's expiry is handed on so no cached verdict outlives
//! it. A database that is down or slower than `timeout` is "could not decide".
//!
//! The secret key is a ring, so it rotates without a flag day: `secret_key_file` hashes
//! every new token; `next_secret_key_files` (the key about to become current, step 1 of
//! the runbook) and `previous_secret_key_files` (the keys being retired) are tried after
//! it. A token that verifies under a previous key is re-hashed under the current one at
//! that use (a conditional `UPDATE`, so two replicas racing write the row once); one under
//! a next key is left as it is, so replicas not yet switched never undo the rotation. Each
//! row records which key hashed it (`secret_key_id`), which tells the operator when the
//! old key can go (`kube-authd token keys`).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use authd_runtime::config::secs;
use futures::future::BoxFuture;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};
use sqlx::Row;
use subtle::ConstantTimeEq;
use tokio::sync::OnceCell;

use super::common::{check_plaintext, check_timeout, read_secret, resolve, FileError};
use super::{BuildError, Expiry, Kind, Verifier};
use crate::field::FieldError;
use crate::identity::{Identity, Outcome};
use crate::mapping::Mapping;

/// Hex digits of a token id (8 random bytes).
pub const ID_LEN: usize = 16;
/// Hex digits of a token secret (32 random bytes).
pub const SECRET_LEN: usize = 64;
/// Shortest accepted secret key.
const MIN_KEY_LEN: usize = 32;

/// PostgreSQL source: opaque tokens looked up by id, secret checked against a keyed hash.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub name: String,
    /// How answers map to Kubernetes users.
    #[serde(default)]
    pub mapping: Mapping,
    /// `postgres://user@host:port/db`; put the password in `password_file`, not here.
    pub database_url: String,
    /// File holding the database password (trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// Accept a connection that may be plaintext (`sslmode` disable, allow or prefer) to a
    /// host other than this machine (an on-path attacker can read the password and the
    /// token table). Off: a start-up error.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Key (at least 32 bytes) for the HMAC-SHA256 of token secrets.
    pub secret_key_file: PathBuf,
    /// Keys being rotated out: tokens hashed under them still verify, and are re-hashed
    /// under `secret_key_file` when used.
    #[serde(default)]
    pub previous_secret_key_files: Vec<PathBuf>,
    /// Keys about to become current (step 1 of a rotation): tokens hashed under them
    /// verify, and are left as they are.
    #[serde(default)]
    pub next_secret_key_files: Vec<PathBuf>,
    /// Token prefix; the source owns only tokens of the form `<prefix><id>.<secret>`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Apply the schema migrations at start.
    #[serde(default)]
    pub migrate: bool,
    /// Pool size.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Acquire and statement limit, and the bound on one whole lookup.
    #[serde(default = "secs::<2>", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_prefix() -> String {
    "kad_".into()
}
fn default_max_connections() -> u32 {
    8
}

impl Kind for Config {
    fn name(&self) -> &str {
        &self.name
    }

    fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    fn files(&self) -> Vec<&Path> {
        std::iter::once(self.secret_key_file.as_path())
            .chain(self.previous_secret_key_files.iter().map(PathBuf::as_path))
            .chain(self.next_secret_key_files.iter().map(PathBuf::as_path))
            .chain(self.password_file.as_deref())
            .collect()
    }

    fn resolve_paths(&mut self, base: &Path) {
        resolve(base, &mut self.secret_key_file);
        for p in self
            .previous_secret_key_files
            .iter_mut()
            .chain(&mut self.next_secret_key_files)
        {
            resolve(base, p);
        }
        self.password_file.iter_mut().for_each(|p| resolve(base, p));
    }

    fn validate(&self) -> Result<(), FieldError> {
        if !(self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://"))
        {
            return Err(FieldError::new(
                "database_url",
                "must start with postgres:// or postgresql://",
            ));
        }
        check_database_tls(
            "database_url",
            &self.database_url,
            "allow_plaintext",
            self.allow_plaintext,
        )?;
        // The id/secret split is at the first '.', and the prefix is matched literally.
        if self.prefix.is_empty() || self.prefix.contains('.') {
            return Err(FieldError::new(
                "prefix",
                "must be non-empty and contain no '.'",
            ));
        }
        if self.max_connections == 0 {
            return Err(FieldError::new("max_connections", "must be at least 1"));
        }
        check_timeout("timeout", self.timeout)
    }

    fn build(&self) -> Result<Arc<dyn Verifier>, BuildError> {
        Ok(PostgresVerifier::new(self)?)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error(transparent)]
    Read(#[from] FileError),
    #[error("{field} {path}: key must be at least {MIN_KEY_LEN} bytes, found {len}")]
    ShortKey {
        field: String,
        path: String,
        len: usize,
    },
    #[error("{field} {path}: the same key as another of the ring (list each key once)")]
    DuplicateKey { field: String, path: String },
    #[error("database_url: {0}")]
    Url(sqlx::Error),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("extra: {0}")]
    Extra(String),
    #[error("migrations still running after {0:?}")]
    MigrationsPending(Duration),
}

/// The schema, embedded so a deployed binary needs no migrations folder.
#[derive(Debug)]
struct Embedded;

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        Box::pin(async {
            Ok(vec![
                Migration::new(
                    20261128000000,
                    Cow::Borrowed("authd tokens"),
                    MigrationType::Simple,
                    Cow::Borrowed(include_str!(
                        "../../migrations/20261128000000_authd_tokens.sql"
                    )),
                    false,
                ),
                Migration::new(
                    20261130000000,
                    Cow::Borrowed("authd tokens secret key id"),
                    MigrationType::Simple,
                    Cow::Borrowed(include_str!(
                        "../../migrations/20261130000000_authd_tokens_secret_key_id.sql"
                    )),
                    false,
                ),
            ])
        })
    }
}

/// Applies the shipped migrations (idempotent; sqlx records them in `_sqlx_migrations`).
pub async fn migrate(pool: &PgPool) -> Result<(), PostgresError> {
    Migrator::new(Embedded).await?.run(pool).await?;
    Ok(())
}

/// Reads the HMAC key for token secrets.
pub fn read_key(path: &Path) -> Result<Vec<u8>, PostgresError> {
    read_key_field("secret_key_file", path)
}

fn read_key_field(field: &'static str, path: &Path) -> Result<Vec<u8>, PostgresError> {
    let key = std::fs::read(path)
        .map_err(|e| FileError::new(field, path, format!("cannot read: {e}")))?;
    if key.len() < MIN_KEY_LEN {
        return Err(PostgresError::ShortKey {
            field: field.to_owned(),
            path: path.display().to_string(),
            len: key.len(),
        });
    }
    Ok(key)
}

/// What a key of the ring is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Hashes new tokens and re-hashed ones.
    Current,
    /// Being retired: its tokens verify and move to the current key when used.
    Previous,
    /// About to become current: its tokens verify and stay as they are.
    Next,
}

impl Role {
    pub fn label(self) -> &'static str {
        match self {
            Role::Current => "current",
            Role::Previous => "previous",
            Role::Next => "next",
        }
    }
}

/// The ring of token secret keys: the current one hashes, the others still verify.
pub struct SecretKeys {
    /// Current first.
    keys: Vec<(Vec<u8>, Role)>,
}

impl SecretKeys {
    /// `secret_key_file`, `previous_secret_key_files` and `next_secret_key_files`, as the
    /// source reads them.
    pub fn read(
        current: &Path,
        previous: &[PathBuf],
        next: &[PathBuf],
    ) -> Result<Self, PostgresError> {
        let mut keys = vec![(read_key(current)?, Role::Current)];
        let others = previous
            .iter()
            .enumerate()
            .map(|(i, p)| ("previous_secret_key_files", i, p, Role::Previous))
            .chain(
                next.iter()
                    .enumerate()
                    .map(|(i, p)| ("next_secret_key_files", i, p, Role::Next)),
            );
        for (name, i, path, role) in others {
            let field = format!("{name}[{i}]");
            let key = read_key_field(name, path).map_err(|e| match e {
                PostgresError::ShortKey { path, len, .. } => PostgresError::ShortKey {
                    field: field.clone(),
                    path,
                    len,
                },
                e => e,
            })?;
            if keys.iter().any(|(k, _)| *k == key) {
                return Err(PostgresError::DuplicateKey {
                    field,
                    path: path.display().to_string(),
                });
            }
            keys.push((key, role));
        }
        Ok(Self { keys })
    }

    pub fn current(&self) -> &[u8] {
        &self.keys[0].0
    }

    /// A short public name of a key (a keyed hash of a constant, not a secret), stored
    /// with each row it hashed.
    pub fn id(key: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
        mac.update(b"kube-authd secret key id");
        hex::encode(&mac.finalize().into_bytes()[..4])
    }

    /// `(id, role)` for every key of the ring.
    pub fn ids(&self) -> Vec<(String, Role)> {
        self.keys.iter().map(|(k, r)| (Self::id(k), *r)).collect()
    }

    /// The role of the key of the ring `stored` is the hash of this token under, comparing
    /// under every key in constant time; `None`: none of them.
    fn matching(&self, stored: &[u8], id: &str, secret: &str) -> Option<Role> {
        let mut found = None;
        for (key, role) in &self.keys {
            let hash = secret_hash(key, id, secret);
            if bool::from(stored.ct_eq(hash.as_slice())) && found.is_none() {
                found = Some(*role);
            }
        }
        found
    }
}

/// Live tokens (neither disabled nor expired) by the key that hashed them, for
/// `kube-authd token keys`: `(secret_key_id or None for rows older than the column, count)`.
pub async fn count_by_key(pool: &PgPool) -> Result<Vec<(Option<String>, i64)>, PostgresError> {
    let rows = sqlx::query(
        "SELECT secret_key_id, count(*) AS n FROM authd_tokens \
         WHERE NOT disabled AND (expires_at IS NULL OR expires_at > now()) \
         GROUP BY secret_key_id ORDER BY secret_key_id",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("secret_key_id")?, r.try_get("n")?)))
        .collect()
}

/// Connection options from a URL plus an optional password file; every statement is
/// limited to `timeout` by the server too, so a slow query does not hold a connection.
pub fn connect_options(
    url: &str,
    password_file: Option<&Path>,
    timeout: Duration,
) -> Result<PgConnectOptions, PostgresError> {
    let mut options: PgConnectOptions = url.parse().map_err(PostgresError::Url)?;
    if let Some(path) = password_file {
        options = options.password(&read_secret("password_file", path)?);
    }
    Ok(options
        .application_name("kube-authd")
        .options([("statement_timeout", timeout.as_millis().to_string())]))
}

/// A connection that may fall back to plaintext (`sslmode` disable, allow or prefer, the
/// default being prefer) is refused unless it goes to this machine (a loopback host or a
/// unix socket) or `allow_plaintext` is set. `field` names the URL in the error and
/// `opt_out` the setting (or flag) that allows plaintext.
pub fn check_database_tls(
    field: &str,
    url: &str,
    opt_out: &str,
    allow_plaintext: bool,
) -> Result<(), FieldError> {
    // sqlx parses any scheme as PostgreSQL options: `mysql://…` must not pass. The URL may
    // hold a password: it is not echoed.
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    if !matches!(scheme.as_deref(), Some("postgres" | "postgresql")) {
        return Err(FieldError::new(
            field,
            "must be a postgres:// or postgresql:// URL",
        ));
    }
    let options: PgConnectOptions = url
        .parse()
        .map_err(|e| FieldError::new(field, format!("not a valid database URL: {e}")))?;
    let host = options.get_host();
    // A host starting with '/' is the folder of a unix socket.
    if host.starts_with('/')
        || matches!(
            options.get_ssl_mode(),
            PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull
        )
    {
        return Ok(());
    }
    check_plaintext(
        field,
        host,
        "sslmode allows plaintext (set sslmode=verify-full)",
        opt_out,
        allow_plaintext,
    )
}

/// `host:port` (or the socket folder) of a database URL, for error messages (never the
/// password).
pub fn describe(url: &str) -> String {
    match url.parse::<PgConnectOptions>() {
        Ok(o) => format!("{}:{}", o.get_host(), o.get_port()),
        Err(_) => "(unparseable URL)".into(),
    }
}

/// A lazily connecting pool: authd starts even while the database is down.
pub fn pool(options: PgConnectOptions, max_connections: u32, timeout: Duration) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(timeout)
        .connect_lazy_with(options)
}

/// The pool type, re-exported so the CLI needs no sqlx dependency of its own.
pub type PgPoolHandle = PgPool;

/// Keyed hash of a token's id and secret.
fn secret_hash(key: &[u8], id: &str, secret: &str) -> [u8; 32] {
    // HMAC accepts keys of any length; read_key guarantees at least 32 bytes.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(secret.as_bytes());
    mac.finalize().into_bytes().into()
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `(id, secret)` of a well-formed token with this prefix.
fn parse<'t>(prefix: &str, token: &'t str) -> Option<(&'t str, &'t str)> {
    let (id, secret) = token.strip_prefix(prefix)?.split_once('.')?;
    (is_lower_hex(id, ID_LEN) && is_lower_hex(secret, SECRET_LEN)).then_some((id, secret))
}

/// What `token create` stores.
#[derive(Debug, Default)]
pub struct NewToken {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
    pub ttl: Option<Duration>,
}

/// Inserts a new token and returns `(id, token)`. The token is not stored anywhere.
pub async fn create_token(
    pool: &PgPool,
    key: &[u8],
    prefix: &str,
    new: &NewToken,
) -> Result<(String, String), PostgresError> {
    let id = hex::encode(rand::random::<[u8; ID_LEN / 2]>());
    let secret = hex::encode(rand::random::<[u8; SECRET_LEN / 2]>());
    let extra =
        serde_json::to_string(&new.extra).map_err(|e| PostgresError::Extra(e.to_string()))?;
    let ttl_secs = new.ttl.map(|t| t.as_secs_f64());
    sqlx::query(
        "INSERT INTO authd_tokens \
         (id, secret_hash, username, uid, groups, extra, expires_at, secret_key_id) \
         VALUES ($1, $2, $3, $4, $5, $6::jsonb, now() + $7 * interval '1 second', $8)",
    )
    .bind(&id)
    .bind(secret_hash(key, &id, &secret).as_slice())
    .bind(&new.username)
    .bind(&new.uid)
    .bind(&new.groups)
    .bind(extra)
    .bind(ttl_secs)
    .bind(SecretKeys::id(key))
    .execute(pool)
    .await?;
    let token = format!("{prefix}{id}.{secret}");
    Ok((id, token))
}

/// Sets `disabled` on a token; returns whether a row was found.
pub async fn disable_token(pool: &PgPool, id: &str) -> Result<bool, PostgresError> {
    let done = sqlx::query("UPDATE authd_tokens SET disabled = true WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Duration parsing for the CLI (`24h`, `30m`), same syntax as the configuration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime_serde::re::humantime::parse_duration(s).map_err(|e| e.to_string())
}

pub struct PostgresVerifier {
    name: String,
    prefix: String,
    keys: SecretKeys,
    pool: PgPool,
    timeout: Duration,
    migrate: bool,
    /// Set once the migrations ran; retried on each lookup until they have.
    migrated: OnceCell<()>,
}

impl PostgresVerifier {
    /// Builds the pool (lazily connected); with `migrate = true` starts applying the schema
    /// at once, in the background, so a database that is still down does not stop start-up.
    pub fn new(config: &Config) -> Result<Arc<Self>, PostgresError> {
        let options = connect_options(
            &config.database_url,
            config.password_file.as_deref(),
            config.timeout,
        )?;
        let verifier = Arc::new(Self {
            name: config.name.clone(),
            prefix: config.prefix.clone(),
            keys: SecretKeys::read(
                &config.secret_key_file,
                &config.previous_secret_key_files,
                &config.next_secret_key_files,
            )?,
            pool: pool(options, config.max_connections, config.timeout),
            timeout: config.timeout,
            migrate: config.migrate,
            migrated: OnceCell::new(),
        });
        if config.migrate {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let v = verifier.clone();
                rt.spawn(async move {
                    match v.ensure_migrated().await {
                        Ok(()) => tracing::info!(source = %v.name, "postgres: schema up to date"),
                        Err(e) => tracing::warn!(source = %v.name, error = %e,
                            "postgres: migrations not applied yet; retried on the next lookup"),
                    }
                });
            }
        }
        Ok(verifier)
    }

    /// Runs the migrations unless they ran. Another lookup may be running them: waiting
    /// for it is bounded by `timeout` (a lookup never waits without limit on another), and
    /// the migrations themselves by the pool's acquire and statement timeouts.
    async fn ensure_migrated(&self) -> Result<(), PostgresError> {
        if !self.migrate || self.migrated.initialized() {
            return Ok(());
        }
        tokio::time::timeout(
            self.timeout,
            self.migrated.get_or_try_init(|| migrate(&self.pool)),
        )
        .await
        .map_err(|_| PostgresError::MigrationsPending(self.timeout))?
        .map(|_| ())
    }

    async fn lookup(&self, id: &str, secret: &str) -> Result<Outcome, PostgresError> {
        self.ensure_migrated().await?;
        // `secret_key_id` through to_jsonb: a database whose schema predates the column
        // (migrate = false, migrations not run yet) still answers, with NULL.
        let row = sqlx::query(
            "SELECT secret_hash, username, uid, groups, extra::text AS extra, disabled, \
             (extract(epoch FROM expires_at) * 1000)::int8 AS expires_ms, \
             to_jsonb(authd_tokens) ->> 'secret_key_id' AS secret_key_id \
             FROM authd_tokens WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            tracing::info!(source = %self.name, id, "postgres: unknown token id; rejected");
            return Ok(Outcome::Rejected);
        };
        let stored: Vec<u8> = row.try_get("secret_hash")?;
        let Some(role) = self.keys.matching(&stored, id, secret) else {
            tracing::info!(source = %self.name, id, "postgres: wrong secret; rejected");
            return Ok(Outcome::WrongSecret);
        };
        let key_id: Option<String> = row.try_get("secret_key_id")?;
        let current_id = SecretKeys::id(self.keys.current());
        let unrecorded = role == Role::Current && key_id.as_deref() != Some(current_id.as_str());
        if role == Role::Previous || unrecorded {
            self.rehash(id, secret, &stored, &current_id).await;
        }
        if row.try_get::<bool, _>("disabled")? {
            tracing::info!(source = %self.name, id, "postgres: token disabled; rejected");
            return Ok(Outcome::Rejected);
        }
        let expires_at = match row.try_get::<Option<i64>, _>("expires_ms")? {
            Some(ms) => {
                let at = u64::try_from(ms)
                    .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
                    .unwrap_or(UNIX_EPOCH);
                if at <= SystemTime::now() {
                    tracing::info!(source = %self.name, id, "postgres: token expired; rejected");
                    return Ok(Outcome::Rejected);
                }
                Some(at)
            }
            None => None,
        };
        let extra_text: String = row.try_get("extra")?;
        Ok(Outcome::Authenticated(Identity {
            username: row.try_get("username")?,
            uid: row.try_get("uid")?,
            groups: row.try_get("groups")?,
            extra: parse_extra(&extra_text)?,
            expires_at,
            ..Identity::default()
        }))
    }
}

impl PostgresVerifier {
    /// Re-hashes a row under the current key (it verified under a previous one, or its
    /// key was not recorded), only if no one changed it meanwhile. A failure is logged and
    /// changes nothing for this lookup: the token verified.
    async fn rehash(&self, id: &str, secret: &str, stored: &[u8], current_id: &str) {
        let done = sqlx::query(
            "UPDATE authd_tokens SET secret_hash = $2, secret_key_id = $3 \
             WHERE id = $1 AND secret_hash = $4",
        )
        .bind(id)
        .bind(secret_hash(self.keys.current(), id, secret).as_slice())
        .bind(current_id)
        .bind(stored)
        .execute(&self.pool)
        .await;
        match done {
            Ok(_) => tracing::info!(source = %self.name, id, key = current_id,
                "postgres: token re-hashed under the current secret key"),
            Err(e) => tracing::warn!(source = %self.name, id, error = %e,
                "postgres: could not re-hash a token under the current secret key (are the \
                 migrations applied? `migrate = true` or `kube-authd token create` applies them)"),
        }
    }
}

/// `{"k": "v"}` or `{"k": ["v1", "v2"]}` into Kubernetes `extra`.
fn parse_extra(text: &str) -> Result<BTreeMap<String, Vec<String>>, PostgresError> {
    let bad = || PostgresError::Extra("must be an object of strings or string arrays".into());
    let value: serde_json::Value = serde_json::from_str(text).map_err(|_| bad())?;
    let object = value.as_object().ok_or_else(bad)?;
    let mut extra = BTreeMap::new();
    for (k, v) in object {
        let values = match v {
            serde_json::Value::String(s) => vec![s.clone()],
            serde_json::Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map(str::to_owned).ok_or_else(bad))
                .collect::<Result<_, _>>()?,
            _ => return Err(bad()),
        };
        extra.insert(k.clone(), values);
    }
    Ok(extra)
}

impl Verifier for PostgresVerifier {
    fn name(&self) -> &str {
        &self.name
    }

    fn owns(&self, token: &str) -> bool {
        parse(&self.prefix, token).is_some()
    }

    fn credential_id<'t>(&self, token: &'t str) -> Option<&'t str> {
        parse(&self.prefix, token).map(|(id, _)| id)
    }

    fn throttle_subject<'t>(&self, token: &'t str) -> Option<&'t str> {
        self.credential_id(token)
    }

    /// The row's `expires_at`, for a token whose id and secret match a live row.
    fn expiry<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Expiry> {
        Box::pin(async move {
            match self.verify(token, &[]).await {
                Outcome::Authenticated(identity) => {
                    identity.expires_at.map_or(Expiry::Never, Expiry::At)
                }
                _ => Expiry::Unknown,
            }
        })
    }

    fn verify<'a>(&'a self, token: &'a str, _audiences: &'a [String]) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let Some((id, secret)) = parse(&self.prefix, token) else {
                return Outcome::NotMine;
            };
            // Acquire and statement are each bounded by `timeout`; this bounds the whole
            // lookup even if the server stops answering mid-statement.
            let limit = self.timeout * 2;
            match tokio::time::timeout(limit, self.lookup(id, secret)).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(e)) => Outcome::Undecided(format!("postgres: {e}")),
                Err(_) => Outcome::Undecided(format!("postgres: no answer within {limit:?}")),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_only_the_exact_shape() {
        let id = "0123456789abcdef";
        let secret = "a".repeat(SECRET_LEN);
        assert_eq!(
            parse("kad_", &format!("kad_{id}.{secret}")),
            Some((id, secret.as_str()))
        );
        for bad in [
            format!("kad_{id}.{secret}x"),
            format!("kad_{id}x.{secret}"),
            format!("kad_{}.{secret}", id.to_uppercase()),
            format!("kad_{id}.{}", "'".repeat(SECRET_LEN)),
            format!("other_{id}.{secret}"),
            format!("kad_{id}{secret}"),
            format!("kad_' OR '1'='1.{secret}"),
            format!("kad_{id}\0.{secret}"),
        ] {
            assert_eq!(parse("kad_", &bad), None, "{bad:?}");
        }
    }

    #[test]
    fn hash_is_keyed_and_bound_to_the_id() {
        let a = secret_hash(&[1; 32], "id1", "s");
        assert_ne!(a, secret_hash(&[2; 32], "id1", "s"));
        assert_ne!(a, secret_hash(&[1; 32], "id2", "s"));
        assert_eq!(a, secret_hash(&[1; 32], "id1", "s"));
    }

    #[test]
    fn extra_accepts_strings_and_string_arrays() {
        let e = parse_extra(r#"{"a": "x", "b": ["y", "z"]}"#).unwrap();
        assert_eq!(e["a"], vec!["x"]);
        assert_eq!(e["b"], vec!["y", "z"]);
        assert!(parse_extra(r#"{"a": 1}"#).is_err());
        assert!(parse_extra("[]").is_err());
    }
}
