//! JWT / OIDC tokens from one issuer (configure one source per issuer for several).
//!
//! Routing reads the token's *unverified* `iss` (three base64url parts, JSON payload) only
//! to decide ownership; everything else is verified: the signature with an algorithm pinned
//! in the configuration (never `none`, never HMAC, which would let a public key act as a
//! shared secret), `iss`, `aud`, `exp` and `nbf` with a small leeway.
//!
//! Keys come from static PEM files and/or a JWKS: at `jwks_url`, or at the `jwks_uri` of the
//! issuer's OIDC discovery document (`discovery = true`; its `issuer` must be ours exactly).
//! The JWKS is fetched on first use and then follows the issuer: a background task fetches
//! it again every `jwks_refresh` (or the response's `Cache-Control: max-age`, clamped to
//! `jwks_max_age_min..=jwks_max_age_max`), so a key the issuer withdraws stops verifying
//! within that interval. A token naming an unknown `kid` fetches it at once, unless a fetch
//! started within `jwks_min_refresh`; concurrent callers share one fetch, which runs in a
//! task of its own and holds no lock while it waits on the network. While the JWKS cannot be
//! fetched, tokens signed with cached keys still verify and tokens naming unknown keys are
//! "could not decide", never a cached no.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use authd_runtime::config::secs;
use base64::Engine;
use futures::future::{BoxFuture, FutureExt, Shared};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::common::{check_plaintext, check_timeout, http_roots, resolve, FileError, HttpUrl};
use super::{BuildError, Kind, Verifier};
use crate::field::{FieldError, Removed};
use crate::identity::{Identity, Outcome};
use crate::mapping::Mapping;

/// Tokens longer than this are not JWTs we will parse.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Largest OIDC discovery document accepted.
const MAX_DISCOVERY_BYTES: usize = 64 * 1024;
/// Where an OIDC issuer publishes its discovery document, below the issuer URL.
const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
/// The shortest periodic refresh accepted: an issuer is not ours to hammer.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// `type = "jwt"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub name: String,
    /// Exact `iss` value; the source owns tokens claiming it.
    pub issuer: String,
    /// At least one must be in the token's `aud`.
    pub audiences: Vec<String>,
    /// Also require the token's `aud` to meet the TokenReview's `spec.audiences` and return
    /// the intersection as `status.audiences`.
    #[serde(default)]
    pub audience_aware: bool,
    /// Accepted `alg` values, e.g. `["RS256", "ES256", "EdDSA"]`. HMAC and `none` are refused.
    pub algorithms: Vec<String>,
    /// PEM public keys (SPKI `PUBLIC KEY`, or `RSA PUBLIC KEY`).
    #[serde(default)]
    pub keys: Vec<PathBuf>,
    /// JWKS document URL.
    pub jwks_url: Option<HttpUrl>,
    /// Find the JWKS from `{issuer}/.well-known/openid-configuration` (OIDC discovery)
    /// instead of `jwks_url`: explicit, so a source with static keys fetches nothing.
    #[serde(default)]
    pub discovery: bool,
    /// PEM CA bundle trusted (alone) for `jwks_url` and discovery.
    pub ca_file: Option<PathBuf>,
    /// Accept a plaintext `http://` `jwks_url` (or discovery URL, or discovered `jwks_uri`)
    /// to a host other than this machine (an on-path attacker can inject signing keys).
    /// Off: a start-up error (a discovered one: the fetch fails).
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Limit for one JWKS fetch (with discovery: both requests).
    #[serde(default = "secs::<2>", with = "humantime_serde")]
    pub jwks_timeout: Duration,
    /// Least time between two fetches for unknown `kid`s: a flood of made-up kids costs the
    /// issuer one request per this interval.
    #[serde(default = "secs::<10>", with = "humantime_serde")]
    pub jwks_min_refresh: Duration,
    /// How long after a fetch the key set is fetched again, when the response does not say
    /// (`Cache-Control: max-age`); also how long a withdrawn key may go on verifying.
    #[serde(default = "secs::<300>", with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// Lower bound on a response's `max-age` (and what `no-cache` means).
    #[serde(default = "secs::<30>", with = "humantime_serde")]
    pub jwks_max_age_min: Duration,
    /// Upper bound on a response's `max-age`: an issuer cannot make us keep a key longer.
    #[serde(default = "secs::<3600>", with = "humantime_serde")]
    pub jwks_max_age_max: Duration,
    /// Clock skew allowed for `exp` and `nbf`.
    #[serde(default = "secs::<30>", with = "humantime_serde")]
    pub leeway: Duration,
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    /// Claim holding a list of group names (or one name); no groups without it.
    pub groups_claim: Option<String>,
    /// Prefixes, renames and filters: the same `mapping` every source has.
    #[serde(default)]
    pub mapping: Mapping,
    /// Removed: one way to prefix names, the mapping.
    #[serde(
        default,
        rename = "username_prefix",
        deserialize_with = "removed_username_prefix"
    )]
    _username_prefix: Removed,
    /// Removed: one way to prefix names, the mapping.
    #[serde(
        default,
        rename = "groups_prefix",
        deserialize_with = "removed_groups_prefix"
    )]
    _groups_prefix: Removed,
}

