//! Issue 13, point 7 end to end: the smaller ways a hostile caller got more than it should —
//! a token echoed back through a 400's redaction, a JWT `exp` that panicked authd, and one
//! log line per failed TLS handshake. Real binaries, real HTTPS, loopback only.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::hostile::{assert_no_secret_logged, open_fds};
use common::jwks::{claims, TestKey};
use common::*;
use serde_json::json;

/// `kube-authd up` at the log level a deployment runs at (`info`), so the log volume the
/// test measures is the one an operator would get.
fn start_up_info(dir: &Path, tokens: &Path) -> Proc {
    start_up_env(dir, tokens, &[("RUST_LOG", "info")])
}

/// A client as kube-apiserver would be configured from `up`'s webhook kubeconfig.
fn kc_client(kc: &Kubeconfig) -> reqwest::Client {
    let identity = kc
        .client_cert_pem
        .as_ref()
        .zip(kc.client_key_pem.as_ref())
        .map(|(cert, key)| [cert.as_slice(), key.as_slice()].concat());
    client(&kc.ca_pem, Proto::H2, identity)
}

/// A misplaced token with an embedded (escaped) quote: the 400's message must not carry any
/// part of it. serde Debug-escapes the value, and the old redaction ended the quoted span at
/// the escaped quote and echoed the rest.
#[tokio::test(flavor = "multi_thread")]
async fn bad_request_message_never_echoes_a_token_with_quotes() {
    let dir = temp_dir();
    let alice = token("alice");
    let tokens = write(dir.path(), "tokens.csv", &format!("{alice},alice,1\n"));
    let up = start_up_info(dir.path(), &tokens);
    let kc = Kubeconfig::load(&dir.path().join("state/webhook-kubeconfig.yaml"));
    let c = kc_client(&kc);
    let secret = token("leak");
    let tail = token("tail");
    for field in ["audiences", "token"] {
        // The token (with `"` and `\` inside it) where the wrong JSON type is expected:
        // `spec.audiences` wants a list, `spec.token` wants a string (here: an object key).
        let value = format!("pre\\\"{secret}\\\\\\\"{tail}");
        let body = match field {
            "audiences" => json!({"kind": "TokenReview", "apiVersion": V1,
                "spec": {"token": "x", "audiences": serde_json::Value::Null}})
            .to_string()
            .replace("null", &format!("\"{value}\"")),
            _ => format!(
                r#"{{"kind":"TokenReview","apiVersion":"{V1}","spec":{{"token":{{"a":"b"}},"audiences":["{value}"]"#
            ),
        };
        let a = post_raw(&c, &kc.server, body).await;
        assert_eq!(a.status, 400, "{field}: {a:?}");
        let text = a.body.to_string();
        assert!(
            !text.contains(&secret) && !text.contains(&tail),
            "{field}: the 400 echoes the token: {text}"
        );
    }
    // The JSON error keeps its useful part.
    let a = post_raw(
        &c,
        &kc.server,
        format!(r#"{{"kind":"TokenReview","apiVersion":"{V1}","spec":{{"token":"x","audiences":"p\"{secret}"}}}}"#),
    )
    .await;
    let message = a.body["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("expected a sequence"), "{message}");
    assert!(!message.contains(&secret), "{message}");
    assert_no_secret_logged(&[&up], &[&secret, &tail, &alice]);
}

/// A JWT signed by the configured issuer with an `exp` beyond what a `SystemTime` holds: it
/// must get a definitive answer (it is valid), keep getting one, and leave authd serving
/// other tokens — not panic the lookup and answer 500.
#[tokio::test(flavor = "multi_thread")]
async fn jwt_with_exp_beyond_system_time_is_answered() {
    const ISS: &str = "https://issuer.test";
    let dir = temp_dir();
    let key = TestKey::es256("k1");
    write(dir.path(), "k1.pem", &key.public_pem);
    let carol = token("carol");
    write(dir.path(), "tokens.csv", &format!("{carol},carol,1\n"));
    let authd_toml = format!(
        "[[sources]]\nname = \"static\"\ntype = \"token_file\"\npath = \"tokens.csv\"\n\
         [[sources]]\nname = \"idp\"\ntype = \"jwt\"\nissuer = \"{ISS}\"\naudiences = [\"k8s\"]\n\
         algorithms = [\"ES256\"]\nkeys = [\"k1.pem\"]\n"
    );
    let s = Split::start(dir.path(), &authd_toml, "");
    let c = client(&s.ca_pem, Proto::H2, None);

    let mut far = claims(ISS, "k8s", "alice", 3600);
    far["exp"] = json!(u64::MAX);
    let max = key.sign(&far);
    let mut past_i64 = claims(ISS, "k8s", "bob", 3600);
    past_i64["exp"] = json!(i64::MAX as u64 + 1);
    let past_i64 = key.sign(&past_i64);
    for (tok, user) in [(&max, "alice"), (&past_i64, "bob")] {
        for round in 0..3 {
            let started = Instant::now();
            let a = review(&c, &s.url, V1, tok).await;
            assert_eq!(a.status, 200, "{user} round {round}: {a:?}");
            assert_eq!(a.username(), user, "{a:?}");
            assert!(started.elapsed() < Duration::from_secs(5));
        }
    }
    // 1e20 is not an integer `exp`: a definitive answer too (whichever), never a 500.
    let mut float = claims(ISS, "k8s", "dave", 3600);
    float["exp"] = json!(1e20);
    let a = review(&c, &s.url, V1, &key.sign(&float)).await;
    assert_eq!(a.status, 200, "{a:?}");
    // authd is still up and serving everyone else.
    assert!(review(&c, &s.url, V1, &carol).await.authenticated());
    let logs = s.authd.stderr();
    assert!(!logs.contains("panicked"), "authd panicked:\n{logs}");
    let signature = |jwt: &str| jwt.rsplit('.').next().unwrap().to_owned();
    let (max, past_i64) = (signature(&max), signature(&past_i64));
    assert_no_secret_logged(&[&s.authd, &s.edge], &[&max, &past_i64, &carol]);
}

/// 500 failed TLS handshakes (plaintext HTTP sent to the TLS port) make a bounded number of
/// log lines, not one each, and leave no connection behind.
#[tokio::test(flavor = "multi_thread")]
async fn failed_handshake_flood_makes_a_few_log_lines() {
    let dir = temp_dir();
    let alice = token("alice");
    let tokens = write(dir.path(), "tokens.csv", &format!("{alice},alice,1\n"));
    let up = start_up_info(dir.path(), &tokens);
    let kc = Kubeconfig::load(&dir.path().join("state/webhook-kubeconfig.yaml"));
    let addr = kc
        .server
        .trim_start_matches("https://")
        .trim_end_matches("/authenticate")
        .to_owned();
    let c = kc_client(&kc);
    assert!(review(&c, &kc.server, V1, &alice).await.authenticated());
    drop(c);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fds_before = open_fds(up.pid());
    let lines_before = up.stderr().lines().count();

    let started = Instant::now();
    for _ in 0..500 {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(b"GET /authenticate HTTP/1.1\r\nHost: x\r\n\r\n");
        // Wait for the edge to close it, so every handshake has failed before counting.
        let _ = std::io::Read::read(&mut s, &mut [0u8; 512]);
    }
    let secs = started.elapsed().as_secs();
    assert!(started.elapsed() < Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let logs = up.stderr();
    let new: Vec<&str> = logs.lines().skip(lines_before).collect();
    let failed = new
        .iter()
        .filter(|l| l.contains("TLS handshake failed"))
        .count();
    // One line per second of the flood (and one for the second it started in).
    let bound = secs as usize + 2;
    assert!(
        (1..=bound).contains(&failed),
        "{failed} handshake lines in {secs}s (bound {bound}):\n{}",
        new.join("\n")
    );
    assert!(
        new.len() <= bound + 2,
        "{} new log lines for 500 failed handshakes",
        new.len()
    );
    assert!(
        new.iter().any(|l| l.contains("suppressed")),
        "the lines count what they suppressed"
    );
    eventually(Duration::from_secs(5), "fds back to baseline", || async {
        open_fds(up.pid()) <= fds_before + 2
    })
    .await;
    // Legitimate reviews still work.
    let c = kc_client(&kc);
    assert!(review(&c, &kc.server, V1, &alice).await.authenticated());
    assert_no_secret_logged(&[&up], &[&alice]);
}
