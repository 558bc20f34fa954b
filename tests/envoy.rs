//! Envoy's ext_authz in front of a service, with authd as its authorization server over
//! mutual TLS: a real Envoy (`tests/common/envoy.rs`), a recording upstream, the real authd.
//! What reaches the service and what does not: identity headers and no token on a valid
//! token, nothing at all on an invalid, revoked or policy-refused one or while authd is
//! down, and `Check` only for callers with a listed client certificate.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::basic_auth::{HttpServer, Mode, Recorded};
use common::envoy::{ext_authz_config, Authz, Envoy};
use common::procs::kube_authd_revoke_with;
use common::{admin_get, metric_sum, start_authd_as_written, temp_dir, token, write, Proc};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

struct Tokens {
    /// groups dev, ops
    alice: String,
    /// group sre (the only group prod admits)
    bob: String,
    /// no groups
    carol: String,
}

/// authd (mutual TLS, `[clients.envoy]` may `Check` for default and prod), an upstream that
/// records what reaches it, and Envoy in front of it with authd as its ext_authz server.
struct Mesh {
    dir: tempfile::TempDir,
    tokens: Tokens,
    authd: Proc,
    upstream: HttpServer,
    /// The Basic-auth identity service behind `user:password` tokens: failing (500), so
    /// authd cannot decide them.
    idp: HttpServer,
    envoy: Envoy,
    http: reqwest::Client,
}

const ADMIN_SECRET: &str = "envoy-test-admin-secret-0123456789";

fn start() -> Mesh {
    let dir = temp_dir();
    let d = dir.path();
    common::fleet::certs_init_with(
        d,
        &[
            "--client", "envoy", "--client", "ops", "--client", "mallory",
        ],
    );
    let tokens = Tokens {
        alice: token("alice"),
        bob: token("bob"),
        carol: token("carol"),
    };
    write(
        d,
        "tokens.csv",
        &format!(
            "{},alice,a-1,\"dev,ops\"\n{},bob,b-1,sre\n{},carol,c-1\n",
            tokens.alice, tokens.bob, tokens.carol
        ),
    );
    write(d, "admin.token", ADMIN_SECRET);
    let idp = HttpServer::start(Arc::new(|_: &Recorded| (200, "{}".into())));
    idp.set_mode(Mode::Fail);
    let authd = start_authd_as_written(
        d,
        "authd",
        "127.0.0.1:0",
        &format!(
            "[tls]\ncert = \"authd.crt\"\nkey = \"authd.key\"\nclient_ca = \"ca.crt\"\n\
         [admin]\ntoken_file = \"admin.token\"\n\
         [clients.envoy]\nmethods = [\"Check\"]\nclusters = [\"default\", \"prod\"]\n\
         [clients.ops]\nmethods = [\"RevokeToken\"]\n\
         [clusters.default]\n\
         [clusters.prod]\nallow_groups = [\"sre\"]\n\
         [clusters.staging]\n\
         [[sources]]\nname = \"static\"\ntype = \"token_file\"\npath = \"tokens.csv\"\n\
         [[sources]]\nname = \"corp\"\ntype = \"basic_auth\"\nurl = \"{}\"\ntimeout = \"1s\"\n",
            idp.url("/basic-auth/{user}")
        ),
    );
    let upstream = HttpServer::start(Arc::new(|_: &Recorded| (200, "{\"upstream\":true}".into())));
    let grpc = authd.ready_field("grpc");
    let yaml = ext_authz_config(
        upstream.port,
        &Authz {
            authd: &grpc,
            certs: d,
            client: Some("envoy"),
        },
    );
    let envoy = Envoy::start(d, "envoy", &yaml);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    Mesh {
        dir,
        tokens,
        authd,
        upstream,
        idp,
        envoy,
        http,
    }
}

/// One answer from Envoy.
#[derive(Debug)]
struct Reply {
    status: u16,
    www_authenticate: Vec<String>,
    body: String,
}

impl Mesh {
    /// GET `path` through Envoy with these header lines (repeated names are sent repeated).
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = self.http.get(self.envoy.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} through envoy: {e:?}"));
        let status = resp.status().as_u16();
        let www_authenticate = resp
            .headers()
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        let body = resp.text().await.unwrap();
        Reply {
            status,
            www_authenticate,
            body,
        }
    }

    async fn bearer(&self, path: &str, token: &str) -> Reply {
        self.get(path, &[("authorization", &format!("Bearer {token}"))])
            .await
    }

    async fn metrics(&self) -> String {
        admin_get(&self.authd.ready_field("admin"), "/metrics")
            .await
            .1
    }

    fn seen(&self) -> Vec<Recorded> {
        self.upstream.requests()
    }
}

