//! The edge's configuration: one TOML file, validated at start-up; errors name the field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use authd_runtime::config::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HTTPS listen address for TokenReviews.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Plain-HTTP admin listener (/healthz, /readyz, /metrics); off when absent.
    pub admin_listen: Option<SocketAddr>,
    /// Largest accepted request body; larger ones get 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// A client must finish sending request headers within this time.
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A client must finish sending the body within this time (408 otherwise).
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// A connection with no request in progress for this long is closed (keep-alive and
    /// HTTP/2 connections included).
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// The TLS handshake must finish within this time.
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Deadline for authd's verdict; past it the review is answered 500 (retryable).
    #[serde(default = "default_review_timeout", with = "humantime_serde")]
    pub review_timeout: Duration,
    /// Most reviews in progress at once; beyond it reviews are answered at once with the
    /// retryable 500 ("overloaded") instead of queueing (see docs/configuration.md).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight_reviews: usize,
    /// How long in-flight reviews may take to finish after SIGTERM.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Cluster name sent to authd for `POST /authenticate`.
    #[serde(default = "default_cluster")]
    pub default_cluster: String,
    pub tls: TlsConfig,
    /// authd location; required by `authd-edge serve`, unused in the all-in-one binary.
    pub authd: Option<AuthdConfig>,
    /// Clusters served at `POST /clusters/{name}/authenticate`.
    #[serde(default)]
    pub clusters: BTreeMap<String, ClusterConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain served to kube-apiserver.
    pub cert: PathBuf,
    /// PEM private key for `cert`.
    pub key: PathBuf,
    /// PEM CA(s) whose client certificates `POST /authenticate` requires (mTLS); the route
    /// is open to any TLS client when absent.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthdConfig {
    /// One gRPC endpoint, e.g. `http://127.0.0.1:50051` (same as a one-element `endpoints`).
    pub endpoint: Option<String>,
    /// A fixed set of authd replicas, balanced.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// `host:port` whose addresses (a headless Service) are the replicas; re-resolved
    /// every `dns_refresh`.
    pub dns: Option<String>,
    #[serde(default = "default_dns_refresh", with = "humantime_serde")]
    pub dns_refresh: Duration,
    /// How often each replica's gRPC health is probed; failing replicas leave the rotation.
    #[serde(default = "default_health_interval", with = "humantime_serde")]
    pub health_interval: Duration,
    /// Time allowed to establish a connection to authd.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// PEM CA that signed authd's server certificate; required for https:// and `dns`
    /// with TLS.
    pub ca: Option<PathBuf>,
    /// The edge's client certificate and key for mutual TLS with authd (re-read on change).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl AuthdConfig {
    /// The static endpoints (`endpoint` and `endpoints` together).
    pub fn static_endpoints(&self) -> Vec<String> {
        self.endpoint
            .iter()
            .chain(self.endpoints.iter())
            .cloned()
            .collect()
    }
}

