//! Who may call what: a tower layer in front of every gRPC service that names the caller
//! from its verified client certificate and enforces the per-client RPC allow-lists of
//! `[clients.NAME]` (PERMISSION_DENIED otherwise). It attaches one [`Caller`] to every call:
//! the [`ClientIdentity`], the caller's [`ClusterGrant`] (which the Authenticator and
//! Envoy's `Check` check against the cluster asked for; the layer does not read bodies) and
//! its `authd_grpc_requests` counters. A `Caller` is made once per connection and shared by its
//! calls.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};

use futures::future::{Either, Ready};
use rustls_pki_types::CertificateDer;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::config::ClientAccess;
use crate::metrics::{ClientLabels, Name};
use crate::policy::ANY_CLUSTER;

/// The caller's certificate identity (CN, or the first DNS SAN without a CN);
/// [`ANONYMOUS`] for callers without a client certificate (plaintext listeners).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity(pub Arc<str>);

/// The name used for callers without a client certificate.
pub const ANONYMOUS: &str = "anonymous";

impl ClientIdentity {
    pub fn new(name: &str) -> Self {
        Self(name.into())
    }

    pub fn anonymous() -> Self {
        Self::new(ANONYMOUS)
    }

    /// The identity the access layer attached to `request`, if any.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&ClientIdentity> {
        Caller::of(request).map(|c| &c.identity)
    }
}

/// Who calls, as the access layer attaches it to every call (one request extension, an
/// `Arc` shared by every call on the connection).
#[derive(Debug)]
pub struct Caller {
    pub identity: ClientIdentity,
    /// The clusters it may ask `Authenticate` for.
    pub grant: ClusterGrant,
    /// `authd_grpc_requests{client, method="Authenticate"}`.
    pub authenticate_calls: Counter,
    /// `authd_grpc_requests{client, method="Check"}`, resolved on the caller's first Check
    /// (most callers never make one).
    check_calls: OnceLock<Counter>,
    requests: Requests,
}

impl Caller {
    fn new(identity: ClientIdentity, policy: &AccessPolicy, requests: &Requests) -> Arc<Self> {
        let grant = policy.grant(&identity.0);
        let authenticate_calls = requests
            .get_or_create(&ClientLabels {
                client: Name(identity.0.clone()),
                method: "Authenticate",
            })
            .clone();
        Arc::new(Self {
            identity,
            grant,
            authenticate_calls,
            check_calls: OnceLock::new(),
            requests: requests.clone(),
        })
    }

    /// The caller the access layer attached to `request`, if any.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&Caller> {
        request.extensions().get::<Arc<Caller>>().map(|c| &**c)
    }

    /// The caller the access layer attached to `request`, kept past the request.
    pub fn shared<T>(request: &tonic::Request<T>) -> Option<Arc<Caller>> {
        request.extensions().get::<Arc<Caller>>().cloned()
    }

    /// Counts one `Check` call.
    pub fn count_check(&self) {
        self.check_calls
            .get_or_init(|| {
                self.requests
                    .get_or_create(&ClientLabels {
                        client: self.name(),
                        method: "Check",
                    })
                    .clone()
            })
            .inc();
    }

    /// The caller's name for logs and metrics.
    pub fn name(&self) -> Name {
        Name(self.identity.0.clone())
    }
}

/// `authd_grpc_requests`, which names the caller.
type Requests = Family<ClientLabels, Counter>;

/// The health service is open to every caller that passed the TLS layer: load balancers
/// and edges probe it before they send anything else.
const ALWAYS_ALLOWED_SERVICE: &str = "grpc.health.v1.Health";

/// Per-client allow-lists; empty means every caller may call every RPC.
#[derive(Clone, Debug, Default)]
pub struct AccessPolicy {
    clients: BTreeMap<String, BTreeSet<String>>,
    clusters: HashMap<String, ClusterGrant>,
}

/// The clusters a caller may ask `Authenticate` for.
#[derive(Clone, Debug)]
pub enum ClusterGrant {
    /// Every cluster authd serves: no `[clients]` allow-lists, or `clusters = ["*"]`.
    Any,
    /// Only these (`[clients.NAME] clusters`); unknown callers get none.
    Only(Arc<BTreeSet<String>>),
}

