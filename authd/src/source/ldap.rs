//! LDAP source: `user:password` tokens checked against a directory.
//!
//! A service account (bound once on a shared, reconnecting connection) searches `user_base`
//! with an RFC 4515-escaped filter for exactly one entry; the password is then checked by a
//! simple bind as that entry's DN on a *separate, short-lived* connection, so the shared
//! service connection is never re-bound as a user (a failed or half-done re-bind can then
//! never leave it authenticated as someone else). Groups come from a group search
//! (optionally nested) or from a `memberOf`-style attribute.
//!
//! Empty passwords are rejected before any bind: LDAP treats a simple bind with a DN and an
//! empty password as an *unauthenticated* bind that succeeds (RFC 4513 §5.1.2).
//! Every fault (connect, TLS, timeout, unexpected result code) is "could not decide", with a
//! message that never contains the password.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use authd_runtime::config::secs;
use futures::future::BoxFuture;
use ldap3::{ldap_escape, Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use serde::Deserialize;
use tokio::sync::Mutex;

use super::common::{
    check_plaintext, check_prefix, check_separator, check_timeout, read_secret, resolve,
    split_user_password, tls_roots, FileError, LdapUrl,
};
use super::{BuildError, Kind, Verifier};
use crate::field::FieldError;
use crate::identity::{Identity, Outcome};
use crate::mapping::Mapping;

/// Longest user name looked up; longer ones are rejected without a query.
const MAX_USER_LEN: usize = 256;
/// Longest password sent in a bind.
const MAX_PASSWORD_LEN: usize = 1024;
/// Bound on the groups collected for one user, whatever the nesting.
const MAX_GROUPS: usize = 1000;
/// LDAP result code for a failed bind (RFC 4511).
const INVALID_CREDENTIALS: u32 = 49;

/// LDAP source: find the user with a service bind and search, check the password with a
/// bind as the user, read groups and attributes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub name: String,
    /// How answers map to Kubernetes users.
    #[serde(default)]
    pub mapping: Mapping,
    /// `ldap://host:389` or `ldaps://host:636`.
    pub url: LdapUrl,
    /// Upgrade an `ldap://` connection with StartTLS before any bind.
    #[serde(default)]
    pub starttls: bool,
    /// PEM CA bundle trusted for ldaps/StartTLS instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// Accept `ldap://` without `starttls` to a host other than this machine (an on-path
    /// attacker can read every password). Off: a start-up error.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// DN of the service account used to search for users and groups.
    pub bind_dn: String,
    /// File holding the service account's password (trailing newline ignored).
    pub bind_password_file: PathBuf,
    /// Only tokens starting with this are owned (and it is stripped before splitting).
    pub prefix: Option<String>,
    /// Between user name and password; the token is split at its first occurrence.
    #[serde(default = "super::common::default_separator")]
    pub separator: String,
    /// Search base for users (subtree).
    pub user_base: String,
    /// Filter template; `{user}` is replaced by the RFC 4515-escaped user name.
    #[serde(default = "default_user_filter")]
    pub user_filter: String,
    /// Attribute giving the Kubernetes user name; the typed name when absent.
    #[serde(default = "default_username_attribute")]
    pub username_attribute: String,
    /// Attribute giving the Kubernetes uid; the entry's DN when absent.
    #[serde(default = "default_uid_attribute")]
    pub uid_attribute: String,
    /// Groups by search: base for the group search. Without it, groups are read from
    /// `member_of_attribute` on the user entry.
    pub group_base: Option<String>,
    /// Group search filter template; `{dn}` is replaced by the escaped member DN.
    #[serde(default = "default_group_filter")]
    pub group_filter: String,
    /// Attribute of a group entry giving the group name.
    #[serde(default = "default_group_name_attribute")]
    pub group_name_attribute: String,
    /// How many levels of groups-in-groups to follow in group search mode (0: direct only).
    #[serde(default)]
    pub group_nesting_depth: u32,
    /// User attribute listing group DNs (memberOf overlay) when `group_base` is not set.
    #[serde(default = "default_member_of_attribute")]
    pub member_of_attribute: String,
    /// How a `member_of_attribute` DN becomes a group name. The whole DN by default: two
    /// groups with the same first RDN in different branches are different groups.
    #[serde(default)]
    pub member_of_group_name: MemberOfName,
    /// LDAP attribute -> key in the user's `extra`.
    #[serde(default)]
    pub extra_attributes: BTreeMap<String, String>,
    /// Connect and per-operation limit, and the bound on one whole check.
    #[serde(default = "secs::<2>", with = "humantime_serde")]
    pub timeout: Duration,
}

