//! Builds authd from its configuration and runs its listeners until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use authd_proto::v1::authenticator_server::AuthenticatorServer;
use authd_runtime::admin::{self, AdminState, Readiness};
use authd_runtime::Reloading;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

use crate::access::{AccessLayer, AccessPolicy};
use crate::authz::AdminAuthz;
use crate::cache::redis::SharedCache;
use crate::cache::seal::Sealer;
use crate::cache::verdict::{RevocationSettings, SharedLevel};
use crate::cache::Ttls;
use crate::config::{Config, ExtAuthzConfig};
use crate::ext_authz::ExtAuthzGrpc;
use crate::fingerprint::Fingerprinter;
use crate::grpc::AuthenticatorGrpc;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::revocation::AdminGrpc;
use crate::service::Authd;
use crate::session::{IssuedTokens, SessionStore, Sessions, SessionsGrpc};
use crate::tls;

/// Builds the service (sources, caches, policy) from a validated configuration. Must run
/// inside a Tokio runtime when a shared cache is configured (it starts its subscriber).
pub fn build(config: &Config) -> anyhow::Result<Authd> {
    build_with_sessions(config).map(|(authd, _)| authd)
}

/// Like [`build`], with the login sessions (`[sessions]`) the gRPC listener and the
/// all-in-one edge serve; their issued-token source is already in the pipeline.
pub fn build_with_sessions(config: &Config) -> anyhow::Result<(Authd, Option<Arc<Sessions>>)> {
    let fingerprinter = cache_fingerprinter(&config.cache)?;
    let pipeline = Pipeline::from_config(config)?;
    let ttls = Ttls {
        positive: config.cache.positive_ttl,
        negative: config.cache.negative_ttl,
        stale_grace: config.cache.stale_if_error,
    };
    let metrics = Arc::new(Metrics::new());
    let audit = crate::audit::Audit::start(&config.audit, &metrics)?;
    let mut shared_cache = None;
    let shared = match &config.cache.redis {
        Some(redis) => {
            // Index sets must outlive every verdict they list.
            let index_ttl =
                (ttls.positive + ttls.stale_grace).max(ttls.negative) + Duration::from_secs(60);
            let sealer = Sealer::new(&fingerprinter);
            let cache = Arc::new(SharedCache::new(redis, index_ttl, metrics.clone(), sealer)?);
            shared_cache = Some(cache.clone());
            Some(SharedLevel {
                cache,
                local_ttl: config.cache.local_ttl,
            })
        }
        None => None,
    };
    let sessions = config.sessions.clone().map(|c| {
        // Shared by the replicas through Redis when there is one, else in this process.
        let store = SessionStore::new(&fingerprinter, shared_cache);
        Arc::new(Sessions::new(c, Arc::new(store)))
    });
    let extra = sessions
        .as_ref()
        .map(|s| Arc::new(IssuedTokens::new(s.store().clone())));
    let authd = Authd::with_levels(
        fingerprinter,
        pipeline,
        ttls,
        config.cache.max_entries,
        metrics,
        shared,
        RevocationSettings {
            max_token_ttl: config.revocation.max_token_ttl,
            resync_every: config.revocation.resync_every,
        },
    )
    .with_audit(audit);
    let authd = match extra {
        Some(issued) => authd.with_extra_source(issued),
        None => authd,
    };
    Ok((authd, sessions))
}

/// Everything `authd serve` reads and checks at start-up before it binds a port — the
/// cache HMAC key, every source, the Redis client settings and files, the TLS files, the
/// admin secret, the audit log's folder — through the same functions, so `kube-authd
/// config check` cannot call a file valid that `serve` refuses. Contacts nothing remote.
pub fn preflight(config: &Config) -> anyhow::Result<()> {
    let fingerprinter = cache_fingerprinter(&config.cache)?;
    Pipeline::from_config(config)?;
    if let Some(redis) = &config.cache.redis {
        SharedCache::new(
            redis,
            Duration::from_secs(1),
            Arc::new(Metrics::new()),
            Sealer::new(&fingerprinter),
        )?;
    }
    if let Some(t) = &config.tls {
        tls::server_config(t)?;
    }
    AdminAuthz::from_config(&config.admin)?;
    crate::audit::check(&config.audit)?;
    Ok(())
}

