//! The audit trail: one JSON line per decision, for "who was admitted to prod yesterday,
//! by which source".
//!
//! Written off the review path: a review hands its record to a bounded queue
//! (`try_send`, never waiting) and a writer thread serialises and writes it. When the queue
//! is full (the disk stalls, a pipe is not read) the record is dropped and counted in
//! `authd_audit_dropped_total`; a review never waits for the audit log. The writer reopens
//! the file when it was moved or removed (log rotation), checked once a second.
//!
//! A record names the credential only by its keyed token id (`Fingerprinter::token_id`,
//! the id `kube-authd revoke` prints): `kube-authd audit hash` turns a token into it, so an
//! operator can find one credential's lines without the log ever holding a token.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

use crate::config::AuditConfig;
use crate::fingerprint::Fingerprint;
use crate::metrics::Metrics;

/// One decision.
pub struct Record {
    pub at: SystemTime,
    pub request_id: String,
    /// How the review arrived (`authenticate`: the gRPC Authenticator, which the edge
    /// calls for every TokenReview; `in_process`: the all-in-one binary's edge).
    pub entry: &'static str,
    /// The client certificate identity of the caller, when there is one.
    pub caller: Option<Arc<str>>,
    pub cluster: String,
    /// The deciding source ("" when none was asked or none owned the token).
    pub source: String,
    /// authenticated, rejected, undecided, revoked (and throttled).
    pub outcome: &'static str,
    /// Why, for a refusal: a class, never a message.
    pub reason: Option<&'static str>,
    /// Username and groups, unless `include_identity` is off.
    pub user: Option<(String, Vec<String>)>,
    pub token_id: Option<Fingerprint>,
    pub latency: Duration,
    /// The cache level that answered (`hit_local`, `hit_shared`, `miss`, `stale`, `none`).
    pub cache: &'static str,
}

#[derive(Serialize)]
struct Line<'a> {
    /// Formatted straight into the line (no intermediate string).
    #[serde(serialize_with = "rfc3339_millis")]
    time: SystemTime,
    request_id: &'a str,
    entry: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    caller: Option<&'a str>,
    cluster: &'a str,
    source: &'a str,
    outcome: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    groups: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_id: Option<String>,
    latency_us: u64,
    cache: &'a str,
}

fn rfc3339_millis<S: serde::Serializer>(at: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime_serde::re::humantime::format_rfc3339_millis(*at))
}

impl Record {
    fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        let line = Line {
            time: self.at,
            request_id: &self.request_id,
            entry: self.entry,
            caller: self.caller.as_deref(),
            cluster: &self.cluster,
            source: &self.source,
            outcome: self.outcome,
            reason: self.reason,
            user: self.user.as_ref().map(|(u, _)| u.as_str()),
            groups: self.user.as_ref().map(|(_, g)| g.as_slice()),
            token_id: self.token_id.map(|id| id.to_hex()),
            latency_us: u64::try_from(self.latency.as_micros()).unwrap_or(u64::MAX),
            cache: self.cache,
        };
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")
    }
}

/// The review side: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Audit {
    queue: SyncSender<Record>,
    /// Whether records carry username and groups.
    pub include_identity: bool,
    written: Counter,
    dropped: Counter,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit.path {path}: cannot open for appending: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where the lines go.
enum Sink {
    Stdout,
    File {
        path: PathBuf,
        file: BufWriter<File>,
    },
}

impl Sink {
    fn open(path: &Path) -> Result<File, AuditError> {
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(path).map_err(|source| AuditError::Open {
            path: path.to_owned(),
            source,
        })
    }

    fn out(&mut self) -> Box<dyn Write + '_> {
        match self {
            Sink::Stdout => Box::new(std::io::stdout().lock()),
            Sink::File { file, .. } => Box::new(file),
        }
    }

    /// Reopens the file when the path no longer names it (rotated or removed).
    fn reopen_if_moved(&mut self) {
        #[cfg(unix)]
        if let Sink::File { path, file } = self {
            use std::os::unix::fs::MetadataExt;
            let current = file.get_ref().metadata().map(|m| (m.dev(), m.ino())).ok();
            let named = std::fs::metadata(&*path).map(|m| (m.dev(), m.ino())).ok();
            if current != named || named.is_none() {
                let _ = file.flush();
                match Self::open(path) {
                    Ok(f) => *file = BufWriter::with_capacity(WRITE_BUFFER, f),
                    Err(e) => {
                        tracing::warn!(error = %e, "audit log: cannot reopen; still writing to the old file")
                    }
                }
            }
        }
    }
}

