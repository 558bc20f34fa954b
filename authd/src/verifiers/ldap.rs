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
use std::sync::Arc;

use futures::future::BoxFuture;
use ldap3::{ldap_escape, Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::sync::Mutex;

use super::Verifier;
use crate::config::LdapConfig;
use crate::identity::{Identity, Outcome};

/// Longest user name looked up; longer ones are rejected without a query.
const MAX_USER_LEN: usize = 256;
/// Longest password sent in a bind.
const MAX_PASSWORD_LEN: usize = 1024;
/// Bound on the groups collected for one user, whatever the nesting.
const MAX_GROUPS: usize = 1000;
/// LDAP result code for a failed bind (RFC 4511).
const INVALID_CREDENTIALS: u32 = 49;

#[derive(Debug, thiserror::Error)]
pub enum LdapSetupError {
    #[error("bind_password_file {path}: cannot read: {source}")]
    Password {
        path: String,
        source: std::io::Error,
    },
    #[error("ca_file {path}: {message}")]
    Ca { path: String, message: String },
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
    config: LdapConfig,
    bind_password: String,
    settings: LdapConnSettings,
    service: Mutex<Shared>,
}

impl LdapVerifier {
    /// Reads the service password and CA; does not connect (the directory may come up later).
    pub fn new(config: &LdapConfig) -> Result<Self, LdapSetupError> {
        let bind_password = std::fs::read_to_string(&config.bind_password_file)
            .map_err(|source| LdapSetupError::Password {
                path: config.bind_password_file.display().to_string(),
                source,
            })?
            .trim_end_matches(['\r', '\n'])
            .to_owned();
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(config.timeout)
            .set_starttls(config.starttls);
        if let Some(path) = &config.ca_file {
            settings = settings.set_config(Arc::new(client_config(path)?));
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
        split_token(self.config.prefix.as_deref(), &self.config.separator, token)
    }

    async fn connect(&self) -> Result<Ldap, Fault> {
        let (conn, ldap) = LdapConnAsync::with_settings(self.settings.clone(), &self.config.url)
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
    async fn service(&self) -> Result<(u64, Ldap), Fault> {
        let mut shared = self.service.lock().await;
        if let Some((generation, ldap)) = shared.conn.as_mut() {
            if !ldap.is_closed() {
                return Ok((*generation, ldap.clone()));
            }
        }
        shared.conn = None;
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
        shared.generation += 1;
        let generation = shared.generation;
        shared.conn = Some((generation, ldap.clone()));
        Ok((generation, ldap))
    }

    /// Drops the shared connection if it is still the one that failed.
    async fn discard(&self, generation: u64) {
        let mut shared = self.service.lock().await;
        if shared.conn.as_ref().is_some_and(|(g, _)| *g == generation) {
            if let Some((_, mut ldap)) = shared.conn.take() {
                let _ = ldap.unbind().await;
            }
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

    async fn check(&self, user: &str, password: &str) -> Result<Outcome, Fault> {
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
            return Ok(Outcome::Rejected);
        }
        let entry = entries.remove(0);
        if !self.check_password(&entry.dn, password).await? {
            tracing::info!(source = %self.name, dn = %entry.dn, "ldap: wrong password; rejected");
            return Ok(Outcome::Rejected);
        }
        let groups = match &c.group_base {
            Some(base) => self.search_groups(base, &entry.dn).await?,
            None => attr(&entry, &c.member_of_attribute)
                .iter()
                .filter_map(|dn| first_rdn_value(dn))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .take(MAX_GROUPS)
                .collect(),
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

impl Verifier for LdapVerifier {
    fn name(&self) -> &str {
        &self.name
    }

    fn owns(&self, token: &str) -> bool {
        self.split(token).is_some()
    }

    fn verify<'a>(&'a self, token: &'a str, _audiences: &'a [String]) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let Some((user, password)) = self.split(token) else {
                return Outcome::NotMine;
            };
            if password.is_empty() {
                // An empty password would make an unauthenticated bind, which succeeds.
                tracing::info!(source = %self.name, "ldap: empty password; rejected without a bind");
                return Outcome::Rejected;
            }
            if user.len() > MAX_USER_LEN || password.len() > MAX_PASSWORD_LEN {
                tracing::info!(source = %self.name, "ldap: user name or password too long; rejected");
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
        })
    }
}

/// Splits an owned token into user and password: `[prefix]user<separator>password`, at the
/// first separator, with a non-empty user name. `None`: not this source's shape.
fn split_token<'t>(
    prefix: Option<&str>,
    separator: &str,
    token: &'t str,
) -> Option<(&'t str, &'t str)> {
    let rest = match prefix {
        Some(p) => token.strip_prefix(p)?,
        None => token,
    };
    let (user, password) = rest.split_once(separator)?;
    (!user.is_empty()).then_some((user, password))
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

fn client_config(path: &std::path::Path) -> Result<rustls::ClientConfig, LdapSetupError> {
    let ca_err = |message: String| LdapSetupError::Ca {
        path: path.display().to_string(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs =
        CertificateDer::pem_file_iter(path).map_err(|e| ca_err(format!("cannot read: {e}")))?;
    for cert in certs {
        let cert = cert.map_err(|e| ca_err(format!("bad PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| ca_err(format!("bad certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(ca_err("no certificates found".into()));
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_split_at_the_first_separator() {
        assert_eq!(split_token(None, ":", "a:b:c"), Some(("a", "b:c")));
        assert_eq!(split_token(None, ":", "a:"), Some(("a", "")));
        assert_eq!(split_token(None, ":", ":pw"), None);
        assert_eq!(split_token(None, ":", "opaque"), None);
        assert_eq!(split_token(Some("l/"), "::", "l/a::b"), Some(("a", "b")));
        assert_eq!(split_token(Some("l/"), "::", "a::b"), None);
    }

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

    #[test]
    fn escaping_neutralises_filter_metacharacters() {
        assert_eq!(
            ldap_escape("we*ird)(name\\\0"),
            "we\\2aird\\29\\28name\\5c\\00"
        );
    }
}