/// `member_of_group_name`: the group name taken from a `memberOf` DN.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberOfName {
    /// The DN as the directory returns it (`cn=admins,ou=a,dc=example,dc=org`).
    #[default]
    Dn,
    /// The unescaped value of the first RDN (`admins`): shorter, but groups named alike
    /// anywhere in the directory become one group, so only for a directory whose group
    /// names are unique.
    FirstRdn,
}

impl MemberOfName {
    /// The group names of `dns`, deduplicated and sorted, at most [`MAX_GROUPS`].
    fn groups(self, dns: &[String]) -> Vec<String> {
        dns.iter()
            .filter_map(|dn| match self {
                MemberOfName::Dn => (!dn.is_empty()).then(|| dn.clone()),
                MemberOfName::FirstRdn => first_rdn_value(dn),
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .take(MAX_GROUPS)
            .collect()
    }
}

fn default_user_filter() -> String {
    "(uid={user})".into()
}
fn default_username_attribute() -> String {
    "uid".into()
}
fn default_uid_attribute() -> String {
    "entryUUID".into()
}
fn default_group_filter() -> String {
    "(member={dn})".into()
}
fn default_group_name_attribute() -> String {
    "cn".into()
}
fn default_member_of_attribute() -> String {
    "memberOf".into()
}

impl Kind for Config {
    fn name(&self) -> &str {
        &self.name
    }

    fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    fn files(&self) -> Vec<&Path> {
        std::iter::once(self.bind_password_file.as_path())
            .chain(self.ca_file.as_deref())
            .collect()
    }

    fn resolve_paths(&mut self, base: &Path) {
        resolve(base, &mut self.bind_password_file);
        self.ca_file.iter_mut().for_each(|p| resolve(base, p));
    }

    fn validate(&self) -> Result<(), FieldError> {
        if self.starttls && self.url.as_url().scheme() == "ldaps" {
            return Err(FieldError::new(
                "starttls",
                "cannot be combined with an ldaps:// url",
            ));
        }
        if self.url.as_url().scheme() == "ldap" && !self.starttls {
            check_plaintext(
                "url",
                self.url.as_url().host_str().unwrap_or(""),
                "ldap:// without starttls (passwords sent without TLS)",
                "allow_plaintext",
                self.allow_plaintext,
            )?;
        }
        check_separator(&self.separator)?;
        check_prefix(self.prefix.as_deref())?;
        if !self.user_filter.contains("{user}") {
            return Err(FieldError::new("user_filter", "must contain {user}"));
        }
        if self.group_base.is_some() && !self.group_filter.contains("{dn}") {
            return Err(FieldError::new("group_filter", "must contain {dn}"));
        }
        if self.group_nesting_depth > 8 {
            return Err(FieldError::new("group_nesting_depth", "at most 8"));
        }
        check_timeout("timeout", self.timeout)
    }

    fn build(&self) -> Result<Arc<dyn Verifier>, BuildError> {
        Ok(Arc::new(LdapVerifier::new(self)?))
    }
}

/// A fault talking to the directory; the message is safe to log (no password).
#[derive(Debug)]
struct Fault(String);

impl Fault {
    fn new(what: &str, e: impl std::fmt::Display) -> Self {
        Fault(format!("{what}: {e}"))
    }
}

/// The shared service connection and a generation number, so a caller that saw it fail
/// only discards the connection it used, not a fresh one another caller just made.
struct Shared {
    conn: Option<(u64, Ldap)>,
    generation: u64,
}

pub struct LdapVerifier {
    name: String,
    config: Config,
    bind_password: String,
    settings: LdapConnSettings,
    service: Mutex<Shared>,
}

impl LdapVerifier {
    /// Reads the service password and CA; does not connect (the directory may come up later).
    pub fn new(config: &Config) -> Result<Self, FileError> {
        let bind_password = read_secret("bind_password_file", &config.bind_password_file)?;
        if config.group_base.is_none() && config.member_of_group_name == MemberOfName::FirstRdn {
            // The opt-out is allowed (some directories keep group names unique) but should
            // not go unnoticed: a member of ou=a's `admins` would also be ou=b's.
            tracing::warn!(
                source = %config.name,
                "member_of_group_name = \"first_rdn\": groups with the same first RDN in \
                 different branches of the directory become one Kubernetes group; use it \
                 only if group names are unique directory-wide (the default \"dn\" keeps \
                 them apart)"
            );
        }
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(config.timeout)
            .set_starttls(config.starttls);
        if let Some(path) = &config.ca_file {
            settings = settings.set_config(Arc::new(tls_roots("ca_file", path)?));
        }
        Ok(Self {
            name: config.name.clone(),
            config: config.clone(),
            bind_password,
            settings,
            service: Mutex::new(Shared {
                conn: None,
                generation: 0,
            }),
        })
    }

    fn split<'t>(&self, token: &'t str) -> Option<(&'t str, &'t str)> {
        split_user_password(self.config.prefix.as_deref(), &self.config.separator, token)
    }

    async fn connect(&self) -> Result<Ldap, Fault> {
        let (conn, ldap) =
            LdapConnAsync::from_url_with_settings(self.settings.clone(), self.config.url.as_url())
                .await
                .map_err(|e| Fault::new("connect", e))?;
        // The driver ends when the connection closes; its error only matters to the
        // operations in flight, which see it themselves.
        tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!(error = %e, "ldap connection ended");
            }
        });
        Ok(ldap)
    }

    /// The shared service connection, bound as `bind_dn`; made on first use or after a fault.
    ///
    /// The lock is held across a connect and a bind, so both the wait for it and the work
    /// under it are bounded (`timeout` each): a holder that stalls or is dropped cannot keep
    /// every later lookup waiting.
    async fn service(&self) -> Result<(u64, Ldap), Fault> {
        let limit = self.config.timeout;
        let Ok(mut shared) = tokio::time::timeout(limit, self.service.lock()).await else {
            return Err(Fault(format!(
                "service connection busy: another lookup held it for over {limit:?}"
            )));
        };
        if let Some((generation, ldap)) = shared.conn.as_mut() {
            if !ldap.is_closed() {
                return Ok((*generation, ldap.clone()));
            }
        }
        shared.conn = None;
        let ldap = tokio::time::timeout(limit, self.bound_service())
            .await
            .map_err(|_| {
                Fault(format!(
                    "service connect and bind: timed out after {limit:?}"
                ))
            })??;
        shared.generation += 1;
        let generation = shared.generation;
        shared.conn = Some((generation, ldap.clone()));
        Ok((generation, ldap))
    }

    /// A new connection bound as `bind_dn`.
    async fn bound_service(&self) -> Result<Ldap, Fault> {
        let mut ldap = self.connect().await?;
        let result = ldap
            .with_timeout(self.config.timeout)
            .simple_bind(&self.config.bind_dn, &self.bind_password)
            .await
            .map_err(|e| Fault::new("service bind", e))?;
        if result.rc != 0 {
            return Err(Fault(format!(
                "service bind as bind_dn refused: rc={} {}",
                result.rc, result.text
            )));
        }
        Ok(ldap)
    }

    /// Drops the shared connection if it is still the one that failed. The unbind happens
    /// outside the lock; a lock that stays busy past `timeout` leaves the connection to the
    /// next fault.
    async fn discard(&self, generation: u64) {
        let Ok(mut shared) = tokio::time::timeout(self.config.timeout, self.service.lock()).await
        else {
            return;
        };
        let failed = if shared.conn.as_ref().is_some_and(|(g, _)| *g == generation) {
            shared.conn.take()
        } else {
            None
        };
        drop(shared);
        if let Some((_, mut ldap)) = failed {
            let _ = tokio::time::timeout(self.config.timeout, ldap.unbind()).await;
        }
    }

    /// A search on the service connection; on a fault the connection is discarded and the
    /// search retried once on a fresh one (the directory may have restarted since).
    async fn search(
        &self,
        base: &str,
        filter: &str,
        attrs: &[String],
    ) -> Result<Vec<SearchEntry>, Fault> {
        let mut last = None;
        for _ in 0..2 {
            let (generation, mut ldap) = self.service().await?;
            let result = ldap
                .with_timeout(self.config.timeout)
                .search(base, Scope::Subtree, filter, attrs)
                .await;
            match result {
                Ok(r) => {
                    let (entries, res) = (r.0, r.1);
                    // noSuchObject: the base does not exist, so nothing matches.
                    if res.rc != 0 && res.rc != 32 {
                        return Err(Fault(format!("search: rc={} {}", res.rc, res.text)));
                    }
                    return Ok(entries.into_iter().map(SearchEntry::construct).collect());
                }
                Err(e) => {
                    self.discard(generation).await;
                    let timed_out = matches!(e, ldap3::LdapError::Timeout { .. });
                    last = Some(Fault::new("search", e));
                    if timed_out {
                        break;
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| Fault("search failed".into())))
    }

    /// Checks the password with a bind as `dn` on a connection of its own.
    async fn check_password(&self, dn: &str, password: &str) -> Result<bool, Fault> {
        let mut ldap = self.connect().await?;
        let result = ldap
            .with_timeout(self.config.timeout)
            .simple_bind(dn, password)
            .await
            .map_err(|e| Fault::new("user bind", e))?;
        let _ = ldap.unbind().await;
        match result.rc {
            0 => Ok(true),
            INVALID_CREDENTIALS => Ok(false),
            rc => Err(Fault(format!("user bind: rc={rc} {}", result.text))),
        }
    }

    /// Group names of `dn`, following `group_nesting_depth` levels of nesting.
    async fn search_groups(&self, base: &str, dn: &str) -> Result<Vec<String>, Fault> {
        let attrs = [self.config.group_name_attribute.clone()];
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut names = BTreeSet::new();
        let mut frontier = vec![dn.to_owned()];
        for _ in 0..=self.config.group_nesting_depth {
            if frontier.is_empty() || names.len() >= MAX_GROUPS {
                break;
            }
            let filter = self.group_filter(&frontier);
            let mut next = Vec::new();
            for entry in self.search(base, &filter, &attrs).await? {
                if !seen.insert(entry.dn.to_lowercase()) {
                    continue;
                }
                if let Some(name) = first(&entry, &self.config.group_name_attribute) {
                    names.insert(name.to_owned());
                }
                next.push(entry.dn);
            }
            frontier = next;
        }
        Ok(names.into_iter().take(MAX_GROUPS).collect())
    }

    /// One filter matching groups with any of `dns` as a member.
    fn group_filter(&self, dns: &[String]) -> String {
        let one = |dn: &String| {
            self.config
                .group_filter
                .replace("{dn}", &ldap_escape(dn.as_str()))
        };
        match dns {
            [dn] => one(dn),
            _ => format!("(|{})", dns.iter().map(one).collect::<String>()),
        }
    }

    /// The user's one entry, `None` unless exactly one matches.
    async fn find(&self, user: &str) -> Result<Option<SearchEntry>, Fault> {
        let c = &self.config;
        let filter = c.user_filter.replace("{user}", &ldap_escape(user));
        let mut attrs = vec![c.username_attribute.clone(), c.uid_attribute.clone()];
        attrs.extend(c.extra_attributes.keys().cloned());
        if c.group_base.is_none() {
            attrs.push(c.member_of_attribute.clone());
        }
        let mut entries = self.search(&c.user_base, &filter, &attrs).await?;
        if entries.len() != 1 {
            tracing::info!(
                source = %self.name,
                matches = entries.len(),
                "ldap: user search did not find exactly one entry; rejected"
            );
            return Ok(None);
        }
        Ok(Some(entries.remove(0)))
    }

    async fn check(&self, user: &str, password: &str) -> Result<Outcome, Fault> {
        let Some(entry) = self.find(user).await? else {
            return Ok(Outcome::Rejected);
        };
        if !self.check_password(&entry.dn, password).await? {
            tracing::info!(source = %self.name, dn = %entry.dn, "ldap: wrong password; rejected");
            return Ok(Outcome::Rejected);
        }
        self.identity(user, entry).await
    }

    /// The user as the directory describes them now, without a password (a session's
    /// `Token`): an account that is gone is `Rejected`.
    async fn look_up(&self, user: &str) -> Result<Outcome, Fault> {
        match self.find(user).await? {
            Some(entry) => self.identity(user, entry).await,
            None => Ok(Outcome::Rejected),
        }
    }

    /// The identity of a found entry: names, current groups, extra attributes.
    async fn identity(&self, user: &str, entry: SearchEntry) -> Result<Outcome, Fault> {
        let c = &self.config;
        let groups = match &c.group_base {
            Some(base) => self.search_groups(base, &entry.dn).await?,
            None => c
                .member_of_group_name
                .groups(attr(&entry, &c.member_of_attribute)),
        };
        let mut extra = BTreeMap::new();
        for (attribute, key) in &c.extra_attributes {
            let values = attr(&entry, attribute);
            if !values.is_empty() {
                extra.insert(key.clone(), values.to_vec());
            }
        }
        Ok(Outcome::Authenticated(Identity {
            username: first(&entry, &c.username_attribute)
                .unwrap_or(user)
                .to_owned(),
            uid: first(&entry, &c.uid_attribute)
                .unwrap_or(&entry.dn)
                .to_owned(),
            groups,
            extra,
            ..Identity::default()
        }))
    }
}

/// Why a credential is refused before the directory is asked, if it is.
fn refused_without_a_bind(user: &str, password: &str) -> Option<&'static str> {
    if password.is_empty() {
        // An empty password would make an unauthenticated bind, which succeeds.
        return Some("empty password");
    }
    if user.len() > MAX_USER_LEN || password.len() > MAX_PASSWORD_LEN {
        return Some("user name or password too long");
    }
    None
}