/// What `start` would refuse, without creating anything: the file, if it exists, must
/// open for appending; if not, its folder must exist.
pub fn check(config: &AuditConfig) -> Result<(), AuditError> {
    let Some(path) = config.path.as_deref().filter(|p| !is_stdout(p)) else {
        return Ok(());
    };
    if path.exists() {
        return OpenOptions::new()
            .append(true)
            .open(path)
            .map(drop)
            .map_err(|source| AuditError::Open {
                path: path.to_owned(),
                source,
            });
    }
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if folder.is_dir() {
        Ok(())
    } else {
        Err(AuditError::Open {
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder"),
        })
    }
}

fn is_stdout(path: &Path) -> bool {
    path.as_os_str() == "-"
}

impl Audit {
    /// Opens the sink (a bad path is a start-up error naming `audit.path`) and starts the
    /// writer thread. `None` when the audit log is off.
    pub fn start(config: &AuditConfig, metrics: &Metrics) -> Result<Option<Self>, AuditError> {
        let Some(path) = &config.path else {
            return Ok(None);
        };
        let sink = if is_stdout(path) {
            Sink::Stdout
        } else {
            Sink::File {
                path: path.clone(),
                file: BufWriter::with_capacity(WRITE_BUFFER, Sink::open(path)?),
            }
        };
        let (queue, records) = sync_channel(config.queue.max(1));
        let written = metrics.audit_records.clone();
        let dropped = metrics.audit_dropped.clone();
        let w = written.clone();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_forever(sink, records, w))
            .expect("spawn the audit writer thread");
        Ok(Some(Self {
            queue,
            include_identity: config.include_identity,
            written,
            dropped,
        }))
    }

    /// Queues one record; drops it (counted) when the queue is full.
    pub fn record(&self, record: Record) {
        match self.queue.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }

    pub fn written(&self) -> u64 {
        self.written.get()
    }
}

/// How long the writer sleeps when it found the queue empty. It never blocks in `recv`, so
/// a review's `try_send` never has a sleeping writer to wake (one futex call per record on
/// the review path otherwise); a record waits at most this long to be written.
const IDLE: Duration = Duration::from_millis(20);

/// The file's write buffer: a batch of records is a few large writes, not one per 8 KiB.
const WRITE_BUFFER: usize = 256 * 1024;

/// Most records written between two flushes.
const BATCH: u64 = 4096;

fn write_forever(mut sink: Sink, records: Receiver<Record>, written: Counter) {
    let mut last_check = std::time::Instant::now();
    loop {
        let (mut n, mut closed) = (0, false);
        {
            let mut out = sink.out();
            while n < BATCH {
                match records.try_recv() {
                    Ok(r) => {
                        if r.write_to(&mut out).is_ok() {
                            n += 1;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            if n > 0 {
                let _ = out.flush();
                written.inc_by(n);
            }
        }
        if closed {
            return;
        }
        if last_check.elapsed() >= Duration::from_secs(1) {
            sink.reopen_if_moved();
            last_check = std::time::Instant::now();
        }
        if n < BATCH {
            std::thread::sleep(IDLE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_one_json_line_without_secrets() {
        let r = Record {
            at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            request_id: "req-1".into(),
            entry: "authenticate",
            caller: Some("edge".into()),
            cluster: "prod".into(),
            source: "ldap".into(),
            outcome: "authenticated",
            reason: None,
            user: Some(("alice".into(), vec!["dev".into()])),
            token_id: Some(Fingerprint([0xab; 32])),
            latency: Duration::from_micros(42),
            cache: "hit_local",
        };
        let mut out = Vec::new();
        r.write_to(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with('\n') && text.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["outcome"], "authenticated");
        assert_eq!(v["user"], "alice");
        assert_eq!(v["groups"][0], "dev");
        assert_eq!(v["token_id"], "ab".repeat(32));
        assert_eq!(v["latency_us"], 42);
        assert!(v.get("reason").is_none());
    }
}
