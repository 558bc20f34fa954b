//! Issue 17, points 4–6: what a new operator hit, each tried again as they would.
//! `config check` refuses what `serve` refuses; `kube-authd revoke` presents a client
//! certificate and says how to be allowed; `certs init` and `webhook-config` check their
//! input before writing anything; `up` with a configuration writes no demo tokens and
//! serves its `admin_listen`, and can revoke out of the box; an edge pointed at a wrong
//! port says why; `token create` names the database it cannot reach and refuses other
//! schemes; `AUTHD_LOG_JSON=1` is accepted.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::fleet::{certs_init_with, free_port};
use common::*;

fn kube_authd(dir: &Path, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Output {
    use std::io::Write;
    let mut child = Command::new(bin("kube-authd"))
        .args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kube-authd");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const SOURCES: &str = "[clusters.default]\n\
     [[sources]]\nname = \"static\"\ntype = \"token_file\"\npath = \"tokens.csv\"\n";

/// Each of these `authd serve` refuses at start-up; `config check` used to call them valid.
#[test]
fn config_check_refuses_what_serve_refuses() {
    let dir = temp_dir();
    let d = dir.path();
    write(d, "tokens.csv", "tok-0123456789,ann,1\n");
    write(d, "short.key", "12345678");
    write(d, "good.key", "a-good-hmac-key-0123456789abcdef0123\n");
    let cases = [
        (
            "missing HMAC key file",
            "[cache]\nhmac_key_file = \"missing.key\"\n",
            "cache.hmac_key_file",
        ),
        (
            "8-byte HMAC key",
            "[cache]\nhmac_key_file = \"short.key\"\n",
            "at least 32 bytes",
        ),
        (
            "missing admin secret",
            "[admin]\ntoken_file = \"missing.token\"\n",
            "admin.token_file",
        ),
        (
            "missing TLS files",
            "[tls]\ncert = \"missing.crt\"\nkey = \"missing.key\"\n",
            "missing.crt",
        ),
        (
            "audit log in a missing folder",
            "[cache]\nhmac_key_file = \"good.key\"\n[audit]\npath = \"no/such/folder/audit.log\"\n",
            "audit.path",
        ),
    ];
    for (i, (what, toml, needle)) in cases.iter().enumerate() {
        let cfg = write(
            d,
            &format!("case{i}.toml"),
            &format!("listen = \"127.0.0.1:0\"\n{toml}{SOURCES}"),
        );
        let check = kube_authd(d, &["config", "check", cfg.to_str().unwrap()], None, &[]);
        assert!(
            !check.status.success(),
            "{what}: config check said {}",
            stdout(&check)
        );
        assert!(
            stderr(&check).contains(needle),
            "{what}: {}",
            stderr(&check)
        );
        let serve = Proc::refusing(&format!("authd-{i}"), "authd", &cfg, d);
        assert!(
            serve.stderr().contains(needle),
            "{what}: {}",
            serve.stderr()
        );
    }
    // The same file with every part present passes both.
    let good = write(
        d,
        "good.toml",
        &format!("listen = \"127.0.0.1:0\"\n[cache]\nhmac_key_file = \"good.key\"\n{SOURCES}"),
    );
    let check = kube_authd(d, &["config", "check", good.to_str().unwrap()], None, &[]);
    assert!(check.status.success(), "{}", stderr(&check));
    // A typo inside a source table is reported at its own line, once.
    let typo = write(d, "typo.toml", &format!("{SOURCES}timout = \"2s\"\n"));
    let check = kube_authd(d, &["config", "check", typo.to_str().unwrap()], None, &[]);
    let err = stderr(&check);
    assert!(err.contains("line 6") && err.contains("timout"), "{err}");
    assert_eq!(err.matches("unknown field").count(), 1, "said once: {err}");
}

/// Against an authd requiring client certificates, `revoke` presents one; without it, or
/// with one not allowed to revoke, it says how to be allowed.
#[tokio::test]
async fn revoke_presents_a_client_certificate_and_says_how_to_be_allowed() {
    let dir = temp_dir();
    let d = dir.path();
    certs_init_with(d, &["--client", "ops", "--client", "intruder"]);
    write(d, "tokens.csv", "tok-0123456789,bob,1\n");
    write(d, "admin.token", "an-admin-secret-0123456789\n");
    let toml = format!(
        "[tls]\ncert = \"authd.crt\"\nkey = \"authd.key\"\nclient_ca = \"ca.crt\"\n\
         [admin]\ntoken_file = \"admin.token\"\n\
         [clients.ops]\nmethods = [\"RevokeUser\", \"ListRevocations\", \"Unrevoke\"]\n\
         [clients.intruder]\nmethods = [\"Authenticate\"]\nclusters = [\"default\"]\n{SOURCES}"
    );
    let authd = start_authd_as_written(d, "authd", "127.0.0.1:0", &toml);
    let url = format!("https://{}", authd.ready_field("grpc"));
    let ca = d.join("ca.crt");
    let base = ["revoke", "--authd", &url, "--ca", ca.to_str().unwrap()];
    let with = |extra: &[&str]| {
        let args: Vec<&str> = base.iter().copied().chain(extra.iter().copied()).collect();
        kube_authd(d, &args, None, &[])
    };
    // The admin secret alone: the TLS handshake fails, and the error says what to add.
    let o = with(&["--admin-token-file", "admin.token", "--user", "bob"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--client-cert"), "{}", stderr(&o));
    // ops's certificate: allowed by [clients.ops].
    let o = with(&[
        "--client-cert",
        "client-ops.crt",
        "--client-key",
        "client-ops.key",
        "--user",
        "bob",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("revoked"), "{}", stdout(&o));
    // intruder's: PERMISSION_DENIED, with the hint.
    let o = with(&[
        "--client-cert",
        "client-intruder.crt",
        "--client-key",
        "client-intruder.key",
        "--user",
        "bob",
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("PermissionDenied") && err.contains("[clients.NAME]"),
        "{err}"
    );
    // A key that is not the certificate's is refused before anything is sent.
    let o = with(&[
        "--client-cert",
        "client-ops.crt",
        "--client-key",
        "client-intruder.key",
        "list",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("does not belong"), "{}", stderr(&o));
}

#[test]
fn certs_init_checks_every_name_before_writing() {
    let dir = temp_dir();
    let d = dir.path();
    let init = |extra: &[&str]| {
        let mut args = vec!["certs", "init", "--dir", "pki"];
        args.extend(extra);
        kube_authd(d, &args, None, &[])
    };
    assert!(init(&[]).status.success());
    let before = std::fs::read(d.join("pki/edge.crt")).unwrap();
    let o = init(&["--cluster", "../prod"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--cluster"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(d.join("pki/edge.crt")).unwrap(),
        before,
        "edge.crt rewritten before the bad name was noticed"
    );
}

#[test]
fn webhook_config_refuses_a_private_key_as_ca_and_a_mismatched_pair() {
    let dir = temp_dir();
    let d = dir.path();
    certs_init_with(d, &["--cluster", "prod"]);
    let server = "https://authn.example:8443/authenticate";
    let o = kube_authd(
        d,
        &["webhook-config", "--server", server, "--ca", "ca.key"],
        None,
        &[],
    );
    assert!(
        !o.status.success(),
        "a private key went into the kubeconfig"
    );
    assert!(stderr(&o).contains("private key"), "{}", stderr(&o));
    assert!(!stdout(&o).contains("PRIVATE"));
    let o = kube_authd(
        d,
        &[
            "webhook-config",
            "--server",
            server,
            "--ca",
            "ca.crt",
            "--client-cert",
            "apiserver-prod.crt",
            "--client-key",
            "edge-client.key",
        ],
        None,
        &[],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("does not belong"), "{}", stderr(&o));
    let o = kube_authd(
        d,
        &[
            "webhook-config",
            "--server",
            server,
            "--ca",
            "ca.crt",
            "--client-cert",
            "apiserver-prod.crt",
            "--client-key",
            "apiserver-prod.key",
        ],
        None,
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `up --config`: the configuration's sources and admin listener, no demo tokens, and no
/// curl line that cannot work.
#[tokio::test]
async fn up_with_a_config_writes_no_demo_tokens_and_serves_its_admin_listen() {
    let dir = temp_dir();
    let d = dir.path();
    let token = token("ann");
    write(d, "tokens.csv", &format!("{token},ann,1\n"));
    let admin_port = free_port();
    let cfg = write(
        d,
        "authd.toml",
        &format!("listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n{SOURCES}"),
    );
    let up = Proc::start(
        "kube-authd",
        &[
            "up",
            "--state-dir",
            d.join("state").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--config",
            cfg.to_str().unwrap(),
        ],
        d,
        "kube-authd ready",
    );
    assert_eq!(up.ready_field("admin"), format!("127.0.0.1:{admin_port}"));
    let (status, _) = admin_get(&format!("127.0.0.1:{admin_port}"), "/readyz").await;
    assert_eq!(status, 200);
    assert!(
        !d.join("state/tokens.csv").exists(),
        "demo tokens written although the configuration names its sources"
    );
    let out = up.stdout();
    assert!(!out.contains("grep -v"), "{out}");
    assert!(out.contains("TOKEN"), "{out}");
    assert!(!up.stderr().contains("None"), "{}", up.stderr());
}

/// `up` out of the box: an admin secret in the state folder, and the printed revoke
/// command works (it used to say PermissionDenied).
#[tokio::test]
async fn up_can_revoke_out_of_the_box() {
    let dir = temp_dir();
    let d = dir.path();
    let ann = token("ann");
    let tokens = write(d, "tokens.csv", &format!("{ann},ann,1\n"));
    let up = start_up(d, &tokens);
    let secret = d.join("state/admin.token");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let grpc = up.ready_field("grpc");
    assert!(
        up.stdout().contains("--admin-token-file"),
        "{}",
        up.stdout()
    );
    let o = kube_authd(
        d,
        &[
            "revoke",
            "--authd",
            &format!("http://{grpc}"),
            "--admin-token-file",
            secret.to_str().unwrap(),
            "--user",
            "ann",
        ],
        None,
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let kc = Kubeconfig::load(&d.join("state/webhook-kubeconfig.yaml"));
    let c = client(&kc.ca_pem, Proto::H2, None);
    review(&c, &kc.server, V1, &ann).await.assert_denied();
}

/// An edge whose authd endpoint is a port nobody listens on says so in its log, with the
/// reason, instead of staying silent and unready.
#[test]
fn an_edge_pointed_at_a_wrong_port_says_why() {
    let dir = temp_dir();
    let d = dir.path();
    certs_init(d, &[]);
    let mut edge = Proc::spawn(
        "edge",
        "authd-edge",
        &[
            "serve",
            "--config",
            write(
                d,
                "edge.toml",
                &format!(
                    "listen = \"127.0.0.1:0\"\n{EDGE_TLS}[authd]\nendpoint = \"http://127.0.0.1:{}\"\n",
                    free_port()
                ),
            )
            .to_str()
            .unwrap(),
        ],
        d,
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while !edge.stderr().contains("not healthy") {
        assert!(
            Instant::now() < deadline,
            "no word on the unreachable authd: {}",
            edge.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let line = edge
        .stderr()
        .lines()
        .find(|l| l.contains("not healthy"))
        .unwrap()
        .to_owned();
    assert!(
        line.contains("127.0.0.1:") && line.contains("reason"),
        "{line}"
    );
    edge.kill();
}

#[test]
fn token_create_names_the_database_it_cannot_reach_and_refuses_other_schemes() {
    let dir = temp_dir();
    let d = dir.path();
    write(
        d,
        "token.key",
        "postgres-token-secret-key-0123456789abcdef\n",
    );
    let port = free_port();
    let create = |url: &str| {
        kube_authd(
            d,
            &[
                "token",
                "create",
                "--database-url",
                url,
                "--secret-key-file",
                "token.key",
                "--user",
                "ann",
            ],
            None,
            &[],
        )
    };
    let o = create(&format!("postgres://authd@127.0.0.1:{port}/authd"));
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("is it running"),
        "{err}"
    );
    let o = create("mysql://authd:pw@127.0.0.1/authd");
    assert!(!o.status.success(), "a mysql:// URL was accepted");
    let err = stderr(&o);
    assert!(err.contains("postgres://"), "{err}");
    assert!(!err.contains(":pw@"), "the URL's password echoed: {err}");
}

#[test]
fn log_json_is_accepted_as_1_from_the_environment() {
    let dir = temp_dir();
    let d = dir.path();
    write(d, "tokens.csv", "tok-0123456789,ann,1\n");
    let cfg = write(
        d,
        "authd.toml",
        &format!("listen = \"127.0.0.1:0\"\n{SOURCES}"),
    );
    let authd = Proc::start_env(
        "authd",
        "authd",
        &["serve", "--config", cfg.to_str().unwrap()],
        d,
        "authd ready",
        &[("AUTHD_LOG_JSON", "1")],
    );
    let first = authd.stderr().lines().next().unwrap_or_default().to_owned();
    assert!(first.starts_with('{'), "not JSON: {first}");
    for value in ["0", "false"] {
        let o = kube_authd(
            d,
            &["config", "check", cfg.to_str().unwrap()],
            None,
            &[("AUTHD_LOG_JSON", value)],
        );
        assert!(o.status.success(), "AUTHD_LOG_JSON={value}: {}", stderr(&o));
    }
}