/// The cache key ring as `authd serve` builds it: `cache.hmac_key_file` and
/// `cache.previous_hmac_key_files`, or a random key when none is configured.
pub fn cache_fingerprinter(cache: &crate::config::CacheConfig) -> anyhow::Result<Fingerprinter> {
    let Some(path) = &cache.hmac_key_file else {
        return Ok(Fingerprinter::random());
    };
    let current = read_hmac_key("cache.hmac_key_file", path)?;
    let mut previous = Vec::new();
    for (i, path) in cache.previous_hmac_key_files.iter().enumerate() {
        let field = format!("cache.previous_hmac_key_files[{i}]");
        let key = read_hmac_key(&field, path)?;
        if key == current || previous.contains(&key) {
            anyhow::bail!(
                "{field} {}: the same key as another of the ring (the current key is \
                 cache.hmac_key_file; list each previous key once)",
                path.display()
            );
        }
        previous.push(key);
    }
    Ok(Fingerprinter::with_previous(&current, &previous))
}

/// Reads one HMAC key file as `authd serve` does (any bytes, at least 32); `field` names
/// the setting in errors.
pub fn read_hmac_key(field: &str, path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let key =
        std::fs::read(path).with_context(|| format!("{field} {}: cannot read", path.display()))?;
    if key.len() < 32 {
        anyhow::bail!(
            "{field} {}: key must be at least 32 bytes, found {}",
            path.display(),
            key.len()
        );
    }
    Ok(key)
}

/// Loads the revocations from Redis before the first review is served, so a restarted
/// replica refuses what was revoked from its first answer. Redis down: logged, and the
/// periodic resync loads them when it is back.
pub async fn load_revocations(authd: &Authd) {
    match authd.load_revocations().await {
        Ok(n) => tracing::info!(revocations = n, "revocation list loaded"),
        Err(e) => tracing::warn!(error = %e,
            "cannot load the revocation list from Redis; serving, and retrying every resync interval"),
    }
}

/// Bound listeners, so callers learn the real ports before serving starts, and how the gRPC
/// one is secured and limited.
pub struct Listeners {
    pub grpc: TcpListener,
    pub admin: Option<TcpListener>,
    /// gRPC TLS, rebuilt when its files change; plaintext when absent.
    pub tls: Option<(Reloading<rustls::ServerConfig>, Duration)>,
    /// Per-client RPC allow-lists.
    pub access: AccessPolicy,
    /// Who may call the Admin service (revocation).
    pub admin_authz: AdminAuthz,
    /// How Envoy's `Check` reads requests and answers.
    pub ext_authz: ExtAuthzConfig,
    /// Calls in progress at once, in total and per connection; beyond them calls are
    /// refused at once (RESOURCE_EXHAUSTED) instead of queueing without bound.
    pub max_calls: usize,
    pub max_calls_per_connection: usize,
    /// The login sessions served (`Sessions`, Admin `ListSessions`/`EndSession`).
    pub sessions: Option<Arc<Sessions>>,
}

impl Listeners {
    pub async fn bind(grpc: SocketAddr, admin: Option<SocketAddr>) -> anyhow::Result<Self> {
        let grpc = TcpListener::bind(grpc)
            .await
            .with_context(|| format!("listen: cannot bind gRPC address {grpc}"))?;
        let admin = match admin {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .with_context(|| format!("admin_listen: cannot bind {a}"))?,
            ),
            None => None,
        };
        Ok(Self {
            grpc,
            admin,
            tls: None,
            access: AccessPolicy::default(),
            admin_authz: AdminAuthz::deny_all(),
            ext_authz: ExtAuthzConfig::default(),
            max_calls: 1024,
            max_calls_per_connection: 512,
            sessions: None,
        })
    }

    /// Applies `[tls]`, `[clients]`, `[admin]`, `[ext_authz]` and the call limits of `config`.
    pub fn secure(mut self, config: &Config) -> anyhow::Result<Self> {
        if let Some(t) = &config.tls {
            self.tls = Some((tls::reloading(t)?, t.handshake_timeout));
        }
        self.access = AccessPolicy::from_config(&config.clients);
        self.admin_authz = AdminAuthz::from_config(&config.admin)?;
        self.ext_authz = config.ext_authz.clone();
        self.max_calls = config.max_concurrent_calls;
        self.max_calls_per_connection = config.max_concurrent_calls_per_connection;
        Ok(self)
    }
}

