//! Throttling of failed verifications: password guessing stops at authd, and nobody can
//! lock a real user out of the directory through it.
//!
//! Every distinct wrong `user:password` token would otherwise reach its source (the negative
//! cache only answers the exact same token again), and each wrong LDAP bind counts toward the
//! directory's own lockout. So before a source that keys credentials by user (Basic-auth,
//! LDAP) or by id (PostgreSQL's `<id>.<secret>`) is asked, the failure budgets are consulted:
//! - per subject (the username, per source; or the token id): `burst` failures, then one
//!   more per `period` — a GCRA bucket (generic cell rate algorithm: one timestamp per key);
//! - per cluster: `cluster_burst`, then one per `cluster_period`, across every subject (a
//!   spray over many usernames).
//!
//! A lookup reserves one failure from both budgets before asking, atomically, so concurrent
//! guesses cannot all pass a check that none of them has consumed yet; a success (or a source
//! that could not decide) gives it back: only failures consume budget. Throttled means the
//! source is not asked and the answer is a definitive "no" that no authd cache keeps.
//!
//! A credential that succeeded within `known_good_window` is admitted without consulting the
//! budgets (a keyed hash of the token, never the token), so alice's working token keeps
//! working while someone guesses her password; the guesses are still throttled.
//!
//! State is shared by every replica through Redis (the shared cache's connection): one Lua
//! script per decision, under one hash tag so a Redis Cluster runs it on one node, with
//! Redis's clock. When Redis fails or is absent, the replica decides alone from its own
//! in-memory buckets (the fallback is counted): a review never fails because of Redis.
//! Those buckets mirror what Redis decided while it answered, so an outage (or one slow
//! command) does not hand out a fresh burst.
//! Keys are keyed hashes (`derive_key("throttle")` of the fingerprint key) of the source,
//! username, token id or cluster: Redis never holds a username or a token.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use futures::future::BoxFuture;

use crate::field::FieldError;
use crate::fingerprint::Fingerprinter;
use crate::identity::Outcome;
use crate::metrics::{Metrics, SourceOnlyLabels, ThrottleLabels};
use crate::source::SourceConfig;
use authd_runtime::config::secs;

/// `[throttle]`: on by default. Per-source overrides under `[throttle.sources.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Throttle failed verifications at all (every source that keys its credentials).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Failures of one username (or token id) allowed at once.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// After the burst, one more failure per this period.
    #[serde(default = "secs::<60>", with = "humantime_serde")]
    pub period: Duration,
    /// Failures allowed at once in one cluster, across every username.
    #[serde(default = "default_cluster_burst")]
    pub cluster_burst: u32,
    /// After the cluster's burst, one more failure per this period.
    #[serde(default = "secs::<1>", with = "humantime_serde")]
    pub cluster_period: Duration,
    /// A credential that succeeded within this window is admitted without throttling.
    #[serde(default = "secs::<43200>", with = "humantime_serde")]
    pub known_good_window: Duration,
    /// Count and log what would be throttled; throttle nothing.
    #[serde(default)]
    pub shadow: bool,
    /// A PostgreSQL token whose id exists but whose secret is wrong is revoked by id.
    #[serde(default)]
    pub revoke_on_theft: bool,
    /// How long a throttled answer is held before it is sent (zero: at once). A caller
    /// whose concurrency is bounded (kube-apiserver's in-flight limit, a closed-loop
    /// guesser) then spends its slots waiting instead of guessing, and the CPU goes to
    /// the reviews that can succeed.
    #[serde(default = "secs::<1>", with = "humantime_serde")]
    pub answer_delay: Duration,
    /// Most throttled answers held at once; beyond it they are sent at once (a held answer
    /// costs a timer and the request's memory, so this bounds what holding can cost).
    #[serde(default = "default_max_delayed")]
    pub max_delayed: usize,
    /// Overrides by source name.
    #[serde(default)]
    pub sources: std::collections::BTreeMap<String, SourceOverride>,
}

fn default_max_delayed() -> usize {
    1024
}

/// `[throttle.sources.NAME]`: what differs for one source.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceOverride {
    pub enabled: Option<bool>,
    pub burst: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub period: Option<Duration>,
    pub shadow: Option<bool>,
    pub revoke_on_theft: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    pub known_good_window: Option<Duration>,
}

fn yes() -> bool {
    true
}

fn default_burst() -> u32 {
    3
}

fn default_cluster_burst() -> u32 {
    100
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            burst: default_burst(),
            period: secs::<60>(),
            cluster_burst: default_cluster_burst(),
            cluster_period: secs::<1>(),
            known_good_window: secs::<43200>(),
            shadow: false,
            revoke_on_theft: false,
            answer_delay: secs::<1>(),
            max_delayed: default_max_delayed(),
            sources: Default::default(),
        }
    }
}

