//! Issue 3 end to end: authd replicas (separate processes) sharing verdicts through a
//! private redis-server or a three-master Redis Cluster started here; revocation on every
//! replica; TTLs; Redis killed under load; nothing secret in Redis.
//!
//! Identity-source lookups are counted by authd's own `authd_source_calls_total`, scraped
//! from each replica's admin listener.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use authd_proto::v1::admin_client::AdminClient;
use authd_proto::v1::authenticator_client::AuthenticatorClient;
use authd_proto::v1::{AuthenticateRequest, AuthenticateResponse, RevokeUserRequest};
use common::procs::kube_authd_revoke;
use common::redis::{assert_no_secrets, Acl, RedisCluster, RedisServer};
use common::*;

const ADMIN_SECRET: &str = "test-admin-secret-0123456789";

struct Tokens {
    alice: String,
    alice2: String,
    bob: String,
    nobody: String,
    /// Load-test users u0..u19.
    users: Vec<String>,
}

impl Tokens {
    fn all(&self) -> Vec<&str> {
        let mut v = vec![
            self.alice.as_str(),
            self.alice2.as_str(),
            self.bob.as_str(),
            self.nobody.as_str(),
        ];
        v.extend(self.users.iter().map(String::as_str));
        v
    }
}

/// Token file, HMAC key and admin secret shared by every replica in `dir`.
fn setup(dir: &Path) -> Tokens {
    let t = Tokens {
        alice: token("alice"),
        alice2: token("alicetwo"),
        bob: token("bob"),
        nobody: token("nobody"),
        users: (0..20).map(|i| token(&format!("u{i}"))).collect(),
    };
    let mut csv = format!(
        "{},alice,uid-alice,\"dev\"\n{},alice,uid-alice\n{},bob,uid-bob\n",
        t.alice, t.alice2, t.bob
    );
    for (i, u) in t.users.iter().enumerate() {
        csv.push_str(&format!("{u},user{i},uid-{i}\n"));
    }
    write(dir, "tokens.csv", &csv);
    write(
        dir,
        "hmac.key",
        "replicas-share-this-key-0123456789abcdef\n",
    );
    write(dir, "admin.token", &format!("{ADMIN_SECRET}\n"));
    t
}

/// authd TOML after `listen`/`admin_listen`: cache with `redis_toml`, admin secret, source.
fn authd_toml(cache_toml: &str, redis_toml: &str) -> String {
    format!(
        "[cache]\nhmac_key_file = \"hmac.key\"\n{cache_toml}\n\
         [cache.redis]\n{redis_toml}\n\
         [admin]\ntoken_file = \"admin.token\"\n\
         [[sources]]\nname = \"static\"\ntype = \"token_file\"\npath = \"tokens.csv\"\n"
    )
}

/// The `[cache.redis]` body for `server`. Tests that assert where a verdict came from use a
/// generous timeout, so a busy test machine does not turn a slow Redis answer into a miss;
/// the load test keeps the default (100 ms).
fn redis_toml(server: &RedisServer) -> String {
    format!("{}timeout = \"2s\"\n", redis_toml_default_timeout(server))
}

fn redis_toml_default_timeout(server: &RedisServer) -> String {
    let mut s = format!("url = \"{}\"\n", server.url());
    if let Some(acl) = &server.acl {
        s.push_str(&format!(
            "username = \"{}\"\npassword_file = \"redis.password\"\n",
            acl.user
        ));
    }
    s
}

async fn metric(p: &Proc, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (status, text) = admin_get(&p.ready_field("admin"), "/metrics").await;
    assert_eq!(status, 200);
    metric_sum(&text, name, labels)
}

async fn source_calls(p: &Proc) -> f64 {
    metric(p, "authd_source_calls_total", &[]).await
}

async fn hits(p: &Proc, level: &str) -> f64 {
    metric(p, "authd_cache_hits_total", &[("level", level)]).await
}

async fn grpc_review(p: &Proc, token: &str) -> AuthenticateResponse {
    let mut c = AuthenticatorClient::connect(format!("http://{}", p.ready_field("grpc")))
        .await
        .expect("connect to authd");
    c.authenticate(AuthenticateRequest {
        token: token.to_owned(),
        request_id: "redis-test".into(),
        cluster: "default".into(),
        ..Default::default()
    })
    .await
    .expect("Authenticate")
    .into_inner()
}