impl ClusterGrant {
    /// `Err` carries the reason for the refusal.
    pub fn check(&self, client: &str, cluster: &str) -> Result<(), String> {
        match self {
            ClusterGrant::Only(clusters) if !clusters.contains(cluster) => Err(format!(
                "client {client:?} may not ask for cluster {cluster:?} (not in clients.{client}.clusters)"
            )),
            _ => Ok(()),
        }
    }
}

impl AccessPolicy {
    /// The allow-lists of `[clients]`: RPCs and clusters.
    pub fn from_config(clients: &BTreeMap<String, ClientAccess>) -> Self {
        let clusters = clients
            .iter()
            .map(|(name, c)| {
                let grant = if c.clusters.iter().any(|x| x == ANY_CLUSTER) {
                    ClusterGrant::Any
                } else {
                    ClusterGrant::Only(Arc::new(c.clusters.iter().cloned().collect()))
                };
                (name.clone(), grant)
            })
            .collect();
        let methods = clients
            .iter()
            .map(|(name, c)| (name.clone(), c.methods.iter().cloned().collect()))
            .collect();
        Self {
            clients: methods,
            clusters,
        }
    }

    /// The clusters `client` may ask for.
    fn grant(&self, client: &str) -> ClusterGrant {
        if self.clients.is_empty() {
            return ClusterGrant::Any;
        }
        self.clusters
            .get(client)
            .cloned()
            .unwrap_or_else(|| ClusterGrant::Only(Arc::default()))
    }

    /// `Err` carries the reason for the refusal.
    fn check(&self, client: &str, service: &str, method: &str) -> Result<(), String> {
        if self.clients.is_empty() || service == ALWAYS_ALLOWED_SERVICE {
            return Ok(());
        }
        match self.clients.get(client) {
            Some(methods) if methods.contains(method) => Ok(()),
            Some(_) => Err(format!(
                "client {client:?} may not call {method} (not in clients.{client}.methods)"
            )),
            None => Err(format!("unknown client {client:?} (no [clients.{client}])")),
        }
    }
}

type Chain = Vec<CertificateDer<'static>>;

/// Callers by connection: every call on one TLS connection carries the same `Arc` of the
/// peer's chain, so the leaf certificate is parsed once per connection, not once per call.
/// Keyed by the chain's address; the entry's `Weak` keeps that address from being reused
/// by another connection's chain while the entry exists, and a dead one is recomputed.
struct Names {
    by_chain: Mutex<HashMap<usize, Known>>,
    /// Every caller without a client certificate.
    anonymous: Arc<Caller>,
}

/// A connection's chain (kept from being reused while the entry exists) and its caller.
type Known = (Weak<Chain>, Arc<Caller>);

/// Entries kept before the dead ones (closed connections) are swept.
const NAMES_SWEEP_AT: usize = 4096;

impl Names {
    fn new(policy: &AccessPolicy, requests: &Requests) -> Self {
        Self {
            by_chain: Mutex::default(),
            anonymous: Caller::new(ClientIdentity::anonymous(), policy, requests),
        }
    }

    fn caller(
        &self,
        extensions: &http::Extensions,
        policy: &AccessPolicy,
        requests: &Requests,
    ) -> Arc<Caller> {
        let Some(chain) = extensions
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.peer_certs())
        else {
            return self.anonymous.clone();
        };
        let key = Arc::as_ptr(&chain) as usize;
        let mut names = self.by_chain.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((weak, caller)) = names.get(&key) {
            if weak
                .upgrade()
                .is_some_and(|live| Arc::ptr_eq(&live, &chain))
            {
                return caller.clone();
            }
        }
        let caller = match chain.first().and_then(authd_runtime::cert::identity) {
            Some(name) => Caller::new(ClientIdentity::new(&name), policy, requests),
            None => self.anonymous.clone(),
        };
        if names.len() >= NAMES_SWEEP_AT {
            names.retain(|_, (weak, _)| weak.strong_count() > 0);
        }
        names.insert(key, (Arc::downgrade(&chain), caller.clone()));
        caller
    }
}

