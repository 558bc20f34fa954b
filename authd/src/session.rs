//! Login sessions: a person signs in once with a directory password (`Login`) and exchanges
//! the session for short-lived tokens bound to one cluster (`Token`); `Logout` and the
//! Admin `EndSession` end it and refuse its tokens on every replica at once.
//!
//! Credentials (`<prefix><id>.<secret>`, 128-bit id, 256-bit secret, both hex):
//! - a session is `kas_<id>.<secret>`: the refresh credential a client keeps;
//! - an issued token is `kat_<id>.<secret>`, `<id>` being its session's: the issued-token
//!   source ([`IssuedTokens`], after the configured sources) gives `kat_<id>` as the token's credential id, so ending a
//!   session is one credential revocation (the deny-list, `cache/revocations.rs`) that
//!   refuses every token of it, cached or not, on every replica within the pub/sub delay.
//!
//! What is stored (Redis when `cache.redis` is configured, shared by the replicas; else this
//! process): records sealed like shared-cache values (`cache/seal.rs`), under keys that are
//! keyed hashes (`fingerprint.rs`) — never a password, a session secret or a token: a
//! session record holds the keyed hash of its credential, compared in constant time; a
//! token is found by its keyed hash. Failed logins are counted per username and per client
//! address (keyed too) for the login throttle.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use authd_proto::v1::sessions_server::{Sessions as SessionsApi, SessionsServer};
use authd_proto::v1::{
    LoginRequest, LoginResponse, LogoutRequest, LogoutResponse, SessionInfo, TokenRequest,
    TokenResponse,
};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status};

use crate::cache::redis::{SharedCache, SharedCacheError};
use crate::cache::seal::Sealer;
use crate::config::SessionsConfig;
use crate::fingerprint::Fingerprinter;
use crate::identity::{Identity, Outcome};
use crate::metrics::SessionLabels;
use crate::service::Authd;
use crate::source::{Expiry, Verifier};

/// The prefix of a session credential.
pub const SESSION_PREFIX: &str = "kas_";
/// The prefix of an issued token: the issued-token source owns exactly these.
pub const TOKEN_PREFIX: &str = "kat_";
/// Hex digits of a session id (128 bits).
const ID_HEX: usize = 32;
/// Hex digits of a secret (256 bits).
const SECRET_HEX: usize = 64;
/// Longest username accepted at Login.
const MAX_USERNAME: usize = 256;
/// Longest password accepted at Login.
const MAX_PASSWORD: usize = 1024;
/// Longest cluster name (a DNS label set, as Kubernetes names go).
const MAX_CLUSTER: usize = 253;
/// Why a session credential is refused, whichever of ended, expired, idle or unknown.
const ENDED: &str = "the session has ended or expired; log in again";
/// Added to a token's lifetime for the revocation that ends its session: clocks of the
/// replicas may differ a little.
const CLOCK_MARGIN: Duration = Duration::from_secs(60);

/// The session id of a well-formed `kas_` or `kat_` credential (`prefix` says which).
pub fn parse(prefix: &str, credential: &str) -> Option<String> {
    let rest = credential.strip_prefix(prefix)?;
    let (id, secret) = rest.split_once('.')?;
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    (hex(id, ID_HEX) && hex(secret, SECRET_HEX)).then(|| id.to_owned())
}

/// The credential id of an issued token (`kat_<session id>`), a slice of the token; `None`
/// unless it is well-formed.
pub fn token_credential_id(token: &str) -> Option<&str> {
    parse(TOKEN_PREFIX, token).map(|_| &token[..TOKEN_PREFIX.len() + ID_HEX])
}

fn mint(prefix: &str, id: &str) -> String {
    format!(
        "{prefix}{id}.{}",
        hex::encode(rand::random::<[u8; SECRET_HEX / 2]>())
    )
}

pub fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// An identity as stored in a record (sealed).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredIdentity {
    pub username: String,
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub extra: BTreeMap<String, Vec<String>>,
}

impl From<&Identity> for StoredIdentity {
    fn from(i: &Identity) -> Self {
        Self {
            username: i.username.clone(),
            uid: i.uid.clone(),
            groups: i.groups.clone(),
            extra: i.extra.clone(),
        }
    }
}

