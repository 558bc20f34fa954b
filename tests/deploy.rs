//! deploy/: the Kubernetes manifests pass a schema check (kubernetes-validate, pinned and
//! installed into a venv by scripts/test.sh), the configurations embedded in their
//! ConfigMaps are valid for the binaries, and the container build copies every binary.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/kubernetes"))
        .expect("deploy/kubernetes")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "manifests: {files:?}");
    files
}

#[test]
fn manifests_pass_the_kubernetes_schema_check() {
    let kv = root().join("target/kubernetes-validate-venv/bin/kubernetes-validate");
    assert!(
        kv.exists(),
        "{} is missing: run `bash scripts/test.sh` (it creates the venv), or \
         `python3 -m venv target/kubernetes-validate-venv && \
         target/kubernetes-validate-venv/bin/pip install kubernetes-validate==1.37.0`",
        kv.display()
    );
    let out = Command::new(&kv)
        .arg("--strict")
        .args(manifests())
        .output()
        .expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubernetes-validate failed:\n{text}");
    for kind in [
        "deployment/authd",
        "deployment/authd-edge",
        "service/authd-headless",
        "poddisruptionbudget/authd",
        "horizontalpodautoscaler/authd",
        "networkpolicy/authd",
        "secret/authd-edge-tls",
        "configmap/authd-config",
    ] {
        assert!(
            text.contains(&format!("passed for resource {kind} ")),
            "{kind} not validated:\n{text}"
        );
    }
}

/// The text of a `KEY: |` block scalar in a YAML file (indented by four spaces).
fn block(file: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let mut lines = text.lines().skip_while(|l| l.trim() != format!("{key}: |"));
    assert!(lines.next().is_some(), "{key} not in {}", file.display());
    lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.strip_prefix("    ").unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn embedded_configurations_are_valid() {
    let dir = root().join("deploy/kubernetes");
    let authd = block(&dir.join("authd.yaml"), "authd.toml");
    let c = authd::config::Config::parse(&authd, Path::new("/"))
        .unwrap_or_else(|e| panic!("authd.toml in authd.yaml: {e}"));
    assert!(c.tls.as_ref().is_some_and(|t| t.client_ca.is_some()));
    assert_eq!(
        c.clients["edge"].methods,
        ["Authenticate"],
        "edges may only authenticate"
    );
    let edge = block(&dir.join("edge.yaml"), "edge.toml");
    let e = authd_edge::Config::parse(&edge, Path::new("/"))
        .unwrap_or_else(|e| panic!("edge.toml in edge.yaml: {e}"));
    let a = e.authd.expect("[authd]");
    assert!(
        matches!(&a.replicas, authd_edge::config::Replicas::Dns { host, .. } if host.starts_with("authd-headless."))
    );
    assert!(e.clusters.values().all(|c| c.client_ca.is_some()));
    // The edge may ask authd for exactly the clusters it serves, and authd serves them.
    let mut served: Vec<&str> = e.clusters.keys().map(String::as_str).collect();
    served.push(&e.default_cluster);
    served.sort_unstable();
    assert_eq!(c.clients["edge"].clusters, served, "clients.edge.clusters");
    assert!(
        served.iter().all(|s| c.clusters.contains_key(*s)),
        "[clusters]"
    );
}

#[test]
fn the_container_build_ships_every_binary() {
    let file = std::fs::read_to_string(root().join("deploy/Containerfile")).unwrap();
    assert!(file.matches("FROM ").count() >= 2, "multi-stage");
    assert!(file.contains("distroless"), "distroless runtime image");
    for bin in ["authd", "authd-edge", "kube-authd"] {
        assert!(
            file.contains(&format!("target/release/{bin} "))
                || file.contains(&format!("target/release/{bin}\n")),
            "Containerfile copies {bin}"
        );
    }
}
