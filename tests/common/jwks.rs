//! Keys generated in the test (rcgen), JWTs signed with them (jsonwebtoken), and a local
//! JWKS endpoint serving their public halves (on the recording test HTTP server).

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::basic_auth::{Handler, HttpServer, Recorded};

/// A signing key pair.
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    /// SPKI PEM of the public key, for static `keys` files.
    pub public_pem: String,
    /// The public key as a JWK.
    pub jwk: Value,
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl TestKey {
    pub fn es256(kid: &str) -> TestKey {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = kp.public_key_raw();
        assert_eq!(raw.len(), 65, "uncompressed P-256 point");
        TestKey {
            kid: kid.into(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap(),
            public_pem: kp.public_key_pem(),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
                        "x": b64(&raw[1..33]), "y": b64(&raw[33..])}),
        }
    }

    pub fn ed25519(kid: &str) -> TestKey {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        TestKey {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_pem(kp.serialize_pem().as_bytes()).unwrap(),
            public_pem: kp.public_key_pem(),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig", "alg": "EdDSA",
                        "x": b64(kp.public_key_raw())}),
        }
    }

    /// RS256 (2048-bit), made with the `openssl` CLI (the test build of rcgen cannot make
    /// RSA keys); served only as a static PEM key.
    pub fn rs256(kid: &str, dir: &std::path::Path) -> TestKey {
        let key = dir.join(format!("{kid}.key"));
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .output()
                .expect("`openssl` is needed to generate an RSA test key: apt-get install openssl");
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
            out.stdout
        };
        run(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            key.to_str().unwrap(),
        ]);
        let public = run(&["pkey", "-in", key.to_str().unwrap(), "-pubout"]);
        let private = std::fs::read(&key).unwrap();
        TestKey {
            kid: kid.into(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_pem(&private).unwrap(),
            public_pem: String::from_utf8(public).unwrap(),
            jwk: Value::Null,
        }
    }

    /// Signs `claims` with this key (header names its kid).
    pub fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.encoding).unwrap()
    }

    /// Signs with this key but claims another kid in the header.
    pub fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, claims, &self.encoding).unwrap()
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Standard claims: issued now, valid for `ttl` seconds.
pub fn claims(iss: &str, aud: &str, sub: &str, ttl: i64) -> Value {
    let now = now() as i64;
    json!({"iss": iss, "aud": aud, "sub": sub, "iat": now, "nbf": now, "exp": now + ttl})
}

/// An unsigned-looking token with the given header and claims (for `alg` attacks).
pub fn forge(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(signature)
    )
}

/// A JWKS endpoint at `/jwks` serving the keys currently published, and a test OIDC
/// issuer: `/.well-known/openid-configuration` names the issuer (the server's base URL
/// unless changed) and `jwks_uri` pointing at `/jwks`.
pub struct JwksServer {
    pub http: HttpServer,
    keys: Arc<Mutex<Vec<Value>>>,
    /// The discovery document's `issuer`; `None`: the server's base URL.
    discovered_issuer: Arc<Mutex<Option<String>>>,
}

impl JwksServer {
    pub fn start(keys: &[&TestKey]) -> JwksServer {
        Self::start_with(keys, HttpServer::start)
    }

    /// Over HTTPS with a PEM certificate chain and key.
    pub fn start_tls(keys: &[&TestKey], cert_pem: &[u8], key_pem: &[u8]) -> JwksServer {
        Self::start_with(keys, |h| HttpServer::start_tls(h, cert_pem, key_pem))
    }

    fn start_with(keys: &[&TestKey], serve: impl FnOnce(Handler) -> HttpServer) -> JwksServer {
        let published = Arc::new(Mutex::new(keys.iter().map(|k| k.jwk.clone()).collect()));
        let discovered_issuer = Arc::new(Mutex::new(None::<String>));
        // The base URL is known once the server listens.
        let base = Arc::new(Mutex::new(String::new()));
        let (p, d, b) = (published.clone(), discovered_issuer.clone(), base.clone());
        let http = serve(Arc::new(move |r: &Recorded| match r.target.as_str() {
            "/jwks" => (200, json!({"keys": *p.lock().unwrap()}).to_string()),
            "/.well-known/openid-configuration" => {
                let base = b.lock().unwrap().clone();
                let issuer = d.lock().unwrap().clone().unwrap_or_else(|| base.clone());
                let doc = json!({"issuer": issuer, "jwks_uri": format!("{base}/jwks"),
                                 "id_token_signing_alg_values_supported": ["ES256"]});
                (200, doc.to_string())
            }
            _ => (404, String::new()),
        }));
        *base.lock().unwrap() = http.url("");
        JwksServer {
            http,
            keys: published,
            discovered_issuer,
        }
    }

    /// The issuer URL whose discovery document this server serves.
    pub fn issuer(&self) -> String {
        self.http.url("")
    }

    /// Makes the discovery document name another issuer.
    pub fn set_discovered_issuer(&self, issuer: &str) {
        *self.discovered_issuer.lock().unwrap() = Some(issuer.to_owned());
    }

    /// Stops publishing the key with this kid.
    pub fn withdraw(&self, kid: &str) {
        self.keys.lock().unwrap().retain(|k| k["kid"] != kid);
    }

    /// Requests for the key set itself (not discovery).
    pub fn jwks_fetches(&self) -> usize {
        self.http
            .requests()
            .iter()
            .filter(|r| r.target == "/jwks")
            .count()
    }

    pub fn url(&self) -> String {
        self.http.url("/jwks")
    }

    pub fn publish(&self, key: &TestKey) {
        self.keys.lock().unwrap().push(key.jwk.clone());
    }

    pub fn fetches(&self) -> usize {
        self.http.requests().len()
    }
}