/// What a source's credentials are throttled by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectKind {
    /// The username of a `user:password` token.
    User,
    /// The id of an `<id>.<secret>` token.
    TokenId,
}

impl SubjectKind {
    fn of(source: &SourceConfig) -> Option<SubjectKind> {
        match source {
            SourceConfig::BasicAuth(_) | SourceConfig::Ldap(_) => Some(SubjectKind::User),
            SourceConfig::Postgres(_) => Some(SubjectKind::TokenId),
            // Verified offline (a file, a signature): guessing them costs nobody anything.
            SourceConfig::TokenFile(_) | SourceConfig::Jwt(_) => None,
        }
    }

    fn tag(self) -> &'static str {
        match self {
            SubjectKind::User => "u",
            SubjectKind::TokenId => "i",
        }
    }

    /// The `kind` metric label.
    pub fn label(self) -> &'static str {
        match self {
            SubjectKind::User => "user",
            SubjectKind::TokenId => "token_id",
        }
    }
}

/// One GCRA bucket's shape: `burst` at once, then one per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    pub burst: u32,
    pub period: Duration,
}

impl Bucket {
    fn period_ms(&self) -> u64 {
        u64::try_from(self.period.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

/// How one source is throttled.
#[derive(Debug, Clone)]
pub struct Limits {
    pub subject: SubjectKind,
    pub bucket: Bucket,
    pub shadow: bool,
    pub revoke_on_theft: bool,
    pub known_good_window: Duration,
}

/// The throttle settings a pipeline carries (a reload swaps them with the sources).
#[derive(Debug, Clone)]
pub struct Policy {
    /// By source index, `None` for a source that is not throttled.
    pub limits: Vec<Option<Limits>>,
    pub cluster: Bucket,
    /// The source names, by index (for status and reset by name).
    pub names: Vec<String>,
    /// How long a throttled answer is held, and the slots for holding one.
    pub answer_delay: Duration,
    pub delay_slots: Arc<tokio::sync::Semaphore>,
}

impl Policy {
    /// Holds a throttled answer for `answer_delay` when a slot is free; at once otherwise.
    pub async fn hold_throttled_answer(&self) {
        if self.answer_delay.is_zero() {
            return;
        }
        if let Ok(_slot) = self.delay_slots.clone().try_acquire_owned() {
            tokio::time::sleep(self.answer_delay).await;
        }
    }
}

/// Nothing throttled (a pipeline built in code without a configuration).
impl Default for Policy {
    fn default() -> Self {
        let defaults = ThrottleConfig::default();
        Self {
            limits: Vec::new(),
            cluster: Bucket {
                burst: defaults.cluster_burst,
                period: defaults.cluster_period,
            },
            names: Vec::new(),
            answer_delay: Duration::ZERO,
            delay_slots: Arc::new(tokio::sync::Semaphore::new(0)),
        }
    }
}

impl ThrottleConfig {
    /// Checks the values; the error names the field (`throttle.sources.NAME.burst`).
    pub fn validate(&self, sources: &[SourceConfig]) -> Result<(), FieldError> {
        let positive = |field: String, n: u32| {
            if n == 0 {
                Err(FieldError::new(field, "must be at least 1"))
            } else {
                Ok(())
            }
        };
        let nonzero = |field: String, d: Duration| {
            if d.is_zero() {
                Err(FieldError::new(field, "must be more than zero"))
            } else {
                Ok(())
            }
        };
        positive("throttle.burst".into(), self.burst)?;
        positive("throttle.cluster_burst".into(), self.cluster_burst)?;
        nonzero("throttle.period".into(), self.period)?;
        nonzero("throttle.cluster_period".into(), self.cluster_period)?;
        nonzero("throttle.known_good_window".into(), self.known_good_window)?;
        if self.answer_delay > Duration::from_secs(10) {
            return Err(FieldError::new(
                "throttle.answer_delay",
                "at most 10s (kube-apiserver waits for the answer; its webhook timeout is 30s)",
            ));
        }
        for (name, o) in &self.sources {
            let at = format!("throttle.sources.{name}");
            let Some(source) = sources.iter().find(|s| s.name() == name) else {
                return Err(FieldError::new(at, "no source has this name"));
            };
            let Some(kind) = SubjectKind::of(source) else {
                return Err(FieldError::new(
                    at,
                    "this source is not throttled (only basic_auth, ldap and postgres sources \
                     are: the others verify offline)",
                ));
            };
            if let Some(b) = o.burst {
                positive(format!("{at}.burst"), b)?;
            }
            if let Some(p) = o.period {
                nonzero(format!("{at}.period"), p)?;
            }
            if let Some(w) = o.known_good_window {
                nonzero(format!("{at}.known_good_window"), w)?;
            }
            if o.revoke_on_theft == Some(true) && kind != SubjectKind::TokenId {
                return Err(FieldError::new(
                    format!("{at}.revoke_on_theft"),
                    "only for a postgres source (its tokens have an id)",
                ));
            }
        }
        Ok(())
    }

    /// The settings of each source, in order.
    pub fn policy(&self, sources: &[SourceConfig]) -> Policy {
        let limits = sources
            .iter()
            .map(|s| {
                let subject = SubjectKind::of(s)?;
                let o = self.sources.get(s.name()).cloned().unwrap_or_default();
                o.enabled.unwrap_or(self.enabled).then(|| Limits {
                    subject,
                    bucket: Bucket {
                        burst: o.burst.unwrap_or(self.burst),
                        period: o.period.unwrap_or(self.period),
                    },
                    shadow: o.shadow.unwrap_or(self.shadow),
                    revoke_on_theft: subject == SubjectKind::TokenId
                        && o.revoke_on_theft.unwrap_or(self.revoke_on_theft),
                    known_good_window: o.known_good_window.unwrap_or(self.known_good_window),
                })
            })
            .collect();
        Policy {
            limits,
            cluster: Bucket {
                burst: self.cluster_burst,
                period: self.cluster_period,
            },
            names: sources.iter().map(|s| s.name().to_owned()).collect(),
            answer_delay: self.answer_delay,
            delay_slots: Arc::new(tokio::sync::Semaphore::new(
                self.max_delayed.min(tokio::sync::Semaphore::MAX_PERMITS),
            )),
        }
    }
}

/// The throttle's answer for one token, returned by the pipeline in place of asking the
/// source. A marker the verdict cache passes through as "not decided" (so it caches
/// nothing) and the service turns into a definitive "no" (`is_throttled`).
static THROTTLED: LazyLock<Arc<str>> =
    LazyLock::new(|| "throttled: too many failed verifications".into());

/// The pipeline's error for a throttled token.
pub fn throttled() -> Arc<str> {
    THROTTLED.clone()
}

/// Whether a pipeline error is the throttle's refusal (the same allocation, not a message
/// a source could imitate).
pub fn is_throttled(error: &Arc<str>) -> bool {
    Arc::ptr_eq(error, &THROTTLED)
}

/// Which budget refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Subject,
    Cluster,
}

/// What the throttle decided before a source is asked.
#[derive(Debug)]
pub enum Admission {
    /// Not throttled (source not throttled, or no subject in the token).
    Free,
    /// A credential that succeeded recently.
    KnownGood(Keys),
    /// One failure reserved from both budgets; given back unless the source says no.
    Reserved { keys: Keys, local: bool },
    /// Over a budget: do not ask.
    Throttled(Refused),
    /// Over a budget in shadow mode: ask anyway (nothing was reserved).
    Shadowed(Keys),
}

/// The keyed ids of one decision.
#[derive(Debug, Clone)]
pub struct Keys {
    good: [u8; 32],
    subject: [u8; 32],
    cluster: [u8; 32],
    subject_bucket: Bucket,
    cluster_bucket: Bucket,
    known_good_window: Duration,
}

/// The state of one subject's budget, as `kube-authd throttle status` shows it.
#[derive(Debug, Clone)]
pub struct SubjectStatus {
    pub source: String,
    pub kind: SubjectKind,
    pub bucket: Bucket,
    /// Failures allowed now before throttling starts.
    pub remaining: u32,
    /// Until the budget is full again.
    pub recovers_in: Duration,
    /// Until the next failure is allowed (zero when one is allowed now).
    pub retry_in: Duration,
    /// Whether the state came from Redis (else this replica's memory).
    pub shared: bool,
}

/// A lookup's decision script. KEYS: known-good, subject, cluster; ARGV: subject period
/// (ms), subject burst, cluster period, cluster burst. Returns {status, subject left,
/// cluster left, retry ms}: status 0 reserved, 1 known good, 2 subject over budget,
/// 3 cluster over budget. Each bucket's key holds its theoretical arrival time (ms, Redis's
/// clock) and expires when the bucket is full again. Reading `TIME` before writing needs
/// effect replication: the default since Redis 5, asked for explicitly on older servers.
const DECIDE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return {1, 0, 0, 0} end
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function after(key, period)
  local tat = tonumber(redis.call('GET', key) or '0') or 0
  if tat < now then tat = now end
  return tat + period
end
local sp, sb, cp, cb = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local s = after(KEYS[2], sp)
if s - now > sp * sb then return {2, 0, 0, s - now - sp * sb} end
local c = after(KEYS[3], cp)
if c - now > cp * cb then return {3, 0, 0, c - now - cp * cb} end
redis.call('SET', KEYS[2], s, 'PX', s - now)
redis.call('SET', KEYS[3], c, 'PX', c - now)
return {0, math.floor((sp * sb - (s - now)) / sp), math.floor((cp * cb - (c - now)) / cp), 0}
";

/// After the source answered. KEYS as `DECIDE`; ARGV: `good` (mark known good for ARGV[2]
/// ms), `bad` (forget it) or `-`; subject period to give back (0: none); cluster period.
const SETTLE: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] == 'good' then redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
elseif ARGV[1] == 'bad' then redis.call('DEL', KEYS[1]) end
local function refund(key, period)
  if period <= 0 then return end
  local tat = tonumber(redis.call('GET', key) or '0') or 0
  local back = tat - period
  if back > now then redis.call('SET', key, back, 'PX', back - now) else redis.call('DEL', key) end
end
refund(KEYS[2], tonumber(ARGV[3]))
refund(KEYS[3], tonumber(ARGV[4]))
return 1
";

static DECIDE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(DECIDE));
static SETTLE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SETTLE));

