//! Issue 4, LDAP and PostgreSQL sources, end to end: TokenReviews over real HTTPS to the
//! edge, authd in front of a private slapd and a private PostgreSQL that the tests start.

mod common;

use std::path::Path;
use std::time::Duration;

use common::ldap::{Slapd, SERVICE_DN, SERVICE_PASSWORD, WEIRD_USER};
use common::postgres::Postgres;
use common::*;
use serde_json::json;

const LDAP: &str = "dir";
const PG: &str = "db";

/// Group search with two levels of nesting.
const GROUPS: &str = "group_base = \"ou=groups,dc=example,dc=org\"\ngroup_nesting_depth = 2\n";

/// Sources: StartTLS, ldaps and memberOf variants (prefixed, so they come first), the plain
/// LDAP source, then PostgreSQL.
fn sources(dir: &Path, slapd: &Slapd, pg: &Postgres) -> String {
    write(dir, "ldap.pw", &format!("{SERVICE_PASSWORD}\n"));
    write(dir, "token.key", &hex(&rand_bytes::<32>()));
    let ldap = |name: &str, url: String, extra: &str| {
        format!(
            "[[sources]]
name = \"{name}\"
type = \"ldap\"
url = \"{url}\"
bind_dn = \"{SERVICE_DN}\"
bind_password_file = \"ldap.pw\"
user_base = \"dc=example,dc=org\"
uid_attribute = \"uidNumber\"
timeout = \"1s\"
{extra}
[sources.extra_attributes]
mail = \"example.org/mail\"
"
        )
    };
    format!(
        "{}{}{}{}{}
[[sources]]
name = \"{PG}\"
type = \"postgres\"
database_url = \"{}\"
secret_key_file = \"token.key\"
migrate = true
max_connections = 4
timeout = \"1s\"
",
        ldap(
            "dir-starttls",
            slapd.url(),
            &format!("{GROUPS}starttls = true\nca_file = \"ca.crt\"\nprefix = \"tls:\"")
        ),
        ldap(
            "dir-ldaps",
            slapd.ldaps_url(),
            &format!("{GROUPS}ca_file = \"ca.crt\"\nprefix = \"ldaps:\"")
        ),
        ldap("dir-memberof", slapd.url(), "prefix = \"mo:\""),
        ldap(
            "dir-memberof-rdn",
            slapd.url(),
            "prefix = \"rdn:\"\nmember_of_group_name = \"first_rdn\""
        ),
        ldap(LDAP, slapd.url(), GROUPS),
        pg.url()
    )
}

/// Fields drop in order: processes first, the temp dir they live in last.
struct Env {
    split: Split,
    slapd: Slapd,
    pg: Postgres,
    client: reqwest::Client,
    dir: tempfile::TempDir,
}

impl Env {
    fn start() -> Env {
        let dir = temp_dir();
        certs_init(dir.path(), &[]);
        let slapd = Slapd::start(
            dir.path(),
            (&dir.path().join("edge.crt"), &dir.path().join("edge.key")),
        );
        let pg = Postgres::start(dir.path());
        let authd_toml = sources(dir.path(), &slapd, &pg);
        let split = Split::start(dir.path(), &authd_toml, "");
        let client = client(&split.ca_pem, Proto::H2, None);
        Env {
            dir,
            slapd,
            pg,
            split,
            client,
        }
    }

    async fn review(&self, token: &str) -> Answer {
        review(&self.client, &self.split.url, V1, token).await
    }

    async fn calls(&self, source: &str) -> f64 {
        let (_, text) = admin_get(&self.split.authd.ready_field("admin"), "/metrics").await;
        metric_sum(&text, "authd_source_calls_total", &[("source", source)])
    }

