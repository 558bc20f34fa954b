//! Issue 2 end to end: kube-apiserver's view of the webhook, through real HTTPS, against
//! the all-in-one binary and against edge + authd as separate processes.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

struct Tokens {
    alice: String,
    bob_hashed: String,
    nobody: String,
}

fn token_file(dir: &std::path::Path) -> (Tokens, std::path::PathBuf) {
    let t = Tokens {
        alice: token("alice"),
        bob_hashed: token("bob"),
        nobody: token("nobody"),
    };
    let text = format!(
        "# test tokens\n{},alice,uid-alice,\"dev,ops\"\nsha256:{},bob,uid-bob\n",
        t.alice,
        sha256_hex(&t.bob_hashed)
    );
    (t, write(dir, "tokens.csv", &text))
}

/// Every answer class of the contract, for one client against one endpoint.
async fn check_answers(client: &reqwest::Client, url: &str, t: &Tokens, proto: Proto) {
    for v in [V1, V1BETA1] {
        let a = review(client, url, v, &t.alice).await;
        assert_eq!(a.status, 200, "{a:?}");
        let expected_version = match proto {
            Proto::H1 => reqwest::Version::HTTP_11,
            Proto::H2 => reqwest::Version::HTTP_2,
        };
        assert_eq!(a.version, expected_version);
        assert_eq!(
            a.body["apiVersion"], v,
            "answer in the request's apiVersion"
        );
        assert_eq!(a.body["kind"], "TokenReview");
        assert_eq!(
            a.body["status"],
            json!({"authenticated": true, "user": {"username": "alice", "uid": "uid-alice", "groups": ["dev", "ops"],
                "extra": {"authd.kube-authd.io/source": ["static"], "authd.kube-authd.io/cluster": ["default"]}}}),
            "no audiences, no error for a source that is not audience-aware; extra names source and cluster"
        );
        assert_eq!(a.content_type.as_deref(), Some("application/json"));
        assert!(
            a.body["spec"].get("token").is_none(),
            "the token is never echoed"
        );

        let b = review(client, url, v, &t.bob_hashed).await;
        assert!(b.authenticated(), "hashed token: {b:?}");
        assert_eq!(b.username(), "bob");
        assert!(b.body["status"]["user"].get("groups").is_none());

        let n = review(client, url, v, &t.nobody).await;
        n.assert_denied();
        assert_eq!(n.body["apiVersion"], v);

        // kube-apiserver always sends spec.audiences on current clusters.
        let aud = post_raw(
            client,
            url,
            review_body(
                v,
                &t.alice,
                &["https://kubernetes.default.svc.cluster.local"],
            ),
        )
        .await;
        assert!(aud.authenticated());
        assert!(aud.body["status"].get("audiences").is_none(), "{aud:?}");
    }
    // Junk too large to be anyone's token is a fast, cacheable denial, not a retried 500.
    review(client, url, V1, &"x".repeat(100 * 1024))
        .await
        .assert_denied();
    // A hashed entry's digest is not itself a token.
    review(
        client,
        url,
        V1,
        &format!("sha256:{}", sha256_hex(&t.bob_hashed)),
    )
    .await
    .assert_denied();
}