/// Where the shared state lives: Redis, through the shared cache's connection, timeouts and
/// health tracking (`cache/redis.rs` implements it). Errors are messages safe to log,
/// already counted and logged by the implementation.
pub trait Scripts: Send + Sync + 'static {
    /// `rest` under the configured key prefix.
    fn prefixed(&self, rest: &str) -> String;
    /// Runs a script on the review path (skipped while Redis is known to be down).
    fn run<'a>(
        &'a self,
        op: &'static str,
        script: &'a redis::Script,
        keys: &'a [String],
        args: &'a [String],
    ) -> BoxFuture<'a, Result<redis::Value, String>>;
    /// Runs one command for an operator (always tried).
    fn admin<'a>(
        &'a self,
        op: &'static str,
        cmd: &'a redis::Cmd,
    ) -> BoxFuture<'a, Result<redis::Value, String>>;
}

/// Revokes a credential id on every replica (for `revoke_on_theft`); given by the service,
/// which holds the deny-list.
pub type Revoke = Box<dyn Fn(String) + Send + Sync>;

/// Most keys the in-memory fallback holds before it drops the expired ones.
const LOCAL_PRUNE_AT: usize = 100_000;
/// Between log lines about throttled reviews (and theft signals).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// This replica's own buckets and known-good set: the fallback when Redis fails, and the
/// known-good set checked before Redis.
#[derive(Default)]
struct Local {
    /// Theoretical arrival time of each bucket.
    tats: HashMap<[u8; 32], Instant>,
    /// Until when a credential counts as known good.
    good: HashMap<[u8; 32], Instant>,
}

