//! Issue 15 end to end: people log in once with their directory password through the
//! edge's login route (HTTPS, no client certificate) and get short-lived tokens bound to one
//! cluster. Real slapd, real Redis, two authd replicas, one edge balancing over both.
//!
//! A token authenticates as the LDAP user with their current groups on its cluster only,
//! expires on time; logout and an admin-ended session make it refused on every replica
//! within a second; a directory change shows at the next token; failed logins are
//! throttled; no password, session or token is in Redis or in any log.

mod common;

use std::time::{Duration, Instant};

use authd_proto::v1::admin_client::AdminClient;
use authd_proto::v1::authenticator_client::AuthenticatorClient;
use authd_proto::v1::{AuthenticateRequest, EndSessionRequest, ListSessionsRequest};
use common::fleet::{endpoints_toml, start_fleet_edge, Replica};
use common::ldap::{Slapd, SERVICE_DN, SERVICE_PASSWORD, SUFFIX};
use common::procs::Proc;
use common::redis::{assert_no_secrets, RedisServer};
use common::*;
use serde_json::{json, Value};

const ADMIN_SECRET: &str = "login-test-admin-secret-0123456789";
const TOKEN_LIFETIME: Duration = Duration::from_secs(4);

struct Env {
    _dir: tempfile::TempDir,
    slapd: Slapd,
    redis: RedisServer,
    replicas: Vec<Replica>,
    edge: Proc,
    /// The edge's login listener.
    base: String,
    /// The edge's review listener.
    reviews: String,
    /// kube-apiserver (the registered client certificate) for reviews.
    apiserver: reqwest::Client,
    /// A person: no client certificate.
    person: reqwest::Client,
}

fn authd_toml(slapd: &Slapd, redis: &RedisServer) -> String {
    format!(
        "[cache]\nhmac_key_file = \"hmac.key\"\npositive_ttl = \"10m\"\nlocal_ttl = \"10m\"\n\
         [cache.redis]\nurl = \"{redis}\"\ntimeout = \"3s\"\n\
         [admin]\ntoken_file = \"admin.token\"\n\
         [[sources]]\nname = \"dir\"\ntype = \"ldap\"\nurl = \"{ldap}\"\n\
         bind_dn = \"{SERVICE_DN}\"\nbind_password_file = \"ldap.pw\"\n\
         user_base = \"{SUFFIX}\"\ngroup_base = \"ou=groups,{SUFFIX}\"\ntimeout = \"2s\"\n\
         [clusters.prod]\n[clusters.staging]\n\
         [sessions]\npassword_source = \"dir\"\ntoken_lifetime = \"{}s\"\n\
         max_failed_logins_per_user = 3\nmax_failed_logins_per_address = 5\n",
        TOKEN_LIFETIME.as_secs(),
        redis = redis.url(),
        ldap = slapd.url(),
    )
}

impl Env {
    fn start() -> Env {
        let dir = temp_dir();
        let d = dir.path();
        certs_init(d, &[]);
        write(d, "ldap.pw", &format!("{SERVICE_PASSWORD}\n"));
        write(d, "hmac.key", "replicas-share-this-key-0123456789abcdef\n");
        write(d, "admin.token", &format!("{ADMIN_SECRET}\n"));
        let slapd = Slapd::start(d, (&d.join("edge.crt"), &d.join("edge.key")));
        let redis = RedisServer::start(d, None, &[]);
        let toml = authd_toml(&slapd, &redis);
        let replicas = vec![
            Replica::start(d, "authd-a", &toml),
            Replica::start(d, "authd-b", &toml),
        ];
        let edge = start_fleet_edge(
            d,
            "edge",
            "[clusters.prod]\n[clusters.staging]\n[login]\nlisten = \"127.0.0.1:0\"\n",
            &endpoints_toml(&replicas, "http"),
        );
        let base = edge.ready_field("login");
        let reviews = edge.ready_field("https");
        let ca = std::fs::read(d.join("ca.crt")).unwrap();
        Env {
            apiserver: client(&ca, Proto::H2, None),
            person: anonymous_client(&ca, Proto::H1),
            _dir: dir,
            slapd,
            redis,
            replicas,
            edge,
            base,
            reviews,
        }
    }

