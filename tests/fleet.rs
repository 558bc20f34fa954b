//! Issue 5 end to end: several authd replicas behind one edge (balancing, failover,
//! recovery), mutual TLS on both hops with their refusals, certificate rotation under load,
//! and slow-client protection. Real processes, real TLS, loopback only.

mod common;

use std::path::Path;
use std::time::Duration;

use common::fleet::*;
use common::*;

const SOURCES: &str =
    "[[sources]]\nname = \"static\"\ntype = \"token_file\"\npath = \"tokens.csv\"\n";

/// authd serves only the clusters it declares: these for the edges that route dev and prod
/// (the harness adds the default cluster).
const DEV_PROD: &str = "[clusters.dev]\n[clusters.prod]\n";

fn tokens(dir: &Path) -> String {
    let alice = token("alice");
    write(
        dir,
        "tokens.csv",
        &format!("{alice},alice,uid-alice,\"dev\"\n"),
    );
    alice
}

/// `n` authd replicas (static token source, plaintext gRPC) behind one edge that already
/// reports ready. Fields drop in order: processes first, then the folder they live in.
struct Fleet {
    replicas: Vec<Replica>,
    edge: Proc,
    admin: String,
    url: String,
    alice: String,
    dir: tempfile::TempDir,
}

impl Fleet {
    async fn start(n: usize, review_timeout: &str) -> Fleet {
        let dir = temp_dir();
        let d = dir.path();
        certs_init_with(d, &[]);
        let alice = tokens(d);
        let replicas: Vec<Replica> = (0..n)
            .map(|i| Replica::start(d, &format!("authd{i}"), SOURCES))
            .collect();
        let edge = start_fleet_edge(
            d,
            "edge",
            &format!("review_timeout = \"{review_timeout}\""),
            &endpoints_toml(&replicas, "http"),
        );
        let admin = edge.ready_field("admin");
        let url = format!("{}/authenticate", edge.ready_field("https"));
        eventually(Duration::from_secs(10), "edge ready", || ready(&admin)).await;
        Fleet {
            replicas,
            edge,
            admin,
            url,
            alice,
            dir,
        }
    }
}

/// Zero failed reviews; otherwise the failures and the edge's rotation changes.
fn assert_no_failures(result: &LoadResult, edge: &Proc) {
    if result.failed.is_empty() {
        return;
    }
    let rotation: Vec<String> = edge
        .stderr()
        .lines()
        .filter(|l| {
            l.contains("replica") || l.contains("retrying") || l.contains("could not be decided")
        })
        .map(str::to_owned)
        .collect();
    panic!(
        "{} failed reviews: {:#?}\nedge rotation log:\n{}",
        result.failed.len(),
        result.failed,
        rotation.join("\n")
    );
}