impl Local {
    fn is_good(&mut self, key: &[u8; 32], now: Instant) -> bool {
        match self.good.get(key) {
            Some(until) if *until > now => true,
            Some(_) => {
                self.good.remove(key);
                false
            }
            None => false,
        }
    }

    fn after(&self, key: &[u8; 32], bucket: Bucket, now: Instant) -> Instant {
        self.tats.get(key).copied().unwrap_or(now).max(now) + bucket.period
    }

    /// GCRA on both buckets, as `DECIDE` does.
    fn decide(&mut self, keys: &Keys, now: Instant) -> Result<(u32, u32), Refused> {
        if self.tats.len() > LOCAL_PRUNE_AT {
            self.tats.retain(|_, tat| *tat > now);
        }
        let s = self.after(&keys.subject, keys.subject_bucket, now);
        if s - now > keys.subject_bucket.period * keys.subject_bucket.burst {
            return Err(Refused::Subject);
        }
        let c = self.after(&keys.cluster, keys.cluster_bucket, now);
        if c - now > keys.cluster_bucket.period * keys.cluster_bucket.burst {
            return Err(Refused::Cluster);
        }
        self.tats.insert(keys.subject, s);
        self.tats.insert(keys.cluster, c);
        Ok((
            left(keys.subject_bucket, s - now),
            left(keys.cluster_bucket, c - now),
        ))
    }

    /// Keeps this replica's buckets in step with what Redis decided, so that if Redis goes
    /// away the fallback starts from the budgets this replica has seen spent, not from full
    /// ones: a reservation advances both buckets (never past a full burst), a refusal moves
    /// the refusing bucket to where Redis has it (`retry` before its next unit).
    fn mirror(&mut self, keys: &Keys, decided: Result<(), (Refused, Duration)>, now: Instant) {
        if self.tats.len() > LOCAL_PRUNE_AT {
            self.tats.retain(|_, tat| *tat > now);
        }
        match decided {
            Ok(()) => {
                for (key, b) in [
                    (keys.subject, keys.subject_bucket),
                    (keys.cluster, keys.cluster_bucket),
                ] {
                    let next = self.after(&key, b, now).min(now + b.period * b.burst);
                    self.tats.insert(key, next);
                }
            }
            Err((refused, retry)) => {
                let (key, b) = match refused {
                    Refused::Subject => (keys.subject, keys.subject_bucket),
                    Refused::Cluster => (keys.cluster, keys.cluster_bucket),
                };
                let spent = now + b.period * b.burst.saturating_sub(1) + retry;
                let tat = self.tats.entry(key).or_insert(spent);
                *tat = (*tat).max(spent);
            }
        }
    }

