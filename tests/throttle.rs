//! Issue 14 end to end: password guessing stops at kube-authd without locking anyone out.
//! Two authd replicas share Redis behind one edge, reviews go over real HTTPS as
//! kube-apiserver sends them, and the attacker's guesses are counted where they would do
//! harm: failed binds at a private slapd (each counts toward a directory's lockout), lookups
//! at the LDAP source, rows asked of a private PostgreSQL.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fleet::{certs_init_with, endpoints_toml, ready, start_fleet_edge, Replica};
use common::ldap::{Slapd, SERVICE_DN, SERVICE_PASSWORD, SUFFIX};
use common::redis::RedisServer;
use common::*;

const ADMIN_SECRET: &str = "test-admin-secret-0123456789";
const ALICE_DN: &str = "uid=alice,ou=people,ou=eng,dc=example,dc=org";
const BOB_DN: &str = "uid=bob,ou=people,ou=ops,dc=example,dc=org";

/// Reviews in flight at once during an attack.
const ATTACKERS: usize = 8;

/// slapd, Redis, two authd replicas behind one edge. Fields drop in order: processes
/// first, the folder they live in last.
struct Env {
    replicas: Vec<Replica>,
    edge: Proc,
    redis: RedisServer,
    slapd: Slapd,
    client: reqwest::Client,
    url: String,
    dir: tempfile::TempDir,
}

impl Env {
    /// `throttle` is the `[throttle]` table's body; `extra` more authd TOML (sources).
    async fn start(throttle: &str, extra: &str) -> Env {
        let dir = temp_dir();
        let d = dir.path();
        certs_init_with(d, &[]);
        let slapd = Slapd::start(d, (&d.join("edge.crt"), &d.join("edge.key")));
        let redis = RedisServer::start(d, None, &[]);
        write(d, "ldap.pw", &format!("{SERVICE_PASSWORD}\n"));
        write(d, "hmac.key", "replicas-share-this-key-0123456789abcdef\n");
        write(d, "admin.token", &format!("{ADMIN_SECRET}\n"));
        // Throttled answers are sent at once unless the test is about holding them.
        let hold = if throttle.contains("answer_delay") {
            ""
        } else {
            "answer_delay = \"0s\"\n"
        };
        let throttle = format!("{hold}{throttle}");
        // Positive verdicts live 200 ms: during an attack alice's working token goes
        // back to the source again and again, through the throttle.
        let toml = format!(
            "[cache]\nhmac_key_file = \"hmac.key\"\npositive_ttl = \"200ms\"\n\
             [cache.redis]\nurl = \"{}\"\n\
             [admin]\ntoken_file = \"admin.token\"\n\
             [audit]\npath = \"-\"\n\
             [throttle]\n{throttle}\n\
             [[sources]]\nname = \"dir\"\ntype = \"ldap\"\nurl = \"{}\"\n\
             bind_dn = \"{SERVICE_DN}\"\nbind_password_file = \"ldap.pw\"\n\
             user_base = \"{SUFFIX}\"\ntimeout = \"2s\"\n{extra}\n",
            redis.url(),
            slapd.url()
        );
        let replicas: Vec<Replica> = (0..2)
            .map(|i| Replica::start(d, &format!("authd{i}"), &toml))
            .collect();
        let edge = start_fleet_edge(d, "edge", "", &endpoints_toml(&replicas, "http"));
        let admin = edge.ready_field("admin");
        let url = format!("{}/authenticate", edge.ready_field("https"));
        eventually(Duration::from_secs(10), "edge ready", || ready(&admin)).await;
        let ca = std::fs::read(d.join("ca.crt")).unwrap();
        Env {
            client: client(&ca, Proto::H2, None),
            replicas,
            edge,
            redis,
            slapd,
            url,
            dir,
        }
    }

    async fn review(&self, token: &str) -> Answer {
        review(&self.client, &self.url, V1, token).await
    }