fn removed_username_prefix<'de, D: serde::Deserializer<'de>>(_: D) -> Result<Removed, D::Error> {
    Err(serde::de::Error::custom(
        "username_prefix was removed: write mapping.username = \"<prefix>{user}\" instead",
    ))
}

fn removed_groups_prefix<'de, D: serde::Deserializer<'de>>(_: D) -> Result<Removed, D::Error> {
    Err(serde::de::Error::custom(
        "groups_prefix was removed: write mapping.group_prefix = \"<prefix>\" instead \
         (mapping.group_renames and allow_groups see the names without it)",
    ))
}

fn default_username_claim() -> String {
    "sub".into()
}

impl Kind for Config {
    fn name(&self) -> &str {
        &self.name
    }

    fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    fn files(&self) -> Vec<&Path> {
        self.keys
            .iter()
            .chain(&self.ca_file)
            .map(PathBuf::as_path)
            .collect()
    }

    fn resolve_paths(&mut self, base: &Path) {
        for p in self.keys.iter_mut().chain(self.ca_file.as_mut()) {
            resolve(base, p);
        }
    }

    fn validate(&self) -> Result<(), FieldError> {
        if self.issuer.is_empty() {
            return Err(FieldError::new("issuer", "must not be empty"));
        }
        if self.audiences.is_empty() || self.audiences.iter().any(String::is_empty) {
            return Err(FieldError::new(
                "audiences",
                "at least one non-empty audience is required",
            ));
        }
        if self.parsed_algorithms()?.is_empty() {
            return Err(FieldError::new(
                "algorithms",
                "at least one algorithm is required",
            ));
        }
        if self.keys.is_empty() && self.jwks_url.is_none() && !self.discovery {
            return Err(FieldError::new(
                "keys",
                "give PEM key files in keys, a jwks_url, or discovery = true",
            ));
        }
        if self.discovery {
            if self.jwks_url.is_some() {
                return Err(FieldError::new(
                    "discovery",
                    "discovery = true finds the JWKS from the issuer: remove jwks_url, or discovery",
                ));
            }
            let url = self.discovery_url()?;
            let url = url.as_url();
            if url.scheme() == "http" {
                check_plaintext(
                    "issuer",
                    url.host_str().unwrap_or(""),
                    "http:// discovery (signing keys found without TLS)",
                    "allow_plaintext",
                    self.allow_plaintext,
                )?;
            }
        }
        if self.leeway > Duration::from_secs(300) {
            return Err(FieldError::new("leeway", "at most 5m"));
        }
        check_timeout("jwks_timeout", self.jwks_timeout)?;
        check_timeout("jwks_min_refresh", self.jwks_min_refresh)?;
        for (field, d) in [
            ("jwks_refresh", self.jwks_refresh),
            ("jwks_max_age_min", self.jwks_max_age_min),
        ] {
            if d < MIN_INTERVAL {
                return Err(FieldError::new(field, "at least 1s"));
            }
        }
        if self.jwks_max_age_max < self.jwks_max_age_min {
            return Err(FieldError::new(
                "jwks_max_age_max",
                "must not be less than jwks_max_age_min",
            ));
        }
        if let Some(url) = self.jwks_url.as_ref().map(HttpUrl::as_url) {
            if url.scheme() == "http" {
                check_plaintext(
                    "jwks_url",
                    url.host_str().unwrap_or(""),
                    "http:// (signing keys fetched without TLS)",
                    "allow_plaintext",
                    self.allow_plaintext,
                )?;
            }
        }
        if self.username_claim.is_empty() {
            return Err(FieldError::new("username_claim", "must not be empty"));
        }
        Ok(())
    }

