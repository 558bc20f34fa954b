//! An in-memory stand-in for the shared level, for the verdict cache's unit tests: the same
//! contract as Redis (entries, token and user indexes, revocations reaching every
//! subscribed replica) without a server. The end-to-end tests use real Redis.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::local::LocalCache;
use super::redis::Revocation;
use super::revocations::{Denial, DenyList, Kind, Message, Stored};
use super::{CachedVerdict, Epoch, SharedRead, SharedStore};
use crate::fingerprint::Fingerprint;

#[derive(Default)]
pub struct MemoryShared {
    entries: Mutex<HashMap<Fingerprint, CachedVerdict>>,
    by_token: Mutex<HashMap<Fingerprint, Vec<Fingerprint>>>,
    by_user: Mutex<HashMap<Fingerprint, Vec<Fingerprint>>>,
    /// The deny-list set and its marker.
    denials: Mutex<HashMap<Fingerprint, Denial>>,
    marker: Mutex<Option<String>>,
    /// Every replica's local level and deny-list, as the revocation channel reaches them.
    subscribers: Mutex<Vec<(LocalCache, Arc<DenyList>)>>,
    /// Holds the next deny-list read's answer (read at once, as Redis would) until released.
    read_gate: Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
    read_held: std::sync::atomic::AtomicBool,
    /// The revocation epoch (one shard): moved by every revocation and lift.
    epoch: AtomicU64,
}

impl MemoryShared {
    /// The stored verdict for `fp`, as a test inspects it.
    pub fn entry(&self, fp: &Fingerprint) -> Option<CachedVerdict> {
        lock(&self.entries).get(fp).cloned()
    }

    /// Stores an entry directly, as another replica would have.
    pub fn insert(&self, fp: Fingerprint, entry: CachedVerdict) {
        lock(&self.entries).insert(fp, entry);
    }

    /// Drops every verdict (they expired).
    pub fn clear(&self) {
        lock(&self.entries).clear();
    }

    /// Loses the deny-list set and its marker, as a Redis restarted without its data.
    pub fn forget_denials(&self) {
        lock(&self.denials).clear();
        *lock(&self.marker) = None;
    }

    /// Holds the answer of the next deny-list read (taken at once) until the sender is used
    /// or dropped: a slow Redis reply.
    pub fn hold_next_read(&self) -> tokio::sync::oneshot::Sender<()> {
        let (release, gate) = tokio::sync::oneshot::channel();
        *lock(&self.read_gate) = Some(gate);
        self.read_held
            .store(false, std::sync::atomic::Ordering::SeqCst);
        release
    }

    /// Whether a held read has taken its snapshot and waits.
    pub fn read_held(&self) -> bool {
        self.read_held.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many verdicts it holds.
    pub fn stored(&self) -> usize {
        lock(&self.entries).len()
    }

    /// Deletes what `index` lists under `id`, then tells every replica.
    async fn revoke(
        &self,
        index: &Mutex<HashMap<Fingerprint, Vec<Fingerprint>>>,
        id: &Fingerprint,
        message: impl FnOnce(Vec<Fingerprint>) -> Revocation,
    ) -> u64 {
        let keys = lock(index).remove(id).unwrap_or_default();
        let removed = {
            let mut entries = lock(&self.entries);
            keys.iter().filter(|k| entries.remove(k).is_some()).count()
        };
        let message = message(keys);
        let subscribers = lock(&self.subscribers).clone();
        for (local, _) in &subscribers {
            message.apply(local).await;
        }
        removed as u64
    }

    fn next_epoch(&self) {
        let _entries = lock(&self.entries);
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Tells every replica's deny-list, as the channel would.
    fn publish(&self, message: Message) {
        for (_, deny) in lock(&self.subscribers).iter() {
            deny.apply(message);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SharedStore for MemoryShared {
    type Error = Infallible;

    fn get(&self, fp: &Fingerprint) -> impl Future<Output = SharedRead> + Send {
        let read = SharedRead {
            entry: self.entry(fp),
            epoch: Some(Epoch(self.epoch.load(Ordering::SeqCst).to_string())),
        };
        async move { read }
    }

    fn put(
        &self,
        fp: &Fingerprint,
        token_id: &Fingerprint,
        user_id: Option<&Fingerprint>,
        entry: &CachedVerdict,
        epoch: Epoch,
    ) -> impl Future<Output = ()> + Send {
        // The entries' lock makes the check and the write one step, as the script does.
        let mut entries = lock(&self.entries);
        if self.epoch.load(Ordering::SeqCst).to_string() != epoch.0 {
            return futures::future::Either::Left(async {});
        }
        entries.insert(*fp, entry.clone());
        drop(entries);
        lock(&self.by_token).entry(*token_id).or_default().push(*fp);
        if let Some(u) = user_id {
            lock(&self.by_user).entry(*u).or_default().push(*fp);
        }
        futures::future::Either::Right(async {})
    }

    fn revoke_token(
        &self,
        token_id: &Fingerprint,
    ) -> impl Future<Output = Result<u64, Infallible>> + Send {
        let token_id = *token_id;
        async move {
            let message = |keys| Revocation::Token { token_id, keys };
            Ok(self.revoke(&self.by_token, &token_id, message).await)
        }
    }

    fn revoke_user(
        &self,
        user_id: &Fingerprint,
    ) -> impl Future<Output = Result<u64, Infallible>> + Send {
        let user_id = *user_id;
        async move {
            let message = |keys| Revocation::User { user_id, keys };
            Ok(self.revoke(&self.by_user, &user_id, message).await)
        }
    }

    fn deny(&self, denial: &Denial) -> impl Future<Output = Result<(), Infallible>> + Send {
        lock(&self.denials).insert(denial.id, *denial);
        self.next_epoch();
        self.publish(Message::Deny(*denial));
        async { Ok(()) }
    }

    fn lift(
        &self,
        kind: Kind,
        id: &Fingerprint,
    ) -> impl Future<Output = Result<bool, Infallible>> + Send {
        let was = lock(&self.denials).remove(id).is_some();
        self.next_epoch();
        self.publish(Message::Lift(kind, *id));
        async move { Ok(was) }
    }

    fn denials(&self) -> impl Future<Output = Result<Stored, Infallible>> + Send {
        let stored = Stored {
            denials: lock(&self.denials).values().copied().collect(),
            marker: lock(&self.marker).clone(),
        };
        let gate = lock(&self.read_gate).take();
        if gate.is_some() {
            self.read_held
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        async move {
            if let Some(gate) = gate {
                let _ = gate.await;
            }
            Ok(stored)
        }
    }

    fn add_denials(
        &self,
        denials: &[Denial],
        marker: &str,
    ) -> impl Future<Output = Result<(), Infallible>> + Send {
        let mut stored = lock(&self.denials);
        for d in denials {
            stored.insert(d.id, *d);
        }
        *lock(&self.marker) = Some(marker.to_owned());
        async { Ok(()) }
    }

    fn subscribe(self: &Arc<Self>, local: LocalCache, deny: Arc<DenyList>) {
        lock(&self.subscribers).push((local, deny));
    }
}
