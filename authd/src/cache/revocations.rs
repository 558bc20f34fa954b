//! The deny-list: revocations that hold until they end, not a purge of cached verdicts.
//!
//! A revocation names a token, a (mapped) username or a source's credential id, always by
//! its keyed hash (`fingerprint.rs`), and lasts until its `until` (or until lifted). Every
//! answer the verdict cache gives passes [`DenyList::denies`] just before it is returned,
//! so an answer computed before a revocation (a cached verdict, a lookup in flight, a late
//! write to Redis) is never served after it on a replica that knows the revocation.
//!
//! Every replica holds the whole list in memory: loaded at start, kept current by the
//! revocation channel (pub/sub) and resynchronised in full every `resync_every` (the
//! backstop for a lost message). The warm path pays one atomic load while nothing is
//! revoked, and an `RwLock` read plus one hash lookup per id otherwise.
//!
//! In Redis the list is one sorted set, `<prefix>revoked`: member `<kind>:<hex id>`, score
//! the end in Unix ms (`+inf` until lifted), plus a marker member `m:<random>` that tells a
//! replica whether Redis lost the set (restarted without persistence) since it last read
//! it: then the replica writes back what it knows instead of forgetting it.
//! A revocation this replica could not write to Redis stays pending and is written by the
//! next resync.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use super::SharedStore;
use crate::fingerprint::Fingerprint;

/// What a revocation names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// One token (`Fingerprinter::token_id`), whatever the audiences.
    Token,
    /// Every credential mapping to one username (`Fingerprinter::username`).
    User,
    /// One credential by its source's id (`Fingerprinter::credential`).
    Credential,
}

impl Kind {
    fn tag(self) -> &'static str {
        match self {
            Kind::Token => "t",
            Kind::User => "u",
            Kind::Credential => "c",
        }
    }

    fn from_tag(tag: &str) -> Option<Self> {
        match tag {
            "t" => Some(Kind::Token),
            "u" => Some(Kind::User),
            "c" => Some(Kind::Credential),
            _ => None,
        }
    }

    /// As ListRevocations and the log lines name it.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Token => "token",
            Kind::User => "user",
            Kind::Credential => "credential",
        }
    }
}

/// One revocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Denial {
    pub kind: Kind,
    pub id: Fingerprint,
    /// When it ends; `None`: until lifted.
    pub until: Option<SystemTime>,
}

pub fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl Denial {
    pub fn in_force(&self, now: SystemTime) -> bool {
        self.until.is_none_or(|u| now < u)
    }

    /// The sorted-set member.
    pub fn member(&self) -> String {
        format!("{}:{}", self.kind.tag(), self.id.to_hex())
    }

    /// The sorted-set score: the end in Unix ms, `+inf` until lifted.
    pub fn score(&self) -> String {
        self.until
            .map_or_else(|| "+inf".to_owned(), |u| to_ms(u).to_string())
    }

    pub fn until_ms(&self) -> u64 {
        self.until.map_or(0, to_ms)
    }

    /// From a sorted-set member and score; `None` for the marker or anything malformed.
    pub fn parse(member: &str, score: f64) -> Option<Self> {
        let (tag, hex_id) = member.split_once(':')?;
        let kind = Kind::from_tag(tag)?;
        let id = parse_id(hex_id)?;
        let until = score.is_finite().then(|| from_ms(score.max(0.0) as u64));
        Some(Self { kind, id, until })
    }
}

/// A JWT's own expiry (`exp`), read without verifying it: a token whose `exp` was altered
/// no longer verifies, so for any token a source accepts this is its real expiry.
pub fn jwt_expiry(token: &str) -> Option<SystemTime> {
    use base64::Engine;
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_f64()?;
    (exp.is_finite() && exp > 0.0).then(|| UNIX_EPOCH + Duration::from_secs_f64(exp.min(1e11)))
}

pub fn parse_id(hex_text: &str) -> Option<Fingerprint> {
    let bytes = hex::decode(hex_text).ok()?;
    Some(Fingerprint(bytes.try_into().ok()?))
}