    /// `kube-authd token create`; returns (stdout, stderr).
    fn token_create(&self, args: &[&str]) -> (String, String) {
        let key = self.dir.path().join("token.key");
        let out = std::process::Command::new(bin("kube-authd"))
            .args(["token", "create", "--database-url", &self.pg.url()])
            .args(["--secret-key-file", key.to_str().unwrap()])
            .args(args)
            .output()
            .expect("run kube-authd token create");
        assert!(out.status.success(), "token create: {out:?}");
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }

    fn new_token(&self, args: &[&str]) -> String {
        let (stdout, _) = self.token_create(args);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1, "stdout is the token alone: {stdout:?}");
        lines[0].to_owned()
    }
}

fn user(a: &Answer) -> &serde_json::Value {
    &a.body["status"]["user"]
}

/// Binds as `dn` in the slapd stats log.
fn binds(slapd: &Slapd, dn: &str) -> usize {
    slapd
        .log()
        .lines()
        // slapd logs each bind twice: the request (`method=`) and the result (`mech=`).
        .filter(|l| l.contains("BIND dn=") && l.contains(" method="))
        .filter(|l| l.to_lowercase().contains(&dn.to_lowercase()))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn ldap_source_end_to_end() {
    let mut env = Env::start();

    // Success: canonical user name, uid attribute, groups through two nesting levels, extra.
    let a = env.review("alice:alice-pw").await;
    assert!(a.authenticated(), "{a:?}");
    assert_eq!(
        user(&a),
        &json!({
            "username": "alice",
            "uid": "1001",
            "groups": ["engineering", "everyone", "platform"],
            "extra": {
                "example.org/mail": ["alice@example.org"],
                "authd.kube-authd.io/source": [LDAP],
                "authd.kube-authd.io/cluster": ["default"],
            },
        })
    );
    // Users in another OU; the name with filter metacharacters logs in as itself.
    let b = env.review("bob:bob-pw").await;
    assert_eq!(user(&b)["groups"], json!(["sre"]), "{b:?}");
    // No mail attribute: only the keys recording which source and cluster decided.
    assert_eq!(
        user(&b)["extra"],
        json!({"authd.kube-authd.io/source": [LDAP], "authd.kube-authd.io/cluster": ["default"]}),
        "{b:?}"
    );
    let w = env.review(&format!("{WEIRD_USER}:weird-pw")).await;
    assert!(w.authenticated(), "{w:?}");
    assert_eq!(w.username(), WEIRD_USER);
    assert_eq!(w.groups(), vec!["sre"]);
    // LDAP matching is case-insensitive; the directory's spelling is the user name.
    assert_eq!(env.review("ALICE:alice-pw").await.username(), "alice");
    // StartTLS and ldaps against the same directory, trusting the test CA only.
    let t = env.review("tls:bob:bob-pw").await;
    assert_eq!(t.username(), "bob", "{t:?}");
    let s = env.review("ldaps:bob:bob-pw").await;
    assert_eq!(s.username(), "bob", "{s:?}");
    env.review("tls:bob:wrong").await.assert_denied();
    // Groups from the memberOf attribute: the whole DN by default, so same-named groups in
    // different branches stay apart; the first RDN's value, unescaped, when asked for.
    let m = env.review("mo:alice:alice-pw").await;
    assert_eq!(
        m.groups(),
        vec![
            "cn=a\\2Cb team,ou=groups,dc=example,dc=org",
            "cn=platform,ou=groups,dc=example,dc=org"
        ],
        "{m:?}"
    );
    assert!(env.review("mo:bob:bob-pw").await.groups().is_empty());
    let r = env.review("rdn:alice:alice-pw").await;
    assert_eq!(r.groups(), vec!["a,b team", "platform"], "{r:?}");
    // The first_rdn opt-out merges same-named groups: authd says so at start-up, once per
    // source that chose it.
    let warned = env
        .split
        .authd
        .stderr()
        .lines()
        .filter(|l| {
            l.contains("member_of_group_name = \"first_rdn\"") && l.contains("dir-memberof-rdn")
        })
        .count();
    assert!(
        warned >= 1,
        "no first_rdn warning:\n{}",
        env.split.authd.stderr()
    );

    // Wrong password, unknown user, a uid held by two entries.
    env.review("alice:alice-pw-wrong").await.assert_denied();
    env.review("nobody:whatever").await.assert_denied();
    env.review("dup:dup-pw").await.assert_denied();

    // Empty password: rejected before any bind (an empty-password bind would succeed).
    let alice_dn = "uid=alice,ou=people,ou=eng,dc=example,dc=org";
    let before = binds(&env.slapd, alice_dn);
    assert!(
        before > 0,
        "alice's earlier logins show as binds in the log"
    );
    env.review("alice:").await.assert_denied();
    assert_eq!(
        binds(&env.slapd, alice_dn),
        before,
        "no bind for an empty password"
    );

    // Injection: none of these may match another entry or error into a yes.
    let long = "a".repeat(10_000);
    for user in [
        "*",
        "al*",
        "alice)(uid=*",
        "*)(uid=*))(|(uid=*",
        "alice)(|(objectClass=*)",
        "\\",
        "alice\\",
        "alice\0",
        "\0",
        "we*ird)(name",
        "we\\2aird\\29\\28name\\5c",
        long.as_str(),
    ] {
        for password in ["alice-pw", "weird-pw", "*"] {
            let a = env.review(&format!("{user}:{password}")).await;
            a.assert_denied();
        }
    }
    // A very long password is refused without reaching the directory.
    env.review(&format!("alice:{}", "p".repeat(5000)))
        .await
        .assert_denied();

    // Routing: user:password tokens never reach PostgreSQL, kad_ tokens never reach LDAP.
    let pg_calls = env.calls(PG).await;
    env.review("carol:carol-pw").await.assert_denied();
    assert_eq!(
        env.calls(PG).await,
        pg_calls,
        "LDAP token shown to postgres"
    );
    assert!(
        !env.pg.log().contains("carol"),
        "LDAP user name reached postgres"
    );
    let ldap_calls = env.calls(LDAP).await;
    let pg_token = env.new_token(&["--user", "dave"]);
    let d = env.review(&pg_token).await;
    assert_eq!(d.username(), "dave", "{d:?}");
    assert_eq!(
        env.calls(LDAP).await,
        ldap_calls,
        "postgres token shown to LDAP"
    );
    assert!(env.calls(PG).await > pg_calls);
    let (_, secret) = pg_token.split_once('.').unwrap();
    assert!(!env.slapd.log().contains(secret));

    // Pooling: each LDAP source bound its service account once (5 sources), and no
    // connection was ever bound as two different DNs (user binds use their own).
    assert!(
        binds(&env.slapd, SERVICE_DN) <= 5,
        "service connection not reused:\n{}",
        env.slapd.log()
    );
    let mut dn_of_conn = std::collections::HashMap::new();
    for line in env
        .slapd
        .log()
        .lines()
        .filter(|l| l.contains(" BIND dn=\""))
    {
        let conn = line
            .split_whitespace()
            .find(|w| w.starts_with("conn="))
            .unwrap();
        let dn = line
            .split("BIND dn=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let first = dn_of_conn.entry(conn.to_owned()).or_insert(dn.to_owned());
        assert_eq!(first, dn, "{conn} bound as two DNs");
    }
    assert!(dn_of_conn.len() > 10);

    // Slow directory: a stopped slapd is "could not decide" (500), never a yes or a no.
    env.slapd.signal(libc::SIGSTOP);
    let started = std::time::Instant::now();
    env.review("bob:bob-pw-slow").await.assert_undecided();
    eprintln!(
        "stopped slapd: 500 after {:?} (timeout 1s)",
        started.elapsed()
    );
    env.review("alice:alice-pw-slow").await.assert_undecided();
    env.slapd.signal(libc::SIGCONT);
    // Not cached: the same token is decided once the directory answers again.
    env.review("bob:bob-pw-slow").await.assert_denied();

    // Directory down, then back: 500 while down, and the same token accepted afterwards.
    env.slapd.stop();
    let fresh = "bob:bob-pw";
    let tls = "tls:alice:alice-pw";
    env.review(&format!("alice:{}", "x"))
        .await
        .assert_undecided();
    env.review(tls).await.assert_undecided();
    env.slapd.run();
    let a = env.review("alice:x").await;
    a.assert_denied();
    let t = env.review(tls).await;
    assert_eq!(t.username(), "alice", "{t:?}");
    assert!(env.review(fresh).await.authenticated());

    // The password never appears in any log.
    for log in [env.split.authd.stderr(), env.split.edge.stderr()] {
        for secret in ["alice-pw", "bob-pw", "weird-pw", SERVICE_PASSWORD] {
            assert!(!log.contains(secret), "{secret} logged");
        }
    }
}

/// A database role that must prove its password: `password_file` supplies it, and a wrong
/// one is a fault (retryable 500), never a verdict.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_password_file_authenticates_the_connection() {
    let dir = temp_dir();
    let pg = Postgres::start(dir.path());
    const PASSWORD: &str = "pw-7c1e-reader";
    pg.psql(&format!("CREATE ROLE reader LOGIN PASSWORD '{PASSWORD}'"));
    pg.psql("GRANT CREATE ON SCHEMA public TO reader");
    pg.require_password("reader");
    write(dir.path(), "right.pw", &format!("{PASSWORD}\n"));
    // The schema and a token, by `kube-authd token create` with the same password file.
    let key = write(dir.path(), "token.key", &hex(&rand_bytes::<32>()));
    let out = std::process::Command::new(bin("kube-authd"))
        .args(["token", "create", "--database-url", &pg.url_as("reader")])
        .args([
            "--password-file",
            dir.path().join("right.pw").to_str().unwrap(),
        ])
        .args(["--secret-key-file", key.to_str().unwrap()])
        .args(["--user", "erin", "--groups", "ops"])
        .output()
        .expect("run kube-authd token create");
    assert!(out.status.success(), "token create: {out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let source = |password_file: &str| {
        format!(
            "[[sources]]\nname = \"{PG}\"\ntype = \"postgres\"\ndatabase_url = \"{}\"\n\
             password_file = \"{password_file}\"\nsecret_key_file = \"token.key\"\n\
             migrate = false\ntimeout = \"2s\"\n",
            pg.url_as("reader")
        )
    };
    let split = Split::start(dir.path(), &source("right.pw"), "");
    let c = client(&split.ca_pem, Proto::H1, None);
    let a = review(&c, &split.url, V1, &token).await;
    assert!(a.authenticated(), "{a:?}");
    assert_eq!(a.username(), "erin");
    assert_eq!(a.groups(), vec!["ops"]);

    // The same source with a wrong password, in a second authd beside the first.
    let other = dir.path().join("wrong");
    std::fs::create_dir(&other).unwrap();
    std::fs::copy(&key, other.join("token.key")).unwrap();
    write(&other, "wrong.pw", "not-the-password\n");
    let wrong = Split::start(&other, &source("wrong.pw"), "");
    let c = client(&wrong.ca_pem, Proto::H1, None);
    review(&c, &wrong.url, V1, &token).await.assert_undecided();
    assert!(
        pg.log()
            .contains("password authentication failed for user \"reader\""),
        "PostgreSQL checked the password"
    );
    for log in [split.authd.stderr(), wrong.authd.stderr()] {
        assert!(!log.contains(PASSWORD), "the password is in authd's log");
        assert!(!log.contains(&token), "the token is in authd's log");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_source_end_to_end() {
    let mut env = Env::start();

    // authd applied the schema at start (migrate = true), before any token was made.
    eventually(
        Duration::from_secs(10),
        "authd migrated the schema",
        || async {
            env.pg
                .psql("SELECT to_regclass('authd_tokens') IS NOT NULL")
                .trim()
                == "t"
        },
    )
    .await;

    // token create: the token alone on stdout, a message on stderr; it works at the edge.
    let (stdout, stderr) = env.token_create(&[
        "--user",
        "erin",
        "--uid",
        "u-erin",
        "--groups",
        "dev,ops",
        "--extra",
        "example.org/team=blue",
        "--ttl",
        "24h",
    ]);
    let token = stdout.trim_end().to_owned();
    assert_eq!(stdout, format!("{token}\n"));
    assert!(token.starts_with("kad_"), "{token}");
    assert!(stderr.contains("shown only once"), "{stderr}");
    assert!(!stderr.contains(&token));
    let a = env.review(&token).await;
    assert_eq!(
        user(&a),
        &json!({"username": "erin", "uid": "u-erin", "groups": ["dev", "ops"],
                "extra": {"example.org/team": ["blue"],
                          "authd.kube-authd.io/source": [PG],
                          "authd.kube-authd.io/cluster": ["default"]}}),
        "{a:?}"
    );

    // The database holds no plaintext secret.
    let (id, secret) = token.strip_prefix("kad_").unwrap().split_once('.').unwrap();
    let row = env.pg.psql(&format!(
        "SELECT row_to_json(t)::text FROM authd_tokens t WHERE id = '{id}'"
    ));
    assert!(row.contains("erin"), "{row}");
    assert!(!row.contains(secret), "plaintext secret stored: {row}");
    let all = env
        .pg
        .psql("SELECT string_agg(row_to_json(t)::text, ' ') FROM authd_tokens t");
    assert!(!all.contains(secret));

    // Wrong secret, unknown id.
    let wrong = format!("kad_{id}.{}", "0".repeat(64));
    env.review(&wrong).await.assert_denied();
    let unknown = format!("kad_{}.{secret}", "0123456789abcdef");
    env.review(&unknown).await.assert_denied();

    // Disabled: `kube-authd token disable`, and by SQL.
    let t2 = env.new_token(&["--user", "frank"]);
    let id2 = t2.strip_prefix("kad_").unwrap().split_once('.').unwrap().0;
    let out = std::process::Command::new(bin("kube-authd"))
        .args([
            "token",
            "disable",
            "--database-url",
            &env.pg.url(),
            "--id",
            id2,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty());
    env.review(&t2).await.assert_denied();

    // Expired; and a cached yes does not outlive the row's expiry.
    let short = env.new_token(&["--user", "gina", "--ttl", "2s"]);
    assert!(env.review(&short).await.authenticated());
    let past = env.new_token(&["--user", "hank"]);
    let past_id = past
        .strip_prefix("kad_")
        .unwrap()
        .split_once('.')
        .unwrap()
        .0;
    env.pg.psql(&format!(
        "UPDATE authd_tokens SET expires_at = now() - interval '1 minute' WHERE id = '{past_id}'"
    ));
    env.review(&past).await.assert_denied();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    env.review(&short).await.assert_denied();

    // Malformed tokens with the prefix are never queried.
    let queries = |pg: &Postgres| pg.log().matches("FROM authd_tokens WHERE id").count();
    let before = queries(&env.pg);
    for bad in [
        format!("kad_{id}.{secret}x"),
        format!("kad_' OR '1'='1.{secret}"),
        format!("kad_{id}'--.{secret}"),
        format!("kad_*.{secret}"),
        format!("kad_{id}\0.{secret}"),
        format!("kad_{id}.{}", "\\".repeat(64)),
        format!("kad_{}.{secret}", "a".repeat(10_000)),
        format!("kad_{}", "x".repeat(100)),
        "kad_".to_string(),
    ] {
        env.review(&bad).await.assert_denied();
    }
    assert_eq!(
        queries(&env.pg),
        before,
        "a malformed token reached the database"
    );

    // Slow database (every server process stopped): 500 within authd's timeout, then the
    // same token is accepted once it answers again.
    let slow = env.new_token(&["--user", "ivy"]);
    env.pg.signal_all(libc::SIGSTOP);
    let started = std::time::Instant::now();
    env.review(&slow).await.assert_undecided();
    eprintln!(
        "stopped postgres: 500 after {:?} (timeout 1s)",
        started.elapsed()
    );
    env.pg.signal_all(libc::SIGCONT);
    eventually(
        Duration::from_secs(10),
        "postgres answers again",
        || async {
            let a = env.review(&slow).await;
            assert!(a.status == 500 || a.authenticated(), "{a:?}");
            a.authenticated()
        },
    )
    .await;

    // A statement stuck behind a lock hits statement_timeout: 500, not a no.
    let locked = env.new_token(&["--user", "jack"]);
    let mut lock = env
        .pg
        .hold("BEGIN; LOCK TABLE authd_tokens IN ACCESS EXCLUSIVE MODE;");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    env.review(&locked).await.assert_undecided();
    eprintln!(
        "locked table: 500 after {:?} (timeout 1s)",
        started.elapsed()
    );
    let _ = lock.kill();
    let _ = lock.wait();
    eventually(Duration::from_secs(10), "lock released", || async {
        let a = env.review(&locked).await;
        assert!(a.status == 500 || a.authenticated(), "{a:?}");
        a.authenticated()
    })
    .await;

    // Database down, then back.
    let down = env.new_token(&["--user", "kim"]);
    env.pg.stop();
    env.review(&down).await.assert_undecided();
    env.pg.run();
    eventually(Duration::from_secs(15), "postgres back", || async {
        let a = env.review(&down).await;
        assert!(a.status == 500 || a.authenticated(), "{a:?}");
        a.authenticated()
    })
    .await;

    // No token or secret in any log.
    for log in [
        env.split.authd.stderr(),
        env.split.edge.stderr(),
        env.pg.log(),
    ] {
        assert!(!log.contains(secret), "secret logged");
    }
}

#[test]
fn misconfigured_sources_name_the_field() {
    let dir = temp_dir();
    write(dir.path(), "short.key", "too short");
    let cases = [
        (
            "[[sources]]\nname = \"d\"\ntype = \"ldap\"\nurl = \"ldap://127.0.0.1:1\"\n\
             bind_dn = \"cn=x\"\nbind_password_file = \"missing.pw\"\nuser_base = \"dc=x\"\n",
            "bind_password_file",
        ),
        (
            "[[sources]]\nname = \"d\"\ntype = \"ldap\"\nurl = \"http://x\"\n\
             bind_dn = \"cn=x\"\nbind_password_file = \"missing.pw\"\nuser_base = \"dc=x\"\n",
            "sources[0].url",
        ),
        (
            "[[sources]]\nname = \"p\"\ntype = \"postgres\"\n\
             database_url = \"postgres://u@127.0.0.1:1/db\"\nsecret_key_file = \"short.key\"\n",
            "secret_key_file",
        ),
        (
            "[[sources]]\nname = \"p\"\ntype = \"postgres\"\n\
             database_url = \"postgres://u@127.0.0.1:1/db\"\nsecret_key_file = \"k\"\n\
             timeout = \"0s\"\n",
            "sources[0].timeout",
        ),
    ];
    for (i, (toml, field)) in cases.iter().enumerate() {
        let cfg = write(dir.path(), &format!("bad{i}.toml"), toml);
        let mut p = Proc::spawn(
            &format!("bad{i}"),
            "authd",
            &["serve", "--config", cfg.to_str().unwrap()],
            dir.path(),
            &[],
        );
        assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(1), "case {i}");
        let err = p.stderr();
        assert!(err.contains(field), "case {i}: {field} not named in {err}");
    }
}
