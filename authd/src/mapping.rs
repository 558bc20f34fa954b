//! Identity mapping, per source: turns what a source says about a user into the Kubernetes
//! user it may mint. Username template, group renames, allow-filter and prefix, reserved
//! prefixes a source may not mint, and an `extra` entry naming the deciding source.
//!
//! Applied right after a source answers (`source::Mapped` wraps every built source), so cached
//! verdicts hold the mapped identity. The cluster's own `extra` entry is added per request
//! after the cache (`service.rs`), since one cached verdict serves every cluster.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::field::FieldError;
use crate::identity::Identity;

/// `extra` key naming the source that authenticated the user.
pub const EXTRA_SOURCE: &str = "authd.kube-authd.io/source";
/// `extra` key naming the cluster whose endpoint was asked.
pub const EXTRA_CLUSTER: &str = "authd.kube-authd.io/cluster";

/// The `mapping` table of a source's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// Username template; `{user}` is the source's username, `{uid}` its uid, `{source}` the
    /// source's name. Default `{user}` (unchanged).
    #[serde(default = "default_username")]
    pub username: String,
    /// Renames applied to the source's group names first (`from = "to"`).
    #[serde(default)]
    pub group_renames: BTreeMap<String, String>,
    /// Keep only these groups (after renames, before the prefix). An entry ending in `*`
    /// is a prefix. Empty keeps every group.
    #[serde(default)]
    pub allow_groups: Vec<String>,
    /// Prepended to every kept group, e.g. `ldap:`.
    #[serde(default)]
    pub group_prefix: String,
    /// Prefixes this source may not mint. A mapped username with one makes the answer a
    /// rejection; a group with one is dropped. Both are logged.
    #[serde(default = "default_reserved")]
    pub reserved_prefixes: Vec<String>,
    /// Whether to add `authd.kube-authd.io/source` to `extra`.
    #[serde(default = "default_true")]
    pub record_source: bool,
}

fn default_username() -> String {
    "{user}".into()
}
fn default_reserved() -> Vec<String> {
    DEFAULT_RESERVED.iter().map(|p| p.to_string()).collect()
}

/// The prefixes a source may not mint unless its mapping says otherwise.
pub const DEFAULT_RESERVED: &[&str] = &["system:"];
fn default_true() -> bool {
    true
}

impl Default for Mapping {
    fn default() -> Self {
        Self {
            username: default_username(),
            group_renames: BTreeMap::new(),
            allow_groups: Vec::new(),
            group_prefix: String::new(),
            reserved_prefixes: default_reserved(),
            record_source: true,
        }
    }
}

/// Why a mapped identity may not be minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("mapped username {0:?} has the reserved prefix {1:?}")]
    ReservedUsername(String, String),
    #[error("mapped username is empty")]
    EmptyUsername,
    #[error("group {0:?} has the reserved prefix {1:?}")]
    ReservedGroup(String, String),
}

/// The reserved-prefix guard, applied to every answer (cache hits of both levels included),
/// not only when mapping: a name `Mapping::apply` would never let through is never served,
/// whatever wrote the entry.
pub fn check_reserved(prefixes: &[impl AsRef<str>], id: &Identity) -> Result<(), MappingError> {
    let reserved = |name: &str| {
        prefixes
            .iter()
            .map(AsRef::as_ref)
            .find(|p| name.starts_with(p))
            .map(str::to_owned)
    };
    if let Some(p) = reserved(&id.username) {
        return Err(MappingError::ReservedUsername(id.username.clone(), p));
    }
    for g in &id.groups {
        if let Some(p) = reserved(g) {
            return Err(MappingError::ReservedGroup(g.clone(), p));
        }
    }
    Ok(())
}

const PLACEHOLDERS: [&str; 3] = ["{user}", "{uid}", "{source}"];

impl Mapping {
    /// Checks the template; the path is relative to the `mapping` table.
    pub fn validate(&self) -> Result<(), FieldError> {
        let mut rest = self.username.clone();
        for p in PLACEHOLDERS {
            rest = rest.replace(p, "");
        }
        if rest.contains('{') || rest.contains('}') {
            return Err(FieldError::new(
                "username",
                format!(
                    "{:?} has an unknown placeholder (known: {})",
                    self.username,
                    PLACEHOLDERS.join(", ")
                ),
            ));
        }
        if !self.username.contains("{user}") && !self.username.contains("{uid}") {
            return Err(FieldError::new(
                "username",
                format!(
                    "{:?} must contain {{user}} or {{uid}}, or every user would be the same",
                    self.username
                ),
            ));
        }
        if self.reserved_prefixes.iter().any(String::is_empty) {
            return Err(FieldError::new(
                "reserved_prefixes",
                "an empty prefix would reserve everything",
            ));
        }
        Ok(())
    }

