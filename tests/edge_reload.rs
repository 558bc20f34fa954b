//! `edge.toml` hot reload and `kube-authd config check --edge`, on real processes: an
//! edited file changes the routes and the authd replicas of a running edge without a
//! restart, connections opened before the edit do not keep the old routes, a broken edit
//! keeps the edge serving the last good configuration and logs the field, and `config
//! check --edge` calls valid exactly the files `authd-edge serve` starts with.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Proc, Proto, V1};

/// The edge's file: fixed header (ports as started), the given middle, TLS, `[authd]`.
fn edge_toml(middle: &str, authd: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{middle}\n{}[authd]\nendpoint = \"http://{authd}\"\n",
        common::EDGE_TLS
    )
}

/// Replaces `path` atomically, as an editor or a ConfigMap update does: the watcher never
/// reads half a file.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// One TokenReview; a transport error (a connection closed by a reload under the request)
/// is retried once on the same client, which then opens a new connection.
async fn review(client: &reqwest::Client, url: &str, token: &str) -> common::Answer {
    let send = || {
        client
            .post(format!("{url}?timeout=30s"))
            .header("content-type", "application/json")
            .body(common::review_body(V1, token, &[]))
            .send()
    };
    let resp = match send().await {
        Ok(r) => r,
        Err(_) => send().await.unwrap_or_else(|e| panic!("POST {url}: {e:?}")),
    };
    common::answer(resp).await
}

async fn reloads(edge: &Proc, result: &str) -> f64 {
    let (_, text) = common::admin_get(&edge.ready_field("admin"), "/metrics").await;
    common::metric_sum(&text, "edge_config_reloads_total", &[("result", result)])
}

async fn wait_reloads(edge: &Proc, result: &str, n: f64) {
    common::eventually(
        Duration::from_secs(15),
        &format!("edge_config_reloads_total{{result={result:?}}} = {n}"),
        || async { reloads(edge, result).await == n },
    )
    .await;
}

#[tokio::test]
async fn an_edited_edge_toml_changes_routes_and_replicas_and_a_bad_edit_keeps_serving() {
    let dir = common::temp_dir();
    let d = dir.path();
    common::certs_init(d, &[]);
    let (tok_a, tok_b) = (common::token("a"), common::token("b"));
    common::write(d, "tokens-a.csv", &format!("{tok_a},alice,1\n"));
    common::write(d, "tokens-b.csv", &format!("{tok_b},bob,2\n"));
    let sources = |file: &str| {
        format!(
            "[[sources]]\nname = \"static\"\ntype = \"token_file\"\npath = \"{file}\"\n\
             [clusters.qa]\n"
        )
    };
    let authd_a = common::start_authd(d, "authd-a", "127.0.0.1:0", &sources("tokens-a.csv"));
    let authd_b = common::start_authd(d, "authd-b", "127.0.0.1:0", &sources("tokens-b.csv"));
    let (grpc_a, grpc_b) = (authd_a.ready_field("grpc"), authd_b.ready_field("grpc"));
    let edge = common::start_edge(d, "edge", &grpc_a, "");
    let path = d.join("edge.toml");
    let https = edge.ready_field("https");
    let (default, qa) = (
        format!("{https}/authenticate"),
        format!("{https}/clusters/qa/authenticate"),
    );
    let ca = std::fs::read(d.join("ca.crt")).unwrap();
    let h2 = common::client(&ca, Proto::H2, None);
    let h1 = common::client(&ca, Proto::H1, None);

    // As started: no route for qa, and authd A answers.
    assert_eq!(review(&h2, &qa, &tok_a).await.status, 404);
    assert_eq!(review(&h1, &default, &tok_a).await.username(), "alice");
    review(&h2, &default, &tok_b).await.assert_denied();

    // One edit: cluster qa is served, and the replica is authd B.
    replace(&path, &edge_toml("[clusters.qa]\n", &grpc_b));
    wait_reloads(&edge, "success", 1.0).await;
    // A new replica joins the rotation after its first healthy probe.
    common::eventually(Duration::from_secs(10), "authd B in rotation", || async {
        review(&h2, &qa, &tok_b).await.authenticated()
    })
    .await;
    for client in [&h2, &h1] {
        let a = review(client, &qa, &tok_b).await;
        assert!(a.authenticated() && a.username() == "bob", "{a:?}");
    }
    common::eventually(
        Duration::from_secs(10),
        "authd B answers the default route",
        || async { review(&h2, &default, &tok_b).await.username() == "bob" },
    )
    .await;
    review(&h1, &default, &tok_a).await.assert_denied();

    // The connections that served qa were opened under the new file; removing qa must
    // also hold on them (they are drained, not left on the old routes).
    assert_eq!(review(&h2, &qa, &tok_b).await.status, 200);
    assert_eq!(review(&h1, &qa, &tok_b).await.status, 200);
    replace(&path, &edge_toml("", &grpc_b));
    wait_reloads(&edge, "success", 2.0).await;
    for client in [&h2, &h1] {
        let a = review(client, &qa, &tok_b).await;
        assert_eq!(
            a.status, 404,
            "a removed cluster is served on an old connection: {a:?}"
        );
    }

    // Broken edits: an unknown field, then a certificate that does not exist. Each is
    // refused with the field named, and the edge keeps serving the last good file.
    replace(
        &path,
        &edge_toml("[clusters.qa]\nclient_caa = \"ca.crt\"\n", &grpc_a),
    );
    wait_reloads(&edge, "failure", 1.0).await;
    let bad_cert = edge_toml("", &grpc_a).replace("cert = \"edge.crt\"", "cert = \"missing.crt\"");
    replace(&path, &bad_cert);
    wait_reloads(&edge, "failure", 2.0).await;
    assert_eq!(review(&h2, &qa, &tok_b).await.status, 404);
    assert_eq!(review(&h1, &default, &tok_b).await.username(), "bob");
    review(&h2, &default, &tok_a).await.assert_denied();
    let log = edge.stderr();
    let failures: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("edge configuration reload failed"))
        .collect();
    assert_eq!(failures.len(), 2, "{log}");
    assert!(failures[0].contains("client_caa"), "{}", failures[0]);
    assert!(
        failures[1].contains("tls.cert") && failures[1].contains("missing.crt"),
        "{}",
        failures[1]
    );
    assert_eq!(reloads(&edge, "success").await, 2.0);

    // A restart-only setting is named and left as running; the rest of the edit applies.
    replace(
        &path,
        &edge_toml("max_connections = 3\n[clusters.qa]\n", &grpc_b),
    );
    wait_reloads(&edge, "success", 3.0).await;
    assert_eq!(review(&h2, &qa, &tok_b).await.status, 200);
    let log = edge.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains("only after a restart") && l.contains("max_connections")),
        "{log}"
    );
}

