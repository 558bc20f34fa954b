//! authd against hostile internal callers, end to end (real binaries, loopback gRPC): reviews
//! cancelled while a slow source answers, a cancelled JWT lookup for an unknown key, clusters
//! that are not configured, a client asking for a cluster it was not granted, and distinct
//! cluster names by the thousand. Each test asserts a bound (open fds, source connections,
//! RSS, /metrics size, source calls), not just that nothing crashed; the storms run while an
//! internal client keeps reviewing over its own connection, none of whose reviews may fail;
//! and no token or password a test sent is in authd's output.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::basic_auth::{BasicAuthServer, Mode};
use common::grpc::{ask, cancelled, connect, user};
use common::hostile::{assert_no_secret_logged, open_fds, rss_kib, LegitCaller};
use common::jwks::{claims, JwksServer, TestKey};
use common::*;

async fn metrics(authd: &Proc) -> String {
    let (status, text) = admin_get(&authd.ready_field("admin"), "/metrics").await;
    assert_eq!(status, 200);
    text
}

/// An internal client reviewing `token` for `cluster` every 75 ms over a connection of its
/// own while an attack runs; each review must authenticate `expected`.
async fn legit_caller(authd: &Proc, token: &str, cluster: &str, expected: &str) -> LegitCaller {
    let c = connect(authd).await;
    let (token, cluster, expected) = (token.to_owned(), cluster.to_owned(), expected.to_owned());
    LegitCaller::start(Duration::from_millis(75), move || {
        let (c, token, cluster, expected) =
            (c.clone(), token.clone(), cluster.clone(), expected.clone());
        async move {
            match ask(&c, &token, &cluster).await {
                Ok(r) if user(&r) == Some(expected.as_str()) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await
}

const CANCELLED_REVIEWS: usize = 1_000;
const SOURCE_TIMEOUT: Duration = Duration::from_secs(1);

/// Issue 13 point 3: every cancelled review left its lookup parked in the single-flight map,
/// holding its source connection (4,000 reviews: +4,014 fds, +229 MB RSS, 30 s later), and a
/// later review of the same token resumed the parked lookup and got its stale answer.
#[tokio::test(flavor = "multi_thread")]
async fn cancelled_reviews_against_a_slow_source_leave_nothing_behind() {
    let dir = temp_dir();
    let d = dir.path();
    // Every password of the test holds `tag`: one search of the logs covers them all.
    let tag = hex(&rand_bytes::<8>());
    let alice_pw = format!("alice-pw-{tag}");
    let idp = BasicAuthServer::start(&[("alice", &alice_pw)]);
    // The legitimate caller's token is another source's (a token file, owning only its
    // prefix): the storm is against the slow source, the caller is served by authd.
    let carol_static = format!("static-{}", token("carol"));
    write(d, "tokens.csv", &format!("{carol_static},carol-static,1\n"));
    let authd = start_authd(
        d,
        "authd",
        "127.0.0.1:0",
        // Throttling off: it would refuse most of these distinct users before their lookup
        // starts (the cluster's failure budget), and the lookups are what is measured here.
        &format!(
            "[throttle]\nenabled = false\n\
             [[sources]]\nname = \"static\"\ntype = \"token_file\"\npath = \"tokens.csv\"\n\
             prefix = \"static-\"\n\
             [[sources]]\nname = \"idp\"\ntype = \"basic_auth\"\nurl = \"{}\"\ntimeout = \"{}ms\"\n",
            idp.template(),
            SOURCE_TIMEOUT.as_millis()
        ),
    );
    let pid = authd.pid();
    let c = connect(&authd).await;
    let warm = ask(&c, &format!("alice:{alice_pw}"), "default")
        .await
        .unwrap();
    assert_eq!(user(&warm), Some("alice"));
    let (fds_before, rss_before) = (open_fds(pid), rss_kib(pid));
    let conns_before = idp.http.open_connections();
    let legit = legit_caller(&authd, &carol_static, "default", "carol-static").await;

    // The source now answers after 3 s, past authd's 1 s timeout; each caller gives up at
    // 200 ms. Distinct tokens: one lookup (and one source connection) each.
    idp.http.set_mode(Mode::Slow(Duration::from_secs(3)));
    let started = Instant::now();
    for batch in 0..CANCELLED_REVIEWS / 100 {
        let calls = (0..100).map(|i| {
            let n = batch * 100 + i;
            let (authd, tag) = (&authd, &tag);
            async move {
                cancelled(
                    authd,
                    &format!("mallory{n}:pw{n}-{tag}"),
                    Duration::from_millis(200),
                )
                .await
            }
        });
        let results = futures::future::join_all(calls).await;
        assert!(results.into_iter().all(|c| c), "every review was cancelled");
    }
    let storm = started.elapsed();
    legit.stop("1,000 cancelled reviews").await;

    // Within the source timeout (plus a margin) of the last cancellation, authd holds no
    // more descriptors than before...
    eventually(
        SOURCE_TIMEOUT + Duration::from_secs(4),
        "authd's fds back near baseline",
        || {
            let fds = open_fds(pid);
            async move { fds <= fds_before + 16 }
        },
    )
    .await;
    // ...and the source sees its connections closed once it has slept its 3 s.
    eventually(
        Duration::from_secs(8),
        "source connections back near baseline",
        || {
            let open = idp.http.open_connections();
            async move { open <= conns_before + 4 }
        },
    )
    .await;
    let rss_after = rss_kib(pid);
    eprintln!(
        "{CANCELLED_REVIEWS} cancelled reviews in {storm:?}: fds {fds_before} -> {}, rss {rss_before} -> {rss_after} KiB",
        open_fds(pid)
    );
    assert!(
        rss_after < rss_before + 32 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );

    // The source is back. A token whose review was cancelled gets a fresh answer, not the
    // one its abandoned lookup would have read, and a legitimate caller is served.
    idp.http.set_mode(Mode::Normal);
    idp.add_user("mallory7", &format!("pw7-{tag}"));
    let again = ask(&c, &format!("mallory7:pw7-{tag}"), "default")
        .await
        .unwrap();
    assert_eq!(user(&again), Some("mallory7"), "{again:?}");
    idp.add_user("carol", &format!("carol-pw-{tag}"));
    let carol = ask(&c, &format!("carol:carol-pw-{tag}"), "default")
        .await
        .unwrap();
    assert_eq!(user(&carol), Some("carol"), "{carol:?}");
    assert_no_secret_logged(&[&authd], &[&tag, &carol_static]);
}

const ISS: &str = "https://issuer.hostile.test";

/// Issue 13 point 3: one JWT with an unknown `kid`, cancelled 0.3 s in, left the JWKS fetch
/// lock held by its parked lookup: every later token with a newly published key failed until
/// restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_unknown_kid_lookup_does_not_block_new_keys() {
    let dir = temp_dir();
    let d = dir.path();
    let (k1, k2) = (TestKey::es256("k1"), TestKey::es256("k2"));
    let jwks = JwksServer::start(&[&k1]);
    let authd = start_authd(
        d,
        "authd",
        "127.0.0.1:0",
        &format!(
            "[[sources]]\nname = \"oidc\"\ntype = \"jwt\"\nissuer = \"{ISS}\"\naudiences = [\"k8s\"]\n\
             algorithms = [\"ES256\"]\njwks_url = \"{}\"\njwks_timeout = \"1s\"\njwks_min_refresh = \"500ms\"\n",
            jwks.url()
        ),
    );
    let c = connect(&authd).await;
    let alice = ask(&c, &k1.sign(&claims(ISS, "k8s", "alice", 300)), "default")
        .await
        .unwrap();
    assert_eq!(user(&alice), Some("alice"));

    // A token naming a key not yet published, while the JWKS endpoint is slow: its review
    // is cancelled in the middle of the key-set fetch.
    jwks.http.set_mode(Mode::Slow(Duration::from_secs(3)));
    // Past jwks_min_refresh since the first fetch, so an unknown kid fetches again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let unknown = k2.sign(&claims(ISS, "k8s", "mallory", 300));
    assert!(cancelled(&authd, &unknown, Duration::from_millis(300)).await);

    // The key is published and the endpoint is fast again: a token signed with it works
    // once the refresh interval allows a fetch.
    jwks.publish(&k2);
    jwks.http.set_mode(Mode::Normal);
    let bob = k2.sign(&claims(ISS, "k8s", "bob", 300));
    eventually(
        Duration::from_secs(8),
        "a token signed with the new key",
        || {
            let (c, bob) = (c.clone(), bob.clone());
            async move {
                let r =
                    tokio::time::timeout(Duration::from_secs(2), ask(&c, &bob, "default")).await;
                matches!(r, Ok(Ok(ref r)) if user(r) == Some("bob"))
            }
        },
    )
    .await;
    let first = k1.sign(&claims(ISS, "k8s", "alice", 300));
    // A JWT's signature is its secret part; its payload may be logged as claims.
    let signatures: Vec<&str> = [&first, &unknown, &bob]
        .iter()
        .map(|t| t.rsplit('.').next().unwrap())
        .collect();
    assert_no_secret_logged(&[&authd], &signatures);
}

fn token_file(d: &Path) -> (String, String) {
    let (alice, bob) = (token("alice"), token("bob"));
    write(d, "tokens.csv", &format!("{alice},alice,1\n{bob},bob,2\n"));
    (alice, bob)
}

const TOKENS: &str =
    "[[sources]]\nname = \"static\"\ntype = \"token_file\"\npath = \"tokens.csv\"\n";

/// Issue 13 point 5: with `prod` restricted to alice, bob was refused for `prod` but
/// authenticated for "", `prod2`, `PROD` and `default` (clusters nobody configured).
#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_that_is_not_configured_is_refused() {
    let dir = temp_dir();
    let d = dir.path();
    let (alice, bob) = token_file(d);
    let authd = start_authd_as_written(
        d,
        "authd",
        "127.0.0.1:0",
        &format!("{TOKENS}[clusters.prod]\nallow_users = [\"alice\"]\n"),
    );
    let c = connect(&authd).await;
    assert_eq!(user(&ask(&c, &alice, "prod").await.unwrap()), Some("alice"));
    assert_eq!(user(&ask(&c, &bob, "prod").await.unwrap()), None);
    for cluster in ["", "prod2", "PROD", "default", "*"] {
        for (name, token) in [("alice", &alice), ("bob", &bob)] {
            let r = ask(&c, token, cluster).await.unwrap();
            assert!(!r.authenticated, "{name} at {cluster:?}: {r:?}");
            // A definitive no (kube-apiserver: 401), not an error it would retry.
            assert!(r.error.is_empty(), "{name} at {cluster:?}: {r:?}");
        }
    }
    let text = metrics(&authd).await;
    let refused = metric_sum(
        &text,
        "authd_verdicts_total",
        &[("result", "unknown_cluster"), ("cluster", "other")],
    );
    assert_eq!(refused, 10.0, "{text}");
    // Refused before any source was asked: only the two reviews for prod reached it.
    assert_eq!(metric_sum(&text, "authd_source_calls_total", &[]), 2.0);
    assert_no_secret_logged(&[&authd], &[&alice, &bob]);
}

/// Issue 13 point 5: an internal client could ask for any cluster. A client certificate's
/// `[clients.NAME] clusters` now bound what it may ask for.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_may_only_ask_for_the_clusters_it_was_granted() {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let dir = temp_dir();
    let d = dir.path();
    certs_init(d, &[]);
    let (alice, _) = token_file(d);
    let authd = start_authd_as_written(
        d,
        "authd",
        "127.0.0.1:0",
        &format!(
            "[tls]\ncert = \"authd.crt\"\nkey = \"authd.key\"\nclient_ca = \"ca.crt\"\n\
             [clients.edge]\nmethods = [\"Authenticate\"]\nclusters = [\"default\"]\n\
             [clusters.default]\n[clusters.prod]\n{TOKENS}"
        ),
    );
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(
            std::fs::read(d.join("ca.crt")).unwrap(),
        ))
        .domain_name("localhost")
        .identity(Identity::from_pem(
            std::fs::read(d.join("edge-client.crt")).unwrap(),
            std::fs::read(d.join("edge-client.key")).unwrap(),
        ));
    let channel = Endpoint::from_shared(format!("https://{}", authd.ready_field("grpc")))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("mTLS connect");
    let c = authd_proto::v1::authenticator_client::AuthenticatorClient::new(channel);
    assert_eq!(
        user(&ask(&c, &alice, "default").await.unwrap()),
        Some("alice")
    );
    for cluster in ["prod", "PROD", ""] {
        let e = ask(&c, &alice, cluster).await.unwrap_err();
        assert_eq!(
            e.code(),
            tonic::Code::PermissionDenied,
            "{cluster:?}: {e:?}"
        );
        assert!(e.message().contains("clients.edge.clusters"), "{e:?}");
    }
    // Refused before the verdict path: only the one review reached a source.
    let text = metrics(&authd).await;
    assert_eq!(metric_sum(&text, "authd_source_calls_total", &[]), 1.0);
    assert_no_secret_logged(&[&authd], &[&alice]);
}