impl AuthdConfig {
    fn validate(&self) -> Result<(), String> {
        let endpoints = self.static_endpoints();
        match (endpoints.is_empty(), &self.dns) {
            (true, None) => {
                return Err("authd: one of endpoint, endpoints or dns is required".into())
            }
            (false, Some(_)) => {
                return Err("authd.dns: use either dns or endpoint/endpoints, not both".into())
            }
            _ => {}
        }
        for e in &endpoints {
            let field = if self.endpoint.as_ref() == Some(e) {
                "authd.endpoint"
            } else {
                "authd.endpoints"
            };
            let rest = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"))
                .ok_or_else(|| format!("{field}: {e:?} must start with http:// or https://"))?;
            if rest.trim_end_matches('/').rsplit_once(':').is_none() {
                return Err(format!("{field}: {e:?} needs a port"));
            }
            if e.starts_with("https://") && self.ca.is_none() {
                return Err(format!(
                    "authd.ca: required for the https:// endpoint {e:?}"
                ));
            }
            if e.starts_with("http://") && self.ca.is_some() {
                return Err(format!(
                    "{field}: {e:?} is plaintext but authd.ca is set; use https://"
                ));
            }
        }
        if let Some(d) = &self.dns {
            let port = d.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok());
            if port.is_none() || d.contains("://") {
                return Err(format!("authd.dns: {d:?} must be host:port"));
            }
            if self.dns_refresh.is_zero() {
                return Err("authd.dns_refresh: must be greater than 0".into());
            }
        }
        if self.health_interval.is_zero() {
            return Err("authd.health_interval: must be greater than 0".into());
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err("authd.client_cert and authd.client_key: set both or neither".into());
        }
        if self.client_cert.is_some() && self.ca.is_none() {
            return Err("authd.client_cert: needs authd.ca (mutual TLS)".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// PEM CA whose client certificates this cluster's endpoint requires: the certificate
    /// of this cluster's kube-apiserver (mTLS, bound to the cluster).
    pub client_ca: Option<PathBuf>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8443))
}
fn default_max_body() -> usize {
    1024 * 1024
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_review_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(25)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(90)
}
fn default_max_in_flight() -> usize {
    1024
}
fn default_dns_refresh() -> Duration {
    Duration::from_secs(5)
}
fn default_health_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_cluster() -> String {
    "default".into()
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        authd_runtime::config::load(path, Self::parse)
    }

    pub fn parse(text: &str, base: &Path) -> Result<Self, String> {
        let mut c: Config = authd_runtime::config::from_toml(text)?;
        let mut paths = vec![&mut c.tls.cert, &mut c.tls.key];
        paths.extend(c.tls.client_ca.as_mut());
        paths.extend(c.clusters.values_mut().filter_map(|k| k.client_ca.as_mut()));
        if let Some(a) = c.authd.as_mut() {
            paths.extend(a.ca.as_mut());
            paths.extend(a.client_cert.as_mut());
            paths.extend(a.client_key.as_mut());
        }
        for p in paths {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.max_body_bytes == 0 {
            return Err("max_body_bytes: must be greater than 0".into());
        }
        if self.default_cluster.is_empty() {
            return Err("default_cluster: must not be empty".into());
        }
        for name in self.clusters.keys() {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            {
                return Err(format!(
                    "clusters.{name:?}: cluster names may only hold letters, digits, '-', '_' and '.'"
                ));
            }
        }
        if self.idle_timeout.is_zero() {
            return Err("idle_timeout: must be greater than 0".into());
        }
        if self.max_in_flight_reviews == 0 {
            return Err("max_in_flight_reviews: must be greater than 0".into());
        }
        if let Some(a) = &self.authd {
            a.validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TLS: &str = "[tls]\ncert = \"e.crt\"\nkey = \"e.key\"\n";

    fn parse(extra: &str) -> Result<Config, String> {
        Config::parse(&format!("{TLS}{extra}"), Path::new("/etc/edge"))
    }

    #[test]
    fn replica_sources_and_paths() {
        let c = parse(
            "[authd]\nendpoints = [\"https://a:1\", \"https://b:2\"]\nca = \"ca.crt\"\n\
             client_cert = \"c.crt\"\nclient_key = \"c.key\"\n\
             [clusters.dev]\nclient_ca = \"dev-ca.crt\"\n",
        )
        .unwrap();
        let a = c.authd.unwrap();
        assert_eq!(a.static_endpoints().len(), 2);
        assert_eq!(a.ca.unwrap(), Path::new("/etc/edge/ca.crt"));
        assert_eq!(
            c.clusters["dev"].client_ca.as_deref(),
            Some(Path::new("/etc/edge/dev-ca.crt"))
        );
        let d = parse("[authd]\ndns = \"authd-headless.ns.svc:50051\"\ndns_refresh = \"2s\"\n")
            .unwrap()
            .authd
            .unwrap();
        assert_eq!(d.dns_refresh, Duration::from_secs(2));
        assert_eq!(d.health_interval, Duration::from_secs(1));
    }

    #[test]
    fn errors_name_the_field() {
        for (toml, field) in [
            ("[authd]\n", "authd"),
            (
                "[authd]\nendpoint = \"http://a:1\"\ndns = \"b:2\"\n",
                "authd.dns",
            ),
            ("[authd]\ndns = \"no-port\"\n", "authd.dns"),
            ("[authd]\nendpoints = [\"https://a:1\"]\n", "authd.ca"),
            (
                "[authd]\nendpoints = [\"http://a:1\"]\nca = \"ca.crt\"\n",
                "authd.endpoints",
            ),
            ("[authd]\nendpoint = \"http://a\"\n", "authd.endpoint"),
            (
                "[authd]\nendpoint = \"https://a:1\"\nca = \"c\"\nclient_cert = \"x\"\n",
                "authd.client_key",
            ),
            ("max_in_flight_reviews = 0\n", "max_in_flight_reviews"),
            ("idle_timeout = \"0s\"\n", "idle_timeout"),
            ("[clusters.dev]\nclient_cert = \"x\"\n", "client_cert"),
        ] {
            let e = parse(toml).unwrap_err();
            assert!(e.contains(field), "{toml:?}: {e}");
        }
    }
}
