//! JWT / OIDC tokens from one issuer (configure one source per issuer for several).
//!
//! Routing reads the token's *unverified* `iss` (three base64url parts, JSON payload) only
//! to decide ownership; everything else is verified: the signature with an algorithm pinned
//! in the configuration (never `none`, never HMAC, which would let a public key act as a
//! shared secret), `iss`, `aud`, `exp` and `nbf` with a small leeway.
//!
//! Keys come from static PEM files and/or a JWKS URL. The JWKS is fetched on first use,
//! cached, and refreshed when a token names an unknown `kid`, at most once per
//! `jwks_min_refresh`. While the JWKS cannot be fetched, tokens signed with cached keys still
//! verify and tokens naming unknown keys are "could not decide", never a cached no.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use authd_runtime::config::secs;
use base64::Engine;
use futures::future::{BoxFuture, FutureExt};
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
    /// PEM CA bundle trusted (alone) for `jwks_url`.
    pub ca_file: Option<PathBuf>,
    /// Accept a plaintext `http://` `jwks_url` to a host other than this machine (an
    /// on-path attacker can inject signing keys). Off: a start-up error.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Limit for one JWKS fetch.
    #[serde(default = "secs::<2>", with = "humantime_serde")]
    pub jwks_timeout: Duration,
    /// Least time between two JWKS fetches.
    #[serde(default = "secs::<10>", with = "humantime_serde")]
    pub jwks_min_refresh: Duration,
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
        if self.keys.is_empty() && self.jwks_url.is_none() {
            return Err(FieldError::new(
                "keys",
                "give PEM key files in keys, or a jwks_url",
            ));
        }
        if self.leeway > Duration::from_secs(300) {
            return Err(FieldError::new("leeway", "at most 5m"));
        }
        check_timeout("jwks_timeout", self.jwks_timeout)?;
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

#[derive(Default)]
struct JwksState {
    keys: Vec<Key>,
    last_attempt: Option<Instant>,
    /// Whether the last fetch worked; unknown kids are only a definitive no when it did.
    last_ok: bool,
}

struct Jwks {
    url: HttpUrl,
    client: reqwest::Client,
    /// Bounds one fetch, and how long a refresh waits for another one to finish.
    timeout: Duration,
    min_refresh: Duration,
    state: RwLock<JwksState>,
    /// Serialises fetches so a burst of unknown kids makes one request. Only a refresh task
    /// (never a caller that can be cancelled or parked) holds it, for at most `timeout`.
    fetch: tokio::sync::Mutex<()>,
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
        let jwks = match &c.jwks_url {
            None => None,
            Some(url) => {
                let mut b = reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .no_proxy()
                    .timeout(c.jwks_timeout)
                    .connect_timeout(c.jwks_timeout);
                if let Some(path) = &c.ca_file {
                    b = b.tls_certs_only(http_roots("ca_file", path)?);
                }
                let client = b.build().map_err(|e| {
                    FieldError::new("jwks_url", format!("cannot build client: {e}"))
                })?;
                Some(Arc::new(Jwks {
                    url: url.clone(),
                    client,
                    timeout: c.jwks_timeout,
                    min_refresh: c.jwks_min_refresh,
                    state: RwLock::new(JwksState::default()),
                    fetch: tokio::sync::Mutex::new(()),
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

    /// Fetches the key set unless one was fetched within `min_refresh`. `Err` when the
    /// current key set is unknown because fetching failed.
    ///
    /// The refresh runs in a task of its own: a caller that goes away mid-fetch leaves
    /// neither the fetch lock held nor a fetch half done. Waiting for the lock and the
    /// fetch are each bounded by `timeout`.
    async fn refresh(self: &Arc<Self>) -> Result<(), String> {
        let this = self.clone();
        tokio::spawn(async move { this.refresh_now().await })
            .await
            .unwrap_or_else(|_| Err(format!("JWKS {}: the refresh failed", self.url)))
    }

    async fn refresh_now(&self) -> Result<(), String> {
        let Ok(_one_at_a_time) = tokio::time::timeout(self.timeout, self.fetch.lock()).await else {
            return Err(format!(
                "JWKS {}: another refresh did not finish within {:?}",
                self.url, self.timeout
            ));
        };
        {
            let s = self.read();
            if let Some(at) = s.last_attempt {
                if at.elapsed() < self.min_refresh {
                    return if s.last_ok {
                        Ok(())
                    } else {
                        Err(format!(
                            "JWKS {} unavailable (retrying after {:?})",
                            self.url, self.min_refresh
                        ))
                    };
                }
            }
        }
        let fetched = tokio::time::timeout(self.timeout, self.fetch())
            .await
            .unwrap_or_else(|_| Err(format!("timed out after {:?}", self.timeout)));
        let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
        s.last_attempt = Some(Instant::now());
        match fetched {
            Ok(keys) => {
                tracing::info!(url = %self.url, keys = keys.len(), "fetched JWKS");
                s.keys = keys;
                s.last_ok = true;
                Ok(())
            }
            Err(why) => {
                tracing::warn!(url = %self.url, error = %why, "JWKS fetch failed; keeping cached keys");
                s.last_ok = false;
                Err(format!("JWKS {}: {why}", self.url))
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<Key>, String> {
        let mut resp = self
            .client
            .get(self.url.as_url().clone())
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(format!("answered {}", resp.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| e.without_url().to_string())?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_JWKS_BYTES {
                return Err(format!("document larger than {MAX_JWKS_BYTES} bytes"));
            }
        }
        #[derive(Deserialize)]
        struct Set {
            keys: Vec<Value>,
        }
        let set: Set =
            serde_json::from_slice(&body).map_err(|e| format!("not a JWKS document: {e}"))?;
        // Keys we cannot use (symmetric, unknown types) are skipped, not fatal: a provider
        // may publish more than we need.
        Ok(set
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
            .collect())
    }
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