impl Verifier for LdapVerifier {
    fn name(&self) -> &str {
        &self.name
    }

    fn owns(&self, token: &str) -> bool {
        self.split(token).is_some()
    }

    /// Only tokens that would reach the directory: the ones refused here cost nobody a bind.
    fn throttle_subject<'t>(&self, token: &'t str) -> Option<&'t str> {
        self.split(token)
            .filter(|(user, password)| refused_without_a_bind(user, password).is_none())
            .map(|(user, _)| user)
    }

    fn verify<'a>(&'a self, token: &'a str, _audiences: &'a [String]) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            match self.split(token) {
                Some((user, password)) => self.login(user, password).await,
                None => Outcome::NotMine,
            }
        })
    }

    fn check_password<'a>(&'a self, user: &'a str, password: &'a str) -> BoxFuture<'a, Outcome> {
        Box::pin(self.login(user, password))
    }

    fn refresh<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            if user.is_empty() || user.len() > MAX_USER_LEN {
                return Outcome::Rejected;
            }
            let limit = self.config.timeout * 3;
            match tokio::time::timeout(limit, self.look_up(user)).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(Fault(why))) => Outcome::Undecided(format!("ldap: {why}")),
                Err(_) => Outcome::Undecided(format!("ldap: no answer within {limit:?}")),
            }
        })
    }
}