fn assert_unauthorized(r: &Reply) {
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.www_authenticate, ["Bearer"], "{r:?}");
    assert_eq!(r.body, "", "a denial says nothing about why: {r:?}");
}

/// The upstream request carries exactly this identity, the token header is gone, and no
/// other spelling of an identity header got through.
fn assert_identity(r: &Recorded, user: &str, uid: &str, groups: Option<&str>) {
    assert_eq!(r.header("x-kube-authd-user"), [user], "{r:?}");
    assert_eq!(r.header("x-kube-authd-uid"), [uid], "{r:?}");
    assert_eq!(
        r.header("x-kube-authd-groups"),
        groups.into_iter().collect::<Vec<_>>(),
        "{r:?}"
    );
    assert!(
        r.header("authorization").is_empty(),
        "token forwarded: {r:?}"
    );
    for (k, _) in &r.headers {
        let folded = k.replace('_', "-");
        if folded.starts_with("x-kube-authd-") {
            assert!(
                [
                    "x-kube-authd-user",
                    "x-kube-authd-uid",
                    "x-kube-authd-groups"
                ]
                .contains(&k.as_str()),
                "a spoofed spelling reached the service: {k}: {r:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_reaches_the_service_with_its_identity_and_without_the_token() {
    let m = start();
    let t = &m.tokens;
    // The client claims to be root in every way a service might read it.
    let bearer = format!("Bearer {}", t.alice);
    let spoofed = [
        ("authorization", bearer.as_str()),
        ("x-kube-authd-user", "root"),
        ("x-kube-authd-user", "admin"),
        ("x-kube-authd-uid", "0"),
        ("x-kube-authd-groups", "system:masters"),
        ("x_kube_authd_user", "root"),
        ("x-kube_authd-groups", "system:masters"),
    ];
    let r = m.get("/app/items?x=1", &spoofed).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "{\"upstream\":true}");
    let seen = m.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].target, "/app/items?x=1");
    assert_identity(&seen[0], "alice", "a-1", Some("dev,ops"));

    // A user without groups: the client's groups header is removed, not left standing.
    let bearer = format!("Bearer {}", t.carol);
    let r = m
        .get(
            "/",
            &[
                ("authorization", &bearer),
                ("x-kube-authd-groups", "system:masters"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = m.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_identity(&seen[1], "carol", "c-1", None);

    // Counted like the webhook's reviews, with the caller where the webhook has the cluster;
    // the verdicts are the clusters' own.
    let text = m.metrics().await;
    let checks = |result| {
        metric_sum(
            &text,
            "authd_ext_authz_checks_total",
            &[("client", "envoy"), ("result", result)],
        )
    };
    assert_eq!(checks("allowed"), 2.0, "{text}");
    assert_eq!(checks("denied"), 0.0, "{text}");
    assert_eq!(
        metric_sum(
            &text,
            "authd_grpc_requests_total",
            &[("client", "envoy"), ("method", "Check")]
        ),
        2.0,
        "{text}"
    );
    assert_eq!(
        metric_sum(
            &text,
            "authd_verdicts_total",
            &[("cluster", "default"), ("result", "authenticated")]
        ),
        2.0,
        "{text}"
    );
    let log = m.authd.stderr();
    assert!(log.contains("Check answered"), "{log}");
    for secret in [&t.alice, &t.carol] {
        assert!(!log.contains(secret.as_str()), "a token in authd's log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_never_reach_the_service() {
    let m = start();
    let t = &m.tokens;
    assert_unauthorized(&m.bearer("/", &token("nobody")).await);
    assert_unauthorized(&m.get("/", &[]).await);
    assert_unauthorized(
        &m.get("/", &[("authorization", "Basic YWxpY2U6c2VjcmV0")])
            .await,
    );
    assert_unauthorized(
        &m.get("/", &[("authorization", &format!("Token {}", t.alice))])
            .await,
    );
    // Context extensions pick the cluster's policy: prod admits group sre only.
    assert_unauthorized(&m.bearer("/prod/x", &t.alice).await);
    assert_eq!(m.bearer("/app", &t.alice).await.status, 200);
    // A configured cluster this Envoy is not granted: PERMISSION_DENIED, which Envoy
    // answers with its error status (403), never a pass.
    assert_eq!(m.bearer("/staging/x", &t.alice).await.status, 403);
    assert_eq!(m.bearer("/nowhere/x", &t.alice).await.status, 403);
    let seen = m.seen();
    assert_eq!(seen.len(), 1, "only the one allowed request: {seen:?}");
    assert_eq!(seen[0].target, "/app");

    let r = m.bearer("/prod/x", &t.bob).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = m.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_identity(&seen[1], "bob", "b-1", Some("sre"));

    let text = m.metrics().await;
    let checks = |result| {
        metric_sum(
            &text,
            "authd_ext_authz_checks_total",
            &[("client", "envoy"), ("result", result)],
        )
    };
    assert_eq!(checks("denied"), 5.0, "{text}");
    assert_eq!(checks("forbidden"), 2.0, "{text}");
    assert_eq!(checks("allowed"), 2.0, "{text}");
    assert_eq!(
        metric_sum(
            &text,
            "authd_verdicts_total",
            &[("cluster", "prod"), ("result", "denied_by_policy")]
        ),
        1.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_within_a_second() {
    let m = start();
    let t = &m.tokens;
    assert_eq!(m.bearer("/", &t.alice).await.status, 200);
    assert_eq!(m.bearer("/", &t.alice).await.status, 200, "cached");
    let d = m.dir.path().to_owned();
    let grpc = m.authd.ready_field("grpc");
    let alice = t.alice.clone();
    let out = tokio::task::spawn_blocking(move || {
        let dir = |f: &str| d.join(f).to_str().unwrap().to_owned();
        let authd = format!("https://localhost:{}", grpc.rsplit_once(':').unwrap().1);
        let conn = [
            "--authd",
            &authd,
            "--ca",
            &dir("ca.crt"),
            "--client-cert",
            &dir("client-ops.crt"),
            "--client-key",
            &dir("client-ops.key"),
            "--admin-token-file",
            &dir("admin.token"),
        ];
        kube_authd_revoke_with(&conn, &["--token-stdin"], Some(&format!("{alice}\n")))
    })
    .await
    .unwrap();
    assert!(out.starts_with("revoked: "), "{out}");
    let returned = Instant::now();
    let refused_after = loop {
        let r = m.bearer("/", &t.alice).await;
        if r.status == 401 {
            assert_unauthorized(&r);
            break returned.elapsed();
        }
        assert!(
            returned.elapsed() < Duration::from_secs(1),
            "still {} a second after the revocation returned",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("revoked token refused {refused_after:?} after the revocation returned");
    assert_eq!(m.seen().len(), 2, "nothing after the revocation");
    // Another user's token is untouched.
    assert_eq!(m.bearer("/", &t.carol).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_authd_undecided_or_down_envoy_fails_closed_and_nothing_passes() {
    let mut m = start();
    let t = &m.tokens;
    assert_eq!(m.bearer("/", &t.alice).await.status, 200);
    // The identity service behind `user:password` tokens fails: authd cannot decide and
    // says so (UNAVAILABLE); Envoy's failure mode answers, not a 401 and never a pass.
    for _ in 0..3 {
        let r = m.bearer("/", "dave:secret").await;
        assert_eq!(r.status, 403, "{r:?}");
    }
    assert!(!m.idp.requests().is_empty(), "the source was asked");
    let text = m.metrics().await;
    assert_eq!(
        metric_sum(
            &text,
            "authd_ext_authz_checks_total",
            &[("client", "envoy"), ("result", "undecided")]
        ),
        3.0,
        "{text}"
    );
    m.authd.kill();
    for token in [&t.alice, &t.bob, &t.carol] {
        for _ in 0..5 {
            let r = m.bearer("/", token).await;
            // Envoy's default status_on_error; never the service's answer.
            assert_eq!(r.status, 403, "{r:?}");
        }
    }
    assert_eq!(m.seen().len(), 1, "nothing passed while authd was down");
}

/// A Check as Envoy sends it: the token in the Authorization header, the cluster in the
/// route's context extensions.
fn check_request(token: &str, cluster: Option<&str>) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    id: "direct".into(),
                    headers: [("authorization".into(), format!("Bearer {token}"))].into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: cluster
                .map(|c| [("cluster".to_owned(), c.to_owned())].into())
                .unwrap_or_default(),
            ..Default::default()
        }),
    }
}

/// A gRPC channel to authd over TLS, presenting `client-NAME` or no certificate.
async fn channel(dir: &Path, grpc: &str, client: Option<&str>) -> Result<Channel, String> {
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.crt")))
        .domain_name("localhost");
    if let Some(name) = client {
        tls = tls.identity(Identity::from_pem(
            read(&format!("client-{name}.crt")),
            read(&format!("client-{name}.key")),
        ));
    }
    Endpoint::from_shared(format!("https://{grpc}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_is_only_for_callers_with_a_listed_client_certificate() {
    let m = start();
    let d = m.dir.path();
    let grpc = m.authd.ready_field("grpc");
    let t = &m.tokens;

    // Envoy's own certificate: answered (the client below works).
    let mut envoy = AuthorizationClient::new(channel(d, &grpc, Some("envoy")).await.unwrap());
    let ok = envoy
        .check(check_request(&t.alice, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.status.unwrap().code, 0);
    assert!(matches!(
        ok.http_response,
        Some(HttpResponse::OkResponse(_))
    ));
    // Not granted staging: PERMISSION_DENIED before any verdict.
    let e = envoy
        .check(check_request(&t.alice, Some("staging")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");

    // No client certificate: refused at the TLS handshake, nothing answered.
    let refused = match channel(d, &grpc, None).await {
        Err(e) => e,
        Ok(ch) => match AuthorizationClient::new(ch)
            .check(check_request(&t.alice, None))
            .await
        {
            Ok(r) => panic!("a caller without a certificate was answered: {r:?}"),
            Err(e) => format!("{e:?}"),
        },
    };
    eprintln!("certificate-less caller: {refused}");
    // A certificate from the right CA whose name is not a [clients] entry.
    let mut mallory = AuthorizationClient::new(channel(d, &grpc, Some("mallory")).await.unwrap());
    let e = mallory
        .check(check_request(&t.alice, None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");

    let text = m.metrics().await;
    assert_eq!(
        metric_sum(
            &text,
            "authd_verdicts_total",
            &[("result", "authenticated")]
        ),
        1.0,
        "only Envoy's own Check reached the verdict path: {text}"
    );
    let log = m.authd.stderr();
    assert!(
        log.contains("gRPC client refused at the TLS handshake"),
        "{log}"
    );
    assert!(
        log.contains("unknown client \\\"mallory\\\"") || log.contains("unknown client"),
        "{log}"
    );
}

/// The `envoy.yaml` of docs/envoy.md is one the real Envoy accepts (its certificate paths
/// pointed at real files).
#[test]
fn the_documented_envoy_configuration_validates() {
    let dir = temp_dir();
    let d = dir.path();
    common::fleet::certs_init_with(d, &["--client", "envoy"]);
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/envoy.md"))
        .unwrap();
    let yaml = doc
        .split("```yaml\n")
        .find(|b| b.starts_with("static_resources:"))
        .and_then(|b| b.split_once("```"))
        .map(|(yaml, _)| yaml)
        .expect("an envoy.yaml block in docs/envoy.md");
    let yaml = yaml.replace("/etc/envoy/kube-authd/", &format!("{}/", d.display()));
    let config = write(d, "documented.yaml", &yaml);
    let out = std::process::Command::new(common::envoy::envoy_bin())
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(&config)
        .output()
        .expect("run envoy --mode validate");
    assert!(
        out.status.success(),
        "envoy refused the documented configuration:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `kube-authd-bench envoy` in smoke mode: it starts Envoy, authd and its upstream, and
/// every request through both listeners is answered as expected. It measures nothing
/// (figures come from a release build, bench/README.md).
#[test]
fn the_envoy_benchmark_runs_with_zero_errors() {
    let bench = common::bin("kube-authd-bench");
    let out = std::process::Command::new(&bench)
        .args(["envoy", "--duration", "300ms", "--warmup", "200ms"])
        .args(["--rounds", "2", "--connections", "4", "--envoy"])
        .arg(common::envoy::envoy_bin())
        .arg("--bin-dir")
        .arg(bench.parent().expect("binary folder"))
        .output()
        .expect("run kube-authd-bench envoy");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench envoy failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for listener in ["| authz |", "| plain |", "| ceiling |"] {
        assert!(stdout.contains(listener), "{stdout}");
    }
    assert!(stdout.contains("ext_authz rate"), "{stdout}");
    assert!(stdout.contains("of the ceiling's rate"), "{stdout}");
}
