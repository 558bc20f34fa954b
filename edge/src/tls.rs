//! The edge's TLS: the serving configuration (h2 and http/1.1, client certificates checked
//! against the union of the configured client CAs at the handshake), the per-route check
//! that binds a kube-apiserver certificate to its cluster, and the client configuration
//! for mutual TLS to authd. All of it is rebuilt when its files change.
//!
//! Every review route needs a client certificate: `tls.client_ca` is required and is the
//! CA of each cluster route without its own. Only `tls.insecure_allow_anonymous_reviews`
//! opens routes, and it is logged at warn when loaded and as anonymous callers arrive.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use authd_runtime::pem::{load_certs, load_key, root_store};
use authd_runtime::{cert, Reloading};
use rustls::client::WebPkiServerVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::config::{AuthdConfig, Config};
use crate::route::Route;

/// The common-name prefix `kube-authd certs init --cluster NAME` gives kube-apiserver
/// client certificates; such a certificate is only accepted on cluster NAME's endpoint.
pub const APISERVER_CN_PREFIX: &str = "kube-apiserver:";

fn verifier(roots: RootCertStore, optional: bool) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
    let b = WebPkiClientVerifier::builder(Arc::new(roots));
    let b = if optional {
        b.allow_unauthenticated()
    } else {
        b
    };
    Ok(b.build()?)
}

/// Serving TLS and the client-certificate rules of each route, from one set of files.
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    pub client_auth: ClientAuth,
}

/// Which CA each route's client certificate must chain to.
pub struct ClientAuth {
    /// Cluster name of `POST /authenticate`.
    default_cluster: String,
    /// `tls.client_ca`, for `POST /authenticate`.
    default_route: Option<Arc<dyn ClientCertVerifier>>,
    /// `clusters.NAME.client_ca`, for `POST /clusters/NAME/authenticate`; a cluster not
    /// listed uses `default_route`.
    clusters: BTreeMap<String, Arc<dyn ClientCertVerifier>>,
    /// Unix second of the last warning about an anonymous caller (at most one a minute).
    last_anonymous_warning: AtomicU64,
}

/// Least time between two warnings that an anonymous caller was answered.
const ANONYMOUS_WARNING_INTERVAL: Duration = Duration::from_secs(60);

impl ClientAuth {
    /// Checks the certificate chain a client presented against the route's CA; `Err` says
    /// why it is refused. Routes without a CA (only with
    /// `tls.insecure_allow_anonymous_reviews`) accept any TLS client, with a warning.
    pub fn check(
        &self,
        route: Route<'_>,
        chain: Option<&[CertificateDer<'static>]>,
    ) -> Result<(), String> {
        let (cluster, verifier, field) = match route {
            Route::Default => (
                self.default_cluster.as_str(),
                self.default_route.as_ref(),
                "tls.client_ca".to_owned(),
            ),
            Route::Cluster(cluster) => match self.clusters.get(cluster) {
                Some(own) => (cluster, Some(own), format!("clusters.{cluster}.client_ca")),
                None => (
                    cluster,
                    self.default_route.as_ref(),
                    "tls.client_ca".to_owned(),
                ),
            },
        };
        let Some(verifier) = verifier else {
            self.warn_anonymous(cluster);
            return Ok(());
        };
        let Some((leaf, intermediates)) = chain.and_then(|c| c.split_first()) else {
            return Err(format!(
                "no client certificate presented; cluster {cluster:?} requires one issued by {field}"
            ));
        };
        let subject = cert::common_name(leaf).unwrap_or_else(|| "<no CN>".into());
        verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map_err(|e| {
                format!(
                    "client certificate {subject:?} is not valid for cluster {cluster:?}: not issued by {field} ({e})"
                )
            })?;
        // Certificates named for a cluster are bound to it even when clusters share a CA.
        match subject.strip_prefix(APISERVER_CN_PREFIX) {
            Some(bound) if bound != cluster => Err(format!(
                "client certificate {subject:?} is bound to cluster {bound:?}, not {cluster:?}"
            )),
            _ => Ok(()),
        }
    }

    /// A warning that an unauthenticated caller got a route, at most once a minute: loud
    /// enough to be noticed, bounded whatever the callers do.
    fn warn_anonymous(&self, cluster: &str) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_anonymous_warning.load(Ordering::Relaxed);
        if (last == 0 || now >= last + ANONYMOUS_WARNING_INTERVAL.as_secs())
            && self
                .last_anonymous_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                cluster,
                "answering a caller without a client certificate \
                 (tls.insecure_allow_anonymous_reviews): anyone who reaches this port can test tokens"
            );
        }
    }
}

