//! Issue 17: the audit trail. One JSON line per decision — through the edge as
//! kube-apiserver calls it and over gRPC — naming the credential only by its keyed id, which
//! `kube-authd audit hash` reproduces; a full queue drops records (counted) and never holds
//! a review up.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::basic_auth::{BasicAuthServer, Mode};
use common::grpc;
use common::hostile::assert_no_secret_logged;
use common::procs::kube_authd_revoke;
use common::*;
use serde_json::Value;

const ADMIN_SECRET: &str = "audit-test-admin-secret-0123456789";

/// authd with `RUST_LOG=trace`, so the scan for tokens covers every log line it can write.
fn start_authd_traced(dir: &Path, name: &str, toml: &str) -> Proc {
    let cfg = write(
        dir,
        &format!("{name}.toml"),
        &format!("listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{toml}"),
    );
    Proc::start_env(
        name,
        "authd",
        &["serve", "--config", cfg.to_str().unwrap()],
        dir,
        "authd ready",
        &[("RUST_LOG", "trace,h2=info,hyper=info,tower=info")],
    )
}

/// The audit file's lines, parsed, once it holds `n` (the writer is asynchronous).
async fn audit_lines(path: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn audit_hash(dir: &Path, config: &str, token: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new(bin("kube-authd"))
        .args([
            "audit",
            "hash",
            "--config",
            dir.join(config).to_str().unwrap(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{token}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_is_one_audit_line_that_names_no_token() {
    let dir = temp_dir();
    let d = dir.path();
    certs_init(d, &[]);
    let (alice, bob, junk) = (token("alice"), token("bob"), token("junk"));
    write(
        d,
        "tokens.csv",
        &format!("{alice},alice,uid-alice,\"dev,ops\"\n{bob},bob,uid-bob\n"),
    );
    write(d, "hmac.key", "audit-test-hmac-key-0123456789abcdef\n");
    write(d, "admin.token", &format!("{ADMIN_SECRET}\n"));
    let idp = BasicAuthServer::start(&[("carol", "carol-pw")]);
    idp.http.set_mode(Mode::Fail);
    let toml = format!(
        "[cache]\nhmac_key_file = \"hmac.key\"\n[admin]\ntoken_file = \"admin.token\"\n\
         [audit]\npath = \"audit.log\"\n\
         [[sources]]\nname = \"idp\"\ntype = \"basic_auth\"\nurl = \"{}\"\ntimeout = \"2s\"\n\
         [[sources]]\nname = \"static\"\ntype = \"token_file\"\npath = \"tokens.csv\"\n\
         [clusters.default]\n",
        idp.template()
    );
    let authd = start_authd_traced(d, "authd", &toml);
    let grpc_addr = authd.ready_field("grpc");
    let edge = start_edge(d, "edge", &grpc_addr, "");
    let url = format!("{}/authenticate", edge.ready_field("https"));
    let ca = std::fs::read(d.join("ca.crt")).unwrap();
    let client = client(&ca, Proto::H2, None);

    // Through the edge, as kube-apiserver: alice three times (a fresh answer, then the
    // cache), a junk token, carol while her source fails, bob revoked.
    for _ in 0..3 {
        assert!(review(&client, &url, V1, &alice).await.authenticated());
    }
    review(&client, &url, V1, &junk).await.assert_denied();
    review(&client, &url, V1, "carol:carol-pw")
        .await
        .assert_undecided();
    let (dd, g, b) = (d.to_owned(), grpc_addr.clone(), bob.clone());
    tokio::task::spawn_blocking(move || {
        kube_authd_revoke(&dd, &g, &["--token-stdin"], Some(&format!("{b}\n")))
    })
    .await
    .unwrap();
    review(&client, &url, V1, &bob).await.assert_denied();
    // Over gRPC, for a cluster authd does not serve.
    let c = grpc::connect(&authd).await;
    assert!(!grpc::ask(&c, &alice, "nope").await.unwrap().authenticated);

    let lines = audit_lines(&d.join("audit.log"), 7).await;
    assert_eq!(lines.len(), 7, "one line per decision: {lines:#?}");
    let outcomes: Vec<(&str, &str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["outcome"].as_str().unwrap(),
                l["reason"].as_str().unwrap_or(""),
                l["cache"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("authenticated", "", "miss"),
            ("authenticated", "", "hit_local"),
            ("authenticated", "", "hit_local"),
            ("rejected", "no_source", "miss"),
            ("undecided", "source_undecided", "miss"),
            ("revoked", "revoked", "miss"),
            ("rejected", "unknown_cluster", "none"),
        ]
    );
    let first = &lines[0];
    assert_eq!(first["user"], "alice");
    assert_eq!(first["groups"], serde_json::json!(["dev", "ops"]));
    assert_eq!(first["source"], "static");
    assert_eq!(first["cluster"], "default");
    assert_eq!(first["entry"], "authenticate");
    assert_eq!(first["caller"], "anonymous");
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    assert!(first["latency_us"].as_u64().is_some());
    assert!(!first["request_id"].as_str().unwrap().is_empty());
    assert_eq!(lines[6]["cluster"], "nope");
    assert!(lines[3].get("user").is_none());

    // `audit hash` finds exactly a credential's lines.
    let alice_id = audit_hash(d, "authd.toml", &alice);
    assert_eq!(alice_id.len(), 64, "{alice_id}");
    let of = |id: &str| lines.iter().filter(|l| l["token_id"] == id).count();
    assert_eq!(
        of(&alice_id),
        4,
        "alice's three reviews and the unknown cluster"
    );
    assert_eq!(of(&audit_hash(d, "authd.toml", &bob)), 1);
    assert_eq!(of(&audit_hash(d, "authd.toml", &junk)), 1);

    // No token or password anywhere: the audit log, and every log line at trace level.
    let audit_text = std::fs::read_to_string(d.join("audit.log")).unwrap();
    for secret in [&alice, &bob, &junk, "carol-pw"] {
        assert!(!audit_text.contains(secret), "the audit log holds a token");
    }
    assert_no_secret_logged(&[&authd, &edge], &[&alice, &bob, &junk, "carol-pw"]);
    assert!(
        authd.stderr().contains("TRACE") || authd.stderr().contains("trace"),
        "the scan ran at trace level"
    );
}

/// The audit log is a FIFO nobody reads: the writer blocks on it, the queue (16) fills,
/// and every further record is dropped and counted while 3,000 reviews are all answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_audit_queue_drops_records_and_holds_no_review_up() {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = temp_dir();
    let d = dir.path();
    let alice = token("alice");
    write(d, "tokens.csv", &format!("{alice},alice,uid-alice,dev\n"));
    write(d, "hmac.key", "audit-test-hmac-key-0123456789abcdef\n");
    let fifo = d.join("audit.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo (coreutils) must be installed");
    assert!(made.success());
    // Opened for reading (never read) so authd's open for writing does not wait for a
    // reader; once the pipe's buffer is full, every write blocks.
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let toml = "[cache]\nhmac_key_file = \"hmac.key\"\n\
         [audit]\npath = \"audit.fifo\"\nqueue = 16\ninclude_identity = false\n\
         [[sources]]\nname = \"static\"\ntype = \"token_file\"\npath = \"tokens.csv\"\n\
         [clusters.default]\n";
    let authd = start_authd_traced(d, "authd", toml);
    let c = grpc::connect(&authd).await;
    const REVIEWS: usize = 3000;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (c, alice) = (c.clone(), alice.clone());
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for _ in (w..REVIEWS).step_by(8) {
                ok += usize::from(
                    grpc::ask(&c, &alice, "default")
                        .await
                        .unwrap()
                        .authenticated,
                );
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    assert_eq!(ok, REVIEWS, "every review answered, authenticated");
    // A liveness bound, not a benchmark: blocked on the audit log, this would never end.
    assert!(started.elapsed() < Duration::from_secs(120));
    let (_, metrics) = admin_get(&authd.ready_field("admin"), "/metrics").await;
    let dropped = metric_sum(&metrics, "authd_audit_dropped_total", &[]);
    // The pipe (64 KiB), the writer's buffer and the queue hold a few hundred at most.
    assert!(
        dropped >= 2000.0,
        "records beyond the queue are dropped and counted: {dropped}"
    );
    // What reached the pipe: lines without username or groups.
    use std::io::Read;
    let mut buf = vec![0u8; 64 * 1024];
    let n = reader.read(&mut buf).unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    let first: Value = serde_json::from_str(text.lines().next().expect("some lines")).unwrap();
    assert_eq!(first["outcome"], "authenticated");
    assert!(first.get("user").is_none() && first.get("groups").is_none());
    assert!(first["token_id"].as_str().is_some());
    assert!(!text.contains(&alice));
    assert_no_secret_logged(&[&authd], &[&alice]);
}
