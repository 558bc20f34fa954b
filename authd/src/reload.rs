//! Hot reload: polls the configuration file and every file it references (token files,
//! keys, CA bundles) and, on a change, re-parses and validates the whole configuration and
//! rebuilds the sources. A reload that fails keeps the last good configuration and logs why.
//!
//! Polling (length, modification time and a SHA-256 of the content, every `interval`)
//! rather than inotify: it sees editors' rename-over-write, files replaced through symlinks
//! (Kubernetes ConfigMaps and Secrets) and network file systems alike, and costs one read of
//! a few small files per second.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::metrics::ReloadLabels;
use crate::service::{Authd, Pipeline};
use crate::verifiers;

/// How often files are polled.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How a file looked when last polled; `None` when it could not be read.
type FileState = Option<(u64, Option<SystemTime>, [u8; 32])>;

/// Produces a fresh, validated configuration; the error names file, line and field.
pub type Loader = Box<dyn Fn() -> anyhow::Result<Config> + Send + Sync>;

fn state_of(path: &PathBuf) -> FileState {
    let meta = std::fs::metadata(path).ok()?;
    let bytes = std::fs::read(path).ok()?;
    Some((
        meta.len(),
        meta.modified().ok(),
        Sha256::digest(&bytes).into(),
    ))
}

fn watched(config_file: Option<&PathBuf>, config: &Config) -> BTreeMap<PathBuf, FileState> {
    config_file
        .into_iter()
        .cloned()
        .chain(config.sources.iter().flat_map(|s| s.files()))
        .map(|p| {
            let s = state_of(&p);
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
        let mut seen = watched(config_file.as_ref(), &current);
        let mut good = current;
        loop {
            tokio::time::sleep(interval).await;
            let now: BTreeMap<PathBuf, FileState> =
                seen.keys().map(|p| (p.clone(), state_of(p))).collect();
            if now == seen {
                continue;
            }
            let changed: Vec<String> = now
                .iter()
                .filter(|(p, s)| seen.get(*p) != Some(s))
                .map(|(p, _)| p.display().to_string())
                .collect();
            // Remember what we saw even on failure: the next attempt waits for another edit
            // instead of logging the same error every second.
            seen = now;
            match try_reload(&authd, &load) {
                Ok(config) => {
                    warn_restart_only(&good, &config);
                    seen = watched(config_file.as_ref(), &config);
                    tracing::info!(changed = ?changed, sources = config.sources.len(),
                        "configuration reloaded; cached verdicts cleared");
                    authd
                        .metrics()
                        .config_reloads
                        .get_or_create(&ReloadLabels { result: "success" })
                        .inc();
                    good = config;
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
                    authd
                        .metrics()
                        .config_reloads
                        .get_or_create(&ReloadLabels { result: "failure" })
                        .inc();
                }
            }
        }
    })
}

fn try_reload(authd: &Authd, load: &Loader) -> anyhow::Result<Config> {
    let config = load()?;
    let sources = verifiers::build_all(&config.sources)?;
    authd.reload(Pipeline {
        sources,
        clusters: config.clusters.clone(),
    });
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