    /// POSTs JSON to a login route as a person; (status, body).
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .person
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e:?}"));
        let status = resp.status().as_u16();
        assert_eq!(
            resp.headers().get("cache-control").unwrap(),
            "no-store",
            "{path}"
        );
        (status, resp.json().await.expect("JSON body"))
    }

    async fn login(&self, user: &str, password: &str) -> String {
        let (status, body) = self
            .post("/login", json!({"username": user, "password": password}))
            .await;
        assert_eq!(status, 200, "login {user}: {body}");
        body["session"].as_str().unwrap().to_owned()
    }

    /// A token for `cluster`: (token, expiresUnixMs).
    async fn token(&self, session: &str, cluster: &str) -> (u16, Value) {
        self.post("/token", json!({"session": session, "cluster": cluster}))
            .await
    }

    async fn token_ok(&self, session: &str, cluster: &str) -> String {
        let (status, body) = self.token(session, cluster).await;
        assert_eq!(status, 200, "token: {body}");
        body["token"].as_str().unwrap().to_owned()
    }

    /// Reviews `token` through the edge as kube-apiserver of `cluster` would.
    async fn review_on(&self, cluster: &str, token: &str) -> Answer {
        review(
            &self.apiserver,
            &format!("{}/clusters/{cluster}/authenticate", self.reviews),
            "authentication.k8s.io/v1",
            token,
        )
        .await
    }

    async fn admin(&self) -> AdminClient<tonic::transport::Channel> {
        AdminClient::connect(format!("http://{}", self.replicas[0].addr))
            .await
            .unwrap()
    }

    fn logs(&self) -> String {
        let mut all = self.edge.stderr();
        for r in &self.replicas {
            all.push_str(&r.proc().stderr());
        }
        all
    }
}

fn with_admin<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_SECRET}").parse().unwrap(),
    );
    r
}

async fn grpc_review(r: &Replica, cluster: &str, token: &str) -> bool {
    let mut c = AuthenticatorClient::connect(format!("http://{}", r.addr))
        .await
        .expect("connect to authd");
    let a = c
        .authenticate(AuthenticateRequest {
            token: token.to_owned(),
            cluster: cluster.into(),
            request_id: "login-test".into(),
            ..Default::default()
        })
        .await
        .expect("Authenticate")
        .into_inner();
    assert!(a.error.is_empty(), "{}: {a:?}", r.name);
    a.authenticated
}