/// One session, as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SessionRecord {
    id: String,
    /// Keyed hash (hex) of the whole session credential.
    check: String,
    /// The name the person logged in with (what the directory is asked again).
    login: String,
    /// The password source that checked it.
    source: String,
    identity: StoredIdentity,
    created_ms: u64,
    last_used_ms: u64,
    expires_ms: u64,
}

/// One issued token, as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenRecord {
    pub session_id: String,
    pub cluster: String,
    pub identity: StoredIdentity,
    pub expires_ms: u64,
}

/// Where records live: Redis (shared by the replicas) or this process.
enum Kv {
    Redis(Arc<SharedCache>),
    Memory(Mutex<MemoryKv>),
}

#[derive(Default)]
struct MemoryKv {
    values: HashMap<String, (Vec<u8>, Instant)>,
    sets: HashMap<String, (BTreeSet<String>, Instant)>,
    writes: u64,
}

impl MemoryKv {
    /// Drops what has expired, every so many writes: memory stays bounded by what is live.
    fn prune(&mut self) {
        self.writes += 1;
        if self.writes % 256 == 0 {
            let now = Instant::now();
            self.values.retain(|_, (_, until)| *until > now);
            self.sets.retain(|_, (_, until)| *until > now);
        }
    }
}

/// A store failure (Redis), safe to log and to return.
#[derive(Debug, thiserror::Error)]
#[error("session store: {0}")]
pub struct StoreError(String);

impl From<SharedCacheError> for StoreError {
    fn from(e: SharedCacheError) -> Self {
        Self(e.to_string())
    }
}

/// The records of sessions and issued tokens, sealed, under keyed-hash keys.
pub struct SessionStore {
    kv: Kv,
    fingerprinter: Fingerprinter,
    sealer: Sealer,
}

impl SessionStore {
    pub fn new(fingerprinter: &Fingerprinter, redis: Option<Arc<SharedCache>>) -> Self {
        Self {
            kv: match redis {
                Some(r) => Kv::Redis(r),
                None => Kv::Memory(Mutex::new(MemoryKv::default())),
            },
            fingerprinter: fingerprinter.clone(),
            sealer: Sealer::new(fingerprinter),
        }
    }

    fn key(&self, kind: &str, hash: &crate::fingerprint::Fingerprint) -> String {
        let key = format!("{kind}:{}", hash.to_hex());
        match &self.kv {
            Kv::Redis(r) => r.prefixed(&key),
            Kv::Memory(_) => key,
        }
    }

    fn session_key(&self, id: &str) -> String {
        self.key(
            "sess",
            &self
                .fingerprinter
                .credential(&format!("{SESSION_PREFIX}{id}")),
        )
    }

    fn token_key(&self, token: &str) -> String {
        self.key("iss", &self.fingerprinter.token_id(token))
    }

    fn user_key(&self, username: &str) -> String {
        self.key("usess", &self.fingerprinter.username(username))
    }

