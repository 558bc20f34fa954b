//! Issue 13, points 1 and 6, played as the attacker against the real binaries on loopback:
//! a caller without kube-apiserver's client certificate (none at all, or one from another
//! CA) gets no answer from `kube-authd up` nor from the documented split configuration, and
//! no review reaches authd (`authd_verdicts_total` stays 0); an edge without a client CA
//! does not start unless told to, loudly; plaintext to a remote host is refused at load,
//! before anything connects (the hosts are `.invalid` names, so nothing could).

mod common;

use std::path::Path;

use common::fleet::{certs_init_with, identity};
use common::hostile::assert_no_secret_logged;
use common::*;

const SOURCES: &str =
    "[[sources]]\nname = \"static\"\ntype = \"token_file\"\npath = \"tokens.csv\"\n";

/// Writes `tokens.csv` with alice's token and returns the token.
fn alice(dir: &Path) -> String {
    let alice = token("alice");
    write(
        dir,
        "tokens.csv",
        &format!("{alice},alice,uid-alice,\"dev\"\n"),
    );
    alice
}

/// How many reviews reached authd's verdict path, from a `/metrics` page.
async fn verdicts(admin: &str) -> f64 {
    let (code, text) = admin_get(admin, "/metrics").await;
    assert_eq!(code, 200);
    metric_sum(&text, "authd_verdicts_total", &[])
}

/// Every attacker client must fail to get an answer from `url` for `token`: the TLS
/// handshake refuses it (no HTTP response at all, so no identity).
async fn assert_refused(clients: &[(&str, reqwest::Client)], url: &str, token: &str) {
    for (who, c) in clients {
        let r = c
            .post(format!("{url}?timeout=30s"))
            .header("content-type", "application/json")
            .body(review_body(V1, token, &[]))
            .send()
            .await;
        match r {
            Err(_) => {}
            Ok(resp) => panic!(
                "{who} on {url}: got HTTP {} {:?}",
                resp.status(),
                resp.text().await
            ),
        }
    }
}

