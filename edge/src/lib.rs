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
pub mod login;
pub mod metrics;
pub mod reload;
pub mod review;
pub mod route;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use authd_runtime::admin::{self, AdminState, Encoder, Readiness};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use backend::{Backend, BackendError, Inner, Limits, Reachability};
pub use config::Config;

/// Loads `edge.toml` as `authd-edge serve` needs it: parsed and validated, `[authd]`
/// present, and every certificate, key and CA it names loadable. Start-up, every reload
/// and `kube-authd config check --edge` go through this one function, so none of them
/// accepts a file another refuses. Binding the listeners is the one start-up step it
/// leaves out. Blocking file I/O.
pub fn load_for_serve(path: &Path) -> anyhow::Result<Config> {
    let config = Config::load(path)?;
    let authd = config.authd.as_ref().with_context(|| {
        format!(
            "config file {}: authd.endpoint (or authd.endpoints or authd.dns) is required for authd-edge",
            path.display()
        )
    })?;
    let file = || format!("config file {}", path.display());
    tls::server_tls(&config).with_context(file)?;
    tls::client_tls(authd).with_context(file)?;
    Ok(config)
}

/// A bound, configured edge, ready to serve.
pub struct Edge {
    listener: TcpListener,
    admin: Option<TcpListener>,
    serving: watch::Receiver<Arc<conn::Serving>>,
    control: ServingControl,
    /// The login listener and what it serves (fixed for the process's life; its TLS files
    /// reload by themselves).
    login: Option<LoginListener>,
    settings: conn::ConnSettings,
    admin_state: AdminState,
}

/// The login listener and the channel of what it serves (its sender kept so the
/// receiver stays open).
type LoginListener = (
    TcpListener,
    (
        watch::Sender<Arc<conn::Serving>>,
        watch::Receiver<Arc<conn::Serving>>,
    ),
);

/// Replaces what a running edge serves: routes, client CAs and serving certificate, built
/// from a new configuration (`reload.rs`). The backend and its admission, the listeners
/// and the connection settings stay.
#[derive(Clone)]
pub struct ServingControl {
    sender: Arc<watch::Sender<Arc<conn::Serving>>>,
    backend: Backend,
    metrics: Arc<metrics::Metrics>,
}

impl ServingControl {
    fn build(
        config: &Config,
        backend: &Backend,
        metrics: &Arc<metrics::Metrics>,
    ) -> anyhow::Result<Arc<conn::Serving>> {
        Ok(Arc::new(conn::Serving {
            tls: tls::reloading_server(config)?,
            handler: Arc::new(handler::Handler::new(
                config,
                backend.clone(),
                metrics.clone(),
            )),
        }))
    }

    /// Serves `config`'s routes and TLS from now on: new connections get them, and the
    /// connections opened before are drained (HTTP/2 GOAWAY, HTTP/1.1 closed after the
    /// answer in progress). On error (a file that does not load) nothing changes.
    pub fn replace(&self, config: &Config) -> anyhow::Result<()> {
        let serving = Self::build(config, &self.backend, &self.metrics)?;
        self.sender.send_replace(serving);
        Ok(())
    }

    /// The edge's metrics (reload outcomes are counted there).
    pub fn metrics(&self) -> &metrics::Metrics {
        &self.metrics
    }
}

impl Edge {
    /// Loads TLS material and binds both listeners; nothing is served yet.
    /// `extra_metrics` are appended to `/metrics` (the all-in-one binary adds authd's).
    /// `sessions` is the way to authd's Sessions service, for the login routes (served on
    /// their own listener when `login.listen` is set).
    pub async fn bind(
        config: &Config,
        backend: Backend,
        sessions: Option<login::SessionBackend>,
        reachability: Reachability,
        extra_metrics: Vec<Encoder>,
    ) -> anyhow::Result<Self> {
        let metrics = Arc::new(metrics::Metrics::new());
        let initial = ServingControl::build(config, &backend, &metrics)?;
        let login = match (config.login.listen, sessions) {
            (Some(addr), Some(sessions)) => {
                let serving = Arc::new(conn::Serving {
                    tls: tls::reloading_login_server(config)?,
                    handler: Arc::new(handler::Handler::login_only(
                        config,
                        backend.clone(),
                        sessions,
                        metrics.clone(),
                    )),
                });
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("login.listen: cannot bind {addr}"))?;
                Some((listener, watch::channel(serving)))
            }
            (Some(_), None) => {
                anyhow::bail!("login.listen: this edge has no way to authd's sessions")
            }
            (None, _) => None,
        };
        let (sender, serving) = watch::channel(initial);
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
        let m = metrics.clone();
        let mut encoders: Vec<Encoder> = vec![Arc::new(move || {
            authd_runtime::metrics::encode(&m.registry)
        })];
        encoders.extend(extra_metrics);
        Ok(Self {
            listener,
            admin,
            serving,
            control: ServingControl {
                sender: Arc::new(sender),
                backend,
                metrics,
            },
            login,
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

    /// The login listener's address, when `login.listen` is set.
    pub fn login_addr(&self) -> Option<SocketAddr> {
        self.login.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The handle that replaces what this edge serves (for hot reload).
    pub fn control(&self) -> ServingControl {
        self.control.clone()
    }

    /// Serves until `shutdown` resolves; then readiness goes false first, open connections
    /// finish their in-flight reviews, and this returns.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        self.admin_state.accepting.set(true);
        let admin_task = self
            .admin
            .map(|l| tokio::spawn(admin::serve(l, self.admin_state.clone())));
        let accepting = self.admin_state.accepting.clone();
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let login = self.login.map(|(listener, (_keep, serving))| {
            tokio::spawn(conn::serve(
                listener,
                serving,
                self.settings.clone(),
                stopped(stop_rx.clone()),
            ))
        });
        let shutdown = async move {
            shutdown.await;
            accepting.set(false);
            let _ = stop_tx.send(true);
        };
        conn::serve(self.listener, self.serving, self.settings, shutdown).await;
        if let Some(login) = login {
            let _ = login.await;
        }
        drop(self.control);
        if let Some(t) = admin_task {
            t.abort();
        }
    }
}