/// Every replica refuses `token` within `within` (each was authenticating it before).
async fn refused_everywhere_within(env: &Env, token: &str, within: Duration, what: &str) {
    let started = Instant::now();
    for r in &env.replicas {
        while grpc_review(r, "prod", token).await {
            assert!(
                started.elapsed() < within,
                "{what}: {} still authenticated the token {within:?} after",
                r.name
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Every replica authenticates `token` (and so holds it in its verdict cache).
async fn warm(env: &Env, token: &str) {
    for r in &env.replicas {
        assert!(grpc_review(r, "prod", token).await, "{} refused", r.name);
    }
}

fn set_member(slapd: &Slapd, group: &str, op: &str, user_dn: &str) {
    slapd.modify(&format!(
        "dn: cn={group},ou=groups,{SUFFIX}\nchangetype: modify\n{op}: member\nmember: {user_dn}\n"
    ));
}

const ALICE_DN: &str = "uid=alice,ou=people,ou=eng,dc=example,dc=org";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_tokens_are_short_lived_bound_to_one_cluster_and_revocable_everywhere() {
    let mut env = Env::start();
    let mut secrets: Vec<String> = vec!["alice-pw".into(), "bob-pw".into()];

    // A wrong password is a 401 and opens nothing.
    let (status, body) = env
        .post(
            "/login",
            json!({"username": "alice", "password": "nope-pw"}),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    // The login listener serves nothing else, and the review listener still refuses a
    // caller without a certificate at the handshake.
    let (status, _) = env.post("/clusters/prod/authenticate", json!({})).await;
    assert_eq!(status, 404);
    let anonymous = env
        .person
        .post(format!("{}/clusters/prod/authenticate", env.reviews))
        .body(review_body("authentication.k8s.io/v1", "whatever", &[]))
        .send()
        .await;
    assert!(anonymous.is_err(), "{anonymous:?}");
    let anonymous = env
        .person
        .post(format!("{}/login", env.reviews))
        .send()
        .await;
    assert!(anonymous.is_err(), "no login route on the review listener");
    // Bad bodies are refused without echoing them.
    let (status, body) = env
        .post("/login", json!({"username": "alice", "pass": "leaky-pw"}))
        .await;
    assert_eq!(status, 400);
    assert!(!body.to_string().contains("leaky-pw"), "{body}");

    // The token: the LDAP user with current groups, on its own cluster only.
    let session = env.login("alice", "alice-pw").await;
    assert!(session.starts_with("kas_"), "{session}");
    secrets.push(session.clone());
    // The session credential itself is no API token.
    env.review_on("prod", &session).await.assert_denied();
    // An oversized body is refused before authd sees it.
    let (status, _) = env
        .post(
            "/login",
            json!({"username": "alice", "password": "x".repeat(20_000)}),
        )
        .await;
    assert_eq!(status, 400);
    let (status, body) = env.token(&session, "nowhere").await;
    assert_eq!(status, 400, "a cluster authd does not serve: {body}");
    let (status, body) = env.token(&session, "prod").await;
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    let expires = body["expiresUnixMs"].as_u64().unwrap();
    secrets.push(token.clone());
    assert!(
        token.starts_with("kat_") && token.len() >= 4 + 32 + 1 + 32,
        "{token}"
    );
    assert_eq!(body["username"], "alice");
    let a = env.review_on("prod", &token).await;
    assert!(a.authenticated(), "{a:?}");
    assert_eq!(a.username(), "alice");
    assert_eq!(a.groups(), ["platform"]);
    env.review_on("staging", &token).await.assert_denied();
    let other = review(
        &env.apiserver,
        &format!("{}/authenticate", env.reviews),
        "authentication.k8s.io/v1",
        &token,
    )
    .await;
    other.assert_denied();
    // And again on prod (now from a cache): still bound.
    assert!(env.review_on("prod", &token).await.authenticated());
    env.review_on("staging", &token).await.assert_denied();

    // It expires on time, cached or not.
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let left = expires.saturating_sub(now_ms());
    assert!(
        left <= TOKEN_LIFETIME.as_millis() as u64 && left > 1000,
        "token lifetime: {left} ms left"
    );
    tokio::time::sleep(Duration::from_millis(left + 100)).await;
    env.review_on("prod", &token).await.assert_denied();
    for r in &env.replicas {
        assert!(
            !grpc_review(r, "prod", &token).await,
            "{} after expiry",
            r.name
        );
    }

    // A group change shows at the next token.
    set_member(&env.slapd, "sre", "add", ALICE_DN);
    // A groupOfNames keeps at least one member.
    set_member(&env.slapd, "platform", "add", SERVICE_DN);
    set_member(&env.slapd, "platform", "delete", ALICE_DN);
    let token2 = env.token_ok(&session, "prod").await;
    secrets.push(token2.clone());
    let a = env.review_on("prod", &token2).await;
    assert!(a.authenticated(), "{a:?}");
    assert_eq!(a.groups(), ["sre"]);

    // Logout: refused on every replica within a second, caches warm on both.
    warm(&env, &token2).await;
    let (status, body) = env.post("/logout", json!({"session": session})).await;
    assert_eq!((status, &body["ended"]), (200, &json!(true)), "{body}");
    refused_everywhere_within(&env, &token2, Duration::from_secs(1), "logout").await;
    let (status, _) = env.token(&session, "prod").await;
    assert_eq!(status, 401, "no token from an ended session");

    // Two sessions (two machines): an admin ends one; the other goes on.
    let laptop = env.login("alice", "alice-pw").await;
    let desktop = env.login("alice", "alice-pw").await;
    secrets.extend([laptop.clone(), desktop.clone()]);
    let laptop_token = env.token_ok(&laptop, "prod").await;
    secrets.push(laptop_token.clone());
    warm(&env, &laptop_token).await;
    let mut admin = env.admin().await;
    let listed = admin
        .list_sessions(with_admin(ListSessionsRequest {
            username: "alice".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(listed.len(), 2, "{listed:?}");
    let laptop_id = laptop[4..4 + 32].to_owned();
    assert!(
        listed.iter().any(|s| s.session_id == laptop_id),
        "{listed:?}"
    );
    let refused = admin
        .list_sessions(tonic::Request::new(ListSessionsRequest {
            username: "alice".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let ended = admin
        .end_session(with_admin(EndSessionRequest {
            session_id: laptop_id,
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(ended.ended);
    refused_everywhere_within(&env, &laptop_token, Duration::from_secs(1), "EndSession").await;
    assert_eq!(env.token(&laptop, "prod").await.0, 401);
    // The operator's view: `kube-authd sessions list` shows the one left.
    let out = std::process::Command::new(common::procs::bin("kube-authd"))
        .arg("sessions")
        .args(["--authd", &format!("http://{}", env.replicas[1].addr)])
        .arg("--admin-token-file")
        .arg(env._dir.path().join("admin.token"))
        .args(["list", "--user", "alice"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let listed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.starts_with(&desktop[4..4 + 32]), "{listed}");
    let desktop_token = env.token_ok(&desktop, "prod").await;
    secrets.push(desktop_token.clone());
    assert!(env.review_on("prod", &desktop_token).await.authenticated());

    // Sessions and tokens live in Redis: both replicas restarted, the session still
    // issues tokens and its token still authenticates (from Redis, no cache left).
    let dir = env._dir.path().to_owned();
    for r in &mut env.replicas {
        r.kill();
        r.restart(&dir);
    }
    for r in &env.replicas {
        assert!(
            grpc_review(r, "prod", &desktop_token).await,
            "{} after restart",
            r.name
        );
    }
    let after_restart = env.token_ok(&desktop, "prod").await;
    secrets.push(after_restart.clone());
    eventually(
        Duration::from_secs(10),
        "the edge sees the restarted replicas",
        || async { env.review_on("prod", &after_restart).await.authenticated() },
    )
    .await;

    // An account deleted from the directory gets no next token; its session ends.
    let bob = env.login("bob", "bob-pw").await;
    secrets.push(bob.clone());
    let bob_token = env.token_ok(&bob, "staging").await;
    secrets.push(bob_token.clone());
    let a = env.review_on("staging", &bob_token).await;
    assert_eq!((a.username(), a.groups()), ("bob", vec!["sre".to_owned()]));
    env.slapd
        .modify("dn: uid=bob,ou=people,ou=ops,dc=example,dc=org\nchangetype: delete\n");
    let (status, body) = env.token(&bob, "staging").await;
    assert_eq!(status, 401, "{body}");
    refused_everywhere_within(&env, &bob_token, Duration::from_secs(1), "account deleted").await;

    // Failed logins are throttled per user (whatever the case of the name, as the
    // directory matches it): after three (the first wrong password above and two more),
    // even the right password waits.
    for user in ["alice", "ALICE"] {
        let (status, _) = env
            .post("/login", json!({"username": user, "password": "guess-pw"}))
            .await;
        assert_eq!(status, 401);
    }
    // The throttled attempt never reaches the directory: no bind as alice.
    let alice_binds = || {
        env.slapd
            .log()
            .lines()
            .filter(|l| l.contains(&format!(" BIND dn=\"{ALICE_DN}\"")))
            .count()
    };
    let binds = alice_binds();
    assert!(binds >= 3, "the wrong passwords were checked by binds");
    let (status, body) = env
        .post(
            "/login",
            json!({"username": "alice", "password": "alice-pw"}),
        )
        .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(alice_binds(), binds, "a throttled login reached LDAP");
    // And per client address: two more failures under other names (five from this
    // address), then even another user's right password waits.
    for user in ["dup", "nobody"] {
        let (status, _) = env
            .post("/login", json!({"username": user, "password": "guess-pw"}))
            .await;
        assert_eq!(status, 401, "{user}");
    }
    let (status, body) = env
        .post(
            "/login",
            json!({"username": common::ldap::WEIRD_USER, "password": "weird-pw"}),
        )
        .await;
    assert_eq!(status, 429, "{body}");
    // Counted at authd (since the restart above): only these logins were refused or
    // throttled.
    let mut rejected = 0.0;
    let mut throttled = 0.0;
    for r in &env.replicas {
        let (_, text) = admin_get(&r.proc().ready_field("admin"), "/metrics").await;
        let m = |result| {
            metric_sum(
                &text,
                "authd_session_calls_total",
                &[("method", "login"), ("result", result)],
            )
        };
        rejected += m("rejected");
        throttled += m("throttled");
    }
    assert_eq!((rejected, throttled), (4.0, 2.0));

    // Nothing secret in Redis (keys and values) or in any log.
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    // The secret halves on their own too.
    let halves: Vec<&str> = secrets
        .iter()
        .filter_map(|s| s.split_once('.').map(|(_, secret)| secret))
        .collect();
    let dump = env.redis.dump();
    assert!(dump.iter().any(|(k, _)| k.contains("sess:")), "{dump:?}");
    assert_no_secrets(&dump, &secrets);
    assert_no_secrets(&dump, &halves);
    assert!(
        !dump
            .iter()
            .any(|(k, v)| k.contains("alice") || v.contains("alice")),
        "a user name in Redis in the clear"
    );
    let logs = env.logs();
    assert!(logs.contains("session opened"), "debug logs expected");
    for s in secrets
        .iter()
        .chain(&halves)
        .chain(&["nope-pw", "guess-pw"])
    {
        assert!(
            !logs.contains(s),
            "a log holds a secret ({} bytes)",
            s.len()
        );
    }

    // Redis down: the store cannot answer, and that is never a yes. A token no replica
    // has cached (a forged secret on a real session id) is "could not decide" (500, which
    // kube-apiserver treats as not authenticated); logins and tokens are refused (503).
    let forged = format!("{}.{}", &desktop_token[..4 + 32], "0".repeat(64));
    env.redis.kill();
    env.review_on("prod", &forged).await.assert_undecided();
    let (status, _) = env
        .post("/login", json!({"username": "dup", "password": "dup-pw"}))
        .await;
    assert_eq!(status, 503);
    assert_eq!(env.token(&desktop, "prod").await.0, 503);
}

/// `kube-authd up` serves the login routes too: the token file's users log in with their
/// token as the password, and get a token for the one cluster `up` serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_lets_the_demo_users_log_in() {
    let dir = temp_dir();
    let d = dir.path();
    let demo = token("demo");
    write(
        d,
        "tokens.csv",
        &format!("{demo},demo-viewer,1001,\"demo:users\"\n"),
    );
    let up = start_up(d, &d.join("tokens.csv"));
    let kc = Kubeconfig::load(&d.join("state/webhook-kubeconfig.yaml"));
    let login = up.ready_field("login");
    let person = anonymous_client(&kc.ca_pem, Proto::H1);
    let post = |path: &str, body: Value| {
        let req = person.post(format!("{login}{path}")).json(&body);
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    let (status, _) = post(
        "/login",
        json!({"username": "demo-admin", "password": demo}),
    )
    .await;
    assert_eq!(
        status, 401,
        "another user's token is not this user's password"
    );
    let (status, body) = post(
        "/login",
        json!({"username": "demo-viewer", "password": demo}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let session = body["session"].as_str().unwrap().to_owned();
    let (status, body) = post("/token", json!({"session": session, "cluster": "default"})).await;
    assert_eq!(status, 200, "{body}");
    let issued = body["token"].as_str().unwrap().to_owned();
    let apiserver = client(&kc.ca_pem, Proto::H2, None);
    let a = review(&apiserver, &kc.server, "authentication.k8s.io/v1", &issued).await;
    assert!(a.authenticated(), "{a:?}");
    assert_eq!(
        (a.username(), a.groups()),
        ("demo-viewer", vec!["demo:users".to_owned()])
    );
    let logs = up.stderr();
    for secret in [&demo, &session, &issued] {
        assert!(!logs.contains(secret.as_str()), "a log holds a secret");
    }
}
