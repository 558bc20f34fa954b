//! authd-edge: the HTTPS endpoint kube-apiserver calls. It turns TokenReview JSON into
//! `Authenticate` calls and back, and holds no identity logic.

pub mod backend;
pub mod balance;
pub mod channel;
pub mod config;
pub mod conn;
pub mod discovery;
pub mod handler;
pub mod layer;
pub mod metrics;
pub mod review;
pub mod route;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use authd_runtime::admin::{self, AdminState, Encoder, Readiness};
use authd_runtime::Reloading;
use tokio::net::TcpListener;

pub use backend::{Backend, BackendError, Inner, Limits, Reachability};
pub use config::Config;

/// A bound, configured edge, ready to serve.
pub struct Edge {
    listener: TcpListener,
    admin: Option<TcpListener>,
    tls: Reloading<tls::ServerTls>,
    handler: Arc<handler::Handler>,
    settings: conn::ConnSettings,
    admin_state: AdminState,
}

impl Edge {
    /// Loads TLS material and binds both listeners; nothing is served yet.
    /// `extra_metrics` are appended to `/metrics` (the all-in-one binary adds authd's).
    pub async fn bind(
        config: &Config,
        backend: Backend,
        reachability: Reachability,
        extra_metrics: Vec<Encoder>,
    ) -> anyhow::Result<Self> {
        let tls = tls::reloading_server(config)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listen: cannot bind {}", config.listen))?;
        let admin = match config.admin_listen {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .with_context(|| format!("admin_listen: cannot bind {a}"))?,
            ),
            None => None,
        };
        let metrics = Arc::new(metrics::Metrics::new());
        let m = metrics.clone();
        let mut encoders: Vec<Encoder> = vec![Arc::new(move || {
            authd_runtime::metrics::encode(&m.registry)
        })];
        encoders.extend(extra_metrics);
        Ok(Self {
            listener,
            admin,
            tls,
            handler: Arc::new(handler::Handler::new(config, backend, metrics)),
            settings: config.into(),
            admin_state: AdminState {
                accepting: Readiness::default(),
                checks: vec![Arc::new(move || {
                    if reachability.get() {
                        Ok(())
                    } else {
                        Err("no healthy authd replica")
                    }
                })],
                encoders,
            },
        })
    }

    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves; then readiness goes false first, open connections
    /// finish their in-flight reviews, and this returns.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        self.admin_state.accepting.set(true);
        let admin_task = self
            .admin
            .map(|l| tokio::spawn(admin::serve(l, self.admin_state.clone())));
        let accepting = self.admin_state.accepting.clone();
        let shutdown = async move {
            shutdown.await;
            accepting.set(false);
        };
        conn::serve(
            self.listener,
            self.tls,
            self.handler,
            self.settings,
            shutdown,
        )
        .await;
        if let Some(t) = admin_task {
            t.abort();
        }
    }
}