/// Issue 13 point 4: every cluster name a caller sent became a metric label: 20,000 names
/// grew /metrics to 82 MB and RSS by 255 MB, for good. Here the names are even served (an
/// explicit `[clusters."*"]` default), and still share one label.
#[tokio::test(flavor = "multi_thread")]
async fn distinct_cluster_names_keep_metrics_and_memory_bounded() {
    let dir = temp_dir();
    let d = dir.path();
    let (alice, bob) = token_file(d);
    let authd = start_authd_as_written(
        d,
        "authd",
        "127.0.0.1:0",
        &format!("{TOKENS}[clusters.\"*\"]\n"),
    );
    let pid = authd.pid();
    // bob's cluster, reviewed throughout from a connection of its own.
    let legit = legit_caller(&authd, &bob, "default", "bob").await;
    let c = connect(&authd).await;
    let names = |from: usize, to: usize| {
        let (c, alice) = (c.clone(), alice.clone());
        async move {
            for chunk in (from..to).collect::<Vec<_>>().chunks(50) {
                let calls =
                    chunk.iter().map(|i| {
                        let (c, alice) = (c.clone(), alice.clone());
                        async move {
                            ask(&c, &alice, &format!("cluster-{i:05}-{}", "x".repeat(40))).await
                        }
                    });
                for r in futures::future::join_all(calls).await {
                    assert_eq!(user(&r.unwrap()), Some("alice"));
                }
            }
        }
    };
    // Warm up the allocator and the connection first.
    names(0, 500).await;
    let (size_before, rss_before) = (metrics(&authd).await.len(), rss_kib(pid));
    names(500, 10_500).await;
    legit.stop("10,000 cluster names").await;
    let text = metrics(&authd).await;
    let rss_after = rss_kib(pid);
    eprintln!(
        "10,000 cluster names: /metrics {size_before} -> {} bytes, rss {rss_before} -> {rss_after} KiB",
        text.len()
    );
    assert!(
        text.len() < size_before + 2048,
        "/metrics grew to {} bytes",
        text.len()
    );
    assert!(
        !text.contains("cluster-0"),
        "a caller's cluster name became a label"
    );
    let served = metric_sum(
        &text,
        "authd_verdicts_total",
        &[("cluster", "other"), ("result", "authenticated")],
    );
    assert!(served >= 10_500.0, "{served}");
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    assert_no_secret_logged(&[&authd], &[&alice, &bob]);
}