impl LdapVerifier {
    /// The whole password check of one user, bounded.
    async fn login(&self, user: &str, password: &str) -> Outcome {
        if let Some(why) = refused_without_a_bind(user, password) {
            tracing::info!(source = %self.name, "ldap: {why}; rejected without a bind");
            return Outcome::Rejected;
        }
        // A whole check is a few round trips; bound it so a stuck directory cannot hold
        // a review past a small multiple of the configured timeout.
        let limit = self.config.timeout * 3;
        match tokio::time::timeout(limit, self.check(user, password)).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(Fault(why))) => Outcome::Undecided(format!("ldap: {why}")),
            Err(_) => Outcome::Undecided(format!("ldap: no answer within {limit:?}")),
        }
    }
}

fn attr<'e>(entry: &'e SearchEntry, name: &str) -> &'e [String] {
    // Attribute names are case-insensitive; servers answer in their own spelling.
    entry
        .attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
        .unwrap_or(&[])
}

fn first<'e>(entry: &'e SearchEntry, name: &str) -> Option<&'e str> {
    attr(entry, name).first().map(String::as_str)
}

/// `cn=dev\2Cteam,ou=groups,...` -> `dev,team`: the value of a DN's first RDN, unescaped
/// (RFC 4514: `\` followed by a special character or two hex digits).
fn first_rdn_value(dn: &str) -> Option<String> {
    let (_, rest) = dn.split_once('=')?;
    let mut out = Vec::new();
    let bytes = rest.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| {
                    std::str::from_utf8(h)
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                });
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(*bytes.get(i + 1)?);
                        i += 2;
                    }
                }
            }
            b',' | b'+' => break,
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    let value = String::from_utf8(out).ok()?;
    (!value.is_empty()).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_rdn_value_unescapes() {
        assert_eq!(
            first_rdn_value("cn=dev,ou=groups,dc=x").as_deref(),
            Some("dev")
        );
        assert_eq!(first_rdn_value("cn=a\\2Cb,ou=g").as_deref(), Some("a,b"));
        assert_eq!(first_rdn_value("cn=a\\,b,ou=g").as_deref(), Some("a,b"));
        assert_eq!(first_rdn_value("nonsense"), None);
        assert_eq!(first_rdn_value("cn=,ou=g"), None);
    }

    /// Same-named groups in different branches stay apart unless the operator opts in to
    /// first-RDN names.
    #[test]
    fn member_of_groups_keep_the_dn_by_default() {
        let dns = [
            "cn=admins,ou=a,dc=x".to_string(),
            "cn=admins,ou=b,dc=x".to_string(),
        ];
        let c: Config = toml::from_str(
            "name = 'l'\nurl = 'ldaps://d'\nbind_dn = 'cn=s'\nbind_password_file = 'p'\nuser_base = 'dc=x'",
        )
        .unwrap();
        assert_eq!(c.member_of_group_name.groups(&dns), dns.to_vec());
        assert_eq!(MemberOfName::FirstRdn.groups(&dns), vec!["admins"]);
        let c: Config = toml::from_str(
            "name = 'l'\nurl = 'ldaps://d'\nbind_dn = 'cn=s'\nbind_password_file = 'p'\nuser_base = 'dc=x'\nmember_of_group_name = 'first_rdn'",
        )
        .unwrap();
        assert_eq!(c.member_of_group_name, MemberOfName::FirstRdn);
    }

    #[test]
    fn escaping_neutralises_filter_metacharacters() {
        assert_eq!(
            ldap_escape("we*ird)(name\\\0"),
            "we\\2aird\\29\\28name\\5c\\00"
        );
    }
}
