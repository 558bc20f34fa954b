//! The split-mode backend: the authd replicas behind one `Service`. Per review, in order:
//!
//! 1. **load shed** — over `max_in_flight_reviews` a review is answered at once, never
//!    queued (the handler turns it into a 500 without Retry-After: kube-apiserver multiplies
//!    retries of 429 and of anything with Retry-After; see docs/configuration.md, "Overload");
//! 2. **deadline** — the review's absolute deadline; each attempt sends what is left of it
//!    as the gRPC timeout, so a retry only gets the time that remains;
//! 3. **fail fast** — no replica in rotation: the retryable error at once;
//! 4. **p2c balance** — power of two choices over the replicas in rotation, by peak-EWMA
//!    latency times calls in progress (`discovery.rs` feeds the rotation);
//! 5. **retry once** — a transport failure (the replica was ejected by it) is tried again
//!    on another replica, if the deadline allows.
//!
//! These used to be tower layers (load shed, concurrency limit, retry, buffer, p2c
//! `Balance`); the buffer's hand-off to its worker task, the per-layer boxing and the
//! retry layer's eager request copy cost a quarter of the edge's CPU per review in the
//! benchmark. Here a review is one boxed future that calls the chosen replica's channel
//! directly; the rotation is an immutable snapshot swapped by a task when discovery sends a
//! change.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use authd_proto::v1::{AuthenticateRequest, AuthenticateResponse};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;
use tower::discover::Change;
use tower::util::BoxCloneSyncService;

use crate::backend::{Backend, BackendError, Reachability};
use crate::discovery::{Replica, ReplicaSet};

/// Limits of the backend.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The review deadline (`review_timeout`).
    pub deadline: Duration,
    /// Reviews in progress at once (`max_in_flight_reviews`).
    pub max_in_flight: usize,
}

/// Peak-EWMA defaults: an unmeasured replica is assumed to answer in 5 ms; the estimate
/// decays over 10 s.
const DEFAULT_RTT: Duration = Duration::from_millis(5);
const EWMA_DECAY: Duration = Duration::from_secs(10);

/// Builds the backend over `replicas`. Must run inside a Tokio runtime (a task applies the
/// rotation changes; it ends when the backend is dropped).
pub fn backend(replicas: ReplicaSet, limits: Limits) -> Backend {
    let (closed_tx, closed_rx) = oneshot::channel();
    let rotation = Arc::new(Rotation::default());
    tokio::spawn(follow(replicas.changes, rotation.clone(), closed_rx));
    let shared = Arc::new(Shared {
        rotation,
        permits: Semaphore::new(limits.max_in_flight),
        deadline: limits.deadline,
        reachability: replicas.reachability,
        _closed: closed_tx,
    });
    BoxCloneSyncService::new(Balanced { shared })
}

/// Applies discovery's changes to the rotation until the backend is dropped.
async fn follow(
    mut changes: mpsc::UnboundedReceiver<Change<String, Replica>>,
    rotation: Arc<Rotation>,
    mut closed: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            change = changes.recv() => match change {
                Some(change) => rotation.apply(change),
                None => return,
            },
            _ = &mut closed => return,
        }
    }
}

struct Shared {
    rotation: Arc<Rotation>,
    permits: Semaphore,
    deadline: Duration,
    reachability: Reachability,
    /// Dropped with the backend: stops [`follow`], which releases discovery.
    _closed: oneshot::Sender<()>,
}

#[derive(Clone)]
struct Balanced {
    shared: Arc<Shared>,
}

impl tower::Service<AuthenticateRequest> for Balanced {
    type Response = AuthenticateResponse;
    type Error = BackendError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<AuthenticateResponse, BackendError>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BackendError>> {
        // Never waits: capacity is decided per call (load shedding, not queueing).
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: AuthenticateRequest) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move { shared.review(request).await })
    }
}

impl Shared {
    async fn review(
        &self,
        request: AuthenticateRequest,
    ) -> Result<AuthenticateResponse, BackendError> {
        let Ok(_permit) = self.permits.try_acquire() else {
            return Err(BackendError::Overloaded(
                "the edge has max_in_flight_reviews reviews in progress".into(),
            ));
        };
        let deadline = Instant::now() + self.deadline;
        let unavailable = || BackendError::Unavailable("no healthy authd replica".into());
        if !self.reachability.get() {
            return Err(unavailable());
        }
        let Some(first) = self.rotation.pick(None) else {
            return Err(unavailable());
        };
        // Shared, so the retry can send it again without copying it.
        let request = Arc::new(request);
        let error = match first.call(request.clone(), deadline).await {
            Err(e @ BackendError::Unavailable(_)) => e,
            other => return other,
        };
        // The failed replica has left the rotation (discovery ejected it before the error
        // came back); it is skipped here too in case the new rotation is not applied yet.
        if Instant::now() >= deadline {
            return Err(error);
        }
        let Some(second) = self.rotation.pick(Some(&first)) else {
            return Err(error);
        };
        tracing::debug!(request_id = %request.request_id, %error, "retrying on another authd replica");
        second.call(request, deadline).await
    }
}