    /// Maps one source's identity. `source` is the source's name.
    pub fn apply(&self, source: &str, mut id: Identity) -> Result<Identity, MappingError> {
        let username = self
            .username
            .replace("{user}", &id.username)
            .replace("{uid}", &id.uid)
            .replace("{source}", source);
        if username.is_empty() {
            return Err(MappingError::EmptyUsername);
        }
        if let Some(p) = self.reserved(&username) {
            return Err(MappingError::ReservedUsername(username, p.to_owned()));
        }
        let mut groups: Vec<String> = Vec::with_capacity(id.groups.len());
        for g in id.groups.drain(..) {
            let g = self.group_renames.get(&g).cloned().unwrap_or(g);
            if !self.allowed_group(&g) {
                continue;
            }
            let g = format!("{}{g}", self.group_prefix);
            if let Some(p) = self.reserved(&g) {
                tracing::warn!(source, group = %g, reserved_prefix = %p,
                    "dropped a group with a reserved prefix this source may not mint");
                continue;
            }
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
        id.username = username;
        id.groups = groups;
        if self.record_source {
            id.extra
                .insert(EXTRA_SOURCE.to_owned(), vec![source.to_owned()]);
        }
        Ok(id)
    }

    /// The reserved-prefix guard on an identity this source is said to have minted.
    pub fn check_reserved(&self, id: &Identity) -> Result<(), MappingError> {
        check_reserved(self.reserved_prefixes.as_slice(), id)
    }

    fn reserved(&self, name: &str) -> Option<&str> {
        self.reserved_prefixes
            .iter()
            .find(|p| name.starts_with(p.as_str()))
            .map(String::as_str)
    }

    fn allowed_group(&self, g: &str) -> bool {
        self.allow_groups.is_empty()
            || self.allow_groups.iter().any(|a| match a.strip_suffix('*') {
                Some(prefix) => g.starts_with(prefix),
                None => a == g,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Identity {
        Identity {
            username: "alice".into(),
            uid: "1000".into(),
            groups: vec!["dev".into(), "ops".into(), "system:masters".into()],
            ..Identity::default()
        }
    }

    #[test]
    fn default_mapping_keeps_names_drops_reserved_groups_records_source() {
        let id = Mapping::default().apply("corp", alice()).unwrap();
        assert_eq!(id.username, "alice");
        assert_eq!(id.groups, vec!["dev", "ops"]);
        assert_eq!(id.extra[EXTRA_SOURCE], vec!["corp"]);
    }

    #[test]
    fn templates_renames_filters_prefixes() {
        let m = Mapping {
            username: "ldap:{user}:{uid}".into(),
            group_renames: BTreeMap::from([("ops".into(), "sre".into())]),
            allow_groups: vec!["sr*".into(), "dev".into()],
            group_prefix: "ldap:".into(),
            ..Mapping::default()
        };
        m.validate().unwrap();
        let id = m.apply("corp", alice()).unwrap();
        assert_eq!(id.username, "ldap:alice:1000");
        assert_eq!(id.groups, vec!["ldap:dev", "ldap:sre"]);
    }

    #[test]
    fn the_guard_refuses_what_apply_would_not_mint() {
        let m = Mapping::default();
        let mapped = m.apply("s", alice()).unwrap();
        assert_eq!(m.check_reserved(&mapped), Ok(()));
        let mut forged = mapped.clone();
        forged.groups.push("system:masters".into());
        assert!(matches!(
            m.check_reserved(&forged),
            Err(MappingError::ReservedGroup(..))
        ));
        forged.groups.pop();
        forged.username = "system:admin".into();
        assert!(matches!(
            check_reserved(DEFAULT_RESERVED, &forged),
            Err(MappingError::ReservedUsername(..))
        ));
        let open = Mapping {
            reserved_prefixes: vec![],
            ..Mapping::default()
        };
        assert_eq!(open.check_reserved(&forged), Ok(()));
    }

    #[test]
    fn reserved_username_is_refused() {
        let m = Mapping {
            username: "system:{user}".into(),
            ..Mapping::default()
        };
        assert!(matches!(
            m.apply("corp", alice()),
            Err(MappingError::ReservedUsername(..))
        ));
        let mut bob = alice();
        bob.username = "system:admin".into();
        assert!(Mapping::default().apply("corp", bob).is_err());
        let open = Mapping {
            reserved_prefixes: vec!["kube:".into()],
            ..Mapping::default()
        };
        let id = open.apply("corp", alice()).unwrap();
        assert!(id.groups.contains(&"system:masters".to_owned()));
    }

    #[test]
    fn bad_templates_are_named() {
        let m = Mapping {
            username: "{usr}".into(),
            ..Mapping::default()
        };
        assert_eq!(m.validate().unwrap_err().field, "username");
        let m = Mapping {
            username: "fixed".into(),
            ..Mapping::default()
        };
        assert!(m.validate().is_err());
    }
}
