//! The shared verdict level: Redis (one server or a Redis Cluster) behind the in-process
//! cache, so a token verified by one replica is answered by all the others.
//!
//! Redis is an accelerator, never a dependency of a review: every command has a short
//! timeout, and any failure is counted, logged (rate-limited) and treated as a miss, so the
//! review goes on to the identity sources. While Redis is failing, reviews skip it and one
//! probe per `PROBE_EVERY` finds out when it is back, so an outage does not add a timeout
//! to every review. Connections come back by themselves.
//!
//! Layout (every key under `key_prefix`, every id a keyed HMAC from `fingerprint.rs`, so
//! nothing in Redis reveals a token, and user names only as keyed hashes):
//! - `v:{s<x>}<fingerprint>` — the verdict, sealed (`seal.rs`: encrypted and authenticated,
//!   bound to this key), expiring (PX) at its stale deadline. A value that does not open is
//!   a miss, counted in `authd_cache_integrity_failures_total` and logged once per minute;
//! - `epoch:{s<x>}` — the revocation epoch of one of `EPOCH_SHARDS` shards of the values
//!   (`<x>` from the fingerprint's first byte; the hash tag puts a shard's epoch in its
//!   values' slot, in a Redis Cluster too). A lookup reads it with the value (one MGET);
//!   every revocation and lift increments every shard's; a value is written by a script
//!   that first checks the epoch is still the one read, so a lookup that began before a
//!   revocation cannot store its answer after it, however late its write arrives;
//! - `t:<token id>` — set of fingerprints cached for one token (any audiences);
//! - `u:<user id>` — set of fingerprints of positive verdicts for one user;
//! - `revoked` — the deny-list, a sorted set (see `revocations.rs`);
//! - `sess:`, `iss:`, `usess:`, `lf:` — login sessions, issued tokens, a user's session ids
//!   and failed-login counters (see `session.rs`), keyed hashes and sealed values too;
//! - channel `revocations` — `t|u <id> <fingerprint>…`, telling every replica what to drop
//!   from its in-process level, and `d|l <kind>:<id> …`, a revocation added or lifted.
//!
//! A value and its index entries are written in one MULTI/EXEC on a single server. A Redis
//! Cluster spreads them over slots, where no transaction reaches: there the index entries
//! are written first, so a value revocation cannot find never exists.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{Client, FromRedisValue, IntoConnectionInfo, RedisResult, TlsCertificates};
use serde::{Deserialize, Serialize};

use super::local::LocalCache;
use super::revocations::{self, Denial, DenyList, Kind, Message, Stored};
use super::seal::Sealer;
use super::{CachedVerdict, Epoch, SharedRead, SharedStore};
use crate::config::RedisConfig;
use crate::fingerprint::Fingerprint;
use crate::identity::{Identity, Verdict};
use crate::metrics::{Metrics, RedisOpLabels};
use crate::throttle::Scripts;
use futures::future::BoxFuture;

#[derive(Debug, thiserror::Error)]
pub enum SharedCacheError {
    #[error("cache.redis.{field} {path}: cannot read: {source}")]
    Read {
        field: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cache.redis.{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// A command failed or timed out at run time (message safe to log).
    #[error("shared cache (Redis) {op}: {message}")]
    Unavailable { op: &'static str, message: String },
}

/// The live connection: a single server through a self-reconnecting manager, or a cluster.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(Arc<LazyCluster>),
}

/// A cluster connection made on first use (the cluster may be down when authd starts) and
/// retried at most every `RECONNECT_EVERY` while it cannot be made.
struct LazyCluster {
    client: ClusterClient,
    /// Held across a connect: waiting for it and connecting are each bounded by
    /// `connect_timeout`, so a stalled or dropped holder cannot stop every later command.
    conn: tokio::sync::Mutex<Option<ClusterConnection>>,
    last_attempt: Mutex<Option<Instant>>,
    connect_timeout: Duration,
}

const RECONNECT_EVERY: Duration = Duration::from_millis(250);
/// While Redis is failing, reviews skip it except for one probe per this interval.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// Between log lines while Redis stays unavailable.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// How often the subscriber checks that its connection is alive.
const SUBSCRIBER_PING_EVERY: Duration = Duration::from_secs(2);
/// Between log lines about values that fail to open.
const INTEGRITY_LOG_EVERY: Duration = Duration::from_secs(60);
/// How many revocation epochs the values are spread over (see the module docs).
const EPOCH_SHARDS: u8 = 16;
/// Writes a value (`KEYS[1]`, `ARGV[2]`, PX `ARGV[3]`) only if its shard's epoch
/// (`KEYS[2]`) is still `ARGV[1]`; 1 if written.
const PUT_IF_EPOCH: &str = "if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[1] then return 0 end \
     redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1";

impl LazyCluster {
    async fn get(&self) -> RedisResult<ClusterConnection> {
        let busy = || redis::RedisError::from((redis::ErrorKind::Io, "cluster connect timed out"));
        let mut slot = tokio::time::timeout(self.connect_timeout, self.conn.lock())
            .await
            .map_err(|_| busy())?;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        {
            let mut last = self.last_attempt.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < RECONNECT_EVERY) {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "cluster not connected yet",
                )));
            }
            *last = Some(Instant::now());
        }
        let c = tokio::time::timeout(self.connect_timeout, self.client.get_async_connection())
            .await
            .map_err(|_| busy())??;
        *slot = Some(c.clone());
        Ok(c)
    }
}