    fn refund(&mut self, key: &[u8; 32], bucket: Bucket, now: Instant) {
        if let Some(tat) = self.tats.get_mut(key) {
            match tat.checked_sub(bucket.period) {
                Some(back) if back > now => *tat = back,
                _ => {
                    self.tats.remove(key);
                }
            }
        }
    }

    fn mark_good(&mut self, key: [u8; 32], window: Duration, now: Instant) {
        if self.good.len() > LOCAL_PRUNE_AT {
            self.good.retain(|_, until| *until > now);
        }
        self.good.insert(key, now + window);
    }
}

/// Failures still allowed in `bucket` when its arrival time is `ahead` of now.
fn left(bucket: Bucket, ahead: Duration) -> u32 {
    let room = (bucket.period * bucket.burst).saturating_sub(ahead);
    u32::try_from(room.as_millis() / bucket.period.as_millis().max(1)).unwrap_or(u32::MAX)
}

/// One warn line per `LOG_EVERY` for one kind of event, with how many were not logged.
#[derive(Default)]
struct Quiet {
    last: Mutex<Option<Instant>>,
    since: AtomicU64,
}

impl Quiet {
    /// Whether to log now, and how many were held back since the last line.
    fn due(&self) -> Option<u64> {
        let n = self.since.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            return None;
        }
        *last = Some(Instant::now());
        self.since.store(0, Ordering::Relaxed);
        Some(n)
    }
}

/// The throttle's state and its connection to Redis; one per authd, kept across reloads.
pub struct Throttle {
    /// Keys every id (HMAC-SHA256).
    keyed: Hmac<Sha256>,
    shared: Option<Arc<dyn Scripts>>,
    local: Mutex<Local>,
    metrics: Arc<Metrics>,
    /// For `revoke_on_theft`.
    revoker: OnceLock<Revoke>,
    throttled_log: Quiet,
    theft_log: Quiet,
}

impl Throttle {
    pub fn new(
        fingerprinter: &Fingerprinter,
        shared: Option<Arc<dyn Scripts>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let key = fingerprinter.derive_key("throttle");
        Self {
            keyed: <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC takes any key"),
            shared,
            local: Mutex::default(),
            metrics,
            revoker: OnceLock::new(),
            throttled_log: Quiet::default(),
            theft_log: Quiet::default(),
        }
    }

    /// How `revoke_on_theft` revokes.
    pub fn revoke_with(&self, revoke: Revoke) {
        let _ = self.revoker.set(revoke);
    }

