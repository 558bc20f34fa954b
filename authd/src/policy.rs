//! Per-cluster policy: which clusters exist, who may authenticate at each one's endpoint,
//! and groups added there. Applied after the cache, so one cached verdict serves every
//! cluster.
//!
//! The set of clusters is closed: a name that is not a `[clusters.NAME]` table is refused
//! (`authenticated: false`), unless the operator configured `[clusters."*"]`, the policy for
//! every other name. Metrics name a cluster only by a configured name; every other name is
//! counted as [`OTHER`], so callers cannot grow the label set.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::Deserialize;

use crate::identity::Identity;
use crate::mapping::EXTRA_CLUSTER;
use crate::metrics::{Name, VerdictCounters};

/// The `[clusters]` key of the policy for every cluster not listed by name.
pub const ANY_CLUSTER: &str = "*";

/// The metric label of every cluster that is not configured by name.
pub const OTHER: &str = "other";

/// Applies `cluster`'s policy and records the cluster in `extra`; a cluster that is not
/// configured (and no `[clusters."*"]`) is refused.
pub fn admit(
    clusters: &BTreeMap<String, ClusterPolicy>,
    cluster: &str,
    identity: Identity,
) -> Result<Identity, String> {
    let policy = clusters
        .get(cluster)
        .filter(|_| cluster != ANY_CLUSTER)
        .or_else(|| clusters.get(ANY_CLUSTER))
        .ok_or_else(|| unknown(cluster))?;
    Ok(record(policy.apply(identity)?, cluster))
}

/// Records the cluster asked in `extra`.
fn record(mut identity: Identity, cluster: &str) -> Identity {
    if !cluster.is_empty() {
        identity
            .extra
            .insert(EXTRA_CLUSTER.to_owned(), vec![cluster.to_owned()]);
    }
    identity
}

/// Why an unknown cluster is refused.
pub fn unknown(cluster: &str) -> String {
    format!(
        "cluster {cluster:?} is not configured (no [clusters.NAME] for it, no [clusters.\"*\"])"
    )
}

/// One cluster as a review sees it: its policy, its metric label and its counters. A
/// review holds its cluster from start to end, so one lookup serves both.
#[derive(Debug)]
pub struct Cluster {
    pub policy: ClusterPolicy,
    /// The configured name, or [`OTHER`] for the `"*"` policy.
    pub label: Name,
    /// `authd_verdicts{cluster=label}`, resolved on first use.
    pub verdicts: VerdictCounters,
}

/// The configured clusters, resolved once per configuration. Looked up once per review,
/// with FxHash: the keys are the operator's names, not a caller's (an unknown name is
/// refused, never inserted), so a hash-flooding attack has nothing to grow.
#[derive(Debug)]
pub struct Clusters {
    named: FxHashMap<Box<str>, Arc<Cluster>>,
    any: Option<Arc<Cluster>>,
    /// The label of a refused (unknown) cluster.
    other: Name,
}

impl Clusters {
    pub fn new(config: &BTreeMap<String, ClusterPolicy>) -> Self {
        let mut named = FxHashMap::default();
        let mut any = None;
        let other = Name::from(OTHER);
        let cluster = |policy: &ClusterPolicy, label: Name| {
            Arc::new(Cluster {
                policy: policy.clone(),
                label,
                verdicts: VerdictCounters::default(),
            })
        };
        for (name, policy) in config {
            if name == ANY_CLUSTER {
                any = Some(cluster(policy, other.clone()));
            } else {
                named.insert(name.as_str().into(), cluster(policy, name.as_str().into()));
            }
        }
        Self { named, any, other }
    }

    /// The cluster `name` is served as; `None` when it is refused.
    pub fn get(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.named.get(name).or(self.any.as_ref())
    }

    /// The metric label of `name`: its own if configured, otherwise [`OTHER`].
    pub fn label(&self, name: &str) -> Name {
        self.get(name)
            .map_or_else(|| self.other.clone(), |c| c.label.clone())
    }

    /// Whether no cluster at all is served (every review would be refused).
    pub fn is_empty(&self) -> bool {
        self.named.is_empty() && self.any.is_none()
    }
}