    fn build(&self) -> Result<Arc<dyn Verifier>, BuildError> {
        Ok(Arc::new(Jwt::new(self)?))
    }
}

impl Config {
    /// `{issuer}/.well-known/openid-configuration` (OIDC Discovery 1.0 §4: a trailing `/`
    /// of the issuer is not doubled).
    fn discovery_url(&self) -> Result<HttpUrl, FieldError> {
        let base = self.issuer.strip_suffix('/').unwrap_or(&self.issuer);
        HttpUrl::parse(&format!("{base}{DISCOVERY_PATH}")).map_err(|e| {
            FieldError::new(
                "issuer",
                format!("with discovery = true, must be an http(s) URL: {e}"),
            )
        })
    }

    fn parsed_algorithms(&self) -> Result<Vec<Algorithm>, FieldError> {
        self.algorithms
            .iter()
            .map(|a| {
                let alg = Algorithm::from_str(a).map_err(|_| {
                    FieldError::new("algorithms", format!("{a:?} is not a JWS algorithm (e.g. RS256, ES256, EdDSA); \"none\" is never accepted"))
                })?;
                if alg.family() == AlgorithmFamily::Hmac {
                    return Err(FieldError::new(
                        "algorithms",
                        format!("{a:?} is HMAC; only public-key algorithms are accepted"),
                    ));
                }
                Ok(alg)
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("keys: {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error(transparent)]
    Ca(#[from] FileError),
    #[error(transparent)]
    Config(#[from] FieldError),
}

/// A verification key and the `kid` it was published under, if any.
struct Key {
    kid: Option<String>,
    key: DecodingKey,
}

/// A fetch in progress, awaited by every caller that wants its result. It runs in a task of
/// its own: a caller that goes away mid-fetch stops neither it nor the others.
type Fetch = Shared<BoxFuture<'static, Result<(), String>>>;

struct JwksState {
    keys: Vec<Key>,
    /// When the last fetch started: unknown kids fetch at most once per `min_refresh`.
    last_attempt: Option<Instant>,
    /// Whether the last fetch worked; unknown kids are only a definitive no when it did.
    last_ok: bool,
    in_flight: Option<Fetch>,
    /// When the background task fetches again (set when a fetch ends).
    next_due: Instant,
    /// The `jwks_uri` discovery found; forgotten when a fetch fails, so it is looked up again.
    discovered: Option<HttpUrl>,
    /// The background refresh, started by the first fetch (in a Tokio runtime: building a
    /// source, e.g. for `config check`, starts nothing) and stopped when the source goes.
    follower: Option<tokio::task::AbortHandle>,
}

/// Where the key set is published.
enum Location {
    Url(HttpUrl),
    /// The issuer's discovery document, whose `issuer` must be this one exactly.
    Discovery {
        document: HttpUrl,
        issuer: String,
    },
}

/// When the key set is fetched again after a successful fetch.
#[derive(Clone, Copy)]
struct Schedule {
    default: Duration,
    min: Duration,
    max: Duration,
}

impl Schedule {
    /// The response's `max-age`, within bounds; the configured interval when it has none.
    fn after(&self, max_age: Option<Duration>) -> Duration {
        max_age.map_or(self.default, |a| a.clamp(self.min, self.max))
    }
}

struct Jwks {
    location: Location,
    client: reqwest::Client,
    /// Bounds one fetch (discovery included), and how long a caller waits for one.
    timeout: Duration,
    min_refresh: Duration,
    schedule: Schedule,
    allow_plaintext: bool,
    /// Never held across an await.
    state: RwLock<JwksState>,
}

impl Drop for Jwks {
    fn drop(&mut self) {
        let s = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(follower) = s.follower.take() {
            follower.abort();
        }
    }
}

pub struct Jwt {
    name: String,
    issuer: String,
    audiences: Vec<String>,
    audience_aware: bool,
    algorithms: Vec<Algorithm>,
    static_keys: Vec<Key>,
    jwks: Option<Arc<Jwks>>,
    leeway: Duration,
    username_claim: String,
    groups_claim: Option<String>,
}

/// What key lookup found for a token.
enum Keys {
    Found(Vec<DecodingKey>),
    /// No key for this token, and the key set is known to be current.
    None,
    /// No key, and the JWKS could not be fetched.
    Unavailable(String),
}

impl Jwt {
    /// Reads the static keys and builds the JWKS client; does not fetch anything.
    pub fn new(c: &Config) -> Result<Self, JwtError> {
        let algorithms = c.parsed_algorithms()?;
        let mut static_keys = Vec::new();
        for path in &c.keys {
            let key_err = |message: String| JwtError::Key {
                path: path.clone(),
                message,
            };
            let pem = std::fs::read(path).map_err(|e| key_err(format!("cannot read: {e}")))?;
            let key = [
                DecodingKey::from_rsa_pem(&pem),
                DecodingKey::from_ec_pem(&pem),
                DecodingKey::from_ed_pem(&pem),
            ]
            .into_iter()
            .find_map(Result::ok)
            .ok_or_else(|| key_err("not a PEM RSA, EC or Ed25519 public key".into()))?;
            if !algorithms.iter().any(|a| a.family() == key.family()) {
                return Err(key_err(format!(
                    "a {:?} key, but no algorithm of that family is in algorithms",
                    key.family()
                )));
            }
            static_keys.push(Key { kid: None, key });
        }
        let jwks = match (&c.jwks_url, c.discovery) {
            (None, false) => None,
            (url, _) => {
                let location = match url {
                    Some(url) => Location::Url(url.clone()),
                    None => Location::Discovery {
                        document: c.discovery_url()?,
                        issuer: c.issuer.clone(),
                    },
                };
                let mut b = reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .no_proxy()
                    .timeout(c.jwks_timeout)
                    .connect_timeout(c.jwks_timeout);
                if let Some(path) = &c.ca_file {
                    b = b.tls_certs_only(http_roots("ca_file", path)?);
                }
                let field = if c.discovery { "discovery" } else { "jwks_url" };
                let client = b
                    .build()
                    .map_err(|e| FieldError::new(field, format!("cannot build client: {e}")))?;
                Some(Arc::new(Jwks {
                    location,
                    client,
                    timeout: c.jwks_timeout,
                    min_refresh: c.jwks_min_refresh,
                    schedule: Schedule {
                        default: c.jwks_refresh,
                        min: c.jwks_max_age_min,
                        max: c.jwks_max_age_max,
                    },
                    allow_plaintext: c.allow_plaintext,
                    state: RwLock::new(JwksState {
                        keys: Vec::new(),
                        last_attempt: None,
                        last_ok: false,
                        in_flight: None,
                        next_due: Instant::now(),
                        discovered: None,
                        follower: None,
                    }),
                }))
            }
        };
        Ok(Self {
            name: c.name.clone(),
            issuer: c.issuer.clone(),
            audiences: c.audiences.clone(),
            audience_aware: c.audience_aware,
            algorithms,
            static_keys,
            jwks,
            leeway: c.leeway,
            username_claim: c.username_claim.clone(),
            groups_claim: c.groups_claim.clone(),
        })
    }

    async fn keys_for(&self, alg: Algorithm, kid: Option<&str>) -> Keys {
        let matching = |keys: &[Key]| -> Vec<DecodingKey> {
            keys.iter()
                .filter(|k| k.key.family() == alg.family())
                .filter(|k| match (kid, &k.kid) {
                    (Some(want), Some(have)) => want == have,
                    (Some(_), None) => true,
                    (None, _) => true,
                })
                .map(|k| k.key.clone())
                .collect()
        };
        let mut found = matching(&self.static_keys);
        let Some(jwks) = &self.jwks else {
            return if found.is_empty() {
                Keys::None
            } else {
                Keys::Found(found)
            };
        };
        found.extend(matching(&jwks.read().keys));
        if !found.is_empty() {
            return Keys::Found(found);
        }
        if let Err(why) = jwks.refresh().await {
            return Keys::Unavailable(why);
        }
        let found = matching(&jwks.read().keys);
        if found.is_empty() {
            Keys::None
        } else {
            Keys::Found(found)
        }
    }

    async fn check(&self, token: &str, requested: &[String]) -> Outcome {
        let reject = |why: &str| {
            tracing::debug!(source = %self.name, reason = why, "JWT rejected");
            Outcome::Rejected
        };
        let header = match jsonwebtoken::decode_header(token) {
            Ok(h) => h,
            Err(_) => return reject("malformed header"),
        };
        if !self.algorithms.contains(&header.alg) {
            return reject("alg not allowed for this issuer");
        }
        let keys = match self.keys_for(header.alg, header.kid.as_deref()).await {
            Keys::Found(k) => k,
            Keys::None => return reject("no key for the token's kid/alg"),
            Keys::Unavailable(why) => return Outcome::Undecided(why),
        };
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&self.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let mut claims = None;
        for key in &keys {
            match jsonwebtoken::decode::<Value>(token, key, &validation) {
                Ok(data) => {
                    claims = Some(data.claims);
                    break;
                }
                Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature) => {
                    continue
                }
                Err(e) => return reject(&e.to_string()),
            }
        }
        let Some(claims) = claims else {
            return reject("bad signature");
        };
        let audiences = if self.audience_aware && !requested.is_empty() {
            let token_aud = string_list(claims.get("aud"));
            let both: Vec<String> = requested
                .iter()
                .filter(|a| token_aud.contains(a))
                .cloned()
                .collect();
            if both.is_empty() {
                return reject("token audiences do not meet the review's audiences");
            }
            both
        } else {
            Vec::new()
        };
        let username = match claims.get(&self.username_claim).and_then(Value::as_str) {
            Some(u) if !u.is_empty() => u.to_owned(),
            _ => return reject("username claim missing or not a string"),
        };
        let groups = self
            .groups_claim
            .as_ref()
            .map(|c| string_list(claims.get(c)))
            .unwrap_or_default();
        let expires_at = claims.get("exp").and_then(Value::as_u64).and_then(exp_time);
        Outcome::Authenticated(Identity {
            username,
            uid: claims
                .get("sub")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            groups,
            audiences,
            expires_at,
            ..Identity::default()
        })
    }

    /// The unverified `iss` of a token shaped like a JWS compact serialisation.
    fn unverified_issuer(token: &str) -> Option<String> {
        if token.len() > MAX_TOKEN_BYTES {
            return None;
        }
        let mut parts = token.split('.');
        let (h, p, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let b64url = |x: &str| {
            !x.is_empty()
                && x.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !(b64url(h) && b64url(p) && b64url(s)) {
            return None;
        }
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .ok()?;
        let claims: Value = serde_json::from_slice(&payload).ok()?;
        claims.get("iss")?.as_str().map(str::to_owned)
    }
}

/// `exp` as a time; `None` (no hard expiry, the cache TTLs alone apply) when it is beyond
/// what `SystemTime` can hold. The signature and `exp` were verified: such a token is valid,
/// and adding its `exp` unchecked would panic.
fn exp_time(exp: u64) -> Option<SystemTime> {
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(exp))
}

/// A claim that is a list of strings or one string; anything else is no values.
fn string_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

impl Jwks {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, JwksState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, JwksState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn name(&self) -> String {
        match &self.location {
            Location::Url(url) => format!("JWKS {url}"),
            Location::Discovery { document, .. } => format!("JWKS via {document}"),
        }
    }

    /// For a token naming an unknown key: fetches the key set unless a fetch started within
    /// `min_refresh` (then joins it if it is still running). `Err` when the current key set
    /// is unknown because fetching failed.
    async fn refresh(self: &Arc<Self>) -> Result<(), String> {
        let fetch = {
            let mut s = self.write();
            match &s.in_flight {
                Some(f) => f.clone(),
                None if s
                    .last_attempt
                    .is_some_and(|at| at.elapsed() < self.min_refresh) =>
                {
                    return if s.last_ok {
                        Ok(())
                    } else {
                        Err(format!(
                            "{} unavailable (retrying after {:?})",
                            self.name(),
                            self.min_refresh
                        ))
                    };
                }
                None => self.start(&mut s),
            }
        };
        tokio::time::timeout(self.timeout, fetch)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "{}: no answer within {:?}",
                    self.name(),
                    self.timeout
                ))
            })
    }

    /// Starts a fetch (the caller holds the state lock, so the fetch cannot end before it is
    /// recorded as in flight), and the background refresh on the first one.
    fn start(self: &Arc<Self>, s: &mut JwksState) -> Fetch {
        s.last_attempt = Some(Instant::now());
        let this = self.clone();
        let task = tokio::spawn(async move { this.fetch_and_store().await });
        let name = self.name();
        let fetch = async move {
            task.await
                .unwrap_or_else(|_| Err(format!("{name}: the fetch failed")))
        }
        .boxed()
        .shared();
        s.in_flight = Some(fetch.clone());
        if s.follower.is_none() {
            let follow = Self::follow(Arc::downgrade(self), fetch.clone());
            s.follower = Some(tokio::spawn(follow).abort_handle());
        }
        fetch
    }

    /// The background refresh: after each fetch, waits until the next one is due and
    /// starts it (or joins one an unknown kid started). Holds the key set only weakly, and
    /// is aborted when it is dropped.
    async fn follow(this: Weak<Self>, first: Fetch) {
        let mut fetch = Some(first);
        loop {
            if let Some(f) = fetch.take() {
                let _ = f.await;
            }
            let due = match this.upgrade() {
                Some(j) => j.read().next_due,
                None => return,
            };
            tokio::time::sleep_until(due.into()).await;
            let Some(j) = this.upgrade() else { return };
            let mut s = j.write();
            fetch = match &s.in_flight {
                Some(f) => Some(f.clone()),
                // A fetch for an unknown kid moved the schedule on while we slept.
                None if Instant::now() < s.next_due => None,
                None => Some(j.start(&mut s)),
            };
        }
    }

    async fn fetch_and_store(&self) -> Result<(), String> {
        let fetched = tokio::time::timeout(self.timeout, self.fetch())
            .await
            .unwrap_or_else(|_| Err(format!("timed out after {:?}", self.timeout)));
        let mut s = self.write();
        s.in_flight = None;
        match fetched {
            Ok((keys, max_age)) => {
                let after = self.schedule.after(max_age);
                let kids = |keys: &[Key]| -> Vec<Option<String>> {
                    let mut k: Vec<_> = keys.iter().map(|k| k.kid.clone()).collect();
                    k.sort();
                    k
                };
                if !s.last_ok || kids(&s.keys) != kids(&keys) {
                    tracing::info!(jwks = %self.name(), keys = keys.len(), next_in = ?after,
                        "fetched JWKS; key set changed");
                } else {
                    tracing::debug!(jwks = %self.name(), keys = keys.len(), next_in = ?after,
                        "fetched JWKS; key set unchanged");
                }
                s.keys = keys;
                s.last_ok = true;
                s.next_due = Instant::now() + after;
                Ok(())
            }
            Err(why) => {
                tracing::warn!(jwks = %self.name(), error = %why, retry_in = ?self.min_refresh,
                    "JWKS fetch failed; keeping cached keys");
                s.last_ok = false;
                s.discovered = None;
                s.next_due = Instant::now() + self.min_refresh;
                Err(format!("{}: {why}", self.name()))
            }
        }
    }

    /// The JWKS URL: configured, or from the issuer's discovery document.
    async fn jwks_url(&self) -> Result<HttpUrl, String> {
        let (document, issuer) = match &self.location {
            Location::Url(url) => return Ok(url.clone()),
            Location::Discovery { document, issuer } => (document, issuer),
        };
        if let Some(url) = self.read().discovered.clone() {
            return Ok(url);
        }
        let (body, _) = self.get(document, MAX_DISCOVERY_BYTES).await?;
        #[derive(Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let doc: Discovery = serde_json::from_slice(&body)
            .map_err(|e| format!("{document}: not an OIDC discovery document: {e}"))?;
        // OIDC Discovery 1.0 §4.3: anything but an exact match is refused, or one issuer's
        // document could hand out another's keys.
        if doc.issuer != *issuer {
            return Err(format!(
                "{document} names the issuer {:?}, not the configured {issuer:?}: refused",
                doc.issuer.chars().take(200).collect::<String>()
            ));
        }
        let url = HttpUrl::parse(&doc.jwks_uri).map_err(|e| format!("{document}: jwks_uri {e}"))?;
        if url.as_url().scheme() == "http" {
            check_plaintext(
                "jwks_uri",
                url.as_url().host_str().unwrap_or(""),
                "http:// (signing keys fetched without TLS)",
                "allow_plaintext",
                self.allow_plaintext,
            )
            .map_err(|e| format!("{document}: {e}"))?;
        }
        tracing::info!(document = %document, jwks_uri = %url, "OIDC discovery found the JWKS");
        self.write().discovered = Some(url.clone());
        Ok(url)
    }

    /// The key set and how long the issuer says it may be cached.
    async fn fetch(&self) -> Result<(Vec<Key>, Option<Duration>), String> {
        let url = self.jwks_url().await?;
        let (body, max_age) = self.get(&url, MAX_JWKS_BYTES).await?;
        #[derive(Deserialize)]
        struct Set {
            keys: Vec<Value>,
        }
        let set: Set =
            serde_json::from_slice(&body).map_err(|e| format!("not a JWKS document: {e}"))?;
        // Keys we cannot use (symmetric, unknown types) are skipped, not fatal: a provider
        // may publish more than we need.
        let keys = set
            .keys
            .into_iter()
            .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
            .filter_map(|jwk| {
                let key = DecodingKey::from_jwk(&jwk).ok()?;
                (key.family() != AlgorithmFamily::Hmac).then_some(Key {
                    kid: jwk.common.key_id.clone(),
                    key,
                })
            })
            .collect();
        Ok((keys, max_age))
    }

    /// GETs a JSON document of at most `limit` bytes; also returns its `max-age`.
    async fn get(
        &self,
        url: &HttpUrl,
        limit: usize,
    ) -> Result<(Vec<u8>, Option<Duration>), String> {
        let mut resp = self
            .client
            .get(url.as_url().clone())
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(format!("{url} answered {}", resp.status()));
        }
        let max_age = resp
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| e.without_url().to_string())?
        {
            body.extend_from_slice(&chunk);
            if body.len() > limit {
                return Err(format!("{url}: document larger than {limit} bytes"));
            }
        }
        Ok((body, max_age))
    }
}

