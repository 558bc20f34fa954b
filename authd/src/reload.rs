//! Hot reload: polls the configuration file and every file it references (token files,
//! keys, CA bundles) and, on a change, re-parses and validates the whole configuration and
//! rebuilds the sources. A reload that fails keeps the last good configuration and logs why.
//!
//! Polling rather than inotify: it sees editors' rename-over-write, files replaced through
//! symlinks (Kubernetes ConfigMaps and Secrets) and network file systems alike. Each poll
//! compares cheap metadata; only a file whose metadata moved is read and hashed, and only a
//! changed hash triggers a reload (a `touch` does not): `authd_runtime::file_state`. Polls
//! run on tokio's blocking pool: a large token file must never stall the request path.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use authd_runtime::file_state::FileState;

use crate::config::Config;
use crate::metrics::ReloadLabels;
use crate::pipeline::Pipeline;
use crate::service::Authd;

/// How often files are polled.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Every this many polls every file is re-hashed whatever its metadata says: a same-size
/// rewrite within one kernel timestamp tick leaves the metadata unchanged.
const FULL_CHECK_EVERY: u64 = 30;

/// Produces a fresh, validated configuration; the error names file, line and field.
pub type Loader = Box<dyn Fn() -> anyhow::Result<Config> + Send + Sync>;

fn watched(config_file: Option<&PathBuf>, config: &Config) -> BTreeMap<PathBuf, FileState> {
    config_file
        .into_iter()
        .cloned()
        .chain(config.sources.iter().flat_map(|s| s.files()))
        .map(|p| {
            let s = FileState::of(&p, None);
            (p, s)
        })
        .collect()
}

/// Spawns the watcher. `current` is the configuration `authd` was built from.
pub fn spawn(
    authd: Authd,
    config_file: Option<PathBuf>,
    load: Loader,
    current: Config,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let first = tokio::task::spawn_blocking(move || Watch {
            seen: watched(config_file.as_ref(), &current),
            polls: 0,
            config_file,
            good: current,
            authd,
            load,
        })
        .await;
        let watch = match first {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "configuration watcher could not start; hot reload is off");
                return;
            }
        };
        authd_runtime::file_state::poll_every(interval, watch, "configuration", Watch::poll).await;
    })
}

/// The watcher's state between polls.
struct Watch {
    config_file: Option<PathBuf>,
    seen: BTreeMap<PathBuf, FileState>,
    polls: u64,
    good: Config,
    authd: Authd,
    load: Loader,
}

impl Watch {
    /// One poll: blocking file I/O and, on a content change, a reload.
    fn poll(&mut self) {
        self.polls += 1;
        let full = self.polls % FULL_CHECK_EVERY == 0;
        let now: BTreeMap<PathBuf, FileState> = self
            .seen
            .iter()
            .map(|(p, s)| (p.clone(), FileState::of(p, (!full).then_some(s))))
            .collect();
        let changed: Vec<String> = now
            .iter()
            .filter(|(p, s)| s.differs_from(self.seen.get(*p)))
            .map(|(p, _)| p.display().to_string())
            .collect();
        // Remember what we saw even on failure: the next attempt waits for another edit
        // instead of logging the same error every second.
        self.seen = now;
        if changed.is_empty() {
            return;
        }
        match try_reload(&self.authd, &self.load) {
            Ok(config) => {
                warn_restart_only(&self.good, &config);
                self.seen = watched(self.config_file.as_ref(), &config);
                tracing::info!(changed = ?changed, sources = config.sources.len(),
                    "configuration reloaded; cached verdicts cleared");
                self.authd
                    .metrics()
                    .config_reloads
                    .get_or_create(&ReloadLabels { result: "success" })
                    .inc();
                self.good = config;
            }
            Err(e) => {
                // TOML errors span lines (source excerpt, caret); keep one log line.
                let error = format!("{e:#}")
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ");
                tracing::error!(changed = ?changed, error = %error,
                    "configuration reload failed; keeping the last good configuration");
                self.authd
                    .metrics()
                    .config_reloads
                    .get_or_create(&ReloadLabels { result: "failure" })
                    .inc();
            }
        }
    }
}

fn try_reload(authd: &Authd, load: &Loader) -> anyhow::Result<Config> {
    let config = load()?;
    authd.reload(Pipeline::from_config(&config)?);
    Ok(config)
}

/// Listeners and cache settings are fixed for the process's life; say so when they change.
fn warn_restart_only(old: &Config, new: &Config) {
    if old.listen != new.listen
        || old.admin_listen != new.admin_listen
        || old.shutdown_grace != new.shutdown_grace
        || format!("{:?}", old.cache) != format!("{:?}", new.cache)
    {
        tracing::warn!(
            "listen, admin_listen, shutdown_grace and cache settings changed: they take effect only after a restart"
        );
    }
}