/// Builds the serving configuration. With any client CA configured, the handshake asks
/// for a client certificate and verifies a presented one against the union of the CAs
/// (the route, hence the cluster, is only known once the request arrives); it is required
/// at the handshake when every route needs one.
pub fn server_tls(config: &Config) -> anyhow::Result<ServerTls> {
    let certs = load_certs(&config.tls.cert, "tls.cert")?;
    let key = load_key(&config.tls.key, "tls.key")?;
    let default_route = match &config.tls.client_ca {
        Some(p) => Some(verifier(
            root_store([(p.as_path(), "tls.client_ca")])?,
            false,
        )?),
        None => None,
    };
    let mut clusters = BTreeMap::new();
    let mut all: Vec<(&Path, String)> = config
        .tls
        .client_ca
        .iter()
        .map(|p| (p.as_path(), "tls.client_ca".to_owned()))
        .collect();
    for (name, c) in &config.clusters {
        if let Some(p) = &c.client_ca {
            let field = format!("clusters.{name}.client_ca");
            clusters.insert(
                name.clone(),
                verifier(root_store([(p.as_path(), field.as_str())])?, false)?,
            );
            all.push((p, field));
        }
    }
    // Clusters without their own CA use tls.client_ca: with it set, every route needs a
    // certificate and the handshake requires one.
    let every_route_needs_a_cert = default_route.is_some();
    if !every_route_needs_a_cert {
        let open: Vec<&str> = std::iter::once(config.default_cluster.as_str())
            .chain(
                config
                    .clusters
                    .iter()
                    .filter(|(_, c)| c.client_ca.is_none())
                    .map(|(name, _)| name.as_str()),
            )
            .collect();
        tracing::warn!(
            clusters = ?open,
            "tls.insecure_allow_anonymous_reviews: these clusters' review routes answer any \
             TLS client; anyone who reaches the port can test tokens. Set tls.client_ca"
        );
    }
    let builder = ServerConfig::builder();
    let builder = if all.is_empty() {
        builder.with_no_client_auth()
    } else {
        let roots = root_store(all.iter().map(|(p, f)| (*p, f.as_str())))?;
        builder.with_client_cert_verifier(verifier(roots, !every_route_needs_a_cert)?)
    };
    let mut server = builder
        .with_single_cert(certs, key)
        .context("tls.cert/tls.key: the key does not match the certificate or is unsupported")?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ServerTls {
        config: Arc::new(server),
        client_auth: ClientAuth {
            default_cluster: config.default_cluster.clone(),
            default_route,
            clusters,
            last_anonymous_warning: AtomicU64::new(0),
        },
    })
}

/// Every file the serving TLS is built from.
fn server_files(config: &Config) -> Vec<PathBuf> {
    let mut files = vec![config.tls.cert.clone(), config.tls.key.clone()];
    files.extend(config.tls.client_ca.clone());
    files.extend(config.clusters.values().filter_map(|c| c.client_ca.clone()));
    files
}

/// The serving TLS, rebuilt when any of its files changes.
pub fn reloading_server(config: &Config) -> anyhow::Result<Reloading<ServerTls>> {
    let c = config.clone();
    Reloading::start("edge serving TLS", server_files(config), move || {
        server_tls(&c)
    })
}

/// The login listener's TLS (`[login]`): the same serving certificate, no client
/// certificate asked for (people log in there), and no route that would take one: the
/// handler behind it serves the login routes only.
pub fn login_server_tls(config: &Config) -> anyhow::Result<ServerTls> {
    let certs = load_certs(&config.tls.cert, "tls.cert")?;
    let key = load_key(&config.tls.key, "tls.key")?;
    let mut server = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("tls.cert/tls.key: the key does not match the certificate or is unsupported")?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ServerTls {
        config: Arc::new(server),
        client_auth: ClientAuth {
            default_cluster: config.default_cluster.clone(),
            default_route: None,
            clusters: BTreeMap::new(),
            last_anonymous_warning: AtomicU64::new(0),
        },
    })
}

/// [`login_server_tls`], rebuilt when the certificate or key changes.
pub fn reloading_login_server(config: &Config) -> anyhow::Result<Reloading<ServerTls>> {
    let c = config.clone();
    Reloading::start(
        "edge login TLS",
        vec![config.tls.cert.clone(), config.tls.key.clone()],
        move || login_server_tls(&c),
    )
}

/// TLS to authd: its CA, and the edge's client certificate when configured. `None`
/// without `authd.ca` (plaintext gRPC).
pub fn client_tls(authd: &AuthdConfig) -> anyhow::Result<Option<ClientConfig>> {
    let Some(ca) = &authd.ca else {
        return Ok(None);
    };
    let verifier =
        WebPkiServerVerifier::builder(Arc::new(root_store([(ca.as_path(), "authd.ca")])?))
            .build()
            .context("authd.ca")?;
    let b = ClientConfig::builder().with_webpki_verifier(verifier);
    let mut config = match &authd.client_identity {
        Some(id) => {
            b.with_client_auth_cert(
                load_certs(&id.cert, "authd.client_cert")?,
                load_key(&id.key, "authd.client_key")?,
            )
            .context("authd.client_cert/authd.client_key: the key does not match the certificate")?
        }
        None => b.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(config))
}