/// `p` counted Redis errors during an outage and logged it rate-limited: fewer lines than
/// errors, and under 20. Returns (lines, errors).
async fn outage_logged_rate_limited(p: &Proc) -> (usize, f64) {
    let errors = metric(p, "authd_redis_errors_total", &[]).await;
    assert!(errors > 0.0, "errors counted while Redis was down");
    let log = p.stderr();
    assert!(log.contains("shared cache (Redis) unavailable; answering from the identity sources"));
    let lines = log
        .lines()
        .filter(|l| l.contains("shared cache (Redis)"))
        .count();
    assert!(
        lines < 20 && (lines as f64) < errors,
        "Redis errors are logged rate-limited, not once per review: {lines} lines, {errors} errors"
    );
    (lines, errors)
}

/// `p` logs within 5 s that Redis is reachable again.
async fn logs_redis_back(p: &Proc) {
    eventually(
        Duration::from_secs(5),
        "authd logs that Redis is back",
        || async { p.stderr().contains("shared cache (Redis) reachable again") },
    )
    .await;
}

/// Runs `kube-authd revoke` against replica `p`; `stdin` is the token for --token-stdin.
fn revoke_cli(dir: &Path, p: &Proc, args: &[&str], stdin: Option<&str>) -> String {
    kube_authd_revoke(dir, p.ready_field("grpc"), args, stdin)
}

fn removed(cli_output: &str) -> u64 {
    cli_output
        .trim()
        .strip_prefix("revoked: ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected revoke output: {cli_output}"))
}

/// Whether a review of `token` on `p` is still answered from `p`'s in-process cache.
async fn local_hit(p: &Proc, token: &str) -> bool {
    let before = hits(p, "local").await;
    let r = grpc_review(p, token).await;
    assert!(r.error.is_empty(), "{r:?}");
    hits(p, "local").await > before
}

