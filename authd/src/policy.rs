//! Per-cluster policy: who may authenticate at each cluster's endpoint, and groups added
//! there. Applied after the cache, so one cached verdict serves every cluster.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::identity::Identity;
use crate::mapping::EXTRA_CLUSTER;

/// Applies `cluster`'s policy (none when not listed) and records the cluster in `extra`.
pub fn admit(
    clusters: &BTreeMap<String, ClusterPolicy>,
    cluster: &str,
    identity: Identity,
) -> Result<Identity, String> {
    let mut identity = match clusters.get(cluster) {
        Some(policy) => policy.apply(identity)?,
        None => identity,
    };
    if !cluster.is_empty() {
        identity
            .extra
            .insert(EXTRA_CLUSTER.to_owned(), vec![cluster.to_owned()]);
    }
    Ok(identity)
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
}