    fn id(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = self.keyed.clone();
        for p in parts {
            mac.update(&(p.len() as u64).to_be_bytes());
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }

    /// The subject's keyed id: usernames compared as directories do (case and surrounding
    /// spaces ignored), so `Alice` does not get a budget of its own.
    fn subject_id(&self, source: &str, kind: SubjectKind, subject: &str) -> [u8; 32] {
        let normal = match kind {
            SubjectKind::User => subject.trim().to_lowercase(),
            SubjectKind::TokenId => subject.to_owned(),
        };
        self.id(&[kind.tag().as_bytes(), source.as_bytes(), normal.as_bytes()])
    }

    fn redis_key(shared: &dyn Scripts, kind: &str, id: &[u8; 32]) -> String {
        // One hash tag for every throttle key: a decision's keys share a slot.
        shared.prefixed(&format!("{{th}}{kind}:{}", hex::encode(id)))
    }

    /// Decides whether `source` may be asked about `token`, whose subject is `subject`, for
    /// `cluster` (a configured cluster's label).
    pub async fn admit(
        &self,
        policy: &Policy,
        index: usize,
        token: &str,
        subject: Option<&str>,
        cluster: &str,
    ) -> Admission {
        let (Some(Some(limits)), Some(subject)) = (policy.limits.get(index), subject) else {
            return Admission::Free;
        };
        let source = policy.names[index].as_str();
        let keys = Keys {
            good: self.id(&[b"g", token.as_bytes()]),
            subject: self.subject_id(source, limits.subject, subject),
            cluster: self.id(&[b"c", cluster.as_bytes()]),
            subject_bucket: limits.bucket,
            cluster_bucket: policy.cluster,
            known_good_window: limits.known_good_window,
        };
        let now = Instant::now();
        if self.lock().is_good(&keys.good, now) {
            return self.known_good(source, keys);
        }
        let decided = match &self.shared {
            Some(shared) => match self.decide_shared(&**shared, &keys).await {
                Ok(d) => Some(d),
                Err(_) => {
                    self.metrics.throttle_fallbacks.inc();
                    None
                }
            },
            None => None,
        };
        let (decided, local) = match decided {
            Some(Shared::KnownGood) => {
                // Remembered here too: if Redis goes away, this replica still knows it.
                self.lock()
                    .mark_good(keys.good, keys.known_good_window, now);
                return self.known_good(source, keys);
            }
            Some(Shared::Decided(d)) => (d, false),
            None => (self.lock().decide(&keys, now), true),
        };
        match decided {
            Ok((subject_left, cluster_left)) => {
                for (kind, left) in [
                    (limits.subject.label(), subject_left),
                    ("cluster", cluster_left),
                ] {
                    if left == 0 {
                        self.metrics
                            .throttle_near_limit
                            .get_or_create(&labels(kind, source, limits.shadow))
                            .inc();
                    }
                }
                Admission::Reserved { keys, local }
            }
            Err(refused) => {
                let kind = match refused {
                    Refused::Subject => limits.subject.label(),
                    Refused::Cluster => "cluster",
                };
                self.metrics
                    .throttled
                    .get_or_create(&labels(kind, source, limits.shadow))
                    .inc();
                if let Some(held_back) = self.throttled_log.due() {
                    let id = match refused {
                        Refused::Subject => hex::encode(&keys.subject[..8]),
                        Refused::Cluster => hex::encode(&keys.cluster[..8]),
                    };
                    tracing::warn!(source, kind, key = %id, shadow = limits.shadow, local,
                        held_back, "failed verifications over budget: throttled{}",
                        if limits.shadow { " (shadow mode: the source is asked anyway)" } else { "" });
                }
                if limits.shadow {
                    Admission::Shadowed(keys)
                } else {
                    Admission::Throttled(refused)
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn known_good(&self, source: &str, keys: Keys) -> Admission {
        self.metrics
            .throttle_known_good
            .get_or_create(&SourceOnlyLabels {
                source: source.to_owned(),
            })
            .inc();
        Admission::KnownGood(keys)
    }

    async fn decide_shared(&self, shared: &dyn Scripts, keys: &Keys) -> Result<Shared, String> {
        let k = [
            Self::redis_key(shared, "g", &keys.good),
            Self::redis_key(shared, "s", &keys.subject),
            Self::redis_key(shared, "c", &keys.cluster),
        ];
        let args = [
            keys.subject_bucket.period_ms(),
            u64::from(keys.subject_bucket.burst),
            keys.cluster_bucket.period_ms(),
            u64::from(keys.cluster_bucket.burst),
        ]
        .map(|n| n.to_string());
        let value = shared.run("throttle", &DECIDE_SCRIPT, &k, &args).await?;
        let r: Vec<i64> = redis::from_redis_value(value).map_err(|e| e.to_string())?;
        let at = |i: usize| r.get(i).copied().unwrap_or(0).max(0);
        let n = |i: usize| u32::try_from(at(i)).unwrap_or(u32::MAX);
        let decided = match at(0) {
            0 => Ok((n(1), n(2))),
            1 => return Ok(Shared::KnownGood),
            2 => Err(Refused::Subject),
            _ => Err(Refused::Cluster),
        };
        let retry = Duration::from_millis(u64::try_from(at(3)).unwrap_or(0));
        self.lock().mirror(
            keys,
            decided.map(drop).map_err(|r| (r, retry)),
            Instant::now(),
        );
        Ok(Shared::Decided(decided))
    }

    /// After the source answered: a success marks the credential known good and gives the
    /// reservation back; "could not decide" and "not mine" give it back; a failure keeps
    /// it (and forgets a known-good credential that no longer works).
    ///
    /// Redis's part is sent off in a task of its own: the review does not wait for it (a
    /// success's known-good mark and refund land a round trip later).
    pub fn settle(&self, admission: Admission, outcome: &Outcome) {
        let was_known_good = matches!(admission, Admission::KnownGood(_));
        let (keys, reserved) = match admission {
            Admission::Free | Admission::Throttled(_) => return,
            Admission::KnownGood(keys) | Admission::Shadowed(keys) => (keys, None),
            Admission::Reserved { keys, local } => (keys, Some(local)),
        };
        let (good, refund) = match outcome {
            Outcome::Authenticated(_) => (Some(true), true),
            // Only a known-good credential has anything to forget.
            Outcome::Rejected | Outcome::WrongSecret => (was_known_good.then_some(false), false),
            Outcome::NotMine | Outcome::Undecided(_) => (None, true),
        };
        let refund = refund && reserved.is_some();
        let now = Instant::now();
        {
            let mut local = self.lock();
            match good {
                Some(true) => local.mark_good(keys.good, keys.known_good_window, now),
                Some(false) => {
                    local.good.remove(&keys.good);
                }
                None => {}
            }
            // Redis's reservations are mirrored here: given back here too.
            if refund {
                local.refund(&keys.subject, keys.subject_bucket, now);
                local.refund(&keys.cluster, keys.cluster_bucket, now);
            }
        }
        let Some(shared) = &self.shared else { return };
        let shared_refund = refund && reserved == Some(false);
        if good.is_none() && !shared_refund {
            return;
        }
        let shared = shared.clone();
        let k = [
            Self::redis_key(&*shared, "g", &keys.good),
            Self::redis_key(&*shared, "s", &keys.subject),
            Self::redis_key(&*shared, "c", &keys.cluster),
        ];
        let mark = match good {
            Some(true) => "good",
            Some(false) => "bad",
            None => "-",
        };
        let (sp, cp) = if shared_refund {
            (
                keys.subject_bucket.period_ms(),
                keys.cluster_bucket.period_ms(),
            )
        } else {
            (0, 0)
        };
        let window = u64::try_from(keys.known_good_window.as_millis()).unwrap_or(u64::MAX);
        let args = [
            mark.to_owned(),
            window.to_string(),
            sp.to_string(),
            cp.to_string(),
        ];
        // A failure is counted and logged by the shared level; the local state holds.
        // Bounded by the shared level's command timeout.
        tokio::spawn(async move {
            let _ = shared
                .run("throttle_settle", &SETTLE_SCRIPT, &k, &args)
                .await;
        });
    }

    /// A valid token id with a wrong secret: someone holds the id. Logged (rate-limited),
    /// counted, and with `revoke_on_theft` the id is revoked on every replica.
    pub fn theft(&self, policy: &Policy, index: usize, credential_id: Option<&str>) {
        let source = policy.names.get(index).map_or("", String::as_str);
        self.metrics
            .throttle_theft_signals
            .get_or_create(&SourceOnlyLabels {
                source: source.to_owned(),
            })
            .inc();
        let revoke = policy
            .limits
            .get(index)
            .and_then(Option::as_ref)
            .is_some_and(|l| l.revoke_on_theft);
        if let Some(held_back) = self.theft_log.due() {
            tracing::warn!(
                source,
                id = credential_id.unwrap_or(""),
                revoke,
                held_back,
                "a known token id was presented with a wrong secret: someone may hold the id"
            );
        }
        if let (true, Some(id), Some(revoke)) = (revoke, credential_id, self.revoker.get()) {
            revoke(id.to_owned());
        }
    }

    /// The budgets of `subject` (a username or a token id) in every throttled source of
    /// that kind (or only `source`).
    pub async fn status(
        &self,
        policy: &Policy,
        kind: SubjectKind,
        subject: &str,
        source: Option<&str>,
    ) -> Vec<SubjectStatus> {
        let mut out = Vec::new();
        for (i, limits) in policy.limits.iter().enumerate() {
            let name = &policy.names[i];
            let Some(limits) = limits.as_ref().filter(|l| l.subject == kind) else {
                continue;
            };
            if source.is_some_and(|s| s != name) {
                continue;
            }
            let id = self.subject_id(name, kind, subject);
            let shared_ahead = match &self.shared {
                Some(shared) => {
                    let cmd = redis::cmd("PTTL")
                        .arg(Self::redis_key(&**shared, "s", &id))
                        .clone();
                    shared
                        .admin("throttle_status", &cmd)
                        .await
                        .ok()
                        .and_then(|v| redis::from_redis_value::<i64>(v).ok())
                        .map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
                }
                None => None,
            };
            let shared = shared_ahead.is_some();
            let ahead = shared_ahead.unwrap_or_else(|| {
                let now = Instant::now();
                self.lock()
                    .tats
                    .get(&id)
                    .map_or(Duration::ZERO, |tat| tat.saturating_duration_since(now))
            });
            let b = limits.bucket;
            let limit = b.period * b.burst.saturating_sub(1);
            out.push(SubjectStatus {
                source: name.clone(),
                kind,
                bucket: b,
                remaining: left(b, ahead),
                recovers_in: ahead,
                retry_in: ahead.saturating_sub(limit),
                shared,
            });
        }
        out
    }

    /// Empties the budgets of `subject` (in Redis and in this replica's memory); how many
    /// sources' budgets were reset. An error: Redis did not take it.
    pub async fn reset(
        &self,
        policy: &Policy,
        kind: SubjectKind,
        subject: &str,
        source: Option<&str>,
    ) -> Result<usize, String> {
        let mut n = 0;
        for (i, limits) in policy.limits.iter().enumerate() {
            let name = &policy.names[i];
            if limits.as_ref().is_none_or(|l| l.subject != kind)
                || source.is_some_and(|s| s != name)
            {
                continue;
            }
            let id = self.subject_id(name, kind, subject);
            self.lock().tats.remove(&id);
            if let Some(shared) = &self.shared {
                let cmd = redis::cmd("DEL")
                    .arg(Self::redis_key(&**shared, "s", &id))
                    .clone();
                shared.admin("throttle_reset", &cmd).await?;
            }
            n += 1;
        }
        Ok(n)
    }
}

/// What the shared decision script said.
enum Shared {
    KnownGood,
    Decided(Result<(u32, u32), Refused>),
}

fn labels(kind: &'static str, source: &str, shadow: bool) -> ThrottleLabels {
    ThrottleLabels {
        kind,
        source: source.to_owned(),
        mode: if shadow { "shadow" } else { "enforce" },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(burst: u32, period: Duration, cluster_burst: u32) -> Keys {
        Keys {
            good: [1; 32],
            subject: [2; 32],
            cluster: [3; 32],
            subject_bucket: Bucket { burst, period },
            cluster_bucket: Bucket {
                burst: cluster_burst,
                period: Duration::from_secs(3600),
            },
            known_good_window: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_burst_then_one_per_period() {
        let mut l = Local::default();
        let k = keys(3, Duration::from_secs(10), 100);
        let t0 = Instant::now();
        assert_eq!(l.decide(&k, t0), Ok((2, 99)));
        assert_eq!(l.decide(&k, t0).map(|r| r.0), Ok(1));
        assert_eq!(l.decide(&k, t0).map(|r| r.0), Ok(0));
        assert_eq!(l.decide(&k, t0), Err(Refused::Subject));
        // A refusal consumes nothing: one period later exactly one more.
        let t1 = t0 + Duration::from_secs(10);
        assert!(l.decide(&k, t1).is_ok());
        assert_eq!(l.decide(&k, t1), Err(Refused::Subject));
    }

    #[test]
    fn a_refund_gives_one_back() {
        let mut l = Local::default();
        let k = keys(1, Duration::from_secs(10), 100);
        let t0 = Instant::now();
        assert!(l.decide(&k, t0).is_ok());
        assert_eq!(l.decide(&k, t0), Err(Refused::Subject));
        l.refund(&k.subject, k.subject_bucket, t0);
        l.refund(&k.cluster, k.cluster_bucket, t0);
        assert!(l.decide(&k, t0).is_ok());
    }

    #[test]
    fn the_cluster_budget_spans_subjects() {
        let mut l = Local::default();
        let t0 = Instant::now();
        for i in 0..5u8 {
            let mut k = keys(3, Duration::from_secs(10), 5);
            k.subject = [i + 10; 32];
            assert!(l.decide(&k, t0).is_ok());
        }
        let mut k = keys(3, Duration::from_secs(10), 5);
        k.subject = [99; 32];
        assert_eq!(l.decide(&k, t0), Err(Refused::Cluster));
        // Nothing reserved from the subject on a cluster refusal.
        assert!(!l.tats.contains_key(&[99; 32]));
    }

    #[test]
    fn the_fallback_starts_from_what_redis_decided() {
        let mut l = Local::default();
        let k = keys(3, Duration::from_secs(10), 100);
        let t0 = Instant::now();
        // Redis reserved two units, then refused with 4 s to wait.
        l.mirror(&k, Ok(()), t0);
        l.mirror(&k, Ok(()), t0);
        assert_eq!(
            l.tats[&k.subject],
            t0 + Duration::from_secs(20),
            "one unit left"
        );
        l.mirror(&k, Err((Refused::Subject, Duration::from_secs(4))), t0);
        assert_eq!(l.decide(&k, t0), Err(Refused::Subject));
        assert_eq!(
            l.decide(&k, t0 + Duration::from_secs(3)),
            Err(Refused::Subject)
        );
        assert!(l.decide(&k, t0 + Duration::from_secs(4)).is_ok());
    }

    #[test]
    fn usernames_fold_case_and_spaces() {
        let t = Throttle::new(
            &Fingerprinter::new(b"k"),
            None,
            Arc::new(Metrics::default()),
        );
        let a = t.subject_id("dir", SubjectKind::User, "alice");
        assert_eq!(a, t.subject_id("dir", SubjectKind::User, " ALICE "));
        assert_ne!(a, t.subject_id("other", SubjectKind::User, "alice"));
        assert_ne!(a, t.subject_id("dir", SubjectKind::TokenId, "alice"));
    }

    #[test]
    fn the_marker_is_not_a_message() {
        assert!(is_throttled(&throttled()));
        let imitation: Arc<str> = (*throttled()).into();
        assert!(!is_throttled(&imitation));
    }
}
