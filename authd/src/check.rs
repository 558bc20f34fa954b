//! `kube-authd config check`: example identities written in the configuration, run through
//! their source's mapping and the cluster's policy exactly as a verdict would be, so a typo
//! in a template or an allow list fails a check instead of locking everyone out.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::identity::Identity;
use crate::mapping::Mapping;
use crate::policy::{self, ClusterPolicy};
use crate::source::SourceConfig;

/// One `[[examples]]` entry: what a source says about a user, and what should come out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Example {
    /// Shown in the report; defaults to `user@cluster`.
    pub name: Option<String>,
    /// Name of the source that answers.
    pub source: String,
    /// The username the source reports.
    pub user: String,
    /// The uid the source reports (default: the user).
    pub uid: Option<String>,
    /// The groups the source reports.
    #[serde(default)]
    pub groups: Vec<String>,
    /// The cluster asked (default `default`, the edge's default cluster).
    #[serde(default = "default_cluster")]
    pub cluster: String,
    pub expect: Expect,
    pub expect_username: Option<String>,
    /// Compared as a set.
    pub expect_groups: Option<Vec<String>>,
}

fn default_cluster() -> String {
    "default".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    Allowed,
    Denied,
}

/// One example's result: `Ok` with a description, `Err` saying what differed.
pub struct ExampleResult {
    pub label: String,
    pub outcome: Result<String, String>,
}

/// Runs every example against the configured sources' mappings and the clusters' policy.
pub fn run(
    examples: &[Example],
    sources: &[SourceConfig],
    clusters: &BTreeMap<String, ClusterPolicy>,
) -> Vec<ExampleResult> {
    let mappings: BTreeMap<&str, _> = sources.iter().map(|s| (s.name(), s.mapping())).collect();
    examples
        .iter()
        .enumerate()
        .map(|(i, ex)| {
            let label = format!(
                "examples[{i}] {}",
                ex.name
                    .clone()
                    .unwrap_or_else(|| format!("{}@{} via {}", ex.user, ex.cluster, ex.source))
            );
            let outcome = match mappings.get(ex.source.as_str()) {
                None => Err(format!(
                    "source {:?} is not configured (sources: {})",
                    ex.source,
                    mappings.keys().cloned().collect::<Vec<_>>().join(", ")
                )),
                Some(mapping) => judge(ex, mapping, clusters),
            };
            ExampleResult { label, outcome }
        })
        .collect()
}

fn judge(
    ex: &Example,
    mapping: &Mapping,
    clusters: &BTreeMap<String, ClusterPolicy>,
) -> Result<String, String> {
    let identity = Identity {
        username: ex.user.clone(),
        uid: ex.uid.clone().unwrap_or_else(|| ex.user.clone()),
        groups: ex.groups.clone(),
        ..Identity::default()
    };
    let decided = mapping
        .apply(&ex.source, identity)
        .map_err(|e| e.to_string())
        .and_then(|id| policy::admit(clusters, &ex.cluster, id));
    match (ex.expect, decided) {
        (Expect::Denied, Err(why)) => Ok(format!("denied as expected: {why}")),
        (Expect::Denied, Ok(id)) => Err(format!(
            "expected denied, got allowed as {:?} with groups {:?}",
            id.username, id.groups
        )),
        (Expect::Allowed, Err(why)) => Err(format!("expected allowed, got denied: {why}")),
        (Expect::Allowed, Ok(id)) => {
            if let Some(want) = &ex.expect_username {
                if want != &id.username {
                    return Err(format!("expected username {want:?}, got {:?}", id.username));
                }
            }
            if let Some(want) = &ex.expect_groups {
                let mut want = want.clone();
                let mut got = id.groups.clone();
                want.sort();
                got.sort();
                if want != got {
                    return Err(format!("expected groups {want:?}, got {got:?}"));
                }
            }
            Ok(format!(
                "allowed as {:?} with groups {:?}",
                id.username, id.groups
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parts of a configuration file the examples need.
    #[derive(Deserialize)]
    struct Doc {
        sources: Vec<SourceConfig>,
        clusters: BTreeMap<String, ClusterPolicy>,
        examples: Vec<Example>,
    }

    const BASE: &str = "[[sources]]\nname = 'corp'\ntype = 'token_file'\npath = 't.csv'\n\
        mapping = { username = 'corp:{user}', group_prefix = 'corp:' }\n\
        [clusters.prod]\nallow_groups = ['corp:sre']\n";

    fn results(examples: &str) -> Vec<Result<String, String>> {
        let d: Doc = toml::from_str(&format!("{BASE}{examples}")).unwrap();
        run(&d.examples, &d.sources, &d.clusters)
            .into_iter()
            .map(|r| r.outcome)
            .collect()
    }

    #[test]
    fn examples_pass_and_fail() {
        let r = results(
            "[[examples]]\nsource = 'corp'\nuser = 'alice'\ngroups = ['sre']\ncluster = 'prod'\n\
             expect = 'allowed'\nexpect_username = 'corp:alice'\nexpect_groups = ['corp:sre']\n\
             [[examples]]\nsource = 'corp'\nuser = 'bob'\ncluster = 'prod'\nexpect = 'denied'\n\
             [[examples]]\nsource = 'crop'\nuser = 'bob'\nexpect = 'allowed'\n\
             [[examples]]\nsource = 'corp'\nuser = 'bob'\ncluster = 'prod'\nexpect = 'allowed'\n",
        );
        assert!(r[0].is_ok(), "{:?}", r[0]);
        assert!(r[1].is_ok(), "{:?}", r[1]);
        assert!(
            r[2].as_ref().unwrap_err().contains("\"crop\""),
            "{:?}",
            r[2]
        );
        assert!(r[3].as_ref().unwrap_err().contains("expected allowed"));
    }
}