/// What the revocation channel says about the deny-list (besides the purges of
/// `redis::Revocation`, which share the channel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message {
    Deny(Denial),
    Lift(Kind, Fingerprint),
}

impl Message {
    pub fn encode(&self) -> String {
        match self {
            Message::Deny(d) => format!("d {} {}", d.member(), d.until_ms()),
            Message::Lift(kind, id) => format!("l {}:{}", kind.tag(), id.to_hex()),
        }
    }

    /// `None` for anything else on the channel.
    pub fn decode(text: &str) -> Option<Self> {
        let mut parts = text.split(' ');
        let verb = parts.next()?;
        let (tag, hex_id) = parts.next()?.split_once(':')?;
        let kind = Kind::from_tag(tag)?;
        let id = parse_id(hex_id)?;
        let message = match verb {
            "d" => {
                let ms: u64 = parts.next()?.parse().ok()?;
                let until = (ms != 0).then(|| from_ms(ms));
                Message::Deny(Denial { kind, id, until })
            }
            "l" => Message::Lift(kind, id),
            _ => return None,
        };
        parts.next().is_none().then_some(message)
    }
}

/// What the shared level holds: the revocations and the marker of the set's lifetime.
#[derive(Debug, Default, Clone)]
pub struct Stored {
    pub denials: Vec<Denial>,
    pub marker: Option<String>,
}

/// The in-memory deny-list of one replica.
#[derive(Default)]
pub struct DenyList {
    /// How many entries `entries` holds (in force or not): zero, the common case, means
    /// every check is one atomic load.
    len: AtomicUsize,
    /// How many of them are credential ids, so the service computes a token's credential
    /// id only when one could match.
    credentials: AtomicUsize,
    entries: RwLock<HashMap<Fingerprint, Denial>>,
    /// This replica's revocations that Redis has not confirmed yet: kept across resyncs,
    /// and written by the next one.
    pending: Mutex<HashMap<Fingerprint, Denial>>,
    /// The marker last read from the shared level.
    marker: Mutex<Option<String>>,
    /// Asks the resync task for a resync now (the subscription was lost and is back).
    pub resync_now: Notify,
    /// Revocations made or lifted while a resync runs (`Some` only then). A resync reads the
    /// shared level first and replaces the list last: what changed in between (this
    /// replica's own revocation, one from the channel) is applied again on top of what it
    /// read, or a revocation that returned to its caller would vanish until the next resync.
    during_resync: Mutex<Option<HashMap<Fingerprint, Option<Denial>>>>,
    /// One resync at a time (the periodic one, the one after a lost subscription, the first).
    resyncing: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DenyList {
    /// Whether any of `ids` is revoked now. One atomic load when nothing is revoked.
    pub fn denies(&self, ids: &[Option<Fingerprint>]) -> bool {
        if self.len.load(Ordering::Acquire) == 0 {
            return false;
        }
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let mut now = None;
        ids.iter().flatten().any(|id| {
            entries
                .get(id)
                .is_some_and(|d| d.in_force(*now.get_or_insert_with(SystemTime::now)))
        })
    }

    /// Whether nothing is revoked (one atomic load).
    pub fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    /// Whether a credential id could match (see `credentials`).
    pub fn has_credentials(&self) -> bool {
        self.credentials.load(Ordering::Acquire) != 0
    }

    fn recount(&self, entries: &HashMap<Fingerprint, Denial>) {
        let credentials = entries
            .values()
            .filter(|d| d.kind == Kind::Credential)
            .count();
        self.credentials.store(credentials, Ordering::Release);
        self.len.store(entries.len(), Ordering::Release);
    }

    /// Adds or replaces one revocation.
    pub fn insert(&self, d: Denial) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.insert(d.id, d);
        if let Some(changes) = lock(&self.during_resync).as_mut() {
            changes.insert(d.id, Some(d));
        }
        self.recount(&entries);
    }

    /// Lifts one revocation; whether it was there.
    pub fn remove(&self, id: &Fingerprint) -> bool {
        lock(&self.pending).remove(id);
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let was = entries.remove(id).is_some();
        if let Some(changes) = lock(&self.during_resync).as_mut() {
            changes.insert(*id, None);
        }
        self.recount(&entries);
        was
    }