/// Attackers for an edge whose serving CA is `ca`: no certificate over HTTP/1.1 and HTTP/2,
/// another deployment's kube-apiserver certificate (same CN as the real one), and an
/// unbound client certificate from that other CA.
fn attackers(ca: &[u8], foreign: &Path) -> Vec<(&'static str, reqwest::Client)> {
    vec![
        ("no certificate (h1)", anonymous_client(ca, Proto::H1)),
        ("no certificate (h2)", anonymous_client(ca, Proto::H2)),
        (
            "kube-apiserver:default from another CA",
            client(ca, Proto::H2, Some(identity(foreign, "apiserver-default"))),
        ),
        (
            "client certificate from another CA",
            client(
                ca,
                Proto::H1,
                Some(identity(foreign, "client-kube-apiserver")),
            ),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn up_answers_only_the_kube_apiserver_certificate_it_issued() {
    let dir = temp_dir();
    let d = dir.path();
    let token = alice(d);
    let up = start_up(d, &d.join("tokens.csv"));
    let kc = Kubeconfig::load(&d.join("state/webhook-kubeconfig.yaml"));
    let admin = up.ready_field("admin");
    let foreign = temp_dir();
    certs_init_with(foreign.path(), &["--cluster", "default"]);

    assert_refused(&attackers(&kc.ca_pem, foreign.path()), &kc.server, &token).await;
    assert_eq!(
        verdicts(&admin).await,
        0.0,
        "a refused caller reached authd"
    );

    assert!(
        kc.client_cert_pem.is_some() && kc.client_key_pem.is_some(),
        "the webhook kubeconfig carries kube-apiserver's client certificate"
    );

    // The kubeconfig's certificate, as kube-apiserver presents it, is answered.
    let apiserver = client(&kc.ca_pem, Proto::H2, None);
    let a = review(&apiserver, &kc.server, V1, &token).await;
    assert!(a.authenticated() && a.username() == "alice", "{a:?}");
    assert_eq!(verdicts(&admin).await, 1.0);

    // The printed curl presents the certificate too.
    let out = up.stdout();
    let curl = out
        .lines()
        .find(|l| l.trim_start().starts_with("curl "))
        .expect("a curl line");
    assert!(
        curl.contains("--cert ") && curl.contains("apiserver-default.crt"),
        "{curl}"
    );
    assert_no_secret_logged(&[&up], &[&token]);
}

/// The documented split configuration: `tls.client_ca` for `POST /authenticate`, a cluster
/// with its own CA, and one without (it uses `tls.client_ca`; before, it was open).
#[tokio::test(flavor = "multi_thread")]
async fn split_mode_answers_only_kube_apiserver_certificates() {
    let dir = temp_dir();
    let d = dir.path();
    certs_init_with(d, &["--cluster", "default", "--cluster", "dev"]);
    let token = alice(d);
    // authd serves only the clusters it declares: the edge's three routes.
    let authd = start_authd(
        d,
        "authd",
        "127.0.0.1:0",
        &format!("{SOURCES}[clusters.default]\n[clusters.dev]\n[clusters.staging]\n"),
    );
    let cfg = write(
        d,
        "edge.toml",
        &format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             [tls]\ncert = \"edge.crt\"\nkey = \"edge.key\"\nclient_ca = \"cluster-default-ca.crt\"\n\
             [authd]\nendpoint = \"http://{}\"\n\
             [clusters.dev]\nclient_ca = \"cluster-dev-ca.crt\"\n\
             [clusters.staging]\n",
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
    let ca = std::fs::read(d.join("ca.crt")).unwrap();
    let foreign = temp_dir();
    certs_init_with(foreign.path(), &["--cluster", "default"]);
    let admin = authd.ready_field("admin");

    for route in [
        "/authenticate",
        "/clusters/dev/authenticate",
        "/clusters/staging/authenticate",
    ] {
        assert_refused(
            &attackers(&ca, foreign.path()),
            &format!("{base}{route}"),
            &token,
        )
        .await;
    }
    assert_eq!(
        verdicts(&admin).await,
        0.0,
        "a refused caller reached authd"
    );

    let default = client(&ca, Proto::H2, Some(identity(d, "apiserver-default")));
    let a = review(&default, &format!("{base}/authenticate"), V1, &token).await;
    assert!(a.authenticated(), "{a:?}");
    let dev = client(&ca, Proto::H1, Some(identity(d, "apiserver-dev")));
    let a = review(
        &dev,
        &format!("{base}/clusters/dev/authenticate"),
        V1,
        &token,
    )
    .await;
    assert!(a.authenticated(), "{a:?}");
    assert_eq!(verdicts(&admin).await, 2.0);
    assert_no_secret_logged(&[&authd, &edge], &[&token]);
}

/// Without `tls.client_ca` the edge does not start, and says which field and which opt-out;
/// with the opt-out it starts and warns that anyone can test tokens.
#[tokio::test(flavor = "multi_thread")]
async fn an_edge_without_a_client_ca_needs_the_explicit_opt_out() {
    let dir = temp_dir();
    let d = dir.path();
    certs_init(d, &[]);
    let token = alice(d);
    let authd = start_authd(d, "authd", "127.0.0.1:0", SOURCES);
    let grpc = authd.ready_field("grpc");
    let edge_toml = |extra: &str| {
        format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             [tls]\ncert = \"edge.crt\"\nkey = \"edge.key\"\n{extra}\
             [authd]\nendpoint = \"http://{grpc}\"\n[clusters.dev]\n"
        )
    };
    let cfg = write(d, "open.toml", &edge_toml(""));
    let p = Proc::refusing("edge-open", "authd-edge", &cfg, d);
    let err = p.stderr();
    assert!(err.contains("tls.client_ca"), "{err}");
    assert!(
        err.contains("tls.insecure_allow_anonymous_reviews = true"),
        "{err}"
    );

    let cfg = write(
        d,
        "anonymous.toml",
        &edge_toml("insecure_allow_anonymous_reviews = true\n"),
    );
    let edge = Proc::start_named(
        "edge-anonymous",
        "authd-edge",
        &["serve", "--config", cfg.to_str().unwrap()],
        d,
        "authd-edge ready",
    );
    let url = format!("{}/authenticate", edge.ready_field("https"));
    let ca = std::fs::read(d.join("ca.crt")).unwrap();
    let a = review(&anonymous_client(&ca, Proto::H2), &url, V1, &token).await;
    assert!(a.authenticated(), "the opt-out opens the route: {a:?}");
    let log = edge.stderr();
    assert!(
        log.contains(
            "tls.insecure_allow_anonymous_reviews: these clusters' review routes answer any"
        ),
        "{log}"
    );
    assert!(
        log.contains("answering a caller without a client certificate"),
        "{log}"
    );
    assert_no_secret_logged(&[&authd, &p, &edge], &[&token]);
}

#[test]
fn authd_refuses_a_plaintext_remote_jwks_url_naming_the_field() {
    let dir = temp_dir();
    let d = dir.path();
    let cfg = write(
        d,
        "authd.toml",
        "listen = \"127.0.0.1:0\"\n\
         [[sources]]\nname = \"idp\"\ntype = \"jwt\"\nissuer = \"https://idp.invalid\"\n\
         audiences = [\"k8s\"]\nalgorithms = [\"ES256\"]\njwks_url = \"http://idp.invalid/jwks\"\n",
    );
    let p = Proc::refusing("authd", "authd", &cfg, d);
    let err = p.stderr();
    assert!(err.contains("sources[0].jwks_url"), "{err}");
    assert!(err.contains("allow_plaintext = true"), "{err}");
}

#[test]
fn revoke_refuses_to_send_the_admin_secret_in_plaintext_to_a_remote_host() {
    let dir = temp_dir();
    let d = dir.path();
    let secret = write(d, "admin.secret", "0123456789abcdef0123456789abcdef\n");
    let out = std::process::Command::new(bin("kube-authd"))
        .args([
            "revoke",
            "--authd",
            "http://authd.invalid:50051",
            "--user",
            "alice",
        ])
        .arg("--admin-token-file")
        .arg(&secret)
        .output()
        .expect("run kube-authd revoke");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--authd") && err.contains("--allow-plaintext"),
        "{err}"
    );
    assert!(!err.contains("0123456789abcdef"), "{err}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("0123456789abcdef"),
        "the admin secret was printed"
    );
}

/// The edge sends every raw token to authd: `http://` to a host other than this machine is
/// refused at load, naming the field and the opt-out, before anything connects (the host is
/// an `.invalid` name); with the opt-out it starts.
#[test]
fn edge_refuses_plaintext_to_a_remote_authd_naming_the_field() {
    let dir = temp_dir();
    let d = dir.path();
    certs_init(d, &[]);
    for (i, authd) in [
        "endpoint = \"http://authd.invalid:50051\"",
        "dns = \"authd-headless.invalid:50051\"",
    ]
    .iter()
    .enumerate()
    {
        let field = if authd.starts_with("dns") {
            "authd.dns"
        } else {
            "authd.endpoint"
        };
        let cfg = write(
            d,
            &format!("edge{i}.toml"),
            &format!(
                "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{EDGE_TLS}\
                 [authd]\n{authd}\n"
            ),
        );
        let p = Proc::refusing(&format!("edge-plaintext{i}"), "authd-edge", &cfg, d);
        let err = p.stderr();
        assert!(err.contains(field), "{err}");
        assert!(err.contains("authd.allow_plaintext = true"), "{err}");
    }
    // The opt-out loads: the edge starts (its replica is unreachable, so it is not ready,
    // but it serves).
    let cfg = write(
        d,
        "edge-opt-out.toml",
        &format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{EDGE_TLS}\
             [authd]\nendpoint = \"http://authd.invalid:50051\"\nallow_plaintext = true\n"
        ),
    );
    let _edge = Proc::start_named(
        "edge-opt-out",
        "authd-edge",
        &["serve", "--config", cfg.to_str().unwrap()],
        d,
        "authd-edge ready",
    );
}

/// `kube-authd token create` to a remote PostgreSQL without TLS is refused before it
/// connects or reads anything, naming the flag and the opt-out, as the source's
/// `database_url` is.
#[test]
fn token_create_refuses_a_plaintext_remote_database() {
    let dir = temp_dir();
    let d = dir.path();
    let key = write(d, "token.key", &hex(&rand_bytes::<32>()));
    for (command, url) in [
        ("create", "postgres://kube_authd@db.invalid:5432/authd"),
        (
            "disable",
            "postgres://kube_authd@db.invalid/authd?sslmode=prefer",
        ),
    ] {
        let mut cmd = std::process::Command::new(bin("kube-authd"));
        cmd.args(["token", command, "--database-url", url]);
        if command == "create" {
            cmd.arg("--secret-key-file")
                .arg(&key)
                .args(["--user", "alice"]);
        } else {
            cmd.args(["--id", "0123456789abcdef"]);
        }
        let out = cmd.output().expect("run kube-authd token");
        assert!(!out.status.success(), "{command}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--database-url") && err.contains("--allow-plaintext"),
            "{command}: {err}"
        );
        assert!(err.contains("sslmode"), "{command}: {err}");
        assert!(out.stdout.is_empty(), "{command}: no token was printed");
    }
}