    fn memory(m: &Mutex<MemoryKv>) -> std::sync::MutexGuard<'_, MemoryKv> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let sealed = match &self.kv {
            Kv::Redis(r) => {
                r.session_command::<Option<Vec<u8>>>("session_get", redis::cmd("GET").arg(key))
                    .await?
            }
            Kv::Memory(m) => Self::memory(m)
                .values
                .get(key)
                .filter(|(_, until)| *until > Instant::now())
                .map(|(v, _)| v.clone()),
        };
        // A value that does not open (edited, moved, another key) is as good as absent.
        Ok(sealed.and_then(|s| self.sealer.open(key.as_bytes(), &s)))
    }

    async fn set(&self, key: &str, plain: &[u8], ttl: Duration) -> Result<(), StoreError> {
        self.write(key, plain, ttl, false).await.map(drop)
    }

    /// Writes `plain` sealed under `key` for `ttl`; with `existing`, only over a value that
    /// is still there (Redis `SET … XX`), so a record deleted meanwhile stays deleted.
    /// Whether it was written.
    async fn write(
        &self,
        key: &str,
        plain: &[u8],
        ttl: Duration,
        existing: bool,
    ) -> Result<bool, StoreError> {
        let sealed = self
            .sealer
            .seal(key.as_bytes(), plain)
            .ok_or_else(|| StoreError("cannot seal a record".into()))?;
        let ttl = ttl.max(Duration::from_millis(1));
        match &self.kv {
            Kv::Redis(r) => {
                let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
                let mut cmd = redis::cmd("SET");
                cmd.arg(key).arg(sealed).arg("PX").arg(ms);
                if existing {
                    cmd.arg("XX");
                }
                let written: Option<String> = r.session_command("session_set", &cmd).await?;
                Ok(written.is_some())
            }
            Kv::Memory(m) => {
                let mut m = Self::memory(m);
                m.prune();
                let now = Instant::now();
                let there = m.values.get(key).is_some_and(|(_, until)| *until > now);
                if existing && !there {
                    return Ok(false);
                }
                m.values.insert(key.to_owned(), (sealed, now + ttl));
                Ok(true)
            }
        }
    }

    async fn del(&self, key: &str) -> Result<bool, StoreError> {
        Ok(match &self.kv {
            Kv::Redis(r) => {
                r.session_command::<u64>("session_del", redis::cmd("DEL").arg(key))
                    .await?
                    > 0
            }
            Kv::Memory(m) => Self::memory(m).values.remove(key).is_some(),
        })
    }

    async fn index_add(&self, key: &str, member: &str, ttl: Duration) -> Result<(), StoreError> {
        match &self.kv {
            Kv::Redis(r) => {
                let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
                r.session_command::<()>("session_index", redis::cmd("SADD").arg(key).arg(member))
                    .await?;
                // The index lives as long as its newest session could.
                r.session_command::<()>("session_index", redis::cmd("PEXPIRE").arg(key).arg(ms))
                    .await?;
            }
            Kv::Memory(m) => {
                let mut m = Self::memory(m);
                m.prune();
                let until = Instant::now() + ttl;
                let entry = m
                    .sets
                    .entry(key.to_owned())
                    .or_insert_with(|| (BTreeSet::new(), until));
                entry.0.insert(member.to_owned());
                entry.1 = entry.1.max(until);
            }
        }
        Ok(())
    }

    async fn index_remove(&self, key: &str, member: &str) -> Result<(), StoreError> {
        match &self.kv {
            Kv::Redis(r) => {
                r.session_command::<()>("session_index", redis::cmd("SREM").arg(key).arg(member))
                    .await?
            }
            Kv::Memory(m) => {
                if let Some((set, _)) = Self::memory(m).sets.get_mut(key) {
                    set.remove(member);
                }
            }
        }
        Ok(())
    }

    async fn index_members(&self, key: &str) -> Result<Vec<String>, StoreError> {
        Ok(match &self.kv {
            Kv::Redis(r) => {
                r.session_command("session_index", redis::cmd("SMEMBERS").arg(key))
                    .await?
            }
            Kv::Memory(m) => Self::memory(m)
                .sets
                .get(key)
                .filter(|(_, until)| *until > Instant::now())
                .map(|(s, _)| s.iter().cloned().collect())
                .unwrap_or_default(),
        })
    }

    /// Counts one failure under `key` in a window of `window` from the first; the count.
    async fn count_failure(&self, key: &str, window: Duration) -> Result<u64, StoreError> {
        match &self.kv {
            Kv::Redis(r) => {
                let n: u64 = r
                    .session_command("login_throttle", redis::cmd("INCR").arg(key))
                    .await?;
                if n == 1 {
                    let ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
                    r.session_command::<()>(
                        "login_throttle",
                        redis::cmd("PEXPIRE").arg(key).arg(ms),
                    )
                    .await?;
                }
                Ok(n)
            }
            Kv::Memory(m) => {
                let mut m = Self::memory(m);
                m.prune();
                let now = Instant::now();
                let entry = m
                    .values
                    .entry(key.to_owned())
                    .or_insert_with(|| (0u64.to_be_bytes().to_vec(), now + window));
                if entry.1 <= now {
                    *entry = (0u64.to_be_bytes().to_vec(), now + window);
                }
                let n = count_of(&entry.0) + 1;
                entry.0 = n.to_be_bytes().to_vec();
                Ok(n)
            }
        }
    }

    /// The failures counted under `key` in its current window.
    async fn failures(&self, key: &str) -> Result<u64, StoreError> {
        match &self.kv {
            Kv::Redis(r) => {
                let n: Option<u64> = r
                    .session_command("login_throttle", redis::cmd("GET").arg(key))
                    .await?;
                Ok(n.unwrap_or(0))
            }
            Kv::Memory(m) => Ok(Self::memory(m)
                .values
                .get(key)
                .filter(|(_, until)| *until > Instant::now())
                .map_or(0, |(v, _)| count_of(v))),
        }
    }

    async fn session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let Some(plain) = self.get(&self.session_key(id)).await? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice(&plain).ok())
    }

    async fn put_session(&self, r: &SessionRecord, ttl: Duration) -> Result<(), StoreError> {
        let plain = serde_json::to_vec(r).map_err(|e| StoreError(e.to_string()))?;
        self.set(&self.session_key(&r.id), &plain, ttl).await
    }

    /// Rewrites a session only if it still exists: one ended while a `Token` was in flight
    /// is not brought back. Whether it was rewritten.
    async fn update_session(&self, r: &SessionRecord, ttl: Duration) -> Result<bool, StoreError> {
        let plain = serde_json::to_vec(r).map_err(|e| StoreError(e.to_string()))?;
        self.write(&self.session_key(&r.id), &plain, ttl, true)
            .await
    }

    /// An issued token's record, if it was issued and has not expired from the store.
    pub async fn token(&self, token: &str) -> Result<Option<TokenRecord>, StoreError> {
        let Some(plain) = self.get(&self.token_key(token)).await? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice(&plain).ok())
    }

    async fn put_token(
        &self,
        token: &str,
        r: &TokenRecord,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let plain = serde_json::to_vec(r).map_err(|e| StoreError(e.to_string()))?;
        self.set(&self.token_key(token), &plain, ttl).await
    }
}