/// Polls for at most one second until every replica refuses `token` (the token file still
/// accepts it: a revocation holds, it is not only a purge of cached verdicts).
async fn gone_everywhere_within_1s(replicas: &[&Proc], token: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(1);
    for p in replicas {
        loop {
            let r = grpc_review(p, token).await;
            assert!(r.error.is_empty(), "{r:?}");
            if !r.authenticated {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {} still authenticated it 1 s after revocation",
                p.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The shared scenario: B answers what A verified with zero source calls; revoking a
/// token and a user reaches both replicas within a second; only admins may revoke.
async fn share_and_revoke(
    dir: &Path,
    t: &Tokens,
    a: &Proc,
    b: &Proc,
    edge: Option<(&reqwest::Client, &str)>,
) {
    // Through A (over HTTPS via the edge when there is one).
    match edge {
        Some((client, url)) => {
            let r = review(client, url, V1, &t.alice).await;
            assert!(r.authenticated(), "{r:?}");
            assert_eq!(r.username(), "alice");
            review(client, url, V1, &t.nobody).await.assert_denied();
        }
        None => {
            assert!(grpc_review(a, &t.alice).await.authenticated);
            assert!(!grpc_review(a, &t.nobody).await.authenticated);
        }
    }
    for tok in [&t.alice2, &t.bob] {
        assert!(grpc_review(a, tok).await.authenticated);
    }
    assert_eq!(
        source_calls(a).await,
        4.0,
        "A asked its source once per token"
    );

    // B: everything from the shared level, nothing from the source.
    let r = grpc_review(b, &t.alice).await;
    assert!(r.authenticated && r.cached, "{r:?}");
    let user = r.user.unwrap();
    assert_eq!(
        (user.username.as_str(), user.uid.as_str(), user.groups),
        ("alice", "uid-alice", vec!["dev".to_string()])
    );
    assert_eq!(r.source, "static");
    let n = grpc_review(b, &t.nobody).await;
    assert!(!n.authenticated && n.cached && n.error.is_empty(), "{n:?}");
    for tok in [&t.alice2, &t.bob] {
        assert!(grpc_review(b, tok).await.cached);
    }
    assert_eq!(
        source_calls(b).await,
        0.0,
        "B answered with zero source calls"
    );
    assert_eq!(hits(b, "shared").await, 4.0);
    assert!(local_hit(b, &t.alice).await, "B now holds it locally");

    // Revoke one token through A; both replicas drop it, other tokens stay.
    let out = revoke_cli(dir, a, &["--token-stdin"], Some(&format!("{}\n", t.alice)));
    assert!(removed(&out) >= 1, "{out}");
    gone_everywhere_within_1s(&[b, a], &t.alice, "RevokeToken").await;
    assert!(local_hit(b, &t.alice2).await, "token revocation is precise");

    // Revoke the user through B: both of alice's tokens leave both replicas; bob stays.
    for p in [a, b] {
        for tok in [&t.alice, &t.alice2] {
            grpc_review(p, tok).await;
        }
    }
    let out = revoke_cli(dir, b, &["--user", "alice"], None);
    assert!(removed(&out) >= 2, "{out}");
    for tok in [&t.alice, &t.alice2] {
        gone_everywhere_within_1s(&[a, b], tok, "RevokeUser").await;
    }
    assert!(local_hit(a, &t.bob).await && local_hit(b, &t.bob).await);

    // Only admins: no credentials, or a wrong secret, is PERMISSION_DENIED.
    let mut admin = AdminClient::connect(format!("http://{}", a.ready_field("grpc")))
        .await
        .unwrap();
    for auth in [None, Some("Bearer wrong-secret-0123456789")] {
        let mut req = tonic::Request::new(RevokeUserRequest {
            username: "bob".into(),
            until_unix_ms: 0,
        });
        if let Some(v) = auth {
            req.metadata_mut()
                .insert("authorization", v.parse().unwrap());
        }
        let e = admin.revoke_user(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    }
    assert!(local_hit(a, &t.bob).await, "refused calls revoke nothing");
}

fn secrets<'a>(t: &'a Tokens, extra: &[&'a str]) -> Vec<&'a str> {
    let mut s = t.all();
    s.extend_from_slice(extra);
    s.push(ADMIN_SECRET);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_verdicts_and_revocations_through_one_redis_with_acl() {
    let dir = temp_dir();
    let d = dir.path();
    let t = setup(d);
    let acl = Acl {
        user: "authd".into(),
        password: "redis-acl-password-for-authd".into(),
    };
    write(d, "redis.password", &format!("{}\n", acl.password));
    let redis = RedisServer::start(d, Some(acl.clone()), &[]);
    let toml = authd_toml("", &redis_toml(&redis));
    certs_init(d, &[]);
    let a = start_authd(d, "authd-a", "127.0.0.1:0", &toml);
    let b = start_authd(d, "authd-b", "127.0.0.1:0", &toml);
    let edge = start_edge(d, "edge-a", &a.ready_field("grpc"), "");
    let url = format!("{}/authenticate", edge.ready_field("https"));
    let client = client(&std::fs::read(d.join("ca.crt")).unwrap(), Proto::H2, None);

    share_and_revoke(d, &t, &a, &b, Some((&client, &url))).await;

    let dump = redis.dump();
    assert!(
        dump.iter().all(|(k, _)| k.starts_with("kube-authd:")),
        "{dump:?}"
    );
    assert!(dump.iter().any(|(k, _)| k.starts_with("kube-authd:v:")));
    assert_no_secrets(&dump, &secrets(&t, &[&acl.password]));
    for p in [&a, &b, &edge] {
        let log = p.stderr();
        for s in secrets(&t, &[&acl.password]) {
            assert!(!log.contains(s), "{} logged a secret", p.name);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rediss_with_a_ca_file_and_acl_works_the_same() {
    let dir = temp_dir();
    let d = dir.path();
    let t = setup(d);
    certs_init(d, &[]);
    let acl = Acl {
        user: "authd".into(),
        password: "tls-redis-acl-password".into(),
    };
    write(d, "redis.password", &acl.password);
    let redis = RedisServer::start_tls(d, Some(acl.clone()), d);
    assert!(redis.url().starts_with("rediss://"));
    let toml = authd_toml("", &format!("{}ca_file = \"ca.crt\"\n", redis_toml(&redis)));
    let a = start_authd(d, "authd-a", "127.0.0.1:0", &toml);
    let b = start_authd(d, "authd-b", "127.0.0.1:0", &toml);

    share_and_revoke(d, &t, &a, &b, None).await;

    assert_no_secrets(&redis.dump(), &secrets(&t, &[&acl.password]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_three_master_redis_cluster_behaves_like_one_redis() {
    let dir = temp_dir();
    let d = dir.path();
    let t = setup(d);
    let cluster = RedisCluster::start(d);
    let toml = authd_toml(
        "",
        &format!("cluster_urls = {}\ntimeout = \"2s\"\n", cluster.urls_toml()),
    );
    let a = start_authd(d, "authd-a", "127.0.0.1:0", &toml);
    let b = start_authd(d, "authd-b", "127.0.0.1:0", &toml);

    share_and_revoke(d, &t, &a, &b, None).await;

    let dump = cluster.dump();
    let masters_with_verdicts = cluster
        .nodes
        .iter()
        .filter(|n| n.dump().iter().any(|(k, _)| k.contains(":v:")))
        .count();
    assert!(masters_with_verdicts >= 1, "{dump:?}");
    assert_no_secrets(&dump, &secrets(&t, &[]));
}

/// Every node of a Redis Cluster killed: no review fails (the sources answer; errors are
/// counted and logged rate-limited). The nodes restarted on their ports with their cluster
/// configuration: both replicas use the cluster again without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_whole_redis_cluster_down_fails_no_review_and_hits_resume_after_restart() {
    let dir = temp_dir();
    let d = dir.path();
    let t = setup(d);
    let mut cluster = RedisCluster::start(d);
    // A short local window so the cluster is on the path of most reviews.
    let toml = authd_toml(
        "local_ttl = \"200ms\"\n",
        &format!("cluster_urls = {}\n", cluster.urls_toml()),
    );
    let a = start_authd(d, "authd-a", "127.0.0.1:0", &toml);
    let b = start_authd(d, "authd-b", "127.0.0.1:0", &toml);
    let shares = |tok: String| {
        let (a, b) = (&a, &b);
        async move {
            let before = hits(b, "shared").await;
            grpc_review(a, &tok).await;
            grpc_review(b, &tok).await;
            hits(b, "shared").await > before
        }
    };
    let mut i = 0;
    eventually(Duration::from_secs(10), "B finds what A stored", || {
        i += 1;
        shares(t.users[i % 20].clone())
    })
    .await;

    for node in &mut cluster.nodes {
        node.kill();
    }
    for i in 0..100 {
        let replica = if i % 2 == 0 { &a } else { &b };
        let r = grpc_review(
            replica,
            if i % 5 == 0 {
                &t.nobody
            } else {
                &t.users[i % 20]
            },
        )
        .await;
        assert!(r.error.is_empty(), "review {i} undecided: {r:?}");
        if i % 5 == 0 {
            assert!(!r.authenticated, "review {i}: {r:?}");
        } else {
            assert!(r.authenticated, "review {i}: {r:?}");
            assert_eq!(r.user.unwrap().username, format!("user{}", i % 20));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    outage_logged_rate_limited(&a).await;

    // Same ports, same cluster configuration files, no data.
    for node in &mut cluster.nodes {
        node.restart();
    }
    cluster.wait_ok();
    let mut i = 0;
    eventually(
        Duration::from_secs(20),
        "B finds what A stored again",
        || {
            i += 1;
            shares(t.users[i % 20].clone())
        },
    )
    .await;
    logs_redis_back(&a).await;
    assert_no_secrets(&cluster.dump(), &secrets(&t, &[]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn positive_and_negative_ttls_expire_on_time_at_both_levels() {
    let dir = temp_dir();
    let d = dir.path();
    let t = setup(d);
    let redis = RedisServer::start(d, None, &[]);
    let toml = authd_toml(
        "positive_ttl = \"3s\"\nnegative_ttl = \"2s\"\nlocal_ttl = \"1s\"\n",
        &redis_toml(&redis),
    );
    let a = start_authd(d, "authd-a", "127.0.0.1:0", &toml);

    let first = Instant::now();
    assert!(grpc_review(&a, &t.alice).await.authenticated);
    assert!(!grpc_review(&a, &t.nobody).await.authenticated);
    assert_eq!(source_calls(&a).await, 2.0);
    // Redis holds them no longer than their TTLs.
    let ttls: Vec<i64> = redis
        .dump()
        .iter()
        .filter(|(k, _)| k.contains(":v:"))
        .map(|(k, _)| redis.pttl(k))
        .collect();
    assert_eq!(ttls.len(), 2, "two verdicts in Redis");
    assert!(
        ttls.iter().all(|ms| *ms > 0 && *ms <= 3000),
        "PX at most the positive TTL: {ttls:?}"
    );
    assert!(ttls.iter().any(|ms| *ms <= 2000), "negative TTL: {ttls:?}");

    // Before any TTL: no new source call.
    assert!(grpc_review(&a, &t.alice).await.cached);
    assert!(grpc_review(&a, &t.nobody).await.cached);
    assert_eq!(source_calls(&a).await, 2.0);

    // Past local_ttl (1 s), before the TTLs: from Redis, still no source call.
    tokio::time::sleep_until((first + Duration::from_millis(1300)).into()).await;
    let shared_before = hits(&a, "shared").await;
    assert!(grpc_review(&a, &t.alice).await.cached);
    assert_eq!(hits(&a, "shared").await, shared_before + 1.0);
    assert_eq!(source_calls(&a).await, 2.0);

    // Past the negative TTL (2 s): the denial is asked again, the positive is not.
    tokio::time::sleep_until((first + Duration::from_millis(2300)).into()).await;
    assert!(!grpc_review(&a, &t.nobody).await.cached);
    assert_eq!(
        metric(&a, "authd_source_calls_total", &[("outcome", "not_mine")]).await,
        2.0
    );
    assert_eq!(
        metric(
            &a,
            "authd_source_calls_total",
            &[("outcome", "authenticated")]
        )
        .await,
        1.0
    );

    // Past the positive TTL (3 s): asked again.
    tokio::time::sleep_until((first + Duration::from_millis(3300)).into()).await;
    let r = grpc_review(&a, &t.alice).await;
    assert!(r.authenticated && !r.cached, "{r:?}");
    assert_eq!(
        metric(
            &a,
            "authd_source_calls_total",
            &[("outcome", "authenticated")]
        )
        .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_under_load_fails_no_review_and_hits_resume_after_restart() {
    let dir = temp_dir();
    let d = dir.path();
    let t = Arc::new(setup(d));
    let mut redis = RedisServer::start(d, None, &[]);
    // A short local window so Redis is on the path of most reviews.
    let toml = authd_toml(
        "local_ttl = \"200ms\"\n",
        &redis_toml_default_timeout(&redis),
    );
    certs_init(d, &[]);
    let a = start_authd(d, "authd-a", "127.0.0.1:0", &toml);
    let b = start_authd(d, "authd-b", "127.0.0.1:0", &toml);
    let edge = start_edge(d, "edge-a", &a.ready_field("grpc"), "");
    let url = Arc::new(format!("{}/authenticate", edge.ready_field("https")));
    let client = client(&std::fs::read(d.join("ca.crt")).unwrap(), Proto::H2, None);

    // At least TOTAL reviews, and the outage lasts at least OUTAGE of the run, so it spans
    // several of authd's 250 ms probes however fast this machine answers; never more than
    // MAX reviews or 30 s.
    const TOTAL: usize = 2000;
    const OUTAGE: Duration = Duration::from_millis(1500);
    const MAX: usize = 100_000;
    let load_started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(std::sync::OnceLock::<Instant>::new());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (t, next, client, url) = (t.clone(), next.clone(), client.clone(), url.clone());
        let killed = killed.clone();
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let outage_long_enough = killed.get().is_some_and(|k| k.elapsed() >= OUTAGE);
                if (i >= TOTAL && outage_long_enough) || i >= MAX || Instant::now() > deadline {
                    return failures;
                }
                // Every fifth review is an unknown token, the rest spread over 20 users.
                let (tok, expect) = if i % 5 == 0 {
                    (t.nobody.clone(), None)
                } else {
                    (t.users[i % 20].clone(), Some(format!("user{}", i % 20)))
                };
                let r = review(&client, &url, V1, &tok).await;
                let ok = r.status == 200
                    && match &expect {
                        Some(user) => r.authenticated() && r.username() == user,
                        None => r.body["status"] == serde_json::json!({"authenticated": false}),
                    };
                if !ok {
                    failures.push(format!("review {i}: {r:?}"));
                }
            }
        }));
    }
    // Kill Redis once a quarter of the run is done.
    while next.load(Ordering::SeqCst) < TOTAL / 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    redis.kill();
    killed.set(Instant::now()).unwrap();
    let killed_at = next.load(Ordering::SeqCst);
    let mut failures = Vec::new();
    for task in tasks {
        failures.extend(task.await.unwrap());
    }
    // Each worker took one number past the last review it sent.
    let done = next.load(Ordering::SeqCst) - 8;
    let load_took = load_started.elapsed();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        (TOTAL..MAX).contains(&done) && Instant::now() < deadline,
        "the run ended with its outage, not at a bound ({done} reviews in {load_took:?})"
    );
    assert!(
        killed_at < TOTAL,
        "Redis was killed mid-run (at {killed_at})"
    );
    let (outage_lines, errors) = outage_logged_rate_limited(&a).await;
    eprintln!(
        "load: {done} reviews in {load_took:?}, 0 failed; Redis killed after {killed_at}; replica A: {errors} \
         Redis errors, {outage_lines} log lines about it, {} source calls",
        source_calls(&a).await,
    );

    // Same port, empty: both replicas use it again without a restart.
    redis.restart();
    let shared_before = hits(&b, "shared").await;
    let mut i = 0;
    eventually(Duration::from_secs(15), "shared hits resume on B", || {
        i += 1;
        let tok = t.users[i % 20].clone();
        let (a, b) = (&a, &b);
        async move {
            tokio::time::sleep(Duration::from_millis(250)).await;
            grpc_review(a, &tok).await;
            tokio::time::sleep(Duration::from_millis(250)).await;
            grpc_review(b, &tok).await;
            hits(b, "shared").await > shared_before
        }
    })
    .await;
    logs_redis_back(&a).await;
    assert_no_secrets(&redis.dump(), &secrets(&t, &[]));
}

#[test]
fn redis_without_a_shared_hmac_key_stops_start_up_naming_the_field() {
    let dir = temp_dir();
    let d = dir.path();
    setup(d);
    let cfg = write(
        d,
        "authd.toml",
        "listen = \"127.0.0.1:0\"\n[cache.redis]\nurl = \"redis://127.0.0.1:1\"\n\
         [[sources]]\nname = \"static\"\ntype = \"token_file\"\npath = \"tokens.csv\"\n",
    );
    let mut p = Proc::spawn(
        "authd",
        "authd",
        &["serve", "--config", cfg.to_str().unwrap()],
        d,
        &[],
    );
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(1));
    assert!(p.stderr().contains("cache.hmac_key_file"), "{}", p.stderr());
}

/// Polls for at most one second until `p` refuses `token` (a definitive no).
async fn refused_within_1s(p: &Proc, token: &str) {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let r = grpc_review(p, token).await;
        assert!(r.error.is_empty(), "{}: {r:?}", p.name);
        if !r.authenticated {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} still authenticated the user 1 s after revocation",
            p.name
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The verdict keys (`v:`) Redis holds.
fn verdict_keys(redis: &RedisServer) -> Vec<String> {
    redis
        .dump()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.contains("v:"))
        .collect()
}

/// A token removed from the token file is refused by every replica within one poll plus a
/// second, although Redis still holds the verdict the old file gave: shared entries live in
/// the namespace of the sources' content, so a replica with the new file never reads them.
/// `kube-authd revoke --user` refuses a user the file still accepts, on every replica
/// within a second, while other users are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_removed_from_the_file_is_refused_everywhere_though_redis_holds_its_verdict() {
    let dir = temp_dir();
    let d = dir.path();
    let t = setup(d);
    let redis = RedisServer::start(d, None, &[]);
    let toml = authd_toml(
        "positive_ttl = \"10m\"\nlocal_ttl = \"10m\"\n",
        &redis_toml(&redis),
    );
    let a = start_authd(d, "authd-a", "127.0.0.1:0", &toml);
    let b = start_authd(d, "authd-b", "127.0.0.1:0", &toml);
    assert!(grpc_review(&a, &t.bob).await.authenticated);
    assert!(grpc_review(&b, &t.bob).await.cached, "B answers from Redis");
    assert!(grpc_review(&b, &t.alice).await.authenticated);
    let old_entries = verdict_keys(&redis);

    // Take bob out of the token file: both replicas refuse him within one poll (1 s) plus
    // a second.
    let csv = std::fs::read_to_string(d.join("tokens.csv")).unwrap();
    let without_bob: String = csv
        .lines()
        .filter(|l| !l.contains(",bob,"))
        .map(|l| format!("{l}\n"))
        .collect();
    write(d, "tokens.csv", &without_bob);
    let edited = Instant::now();
    for p in [&a, &b] {
        while grpc_review(p, &t.bob).await.authenticated {
            assert!(
                edited.elapsed() < authd::reload::POLL_INTERVAL + Duration::from_secs(1),
                "{} still authenticates a token removed from the file",
                p.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Redis still holds every verdict the old file gave, bob's included.
    let now_entries = verdict_keys(&redis);
    for k in &old_entries {
        assert!(
            now_entries.contains(k),
            "{k} was purged: this test needs it in Redis"
        );
    }
    assert!(grpc_review(&a, &t.alice).await.authenticated);

    let out = revoke_cli(d, &a, &["--user", "alice"], None);
    assert!(out.starts_with("revoked: "), "{out}");
    refused_within_1s(&a, &t.alice).await;
    refused_within_1s(&b, &t.alice).await;
    assert!(grpc_review(&a, &t.users[0]).await.authenticated);
    assert!(grpc_review(&b, &t.users[0]).await.authenticated);
}

/// Stale-if-error through the real binaries, with the Basic-auth source: while the service
/// is down a replica with a grace serves a known user's expired positive verdict, only
/// within the grace; negative verdicts are never served stale; a replica without the
/// option answers "could not decide".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_if_error_serves_only_positive_verdicts_within_the_grace_when_enabled() {
    use common::basic_auth::{BasicAuthServer, Mode};
    let dir = temp_dir();
    let d = dir.path();
    setup(d);
    let idp = BasicAuthServer::start(&[("carol", "carol-pw")]);
    let redis = RedisServer::start(d, None, &[]);
    let config = |stale: &str| {
        format!(
            "[cache]\nhmac_key_file = \"hmac.key\"\npositive_ttl = \"1s\"\nnegative_ttl = \"1s\"\n\
             stale_if_error = \"{stale}\"\n[cache.redis]\n{}\n\
             [[sources]]\nname = \"idp\"\ntype = \"basic_auth\"\nurl = \"{}\"\ntimeout = \"1s\"\n",
            redis_toml(&redis),
            idp.template()
        )
    };
    let a = start_authd(d, "authd-stale", "127.0.0.1:0", &config("4s"));
    let b = start_authd(d, "authd-strict", "127.0.0.1:0", &config("0s"));
    let started = Instant::now();
    assert!(grpc_review(&a, "carol:carol-pw").await.authenticated);
    let no = grpc_review(&a, "carol:wrong").await;
    assert!(!no.authenticated && no.error.is_empty(), "{no:?}");

    idp.http.set_mode(Mode::Down);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stale = grpc_review(&a, "carol:carol-pw").await;
    assert!(
        stale.authenticated && stale.error.is_empty(),
        "within the grace: {stale:?}"
    );
    assert!(metric(&a, "authd_stale_serves_total", &[]).await >= 1.0);
    assert!(a.stderr().contains("stale-if-error"));
    let neg = grpc_review(&a, "carol:wrong").await;
    assert!(
        !neg.authenticated && !neg.error.is_empty(),
        "negative verdicts are never served stale: {neg:?}"
    );
    let strict = grpc_review(&b, "carol:carol-pw").await;
    assert!(
        !strict.authenticated && !strict.error.is_empty(),
        "stale-if-error is off on this replica: {strict:?}"
    );

    // TTL (1 s) + grace (4 s) after the verdict was made, plus margin: no longer served.
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(started.elapsed())).await;
    let late = grpc_review(&a, "carol:carol-pw").await;
    assert!(
        !late.authenticated && !late.error.is_empty(),
        "past the grace: {late:?}"
    );
}

/// The `v:` keys in Redis now.
fn value_keys(redis: &RedisServer) -> Vec<String> {
    redis
        .dump()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("kube-authd:v:"))
        .collect()
}

/// The `v:` key a review of `token` through `p` adds to Redis (it must be new).
async fn key_of(p: &Proc, redis: &RedisServer, token: &str) -> String {
    let before = value_keys(redis);
    grpc_review(p, token).await;
    let mut added: Vec<String> = value_keys(redis)
        .into_iter()
        .filter(|k| !before.contains(k))
        .collect();
    assert_eq!(added.len(), 1, "one new value for the review: {added:?}");
    added.remove(0)
}

fn get_raw(redis: &RedisServer, key: &str) -> Vec<u8> {
    ::redis::cmd("GET")
        .arg(key)
        .query(&mut redis.connection())
        .unwrap()
}

fn set_raw(redis: &RedisServer, key: &str, value: &[u8]) {
    ::redis::cmd("SET")
        .arg(key)
        .arg(value)
        .arg("PX")
        .arg(600_000)
        .query::<()>(&mut redis.connection())
        .unwrap();
}

/// A verdict as someone with write access to Redis would forge it: the plaintext form
/// authd used to store, naming a powerful user and fresh for an hour.
fn forged_admin(username: &str) -> Vec<u8> {
    let until = (std::time::SystemTime::now() + Duration::from_secs(3600))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    serde_json::json!({"s": "static", "e": until, "t": until,
        "i": {"u": username, "d": "0", "g": ["system:masters", "kube-admins"]}})
    .to_string()
    .into_bytes()
}

/// With write access to Redis, an attacker rewrites bob's entry to an administrator, a
/// junk token's negative entry to `system:admin`, copies bob's entry onto alice's key and
/// flips a byte of another: replica B, asking Redis first, serves none of them. Each is a
/// miss, counted, and the token goes to the source, which gives the true answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_value_edited_by_hand_is_never_served() {
    let dir = temp_dir();
    let d = dir.path();
    let t = setup(d);
    let redis = RedisServer::start(d, None, &[]);
    let toml = authd_toml("positive_ttl = \"10m\"\n", &redis_toml(&redis));
    let a = start_authd(d, "authd-a", "127.0.0.1:0", &toml);
    let b = start_authd(d, "authd-b", "127.0.0.1:0", &toml);
    let bob = key_of(&a, &redis, &t.bob).await;
    let nobody = key_of(&a, &redis, &t.nobody).await;
    let alice = key_of(&a, &redis, &t.alice).await;
    let user3 = key_of(&a, &redis, &t.users[3]).await;

    // Bob's entry as authd wrote it, copied onto alice's key; then forgeries.
    set_raw(&redis, &alice, &get_raw(&redis, &bob));
    set_raw(&redis, &bob, &forged_admin("kube-admin"));
    set_raw(&redis, &nobody, &forged_admin("system:admin"));
    let mut flipped = get_raw(&redis, &user3);
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x20;
    set_raw(&redis, &user3, &flipped);

    let integrity = || metric(&b, "authd_cache_integrity_failures_total", &[]);
    for (token, truth) in [
        (&t.bob, Some("bob")),
        (&t.nobody, None),
        (&t.alice, Some("alice")),
        (&t.users[3], Some("user3")),
    ] {
        let (calls, failures) = (source_calls(&b).await, integrity().await);
        let r = grpc_review(&b, token).await;
        assert!(r.error.is_empty(), "{r:?}");
        assert_eq!(
            r.user.as_ref().map(|u| u.username.as_str()),
            truth,
            "the true answer: {r:?}"
        );
        if let Some(u) = &r.user {
            assert!(!u.groups.iter().any(|g| g.starts_with("system:")), "{r:?}");
        }
        assert!(!r.cached, "not served from a cache: {r:?}");
        assert_eq!(source_calls(&b).await, calls + 1.0, "asked the source");
        assert_eq!(integrity().await, failures + 1.0, "counted");
    }
    // Logged, at most once a minute: one line for the four.
    let lines = b
        .stderr()
        .lines()
        .filter(|l| l.contains("failed verification"))
        .count();
    assert_eq!(lines, 1, "{}", b.stderr());
    // B's answers replaced the bad values: a new replica gets the truth from Redis.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = start_authd(d, "authd-c", "127.0.0.1:0", &toml);
    let r = grpc_review(&c, &t.bob).await;
    assert!(r.cached && r.user.unwrap().username == "bob");
}

/// After reviews of every kind, a scan of Redis finds no token, username, uid, group or
/// source name in any key or value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_holds_no_token_user_or_group_in_clear() {
    let dir = temp_dir();
    let d = dir.path();
    let t = setup(d);
    let redis = RedisServer::start(d, None, &[]);
    let a = start_authd(
        d,
        "authd-a",
        "127.0.0.1:0",
        &authd_toml("", &redis_toml(&redis)),
    );
    for tok in t.all() {
        grpc_review(&a, tok).await;
    }
    let dump = redis.dump();
    assert!(dump.iter().any(|(k, _)| k.starts_with("kube-authd:v:")));
    let mut clear = secrets(
        &t,
        &["alice", "bob", "uid-alice", "uid-bob", "dev", "static"],
    );
    let users: Vec<String> = (0..20).map(|i| format!("user{i}")).collect();
    clear.extend(users.iter().map(String::as_str));
    assert_no_secrets(&dump, &clear);
}

/// A verdict cached by a replica whose source may mint `system:admin` (its mapping reserves
/// nothing) is never served by a replica whose same-named source may not: the entry lives
/// under A's pipeline digest, which B's configuration does not share, so B asks its own
/// source and refuses. (Were an entry to cross anyway, the reserved-prefix guard on every
/// answer, `Authd::finish`, would refuse it: `mapping::tests::the_guard_refuses_what_apply_would_not_mint`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cached_answer_naming_a_reserved_name_is_refused() {
    let dir = temp_dir();
    let d = dir.path();
    setup(d);
    let root = token("root");
    write(d, "root.csv", &format!("{root},system:admin,0\n"));
    let redis = RedisServer::start(d, None, &[]);
    let toml = |mapping: &str| {
        format!(
            "[cache]\nhmac_key_file = \"hmac.key\"\n[cache.redis]\n{}\
             [[sources]]\nname = \"static\"\ntype = \"token_file\"\npath = \"root.csv\"\n{mapping}\n",
            redis_toml(&redis)
        )
    };
    let a = start_authd(
        d,
        "authd-a",
        "127.0.0.1:0",
        &toml("mapping = { reserved_prefixes = [] }"),
    );
    let b = start_authd(d, "authd-b", "127.0.0.1:0", &toml(""));
    let r = grpc_review(&a, &root).await;
    assert!(r.authenticated, "A's source may mint it: {r:?}");
    let r = grpc_review(&b, &root).await;
    assert!(!r.authenticated && r.error.is_empty(), "{r:?}");
    assert_eq!(
        hits(&b, "shared").await,
        0.0,
        "B read A's verdict from another configuration"
    );
    assert_eq!(source_calls(&b).await, 1.0);
}
