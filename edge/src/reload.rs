//! Hot reload of `edge.toml`: the file is polled (`authd_runtime::file_state`: metadata,
//! then a hash, so a `touch` is not a change and a ConfigMap's symlink swap is) and, when
//! its content changes, loaded exactly as at start-up (`load_for_serve`) and applied:
//!
//! - **routes and TLS** (`default_cluster`, `clusters`, `tls.*`): a new serving TLS and
//!   handler for new connections; the open ones are drained, so none answers under two
//!   configurations (a removed cluster is not served on an old connection, a changed
//!   client CA binds every review);
//! - **`[authd]`**: the replicas (endpoints, DNS name, refresh) and the connection settings
//!   (CA, client certificate, timeouts) — replicas that stay keep serving until their new
//!   connection is healthy;
//! - **everything else** (listeners, limits, timeouts, `shutdown_grace`) is fixed for the
//!   process's life: a change is logged as needing a restart, and the running values stay.
//!
//! Everything is built before anything is applied: a file that does not load — a syntax
//! error, a bad field, a missing certificate — changes nothing, and is logged with the
//! error naming the field (`edge_config_reloads_total{result="failure"}`).

use std::path::PathBuf;
use std::time::Duration;

use authd_runtime::file_state::FileState;

use crate::config::{AuthdConfig, Config};
use crate::discovery::{Discovery, Settings};
use crate::metrics::ReloadLabels;
use crate::ServingControl;

/// How often `edge.toml` is polled.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Every this many polls the file is re-hashed whatever its metadata says: a same-size
/// rewrite within one kernel timestamp tick leaves the metadata unchanged.
const FULL_CHECK_EVERY: u64 = 30;

/// The reloader's state between polls.
struct Watch {
    path: PathBuf,
    seen: FileState,
    polls: u64,
    /// The configuration in force (restart-only settings as started).
    running: Config,
    control: ServingControl,
    discovery: Discovery,
}

/// Watches `path` and applies its changes to the running edge; `running` is what the edge
/// was started with, and `seen` the file's state taken before it was loaded (so an edit
/// made during start-up is applied, never missed).
pub fn spawn(
    path: PathBuf,
    seen: FileState,
    running: Config,
    control: ServingControl,
    discovery: Discovery,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let watch = Watch {
            seen,
            path,
            polls: 0,
            running,
            control,
            discovery,
        };
        authd_runtime::file_state::poll_every(interval, watch, "edge.toml", Watch::poll).await;
    })
}

impl Watch {
    fn poll(&mut self) {
        self.polls += 1;
        let full = self.polls % FULL_CHECK_EVERY == 0;
        let now = FileState::of(&self.path, (!full).then_some(&self.seen));
        let changed = now.differs_from(Some(&self.seen));
        // Remembered even when the reload fails: the next attempt waits for another edit
        // instead of logging the same error every second.
        self.seen = now;
        if !changed {
            return;
        }
        let result = match self.reload() {
            Ok(()) => "success",
            Err(e) => {
                // TOML errors span lines (source excerpt, caret); keep one log line.
                let error = format!("{e:#}")
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ");
                tracing::error!(file = %self.path.display(), error = %error,
                    "edge configuration reload failed; keeping the running configuration");
                "failure"
            }
        };
        self.control
            .metrics()
            .config_reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
    }

    fn reload(&mut self) -> anyhow::Result<()> {
        let loaded = crate::load_for_serve(&self.path)?;
        let (new, fixed) = loaded.with_restart_only_from(&self.running);
        if !fixed.is_empty() {
            tracing::warn!(fields = ?fixed,
                "edge.toml: these settings take effect only after a restart; the running values stay");
        }
        let routes = !self.running.same_routes(&new);
        let (old_authd, new_authd) = (authd(&self.running)?, authd(&new)?);
        let replicas = old_authd.replicas != new_authd.replicas;
        // Built before anything is applied, so a failure changes nothing.
        let settings = if connection_differs(old_authd, new_authd) {
            Some(Settings {
                tls: crate::tls::reloading_client(new_authd)?,
                connect_timeout: new_authd.connect_timeout,
                health_interval: new_authd.health_interval,
            })
        } else {
            None
        };
        if routes {
            self.control.replace(&new)?;
        }
        let authd_changed = replicas || settings.is_some();
        if authd_changed {
            self.discovery
                .retarget(new_authd.replicas.clone(), settings);
        }
        tracing::info!(file = %self.path.display(), routes, authd = authd_changed,
            clusters = new.clusters.len(), replicas = %new_authd.replicas,
            "edge configuration reloaded");
        self.running = new;
        Ok(())
    }
}

fn authd(c: &Config) -> anyhow::Result<&AuthdConfig> {
    c.authd
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("[authd] is required for authd-edge"))
}

/// Whether replicas must reconnect: how they are reached changed, not only which.
fn connection_differs(old: &AuthdConfig, new: &AuthdConfig) -> bool {
    old.ca != new.ca
        || old.client_identity != new.client_identity
        || old.connect_timeout != new.connect_timeout
        || old.health_interval != new.health_interval
}