/// Every line shows up in the process's log (logging may trail the client's view a little).
async fn assert_logs(p: &Proc, lines: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let logs = p.stderr();
        let missing: Vec<&&str> = lines.iter().filter(|l| !logs.contains(**l)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} log should show {missing:?}:\n{logs}",
            p.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn https_client(dir: &Path) -> reqwest::Client {
    client(&std::fs::read(dir.join("ca.crt")).unwrap(), Proto::H2, None)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_replica_fails_no_review_and_gets_traffic_again() {
    let Fleet {
        mut replicas,
        edge,
        admin: _admin,
        url,
        alice,
        dir,
    } = Fleet::start(3, "5s").await;
    let d = dir.path();

    let load = Load::start(
        https_client(d),
        url.clone(),
        alice.clone(),
        4,
        50_000,
        Duration::from_secs(60),
    );
    eventually(
        Duration::from_secs(10),
        "every replica gets traffic",
        || async {
            for r in &replicas {
                if r.verdicts().await < 1.0 {
                    return false;
                }
            }
            true
        },
    )
    .await;
    replicas[0].kill();
    let at_kill = load.ok_so_far();
    eventually(
        Duration::from_secs(10),
        "reviews continue without the killed replica",
        || async { load.ok_so_far() > at_kill + 200 },
    )
    .await;
    replicas[0].restart(d);
    eventually(
        Duration::from_secs(15),
        "the restarted replica gets traffic again",
        || async { replicas[0].verdicts().await >= 10.0 },
    )
    .await;
    let result = load.stop().await;
    assert_no_failures(&result, &edge);
    assert!(result.ok > 200, "{result:?}");
    let logs = edge.stderr();
    assert!(
        logs.contains("authd replica ejected from rotation"),
        "edge logs the ejection"
    );
    assert!(
        logs.contains("authd replica healthy; in rotation"),
        "edge logs the return"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn all_replicas_down_answers_retryable_500_then_recovers_without_edge_restart() {
    let Fleet {
        mut replicas,
        edge: _edge,
        admin,
        url,
        alice,
        dir,
    } = Fleet::start(2, "3s").await;
    let d = dir.path();
    let c = https_client(d);
    assert_authenticated(&c, &url, &alice).await;

    for r in &mut replicas {
        r.kill();
    }
    for _ in 0..5 {
        review(&c, &url, V1, &alice).await.assert_undecided();
    }
    eventually(
        Duration::from_secs(10),
        "readiness off with no replica",
        || async { !ready(&admin).await },
    )
    .await;
    let a = review(&c, &url, V1, &alice).await;
    a.assert_undecided();
    assert!(
        a.body["message"]
            .as_str()
            .unwrap_or("")
            .contains("no healthy authd replica"),
        "{a:?}"
    );

    for r in &mut replicas {
        r.restart(d);
    }
    eventually(Duration::from_secs(15), "edge ready again", || {
        ready(&admin)
    })
    .await;
    assert_authenticated(&c, &url, &alice).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kube_apiserver_certificates_are_bound_to_their_cluster() {
    let dir = temp_dir();
    let d = dir.path();
    certs_init_with(d, &["--cluster", "dev", "--cluster", "prod"]);
    let alice = tokens(d);
    let edge_toml = "[clusters.dev]\nclient_ca = \"cluster-dev-ca.crt\"\n[clusters.prod]\nclient_ca = \"cluster-prod-ca.crt\"\n";
    let s = Split::start(d, &format!("{SOURCES}{DEV_PROD}"), edge_toml);
    let base = s.edge.ready_field("https");
    let (dev, prod) = (
        format!("{base}/clusters/dev/authenticate"),
        format!("{base}/clusters/prod/authenticate"),
    );
    let ca = std::fs::read(d.join("ca.crt")).unwrap();
    let dev_client = client(&ca, Proto::H2, Some(identity(d, "apiserver-dev")));
    let prod_client = client(&ca, Proto::H1, Some(identity(d, "apiserver-prod")));

    // The right certificate on the right cluster.
    assert_authenticated(&dev_client, &dev, &alice).await;
    assert_authenticated(&prod_client, &prod, &alice).await;

    // dev's kube-apiserver on prod's endpoint.
    let a = review(&dev_client, &prod, V1, &alice).await;
    assert_eq!(a.status, 403, "{a:?}");
    assert_eq!(a.body["reason"], "Forbidden", "{a:?}");
    assert!(a.body["status"].get("authenticated").is_none());

    // No client certificate at all: every route requires one (tls.client_ca is the
    // default), so the handshake fails.
    let anonymous = anonymous_client(&ca, Proto::H2);
    let r = anonymous
        .post(format!("{prod}?timeout=30s"))
        .body(review_body(V1, &alice, &[]))
        .send()
        .await;
    assert!(
        r.is_err(),
        "no certificate: refused at the handshake: {r:?}"
    );

    // A certificate from another deployment's CA: refused at the handshake.
    let other = temp_dir();
    certs_init_with(other.path(), &["--cluster", "prod"]);
    let foreign = client(
        &ca,
        Proto::H2,
        Some(identity(other.path(), "apiserver-prod")),
    );
    let r = foreign
        .post(format!("{prod}?timeout=30s"))
        .body(review_body(V1, &alice, &[]))
        .send()
        .await;
    assert!(
        r.is_err(),
        "a foreign CA's certificate must be refused: {r:?}"
    );

    // An expired certificate from the right CA: refused at the handshake.
    issue_client_cert(
        d,
        "cluster-prod-ca",
        "kube-apiserver:prod",
        "expired-prod",
        true,
    );
    let expired = client(&ca, Proto::H2, Some(identity(d, "expired-prod")));
    let r = expired
        .post(format!("{prod}?timeout=30s"))
        .body(review_body(V1, &alice, &[]))
        .send()
        .await;
    assert!(r.is_err(), "an expired certificate must be refused: {r:?}");

    assert_logs(&s.edge, &[
        "kube-apiserver client certificate refused",
        "\"kube-apiserver:dev\" is not valid for cluster \"prod\": not issued by clusters.prod.client_ca",
        "client certificate required but none was presented",
        "client certificate refused: not issued by a configured client CA",
        "client certificate refused: expired",
    ])
    .await;
}

const MTLS_AUTHD: &str =
    "[tls]\ncert = \"authd.crt\"\nkey = \"authd.key\"\nclient_ca = \"ca.crt\"\n\
    [clients.edge]\nmethods = [\"Authenticate\"]\nclusters = [\"default\"]\n\
    [clients.ops]\nmethods = [\"Authenticate\", \"RevokeToken\", \"RevokeUser\"]\nclusters = [\"*\"]\n\
    [clients.probe]\nmethods = [\"ServerReflectionInfo\"]\n[clusters.default]\n";

fn mtls_edge_authd(replicas: &[Replica]) -> String {
    format!(
        "{}\nca = \"ca.crt\"\nclient_cert = \"edge-client.crt\"\nclient_key = \"edge-client.key\"\n",
        endpoints_toml(replicas, "https")
    )
}

async fn grpc_authenticate(
    addr: &str,
    dir: &Path,
    identity: Option<(&Path, &str)>,
) -> Result<authd_proto::v1::AuthenticateResponse, tonic::Status> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(
            std::fs::read(dir.join("ca.crt")).unwrap(),
        ))
        .domain_name("localhost");
    if let Some((d, name)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(d.join(format!("{name}.crt"))).unwrap(),
            std::fs::read(d.join(format!("{name}.key"))).unwrap(),
        ));
    }
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("{e:?}")))?;
    let mut client = authd_proto::v1::authenticator_client::AuthenticatorClient::new(channel);
    client
        .authenticate(authd_proto::v1::AuthenticateRequest {
            token: "not-a-token".into(),
            cluster: "default".into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread")]
async fn authd_accepts_only_its_clients_and_enforces_their_allow_lists() {
    let dir = temp_dir();
    let d = dir.path();
    certs_init_with(
        d,
        &["--client", "ops", "--client", "nobody", "--client", "probe"],
    );
    let alice = tokens(d);
    let replicas = vec![Replica::start(
        d,
        "authd",
        &format!("{MTLS_AUTHD}{SOURCES}"),
    )];
    let edge = start_fleet_edge(d, "edge", "", &mtls_edge_authd(&replicas));
    let admin = edge.ready_field("admin");
    let url = format!("{}/authenticate", edge.ready_field("https"));
    eventually(Duration::from_secs(10), "edge ready over mTLS", || {
        ready(&admin)
    })
    .await;
    assert_authenticated(&https_client(d), &url, &alice).await;

    let addr = &replicas[0].addr;
    let ops = grpc_authenticate(addr, d, Some((d, "client-ops"))).await;
    assert!(ops.is_ok(), "ops may authenticate: {ops:?}");
    let nobody = grpc_authenticate(addr, d, Some((d, "client-nobody")))
        .await
        .unwrap_err();
    assert_eq!(nobody.code(), tonic::Code::PermissionDenied, "{nobody:?}");
    let probe = grpc_authenticate(addr, d, Some((d, "client-probe")))
        .await
        .unwrap_err();
    assert_eq!(probe.code(), tonic::Code::PermissionDenied, "{probe:?}");
    assert!(
        probe.message().contains("may not call Authenticate"),
        "{probe:?}"
    );
    let anonymous = grpc_authenticate(addr, d, None).await;
    assert!(
        anonymous.is_err(),
        "a client without a certificate is refused: {anonymous:?}"
    );
    let other = temp_dir();
    certs_init_with(other.path(), &["--client", "ops"]);
    let foreign = grpc_authenticate(addr, d, Some((other.path(), "client-ops"))).await;
    assert!(
        foreign.is_err(),
        "a certificate from another CA is refused: {foreign:?}"
    );
    assert_ne!(foreign.unwrap_err().code(), tonic::Code::Ok);

    let (_, metrics) = admin_get(&replicas[0].proc().ready_field("admin"), "/metrics").await;
    for client in ["edge", "ops"] {
        assert!(
            metric_sum(
                &metrics,
                "authd_grpc_requests_total",
                &[("client", client), ("method", "Authenticate")]
            ) >= 1.0,
            "authd counts {client}'s calls:\n{metrics}"
        );
    }
    assert_logs(
        replicas[0].proc(),
        &[
            "client=\"edge\"",
            "unknown client \\\"nobody\\\"",
            "client \\\"probe\\\" may not call Authenticate",
            "gRPC client refused at the TLS handshake",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_rotate_under_load_without_a_failed_review() {
    let dir = temp_dir();
    let d = dir.path();
    certs_init_with(d, &[]);
    let alice = tokens(d);
    let mut replicas: Vec<Replica> = (0..2)
        .map(|i| Replica::start(d, &format!("authd{i}"), &format!("{MTLS_AUTHD}{SOURCES}")))
        .collect();
    let edge = start_fleet_edge(d, "edge", "", &mtls_edge_authd(&replicas));
    let admin = edge.ready_field("admin");
    let https = edge.ready_field("https");
    let edge_addr = https.trim_start_matches("https://").to_owned();
    let url = format!("{https}/authenticate");
    eventually(Duration::from_secs(10), "edge ready over mTLS", || {
        ready(&admin)
    })
    .await;
    let ca = d.join("ca.crt");
    let old_edge = served_cert(&edge_addr, &ca, b"h2").await;
    assert_eq!(old_edge, cert_der(&d.join("edge.crt")));

    let load = Load::start(
        https_client(d),
        url,
        alice,
        4,
        50_000,
        Duration::from_secs(60),
    );
    eventually(Duration::from_secs(10), "load running", || async {
        load.ok_so_far() > 50
    })
    .await;

    // New certificates from the same CA, swapped in file by file as a secret update would.
    let fresh = temp_dir();
    let f = fresh.path();
    for n in ["ca.crt", "ca.key"] {
        std::fs::copy(d.join(n), f.join(n)).unwrap();
    }
    certs_init_with(f, &[]);
    for n in [
        "edge.crt",
        "edge.key",
        "authd.crt",
        "authd.key",
        "edge-client.crt",
        "edge-client.key",
    ] {
        replace_file(&f.join(n), d, n);
    }
    let new_edge = cert_der(&d.join("edge.crt"));
    let new_authd = cert_der(&d.join("authd.crt"));
    assert_ne!(old_edge, new_edge);
    eventually(
        Duration::from_secs(10),
        "the edge serves the new certificate",
        || async { served_cert(&edge_addr, &ca, b"h2").await == new_edge },
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "authd serves the new certificate",
        || async { served_cert(&replicas[0].addr, &ca, b"h2").await == new_authd },
    )
    .await;
    let at_rotation = load.ok_so_far();
    eventually(
        Duration::from_secs(10),
        "reviews continue after rotation",
        || async { load.ok_so_far() > at_rotation + 200 },
    )
    .await;
    // The edge's open connections keep the old client certificate; a new connection (to a
    // restarted replica) presents the new one.
    let new_client = sha256_hex_bytes(&cert_der(&d.join("edge-client.crt")));
    replicas[1].proc().signal(libc::SIGTERM);
    let code = replicas[1]
        .proc
        .as_mut()
        .unwrap()
        .wait_exit(Duration::from_secs(25));
    assert_eq!(code, Some(0));
    replicas[1].restart(d);
    let fresh_replica = &replicas[1];
    let expected = format!("client=\"edge\" cert_sha256={new_client}");
    eventually(
        Duration::from_secs(10),
        "the edge connects with its new client certificate",
        || async { fresh_replica.proc().stderr().contains(&expected) },
    )
    .await;
    let result = load.stop().await;
    assert_no_failures(&result, &edge);
    assert!(
        edge.stderr().contains("edge client TLS to authd"),
        "the edge reloads its client certificate"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_client_is_cut_off_by_the_header_timeout() {
    use tokio::io::AsyncReadExt;
    let dir = temp_dir();
    let d = dir.path();
    certs_init_with(d, &[]);
    tokens(d);
    let s = Split::start(d, SOURCES, "header_read_timeout = \"1s\"");
    let addr = s
        .edge
        .ready_field("https")
        .trim_start_matches("https://")
        .to_owned();
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let mut tls = tls_connect(&addr, &d.join("ca.crt"), alpn).await;
        let mut buf = [0u8; 256];
        // Send nothing. The server must close the connection: read ends (EOF, or an error
        // for an unclean close; for h2, the server's preface and GOAWAY come first).
        let closed = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "the edge kept a silent {alpn:?} connection open"
        );
    }
    assert!(s
        .edge
        .stderr()
        .contains("client sent no request within the header read timeout"));
}

#[tokio::test(flavor = "multi_thread")]
async fn over_capacity_reviews_are_answered_at_once_without_retry_after() {
    let dir = temp_dir();
    let d = dir.path();
    certs_init_with(d, &[]);
    let alice = tokens(d);
    let replicas = vec![Replica::start(d, "authd", SOURCES)];
    let edge = start_fleet_edge(
        d,
        "edge",
        "review_timeout = \"4s\"\nmax_in_flight_reviews = 2",
        &format!(
            "{}\nhealth_interval = \"3s\"",
            endpoints_toml(&replicas, "http")
        ),
    );
    let admin = edge.ready_field("admin");
    let url = format!("{}/authenticate", edge.ready_field("https"));
    eventually(Duration::from_secs(10), "edge ready", || ready(&admin)).await;
    let c = https_client(d);
    assert_authenticated(&c, &url, &alice).await;
    // A stopped authd holds the two allowed reviews until their deadline.
    replicas[0].proc().signal(libc::SIGSTOP);
    let held: Vec<_> = (0..2)
        .map(|i| {
            let (c, url, t) = (c.clone(), url.clone(), token(&format!("held{i}")));
            tokio::spawn(async move { review(&c, &url, V1, &t).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let a = review(&c, &url, V1, &alice).await;
    let quick = started.elapsed() < Duration::from_secs(3);
    replicas[0].proc().signal(libc::SIGCONT);
    a.assert_undecided();
    assert!(
        a.body["message"]
            .as_str()
            .unwrap_or("")
            .contains("overloaded"),
        "{a:?}"
    );
    assert!(quick, "the overload answer does not wait for the deadline");
    for h in held {
        // Answered when authd resumed, or past their deadline: never authenticated.
        let a = h.await.unwrap();
        assert!(!a.authenticated(), "{a:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rolling_restart_of_replicas_fails_no_review() {
    let Fleet {
        mut replicas,
        edge,
        admin: _admin,
        url,
        alice,
        dir,
    } = Fleet::start(3, "5s").await;
    let d = dir.path();
    let load = Load::start(
        https_client(d),
        url,
        alice,
        4,
        50_000,
        Duration::from_secs(90),
    );
    // One replica at a time: SIGTERM (drain), wait for its exit, start it again.
    for r in &mut replicas {
        let before = load.ok_so_far();
        r.proc().signal(libc::SIGTERM);
        let code = r.proc.as_mut().unwrap().wait_exit(Duration::from_secs(25));
        assert_eq!(code, Some(0), "{} drains and exits 0", r.name);
        r.restart(d);
        eventually(
            Duration::from_secs(15),
            "the new replica gets traffic",
            || async { r.verdicts().await >= 1.0 && load.ok_so_far() > before + 100 },
        )
        .await;
    }
    let result = load.stop().await;
    assert_no_failures(&result, &edge);
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_found_through_dns_over_mutual_tls() {
    let dir = temp_dir();
    let d = dir.path();
    certs_init_with(d, &[]);
    let alice = tokens(d);
    let replica = Replica::start(d, "authd", &format!("{MTLS_AUTHD}{SOURCES}"));
    let port = replica.addr.rsplit_once(':').unwrap().1;
    // "localhost" resolves to the replica's address; its certificate names localhost.
    let edge = start_fleet_edge(
        d,
        "edge",
        "",
        &format!(
            "dns = \"localhost:{port}\"\ndns_refresh = \"1s\"\nca = \"ca.crt\"\n\
             client_cert = \"edge-client.crt\"\nclient_key = \"edge-client.key\"\n"
        ),
    );
    let admin = edge.ready_field("admin");
    let url = format!("{}/authenticate", edge.ready_field("https"));
    eventually(Duration::from_secs(10), "edge ready through DNS", || {
        ready(&admin)
    })
    .await;
    assert_authenticated(&https_client(d), &url, &alice).await;
    assert!(edge.stderr().contains("authd addresses resolved"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_keep_alive_connection_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = temp_dir();
    let d = dir.path();
    certs_init_with(d, &[]);
    let alice = tokens(d);
    let s = Split::start(d, SOURCES, "idle_timeout = \"1s\"");
    let addr = s
        .edge
        .ready_field("https")
        .trim_start_matches("https://")
        .to_owned();
    let mut tls = tls_connect(&addr, &d.join("ca.crt"), b"http/1.1").await;
    let body = review_body(V1, &alice, &[]);
    let request = format!(
        "POST /authenticate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = tls.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Keep-alive, then silence: the server closes the connection.
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the edge kept an idle keep-alive connection open"
    );
    assert!(
        s.edge.stderr().contains("connection idle"),
        "the edge logs why it closed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_shared_client_ca_the_certificate_name_binds_the_cluster() {
    let dir = temp_dir();
    let d = dir.path();
    certs_init_with(d, &[]);
    let alice = tokens(d);
    // Both clusters trust the deployment CA; the CN "kube-apiserver:NAME" still binds.
    let s = Split::start(
        d,
        &format!("{SOURCES}{DEV_PROD}"),
        "[clusters.dev]\nclient_ca = \"ca.crt\"\n[clusters.prod]\nclient_ca = \"ca.crt\"\n",
    );
    issue_client_cert(d, "ca", "kube-apiserver:dev", "shared-dev", false);
    let base = s.edge.ready_field("https");
    let ca = std::fs::read(d.join("ca.crt")).unwrap();
    let dev_client = client(&ca, Proto::H2, Some(identity(d, "shared-dev")));
    assert_authenticated(
        &dev_client,
        &format!("{base}/clusters/dev/authenticate"),
        &alice,
    )
    .await;
    let a = review(
        &dev_client,
        &format!("{base}/clusters/prod/authenticate"),
        V1,
        &alice,
    )
    .await;
    assert_eq!(a.status, 403, "{a:?}");
    assert_logs(
        &s.edge,
        &["client certificate \"kube-apiserver:dev\" is bound to cluster \"dev\", not \"prod\""],
    )
    .await;
}

/// authd's own call limit: over `max_concurrent_calls` a call is refused at once with
/// RESOURCE_EXHAUSTED (not queued), and the edge turns that into its immediate "overloaded"
/// 500 without Retry-After and without retrying it elsewhere. Calls are held open by a slow
/// Basic-auth service.
#[tokio::test(flavor = "multi_thread")]
async fn authd_refuses_calls_over_its_limit_at_once() {
    use authd_proto::v1::authenticator_client::AuthenticatorClient;
    use authd_proto::v1::AuthenticateRequest;
    use common::basic_auth::{BasicAuthServer, Mode};
    let dir = temp_dir();
    let d = dir.path();
    certs_init(d, &[]);
    let idp = BasicAuthServer::start(&[("dave", "dave-pw")]);
    let authd = start_authd(
        d,
        "authd",
        "127.0.0.1:0",
        &format!(
            "max_concurrent_calls = 2\n\
             [[sources]]\nname = \"idp\"\ntype = \"basic_auth\"\nurl = \"{}\"\ntimeout = \"8s\"\n",
            idp.template()
        ),
    );
    let grpc = authd.ready_field("grpc");
    let edge = start_edge(d, "edge", &grpc, "review_timeout = \"9s\"\n");
    let url = format!("{}/authenticate", edge.ready_field("https"));
    let ca = std::fs::read(d.join("ca.crt")).unwrap();
    let c = client(&ca, Proto::H2, None);
    assert!(review(&c, &url, V1, "dave:dave-pw").await.authenticated());

    idp.http.set_mode(Mode::Slow(Duration::from_secs(4)));
    let held: Vec<_> = (0..2)
        .map(|i| {
            let grpc = grpc.clone();
            tokio::spawn(async move {
                let mut a = AuthenticatorClient::connect(format!("http://{grpc}"))
                    .await
                    .unwrap();
                a.authenticate(AuthenticateRequest {
                    token: format!("dave:held-{i}"),
                    cluster: "default".into(),
                    ..Default::default()
                })
                .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut direct = AuthenticatorClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let refused = direct
        .authenticate(AuthenticateRequest {
            token: "dave:third".into(),
            cluster: "default".into(),
            ..Default::default()
        })
        .await
        .expect_err("a third concurrent call is over the limit");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "refused at once, not queued"
    );
    let a = review(&c, &url, V1, "dave:via-edge").await;
    a.assert_undecided();
    let msg = a.body["message"].as_str().unwrap_or("");
    assert!(msg.contains("overloaded"), "{a:?}");
    for h in held {
        // Answered (a wrong password) once the slow service replies: never a yes.
        let r = h.await.unwrap().expect("held calls complete");
        assert!(!r.into_inner().authenticated);
    }
}

/// `tls.client_ca` puts `POST /authenticate` (the default cluster) behind mutual TLS too:
/// its own kube-apiserver certificate is accepted, another cluster's is refused (403), and
/// with every route requiring a certificate, a client without one fails the handshake.
#[tokio::test(flavor = "multi_thread")]
async fn the_default_endpoint_can_require_a_client_certificate() {
    let dir = temp_dir();
    let d = dir.path();
    certs_init_with(d, &["--cluster", "default", "--cluster", "dev"]);
    let alice = tokens(d);
    let authd = start_authd(d, "authd", "127.0.0.1:0", &format!("{SOURCES}{DEV_PROD}"));
    let cfg = write(
        d,
        "edge-default-mtls.toml",
        &format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             [tls]\ncert = \"edge.crt\"\nkey = \"edge.key\"\nclient_ca = \"cluster-default-ca.crt\"\n\
             [authd]\nendpoint = \"http://{}\"\n\
             [clusters.dev]\nclient_ca = \"cluster-dev-ca.crt\"\n",
            authd.ready_field("grpc")
        ),
    );
    let edge = Proc::start_named(
        "edge",
        "authd-edge",
        &["serve", "--config", cfg.to_str().unwrap()],
        d,
        "authd-edge ready",
    );
    let base = edge.ready_field("https");
    let url = format!("{base}/authenticate");
    let ca = std::fs::read(d.join("ca.crt")).unwrap();
    let default_client = client(&ca, Proto::H2, Some(identity(d, "apiserver-default")));
    assert_authenticated(&default_client, &url, &alice).await;
    let dev_client = client(&ca, Proto::H1, Some(identity(d, "apiserver-dev")));
    assert_authenticated(
        &dev_client,
        &format!("{base}/clusters/dev/authenticate"),
        &alice,
    )
    .await;
    let a = review(&dev_client, &url, V1, &alice).await;
    assert_eq!(
        a.status, 403,
        "dev's certificate on the default endpoint: {a:?}"
    );
    let anonymous = anonymous_client(&ca, Proto::H2);
    let r = anonymous
        .post(format!("{url}?timeout=30s"))
        .body(review_body(V1, &alice, &[]))
        .send()
        .await;
    assert!(
        r.is_err(),
        "no certificate: refused at the handshake: {r:?}"
    );
}