fn count_of(bytes: &[u8]) -> u64 {
    <[u8; 8]>::try_from(bytes).map_or(0, u64::from_be_bytes)
}

/// Why a Sessions call failed: each becomes a gRPC status and a metric result.
#[derive(Debug)]
pub enum SessionError {
    /// Wrong password, unknown user, ended or expired session, account gone.
    Rejected(&'static str),
    /// Too many failed logins for this user or address.
    Throttled,
    /// A malformed request.
    Invalid(String),
    /// The password source or the store could not answer.
    Unavailable(String),
}

impl SessionError {
    fn label(&self) -> &'static str {
        match self {
            SessionError::Rejected(_) => "rejected",
            SessionError::Throttled => "throttled",
            SessionError::Invalid(_) => "invalid",
            SessionError::Unavailable(_) => "unavailable",
        }
    }
}

impl From<SessionError> for Status {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Rejected(why) => Status::unauthenticated(why),
            SessionError::Throttled => Status::resource_exhausted(
                "too many failed logins for this user or address; wait and try again",
            ),
            SessionError::Invalid(why) => Status::invalid_argument(why),
            SessionError::Unavailable(why) => Status::unavailable(why),
        }
    }
}

impl From<StoreError> for SessionError {
    fn from(e: StoreError) -> Self {
        SessionError::Unavailable(e.to_string())
    }
}

/// A new session, as `Login` answers it.
pub struct Opened {
    pub credential: String,
    pub id: String,
    pub username: String,
    pub expires_ms: u64,
    pub idle_expires_ms: u64,
}

/// A new token, as `Token` answers it.
pub struct Issued {
    pub token: String,
    pub expires_ms: u64,
    pub identity: StoredIdentity,
    pub session_expires_ms: u64,
    pub session_idle_expires_ms: u64,
}

/// The sessions of one authd: configuration and store.
pub struct Sessions {
    config: SessionsConfig,
    store: Arc<SessionStore>,
}

impl Sessions {
    pub fn new(config: SessionsConfig, store: Arc<SessionStore>) -> Self {
        Self { config, store }
    }

    pub fn store(&self) -> &Arc<SessionStore> {
        &self.store
    }