    /// Reviews every token, `ATTACKERS` at a time; each must be a definitive "no" (200,
    /// not authenticated, no error). Between them, every `good_every`-th review is the
    /// working token `good`, which must be admitted. Returns how long it took.
    async fn attack(&self, tokens: Vec<String>, good: Option<(&str, usize)>) -> Duration {
        let started = Instant::now();
        let queue = Arc::new(std::sync::Mutex::new(tokens.into_iter().enumerate()));
        let good = good.map(|(t, every)| (t.to_owned(), every));
        let workers: Vec<_> = (0..ATTACKERS)
            .map(|_| {
                let (queue, client, url) = (queue.clone(), self.client.clone(), self.url.clone());
                let good = good.clone();
                tokio::spawn(async move {
                    loop {
                        let next = queue.lock().unwrap().next();
                        let Some((i, token)) = next else { return };
                        let a = review(&client, &url, V1, &token).await;
                        assert!(
                            a.status == 200
                                && a.body["status"] == serde_json::json!({"authenticated": false}),
                            "guess {i}: not a definitive no: {a:?}"
                        );
                        if let Some((good, every)) = &good {
                            if i % every == 0 {
                                let a = review(&client, &url, V1, good).await;
                                assert!(
                                    a.status == 200 && a.authenticated(),
                                    "the working token during the attack (guess {i}): {a:?}"
                                );
                            }
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.expect("attacker");
        }
        started.elapsed()
    }

    /// A counter summed over both replicas.
    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut sum = 0.0;
        for r in &self.replicas {
            let (_, text) = admin_get(&r.proc().ready_field("admin"), "/metrics").await;
            sum += metric_sum(&text, name, labels);
        }
        sum
    }

    /// `kube-authd throttle ARGS` against the first replica; its stdout.
    fn throttle_cli(&self, args: &[&str]) -> String {
        let secret = self.dir.path().join("admin.token");
        let out = Command::new(bin("kube-authd"))
            .arg("throttle")
            .args(args)
            .args(["--authd", &format!("http://{}", self.replicas[0].addr)])
            .args(["--admin-token-file", secret.to_str().unwrap()])
            .output()
            .expect("run kube-authd throttle");
        assert!(
            out.status.success(),
            "kube-authd throttle {args:?}: {out:?}"
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

fn guesses(user: &str, tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{user}:{tag}-guess-{i}")).collect()
}

/// Failures the burst and the rate allow over `elapsed` (and one for the period in
/// progress).
fn allowed(burst: usize, period: Duration, elapsed: Duration) -> usize {
    burst + (elapsed.as_millis() / period.as_millis()) as usize + 1
}

#[tokio::test(flavor = "multi_thread")]
async fn guessing_alices_password_reaches_the_directory_at_most_burst_plus_rate() {
    let period = Duration::from_secs(4);
    let env = Env::start(
        "burst = 3\nperiod = \"4s\"\ncluster_burst = 10000\ncluster_period = \"1ms\"\n",
        "",
    )
    .await;

    // Alice's working token, used once before the attack.
    let a = env.review("alice:alice-pw").await;
    assert!(a.authenticated(), "{a:?}");
    assert_eq!(env.slapd.failed_binds(), 0);

    // The same wrong token again and again (kube-apiserver's retries, a client resending)
    // is answered by the negative cache: it reaches the directory once.
    for _ in 0..20 {
        env.review("alice:the-same-wrong-one").await.assert_denied();
    }
    assert_eq!(
        env.slapd.failed_binds(),
        1,
        "one wrong token, one failed bind"
    );

    // 200 distinct wrong passwords through both replicas, the working token in between.
    let elapsed = env
        .attack(guesses("alice", "a", 200), Some(("alice:alice-pw", 10)))
        .await;
    let failed = env.slapd.failed_binds();
    let bound = allowed(3, period, elapsed);
    eprintln!("200 guesses in {elapsed:?}: {failed} failed binds at slapd, {bound} allowed");
    assert!(
        failed <= bound,
        "{failed} wrong passwords reached slapd in {elapsed:?}; the throttle allows {bound}"
    );
    let throttled = env
        .metric(
            "authd_throttled_total",
            &[("kind", "user"), ("mode", "enforce")],
        )
        .await;
    assert!(
        throttled >= (201 - failed) as f64,
        "every guess not asked is counted: {throttled}"
    );
    // The working token went back to the directory during the attack (its cached verdict
    // lives 200 ms) and was let through as a credential known to work.
    let known_good = env
        .metric("authd_throttle_known_good_total", &[("source", "dir")])
        .await;
    assert!(known_good >= 1.0, "{known_good}");
    // Both replicas answered guesses, and they shared one budget.
    for r in &env.replicas {
        let (_, text) = admin_get(&r.proc().ready_field("admin"), "/metrics").await;
        assert!(
            metric_sum(&text, "authd_verdicts_total", &[("result", "throttled")]) > 0.0,
            "{} throttled nothing: the budget was not shared or the edge used one replica",
            r.name
        );
    }

    // Audited as throttled, with the reason.
    let audit: String = env.replicas.iter().map(|r| r.proc().stdout()).collect();
    assert!(
        audit.contains(r#""outcome":"throttled","reason":"throttled""#),
        "no throttled audit record:\n{}",
        &audit[..audit.len().min(2000)]
    );

    // The state is visible: no failure allowed now.
    let status = env.throttle_cli(&["status", "--user", "alice"]);
    assert!(status.contains("dir (user): throttled"), "{status}");
    assert!(status.contains("shared (Redis)"), "{status}");

    // Alice changes her password right after the attack: her new password is not known
    // yet, so it waits for the rate like any failure would, and then gets in.
    env.slapd.set_password(ALICE_DN, "alice-new-pw");
    let binds_before = env.slapd.binds_as(ALICE_DN);
    let a = env.review("alice:alice-new-pw").await;
    assert!(!a.authenticated() && a.status == 200, "{a:?}");
    assert_eq!(
        env.slapd.binds_as(ALICE_DN),
        binds_before,
        "throttled: the directory was not asked"
    );
    let waited = Instant::now();
    eventually(
        period * 3,
        "the new password admitted once the rate allows",
        || async { env.review("alice:alice-new-pw").await.authenticated() },
    )
    .await;
    assert!(waited.elapsed() <= period * 2, "{:?}", waited.elapsed());

    // Reset: bob is throttled after his burst, and a reset lets his next guess through.
    for t in guesses("bob", "b", 10) {
        env.review(&t).await.assert_denied();
    }
    let bob_binds = env.slapd.binds_as(BOB_DN);
    assert!(bob_binds <= 4, "{bob_binds}");
    let status = env.throttle_cli(&["status", "--user", "bob"]);
    assert!(status.contains("throttled"), "{status}");
    let out = env.throttle_cli(&["reset", "--user", "BOB"]);
    assert_eq!(out.trim(), "reset: 1 sources' budgets");
    let status = env.throttle_cli(&["status", "--user", "bob"]);
    assert!(status.contains("3 more failures allowed now"), "{status}");
    env.review("bob:after-the-reset").await.assert_denied();
    assert_eq!(env.slapd.binds_as(BOB_DN), bob_binds + 1, "asked again");

    // Nothing in Redis names a user or holds a password.
    let dump = env.redis.dump();
    common::redis::assert_no_secrets(&dump, &["alice", "bob", "alice-pw", "guess"]);
    drop(env.edge);
}

/// A throttled answer is held `answer_delay` (a guesser with bounded concurrency spends
/// its slots waiting), at most `max_delayed` at once per replica (beyond, answered at
/// once: holding is bounded), and a working credential is never held.
#[tokio::test(flavor = "multi_thread")]
async fn throttled_answers_are_held_and_at_most_max_delayed_at_once() {
    let hold = Duration::from_secs(3);
    let env = Env::start(
        "burst = 1\nperiod = \"1h\"\nanswer_delay = \"3s\"\nmax_delayed = 2\n",
        "",
    )
    .await;
    assert!(env.review("alice:alice-pw").await.authenticated());
    env.review("alice:first-wrong").await.assert_denied();
    // Six distinct guesses at once: all throttled, some held, the rest answered at once.
    let started = Instant::now();
    let guesses: Vec<_> = guesses("alice", "held", 6)
        .into_iter()
        .map(|t| {
            let (client, url) = (env.client.clone(), env.url.clone());
            tokio::spawn(async move {
                let a = review(&client, &url, V1, &t).await;
                (a, started.elapsed())
            })
        })
        .collect();
    // Meanwhile the working token is answered at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let good_started = Instant::now();
    assert!(env.review("alice:alice-pw").await.authenticated());
    assert!(good_started.elapsed() < hold, "the working token was held");
    let mut held = 0;
    for g in guesses {
        let (a, took) = g.await.unwrap();
        a.assert_denied();
        if took >= hold {
            held += 1;
        }
    }
    // Each of the two replicas holds at most 2 (the edge spreads the six over both):
    // between 2 and 4 held, the rest (at least 2) answered at once.
    assert!(
        (2..=4).contains(&held),
        "{held} held: max_delayed = 2 per replica, the rest sent at once"
    );
    assert_eq!(env.slapd.failed_binds(), 1, "only the burst reached slapd");
}

#[tokio::test(flavor = "multi_thread")]
async fn shadow_mode_throttles_nothing_and_counts_everything() {
    let env = Env::start("burst = 3\nperiod = \"1h\"\nshadow = true\n", "").await;
    env.attack(guesses("alice", "s", 40), None).await;
    assert_eq!(
        env.slapd.failed_binds(),
        40,
        "every guess reached the directory"
    );
    let shadowed = env
        .metric(
            "authd_throttled_total",
            &[("kind", "user"), ("mode", "shadow")],
        )
        .await;
    assert_eq!(
        shadowed, 37.0,
        "all but the burst would have been throttled"
    );
    assert_eq!(
        env.metric("authd_verdicts_total", &[("result", "throttled")])
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_killed_mid_attack_fails_no_review_and_each_replica_throttles_alone() {
    let mut env = Env::start("burst = 3\nperiod = \"1h\"\n", "").await;
    env.attack(guesses("alice", "r1", 30), None).await;
    assert!(
        env.slapd.failed_binds() <= 3,
        "{}",
        env.slapd.failed_binds()
    );

    env.redis.kill();
    // Every review is still a definitive answer (`attack` asserts it), and each replica
    // throttles from its own memory: at most one more burst each.
    env.attack(guesses("alice", "r2", 120), None).await;
    let failed = env.slapd.failed_binds();
    eprintln!("150 guesses, Redis killed after 30: {failed} failed binds at slapd");
    // At most one more burst per replica; each replica's memory follows what Redis
    // decided, so in practice none.
    assert!(
        failed <= 3 + 2 * 3,
        "{failed} wrong passwords reached slapd"
    );
    assert!(
        env.metric("authd_throttle_fallbacks_total", &[]).await > 0.0,
        "decided without Redis"
    );
    // A good password still gets in (it is not over any budget: a success gives its
    // reservation back).
    let a = env.review("bob:bob-pw").await;
    assert!(a.authenticated(), "{a:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spray_across_500_usernames_trips_the_cluster_budget() {
    let env = Env::start(
        "burst = 3\nperiod = \"1h\"\ncluster_burst = 20\ncluster_period = \"1h\"\n",
        "",
    )
    .await;
    let spray: Vec<String> = (0..500).map(|i| format!("user{i}:Spring2026!")).collect();
    env.attack(spray, None).await;
    let asked = env
        .metric("authd_source_calls_total", &[("source", "dir")])
        .await;
    assert!(asked <= 21.0, "{asked} lookups reached the directory");
    let throttled = env
        .metric("authd_throttled_total", &[("kind", "cluster")])
        .await;
    assert!(throttled >= 479.0, "{throttled}");
}

/// A PostgreSQL token id presented with a wrong secret: counted, logged, and with
/// `revoke_on_theft` the id is revoked, so the real token stops working too.
#[tokio::test(flavor = "multi_thread")]
async fn a_known_token_id_with_a_wrong_secret_is_a_theft_signal() {
    let tmp = temp_dir();
    let pg = common::postgres::Postgres::start(tmp.path());
    let key = write(tmp.path(), "token.key", &hex(&rand_bytes::<32>()));
    let pg_source = format!(
        "[[sources]]\nname = \"db\"\ntype = \"postgres\"\ndatabase_url = \"{}\"\n\
         secret_key_file = \"{}\"\nmigrate = true\ntimeout = \"2s\"\n",
        pg.url(),
        key.display()
    );
    let env = Env::start(
        "burst = 3\nperiod = \"1h\"\n[throttle.sources.db]\nrevoke_on_theft = true\n",
        &pg_source,
    )
    .await;
    let out = Command::new(bin("kube-authd"))
        .args(["token", "create", "--database-url", &pg.url()])
        .args(["--secret-key-file", key.to_str().unwrap()])
        .args(["--user", "ci-bot"])
        .output()
        .expect("run kube-authd token create");
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let a = env.review(&token).await;
    assert!(a.authenticated(), "{a:?}");

    // An unknown id is no signal.
    let (id, secret) = token.rsplit_once('.').unwrap();
    let unknown = format!("{}{}.{secret}", &id[..id.len() - 4], "0000");
    env.review(&unknown).await.assert_denied();
    assert_eq!(
        env.metric("authd_throttle_theft_signals_total", &[]).await,
        0.0
    );

    // The right id with a wrong secret.
    let wrong = format!("{id}.{}", "0".repeat(secret.len()));
    env.review(&wrong).await.assert_denied();
    assert_eq!(
        env.metric("authd_throttle_theft_signals_total", &[("source", "db")])
            .await,
        1.0
    );
    // Revoked by id on every replica: the real token is refused from now on.
    eventually(Duration::from_secs(10), "the id revoked", || async {
        let a = env.review(&token).await;
        a.status == 200 && !a.authenticated()
    })
    .await;
    let logs: String = env.replicas.iter().map(|r| r.proc().stderr()).collect();
    assert!(
        logs.contains("a known token id was presented with a wrong secret"),
        "logged at warn"
    );
    assert!(!logs.contains(secret), "the secret is never logged");
    drop(pg);
}

/// Misconfiguration names the field.
#[test]
fn throttle_misconfiguration_names_the_field() {
    let tmp = temp_dir();
    let d = tmp.path();
    write(d, "tokens.csv", "t,u,1\n");
    for (table, field) in [
        ("[throttle]\nburst = 0\n", "throttle.burst"),
        ("[throttle]\nperiod = \"0s\"\n", "throttle.period"),
        (
            "[throttle.sources.nope]\nburst = 2\n",
            "throttle.sources.nope",
        ),
        (
            "[throttle.sources.static]\nburst = 2\n",
            "throttle.sources.static",
        ),
    ] {
        let cfg = write(
            d,
            "authd.toml",
            &format!(
                "{table}\n[[sources]]\nname = \"static\"\ntype = \"token_file\"\npath = \"tokens.csv\"\n"
            ),
        );
        let out = Command::new(bin("kube-authd"))
            .args(["config", "check", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{table}: accepted");
        assert!(err.contains(field), "{table}: {err}");
    }
}