async fn check_bad_requests(client: &reqwest::Client, url: &str, t: &Tokens) {
    let bad = |a: &Answer, code: u16, needle: &str| {
        assert_eq!(a.status, code, "{a:?}");
        assert_eq!(a.body["kind"], "Status", "{a:?}");
        assert_eq!(a.body["code"], code);
        let msg = a.body["message"].as_str().unwrap();
        assert!(
            msg.contains(needle),
            "message {msg:?} should mention {needle:?}"
        );
        assert!(!msg.contains(&t.alice), "token echoed in an error");
    };
    bad(
        &post_raw(client, url, "{\"kind\":").await,
        400,
        "not valid JSON",
    );
    bad(&post_raw(client, url, "").await, 400, "not valid JSON");
    let pod = json!({"kind":"Pod","apiVersion":V1,"spec":{"token":t.alice}}).to_string();
    bad(&post_raw(client, url, pod).await, 400, "kind");
    let v2 = review_body("authentication.k8s.io/v2", &t.alice, &[]);
    bad(&post_raw(client, url, v2).await, 400, "apiVersion");
    let no_token = json!({"kind":"TokenReview","apiVersion":V1,"spec":{}}).to_string();
    bad(&post_raw(client, url, no_token).await, 400, "spec.token");
    // Case matters: "Kind" is not "kind".
    let cased = json!({"Kind":"TokenReview","apiVersion":V1,"spec":{"token":t.alice}}).to_string();
    bad(&post_raw(client, url, cased).await, 400, "kind");
    // The token in the wrong place: the JSON error must not quote it back.
    let misplaced = json!({"kind":"TokenReview","apiVersion":V1,"spec":t.alice}).to_string();
    bad(
        &post_raw(client, url, misplaced).await,
        400,
        "not valid JSON",
    );
    // Over the 1 MiB default: 413, declared or streamed.
    let big = review_body(V1, &"x".repeat(2 * 1024 * 1024), &[]);
    bad(&post_raw(client, url, big).await, 413, "larger than");
    let chunks =
        futures::stream::iter((0..40).map(|_| Ok::<_, std::io::Error>(vec![b' '; 64 * 1024])));
    bad(
        &post_raw(client, url, reqwest::Body::wrap_stream(chunks)).await,
        413,
        "larger than",
    );
    // Wrong method: 405 with Allow.
    let r = client.get(url).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    // Unknown cluster and unknown path: 404, never a redirect.
    let base = url.trim_end_matches("/authenticate");
    for path in [
        "/clusters/nope/authenticate",
        "/authenticate/",
        "/",
        "/clusters//authenticate",
    ] {
        let a = post_raw(
            client,
            &format!("{base}{path}"),
            review_body(V1, &t.alice, &[]),
        )
        .await;
        bad(&a, 404, "no TokenReview endpoint");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn all_in_one_speaks_the_contract_over_http1_and_http2() {
    let dir = temp_dir();
    let (t, tokens) = token_file(dir.path());
    let up = start_up(dir.path(), &tokens);
    let kc = Kubeconfig::load(&dir.path().join("state/webhook-kubeconfig.yaml"));
    assert_eq!(kc.server, up.ready_field("https"));
    assert!(kc.server.starts_with("https://127.0.0.1:") && kc.server.ends_with("/authenticate"));
    for proto in [Proto::H1, Proto::H2] {
        let c = client(&kc.ca_pem, proto, None);
        check_answers(&c, &kc.server, &t, proto).await;
        check_bad_requests(&c, &kc.server, &t).await;
    }
    // A client that does not trust the generated CA cannot talk to the edge.
    let other = reqwest::Client::builder()
        .tls_certs_only([])
        .build()
        .unwrap();
    assert!(other.post(&kc.server).body("{}").send().await.is_err());

    // Metrics saw the reviews, labelled by cluster, apiVersion, result and code.
    let admin = up.ready_field("admin");
    let (code, metrics) = admin_get(&admin, "/metrics").await;
    assert_eq!(code, 200);
    let ok = metric_sum(
        &metrics,
        "edge_reviews_total",
        &[
            ("cluster", "default"),
            ("api_version", "v1"),
            ("result", "authenticated"),
            ("code", "200"),
        ],
    );
    assert!(
        ok >= 4.0,
        "edge_reviews_total authenticated v1: {ok}\n{metrics}"
    );
    assert!(
        metric_sum(
            &metrics,
            "edge_reviews_total",
            &[("result", "bad_request"), ("code", "400")]
        ) >= 7.0
    );
    assert!(metric_sum(&metrics, "edge_reviews_total", &[("code", "413")]) >= 2.0);
    assert!(metrics.contains("edge_review_duration_seconds_bucket"));
    assert!(
        metrics.contains("authd_verdicts_total"),
        "all-in-one exports authd's metrics too"
    );
    assert_eq!(metrics.matches("# EOF").count(), 1);
    assert_eq!(admin_get(&admin, "/healthz").await.0, 200);
    assert_eq!(admin_get(&admin, "/readyz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn split_mode_speaks_the_contract_and_routes_clusters() {
    let dir = temp_dir();
    let (t, _) = token_file(dir.path());
    let split = Split::start(
        dir.path(),
        "[[sources]]\nname = \"static\"\ntype = \"token_file\"\npath = \"tokens.csv\"\n\
         [clusters.prod]\nallow_users = [\"bob\"]\n\
         [clusters.dev]\nadd_groups = [\"tenant-dev\"]\n",
        "[clusters.dev]\n[clusters.prod]\n",
    );
    for proto in [Proto::H1, Proto::H2] {
        let c = client(&split.ca_pem, proto, None);
        check_answers(&c, &split.url, &t, proto).await;
        check_bad_requests(&c, &split.url, &t).await;
        let base = split.url.trim_end_matches("/authenticate");
        let dev = format!("{base}/clusters/dev/authenticate");
        let prod = format!("{base}/clusters/prod/authenticate");
        let a = review(&c, &dev, V1, &t.alice).await;
        assert_eq!(a.groups(), vec!["dev", "ops", "tenant-dev"]);
        review(&c, &prod, V1, &t.alice).await.assert_denied();
        assert_eq!(review(&c, &prod, V1, &t.bob_hashed).await.username(), "bob");
    }
    assert!(
        split.authd.stderr().contains("refused by cluster policy"),
        "a policy refusal is logged with its reason"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn authd_down_is_a_retryable_500_and_recovery_needs_no_edge_restart() {
    let dir = temp_dir();
    let (t, _) = token_file(dir.path());
    let sources = "[[sources]]\nname = \"static\"\ntype = \"token_file\"\npath = \"tokens.csv\"\n";
    let mut split = Split::start(dir.path(), sources, "review_timeout = \"3s\"\n");
    let admin = split.edge.ready_field("admin");
    let c = client(&split.ca_pem, Proto::H2, None);
    assert!(review(&c, &split.url, V1, &t.alice).await.authenticated());
    eventually(Duration::from_secs(5), "edge ready", || async {
        admin_get(&admin, "/readyz").await.0 == 200
    })
    .await;

    split.authd.kill();
    for v in [V1, V1BETA1] {
        // Unknown tokens too: with authd gone nothing is decided, nothing is "false".
        for tok in [&t.alice, &t.nobody] {
            review(&c, &split.url, v, tok).await.assert_undecided();
        }
    }
    eventually(
        Duration::from_secs(5),
        "readyz false while authd is down",
        || async { admin_get(&admin, "/readyz").await.0 == 503 },
    )
    .await;

    // authd back on the same address: the edge reconnects by itself.
    split.authd = start_authd(dir.path(), "authd2", &split.grpc, sources);
    let url = split.url.clone();
    eventually(Duration::from_secs(15), "reviews succeed again", || {
        let c = c.clone();
        let url = url.clone();
        let tok = t.alice.clone();
        async move { review(&c, &url, V1, &tok).await.authenticated() }
    })
    .await;
    review(&c, &split.url, V1, &t.nobody).await.assert_denied();
    eventually(Duration::from_secs(5), "readyz true again", || async {
        admin_get(&admin, "/readyz").await.0 == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_in_flight_reviews() {
    let dir = temp_dir();
    let (t, _) = token_file(dir.path());
    let mut split = Split::start(
        dir.path(),
        "[[sources]]\nname = \"static\"\ntype = \"token_file\"\npath = \"tokens.csv\"\n",
        "review_timeout = \"30s\"\n",
    );
    let admin = split.edge.ready_field("admin");
    let clients: Vec<_> = [Proto::H1, Proto::H2]
        .into_iter()
        .map(|p| client(&split.ca_pem, p, None))
        .collect();
    // Warm both connections, then freeze authd so the next reviews stay in flight.
    for c in &clients {
        assert!(review(c, &split.url, V1, &t.alice).await.authenticated());
    }
    split.authd.signal(libc::SIGSTOP);
    let mut inflight = Vec::new();
    for i in 0..20 {
        let c = clients[i % 2].clone();
        let url = split.url.clone();
        let tok = if i % 3 == 0 {
            t.nobody.clone()
        } else {
            t.alice.clone()
        };
        inflight.push(tokio::spawn(async move {
            (tok.starts_with("alice"), review(&c, &url, V1, &tok).await)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    split.edge.signal(libc::SIGTERM);
    eventually(
        Duration::from_secs(5),
        "readyz goes false first",
        || async { admin_get(&admin, "/readyz").await.0 == 503 },
    )
    .await;
    // New connections are refused once draining has begun.
    let fresh = client(&split.ca_pem, Proto::H1, None);
    assert!(fresh.post(&split.url).body("{}").send().await.is_err());
    split.authd.signal(libc::SIGCONT);
    for h in inflight {
        let (valid, a) = h.await.unwrap();
        if valid {
            assert!(a.authenticated(), "in-flight review lost: {a:?}");
        } else {
            a.assert_denied();
        }
    }
    assert_eq!(split.edge.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(split.edge.stderr().contains("all connections drained"));

    // authd drains too: SIGTERM → exit 0, health reported NOT_SERVING first.
    split.authd.signal(libc::SIGTERM);
    assert_eq!(split.authd.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(split.authd.stderr().contains("readiness off, draining"));
}

#[tokio::test(flavor = "multi_thread")]
async fn no_raw_token_in_any_log_line() {
    let dir = temp_dir();
    let (t, tokens) = token_file(dir.path());
    let env = [("RUST_LOG", "trace")];
    let up = Proc::start_env(
        "up",
        "kube-authd",
        &[
            "up",
            "--state-dir",
            dir.path().join("state").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
            "--token-file",
            tokens.to_str().unwrap(),
        ],
        dir.path(),
        "kube-authd ready",
        &env,
    );
    register_up(&dir.path().join("state"));
    certs_init(dir.path(), &[]);
    let authd = {
        let cfg = write(dir.path(), "a.toml", "listen = \"127.0.0.1:0\"\n[clusters.default]\n[[sources]]\nname = \"static\"\ntype = \"token_file\"\npath = \"tokens.csv\"\n");
        Proc::start_env(
            "authd",
            "authd",
            &["serve", "--config", cfg.to_str().unwrap()],
            dir.path(),
            "authd ready",
            &env,
        )
    };
    let edge = {
        let cfg = write(
            dir.path(),
            "e.toml",
            &format!(
                "listen = \"127.0.0.1:0\"\n{EDGE_TLS}[authd]\nendpoint = \"http://{}\"\n",
                authd.ready_field("grpc")
            ),
        );
        Proc::start_env(
            "edge",
            "authd-edge",
            &["serve", "--config", cfg.to_str().unwrap()],
            dir.path(),
            "authd-edge ready",
            &env,
        )
    };
    let targets = [
        (
            up.ready_field("https"),
            std::fs::read(dir.path().join("state/ca.crt")).unwrap(),
        ),
        (
            format!("{}/authenticate", edge.ready_field("https")),
            std::fs::read(dir.path().join("ca.crt")).unwrap(),
        ),
    ];
    let garbage = token("garbage");
    for (url, ca) in &targets {
        for proto in [Proto::H1, Proto::H2] {
            let c = client(ca, proto, None);
            assert!(review(&c, url, V1, &t.alice).await.authenticated());
            assert!(review(&c, url, V1BETA1, &t.bob_hashed)
                .await
                .authenticated());
            review(&c, url, V1, &t.nobody).await.assert_denied();
            let misplaced =
                json!({"kind":"TokenReview","apiVersion":V1,"spec":garbage}).to_string();
            assert_eq!(post_raw(&c, url, misplaced).await.status, 400);
            let wrong_kind =
                json!({"kind":"Nope","apiVersion":V1,"spec":{"token":garbage}}).to_string();
            assert_eq!(post_raw(&c, url, wrong_kind).await.status, 400);
        }
    }
    drop(up);
    drop(edge);
    drop(authd);
    let mut checked = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "stderr") {
            let logs = std::fs::read_to_string(&p).unwrap();
            assert!(
                logs.lines().count() > 10,
                "{} logged too little to prove anything",
                p.display()
            );
            for secret in [&t.alice, &t.bob_hashed, &t.nobody, &garbage] {
                assert!(
                    !logs.contains(secret.as_str()),
                    "{} contains a raw token",
                    p.display()
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_configuration_stops_startup_naming_file_line_and_field() {
    let dir = temp_dir();
    let d = dir.path();
    let fails = |name: &str, binary: &str, args: &[&str], needles: &[&str]| {
        let mut p = Proc::spawn(name, binary, args, d, &[]);
        let code = p.wait_exit(Duration::from_secs(10));
        assert_eq!(code, Some(1), "{name} should fail to start");
        let err = p.stderr();
        for n in needles {
            assert!(
                err.contains(n),
                "{name}: stderr should mention {n:?}:\n{err}"
            );
        }
    };
    // Missing token file.
    write(
        d,
        "missing.toml",
        "[[sources]]\nname = \"s\"\ntype = \"token_file\"\npath = \"nope.csv\"\n",
    );
    fails(
        "missing",
        "authd",
        &["serve", "--config", "missing.toml"],
        &["nope.csv", "sources[0]", "cannot read"],
    );
    // Bad CSV line: file, line and field.
    write(d, "bad.csv", "tok1,alice,1\ntok2,,2\n");
    write(
        d,
        "badcsv.toml",
        "[[sources]]\nname = \"s\"\ntype = \"token_file\"\npath = \"bad.csv\"\n",
    );
    fails(
        "badcsv",
        "authd",
        &["serve", "--config", "badcsv.toml"],
        &["bad.csv", "line 2", "user name (column 2)"],
    );
    write(d, "short.csv", "tok1,alice\n");
    fails(
        "short",
        "kube-authd",
        &[
            "up",
            "--state-dir",
            "st",
            "--listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
            "--token-file",
            "short.csv",
        ],
        &["short.csv", "line 1", "at least 3 columns"],
    );
    // Unknown and malformed fields.
    write(d, "typo.toml", "lisen = \"127.0.0.1:1\"\n[[sources]]\nname = \"s\"\ntype = \"token_file\"\npath = \"bad.csv\"\n");
    fails(
        "typo",
        "authd",
        &["serve", "--config", "typo.toml"],
        &["typo.toml", "lisen"],
    );
    fails(
        "noconfig",
        "authd",
        &["serve", "--config", "absent.toml"],
        &["absent.toml", "cannot read"],
    );
    // Unreadable certificate and key for the edge.
    write(d, "garbage.crt", "not a certificate\n");
    write(d, "edge-bad-cert.toml", "[tls]\ncert = \"garbage.crt\"\nkey = \"garbage.crt\"\nclient_ca = \"ca.crt\"\n[authd]\nendpoint = \"http://127.0.0.1:1\"\n");
    fails(
        "badcert",
        "authd-edge",
        &["serve", "--config", "edge-bad-cert.toml"],
        &["tls.cert", "garbage.crt"],
    );
    write(d, "edge-missing.toml", "[tls]\ncert = \"none.crt\"\nkey = \"none.key\"\nclient_ca = \"ca.crt\"\n[authd]\nendpoint = \"http://127.0.0.1:1\"\n");
    fails(
        "missingcert",
        "authd-edge",
        &["serve", "--config", "edge-missing.toml"],
        &["tls.cert", "none.crt"],
    );
    write(
        d,
        "edge-noauthd.toml",
        "[tls]\ncert = \"none.crt\"\nkey = \"none.key\"\nclient_ca = \"ca.crt\"\n",
    );
    fails(
        "noauthd",
        "authd-edge",
        &["serve", "--config", "edge-noauthd.toml"],
        &["authd.endpoint"],
    );
    write(
        d,
        "edge-size.toml",
        "max_body_bytes = 0\n[tls]\ncert = \"a\"\nkey = \"b\"\n",
    );
    fails(
        "size",
        "authd-edge",
        &["serve", "--config", "edge-size.toml"],
        &["max_body_bytes"],
    );
}

#[test]
fn webhook_config_prints_a_kubeconfig_with_client_certificate() {
    let dir = temp_dir();
    certs_init(dir.path(), &["dev"]);
    let out = std::process::Command::new(bin("kube-authd"))
        .args([
            "webhook-config",
            "--server",
            "https://authn.example.com:8443/clusters/dev/authenticate",
        ])
        .arg("--ca")
        .arg(dir.path().join("ca.crt"))
        .arg("--client-cert")
        .arg(dir.path().join("apiserver-dev.crt"))
        .arg("--client-key")
        .arg(dir.path().join("apiserver-dev.key"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let kc = Kubeconfig::parse(&text);
    assert_eq!(
        kc.server,
        "https://authn.example.com:8443/clusters/dev/authenticate"
    );
    assert_eq!(kc.ca_pem, std::fs::read(dir.path().join("ca.crt")).unwrap());
    assert_eq!(
        kc.client_cert_pem.unwrap(),
        std::fs::read(dir.path().join("apiserver-dev.crt")).unwrap()
    );
    assert!(text.contains("current-context: webhook"));
    let bad = std::process::Command::new(bin("kube-authd"))
        .args(["webhook-config", "--server", "http://x", "--ca", "nope"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("https://"));
}