/// The replicas in rotation: an immutable list, replaced as a whole on every change so a
/// review only holds a read lock long enough to clone an `Arc`.
#[derive(Default)]
struct Rotation {
    members: RwLock<Arc<Vec<Arc<Member>>>>,
}

impl Rotation {
    fn snapshot(&self) -> Arc<Vec<Arc<Member>>> {
        self.members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn apply(&self, change: Change<String, Replica>) {
        let mut members = self.members.write().unwrap_or_else(|p| p.into_inner());
        let mut next: Vec<Arc<Member>> = members.iter().cloned().collect();
        match change {
            Change::Insert(key, replica) => {
                next.retain(|m| m.key != key);
                next.push(Arc::new(Member::new(key, replica)));
            }
            Change::Remove(key) => next.retain(|m| m.key != key),
        }
        *members = Arc::new(next);
    }

    /// Power of two choices: two members at random, the less loaded one; `not` is skipped.
    fn pick(&self, not: Option<&Arc<Member>>) -> Option<Arc<Member>> {
        let members = self.snapshot();
        let eligible = |m: &&Arc<Member>| not.is_none_or(|n| !Arc::ptr_eq(m, n));
        let count = members.iter().filter(eligible).count();
        let nth = |i: usize| members.iter().filter(eligible).nth(i).cloned();
        match count {
            0 => None,
            1 => nth(0),
            n => {
                let a = rand::random_range(0..n);
                let b = (a + rand::random_range(1..n)) % n;
                let (a, b) = (nth(a)?, nth(b)?);
                let now = Instant::now();
                Some(if a.load(now) <= b.load(now) { a } else { b })
            }
        }
    }
}

/// One replica in rotation and what the balancer knows of its load.
struct Member {
    key: String,
    replica: Replica,
    in_flight: AtomicUsize,
    /// Peak-EWMA round-trip estimate in nanoseconds (`f64` bits): jumps up to a slower
    /// sample at once, decays towards faster ones over [`EWMA_DECAY`] (as tower's
    /// `PeakEwma`). Atomics rather than a lock: every call updates it from whichever worker
    /// thread finished it, and a lost update only nudges an estimate.
    rtt_nanos: AtomicU64,
    /// When `rtt_nanos` was last updated, in nanoseconds since `epoch`.
    stamp_nanos: AtomicU64,
    epoch: Instant,
}

impl Member {
    fn new(key: String, replica: Replica) -> Self {
        Self {
            key,
            replica,
            in_flight: AtomicUsize::new(0),
            rtt_nanos: AtomicU64::new((DEFAULT_RTT.as_nanos() as f64).to_bits()),
            stamp_nanos: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn since_update(&self, now: Instant) -> Duration {
        let stamp = Duration::from_nanos(self.stamp_nanos.load(Relaxed));
        now.saturating_duration_since(self.epoch)
            .saturating_sub(stamp)
    }

    /// Expected cost of one more call: the decayed round-trip estimate times the calls in
    /// progress plus this one.
    fn load(&self, now: Instant) -> f64 {
        let rtt = f64::from_bits(self.rtt_nanos.load(Relaxed));
        let rtt = decayed(rtt, self.since_update(now), 0.0);
        rtt * (self.in_flight.load(Relaxed) + 1) as f64
    }

    fn observe(&self, rtt: Duration, now: Instant) {
        let sample = rtt.as_nanos() as f64;
        let estimate = f64::from_bits(self.rtt_nanos.load(Relaxed));
        let next = if sample > estimate {
            sample
        } else {
            decayed(estimate, self.since_update(now), sample)
        };
        self.rtt_nanos.store(next.to_bits(), Relaxed);
        let stamp = now.saturating_duration_since(self.epoch).as_nanos();
        self.stamp_nanos
            .store(u64::try_from(stamp).unwrap_or(u64::MAX), Relaxed);
    }

    async fn call(
        &self,
        request: Arc<AuthenticateRequest>,
        deadline: Instant,
    ) -> Result<AuthenticateResponse, BackendError> {
        struct InFlight<'a>(&'a AtomicUsize);
        impl Drop for InFlight<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Relaxed);
            }
        }
        self.in_flight.fetch_add(1, Relaxed);
        let _in_flight = InFlight(&self.in_flight);
        let started = Instant::now();
        let left = deadline.saturating_duration_since(started);
        let result = self.replica.authenticate(request, left).await;
        if result.is_ok() {
            let now = Instant::now();
            self.observe(now - started, now);
        }
        result
    }
}

/// `estimate` moved towards `target` by how much of it has decayed after `elapsed`.
fn decayed(estimate: f64, elapsed: Duration, target: f64) -> f64 {
    let keep = (-elapsed.as_secs_f64() / EWMA_DECAY.as_secs_f64()).exp();
    estimate * keep + target * (1.0 - keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let e = decayed(1_000.0, Duration::ZERO, 0.0);
        assert_eq!(e, 1_000.0);
        let half = decayed(1_000.0, EWMA_DECAY.mul_f64(std::f64::consts::LN_2), 0.0);
        assert!((half - 500.0).abs() < 1.0, "{half}");
        let toward = decayed(1_000.0, EWMA_DECAY * 100, 200.0);
        assert!((toward - 200.0).abs() < 1.0, "{toward}");
    }
}