    fn idle_end(&self, r: &SessionRecord) -> u64 {
        (r.last_used_ms + to_ms_d(self.config.idle_timeout)).min(r.expires_ms)
    }

    /// Checks the password against the password source and opens a session. `address`
    /// is the client's, for the throttle.
    pub async fn login(
        &self,
        authd: &Authd,
        username: &str,
        password: &str,
        address: &str,
    ) -> Result<Opened, SessionError> {
        if username.is_empty()
            || username.len() > MAX_USERNAME
            || username.chars().any(char::is_control)
        {
            return Err(SessionError::Invalid(format!(
                "username must be 1 to {MAX_USERNAME} bytes without control characters"
            )));
        }
        if password.is_empty() || password.len() > MAX_PASSWORD {
            return Err(SessionError::Invalid(format!(
                "password must be 1 to {MAX_PASSWORD} bytes"
            )));
        }
        let f = &self.store.fingerprinter;
        // Directories match names without regard to case: so does the throttle, or "Alice"
        // and "ALICE" would be fresh guesses at alice's password.
        let user_key = self
            .store
            .key("lf:u", &f.username(&username.to_lowercase()));
        let address_key = self
            .store
            .key("lf:a", &f.credential(&format!("address\0{address}")));
        // Throttled before the password is checked: a guesser learns nothing more.
        if self.store.failures(&user_key).await?
            >= u64::from(self.config.max_failed_logins_per_user)
            || self.store.failures(&address_key).await?
                >= u64::from(self.config.max_failed_logins_per_address)
        {
            tracing::warn!(user = %f.username(username).short(), "login throttled");
            return Err(SessionError::Throttled);
        }
        let source = authd.source(&self.config.password_source).ok_or_else(|| {
            SessionError::Unavailable(format!(
                "sessions.password_source {:?} is not a configured source",
                self.config.password_source
            ))
        })?;
        let identity = match source.check_password(username, password).await {
            Outcome::Authenticated(identity) => identity,
            Outcome::Rejected | Outcome::WrongSecret => {
                let window = self.config.failed_login_window;
                self.store.count_failure(&user_key, window).await?;
                self.store.count_failure(&address_key, window).await?;
                tracing::info!(user = %f.username(username).short(), "login refused");
                return Err(SessionError::Rejected("wrong username or password"));
            }
            Outcome::NotMine => {
                return Err(SessionError::Unavailable(format!(
                    "sessions.password_source {:?} does not check passwords",
                    self.config.password_source
                )))
            }
            Outcome::Undecided(why) => return Err(SessionError::Unavailable(why)),
        };
        let id = hex::encode(rand::random::<[u8; ID_HEX / 2]>());
        let credential = mint(SESSION_PREFIX, &id);
        let now = to_ms(SystemTime::now());
        let record = SessionRecord {
            id: id.clone(),
            check: f.token_id(&credential).to_hex(),
            login: username.to_owned(),
            source: self.config.password_source.clone(),
            identity: StoredIdentity::from(&identity),
            created_ms: now,
            last_used_ms: now,
            expires_ms: now + to_ms_d(self.config.max_lifetime),
        };
        self.store
            .put_session(
                &record,
                self.config.idle_timeout.min(self.config.max_lifetime),
            )
            .await?;
        self.store
            .index_add(
                &self.store.user_key(&identity.username),
                &id,
                self.config.max_lifetime,
            )
            .await?;
        tracing::info!(session = %id, user = %identity.username, "session opened");
        Ok(Opened {
            credential,
            username: identity.username,
            expires_ms: record.expires_ms,
            idle_expires_ms: self.idle_end(&record),
            id,
        })
    }

    /// The session a credential names, if it is open and the credential is its own.
    async fn open_session(&self, credential: &str) -> Result<SessionRecord, SessionError> {
        let id = parse(SESSION_PREFIX, credential)
            .ok_or(SessionError::Rejected("not a session credential"))?;
        let record = self
            .store
            .session(&id)
            .await?
            .ok_or(SessionError::Rejected(ENDED))?;
        let presented = self.store.fingerprinter.token_id(credential).to_hex();
        if !bool::from(presented.as_bytes().ct_eq(record.check.as_bytes())) {
            return Err(SessionError::Rejected(ENDED));
        }
        let now = to_ms(SystemTime::now());
        if now >= record.expires_ms || now >= self.idle_end(&record) {
            return Err(SessionError::Rejected(ENDED));
        }
        Ok(record)
    }

