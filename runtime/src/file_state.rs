//! Whether a file's content changed since it was last looked at, cheaply: each look
//! compares metadata (size, mtime, ctime, inode, device) and reads and hashes the file only
//! when that moved, so a `touch` or a same-content rewrite is not a change.
//!
//! Polling rather than inotify: it sees editors' rename-over-write, files replaced through
//! symlinks (Kubernetes ConfigMaps and Secrets mounted as directories swap a `..data`
//! symlink) and network file systems alike. `std::fs::metadata` follows symlinks, so the
//! state is the target's.

use std::path::Path;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

/// A file's metadata as far as change detection cares.
type Meta = (u64, Option<SystemTime>, i64, i64, u64, u64);

/// How a file looked when last polled; `None` when it could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileState(Option<(Meta, [u8; 32])>);

fn meta_of(m: &std::fs::Metadata) -> Meta {
    use std::os::unix::fs::MetadataExt;
    (
        m.len(),
        m.modified().ok(),
        m.ctime(),
        m.ctime_nsec(),
        m.ino(),
        m.dev(),
    )
}

impl FileState {
    /// The file's state, reading and hashing it only when its metadata differs from
    /// `previous` (pass `None` to always read it). Blocking I/O.
    pub fn of(path: &Path, previous: Option<&FileState>) -> FileState {
        FileState(Self::read(path, previous))
    }

    fn read(path: &Path, previous: Option<&FileState>) -> Option<(Meta, [u8; 32])> {
        let meta = meta_of(&std::fs::metadata(path).ok()?);
        if let Some(FileState(Some((m, hash)))) = previous {
            if *m == meta {
                return Some((meta, *hash));
            }
        }
        let bytes = std::fs::read(path).ok()?;
        Some((meta, Sha256::digest(&bytes).into()))
    }

    /// Whether the content (or existence) differs from `before`; metadata alone does not
    /// count. A file never seen before (`None`) differs.
    pub fn differs_from(&self, before: Option<&FileState>) -> bool {
        before.map(|s| s.0.as_ref().map(|(_, h)| *h)) != Some(self.0.as_ref().map(|(_, h)| *h))
    }
}

/// Polls a watcher every `interval` until the runtime stops: `poll` runs on the blocking
/// pool (file I/O, TLS configurations built from files), taking the watcher and giving it
/// back. A poll that panics ends the loop with one error line naming `what`.
pub async fn poll_every<W: Send + 'static>(
    interval: std::time::Duration,
    mut watch: W,
    what: &str,
    poll: fn(&mut W),
) {
    loop {
        tokio::time::sleep(interval).await;
        watch = match tokio::task::spawn_blocking(move || {
            poll(&mut watch);
            watch
        })
        .await
        {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "{what} watcher failed; hot reload is off");
                return;
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn only_content_changes_count() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens.csv");
        std::fs::write(&p, "a,alice,1\n").unwrap();
        let first = FileState::of(&p, None);
        assert!(!FileState::of(&p, Some(&first)).differs_from(Some(&first)));
        // Same bytes rewritten (metadata moves): read again, but not a change.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&p, "a,alice,1\n").unwrap();
        let touched = FileState::of(&p, Some(&first));
        assert!(!touched.differs_from(Some(&first)));
        std::fs::write(&p, "b,bobby,2\n").unwrap();
        let edited = FileState::of(&p, None);
        assert!(edited.differs_from(Some(&touched)));
        std::fs::remove_file(&p).unwrap();
        assert!(FileState::of(&p, Some(&edited)).differs_from(Some(&edited)));
        assert!(edited.differs_from(None));
    }

    /// A ConfigMap mounted as a directory: the file is a symlink through `..data`, and an
    /// update swaps `..data` to a new folder. The change is seen through the link.
    #[test]
    fn a_symlink_swap_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (v, text) in [("v1", "a = 1\n"), ("v2", "a = 2\n")] {
            std::fs::create_dir(d.join(v)).unwrap();
            std::fs::write(d.join(v).join("edge.toml"), text).unwrap();
        }
        std::os::unix::fs::symlink("v1", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/edge.toml", d.join("edge.toml")).unwrap();
        let before = FileState::of(&d.join("edge.toml"), None);
        std::os::unix::fs::symlink("v2", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        let after = FileState::of(&d.join("edge.toml"), Some(&before));
        assert!(after.differs_from(Some(&before)));
    }
}
