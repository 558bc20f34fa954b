//! Issue 12 end to end: revocation is a deny-list that holds on every replica, across
//! authd and Redis restarts, while the sources still accept the credential; no answer
//! computed before a revocation is served after it (slow lookups, joined lookups, delayed
//! Redis writes); `token disable` reaches every replica.
//!
//! Two authd replicas (real processes) share a private redis-server; an edge balances over
//! both. Per-replica checks talk gRPC to each replica directly.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::basic_auth::{BasicAuthServer, Mode};
use common::delay::DelayProxy;
use common::fleet::{endpoints_toml, start_fleet_edge, Replica};
use common::jwks::{claims, JwksServer, TestKey};
use common::ldap::{Slapd, SERVICE_DN, SERVICE_PASSWORD};
use common::postgres::Postgres;
use common::procs::kube_authd_revoke;
use common::redis::RedisServer;
use common::*;

const ADMIN_SECRET: &str = "test-admin-secret-0123456789";

struct Tokens {
    alice: String,
    alice2: String,
    bob: String,
    dave: String,
}

/// Token file, HMAC key and admin secret shared by every replica in `dir`.
fn setup(dir: &Path) -> Tokens {
    let t = Tokens {
        alice: token("alice"),
        alice2: token("alicetwo"),
        bob: token("bob"),
        dave: token("dave"),
    };
    write(
        dir,
        "tokens.csv",
        &format!(
            "{},alice,uid-alice\n{},alice,uid-alice\n{},bob,uid-bob\n{},dave,uid-dave\n",
            t.alice, t.alice2, t.bob, t.dave
        ),
    );
    write(
        dir,
        "hmac.key",
        "replicas-share-this-key-0123456789abcdef\n",
    );
    write(dir, "admin.token", &format!("{ADMIN_SECRET}\n"));
    t
}

/// Long TTLs, so only a revocation can make a replica refuse what it cached. The sources
/// in `more_sources` come first: they own only their own token shapes.
fn authd_toml(redis: &RedisServer, more_sources: &str) -> String {
    format!(
        "[cache]\nhmac_key_file = \"hmac.key\"\npositive_ttl = \"10m\"\nlocal_ttl = \"10m\"\n\
         [cache.redis]\nurl = \"{}\"\ntimeout = \"3s\"\n\
         [admin]\ntoken_file = \"admin.token\"\n\
         {more_sources}\
         [[sources]]\nname = \"static\"\ntype = \"token_file\"\npath = \"tokens.csv\"\n",
        redis.url()
    )
}

fn basic_auth_source(idp: &BasicAuthServer) -> String {
    format!(
        "[[sources]]\nname = \"idp\"\ntype = \"basic_auth\"\nurl = \"{}\"\ntimeout = \"5s\"\n",
        idp.template()
    )
}

async fn grpc_review(r: &Replica, token: &str) -> bool {
    r.review(token).await
}

/// Runs `kube-authd revoke` against replica `r`; `stdin` is the token for --token-stdin.
fn revoke_cli(dir: &Path, r: &Replica, args: &[&str], stdin: Option<&str>) -> String {
    kube_authd_revoke(dir, &r.addr, args, stdin)
}

/// `revoke_cli` off the runtime's threads (it blocks until the process exits).
async fn revoke_async(dir: &Path, r: &Replica, args: &[&str]) -> String {
    let (dir, r) = (dir.to_owned(), r.handle());
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        revoke_cli(&dir, &r, &args, None)
    })
    .await
    .unwrap()
}