/// Runs `kube-authd config check --edge FILE`; returns success and the output.
fn check(file: &Path) -> (bool, String) {
    let out = std::process::Command::new(common::bin("kube-authd"))
        .args(["config", "check", "--edge"])
        .arg(file)
        .output()
        .expect("run kube-authd config check --edge");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `config check --edge` and `authd-edge serve` agree on every file: what one refuses the
/// other refuses, with the same field named, and what one accepts the other starts with.
#[test]
fn config_check_edge_agrees_with_serve() {
    let dir = common::temp_dir();
    let d = dir.path();
    common::certs_init(d, &["dev"]);
    let authd = "127.0.0.1:1";
    let good = edge_toml(
        "[clusters.dev]\nclient_ca = \"cluster-dev-ca.crt\"\n",
        authd,
    );
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        ("good", good.clone(), None),
        (
            "no-authd",
            good.split("[authd]").next().unwrap().to_owned(),
            Some("authd.endpoint"),
        ),
        (
            "missing-cert",
            good.replace("cert = \"edge.crt\"", "cert = \"gone.crt\""),
            Some("tls.cert"),
        ),
        (
            "missing-cluster-ca",
            good.replace("cluster-dev-ca.crt", "cluster-gone-ca.crt"),
            Some("clusters.dev.client_ca"),
        ),
        (
            "key-not-a-key",
            good.replace("key = \"edge.key\"", "key = \"ca.crt\""),
            Some("tls.key"),
        ),
        (
            "typo",
            good.replace("[clusters.dev]", "[clusters.dev]\nclient_cert = \"x\""),
            Some("client_cert"),
        ),
        (
            "no-client-ca",
            good.replace("client_ca = \"ca.crt\"\n", ""),
            Some("tls.client_ca"),
        ),
        (
            "authd-ca-missing",
            good.replace(
                &format!("endpoint = \"http://{authd}\""),
                "endpoint = \"https://127.0.0.1:1\"\nca = \"gone-ca.crt\"",
            ),
            Some("authd.ca"),
        ),
    ];
    for (name, text, refused) in cases {
        let file: PathBuf = common::write(d, &format!("{name}.toml"), &text);
        let (valid, out) = check(&file);
        match refused {
            None => {
                assert!(
                    valid && out.contains("valid edge configuration"),
                    "{name}: {out}"
                );
                let mut edge = Proc::start_named(
                    name,
                    "authd-edge",
                    &["serve", "--config", file.to_str().unwrap()],
                    d,
                    "authd-edge ready",
                );
                edge.kill();
            }
            Some(field) => {
                assert!(!valid, "{name}: config check said valid:\n{out}");
                assert!(out.contains(field), "{name}: {field} not named:\n{out}");
                let serve = Proc::refusing(name, "authd-edge", &file, d);
                assert!(
                    serve.stderr().contains(field),
                    "{name}: serve did not name {field}:\n{}",
                    serve.stderr()
                );
            }
        }
    }
}
