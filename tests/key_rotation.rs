//! Key rotation without a flag day, played as the operator (and as the revoked user who
//! hopes a rotation forgets them), with real binaries, real Redis and real PostgreSQL:
//!
//! - the cache HMAC key: replicas on the old key and on a ring with the new key current
//!   serve side by side; every still-valid credential keeps working on both; a revocation
//!   made under the old key still holds on the ring, one made on the ring holds on a
//!   replica still on the old key, and lifting by name lifts it on both;
//! - the PostgreSQL token secret key: tokens hashed under the old key verify under a ring
//!   with the new key current, are re-hashed under the new key when used (`token keys`
//!   counts them), then verify with the old key gone; a wrong secret stays refused.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::fleet::Replica;
use common::postgres::Postgres;
use common::procs::kube_authd_revoke;
use common::redis::RedisServer;
use common::*;

const ADMIN_SECRET: &str = "key-rotation-admin-secret-0123456789";

async fn review(r: &Replica, token: &str) -> bool {
    r.review(token).await
}

/// Polls until `r` answers `want` for `token`, within a second.
async fn answers_within_a_second(r: &Replica, token: &str, want: bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while review(r, token).await != want {
        assert!(
            Instant::now() < deadline,
            "{what}: {} did not answer authenticated={want} within 1 s",
            r.name
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `kube-authd ARGS` in `dir` with `stdin`; its stdout (it must succeed).
fn run(dir: &Path, args: &[&str], stdin: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new(bin("kube-authd"))
        .current_dir(dir)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "kube-authd {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// authd with the cache key ring `current` + `previous` (file names in `dir`), Redis
/// shared, long TTLs (so only revocations make a replica refuse what it cached).
fn cache_toml(redis: &RedisServer, current: &str, previous: &[&str]) -> String {
    let previous: Vec<String> = previous.iter().map(|p| format!("{p:?}")).collect();
    format!(
        "[cache]\nhmac_key_file = {current:?}\nprevious_hmac_key_files = [{}]\n\
         positive_ttl = \"10m\"\nlocal_ttl = \"10m\"\n\
         [cache.redis]\nurl = \"{}\"\ntimeout = \"3s\"\n\
         [admin]\ntoken_file = \"admin.token\"\n\
         [[sources]]\nname = \"static\"\ntype = \"token_file\"\npath = \"tokens.csv\"\n",
        previous.join(", "),
        redis.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cache_key_rotates_without_losing_a_revocation_or_a_credential() {
    let dir = temp_dir();
    let d = dir.path();
    let (alice, bob, carol, dave) = (token("alice"), token("bob"), token("carol"), token("dave"));
    write(
        d,
        "tokens.csv",
        &format!("{alice},alice,1\n{bob},bob,2\n{carol},carol,3\n{dave},dave,4\n"),
    );
    write(d, "old.key", "the-old-cache-hmac-key-0123456789abcdef\n");
    write(d, "new.key", "the-new-cache-hmac-key-0123456789abcdef\n");
    write(d, "admin.token", &format!("{ADMIN_SECRET}\n"));
    let redis = RedisServer::start(d, None, &[]);

    // Before the rotation: one replica on the old key revokes alice (until lifted) and
    // dave's token.
    let old = Replica::start(d, "authd-old", &cache_toml(&redis, "old.key", &[]));
    for t in [&alice, &bob, &carol, &dave] {
        assert!(review(&old, t).await);
    }
    kube_authd_revoke(d, &old.addr, &["--user", "alice"], None);
    kube_authd_revoke(d, &old.addr, &["--token-stdin"], Some(&format!("{dave}\n")));
    assert!(!review(&old, &alice).await && !review(&old, &dave).await);

    // Mid-rotation: a replica whose ring has the new key current and the old one previous
    // serves next to the old one.
    let ring_toml = cache_toml(&redis, "new.key", &["old.key"]);
    let ring = Replica::start(d, "authd-ring", &ring_toml);
    assert!(
        !review(&ring, &alice).await,
        "alice, revoked under the old key"
    );
    assert!(
        !review(&ring, &dave).await,
        "dave's token, revoked under the old key"
    );
    assert!(review(&ring, &bob).await && review(&ring, &carol).await);
    // A revocation made on the ring holds on the replica still on the old key.
    kube_authd_revoke(d, &ring.addr, &["--user", "bob"], None);
    assert!(!review(&ring, &bob).await);
    answers_within_a_second(&old, &bob, false, "bob revoked on the ring").await;
    // Lifted by name on the ring: lifted under both keys, on both replicas.
    kube_authd_revoke(d, &ring.addr, &["lift", "--user", "alice"], None);
    answers_within_a_second(&ring, &alice, true, "alice lifted").await;
    answers_within_a_second(&old, &alice, true, "alice lifted").await;
    assert!(review(&old, &carol).await && review(&ring, &carol).await);

    // `audit hash` with the ring names the token under both keys: current first.
    let ids = run(d, &["audit", "hash", "--config", "authd-ring.toml"], &carol);
    let old_id = run(d, &["audit", "hash", "--hmac-key-file", "old.key"], &carol);
    let new_id = run(d, &["audit", "hash", "--hmac-key-file", "new.key"], &carol);
    assert_eq!(ids, format!("{new_id}{old_id}"));

    // The rotation ends: every replica on the ring (old key still previous), restarted;
    // the revocations hold and every still-valid credential works.
    let mut old = old;
    old.kill();
    let ring2 = Replica::start(d, "authd-ring2", &ring_toml);
    assert!(!review(&ring2, &bob).await && !review(&ring2, &dave).await);
    assert!(review(&ring2, &alice).await && review(&ring2, &carol).await);
}

/// A config naming the same key twice, or a short previous key, is refused at start-up
/// naming the field.
#[test]
fn a_bad_key_ring_is_refused_naming_the_field() {
    let dir = temp_dir();
    let d = dir.path();
    write(d, "tokens.csv", "t0123456789,alice,1\n");
    write(d, "k.key", "a-cache-hmac-key-0123456789abcdef-0123\n");
    write(d, "short.key", "short\n");
    let base = "[[sources]]\nname = \"static\"\ntype = \"token_file\"\npath = \"tokens.csv\"\n";
    for (ring, expected) in [
        (
            "hmac_key_file = \"k.key\"\nprevious_hmac_key_files = [\"k.key\"]",
            "cache.previous_hmac_key_files[0]",
        ),
        (
            "hmac_key_file = \"k.key\"\nprevious_hmac_key_files = [\"short.key\"]",
            "cache.previous_hmac_key_files[0]",
        ),
        (
            "previous_hmac_key_files = [\"k.key\"]",
            "cache.previous_hmac_key_files",
        ),
    ] {
        write(d, "bad.toml", &format!("[cache]\n{ring}\n{base}"));
        let out = std::process::Command::new(bin("kube-authd"))
            .args(["config", "check"])
            .arg(d.join("bad.toml"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{ring}: accepted");
        assert!(err.contains(expected), "{ring}: {err}");
    }
}

/// authd with the token secret key ring: `current`, plus `others` as previous or next keys.
fn pg_toml(pg: &Postgres, current: &str, others: &str) -> String {
    format!(
        "[[sources]]\nname = \"db\"\ntype = \"postgres\"\ndatabase_url = \"{}\"\n\
         secret_key_file = {current:?}\n{others}\nmigrate = true\ntimeout = \"2s\"\n",
        pg.url(),
    )
}

fn create(d: &Path, pg: &Postgres, key: &str, user: &str) -> String {
    let key = d.join(key);
    run(
        d,
        &[
            "token",
            "create",
            "--database-url",
            &pg.url(),
            "--secret-key-file",
            key.to_str().unwrap(),
            "--user",
            user,
        ],
        "",
    )
    .trim()
    .to_owned()
}

/// `kube-authd token keys` with the ring `new.key` + `old.key`: `(current, previous)`
/// live-token counts.
fn key_counts(d: &Path, pg: &Postgres) -> (u64, u64) {
    let (new, old) = (d.join("new.key"), d.join("old.key"));
    let out = run(
        d,
        &[
            "token",
            "keys",
            "--database-url",
            &pg.url(),
            "--secret-key-file",
            new.to_str().unwrap(),
            "--previous-secret-key-file",
            old.to_str().unwrap(),
        ],
        "",
    );
    let count = |role: &str| {
        out.lines()
            .find(|l| l.split(' ').nth(1) == Some(role))
            .and_then(|l| l.split(' ').nth(2))
            .unwrap_or_else(|| panic!("no {role} line in {out}"))
            .parse()
            .unwrap()
    };
    (count("current"), count("previous"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_tokens_survive_a_secret_key_rotation() {
    let dir = temp_dir();
    let d = dir.path();
    write(d, "old.key", "the-old-token-secret-key-0123456789abcdef\n");
    write(d, "new.key", "the-new-token-secret-key-0123456789abcdef\n");
    let pg = Postgres::start(d);
    // Issued before the rotation, under the old key.
    let (erin, frank) = (
        create(d, &pg, "old.key", "erin"),
        create(d, &pg, "old.key", "frank"),
    );
    assert_eq!(key_counts(d, &pg), (0, 2));

    // Step 1 of the runbook (the new key as a next key) on one replica, step 2 (the new
    // key current, the old one previous) on another: a rolling change.
    let next = "next_secret_key_files = [\"new.key\"]";
    let lagging = Replica::start(d, "authd-lagging", &pg_toml(&pg, "old.key", next));
    let previous = "previous_secret_key_files = [\"old.key\"]";
    let ring = Replica::start(d, "authd-ring", &pg_toml(&pg, "new.key", previous));
    assert!(
        review(&ring, &erin).await,
        "erin, hashed under the previous key"
    );
    assert_eq!(
        key_counts(d, &pg),
        (1, 1),
        "erin re-hashed under the current key"
    );
    // The replica not yet switched verifies the re-hashed row and leaves it as it is.
    assert!(
        review(&lagging, &erin).await,
        "erin on a replica still on the old key"
    );
    // New tokens are issued under the new key.
    let gina = create(d, &pg, "new.key", "gina");
    assert!(review(&ring, &gina).await && review(&lagging, &gina).await);
    assert_eq!(
        key_counts(d, &pg),
        (2, 1),
        "no replica moved a row back to the old key"
    );
    // An attacker with a valid id and a made-up secret gets nothing from the ring.
    let (id, _) = frank.rsplit_once('.').unwrap();
    let forged = format!("{id}.{}", "0".repeat(64));
    assert!(!review(&ring, &forged).await && !review(&lagging, &forged).await);

    // Frank uses his token during the window; then no live token is under the old key.
    assert!(review(&ring, &frank).await);
    assert_eq!(key_counts(d, &pg), (3, 0));

    // Step 3: the old key removed everywhere; every still-valid token works.
    let new_only = Replica::start(d, "authd-new", &pg_toml(&pg, "new.key", ""));
    for t in [&erin, &frank, &gina] {
        assert!(review(&new_only, t).await);
    }
    assert!(!review(&new_only, &forged).await);
}
