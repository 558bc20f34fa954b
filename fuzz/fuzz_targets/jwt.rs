//! The JWT source on attacker tokens: routing on the unverified `iss`, header and claims
//! decoding, key choice and validation, against a static RSA key (nothing remote).
//! Seeds are real tokens signed with that key, so mutations reach the claims checks.
#![no_main]

use std::sync::{Arc, OnceLock};

use authd::source::jwt::{Config, Jwt};
use authd::source::Verifier;
use libfuzzer_sys::fuzz_target;

/// The key that signed the seed tokens in `fuzz/corpus/jwt` (its private half was thrown
/// away: to add seeds, make a new pair, replace this file and re-sign them all).
const PUBLIC_PEM: &str = include_str!("../keys/rs256.pub.pem");

fn setup() -> &'static (tokio::runtime::Runtime, Arc<Jwt>) {
    static ONCE: OnceLock<(tokio::runtime::Runtime, Arc<Jwt>)> = OnceLock::new();
    ONCE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("kube-authd-fuzz-jwt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let key = dir.join("rs256.pub.pem");
        std::fs::write(&key, PUBLIC_PEM).expect("write key");
        let text = format!(
            "name = \"idp\"\nissuer = \"https://issuer.test\"\naudiences = [\"k8s\"]\n\
             algorithms = [\"RS256\", \"ES256\", \"EdDSA\"]\nkeys = [{key:?}]\n\
             groups_claim = \"groups\"\naudience_aware = true\n"
        );
        let config: Config = toml::from_str(&text).expect("jwt source configuration");
        let jwt = Jwt::new(&config).expect("jwt source");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        (rt, Arc::new(jwt))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let (rt, jwt) = setup();
    let _ = jwt.owns(token);
    let audiences = ["k8s".to_string()];
    let _ = rt.block_on(jwt.verify(token, &audiences));
});