/// Tracks whether Redis is usable, so logs say when it goes away and when it is back
/// without a line per failed review.
#[derive(Default)]
struct Health {
    down: AtomicBool,
    state: Mutex<HealthState>,
    suppressed: AtomicU64,
}

#[derive(Default)]
struct HealthState {
    down_since: Option<Instant>,
    last_log: Option<Instant>,
    /// While down: when the next operation may try Redis again.
    next_probe: Option<Instant>,
}

impl Health {
    /// Whether an operation should skip Redis now (it is down and this is not the probe).
    fn skip(&self) -> bool {
        if !self.down.load(Ordering::Relaxed) {
            return false;
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match st.next_probe {
            Some(t) if now < t => true,
            _ => {
                st.next_probe = Some(now + PROBE_EVERY);
                false
            }
        }
    }

    fn failed(&self, op: &'static str, error: &str) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        st.next_probe = Some(now + PROBE_EVERY);
        match st.down_since {
            None => {
                self.down.store(true, Ordering::Relaxed);
                st.down_since = Some(now);
                st.last_log = Some(now);
                tracing::warn!(op, error, "shared cache (Redis) unavailable; answering from the identity sources until it is back");
            }
            Some(since) if st.last_log.is_none_or(|t| now - t >= LOG_EVERY) => {
                st.last_log = Some(now);
                let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
                tracing::warn!(op, error, down_for = ?since.elapsed(), suppressed,
                    "shared cache (Redis) still unavailable");
            }
            Some(_) => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn succeeded(&self) {
        if !self.down.load(Ordering::Relaxed) {
            return;
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(since) = st.down_since.take() {
            st.next_probe = None;
            self.down.store(false, Ordering::Relaxed);
            self.suppressed.store(0, Ordering::Relaxed);
            tracing::info!(down_for = ?since.elapsed(), "shared cache (Redis) reachable again; using it");
        }
    }
}

/// Values that failed to open: one log line per `INTEGRITY_LOG_EVERY`, with how many since
/// the last, so someone writing junk into Redis cannot flood the log.
#[derive(Default)]
struct IntegrityLog {
    last: Mutex<Option<Instant>>,
    since_last: AtomicU64,
}

impl IntegrityLog {
    fn failed(&self, fp: &Fingerprint) {
        let n = self.since_last.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < INTEGRITY_LOG_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        self.since_last.store(0, Ordering::Relaxed);
        tracing::warn!(fingerprint = %fp.short(), failures = n,
            "shared cache (Redis) value failed verification (changed, moved, or written \
             with another key) and was ignored; if unexpected, someone can write to Redis");
    }
}

/// What a revocation message tells the replicas to drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    Token {
        token_id: Fingerprint,
        keys: Vec<Fingerprint>,
    },
    User {
        user_id: Fingerprint,
        keys: Vec<Fingerprint>,
    },
}

impl Revocation {
    fn encode(&self) -> String {
        let (kind, id, keys) = match self {
            Revocation::Token { token_id, keys } => ("t", token_id, keys),
            Revocation::User { user_id, keys } => ("u", user_id, keys),
        };
        let mut s = format!("{kind} {}", id.to_hex());
        for k in keys {
            s.push(' ');
            s.push_str(&k.to_hex());
        }
        s
    }

    fn decode(text: &str) -> Option<Self> {
        let mut parts = text.split(' ');
        let kind = parts.next()?;
        let id = parse_fingerprint(parts.next()?)?;
        let keys = parts.map(parse_fingerprint).collect::<Option<Vec<_>>>()?;
        match kind {
            "t" => Some(Revocation::Token { token_id: id, keys }),
            "u" => Some(Revocation::User { user_id: id, keys }),
            _ => None,
        }
    }

    /// Drops what the message names from the in-process level.
    pub async fn apply(&self, local: &LocalCache) -> usize {
        let (keys, n) = match self {
            Revocation::Token { token_id, keys } => (keys, local.remove_token(token_id).await),
            Revocation::User { user_id, keys } => (keys, local.remove_user(user_id).await),
        };
        for k in keys {
            local.remove(k).await;
        }
        n
    }
}

/// A value's epoch shard.
fn shard(fp: &Fingerprint) -> u8 {
    fp.0[0] % EPOCH_SHARDS
}

fn parse_fingerprint(hex_text: &str) -> Option<Fingerprint> {
    let bytes = hex::decode(hex_text).ok()?;
    Some(Fingerprint(bytes.try_into().ok()?))
}

/// The shared level. Cheap to share behind an `Arc`.
pub struct SharedCache {
    conn: Conn,
    /// Clients the revocation subscriber tries in turn (every node of a cluster: classic
    /// pub/sub messages reach all of them).
    pubsub: Vec<Client>,
    prefix: String,
    timeout: Duration,
    /// Revocation walks sets and deletes many keys; it may take longer than a lookup.
    admin_timeout: Duration,
    /// Index sets outlive every member they list.
    index_ttl: Duration,
    metrics: Arc<Metrics>,
    health: Health,
    /// Seals every value written and opens every value read.
    sealer: Sealer,
    integrity: IntegrityLog,
}

impl SharedCache {
    /// Builds clients from the configuration without connecting: authd starts (and
    /// answers from its sources) while Redis is down.
    pub fn new(
        config: &RedisConfig,
        index_ttl: Duration,
        metrics: Arc<Metrics>,
        sealer: Sealer,
    ) -> Result<Self, SharedCacheError> {
        let read = |field: &'static str, path: &std::path::Path| {
            std::fs::read(path).map_err(|source| SharedCacheError::Read {
                field,
                path: path.to_owned(),
                source,
            })
        };
        let password = match &config.password_file {
            Some(p) => {
                let bytes = read("password_file", p)?;
                let text = String::from_utf8(bytes).map_err(|_| SharedCacheError::Invalid {
                    field: "password_file",
                    message: format!("{}: not UTF-8", p.display()),
                })?;
                Some(text.trim_end_matches(['\r', '\n']).to_owned())
            }
            None => None,
        };
        let ca = config
            .ca_file
            .as_deref()
            .map(|p| read("ca_file", p))
            .transpose()?;
        let invalid = |field: &'static str| {
            move |e: redis::RedisError| SharedCacheError::Invalid {
                field,
                message: e.to_string(),
            }
        };
        let node_client = |field: &'static str, url: &str| -> Result<Client, SharedCacheError> {
            let info = url.into_connection_info().map_err(invalid(field))?;
            let mut redis = info.redis_settings().clone();
            if let Some(u) = &config.username {
                redis = redis.set_username(u);
            }
            if let Some(p) = &password {
                redis = redis.set_password(p);
            }
            let info = info.set_redis_settings(redis);
            match &ca {
                Some(ca) => Client::build_with_tls(
                    info,
                    TlsCertificates {
                        client_tls: None,
                        root_cert: Some(ca.clone()),
                    },
                ),
                None => Client::open(info),
            }
            .map_err(invalid(field))
        };
        let (conn, pubsub) = match &config.url {
            Some(url) => {
                let client = node_client("url", url)?;
                let manager_config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(config.connect_timeout))
                    .set_response_timeout(Some(config.timeout))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_secs(1));
                let manager =
                    ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
                        .map_err(invalid("url"))?;
                (Conn::Single(manager), vec![client])
            }
            None => {
                let mut builder =
                    ClusterClientBuilder::new(config.cluster_urls.iter().map(String::as_str))
                        .connection_timeout(config.connect_timeout)
                        .response_timeout(config.timeout)
                        .retries(2)
                        .min_retry_wait(10)
                        .max_retry_wait(200);
                if let Some(u) = &config.username {
                    builder = builder.username(u);
                }
                if let Some(p) = &password {
                    builder = builder.password(p);
                }
                if let Some(ca) = &ca {
                    builder = builder.certs(TlsCertificates {
                        client_tls: None,
                        root_cert: Some(ca.clone()),
                    });
                }
                let client = builder.build().map_err(invalid("cluster_urls"))?;
                let nodes = config
                    .cluster_urls
                    .iter()
                    .map(|u| node_client("cluster_urls", u))
                    .collect::<Result<_, _>>()?;
                let lazy = LazyCluster {
                    client,
                    conn: tokio::sync::Mutex::new(None),
                    last_attempt: Mutex::new(None),
                    connect_timeout: config.connect_timeout,
                };
                (Conn::Cluster(Arc::new(lazy)), nodes)
            }
        };
        Ok(Self {
            conn,
            pubsub,
            prefix: config.key_prefix.clone(),
            timeout: config.timeout,
            admin_timeout: (config.timeout * 10).max(Duration::from_secs(2)),
            index_ttl,
            metrics,
            health: Health::default(),
            sealer,
            integrity: IntegrityLog::default(),
        })
    }

    fn key(&self, kind: &str, id: &Fingerprint) -> String {
        format!("{}{kind}:{}", self.prefix, id.to_hex())
    }

    /// A verdict's key, in its epoch shard's slot.
    fn value_key(&self, fp: &Fingerprint) -> String {
        format!("{}v:{{s{:x}}}{}", self.prefix, shard(fp), fp.to_hex())
    }

    fn epoch_key(&self, shard: u8) -> String {
        format!("{}epoch:{{s{shard:x}}}", self.prefix)
    }

    /// Moves every shard's epoch: no lookup begun before this writes its answer after.
    async fn next_epoch(&self) -> RedisResult<()> {
        let incrs = (0..EPOCH_SHARDS).map(|s| {
            let cmd = redis::cmd("INCR").arg(self.epoch_key(s)).clone();
            async move { self.query::<()>(&cmd).await }
        });
        futures::future::try_join_all(incrs).await.map(|_| ())
    }

    fn channel(&self) -> String {
        format!("{}revocations", self.prefix)
    }

    async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> RedisResult<T> {
        match &self.conn {
            Conn::Single(m) => cmd.query_async(&mut m.clone()).await,
            Conn::Cluster(lazy) => cmd.query_async(&mut lazy.get().await?).await,
        }
    }

    /// Writes a value and its index entries: one MULTI/EXEC on a single server; on a
    /// cluster (other slots, no transaction) the index entries first, then the value.
    /// Returns what the value's command returned.
    async fn write_indexed(&self, index: &[redis::Cmd], value: &redis::Cmd) -> RedisResult<i64> {
        match &self.conn {
            Conn::Single(m) => {
                let mut pipe = redis::pipe();
                pipe.atomic();
                for cmd in index {
                    pipe.add_command(cmd.clone()).ignore();
                }
                pipe.add_command(value.clone());
                let (written,): (i64,) = pipe.query_async(&mut m.clone()).await?;
                Ok(written)
            }
            Conn::Cluster(_) => {
                futures::future::try_join_all(index.iter().map(|c| self.query::<()>(c))).await?;
                self.query(value).await
            }
        }
    }

    /// Runs one operation under `limit`, timing it; failures are counted and logged here.
    /// Review-path operations (`skippable`) skip Redis while it is down, between probes.
    async fn timed<T>(
        &self,
        op: &'static str,
        limit: Duration,
        skippable: bool,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, SharedCacheError> {
        if skippable && self.health.skip() {
            return Err(SharedCacheError::Unavailable {
                op,
                message: "skipped while Redis is unavailable".into(),
            });
        }
        let started = Instant::now();
        let result = tokio::time::timeout(limit, fut).await;
        let labels = RedisOpLabels { op };
        self.metrics
            .redis_latency
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        let message = match result {
            Ok(Ok(v)) => {
                self.health.succeeded();
                return Ok(v);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("timed out after {limit:?}"),
        };
        self.metrics.redis_errors.get_or_create(&labels).inc();
        self.health.failed(op, &message);
        Err(SharedCacheError::Unavailable { op, message })
    }

    /// The shared verdict for `fp`, if Redis has one and answers in time, and its shard's
    /// epoch. Any failure is a miss (already counted and logged), with no epoch.
    /// A value that fails to open (changed, moved from another key, sealed under another
    /// key) is a miss too, counted and logged; it is never served.
    pub async fn get(&self, fp: &Fingerprint) -> SharedRead {
        let key = self.value_key(fp);
        let cmd = redis::cmd("MGET")
            .arg(&key)
            .arg(self.epoch_key(shard(fp)))
            .clone();
        let Ok((bytes, epoch)) = self
            .timed::<(Option<Vec<u8>>, Option<String>)>("get", self.timeout, true, self.query(&cmd))
            .await
        else {
            return SharedRead::default();
        };
        let epoch = Some(Epoch(epoch.unwrap_or_else(|| "0".to_owned())));
        let Some(bytes) = bytes else {
            return SharedRead { entry: None, epoch };
        };
        let entry = self
            .sealer
            .open(key.as_bytes(), &bytes)
            .and_then(|plain| decode(&plain).ok());
        if entry.is_none() {
            self.metrics.cache_integrity_failures.inc();
            self.integrity.failed(fp);
        }
        SharedRead { entry, epoch }
    }

    /// Stores a definitive verdict and indexes it for revocation. Failures are counted,
    /// logged, and otherwise ignored: the verdict is still served.
    pub async fn put(
        &self,
        fp: &Fingerprint,
        token_id: &Fingerprint,
        user_id: Option<&Fingerprint>,
        entry: &CachedVerdict,
        epoch: Epoch,
    ) {
        let ttl = entry.remaining(SystemTime::now());
        let px = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        if px == 0 {
            return;
        }
        let key = self.value_key(fp);
        let Some(sealed) = self.sealer.seal(key.as_bytes(), &encode(entry)) else {
            return;
        };
        let member = fp.to_hex();
        let index_ms = u64::try_from(self.index_ttl.as_millis()).unwrap_or(u64::MAX);
        let set = redis::cmd("EVAL")
            .arg(PUT_IF_EPOCH)
            .arg(2)
            .arg(&key)
            .arg(self.epoch_key(shard(fp)))
            .arg(epoch.0)
            .arg(sealed)
            .arg(px)
            .clone();
        let mut index = Vec::with_capacity(4);
        for set_key in
            std::iter::once(self.key("t", token_id)).chain(user_id.map(|u| self.key("u", u)))
        {
            index.push(redis::cmd("SADD").arg(&set_key).arg(&member).clone());
            index.push(redis::cmd("PEXPIRE").arg(&set_key).arg(index_ms).clone());
        }
        let write = self.write_indexed(&index, &set);
        if let Ok(0) = self.timed("put", self.timeout, true, write).await {
            self.metrics.cache_late_writes_refused.inc();
            tracing::debug!(fingerprint = %fp.short(), "a revocation since this lookup began: its verdict is not stored in Redis");
        }
    }

    /// Deletes every verdict listed under an index set and the set itself, then tells
    /// every replica. Returns how many verdicts were deleted.
    async fn revoke(
        &self,
        index_key: String,
        message: impl FnOnce(Vec<Fingerprint>) -> Revocation,
    ) -> Result<u64, SharedCacheError> {
        let work = async {
            let members: Vec<String> = self.query(redis::cmd("SMEMBERS").arg(&index_key)).await?;
            let keys: Vec<Fingerprint> = members
                .iter()
                .filter_map(|m| parse_fingerprint(m))
                .collect();
            // One DEL per key: in a cluster the keys live in different slots.
            let deletes = keys.iter().map(|fp| {
                let cmd = redis::cmd("DEL").arg(self.value_key(fp)).clone();
                async move { self.query::<u64>(&cmd).await }
            });
            let removed: u64 = futures::future::try_join_all(deletes)
                .await?
                .into_iter()
                .sum();
            self.query::<()>(redis::cmd("DEL").arg(&index_key)).await?;
            let text = message(keys).encode();
            self.query::<()>(redis::cmd("PUBLISH").arg(self.channel()).arg(text))
                .await?;
            Ok(removed)
        };
        // An operator's revocation always tries Redis for real.
        self.timed("revoke", self.admin_timeout, false, work).await
    }

    pub async fn revoke_token(&self, token_id: &Fingerprint) -> Result<u64, SharedCacheError> {
        let token_id = *token_id;
        self.revoke(self.key("t", &token_id), |keys| Revocation::Token {
            token_id,
            keys,
        })
        .await
    }

    pub async fn revoke_user(&self, user_id: &Fingerprint) -> Result<u64, SharedCacheError> {
        let user_id = *user_id;
        self.revoke(self.key("u", &user_id), |keys| Revocation::User {
            user_id,
            keys,
        })
        .await
    }

    /// `key` under this cache's `key_prefix`: the sessions (`session.rs`) keep their keyed
    /// records beside the verdicts, on the same connection.
    pub fn prefixed(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// One command of the sessions store, under the command timeout; not skipped while
    /// Redis seems down (a login has nowhere else to go). Failures are counted and logged.
    pub async fn session_command<T: FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T, SharedCacheError> {
        self.timed(op, self.timeout, false, self.query(cmd)).await
    }

    fn revoked_key(&self) -> String {
        format!("{}revoked", self.prefix)
    }

    /// Stores a revocation in the deny-list set, then tells every replica. Not skipped while
    /// Redis seems down: an operator's revocation always tries.
    pub async fn deny(&self, d: &Denial) -> Result<(), SharedCacheError> {
        let add = redis::cmd("ZADD")
            .arg(self.revoked_key())
            .arg(d.score())
            .arg(d.member())
            .clone();
        let publish = redis::cmd("PUBLISH")
            .arg(self.channel())
            .arg(Message::Deny(*d).encode())
            .clone();
        let work = async {
            self.query::<()>(&add).await?;
            self.next_epoch().await?;
            self.query::<()>(&publish).await
        };
        self.timed("deny", self.admin_timeout, false, work).await
    }

    /// Lifts a revocation and tells every replica; whether it was stored. `kind` only
    /// labels the message.
    pub async fn lift(&self, kind: Kind, id: &Fingerprint) -> Result<bool, SharedCacheError> {
        // Every kind's member: ids never collide, and a caller lifting by id alone may
        // not know the kind.
        let members: Vec<String> = [Kind::Token, Kind::User, Kind::Credential]
            .into_iter()
            .map(|kind| {
                Denial {
                    kind,
                    id: *id,
                    until: None,
                }
                .member()
            })
            .collect();
        let rem = redis::cmd("ZREM")
            .arg(self.revoked_key())
            .arg(members)
            .clone();
        let publish = redis::cmd("PUBLISH")
            .arg(self.channel())
            .arg(Message::Lift(kind, *id).encode())
            .clone();
        let work = async {
            let n: u64 = self.query(&rem).await?;
            // A lookup begun while the revocation held must not store its answer after
            // the lift either: what it found is not what the sources say once lifted.
            self.next_epoch().await?;
            self.query::<()>(&publish).await?;
            Ok(n > 0)
        };
        self.timed("lift", self.admin_timeout, false, work).await
    }

    /// The whole deny-list set, ended revocations dropped first.
    pub async fn denials(&self) -> Result<Stored, SharedCacheError> {
        let key = self.revoked_key();
        let now = revocations::to_ms(SystemTime::now());
        let prune = redis::cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(format!("({now}"))
            .clone();
        let read = redis::cmd("ZRANGE")
            .arg(&key)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .clone();
        let work = async {
            self.query::<()>(&prune).await?;
            self.query::<Vec<(String, f64)>>(&read).await
        };
        let members = self
            .timed("denials", self.admin_timeout, false, work)
            .await?;
        let mut stored = Stored::default();
        for (member, score) in members {
            match member.strip_prefix("m:") {
                Some(marker) => stored.marker = Some(marker.to_owned()),
                None => stored.denials.extend(Denial::parse(&member, score)),
            }
        }
        Ok(stored)
    }

    /// Adds revocations and replaces the marker, in one ZADD.
    pub async fn add_denials(&self, ds: &[Denial], marker: &str) -> Result<(), SharedCacheError> {
        let key = self.revoked_key();
        let stored = self.denials().await?;
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(&key).arg("+inf").arg(format!("m:{marker}"));
        for d in ds {
            zadd.arg(d.score()).arg(d.member());
        }
        let old_markers: Vec<String> = stored
            .marker
            .iter()
            .filter(|m| *m != marker)
            .map(|m| format!("m:{m}"))
            .collect();
        let work = async {
            self.query::<()>(&zadd).await?;
            if !old_markers.is_empty() {
                self.query::<()>(redis::cmd("ZREM").arg(&key).arg(&old_markers))
                    .await?;
            }
            Ok(())
        };
        self.timed("deny", self.admin_timeout, false, work).await
    }

    /// Starts the task that applies every replica's revocations to `local`, reconnecting
    /// (and trying the next cluster node) whenever the subscription is lost.
    pub fn spawn_subscriber(self: &Arc<Self>, local: LocalCache, deny: Arc<DenyList>) {
        let this = self.clone();
        tokio::spawn(async move { this.subscribe_forever(local, deny).await });
    }

    async fn subscribe_forever(&self, local: LocalCache, deny: Arc<DenyList>) {
        let mut subscribed_before = false;
        let mut backoff = Duration::from_millis(100);
        for node in (0..self.pubsub.len()).cycle() {
            match self
                .subscribe_once(&self.pubsub[node], &local, &deny, &mut subscribed_before)
                .await
            {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    self.metrics
                        .redis_errors
                        .get_or_create(&RedisOpLabels { op: "subscribe" })
                        .inc();
                    self.health.failed("subscribe", &e.to_string());
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// Subscribes and applies messages until the connection is lost. `Ok` when it had
    /// been subscribed (so the caller retries promptly).
    async fn subscribe_once(
        &self,
        client: &Client,
        local: &LocalCache,
        deny: &DenyList,
        subscribed_before: &mut bool,
    ) -> RedisResult<()> {
        let timeout_err = || redis::RedisError::from((redis::ErrorKind::Io, "timed out"));
        let pubsub = tokio::time::timeout(self.admin_timeout, client.get_async_pubsub())
            .await
            .map_err(|_| timeout_err())??;
        let (mut sink, mut stream) = pubsub.split();
        tokio::time::timeout(self.admin_timeout, sink.subscribe(self.channel()))
            .await
            .map_err(|_| timeout_err())??;
        self.health.succeeded();
        // Revocations made while this replica was not subscribed reach it by a resync.
        deny.resync_now.notify_one();
        if *subscribed_before {
            // Messages sent while we were away are lost; nothing local can be trusted.
            local.clear();
            tracing::info!("revocation subscription restored; in-process cache dropped");
        } else {
            tracing::info!("subscribed to revocations");
        }
        *subscribed_before = true;
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        tracing::warn!("revocation subscription lost; reconnecting");
                        return Ok(());
                    };
                    let payload: String = msg.get_payload().unwrap_or_default();
                    if let Some(m) = Message::decode(&payload) {
                        deny.apply(m);
                    } else if let Some(r) = Revocation::decode(&payload) {
                        let n = r.apply(local).await;
                        tracing::info!(matched = n, "applied a revocation");
                    } else {
                        tracing::warn!("ignoring a malformed revocation message");
                    }
                }
                _ = tokio::time::sleep(SUBSCRIBER_PING_EVERY) => {
                    let alive = tokio::time::timeout(self.admin_timeout, sink.ping::<redis::Value>()).await;
                    if !matches!(alive, Ok(Ok(_))) {
                        tracing::warn!("revocation subscription not answering; reconnecting");
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// The throttle's shared state (`throttle.rs`): its scripts run on this connection, under
/// the same timeouts, health tracking (skipped while Redis is down) and metrics as the
/// cache's own commands. Its keys share one hash tag, so a script's keys share a slot on a
/// Redis Cluster.
impl Scripts for SharedCache {
    fn prefixed(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    fn run<'a>(
        &'a self,
        op: &'static str,
        script: &'a redis::Script,
        keys: &'a [String],
        args: &'a [String],
    ) -> BoxFuture<'a, Result<redis::Value, String>> {
        Box::pin(async move {
            let mut invocation = script.prepare_invoke();
            for k in keys {
                invocation.key(k);
            }
            for a in args {
                invocation.arg(a);
            }
            let work = async {
                match &self.conn {
                    Conn::Single(m) => invocation.invoke_async(&mut m.clone()).await,
                    Conn::Cluster(lazy) => invocation.invoke_async(&mut lazy.get().await?).await,
                }
            };
            self.timed(op, self.timeout, true, work)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn admin<'a>(
        &'a self,
        op: &'static str,
        cmd: &'a redis::Cmd,
    ) -> BoxFuture<'a, Result<redis::Value, String>> {
        Box::pin(async move {
            self.timed(op, self.admin_timeout, false, self.query(cmd))
                .await
                .map_err(|e| e.to_string())
        })
    }
}

impl SharedStore for SharedCache {
    type Error = SharedCacheError;

    fn get(&self, fp: &Fingerprint) -> impl Future<Output = SharedRead> + Send {
        SharedCache::get(self, fp)
    }

    fn put(
        &self,
        fp: &Fingerprint,
        token_id: &Fingerprint,
        user_id: Option<&Fingerprint>,
        entry: &CachedVerdict,
        epoch: Epoch,
    ) -> impl Future<Output = ()> + Send {
        SharedCache::put(self, fp, token_id, user_id, entry, epoch)
    }

    fn revoke_token(
        &self,
        token_id: &Fingerprint,
    ) -> impl Future<Output = Result<u64, SharedCacheError>> + Send {
        SharedCache::revoke_token(self, token_id)
    }

    fn revoke_user(
        &self,
        user_id: &Fingerprint,
    ) -> impl Future<Output = Result<u64, SharedCacheError>> + Send {
        SharedCache::revoke_user(self, user_id)
    }

    fn deny(&self, denial: &Denial) -> impl Future<Output = Result<(), SharedCacheError>> + Send {
        SharedCache::deny(self, denial)
    }

    fn lift(
        &self,
        kind: Kind,
        id: &Fingerprint,
    ) -> impl Future<Output = Result<bool, SharedCacheError>> + Send {
        SharedCache::lift(self, kind, id)
    }

    fn denials(&self) -> impl Future<Output = Result<Stored, SharedCacheError>> + Send {
        SharedCache::denials(self)
    }

    fn add_denials(
        &self,
        denials: &[Denial],
        marker: &str,
    ) -> impl Future<Output = Result<(), SharedCacheError>> + Send {
        SharedCache::add_denials(self, denials, marker)
    }

    fn subscribe(self: &Arc<Self>, local: LocalCache, deny: Arc<DenyList>) {
        self.spawn_subscriber(local, deny);
    }
}

/// Plaintext form of a cached verdict (sealed before it reaches Redis): short field names,
/// no token (only the key's HMAC).
#[derive(Serialize, Deserialize)]
struct Wire {
    /// Deciding source.
    s: String,
    /// Fresh until (Unix ms).
    e: u64,
    /// Servable stale until (Unix ms).
    t: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    i: Option<WireIdentity>,
}

#[derive(Serialize, Deserialize)]
struct WireIdentity {
    u: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    d: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    g: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    x: BTreeMap<String, Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    a: Vec<String>,
    /// The credential's own expiry (Unix ms), if the source knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    k: Option<u64>,
    /// The one cluster the credential is bound to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    c: Option<String>,
}

fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

pub fn encode(entry: &CachedVerdict) -> Vec<u8> {
    let wire = Wire {
        s: entry.verdict.source.clone(),
        e: to_ms(entry.expires_at),
        t: to_ms(entry.stale_until),
        i: entry.verdict.identity.as_ref().map(|i| WireIdentity {
            u: i.username.clone(),
            d: i.uid.clone(),
            g: i.groups.clone(),
            x: i.extra.clone(),
            a: i.audiences.clone(),
            k: i.expires_at.map(to_ms),
            c: i.cluster.clone(),
        }),
    };
    // Serialising plain strings, vectors and integers cannot fail.
    serde_json::to_vec(&wire).unwrap_or_default()
}

/// Decodes an entry. Deadlines are capped at the credential's own expiry again, so an
/// entry never outlives its token whatever wrote it.
pub fn decode(bytes: &[u8]) -> Result<CachedVerdict, String> {
    let wire: Wire = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let identity = wire.i.map(|i| Identity {
        username: i.u,
        uid: i.d,
        groups: i.g,
        extra: i.x,
        audiences: i.a,
        expires_at: i.k.map(from_ms),
        cluster: i.c,
    });
    let hard = identity.as_ref().and_then(|i| i.expires_at);
    let cap = |t: SystemTime| hard.map_or(t, |h| t.min(h));
    let expires_at = cap(from_ms(wire.e));
    // A negative verdict is never served stale.
    let stale_until = match identity {
        Some(_) => cap(from_ms(wire.t)).max(expires_at),
        None => expires_at,
    };
    Ok(CachedVerdict {
        verdict: Verdict {
            identity,
            source: wire.s,
        },
        expires_at,
        stale_until,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Ttls;

    fn ttls() -> Ttls {
        Ttls {
            positive: Duration::from_secs(60),
            negative: Duration::from_secs(10),
            stale_grace: Duration::from_secs(300),
        }
    }

    fn alice(expires_at: Option<SystemTime>) -> Verdict {
        Verdict {
            identity: Some(Identity {
                username: "alice".into(),
                uid: "1".into(),
                groups: vec!["dev".into()],
                extra: [("k".to_string(), vec!["v".to_string()])].into(),
                audiences: vec!["api".into()],
                expires_at,
                cluster: Some("prod".into()),
            }),
            source: "static".into(),
        }
    }

    /// Millisecond precision on the wire.
    fn round(t: SystemTime) -> SystemTime {
        from_ms(to_ms(t))
    }

    #[test]
    fn round_trip() {
        let now = SystemTime::now();
        for v in [
            alice(None),
            alice(Some(now + Duration::from_secs(5))),
            Verdict {
                identity: None,
                source: "static".into(),
            },
        ] {
            let e = CachedVerdict::new(v, now, &ttls());
            let d = decode(&encode(&e)).unwrap();
            assert_eq!(d.verdict, {
                let mut v = e.verdict.clone();
                if let Some(i) = v.identity.as_mut() {
                    i.expires_at = i.expires_at.map(round);
                }
                v
            });
            assert_eq!(d.expires_at, round(e.expires_at));
            assert_eq!(d.stale_until, round(e.stale_until));
        }
    }

    #[test]
    fn never_past_the_credentials_own_expiry() {
        let now = SystemTime::now();
        let exp = now + Duration::from_secs(5);
        let e = CachedVerdict::new(alice(Some(exp)), now, &ttls());
        assert!(e.expires_at <= exp && e.stale_until <= exp);
        assert!(!e.is_fresh(exp) && !e.is_servable_stale(exp));
        // Even an entry written with later deadlines (another replica, another version)
        // is capped on read.
        let mut forged = e.clone();
        forged.expires_at = now + Duration::from_secs(3600);
        forged.stale_until = now + Duration::from_secs(7200);
        let d = decode(&encode(&forged)).unwrap();
        assert!(d.expires_at <= exp && d.stale_until <= exp);
        assert!(!d.is_fresh(exp + Duration::from_millis(1)));
        assert!(!d.is_servable_stale(exp + Duration::from_millis(1)));
    }

    #[test]
    fn negative_never_stale() {
        let now = SystemTime::now();
        let e = CachedVerdict::new(
            Verdict {
                identity: None,
                source: "s".into(),
            },
            now,
            &ttls(),
        );
        let mut forged = e.clone();
        forged.stale_until = now + Duration::from_secs(3600);
        let d = decode(&encode(&forged)).unwrap();
        assert_eq!(d.stale_until, d.expires_at);
        assert!(!d.is_servable_stale(now));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode(b"not json").is_err());
        assert!(decode(b"{}").is_err());
    }

    #[test]
    fn while_down_only_one_probe_per_interval_tries_redis() {
        let h = Health::default();
        assert!(!h.skip(), "healthy: always try");
        h.failed("get", "connection refused");
        assert!(h.skip() && h.skip(), "down: skip until the next probe");
        std::thread::sleep(PROBE_EVERY + Duration::from_millis(20));
        assert!(!h.skip(), "one probe");
        assert!(h.skip(), "and only one");
        h.succeeded();
        assert!(!h.skip() && !h.skip(), "back: always try");
    }

    #[test]
    fn revocation_messages() {
        let a = Fingerprint([1; 32]);
        let b = Fingerprint([2; 32]);
        for r in [
            Revocation::Token {
                token_id: a,
                keys: vec![b, a],
            },
            Revocation::User {
                user_id: b,
                keys: vec![],
            },
        ] {
            assert_eq!(Revocation::decode(&r.encode()), Some(r));
        }
        assert_eq!(Revocation::decode("x 00"), None);
        assert_eq!(Revocation::decode("t zz"), None);
        assert_eq!(Revocation::decode(""), None);
    }
}
