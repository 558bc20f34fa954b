//! The crate layering, checked on cargo's resolved dependency graph: the edge never depends
//! on authd (it holds no identity logic; only the root binary joins them), and this runtime
//! crate depends on none of the servers nor on the protocol crate.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use serde_json::Value;

/// Package names reachable from `root` through normal (not dev or build) dependencies.
fn normal_dependencies(metadata: &Value, root: &str) -> BTreeSet<String> {
    let packages = metadata["packages"].as_array().expect("packages");
    let name_of: HashMap<&str, &str> = packages
        .iter()
        .map(|p| {
            (
                p["id"].as_str().expect("id"),
                p["name"].as_str().expect("name"),
            )
        })
        .collect();
    let nodes: HashMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .expect("resolve.nodes")
        .iter()
        .map(|n| (n["id"].as_str().expect("node id"), n))
        .collect();
    let root_id = packages
        .iter()
        .find(|p| p["name"] == root)
        .and_then(|p| p["id"].as_str())
        .unwrap_or_else(|| panic!("package {root} not in the workspace"));
    let mut seen = BTreeSet::new();
    let mut stack = vec![root_id];
    while let Some(id) = stack.pop() {
        for dep in nodes[id]["deps"].as_array().expect("deps") {
            // A null kind is a normal dependency; "dev" and "build" are not linked in.
            let normal = dep["dep_kinds"]
                .as_array()
                .expect("dep_kinds")
                .iter()
                .any(|k| k["kind"].is_null());
            let dep_id = dep["pkg"].as_str().expect("pkg");
            if normal && seen.insert(name_of[dep_id].to_owned()) {
                stack.push(dep_id);
            }
        }
    }
    seen
}

fn metadata() -> Value {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata JSON")
}

#[test]
fn edge_never_depends_on_authd_and_runtime_on_neither() {
    let metadata = metadata();
    // The walk finds what is there: the root binary joins the two servers.
    let root = normal_dependencies(&metadata, "kube-authd");
    assert!(
        root.contains("authd") && root.contains("authd-edge"),
        "the walk misses the root binary's dependencies: {root:?}"
    );
    let edge = normal_dependencies(&metadata, "authd-edge");
    assert!(
        edge.contains("authd-runtime") && edge.contains("authd-proto"),
        "the walk misses direct dependencies: {edge:?}"
    );
    assert!(
        !edge.contains("authd"),
        "authd-edge depends on authd (the edge holds no identity logic)"
    );
    let runtime = normal_dependencies(&metadata, "authd-runtime");
    for server in ["authd", "authd-edge", "authd-proto"] {
        assert!(
            !runtime.contains(server),
            "authd-runtime depends on {server}: it must stay below both servers"
        );
    }
}