    pub fn apply(&self, message: Message) {
        match message {
            Message::Deny(d) => self.insert(d),
            Message::Lift(_, id) => {
                self.remove(&id);
            }
        }
    }

    /// Remembers a revocation the shared level did not take, for the next resync.
    pub fn keep_pending(&self, d: Denial) {
        lock(&self.pending).insert(d.id, d);
    }

    /// Every revocation in force, ordered by kind and id.
    pub fn list(&self) -> Vec<Denial> {
        let now = SystemTime::now();
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<Denial> = entries
            .values()
            .filter(|d| d.in_force(now))
            .copied()
            .collect();
        list.sort_by_key(|d| (d.kind.tag(), d.id));
        list
    }

    /// Replaces the list with what the shared level holds, keeping this replica's pending
    /// ones; when the shared level lost the set (no marker, or another than last read),
    /// writes back what this replica knows first.
    pub async fn resync<S: SharedStore>(&self, store: &S) -> Result<usize, S::Error> {
        let _one = self.resyncing.lock().await;
        *lock(&self.during_resync) = Some(HashMap::new());
        let resynced = self.resync_from(store).await;
        *lock(&self.during_resync) = None;
        resynced
    }

    async fn resync_from<S: SharedStore>(&self, store: &S) -> Result<usize, S::Error> {
        let stored = store.denials().await?;
        let (lost, seen_before) = {
            let last = lock(&self.marker);
            let lost = stored.marker.is_none() || (last.is_some() && *last != stored.marker);
            (lost, last.is_some())
        };
        let pending: Vec<Denial> = lock(&self.pending).values().copied().collect();
        let now = SystemTime::now();
        let mut write: Vec<Denial> = pending.clone();
        if lost {
            write.extend(self.list());
        }
        write.retain(|d| d.in_force(now));
        let marker = match (&stored.marker, lost) {
            (Some(m), false) => m.clone(),
            _ => hex::encode(rand::random::<[u8; 8]>()),
        };
        if lost || !write.is_empty() {
            store.add_denials(&write, &marker).await?;
            // A first start on an empty Redis writes the marker: nothing was lost then.
            if lost && (seen_before || !write.is_empty()) {
                tracing::warn!(
                    written = write.len(),
                    "the shared revocation list was lost (Redis restarted without its data?); wrote back this replica's revocations"
                );
            }
        }
        {
            let mut pending = lock(&self.pending);
            for d in &write {
                pending.remove(&d.id);
            }
        }
        let mut fresh: HashMap<Fingerprint, Denial> = stored
            .denials
            .into_iter()
            .chain(write)
            .filter(|d| d.in_force(now))
            .map(|d| (d.id, d))
            .collect();
        for d in lock(&self.pending).values() {
            fresh.insert(d.id, *d);
        }
        let n;
        {
            let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
            for (id, change) in lock(&self.during_resync).take().unwrap_or_default() {
                match change {
                    Some(d) => fresh.insert(id, d),
                    None => fresh.remove(&id),
                };
            }
            n = fresh.len();
            *entries = fresh;
            self.recount(&entries);
        }
        *lock(&self.marker) = Some(marker);
        Ok(n)
    }

