//! Issue 4 end to end for the HTTP Basic-auth and JWT sources, identity mapping, per-cluster
//! policy, hot reload and `kube-authd config check`: edge + authd as real processes, a real
//! Basic-auth server and a real JWKS endpoint started by the test, reviews over HTTPS.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::basic_auth::{percent_decode, BasicAuthServer, Mode};
use common::jwks::{claims, forge, now as jwks_now, JwksServer, TestKey};
use common::*;
use serde_json::json;

const ISS: &str = "https://issuer.test";
const PARTNER_ISS: &str = "https://partner.test";

async fn review_aud(c: &reqwest::Client, url: &str, token: &str, auds: &[&str]) -> Answer {
    post_raw(c, url, review_body(V1, token, auds)).await
}

fn extra(a: &Answer, key: &str) -> serde_json::Value {
    a.body["status"]["user"]["extra"][key].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_source_routing_mapping_injection_and_policy() {
    let long_ok = "l".repeat(200);
    let ba = BasicAuthServer::start(&[
        ("alice", "s3cret"),
        ("*", "pw"),
        (")(", "pw"),
        ("\\", "pw"),
        ("a/b?c#d", "pw"),
        (&long_ok, "pw"),
    ]);
    let key = TestKey::es256("k1");
    let jwks = JwksServer::start(&[&key]);
    let dir = temp_dir();
    let st = token("st");
    let root = token("root");
    write(
        dir.path(),
        "tokens.csv",
        &format!("{st},carol,uid-carol,\"ops\"\n{root},system:admin,0\n"),
    );
    let authd_toml = format!(
        r#"
[[sources]]
name = "corp"
type = "basic_auth"
url = "{}"
timeout = "1s"
groups = ["corp-users", "system:masters"]
mapping = {{ username = "corp:{{user}}" }}
[[sources]]
name = "static"
type = "token_file"
path = "tokens.csv"
[[sources]]
name = "oidc"
type = "jwt"
issuer = "{ISS}"
audiences = ["k8s"]
algorithms = ["ES256"]
jwks_url = "{}"
[clusters.prod]
allow_groups = ["sre"]
[clusters.dev]
add_groups = ["dev-users"]
"#,
        ba.template(),
        jwks.url()
    );
    let split = Split::start(dir.path(), &authd_toml, "[clusters.dev]\n[clusters.prod]\n");
    let c = client(&split.ca_pem, Proto::H2, None);
    let url = &split.url;
    let base = url.trim_end_matches("/authenticate");

    // Success, mapped: username template, configured groups minus the reserved one.
    let a = review(&c, url, V1, "alice:s3cret").await;
    assert!(a.authenticated(), "{a:?}");
    assert_eq!(a.username(), "corp:alice");
    assert_eq!(a.body["status"]["user"]["uid"], "alice");
    assert_eq!(a.groups(), vec!["corp-users"], "system:masters is reserved");
    assert!(split
        .authd
        .stderr()
        .contains("dropped a group with a reserved prefix"));
    assert_eq!(
        extra(&a, "authd.kube-authd.io/source"),
        json!(["corp"]),
        "{a:?}"
    );
    assert_eq!(extra(&a, "authd.kube-authd.io/cluster"), json!(["default"]));
    // Wrong password, unknown user: definitive denials.
    review(&c, url, V1, "alice:wrong").await.assert_denied();
    review(&c, url, V1, "mallory:pw").await.assert_denied();
    // Empty password: rejected without a call (the unauthenticated-bind trap's cousin).
    review(&c, url, V1, "alice:").await.assert_denied();
    assert!(
        ba.http
            .requests()
            .iter()
            .all(|r| r.password.as_deref() != Some("")),
        "an empty password was sent"
    );
    // A source may not mint a reserved username: rejected, and logged.
    review(&c, url, V1, &root).await.assert_denied();
    assert!(split
        .authd
        .stderr()
        .contains("identity mapping refused the source's answer"));

    // Injection: each name reaches the service only as one percent-encoded path segment.
    for user in ["*", ")(", "\\", "a/b?c#d", long_ok.as_str()] {
        let a = review(&c, url, V1, &format!("{user}:pw")).await;
        assert!(a.authenticated(), "{user:?}: {a:?}");
        assert_eq!(a.username(), format!("corp:{user}"));
    }
    for user in ["..", ".", "nul\0byte", &"x".repeat(300)] {
        review(&c, url, V1, &format!("{user}:pw"))
            .await
            .assert_denied();
    }
    let seen = ba.http.requests();
    for r in &seen {
        let seg = r
            .target
            .strip_prefix("/basic-auth/")
            .unwrap_or_else(|| panic!("request outside the template path: {r:?}"));
        assert!(
            !seg.contains('/') && !seg.contains('?') && !seg.contains('#'),
            "{r:?}"
        );
        assert_eq!(
            Some(percent_decode(seg)),
            r.user,
            "path names the Basic user"
        );
        let user = r.user.as_deref().unwrap();
        assert!(
            user.len() <= 256 && !user.contains('\0') && user != ".." && user != ".",
            "{r:?} should have been refused before any call"
        );
    }

    // Routing: a static-file token and a JWT are never shown to the Basic-auth service.
    let before = ba.http.requests().len();
    let s = review(&c, url, V1, &st).await;
    assert!(s.authenticated(), "{s:?}");
    assert_eq!(s.username(), "carol");
    assert_eq!(extra(&s, "authd.kube-authd.io/source"), json!(["static"]));
    let jwt = key.sign(&claims(ISS, "k8s", "dave", 300));
    let j = review(&c, url, V1, &jwt).await;
    assert!(j.authenticated(), "{j:?}");
    assert_eq!(j.username(), "dave");
    assert_eq!(
        ba.http.requests().len(),
        before,
        "Basic-auth server saw other tokens"
    );
    for r in ba.http.requests() {
        for secret in [&st, &jwt] {
            assert!(!r.target.contains(secret.as_str()));
            assert!(r.user.as_deref() != Some(secret.as_str()));
            assert!(!r
                .password
                .clone()
                .unwrap_or_default()
                .contains(secret.as_str()));
        }
    }
    // A Basic-shaped token is never sent to the JWKS endpoint either.
    assert!(jwks.http.requests().iter().all(|r| r.user.is_none()));

    // Per-cluster policy: alice may use dev (gets dev's groups), not prod (and it is logged).
    let dev = review(
        &c,
        &format!("{base}/clusters/dev/authenticate"),
        V1,
        "alice:s3cret",
    )
    .await;
    assert!(dev.authenticated(), "{dev:?}");
    assert_eq!(dev.groups(), vec!["corp-users", "dev-users"]);
    assert_eq!(extra(&dev, "authd.kube-authd.io/cluster"), json!(["dev"]));
    review(
        &c,
        &format!("{base}/clusters/prod/authenticate"),
        V1,
        "alice:s3cret",
    )
    .await
    .assert_denied();
    let log = split.authd.stderr();
    assert!(log.contains("refused by cluster policy"), "{log}");
    assert!(!log.contains("s3cret"), "a password reached the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_faults_are_retryable_500s_never_cached() {
    let ba = BasicAuthServer::start(&[
        ("bob", "pw1"),
        ("carol", "pw2"),
        ("dave", "pw3"),
        ("erin", "pw4"),
    ]);
    let dir = temp_dir();
    let authd_toml = format!(
        "[[sources]]\nname = \"corp\"\ntype = \"basic_auth\"\nurl = \"{}\"\ntimeout = \"1s\"\n",
        ba.template()
    );
    let split = Split::start(dir.path(), &authd_toml, "review_timeout = \"5s\"\n");
    let c = client(&split.ca_pem, Proto::H1, None);
    let url = &split.url;

    for (mode, token) in [
        (Mode::Down, "bob:pw1"),
        (Mode::Fail, "carol:pw2"),
        (Mode::Redirect, "dave:pw3"),
        (Mode::Slow(Duration::from_secs(3)), "erin:pw4"),
    ] {
        ba.http.set_mode(mode);
        let started = Instant::now();
        let a = review(&c, url, V1, token).await;
        a.assert_undecided();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{mode:?}: the source timeout, not the server, ended the call"
        );
        let msg = a.body["message"].as_str().unwrap_or_default();
        assert!(!msg.contains("pw"), "password in an error: {msg}");
        ba.http.set_mode(Mode::Normal);
        // The failure was not cached: the same token is accepted once the service is back.
        let a = review(&c, url, V1, token).await;
        assert!(a.authenticated(), "{mode:?} then back: {a:?}");
    }
    let log = split.authd.stderr();
    for pw in ["pw1", "pw2", "pw3", "pw4"] {
        assert!(!log.contains(pw), "password {pw} in the log");
    }
    let (_, metrics) = admin_get(&split.authd.ready_field("admin"), "/metrics").await;
    assert_eq!(
        metric_sum(
            &metrics,
            "authd_source_calls_total",
            &[("source", "corp"), ("outcome", "undecided")]
        ),
        4.0
    );
}

/// Certificates in `dir` (its `ca.crt` signs `edge.crt`) and in `dir/other` (an
/// `other/ca.crt` that signs nothing used here). Returns `edge.crt` and `edge.key` (PEM), for
/// an HTTPS server that only the first CA vouches for.
fn two_cas(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    certs_init(dir, &[]);
    let other = dir.join("other");
    std::fs::create_dir(&other).unwrap();
    certs_init(&other, &[]);
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    (read("edge.crt"), read("edge.key"))
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_over_https_trusts_only_its_ca_file() {
    let dir = temp_dir();
    let (cert, key) = two_cas(dir.path());
    let ba = BasicAuthServer::start_tls(&[("alice", "pw")], &cert, &key);
    let template = ba.template();
    assert!(template.starts_with("https://"));
    // Two sources on one server: the right CA, and a CA that did not sign its certificate.
    let authd_toml = format!(
        "[[sources]]\nname = \"right\"\ntype = \"basic_auth\"\nurl = \"{template}\"\n\
         ca_file = \"ca.crt\"\nprefix = \"r/\"\n\
         [[sources]]\nname = \"wrong\"\ntype = \"basic_auth\"\nurl = \"{template}\"\n\
         ca_file = \"other/ca.crt\"\nprefix = \"w/\"\n"
    );
    let split = Split::start(dir.path(), &authd_toml, "");
    let c = client(&split.ca_pem, Proto::H1, None);
    let a = review(&c, &split.url, V1, "r/alice:pw").await;
    assert!(a.authenticated(), "{a:?}");
    review(&c, &split.url, V1, "r/alice:bad")
        .await
        .assert_denied();
    // An untrusted certificate is a fault of the deployment, not a wrong password.
    review(&c, &split.url, V1, "w/alice:pw")
        .await
        .assert_undecided();
    assert_eq!(
        ba.http.requests().len(),
        2,
        "no request over the untrusted TLS session"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn jwks_over_https_trusts_only_its_ca_file() {
    let dir = temp_dir();
    let (cert, tls_key) = two_cas(dir.path());
    let key = TestKey::es256("k1");
    let jwks = JwksServer::start_tls(&[&key], &cert, &tls_key);
    assert!(jwks.url().starts_with("https://"));
    // Two issuers whose keys are at one HTTPS JWKS endpoint: one source trusts the CA that
    // signed its certificate, the other a CA that did not.
    let authd_toml = format!(
        "[[sources]]\nname = \"right\"\ntype = \"jwt\"\nissuer = \"https://right.test\"\n\
         audiences = [\"k8s\"]\nalgorithms = [\"ES256\"]\njwks_url = \"{url}\"\nca_file = \"ca.crt\"\n\
         [[sources]]\nname = \"wrong\"\ntype = \"jwt\"\nissuer = \"https://wrong.test\"\n\
         audiences = [\"k8s\"]\nalgorithms = [\"ES256\"]\njwks_url = \"{url}\"\n\
         ca_file = \"other/ca.crt\"\n",
        url = jwks.url()
    );
    let split = Split::start(dir.path(), &authd_toml, "");
    let c = client(&split.ca_pem, Proto::H1, None);
    let right = key.sign(&claims("https://right.test", "k8s", "alice", 300));
    let a = review(&c, &split.url, V1, &right).await;
    assert!(a.authenticated(), "{a:?}");
    assert_eq!(a.username(), "alice");
    let fetched = jwks.fetches();
    assert!(fetched >= 1, "the JWKS was fetched over HTTPS");
    // The same key, but the source cannot fetch it: its TLS session is not trusted. That is
    // a fault of the deployment (retryable 500), not an invalid token.
    let wrong = key.sign(&claims("https://wrong.test", "k8s", "bob", 300));
    review(&c, &split.url, V1, &wrong).await.assert_undecided();
    assert_eq!(
        jwks.fetches(),
        fetched,
        "no JWKS request over the untrusted TLS session"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_sources_verify_signatures_claims_and_keys() {
    let k1 = TestKey::es256("k1");
    let k2 = TestKey::es256("k2");
    let k3 = TestKey::es256("k3");
    let evil = TestKey::es256("k1");
    let ed = TestKey::ed25519("ed");
    let jwks = JwksServer::start(&[&k1]);
    let dir = temp_dir();
    let rsa = TestKey::rs256("rsa", dir.path());
    write(dir.path(), "partner.pem", &ed.public_pem);
    write(dir.path(), "rsa.pem", &rsa.public_pem);
    let authd_toml = format!(
        r#"
[[sources]]
name = "oidc"
type = "jwt"
issuer = "{ISS}"
audiences = ["k8s"]
audience_aware = true
algorithms = ["ES256", "RS256"]
jwks_url = "{}"
keys = ["rsa.pem"]
jwks_min_refresh = "1s"
leeway = "1s"
groups_claim = "groups"
[[sources]]
name = "partner"
type = "jwt"
issuer = "{PARTNER_ISS}"
audiences = ["k8s"]
algorithms = ["EdDSA"]
keys = ["partner.pem"]
username_claim = "email"
groups_claim = "groups"
mapping = {{ username = "partner:{{user}}", group_prefix = "partner:" }}
"#,
        jwks.url()
    );
    let split = Split::start(dir.path(), &authd_toml, "");
    let c = client(&split.ca_pem, Proto::H2, None);
    let url = &split.url;

    let mut cl = claims(ISS, "k8s", "alice", 300);
    cl["groups"] = json!(["dev", "ops"]);
    let good = k1.sign(&cl);
    let a = review(&c, url, V1, &good).await;
    assert!(a.authenticated(), "{a:?}");
    assert_eq!(a.username(), "alice");
    assert_eq!(a.groups(), vec!["dev", "ops"]);
    assert!(a.body["status"].get("audiences").is_none(), "{a:?}");
    // Audience-aware: the intersection with the review's audiences comes back.
    let a = review_aud(&c, url, &good, &["k8s", "other"]).await;
    assert!(a.authenticated(), "{a:?}");
    assert_eq!(a.body["status"]["audiences"], json!(["k8s"]));
    review_aud(&c, url, &good, &["other"]).await.assert_denied();

    // RS256 from a static PEM key next to the JWKS.
    let r = review(&c, url, V1, &rsa.sign(&claims(ISS, "k8s", "rita", 300))).await;
    assert!(r.authenticated(), "{r:?}");
    assert_eq!(r.username(), "rita");
    // An RSA key that is not configured: its token is refused, whatever kid it claims.
    let stranger = TestKey::rs256("stranger", dir.path());
    for kid in ["rsa", "k1", "stranger"] {
        review(
            &c,
            url,
            V1,
            &stranger.sign_as(kid, &claims(ISS, "k8s", "rita", 300)),
        )
        .await
        .assert_denied();
    }

    // Wrong token: audience, expiry, signature, alg none, HMAC with the public key, unknown
    // issuer, no username claim.
    review(&c, url, V1, &k1.sign(&claims(ISS, "nope", "alice", 300)))
        .await
        .assert_denied();
    review(&c, url, V1, &k1.sign(&claims(ISS, "k8s", "alice", -120)))
        .await
        .assert_denied();
    let mut early = claims(ISS, "k8s", "alice", 600);
    early["nbf"] = json!(jwks_now() + 300);
    review(&c, url, V1, &k1.sign(&early)).await.assert_denied();
    review(&c, url, V1, &evil.sign(&claims(ISS, "k8s", "alice", 300)))
        .await
        .assert_denied();
    let none = forge(
        &json!({"alg": "none", "kid": "k1"}),
        &claims(ISS, "k8s", "root", 300),
        b"x",
    );
    review(&c, url, V1, &none).await.assert_denied();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some("k1".into());
    let hs = jsonwebtoken::encode(
        &h,
        &claims(ISS, "k8s", "root", 300),
        &jsonwebtoken::EncodingKey::from_secret(k1.public_pem.as_bytes()),
    )
    .unwrap();
    review(&c, url, V1, &hs).await.assert_denied();
    review(
        &c,
        url,
        V1,
        &k1.sign(&claims("https://elsewhere", "k8s", "alice", 300)),
    )
    .await
    .assert_denied();
    review(
        &c,
        url,
        V1,
        &ed.sign(&claims(PARTNER_ISS, "k8s", "bob", 300)),
    )
    .await
    .assert_denied();

    // Second issuer, static PEM key, claim mappings with prefixes.
    let mut pc = claims(PARTNER_ISS, "k8s", "bob", 300);
    pc["email"] = json!("bob@partner.test");
    pc["groups"] = json!("eng");
    let p = review(&c, url, V1, &ed.sign(&pc)).await;
    assert!(p.authenticated(), "{p:?}");
    assert_eq!(p.username(), "partner:bob@partner.test");
    assert_eq!(p.groups(), vec!["partner:eng"]);
    assert_eq!(extra(&p, "authd.kube-authd.io/source"), json!(["partner"]));

    // Key rotation: an unknown kid refreshes the JWKS.
    jwks.publish(&k2);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let a = review(&c, url, V1, &k2.sign(&claims(ISS, "k8s", "carol", 300))).await;
    assert!(a.authenticated(), "rotated key: {a:?}");

    // JWKS down: cached keys still verify; an unknown kid cannot be decided (500), and once
    // the JWKS is back the same token is accepted.
    jwks.http.set_mode(Mode::Down);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let new_kid = k3.sign(&claims(ISS, "k8s", "erin", 300));
    review(&c, url, V1, &new_kid).await.assert_undecided();
    let a = review(&c, url, V1, &k1.sign(&claims(ISS, "k8s", "frank", 300))).await;
    assert!(a.authenticated(), "cached key while JWKS is down: {a:?}");
    jwks.publish(&k3);
    jwks.http.set_mode(Mode::Normal);
    let (c2, u2, t2) = (c.clone(), url.clone(), new_kid.clone());
    eventually(
        Duration::from_secs(10),
        "new kid accepted after JWKS recovery",
        move || {
            let (c, u, t) = (c2.clone(), u2.clone(), t2.clone());
            async move { review(&c, &u, V1, &t).await.authenticated() }
        },
    )
    .await;
    // Refreshes were rate-limited: a handful of fetches, not one per review.
    assert!(jwks.fetches() <= 8, "{} JWKS fetches", jwks.fetches());

    // A cached verdict never outlives the token's exp (positive TTL is 2m here).
    let short = k1.sign(&claims(ISS, "k8s", "gina", 2));
    assert!(review(&c, url, V1, &short).await.authenticated());
    // exp + 1s leeway, compared in whole seconds, has passed after 4.5s.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    review(&c, url, V1, &short).await.assert_denied();
}

const HEADER: &str =
    "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nshutdown_grace = \"20s\"\n\
     [clusters.default]\n";

fn static_config(template: &str) -> String {
    format!(
        "{HEADER}[[sources]]\nname = \"static\"\ntype = \"token_file\"\npath = \"tokens.csv\"\n\
         mapping = {{ username = \"{template}\" }}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn hot_reload_of_token_file_and_config_keeps_last_good_on_error() {
    let dir = temp_dir();
    let (t1, t2) = (token("one"), token("two"));
    write(dir.path(), "tokens.csv", &format!("{t1},ann,1,\"dev\"\n"));
    let body = static_config("{user}");
    let split = Split::start(dir.path(), body.strip_prefix(HEADER).unwrap(), "");
    let cfg = dir.path().join("authd.toml");
    let c = client(&split.ca_pem, Proto::H1, None);
    let url = split.url.clone();
    assert!(review(&c, &url, V1, &t1).await.authenticated());
    review(&c, &url, V1, &t2).await.assert_denied();

    // Edit the token file: the removed token stops working (cache cleared), the new one works.
    write(dir.path(), "tokens.csv", &format!("{t2},ben,2,\"dev\"\n"));
    let (cc, uu, tt) = (c.clone(), url.clone(), t2.clone());
    eventually(Duration::from_secs(10), "added token accepted", move || {
        let (c, u, t) = (cc.clone(), uu.clone(), tt.clone());
        async move { review(&c, &u, V1, &t).await.authenticated() }
    })
    .await;
    review(&c, &url, V1, &t1).await.assert_denied();

    // Edit the config: a new username template applies without a restart.
    write(dir.path(), "authd.toml", &static_config("static:{user}"));
    let (cc, uu, tt) = (c.clone(), url.clone(), t2.clone());
    eventually(Duration::from_secs(10), "new mapping applied", move || {
        let (c, u, t) = (cc.clone(), uu.clone(), tt.clone());
        async move { review(&c, &u, V1, &t).await.username() == "static:ben" }
    })
    .await;

    // A bad config (typo'd field) and a bad token file: both refused, old config kept.
    std::fs::write(
        &cfg,
        static_config("static:{user}").replace("path =", "pathh ="),
    )
    .unwrap();
    let authd = &split.authd;
    eventually(Duration::from_secs(10), "failed reload logged", || async {
        authd.stderr().contains("configuration reload failed")
    })
    .await;
    let log = authd.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("configuration reload failed"))
        .unwrap();
    assert!(
        line.contains("pathh") && line.contains("authd.toml"),
        "error names file and field: {line}"
    );
    let a = review(&c, &url, V1, &t2).await;
    assert_eq!(a.username(), "static:ben", "{a:?}");
    std::fs::write(&cfg, static_config("static:{user}")).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    write(
        dir.path(),
        "tokens.csv",
        &format!("{t2},ben,2,\"dev\"\n{t2},dup,3\n"),
    );
    eventually(
        Duration::from_secs(10),
        "duplicate token refused",
        || async { authd.stderr().contains("duplicate token") },
    )
    .await;
    assert!(
        authd.stderr().contains("tokens.csv, line 2"),
        "error names file and line"
    );
    assert!(review(&c, &url, V1, &t2).await.authenticated());
    let (_, m) = admin_get(&authd.ready_field("admin"), "/metrics").await;
    assert!(
        metric_sum(&m, "authd_config_reloads_total", &[("result", "failure")]) >= 2.0,
        "{m}"
    );
    assert!(metric_sum(&m, "authd_config_reloads_total", &[("result", "success")]) >= 2.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn all_in_one_reloads_its_token_file() {
    let dir = temp_dir();
    let (t1, t2) = (token("one"), token("two"));
    let tokens = write(dir.path(), "tokens.csv", &format!("{t1},ann,1\n"));
    let _up = start_up(dir.path(), &tokens);
    let kc = Kubeconfig::load(&dir.path().join("state/webhook-kubeconfig.yaml"));
    let c = client(&kc.ca_pem, Proto::H2, None);
    assert!(review(&c, &kc.server, V1, &t1).await.authenticated());
    write(dir.path(), "tokens.csv", &format!("{t2},ben,2\n"));
    let (cc, uu, tt) = (c.clone(), kc.server.clone(), t2.clone());
    eventually(Duration::from_secs(10), "added token accepted", move || {
        let (c, u, t) = (cc.clone(), uu.clone(), tt.clone());
        async move { review(&c, &u, V1, &t).await.authenticated() }
    })
    .await;
    review(&c, &kc.server, V1, &t1).await.assert_denied();
}

fn config_check(path: &Path) -> std::process::Output {
    std::process::Command::new(bin("kube-authd"))
        .args(["config", "check", path.to_str().unwrap()])
        .output()
        .expect("run kube-authd config check")
}

#[test]
fn config_check_runs_examples_through_mapping_and_policy() {
    let dir = temp_dir();
    let key = TestKey::ed25519("ed");
    write(dir.path(), "tokens.csv", "tok,ann,1\n");
    write(dir.path(), "partner.pem", &key.public_pem);
    let good = format!(
        r#"
[[sources]]
name = "corp"
type = "basic_auth"
url = "https://127.0.0.1:1/basic-auth/{{user}}"
mapping = {{ username = "corp:{{user}}", group_prefix = "corp:", group_renames = {{ admins = "sre" }} }}
[[sources]]
name = "static"
type = "token_file"
path = "tokens.csv"
[[sources]]
name = "partner"
type = "jwt"
issuer = "{PARTNER_ISS}"
audiences = ["k8s"]
algorithms = ["EdDSA"]
keys = ["partner.pem"]
jwks_url = "https://127.0.0.1:1/jwks"
[clusters.prod]
allow_groups = ["corp:sre"]
[[examples]]
source = "corp"
user = "alice"
groups = ["admins"]
cluster = "prod"
expect = "allowed"
expect_username = "corp:alice"
expect_groups = ["corp:sre"]
[[examples]]
name = "devs stay out of prod"
source = "corp"
user = "bob"
groups = ["dev"]
cluster = "prod"
expect = "denied"
[[examples]]
source = "static"
user = "system:admin"
expect = "denied"
"#
    );
    let ok = write(dir.path(), "good.toml", &good);
    let out = config_check(&ok);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("ok   examples[1] devs stay out of prod"),
        "{stdout}"
    );
    assert!(stdout.contains("3 examples passed"), "{stdout}");

    // A typo in an allow list's group: the example that relies on it fails, named.
    let typo = write(
        dir.path(),
        "typo.toml",
        &good.replace(
            "allow_groups = [\"corp:sre\"]",
            "allow_groups = [\"corp:ser\"]",
        ),
    );
    let out = config_check(&typo);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("FAIL examples[0]"), "{stdout}");
    assert!(stdout.contains("expected allowed, got denied"), "{stdout}");
    assert!(
        stderr.contains("1 of 3 examples failed: examples[0]"),
        "{stderr}"
    );

    // A typo'd source name, and a configuration error, are named too.
    let bad_source = write(
        dir.path(),
        "src.toml",
        &good.replace("source = \"static\"", "source = \"statc\""),
    );
    let out = config_check(&bad_source);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL examples[2]"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"statc\" is not configured"));
    let hs = write(
        dir.path(),
        "hs.toml",
        &good.replace("[\"EdDSA\"]", "[\"HS256\"]"),
    );
    let out = config_check(&hs);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sources[2].algorithms"), "{stderr}");
}

/// A source reading `jwks_url` (or discovery) with the given extra settings.
fn jwt_source(name: &str, issuer: &str, where_keys: &str, extra: &str) -> String {
    format!(
        "[[sources]]\nname = \"{name}\"\ntype = \"jwt\"\nissuer = \"{issuer}\"\n\
         audiences = [\"k8s\"]\nalgorithms = [\"ES256\"]\n{where_keys}\n{extra}\n"
    )
}

/// A token from `key` for a user never seen before (so no cache level knows it).
fn fresh(key: &TestKey, iss: &str, n: &mut u32) -> String {
    *n += 1;
    key.sign(&claims(iss, "k8s", &format!("user{n}"), 300))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_withdrawn_at_the_issuer_stops_verifying_within_the_refresh_interval() {
    let (k1, k2, k3) = (
        TestKey::es256("k1"),
        TestKey::es256("k2"),
        TestKey::es256("k3"),
    );
    let jwks = JwksServer::start(&[&k1, &k2]);
    // The issuer says how long its key set may be kept; authd honours it (clamped to
    // 1 s here). Unknown kids may not refetch within the hour, so only the periodic
    // refresh can notice what changes.
    jwks.http
        .set_headers("Cache-Control: public, max-age=1\r\n");
    let dir = temp_dir();
    let toml = jwt_source(
        "oidc",
        ISS,
        &format!("jwks_url = \"{}\"", jwks.url()),
        "jwks_refresh = \"1h\"\njwks_max_age_min = \"1s\"\njwks_min_refresh = \"1h\"",
    );
    let split = Split::start(dir.path(), &toml, "");
    let c = client(&split.ca_pem, Proto::H1, None);
    let url = &split.url;
    let mut n = 0;
    for k in [&k1, &k2] {
        let a = review(&c, url, V1, &fresh(k, ISS, &mut n)).await;
        assert!(a.authenticated(), "{a:?}");
    }

    jwks.withdraw("k1");
    jwks.publish(&k3);
    let withdrawn = Instant::now();
    loop {
        let a = review(&c, url, V1, &fresh(&k1, ISS, &mut n)).await;
        if !a.authenticated() {
            a.assert_denied();
            break;
        }
        assert!(
            withdrawn.elapsed() < Duration::from_secs(3),
            "a withdrawn key still verified {:?} after the issuer dropped it (max-age 1 s)",
            withdrawn.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The refresh also brought the new key; the one kept still verifies.
    for k in [&k3, &k2] {
        let a = review(&c, url, V1, &fresh(k, ISS, &mut n)).await;
        assert!(a.authenticated(), "{}: {a:?}", k.kid);
    }
    // It keeps following: a few fetches a second, not one per review.
    let before = jwks.fetches();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let during = jwks.fetches() - before;
    assert!((1..=4).contains(&during), "{during} fetches in 2.5 s");
}

#[tokio::test(flavor = "multi_thread")]
async fn oidc_discovery_finds_the_jwks_and_refuses_a_mismatched_issuer() {
    let k1 = TestKey::es256("k1");
    let good = JwksServer::start(&[&k1]);
    let liar = JwksServer::start(&[&k1]);
    liar.set_discovered_issuer("https://issuer.test");
    let slash = JwksServer::start(&[&k1]);
    slash.set_discovered_issuer(&format!("{}/", slash.issuer()));
    let dir = temp_dir();
    let toml = [
        jwt_source("good", &good.issuer(), "discovery = true", ""),
        jwt_source("liar", &liar.issuer(), "discovery = true", ""),
        jwt_source("slash", &slash.issuer(), "discovery = true", ""),
    ]
    .concat();
    let split = Split::start(dir.path(), &toml, "");
    let c = client(&split.ca_pem, Proto::H1, None);
    let url = &split.url;
    let mut n = 0;

    let a = review(&c, url, V1, &fresh(&k1, &good.issuer(), &mut n)).await;
    assert!(a.authenticated(), "{a:?}");
    let targets: Vec<String> = good.http.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(
        targets,
        ["/.well-known/openid-configuration", "/jwks"],
        "discovery, then the jwks_uri it names"
    );

    // A document naming another issuer (even one differing by a trailing slash) is
    // refused: its keys are never fetched, and the token is "could not decide", never yes.
    for (server, name) in [(&liar, "liar"), (&slash, "slash")] {
        let a = review(&c, url, V1, &fresh(&k1, &server.issuer(), &mut n)).await;
        a.assert_undecided();
        assert_eq!(server.jwks_fetches(), 0, "{name}: keys fetched");
        assert!(
            !server.http.requests().is_empty(),
            "{name}: discovery was asked"
        );
    }
    let log = split.authd.stderr();
    assert!(
        log.contains("not the configured") && log.contains("refused"),
        "the log says why: {log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_unknown_kids_costs_the_issuer_one_fetch_per_interval() {
    let k1 = TestKey::es256("k1");
    let jwks = JwksServer::start(&[&k1]);
    let dir = temp_dir();
    let toml = jwt_source(
        "oidc",
        ISS,
        &format!("jwks_url = \"{}\"", jwks.url()),
        "jwks_min_refresh = \"1s\"",
    );
    let split = Split::start(dir.path(), &toml, "");
    let c = client(&split.ca_pem, Proto::H2, None);
    let mut n = 0;
    assert!(review(&c, &split.url, V1, &fresh(&k1, ISS, &mut n))
        .await
        .authenticated());
    assert_eq!(jwks.fetches(), 1);

    // 16 clients send tokens with made-up kids for 3 s; the issuer answers slowly, so
    // concurrent refetches overlap.
    jwks.http
        .set_mode(common::basic_auth::Mode::Slow(Duration::from_millis(300)));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let (c, url, signer) = (c.clone(), split.url.clone(), TestKey::es256("signer"));
        tasks.push(tokio::spawn(async move {
            let mut sent = 0;
            while started.elapsed() < Duration::from_secs(3) {
                let kid = hex(&rand_bytes::<8>());
                let t =
                    signer.sign_as(&kid, &claims(ISS, "k8s", &format!("w{worker}-{sent}"), 300));
                let a = review(&c, &url, V1, &t).await;
                assert!(!a.authenticated(), "a made-up kid verified: {a:?}");
                sent += 1;
            }
            sent
        }));
    }
    let mut sent = 0;
    for t in tasks {
        sent += t.await.unwrap();
    }
    let took = started.elapsed();
    let fetched = jwks.fetches() - 1;
    // One fetch per 1 s interval, plus the one the interval's end may start.
    let bound = took.as_secs() as usize + 2;
    assert!(sent >= 100, "a flood: {sent} reviews");
    assert!(
        (1..=bound).contains(&fetched),
        "{fetched} JWKS fetches for {sent} unknown kids in {took:?} (bound {bound})"
    );
}