    /// Issues a token for `cluster` from a session, the user re-checked where the source can.
    pub async fn token(
        &self,
        authd: &Authd,
        credential: &str,
        cluster: &str,
    ) -> Result<Issued, SessionError> {
        if cluster.is_empty() || cluster.len() > MAX_CLUSTER || !authd.serves_cluster(cluster) {
            return Err(SessionError::Invalid(
                "cluster: not a cluster this authd serves".into(),
            ));
        }
        let mut record = self.open_session(credential).await?;
        let source = authd.source(&record.source).ok_or_else(|| {
            SessionError::Unavailable(format!(
                "the session's password source {:?} is no longer configured",
                record.source
            ))
        })?;
        match source.refresh(&record.login).await {
            Outcome::Authenticated(identity) => record.identity = StoredIdentity::from(&identity),
            Outcome::NotMine => {}
            Outcome::Rejected | Outcome::WrongSecret => {
                // The account is gone: the session ends with it.
                tracing::info!(session = %record.id, "account no longer in the directory: session ended");
                self.end(authd, &record.id).await?;
                return Err(SessionError::Rejected(
                    "the account no longer exists; the session has ended",
                ));
            }
            Outcome::Undecided(why) => return Err(SessionError::Unavailable(why)),
        }
        let now = SystemTime::now();
        let now_ms = to_ms(now);
        let expires_ms = (now_ms + to_ms_d(self.config.token_lifetime)).min(record.expires_ms);
        let token = mint(TOKEN_PREFIX, &record.id);
        let issued = TokenRecord {
            session_id: record.id.clone(),
            cluster: cluster.to_owned(),
            identity: record.identity.clone(),
            expires_ms,
        };
        self.store
            .put_token(
                &token,
                &issued,
                Duration::from_millis(expires_ms.saturating_sub(now_ms)),
            )
            .await?;
        record.last_used_ms = now_ms;
        let idle_end = self.idle_end(&record);
        let ttl = Duration::from_millis(idle_end.saturating_sub(now_ms));
        if !self.store.update_session(&record, ttl).await? {
            // Ended meanwhile: its revocation (written before the session was deleted, for
            // longer than this token lives) refuses the token just issued.
            return Err(SessionError::Rejected(ENDED));
        }
        tracing::info!(session = %record.id, cluster = %cluster.escape_debug(),
            user = %record.identity.username, "token issued");
        Ok(Issued {
            token,
            expires_ms,
            identity: record.identity,
            session_expires_ms: record.expires_ms,
            session_idle_expires_ms: idle_end,
        })
    }

    /// Ends the session a credential names (if it is its own); whether one was open.
    pub async fn logout(&self, authd: &Authd, credential: &str) -> Result<bool, SessionError> {
        match self.open_session(credential).await {
            Ok(record) => self.end(authd, &record.id).await,
            Err(SessionError::Rejected(_)) => Ok(false),
            Err(other) => Err(other),
        }
    }

    /// Ends a session by id: no more tokens, and every token it issued refused on every
    /// replica (one credential revocation). Whether it was open.
    pub async fn end(&self, authd: &Authd, id: &str) -> Result<bool, SessionError> {
        let record = self.store.session(id).await?;
        let until = SystemTime::now() + self.config.token_lifetime + CLOCK_MARGIN;
        // The revocation first: once it holds, the session's tokens are refused whatever
        // happens to the records.
        authd
            .revoke_credential(&format!("{TOKEN_PREFIX}{id}"), Some(until))
            .await
            .map_err(|e| SessionError::Unavailable(e.to_string()))?;
        let ended = self.store.del(&self.store.session_key(id)).await?;
        if let Some(r) = &record {
            self.store
                .index_remove(&self.store.user_key(&r.identity.username), id)
                .await?;
        }
        tracing::info!(session = %id, ended, "session ended");
        Ok(ended && record.is_some())
    }