impl Cluster {
    /// Applies this cluster's policy and records the cluster (`name`, as asked) in `extra`.
    pub fn admit(&self, name: &str, identity: Identity) -> Result<Identity, String> {
        Ok(record(self.policy.apply(identity)?, name))
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterPolicy {
    /// Usernames allowed here. With both allow lists empty, every authenticated user is.
    #[serde(default)]
    pub allow_users: Vec<String>,
    /// Groups whose members are allowed here.
    #[serde(default)]
    pub allow_groups: Vec<String>,
    /// Groups added to every user authenticated at this cluster.
    #[serde(default)]
    pub add_groups: Vec<String>,
}

impl ClusterPolicy {
    /// `Ok` with the identity as this cluster sees it, or `Err` with why it is refused.
    pub fn apply(&self, mut identity: Identity) -> Result<Identity, String> {
        let open = self.allow_users.is_empty() && self.allow_groups.is_empty();
        let allowed = open
            || self.allow_users.contains(&identity.username)
            || identity
                .groups
                .iter()
                .any(|g| self.allow_groups.contains(g));
        if !allowed {
            return Err(format!(
                "user {:?} is not in allow_users and none of its groups {:?} is in allow_groups",
                identity.username, identity.groups
            ));
        }
        for g in &self.add_groups {
            if !identity.groups.contains(g) {
                identity.groups.push(g.clone());
            }
        }
        Ok(identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Identity {
        Identity {
            username: "alice".into(),
            groups: vec!["dev".into()],
            ..Identity::default()
        }
    }

    #[test]
    fn open_policy_allows_and_adds_groups() {
        let p = ClusterPolicy {
            add_groups: vec!["dev".into(), "tenant-a".into()],
            ..Default::default()
        };
        assert_eq!(p.apply(alice()).unwrap().groups, vec!["dev", "tenant-a"]);
    }

    #[test]
    fn allow_lists() {
        let by_group = ClusterPolicy {
            allow_groups: vec!["dev".into()],
            ..Default::default()
        };
        assert!(by_group.apply(alice()).is_ok());
        let by_user = ClusterPolicy {
            allow_users: vec!["bob".into()],
            ..Default::default()
        };
        let why = by_user.apply(alice()).unwrap_err();
        assert!(why.contains("alice"), "{why}");
    }

    #[test]
    fn the_set_of_clusters_is_closed() {
        let prod = ClusterPolicy {
            allow_users: vec!["alice".into()],
            ..Default::default()
        };
        let config = BTreeMap::from([("prod".to_owned(), prod)]);
        let bob = Identity {
            username: "bob".into(),
            ..Identity::default()
        };
        for name in ["prod", "", "prod2", "PROD", "default", "*"] {
            assert!(admit(&config, name, bob.clone()).is_err(), "{name:?}");
        }
        let clusters = Clusters::new(&config);
        assert!(clusters.get("PROD").is_none());
        assert_eq!(&*clusters.label("PROD").0, OTHER);
        assert_eq!(&*clusters.label("prod").0, "prod");
        let extra = admit(&config, "prod", alice()).unwrap().extra;
        assert_eq!(extra[EXTRA_CLUSTER], ["prod"]);
    }

    #[test]
    fn an_explicit_default_serves_other_names_under_one_label() {
        let config = BTreeMap::from([
            (
                "prod".to_owned(),
                ClusterPolicy {
                    allow_users: vec!["alice".into()],
                    ..Default::default()
                },
            ),
            (ANY_CLUSTER.to_owned(), ClusterPolicy::default()),
        ]);
        let clusters = Clusters::new(&config);
        let dev = clusters.get("dev").unwrap();
        assert_eq!(&*dev.label.0, OTHER);
        let seen = dev.admit("dev", alice()).unwrap();
        assert_eq!(seen.extra[EXTRA_CLUSTER], ["dev"]);
        assert!(admit(&config, "dev", alice()).is_ok());
        // A listed cluster keeps its own policy.
        let bob = Identity {
            username: "bob".into(),
            ..Identity::default()
        };
        assert!(admit(&config, "prod", bob).is_err());
    }
}