/// Serves gRPC (and the admin listener) until `shutdown` resolves, then drains: readiness
/// and gRPC health go to NOT_SERVING first, in-flight calls get `grace` to finish.
pub async fn serve(
    authd: Authd,
    listeners: Listeners,
    grace: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let readiness = Readiness::default();
    readiness.set(true);
    let admin_task = listeners
        .admin
        .map(|l| tokio::spawn(admin::serve(l, admin_state(&authd, &readiness))));
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AuthenticatorServer<AuthenticatorGrpc>>()
        .await;
    health_reporter
        .set_serving::<AuthorizationServer<ExtAuthzGrpc>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(authd_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building gRPC reflection")?;

    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let reporter = health_reporter.clone();
    let ready = readiness.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutdown requested: readiness off, draining in-flight calls");
        ready.set(false);
        reporter
            .set_not_serving::<AuthenticatorServer<AuthenticatorGrpc>>()
            .await;
        reporter
            .set_not_serving::<AuthorizationServer<ExtAuthzGrpc>>()
            .await;
        let _ = drain_tx.send(());
    });

    // Layers, outermost first: caller identity and allow-lists, then the global limit with
    // load shedding (tonic adds the per-connection limit).
    let router = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(listeners.max_calls_per_connection)
        .max_concurrent_streams(u32::try_from(listeners.max_calls_per_connection).ok())
        .load_shed(true)
        .layer(AccessLayer::new(
            listeners.access,
            authd.metrics().grpc_requests.clone(),
        ))
        .layer(tower::load_shed::LoadShedLayer::new())
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            listeners.max_calls,
        ))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(AdminGrpc::server(
            authd.clone(),
            listeners.admin_authz,
            listeners.sessions.clone(),
        ))
        .add_service(ExtAuthzGrpc::server(authd.clone(), listeners.ext_authz))
        .add_service(SessionsGrpc::server(authd.clone(), listeners.sessions))
        .add_service(AuthenticatorGrpc::server(authd));
    let drained = async {
        let _ = drain_rx.await;
    };
    let server: std::pin::Pin<
        Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>,
    > = match listeners.tls {
        Some((config, handshake_timeout)) => Box::pin(router.serve_with_incoming_shutdown(
            tls::incoming(listeners.grpc, config, handshake_timeout),
            drained,
        )),
        None => {
            // tonic's own `tcp_nodelay` only applies to listeners it binds itself. Without it
            // a small verdict can wait for the peer's delayed ACK (≈ 40 ms at the p99.9).
            let incoming = TcpListenerStream::new(listeners.grpc).map(|conn| {
                if let Ok(tcp) = &conn {
                    let _ = tcp.set_nodelay(true);
                }
                conn
            });
            Box::pin(router.serve_with_incoming_shutdown(incoming, drained))
        }
    };
    // tonic waits for in-flight calls once the shutdown future resolves; bound that wait.
    tokio::pin!(server);
    let result = tokio::select! {
        r = &mut server => r.context("gRPC server failed"),
        _ = async {
            // Only starts counting once draining has begun.
            while readiness.get() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(?grace, "in-flight calls did not finish within the shutdown grace");
            Ok(())
        }
    };
    if let Some(t) = admin_task {
        t.abort();
    }
    result
}

/// The admin routes: ready while serving, `/metrics` from authd's registry.
fn admin_state(authd: &Authd, readiness: &Readiness) -> AdminState {
    let metrics = authd.metrics().clone();
    AdminState {
        accepting: readiness.clone(),
        checks: Vec::new(),
        encoders: vec![Arc::new(move || metrics.encode())],
    }
}