    /// The open sessions of a (mapped) username.
    pub async fn list(&self, username: &str) -> Result<Vec<SessionInfo>, SessionError> {
        let key = self.store.user_key(username);
        let mut out = Vec::new();
        for id in self.store.index_members(&key).await? {
            match self.store.session(&id).await? {
                Some(r) if r.identity.username == username => out.push(SessionInfo {
                    session_id: r.id.clone(),
                    username: r.identity.username.clone(),
                    created_unix_ms: r.created_ms,
                    last_used_unix_ms: r.last_used_ms,
                    expires_unix_ms: r.expires_ms,
                    idle_expires_unix_ms: self.idle_end(&r),
                }),
                _ => self.store.index_remove(&key, &id).await?,
            }
        }
        out.sort_by_key(|s| s.created_unix_ms);
        Ok(out)
    }
}

fn to_ms_d(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The gRPC `Sessions` service.
pub struct SessionsGrpc {
    authd: Authd,
    sessions: Option<Arc<Sessions>>,
}

impl SessionsGrpc {
    /// The service over `authd`'s sessions (UNIMPLEMENTED without `[sessions]`); also
    /// called in-process by the all-in-one binary's edge.
    pub fn new(authd: Authd, sessions: Option<Arc<Sessions>>) -> Self {
        Self { authd, sessions }
    }

    pub fn server(authd: Authd, sessions: Option<Arc<Sessions>>) -> SessionsServer<Self> {
        SessionsServer::new(Self::new(authd, sessions))
    }

    fn sessions(&self) -> Result<&Arc<Sessions>, Status> {
        self.sessions
            .as_ref()
            .ok_or_else(|| Status::unimplemented("sessions are not configured ([sessions])"))
    }

    fn count<T>(&self, method: &'static str, result: &Result<T, SessionError>) {
        let result = match result {
            Ok(_) => "ok",
            Err(e) => e.label(),
        };
        self.authd
            .metrics()
            .session_calls
            .get_or_create(&SessionLabels { method, result })
            .inc();
    }
}

#[tonic::async_trait]
impl SessionsApi for SessionsGrpc {
    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        let sessions = self.sessions()?;
        let peer = request.remote_addr().map(|a| a.ip().to_string());
        let req = request.into_inner();
        // The edge says whose request it forwards; a direct caller is its own address.
        let address = if req.client_address.is_empty() {
            peer.unwrap_or_default()
        } else {
            req.client_address.clone()
        };
        let result = sessions
            .login(&self.authd, &req.username, &req.password, &address)
            .await;
        self.count("login", &result);
        let o = result?;
        Ok(Response::new(LoginResponse {
            session: o.credential,
            session_id: o.id,
            username: o.username,
            expires_unix_ms: o.expires_ms,
            idle_expires_unix_ms: o.idle_expires_ms,
        }))
    }

    async fn token(
        &self,
        request: Request<TokenRequest>,
    ) -> Result<Response<TokenResponse>, Status> {
        let sessions = self.sessions()?;
        let req = request.into_inner();
        let result = sessions
            .token(&self.authd, &req.session, &req.cluster)
            .await;
        self.count("token", &result);
        let i = result?;
        Ok(Response::new(TokenResponse {
            token: i.token,
            expires_unix_ms: i.expires_ms,
            username: i.identity.username,
            groups: i.identity.groups,
            session_expires_unix_ms: i.session_expires_ms,
            session_idle_expires_unix_ms: i.session_idle_expires_ms,
        }))
    }

    async fn logout(
        &self,
        request: Request<LogoutRequest>,
    ) -> Result<Response<LogoutResponse>, Status> {
        let sessions = self.sessions()?;
        let req = request.into_inner();
        let result = sessions.logout(&self.authd, &req.session).await;
        self.count("logout", &result);
        Ok(Response::new(LogoutResponse { ended: result? }))
    }
}

/// The name the issued-token source answers under.
pub const NAME: &str = "sessions";