/// Polls until `r` refuses `token`; panics if it still authenticates it after `within`.
async fn refused_within(r: &Replica, token: &str, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while grpc_review(r, token).await {
        assert!(
            Instant::now() < deadline,
            "{what}: {} still authenticated it {within:?} after the revocation",
            r.name
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls until `r` authenticates `token` again, within `within`.
async fn accepted_within(r: &Replica, token: &str, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while !grpc_review(r, token).await {
        assert!(
            Instant::now() < deadline,
            "{what}: {} still refused it after {within:?}",
            r.name
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A PostgreSQL token for `user`, as `kube-authd token create` prints it (the source's
/// `secret_key_file` is `token.key` in `dir`).
fn create_pg_token(dir: &Path, database_url: &str, user: &str) -> String {
    create_pg_token_with(dir, database_url, user, &[])
}

fn create_pg_token_with(dir: &Path, database_url: &str, user: &str, extra: &[&str]) -> String {
    let out = std::process::Command::new(bin("kube-authd"))
        .args(["token", "create", "--database-url", database_url])
        .args(["--secret-key-file", dir.join("token.key").to_str().unwrap()])
        .args(["--user", user])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

const ONE_SECOND: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocations_hold_on_every_replica_across_authd_and_redis_restarts() {
    let dir = temp_dir();
    let d = dir.path();
    let t = setup(d);
    certs_init(d, &[]);
    let idp = BasicAuthServer::start(&[("alice", "alice-pw"), ("bob", "bob-pw")]);
    let mut redis =
        RedisServer::start(d, None, &["--appendonly", "yes", "--appendfsync", "always"]);
    let toml = authd_toml(&redis, &basic_auth_source(&idp));
    let mut a = Replica::start(d, "authd-a", &toml);
    let mut b = Replica::start(d, "authd-b", &toml);
    let edge = start_fleet_edge(
        d,
        "edge",
        "",
        &endpoints_toml(&[a.handle(), b.handle()], "http"),
    );
    let url = format!("{}/authenticate", edge.ready_field("https"));
    let client = client(&std::fs::read(d.join("ca.crt")).unwrap(), Proto::H1, None);
    let alice_basic = "alice:alice-pw";
    for r in [&a, &b] {
        for tok in [&*t.alice, &t.alice2, alice_basic, &t.bob] {
            assert!(grpc_review(r, tok).await, "{}", r.name);
        }
    }

    // RevokeToken on A: A refuses as soon as the call returned, B within a second, while
    // the token file still holds the token and both replicas had it cached.
    let out = revoke_cli(d, &a, &["--token-stdin"], Some(&format!("{}\n", t.alice)));
    assert!(out.starts_with("revoked: "), "{out}");
    assert!(!grpc_review(&a, &t.alice).await, "A, right after the call");
    refused_within(&b, &t.alice, ONE_SECOND, "RevokeToken").await;
    assert!(grpc_review(&a, &t.alice2).await && grpc_review(&b, &t.alice2).await);
    assert!(!review(&client, &url, V1, &t.alice).await.authenticated());

    // RevokeUser on B: every credential mapping to alice, from every source.
    revoke_cli(d, &b, &["--user", "alice"], None);
    for tok in [&*t.alice2, alice_basic] {
        assert!(!grpc_review(&b, tok).await, "B, right after the call");
        refused_within(&a, tok, ONE_SECOND, "RevokeUser").await;
    }
    assert!(grpc_review(&a, &t.bob).await && grpc_review(&b, "bob:bob-pw").await);
    assert!(review(&client, &url, V1, &t.bob).await.authenticated());
    review(&client, &url, V1, alice_basic).await.assert_denied();

    // Listed by keyed id and kind; no token or name in the listing, in Redis or in logs.
    let list = revoke_cli(d, &a, &["list"], None);
    assert_eq!(list.lines().count(), 2, "{list}");
    assert!(list.contains("token ") && list.contains("user "), "{list}");
    let dump = redis.dump();
    let secrets = [&*t.alice, &t.alice2, "alice-pw", ADMIN_SECRET];
    for (k, v) in &dump {
        for s in secrets {
            assert!(!k.contains(s) && !v.contains(s), "{k} = {v}");
        }
    }
    for s in secrets {
        assert!(!list.contains(s));
        assert!(!a.proc().stderr().contains(s) && !b.proc().stderr().contains(s));
    }
    assert!(
        a.proc().stderr().contains("revoked") && a.proc().stderr().contains("caller"),
        "one log line per revocation, naming the caller"
    );

    // An authd restart: refused from the first answer.
    a.kill();
    a.restart(d);
    for tok in [&*t.alice, &t.alice2, alice_basic] {
        assert!(!grpc_review(&a, tok).await, "restarted A");
    }
    // A Redis restart (with its append-only file), then B restarts too: it loads the
    // revocations back from Redis.
    redis.restart();
    b.kill();
    b.restart(d);
    for tok in [&*t.alice, &t.alice2, alice_basic] {
        assert!(!grpc_review(&b, tok).await, "B after Redis and B restarted");
        assert!(!grpc_review(&a, tok).await, "A after Redis restarted");
    }
    assert!(grpc_review(&b, &t.bob).await);

    // Lift the user on A: alice's other credentials work again on both within a second;
    // the revoked token stays refused.
    let out = revoke_cli(d, &a, &["lift", "--user", "alice"], None);
    assert_eq!(out.trim(), "lifted");
    for r in [&a, &b] {
        accepted_within(r, &t.alice2, ONE_SECOND, "Unrevoke").await;
        accepted_within(r, alice_basic, ONE_SECOND, "Unrevoke").await;
        assert!(!grpc_review(r, &t.alice).await);
    }

    // --until in the past: nothing is refused; a near future: refused until then.
    revoke_cli(
        d,
        &a,
        &["--user", "bob", "--until", "2001-01-01T00:00:00Z"],
        None,
    );
    assert!(grpc_review(&a, &t.bob).await && grpc_review(&b, &t.bob).await);
    let started = Instant::now();
    revoke_cli(d, &b, &["--user", "bob", "--until", "3s"], None);
    assert!(!grpc_review(&b, &t.bob).await);
    refused_within(&a, &t.bob, ONE_SECOND, "--until 3s").await;
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed())).await;
    for r in [&a, &b] {
        accepted_within(r, &t.bob, ONE_SECOND, "after --until").await;
    }
}

/// What one review saw, and when its answer arrived.
struct Seen {
    replica: &'static str,
    authenticated: bool,
    at: Instant,
}

fn spawn_reviews(r: &Replica, token: &str, n: usize) -> Vec<tokio::task::JoinHandle<Seen>> {
    (0..n)
        .map(|_| {
            let (r, token) = (r.handle(), token.to_owned());
            tokio::spawn(async move {
                let authenticated = grpc_review(&r, &token).await;
                let replica = if r.name.ends_with('a') { "A" } else { "B" };
                Seen {
                    replica,
                    authenticated,
                    at: Instant::now(),
                }
            })
        })
        .collect()
}

/// No answer after `returned` on A, nor after `returned` + 1 s on B, is authenticated.
async fn none_authenticated_after(
    reviews: Vec<tokio::task::JoinHandle<Seen>>,
    returned: Instant,
    what: &str,
) -> usize {
    let mut after = 0;
    for r in reviews {
        let s = r.await.unwrap();
        let limit = match s.replica {
            "A" => returned,
            _ => returned + ONE_SECOND,
        };
        if s.at > limit {
            after += 1;
            assert!(
                !s.authenticated,
                "{what}: replica {} answered authenticated {:?} after the revocation returned",
                s.replica,
                s.at - returned
            );
        }
    }
    after
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_answer_computed_before_a_revocation_is_served_after_it() {
    let dir = temp_dir();
    let d = dir.path();
    let t = setup(d);
    let idp = BasicAuthServer::start(&[("carol", "carol-pw")]);
    let redis = RedisServer::start(d, None, &[]);
    let toml = authd_toml(&redis, &basic_auth_source(&idp));
    let a = Replica::start(d, "authd-a", &toml);
    let b = Replica::start(d, "authd-b", &toml);
    let carol = "carol:carol-pw";

    // 1. During a slow lookup, with requests joining it before and after the revocation.
    idp.http.set_mode(Mode::Slow(Duration::from_millis(2000)));
    let mut reviews = spawn_reviews(&a, carol, 4);
    reviews.extend(spawn_reviews(&b, carol, 4));
    tokio::time::sleep(Duration::from_millis(300)).await;
    revoke_async(d, &a, &["--user", "carol"]).await;
    let returned = Instant::now();
    reviews.extend(spawn_reviews(&a, carol, 4));
    reviews.extend(spawn_reviews(&b, carol, 4));
    let after = none_authenticated_after(reviews, returned, "slow lookup").await;
    assert!(after >= 8, "the lookups outlasted the revocation: {after}");
    idp.http.set_mode(Mode::Normal);
    for r in [&a, &b] {
        assert!(!grpc_review(r, carol).await, "and nothing was cached");
    }

    // 2. During a delayed Redis write: A's verdict for dave and the revocation both wait
    // for Redis; whatever lands last, no replica serves dave after the revocation.
    redis.cli(&["CLIENT", "PAUSE", "1500", "WRITE"]);
    let mut reviews = spawn_reviews(&a, &t.dave, 3);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (dd, aa, dave) = (d.to_owned(), a.handle(), t.dave.clone());
    tokio::task::spawn_blocking(move || {
        revoke_cli(&dd, &aa, &["--token-stdin"], Some(&format!("{dave}\n")))
    })
    .await
    .unwrap();
    let returned = Instant::now();
    reviews.extend(spawn_reviews(&a, &t.dave, 3));
    reviews.extend(spawn_reviews(&b, &t.dave, 3));
    none_authenticated_after(reviews, returned, "delayed Redis write").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for r in [&a, &b] {
        for _ in 0..3 {
            assert!(!grpc_review(r, &t.dave).await, "{}", r.name);
        }
    }
    assert!(grpc_review(&b, &t.bob).await);
}

/// A lookup that began before a revocation cannot store its answer after it, however late
/// its write reaches Redis. Replica B's write of carol's verdict is held 1.5 s on its way to
/// Redis (a delaying proxy in front of Redis, for B only) while A revokes carol and lifts
/// the revocation; once the write has arrived, A's next review of carol asks the source
/// again. Before the epoch check the late write landed after the purge and the lift, and A
/// served the answer B computed before the revocation from Redis, with no source call.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_write_from_before_a_revocation_never_lands() {
    let dir = temp_dir();
    let d = dir.path();
    setup(d);
    let idp = BasicAuthServer::start(&[("carol", "carol-pw")]);
    let redis = RedisServer::start(d, None, &[]);
    // B's verdict writes are the only chunks with SADD (the index entries written with it).
    let proxy = DelayProxy::start(
        format!("127.0.0.1:{}", redis.port).parse().unwrap(),
        b"SADD",
    );
    let toml_a = authd_toml(&redis, &basic_auth_source(&idp));
    let toml_b = toml_a.replace(&redis.url(), &format!("redis://{}", proxy.addr));
    assert_ne!(toml_a, toml_b);
    let a = Replica::start(d, "authd-a", &toml_a);
    let b = Replica::start(d, "authd-b", &toml_b);
    let carol = "carol:carol-pw";
    let idp_calls = || idp.http.requests().len();

    proxy.hold(Duration::from_millis(1500));
    let on_b = {
        let b = b.handle();
        tokio::spawn(async move { grpc_review(&b, carol).await })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.held() == 0 {
        assert!(Instant::now() < deadline, "B never wrote its verdict");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proxy.hold(Duration::ZERO);
    // B's write is on its way; A revokes carol and lifts it again before it arrives.
    revoke_async(d, &a, &["--user", "carol"]).await;
    revoke_async(d, &a, &["lift", "--user", "carol"]).await;
    assert_eq!(
        proxy.delivered(),
        0,
        "the write arrived before the revocation"
    );
    while proxy.delivered() == 0 {
        assert!(Instant::now() < deadline, "the held write never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(on_b.await.unwrap(), "lifted: B answers carol");
    // Let Redis run the late write (and B hear its answer).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = idp_calls();
    assert!(grpc_review(&a, carol).await, "carol, lifted, on A");
    assert_eq!(
        idp_calls(),
        before + 1,
        "A served the verdict B computed before the revocation (its late write landed)"
    );
    assert!(b.verdicts().await >= 1.0);
    assert!(
        redis
            .cli(&["GET", "kube-authd:epoch:{s0}"])
            .trim()
            .parse::<u64>()
            .unwrap()
            >= 2,
        "a revocation and a lift each moved the epoch"
    );
}

/// A token the operator disables in PostgreSQL (`kube-authd token disable --authd`) is
/// refused by every replica within a second, though both hold its verdict in cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disabled_postgres_token_is_refused_everywhere_within_a_second() {
    let dir = temp_dir();
    let d = dir.path();
    setup(d);
    write(
        d,
        "token.key",
        "postgres-token-secret-key-0123456789abcdef\n",
    );
    let pg = Postgres::start(d);
    let redis = RedisServer::start(d, None, &[]);
    let pg_source = format!(
        "[[sources]]\nname = \"db\"\ntype = \"postgres\"\ndatabase_url = \"{}\"\n\
         secret_key_file = \"token.key\"\nmigrate = true\ntimeout = \"2s\"\n",
        pg.url()
    );
    let toml = authd_toml(&redis, &pg_source);
    let a = Replica::start(d, "authd-a", &toml);
    let b = Replica::start(d, "authd-b", &toml);
    let create = |user: &str| create_pg_token(d, &pg.url(), user);
    let (erin, frank) = (create("erin"), create("frank"));
    for r in [&a, &b] {
        assert!(grpc_review(r, &erin).await && grpc_review(r, &frank).await);
    }
    let id = erin
        .strip_prefix("kad_")
        .unwrap()
        .split_once('.')
        .unwrap()
        .0;
    let out = std::process::Command::new(bin("kube-authd"))
        .args(["token", "disable", "--database-url", &pg.url(), "--id", id])
        .args(["--authd", &format!("http://{}", a.addr)])
        .args([
            "--admin-token-file",
            d.join("admin.token").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!grpc_review(&a, &erin).await, "A, right after the call");
    refused_within(&b, &erin, ONE_SECOND, "token disable").await;
    assert!(grpc_review(&a, &frank).await && grpc_review(&b, &frank).await);
    let list = revoke_cli(d, &a, &["list"], None);
    assert!(list.starts_with("credential "), "{list}");

    // RevokeToken of a PostgreSQL token lasts as long as its row says the token does:
    // 30 days (past the 7-day `max_token_ttl` used when a source keeps no expiry), or
    // until lifted for a token with no expiry.
    let hana = create_pg_token_with(d, &pg.url(), "hana", &["--ttl", "30d"]);
    let ivan = create("ivan");
    assert!(grpc_review(&b, &hana).await && grpc_review(&b, &ivan).await);
    let out = revoke_cli(d, &a, &["--token-stdin"], Some(&format!("{hana}\n")));
    let until = out.split(" until ").nth(1).expect(&out).trim();
    let until = humantime::parse_rfc3339(until).expect(until);
    let expected = std::time::SystemTime::now() + Duration::from_secs(30 * 86400);
    let off = until
        .duration_since(expected)
        .unwrap_or_else(|e| e.duration());
    assert!(
        off < Duration::from_secs(120),
        "{out}: not the row's expiry"
    );
    let out = revoke_cli(d, &a, &["--token-stdin"], Some(&format!("{ivan}\n")));
    assert!(out.trim_end().ends_with("until lifted"), "{out}");
    refused_within(&b, &hana, ONE_SECOND, "revoked PostgreSQL token").await;
    refused_within(&b, &ivan, ONE_SECOND, "revoked PostgreSQL token").await;
    assert!(grpc_review(&b, &frank).await);
}

/// `RevokeUser` denies the mapped user name whatever source vouched for it: alice from a
/// JWT issuer, LDAP, PostgreSQL, the Basic-auth IdP and the token file is refused on the
/// replica that revoked her at once and on the other within a second; bob, in the same
/// sources, keeps working; lifting the revocation restores every one of alice's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_user_is_refused_from_every_source() {
    const ISS: &str = "https://revocation.test";
    let dir = temp_dir();
    let d = dir.path();
    let t = setup(d);
    certs_init(d, &[]);
    write(d, "ldap.pw", &format!("{SERVICE_PASSWORD}\n"));
    write(
        d,
        "token.key",
        "postgres-token-secret-key-0123456789abcdef\n",
    );
    let key = TestKey::es256("k1");
    let jwks = JwksServer::start(&[&key]);
    let slapd = Slapd::start(d, (&d.join("edge.crt"), &d.join("edge.key")));
    let pg = Postgres::start(d);
    let idp = BasicAuthServer::start(&[("alice", "alice-pw"), ("bob", "bob-pw")]);
    let redis = RedisServer::start(d, None, &[]);
    // Specific sources first (a JWT issuer, prefixed LDAP, `kad_` tokens), then the
    // Basic-auth IdP for `user:password`, then the token file. None maps its user name:
    // the fixtures' alice and bob are the same Kubernetes users in every source.
    let more_sources = format!(
        "[[sources]]\nname = \"oidc\"\ntype = \"jwt\"\nissuer = \"{ISS}\"\n\
         audiences = [\"k8s\"]\nalgorithms = [\"ES256\"]\njwks_url = \"{}\"\n\
         [[sources]]\nname = \"dir\"\ntype = \"ldap\"\nurl = \"{}\"\nbind_dn = \"{SERVICE_DN}\"\n\
         bind_password_file = \"ldap.pw\"\nuser_base = \"dc=example,dc=org\"\n\
         prefix = \"ldap:\"\ntimeout = \"2s\"\n\
         [[sources]]\nname = \"db\"\ntype = \"postgres\"\ndatabase_url = \"{}\"\n\
         secret_key_file = \"token.key\"\nmigrate = true\ntimeout = \"2s\"\n\
         {}",
        jwks.url(),
        slapd.url(),
        pg.url(),
        basic_auth_source(&idp)
    );
    let toml = authd_toml(&redis, &more_sources);
    let a = Replica::start(d, "authd-a", &toml);
    let b = Replica::start(d, "authd-b", &toml);
    let create = |user: &str| create_pg_token(d, &pg.url(), user);
    // Every credential of a user: JWT, LDAP, PostgreSQL, Basic auth, token file.
    let credentials = |user: &str, file_token: &str| {
        vec![
            ("jwt", key.sign(&claims(ISS, "k8s", user, 600))),
            ("ldap", format!("ldap:{user}:{user}-pw")),
            ("postgres", create(user)),
            ("basic_auth", format!("{user}:{user}-pw")),
            ("token_file", file_token.to_owned()),
        ]
    };
    let alice = credentials("alice", &t.alice);
    let bob = credentials("bob", &t.bob);
    // Both replicas authenticate (and cache) every one of them first.
    for r in [&a, &b] {
        for (source, tok) in alice.iter().chain(&bob) {
            assert!(grpc_review(r, tok).await, "{} before: {source}", r.name);
        }
    }

    revoke_cli(d, &a, &["--user", "alice"], None);
    for (source, tok) in &alice {
        assert!(
            !grpc_review(&a, tok).await,
            "A, right after the call: {source}"
        );
    }
    for (source, tok) in &alice {
        refused_within(&b, tok, ONE_SECOND, &format!("RevokeUser, {source}")).await;
    }
    for r in [&a, &b] {
        for (source, tok) in &bob {
            assert!(grpc_review(r, tok).await, "{}, bob: {source}", r.name);
        }
    }

    let out = revoke_cli(d, &a, &["lift", "--user", "alice"], None);
    assert_eq!(out.trim(), "lifted");
    for r in [&a, &b] {
        for (source, tok) in &alice {
            accepted_within(r, tok, ONE_SECOND, &format!("Unrevoke, {source}")).await;
        }
    }
}