/// [`client_tls`], rebuilt when its files change. `None` without `authd.ca`.
pub fn reloading_client(authd: &AuthdConfig) -> anyhow::Result<Option<Reloading<ClientConfig>>> {
    let Some(ca) = authd.ca.clone() else {
        return Ok(None);
    };
    let mut files = vec![ca];
    if let Some(id) = &authd.client_identity {
        files.extend([id.cert.clone(), id.key.clone()]);
    }
    let authd = authd.clone();
    let build = move || -> anyhow::Result<ClientConfig> {
        client_tls(&authd)?.context("authd.ca: not set")
    };
    Ok(Some(Reloading::start(
        "edge client TLS to authd",
        files,
        build,
    )?))
}

/// Why a handshake failed, when it was the client certificate that was refused.
pub fn handshake_refusal(e: &std::io::Error) -> Option<&'static str> {
    match e
        .get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())?
    {
        rustls::Error::NoCertificatesPresented => {
            Some("client certificate required but none was presented")
        }
        rustls::Error::InvalidCertificate(
            rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. },
        ) => Some("client certificate refused: expired"),
        rustls::Error::InvalidCertificate(_) => {
            Some("client certificate refused: not issued by a configured client CA, or invalid")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };

    /// A CA in `dir` as `{name}.crt`, and what it takes to issue from it.
    fn ca(dir: &Path, name: &str) -> Issuer<'static, KeyPair> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
        Issuer::from_ca_cert_pem(&cert.pem(), key).unwrap()
    }

    /// A certificate named `cn` issued by `ca`, for `usage`; written as `{file}.crt` and
    /// `{file}.key` in `dir`, and returned as DER.
    fn issue(
        dir: &Path,
        ca: &Issuer<'static, KeyPair>,
        cn: &str,
        file: &str,
        usage: ExtendedKeyUsagePurpose,
    ) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, ca).unwrap();
        std::fs::write(dir.join(format!("{file}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
        cert.der().clone()
    }

    /// Clusters `a` and `b` each trust their own CA; `shared` and the default route trust
    /// `a`'s. A kube-apiserver certificate is only accepted on its own cluster's endpoint.
    #[test]
    fn a_client_certificate_is_bound_to_its_cluster() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (ca_a, ca_b) = (ca(d, "ca-a"), ca(d, "ca-b"));
        issue(
            d,
            &ca_a,
            "edge",
            "edge",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let from_a = |cn: &str, file: &str| {
            vec![issue(
                d,
                &ca_a,
                cn,
                file,
                ExtendedKeyUsagePurpose::ClientAuth,
            )]
        };
        let apiserver_a = from_a("kube-apiserver:a", "apiserver-a");
        let apiserver_b = vec![issue(
            d,
            &ca_b,
            "kube-apiserver:b",
            "apiserver-b",
            ExtendedKeyUsagePurpose::ClientAuth,
        )];
        let unbound_a = from_a("some-client", "unbound-a");
        let config = Config::parse(
            "default_cluster = \"a\"\n\
             [tls]\ncert = \"edge.crt\"\nkey = \"edge.key\"\nclient_ca = \"ca-a.crt\"\n\
             [clusters.a]\nclient_ca = \"ca-a.crt\"\n\
             [clusters.b]\nclient_ca = \"ca-b.crt\"\n\
             [clusters.shared]\nclient_ca = \"ca-a.crt\"\n\
             [clusters.inherits]\n",
            d,
        )
        .unwrap();
        let auth = server_tls(&config).unwrap().client_auth;
        let check =
            |route, chain: &Vec<CertificateDer<'static>>| auth.check(route, Some(chain.as_slice()));

        assert_eq!(check(Route::Cluster("a"), &apiserver_a), Ok(()));
        assert_eq!(check(Route::Cluster("b"), &apiserver_b), Ok(()));
        // Cluster A's certificate on B's endpoint: not issued by B's CA.
        let e = check(Route::Cluster("b"), &apiserver_a).unwrap_err();
        assert!(e.contains("not issued by clusters.b.client_ca"), "{e}");
        let e = check(Route::Cluster("a"), &apiserver_b).unwrap_err();
        assert!(e.contains("not issued by clusters.a.client_ca"), "{e}");
        // Same CA, but the certificate is named for another cluster.
        let e = check(Route::Cluster("shared"), &apiserver_a).unwrap_err();
        assert!(e.contains("bound to cluster \"a\""), "{e}");
        assert_eq!(check(Route::Cluster("shared"), &unbound_a), Ok(()));
        // The default route is the default cluster's.
        assert_eq!(check(Route::Default, &apiserver_a), Ok(()));
        assert!(check(Route::Default, &apiserver_b).is_err());
        // No certificate at all on a route that requires one.
        let e = auth.check(Route::Cluster("b"), None).unwrap_err();
        assert!(e.contains("no client certificate presented"), "{e}");
        // A cluster without its own CA uses tls.client_ca; it is never open.
        let e = auth.check(Route::Cluster("inherits"), None).unwrap_err();
        assert!(e.contains("issued by tls.client_ca"), "{e}");
        let e = check(Route::Cluster("inherits"), &apiserver_b).unwrap_err();
        assert!(e.contains("not issued by tls.client_ca"), "{e}");
        assert_eq!(check(Route::Cluster("inherits"), &unbound_a), Ok(()));
    }
}