#[derive(Clone)]
pub struct AccessLayer {
    policy: Arc<AccessPolicy>,
    names: Arc<Names>,
    requests: Requests,
}

impl AccessLayer {
    /// `requests` is `authd_grpc_requests`: each caller's `Authenticate` counter is resolved
    /// once per connection.
    pub fn new(policy: AccessPolicy, requests: Requests) -> Self {
        let names = Names::new(&policy, &requests);
        Self {
            policy: Arc::new(policy),
            names: Arc::new(names),
            requests,
        }
    }
}

impl<S> tower::Layer<S> for AccessLayer {
    type Service = Access<S>;
    fn layer(&self, inner: S) -> Access<S> {
        Access {
            inner,
            policy: self.policy.clone(),
            names: self.names.clone(),
            requests: self.requests.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Access<S> {
    inner: S,
    policy: Arc<AccessPolicy>,
    names: Arc<Names>,
    requests: Requests,
}

impl<S, B, R> tower::Service<http::Request<B>> for Access<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    R: Default,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Either<Ready<Result<http::Response<R>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let caller = self
            .names
            .caller(req.extensions(), &self.policy, &self.requests);
        let client = &caller.identity;
        // gRPC paths are /package.Service/Method.
        let mut parts = req.uri().path().trim_start_matches('/').splitn(2, '/');
        let service = parts.next().unwrap_or("");
        let method = parts.next().unwrap_or("");
        if let Err(why) = self.policy.check(&client.0, service, method) {
            tracing::warn!(
                client = &*client.0,
                rpc = req.uri().path(),
                reason = why,
                "gRPC call refused: PERMISSION_DENIED"
            );
            let status = tonic::Status::permission_denied(why);
            return Either::Left(futures::future::ready(Ok(status.into_http())));
        }
        tracing::debug!(client = &*client.0, rpc = req.uri().path(), "gRPC call");
        req.extensions_mut().insert(caller);
        Either::Right(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_lists() {
        let open = AccessPolicy::default();
        assert!(open
            .check("anyone", "kubeauthd.v1.Admin", "RevokeUser")
            .is_ok());
        let p = AccessPolicy::from_config(&BTreeMap::from([(
            "edge".to_owned(),
            ClientAccess {
                methods: vec!["Authenticate".to_owned()],
                clusters: vec!["*".to_owned()],
            },
        )]));
        assert!(p
            .check("edge", "kubeauthd.v1.Authenticator", "Authenticate")
            .is_ok());
        let e = p
            .check("edge", "kubeauthd.v1.Admin", "RevokeUser")
            .unwrap_err();
        assert!(e.contains("may not call RevokeUser"), "{e}");
        let e = p
            .check("mallory", "kubeauthd.v1.Authenticator", "Authenticate")
            .unwrap_err();
        assert!(e.contains("unknown client"), "{e}");
        assert!(p.check("mallory", "grpc.health.v1.Health", "Check").is_ok());
    }

    #[test]
    fn cluster_grants() {
        let access = |methods: &[&str], clusters: &[&str]| ClientAccess {
            methods: methods.iter().map(|m| m.to_string()).collect(),
            clusters: clusters.iter().map(|c| c.to_string()).collect(),
        };
        let p = AccessPolicy::from_config(&BTreeMap::from([
            (
                "edge".to_owned(),
                access(&["Authenticate"], &["dev", "prod"]),
            ),
            ("ops".to_owned(), access(&["Authenticate"], &["*"])),
            ("probe".to_owned(), access(&["ServerReflectionInfo"], &[])),
        ]));
        assert!(p.grant("edge").check("edge", "prod").is_ok());
        let e = p.grant("edge").check("edge", "PROD").unwrap_err();
        assert!(e.contains("clients.edge.clusters"), "{e}");
        assert!(p.grant("ops").check("ops", "anything").is_ok());
        assert!(p.grant("probe").check("probe", "dev").is_err());
        assert!(p.grant("mallory").check("mallory", "dev").is_err());
        // Without allow-lists every caller may ask for every cluster authd serves.
        let open = AccessPolicy::default();
        assert!(open.grant("anyone").check("anyone", "dev").is_ok());
    }
}