/// The issued-token source: tokens `Token` minted, owned by their prefix (`kat_`). A token
/// is valid while its record (found by the token's keyed hash) is in the store and not
/// expired; the answer carries the token's expiry (no cached verdict outlives it) and its
/// one cluster (`Identity::cluster`, checked after the cache against the review's
/// cluster). Its credential id is `kat_<session id>`: ending the session revokes that id.
/// Not a `[[sources]]` entry: authd adds it after the configured sources when
/// `[sessions]` is set, and keeps it across reloads.
pub struct IssuedTokens {
    store: Arc<SessionStore>,
}

impl IssuedTokens {
    pub fn new(store: Arc<SessionStore>) -> Self {
        Self { store }
    }
}

impl Verifier for IssuedTokens {
    fn name(&self) -> &str {
        NAME
    }

    fn owns(&self, token: &str) -> bool {
        token.starts_with(TOKEN_PREFIX)
    }

    fn credential_id<'t>(&self, token: &'t str) -> Option<&'t str> {
        token_credential_id(token)
    }

    fn expiry<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Expiry> {
        Box::pin(async move {
            match self.store.token(token).await {
                Ok(Some(r)) => Expiry::At(from_ms(r.expires_ms)),
                _ => Expiry::Unknown,
            }
        })
    }

    fn verify<'a>(&'a self, token: &'a str, _audiences: &'a [String]) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            if token_credential_id(token).is_none() {
                return Outcome::Rejected;
            }
            let record = match self.store.token(token).await {
                Ok(Some(r)) => r,
                Ok(None) => return Outcome::Rejected,
                Err(e) => return Outcome::Undecided(e.to_string()),
            };
            let expires_at = from_ms(record.expires_ms);
            if SystemTime::now() >= expires_at {
                return Outcome::Rejected;
            }
            let i = record.identity;
            Outcome::Authenticated(Identity {
                username: i.username,
                uid: i.uid,
                groups: i.groups,
                extra: i.extra,
                audiences: Vec::new(),
                expires_at: Some(expires_at),
                cluster: Some(record.cluster),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_parse_strictly() {
        let t = mint(TOKEN_PREFIX, &"a".repeat(ID_HEX));
        assert_eq!(parse(TOKEN_PREFIX, &t), Some("a".repeat(ID_HEX)));
        assert_eq!(parse(SESSION_PREFIX, &t), None);
        assert_eq!(
            token_credential_id(&t),
            Some(format!("kat_{}", "a".repeat(ID_HEX)).as_str())
        );
        for bad in [
            "kat_".to_owned(),
            format!("kat_{}.", "a".repeat(ID_HEX)),
            format!("kat_{}.{}", "A".repeat(ID_HEX), "0".repeat(SECRET_HEX)),
            format!("kat_{}.{}x", "a".repeat(ID_HEX), "0".repeat(SECRET_HEX)),
        ] {
            assert_eq!(parse(TOKEN_PREFIX, &bad), None, "{bad}");
        }
        // 256 bits of secret.
        assert_eq!(t.len(), 4 + ID_HEX + 1 + SECRET_HEX);
    }

    #[tokio::test]
    async fn memory_store_seals_and_expires() {
        let store = SessionStore::new(&Fingerprinter::new(b"k"), None);
        store
            .set("a", b"plain", Duration::from_millis(50))
            .await
            .unwrap();
        assert_eq!(
            store.get("a").await.unwrap().as_deref(),
            Some(&b"plain"[..])
        );
        if let Kv::Memory(m) = &store.kv {
            let held = &SessionStore::memory(m).values["a"].0;
            assert!(!held.windows(5).any(|w| w == b"plain"));
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(store.get("a").await.unwrap(), None);
        assert_eq!(
            store
                .count_failure("f", Duration::from_secs(9))
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            store
                .count_failure("f", Duration::from_secs(9))
                .await
                .unwrap(),
            2
        );
        assert_eq!(store.failures("f").await.unwrap(), 2);
        // A rewrite of a record that is gone does not bring it back.
        let ttl = Duration::from_secs(9);
        assert!(!store.write("gone", b"x", ttl, true).await.unwrap());
        assert_eq!(store.get("gone").await.unwrap(), None);
        store.set("here", b"x", ttl).await.unwrap();
        assert!(store.write("here", b"y", ttl, true).await.unwrap());
        assert_eq!(store.get("here").await.unwrap().as_deref(), Some(&b"y"[..]));
    }
}