/// How long a `Cache-Control` header lets a response be reused: `max-age`, or none for
/// `no-cache`/`no-store` (clamped to the lower bound by the schedule).
fn max_age(cache_control: &str) -> Option<Duration> {
    let mut age = None;
    for directive in cache_control.split(',') {
        let d = directive.trim().to_ascii_lowercase();
        if d == "no-cache" || d == "no-store" {
            return Some(Duration::ZERO);
        }
        if let Some(n) = d.strip_prefix("max-age=") {
            age = n
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    age
}

impl Verifier for Jwt {
    fn name(&self) -> &str {
        &self.name
    }

    fn owns(&self, token: &str) -> bool {
        Self::unverified_issuer(token).is_some_and(|iss| iss == self.issuer)
    }

    fn verify<'a>(&'a self, token: &'a str, audiences: &'a [String]) -> BoxFuture<'a, Outcome> {
        async move {
            if !self.owns(token) {
                return Outcome::NotMine;
            }
            self.check(token, audiences).await
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Result<Config, String> {
        let c: Config = toml::from_str(&format!(
            "name = 'j'\nissuer = 'https://idp'\naudiences = ['k8s']\njwks_url = 'https://idp/jwks'\n{extra}"
        ))
        .map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn algorithms_are_pinned_to_public_key_ones() {
        assert!(config("algorithms = ['RS256', 'ES256', 'EdDSA']").is_ok());
        for bad in ["'HS256'", "'none'", "'rs256'"] {
            let e = config(&format!("algorithms = [{bad}]")).unwrap_err();
            assert!(e.starts_with("algorithms:"), "{bad}: {e}");
        }
        assert!(config("algorithms = []").is_err());
    }

    #[test]
    fn discovery_and_refresh_settings_are_checked_naming_the_field() {
        let c = |extra: &str| -> Result<Config, String> {
            let c: Config = toml::from_str(&format!(
                "name = 'j'\naudiences = ['k8s']\nalgorithms = ['ES256']\n{extra}"
            ))
            .map_err(|e| e.to_string())?;
            c.validate().map_err(|e| e.to_string())?;
            Ok(c)
        };
        let ok = c("issuer = 'https://idp/'\ndiscovery = true").unwrap();
        assert_eq!(
            ok.discovery_url().unwrap().to_string(),
            "https://idp/.well-known/openid-configuration"
        );
        assert!(c("issuer = 'http://127.0.0.1:8080'\ndiscovery = true").is_ok());
        for (extra, field) in [
            ("issuer = 'https://idp'", "keys:"),
            ("issuer = 'idp'\ndiscovery = true", "issuer:"),
            ("issuer = 'http://idp'\ndiscovery = true", "issuer:"),
            (
                "issuer = 'https://idp'\ndiscovery = true\njwks_url = 'https://idp/k'",
                "discovery:",
            ),
            (
                "issuer = 'https://idp'\ndiscovery = true\njwks_refresh = '500ms'",
                "jwks_refresh:",
            ),
            (
                "issuer = 'https://idp'\ndiscovery = true\njwks_min_refresh = '0s'",
                "jwks_min_refresh:",
            ),
            (
                "issuer = 'https://idp'\ndiscovery = true\njwks_max_age_max = '10s'",
                "jwks_max_age_max:",
            ),
        ] {
            let e = c(extra).unwrap_err();
            assert!(e.starts_with(field), "{extra}: {e}");
        }
        assert!(c("issuer = 'http://idp'\ndiscovery = true\nallow_plaintext = true").is_ok());
    }

    #[test]
    fn max_age_is_honoured_within_bounds() {
        assert_eq!(
            max_age("public, max-age=120"),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            max_age("Max-Age=7, must-revalidate"),
            Some(Duration::from_secs(7))
        );
        assert_eq!(max_age("no-store, max-age=600"), Some(Duration::ZERO));
        assert_eq!(max_age("private"), None);
        assert_eq!(max_age("max-age=lots"), None);
        let s = Schedule {
            default: Duration::from_secs(300),
            min: Duration::from_secs(30),
            max: Duration::from_secs(3600),
        };
        assert_eq!(s.after(None), Duration::from_secs(300));
        assert_eq!(s.after(Some(Duration::ZERO)), Duration::from_secs(30));
        assert_eq!(
            s.after(Some(Duration::from_secs(90))),
            Duration::from_secs(90)
        );
        assert_eq!(
            s.after(Some(Duration::from_secs(86_400 * 365))),
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn exp_beyond_system_time_is_no_hard_expiry() {
        assert_eq!(exp_time(u64::MAX), None);
        assert_eq!(exp_time(i64::MAX as u64 + 1), None);
        assert_eq!(
            exp_time(1_700_000_000),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
    }

    #[test]
    fn routing_reads_the_unverified_issuer() {
        let c = config("algorithms = ['ES256']").unwrap();
        let j = Jwt::new(&c).unwrap();
        let enc = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let tok = |iss: &str| {
            format!(
                "{}.{}.c2ln",
                enc(r#"{"alg":"ES256"}"#),
                enc(&format!(r#"{{"iss":"{iss}"}}"#))
            )
        };
        assert!(j.owns(&tok("https://idp")));
        assert!(!j.owns(&tok("https://other")));
        assert!(!j.owns("alice:password"));
        assert!(!j.owns(&format!("{}.", tok("https://idp"))));
        assert!(!j.owns("a.b.c"));
    }
}