    /// Resynchronises every `every`, and at once when the subscription asks.
    pub fn spawn_resync<S: SharedStore>(self: &Arc<Self>, store: Arc<S>, every: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = this.resync_now.notified() => {}
                }
                match this.resync(&*store).await {
                    Ok(n) if failing => {
                        failing = false;
                        tracing::info!(revocations = n, "revocation list resynchronised again");
                    }
                    Ok(_) => {}
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "cannot resynchronise the revocation list; keeping what this replica knows");
                    }
                    Err(_) => {}
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Fingerprint {
        Fingerprint([n; 32])
    }

    #[test]
    fn messages_round_trip() {
        let until = from_ms(1_700_000_000_123);
        for m in [
            Message::Deny(Denial {
                kind: Kind::Token,
                id: id(1),
                until: Some(until),
            }),
            Message::Deny(Denial {
                kind: Kind::User,
                id: id(2),
                until: None,
            }),
            Message::Lift(Kind::Credential, id(3)),
        ] {
            assert_eq!(Message::decode(&m.encode()), Some(m));
        }
        for bad in ["", "d", "d t:zz 0", "x t:00 0", "t 0101", "d t:01 0"] {
            assert_eq!(Message::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn members_parse_back_and_the_marker_is_skipped() {
        let d = Denial {
            kind: Kind::User,
            id: id(7),
            until: Some(from_ms(5000)),
        };
        assert_eq!(Denial::parse(&d.member(), 5000.0), Some(d));
        let forever = Denial { until: None, ..d };
        assert_eq!(Denial::parse(&d.member(), f64::INFINITY), Some(forever));
        assert_eq!(Denial::parse("m:abcdef", f64::INFINITY), None);
    }

    #[test]
    fn a_jwts_own_expiry() {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let jwt = format!(
            "{}.{}.sig",
            b64("{\"alg\":\"RS256\"}"),
            b64("{\"exp\":1700000000}")
        );
        assert_eq!(jwt_expiry(&jwt), Some(from_ms(1_700_000_000_000)));
        for not in [
            "opaque-token",
            "a.b.c",
            "a.b",
            &format!("x.{}.y", b64("{}")),
        ] {
            assert_eq!(jwt_expiry(not), None, "{not}");
        }
    }

    /// A revocation made while a resync waits for the shared level's answer, which does not
    /// hold it yet, survives the resync's replacement of the list.
    #[tokio::test]
    async fn a_revocation_during_a_resync_survives_it() {
        let store = Arc::new(crate::cache::memory::MemoryShared::default());
        let list = Arc::new(DenyList::default());
        // The first resync writes the marker: later ones replace the list with what they read.
        list.resync(&*store).await.unwrap();
        let revoked = Denial {
            kind: Kind::Token,
            id: id(7),
            until: None,
        };
        let user = Denial {
            kind: Kind::User,
            id: id(8),
            until: None,
        };
        during_a_resync(&list, &store, |list| {
            list.insert(revoked);
            list.insert(user);
        })
        .await;
        assert!(list.denies(&[Some(id(7))]), "revoked during the resync");
        assert!(list.denies(&[Some(id(8))]));
        // A lift during a resync that read the revocation holds too.
        store.add_denials(&[revoked], "m").await.unwrap();
        during_a_resync(&list, &store, |list| {
            list.remove(&id(7));
        })
        .await;
        assert!(!list.denies(&[Some(id(7))]), "lifted during the resync");
    }

    /// Runs a resync whose read of the shared level is answered only after `change` was
    /// made to the list (the read itself is taken before it).
    async fn during_a_resync(
        list: &Arc<DenyList>,
        store: &Arc<crate::cache::memory::MemoryShared>,
        change: impl FnOnce(&DenyList),
    ) {
        let release = store.hold_next_read();
        let resync = {
            let (list, store) = (list.clone(), store.clone());
            tokio::spawn(async move { list.resync(&*store).await })
        };
        while !store.read_held() {
            tokio::task::yield_now().await;
        }
        change(list);
        let _ = release.send(());
        resync.await.unwrap().unwrap();
    }

    #[test]
    fn only_revocations_in_force_deny() {
        let list = DenyList::default();
        assert!(!list.denies(&[Some(id(1)), None]));
        let past = SystemTime::now() - Duration::from_secs(1);
        list.insert(Denial {
            kind: Kind::Token,
            id: id(1),
            until: Some(past),
        });
        list.insert(Denial {
            kind: Kind::User,
            id: id(2),
            until: None,
        });
        assert!(!list.denies(&[Some(id(1))]), "ended");
        assert!(list.denies(&[Some(id(3)), Some(id(2))]));
        assert_eq!(list.list().len(), 1);
        assert!(!list.has_credentials());
        assert!(list.remove(&id(2)));
        assert!(!list.denies(&[Some(id(2))]));
    }
}
