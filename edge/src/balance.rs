//! The split-mode inner backend: the authd replicas in rotation behind one `Service`
//! (`backend.rs` wraps it in load shed, deadline and fail fast). Per review:
//!
//! 1. **p2c balance** — power of two choices over the replicas in rotation, by peak-EWMA
//!    latency times calls in progress (`discovery.rs` feeds the rotation). Every outcome is
//!    a latency sample: a failure counts as at least [`FAILURE_RTT`], a call cut off at the
//!    deadline as the time it took, so a replica that fails or times out stops looking fast;
//! 2. **retry once** — a transport failure (the replica was ejected by it) is tried again
//!    on another replica, by its key, if the deadline allows. Each attempt sends what is
//!    left of the review's deadline as its gRPC timeout.
//!
//! These are hand-rolled rather than tower's `Balance` and `Retry`: the buffer's hand-off to
//! its worker task, the per-layer boxing and the retry layer's eager request copy cost a
//! quarter of the edge's CPU per review in the benchmark. Here a review is one boxed future
//! that calls the chosen replica directly; the rotation is an immutable snapshot swapped by
//! a task when discovery sends a change.

use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use authd_proto::v1::AuthenticateRequest;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tower::discover::Change;

use crate::backend::{BackendError, Call, Inner, Verdict};

/// One replica as the balancer sees it: something that answers one `Authenticate` call
/// within what is left of the review's time (`discovery::Replica`; stand-ins in tests).
pub trait Upstream: Send + Sync + 'static {
    /// The request is shared rather than owned so a retry can send it again without
    /// copying its strings.
    fn authenticate(
        &self,
        request: Arc<AuthenticateRequest>,
        left: Duration,
    ) -> impl Future<Output = Verdict> + Send;
}

/// Peak-EWMA defaults: an unmeasured replica is assumed to answer in 5 ms; the estimate
/// decays over 10 s.
const DEFAULT_RTT: Duration = Duration::from_millis(5);
const EWMA_DECAY: Duration = Duration::from_secs(10);

/// A failed call counts as at least this slow: far above a healthy answer (milliseconds),
/// so a replica that fails fast (overloaded, refusing) does not look like the fastest one.
pub const FAILURE_RTT: Duration = Duration::from_secs(1);

/// Builds the balancer over the rotation `changes` (from `discovery::start`). Must run
/// inside a Tokio runtime (a task applies the changes; it ends when the backend is
/// dropped, which releases discovery).
pub fn balancer<R: Upstream>(changes: mpsc::UnboundedReceiver<Change<String, R>>) -> Inner {
    let shared = Arc::new(Balancer::start(changes));
    Inner::from_fn(move |call: Call| {
        let shared = shared.clone();
        Box::pin(async move { shared.review(call).await })
    })
}

/// Applies discovery's changes to the rotation until the backend is dropped.
async fn follow<R: Upstream>(
    mut changes: mpsc::UnboundedReceiver<Change<String, R>>,
    rotation: Arc<Rotation<R>>,
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

struct Balancer<R> {
    rotation: Arc<Rotation<R>>,
    /// Dropped with the backend: stops [`follow`], which releases discovery.
    _closed: oneshot::Sender<()>,
}

impl<R: Upstream> Balancer<R> {
    fn start(changes: mpsc::UnboundedReceiver<Change<String, R>>) -> Self {
        let (closed_tx, closed_rx) = oneshot::channel();
        let rotation = Arc::new(Rotation::default());
        tokio::spawn(follow(changes, rotation.clone(), closed_rx));
        Self {
            rotation,
            _closed: closed_tx,
        }
    }

    async fn review(&self, call: Call) -> Verdict {
        let Call { request, deadline } = call;
        let Some(first) = self.rotation.pick(None) else {
            return Err(BackendError::Unavailable("no healthy authd replica".into()));
        };
        // Shared, so the retry can send it again without copying it.
        let request = Arc::new(request);
        let error = match first.call(request.clone(), deadline).await {
            Err(e @ BackendError::Unavailable(_)) => e,
            other => return other,
        };
        // The failed replica has left the rotation (discovery ejected it before the error
        // came back); it is skipped here by its key too, in case the new rotation is not
        // applied yet or it was already re-admitted as a new member.
        if Instant::now() >= deadline {
            return Err(error);
        }
        let Some(second) = self.rotation.pick(Some(&first.key)) else {
            return Err(error);
        };
        tracing::debug!(request_id = %request.request_id, %error, "retrying on another authd replica");
        second.call(request, deadline).await
    }
}

/// The replicas in rotation: an immutable list, replaced as a whole on every change so a
/// review only holds a read lock long enough to clone an `Arc`.
struct Rotation<R> {
    members: RwLock<Arc<Vec<Arc<Member<R>>>>>,
}

impl<R> Default for Rotation<R> {
    fn default() -> Self {
        Self {
            members: RwLock::new(Arc::new(Vec::new())),
        }
    }
}

impl<R: Upstream> Rotation<R> {
    fn snapshot(&self) -> Arc<Vec<Arc<Member<R>>>> {
        self.members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn apply(&self, change: Change<String, R>) {
        let mut members = self.members.write().unwrap_or_else(|p| p.into_inner());
        let mut next: Vec<Arc<Member<R>>> = members.iter().cloned().collect();
        match change {
            Change::Insert(key, replica) => {
                next.retain(|m| m.key != key);
                next.push(Arc::new(Member::new(key, replica)));
            }
            Change::Remove(key) => next.retain(|m| m.key != key),
        }
        *members = Arc::new(next);
    }

    /// Power of two choices: two members at random, the less loaded one; the member keyed
    /// `not` is skipped.
    fn pick(&self, not: Option<&str>) -> Option<Arc<Member<R>>> {
        let members = self.snapshot();
        let eligible = |m: &&Arc<Member<R>>| not.is_none_or(|n| m.key != n);
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
struct Member<R> {
    /// The replica's stable identity (its address), the same across re-admissions.
    key: String,
    replica: R,
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

/// One call in progress on a member: counted in its load until dropped, and a latency
/// sample when it ends, however it ends (answered, failed, or cut off at the deadline).
struct Attempt<'a, R> {
    member: &'a Member<R>,
    started: Instant,
    failed: bool,
}

impl<R> Drop for Attempt<'_, R> {
    fn drop(&mut self) {
        let now = Instant::now();
        let took = now.saturating_duration_since(self.started);
        let sample = if self.failed {
            took.max(FAILURE_RTT)
        } else {
            took
        };
        self.member.observe(sample, now);
        self.member.in_flight.fetch_sub(1, Relaxed);
    }
}

impl<R> Member<R> {
    fn new(key: String, replica: R) -> Self {
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
}

impl<R: Upstream> Member<R> {
    async fn call(&self, request: Arc<AuthenticateRequest>, deadline: Instant) -> Verdict {
        self.in_flight.fetch_add(1, Relaxed);
        let started = Instant::now();
        let mut attempt = Attempt {
            member: self,
            started,
            failed: false,
        };
        let left = deadline.saturating_duration_since(started);
        let result = self.replica.authenticate(request, left).await;
        attempt.failed = result.is_err();
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

    /// An in-process stand-in replica: answers after `delay`, or fails as a transport
    /// failure while `failing`; counts its calls.
    #[derive(Clone)]
    struct StandIn {
        key: &'static str,
        delay: Duration,
        failing: bool,
        calls: Arc<AtomicUsize>,
        /// Never answers while set (a stopped replica), until the deadline cuts it off.
        hang: bool,
    }

    impl StandIn {
        fn new(key: &'static str, delay: Duration) -> Self {
            Self {
                key,
                delay,
                failing: false,
                calls: Arc::default(),
                hang: false,
            }
        }
        fn failing(self) -> Self {
            Self {
                failing: true,
                ..self
            }
        }
        fn calls(&self) -> usize {
            self.calls.load(Relaxed)
        }
    }

    impl Upstream for StandIn {
        async fn authenticate(
            &self,
            _request: Arc<AuthenticateRequest>,
            left: Duration,
        ) -> Verdict {
            self.calls.fetch_add(1, Relaxed);
            if self.hang {
                tokio::time::sleep(left).await;
                return Err(BackendError::Timeout(left));
            }
            tokio::time::sleep(self.delay).await;
            if self.failing {
                return Err(BackendError::Unavailable(format!("{}: refused", self.key)));
            }
            Ok(Default::default())
        }
    }

    fn balancer_of(
        replicas: &[StandIn],
    ) -> (
        Balancer<StandIn>,
        mpsc::UnboundedSender<Change<String, StandIn>>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let b = Balancer::start(rx);
        for r in replicas {
            b.rotation.apply(Change::Insert(r.key.into(), r.clone()));
        }
        (b, tx)
    }

    fn call(within: Duration) -> Call {
        Call {
            request: Default::default(),
            deadline: Instant::now() + within,
        }
    }

    /// Between two replicas, p2c sends the calls to the faster one once it has seen both.
    #[tokio::test]
    async fn p2c_prefers_the_faster_replica() {
        let slow = StandIn::new("slow", Duration::from_millis(40));
        let fast = StandIn::new("fast", Duration::from_millis(1));
        let (b, _tx) = balancer_of(&[slow.clone(), fast.clone()]);
        for _ in 0..30 {
            b.review(call(Duration::from_secs(5))).await.unwrap();
        }
        assert!(slow.calls() <= 2, "slow got {} of 30", slow.calls());
        assert_eq!(slow.calls() + fast.calls(), 30);
    }

    /// A replica with a call in progress looks busier than an idle one that is as fast.
    #[tokio::test]
    async fn p2c_prefers_the_less_loaded_replica() {
        let mut busy = StandIn::new("busy", Duration::ZERO);
        busy.hang = true;
        let idle = StandIn::new("idle", Duration::ZERO);
        let (b, _tx) = balancer_of(&[busy.clone()]);
        let b = Arc::new(b);
        let held = tokio::spawn({
            let b = b.clone();
            async move { b.review(call(Duration::from_secs(60))).await }
        });
        while busy.calls() == 0 {
            tokio::task::yield_now().await;
        }
        b.rotation
            .apply(Change::Insert("idle".into(), idle.clone()));
        for _ in 0..10 {
            b.review(call(Duration::from_secs(5))).await.unwrap();
        }
        assert_eq!((busy.calls(), idle.calls()), (1, 10));
        held.abort();
    }

    /// A replica removed from the rotation (ejected by discovery) gets no more calls.
    #[tokio::test]
    async fn ejected_replica_gets_no_calls() {
        let a = StandIn::new("a", Duration::ZERO);
        let c = StandIn::new("c", Duration::ZERO);
        let (b, tx) = balancer_of(&[a.clone(), c.clone()]);
        tx.send(Change::Remove("a".into())).unwrap();
        while b.rotation.snapshot().len() != 1 {
            tokio::task::yield_now().await;
        }
        let before = a.calls();
        for _ in 0..10 {
            b.review(call(Duration::from_secs(5))).await.unwrap();
        }
        assert_eq!(a.calls(), before);
        assert_eq!(c.calls(), 10);
    }

    /// A transport failure is retried exactly once, on another replica: with a failing
    /// replica every review still succeeds; with every replica failing a review makes
    /// exactly two calls, on two different replicas.
    #[tokio::test]
    async fn a_transport_failure_is_retried_once_on_another_replica() {
        let bad = StandIn::new("bad", Duration::ZERO).failing();
        let good = StandIn::new("good", Duration::ZERO);
        let (b, _tx) = balancer_of(&[bad.clone(), good.clone()]);
        for _ in 0..10 {
            b.review(call(Duration::from_secs(5))).await.unwrap();
        }
        assert_eq!(good.calls(), 10);

        let all: Vec<StandIn> = ["x", "y", "z"]
            .into_iter()
            .map(|k| StandIn::new(k, Duration::ZERO).failing())
            .collect();
        let (b, _tx) = balancer_of(&all);
        let e = b.review(call(Duration::from_secs(5))).await;
        assert!(matches!(e, Err(BackendError::Unavailable(_))), "{e:?}");
        let calls: Vec<usize> = all.iter().map(StandIn::calls).collect();
        assert_eq!(calls.iter().sum::<usize>(), 2, "{calls:?}");
        assert!(calls.iter().all(|&c| c <= 1), "{calls:?}");
    }

    /// The retry skips the failed replica by its key, even when discovery has already put
    /// a new member for the same address back in rotation.
    #[tokio::test]
    async fn the_failed_replica_is_excluded_by_key() {
        let (b, _tx) = balancer_of(&[
            StandIn::new("a", Duration::ZERO),
            StandIn::new("b", Duration::ZERO),
        ]);
        b.rotation.apply(Change::Insert(
            "a".into(),
            StandIn::new("a", Duration::ZERO),
        ));
        for _ in 0..20 {
            assert_eq!(b.rotation.pick(Some("a")).unwrap().key, "b");
        }
    }

    /// A failed call and a call cut off at the deadline are latency samples too: a
    /// replica that fails fast or hangs stops looking fast.
    #[tokio::test]
    async fn latency_is_recorded_for_every_outcome() {
        let fails = Member::new("f".into(), StandIn::new("f", Duration::ZERO).failing());
        let before = fails.load(Instant::now());
        let _ = fails
            .call(Arc::default(), Instant::now() + Duration::from_secs(5))
            .await;
        let after = fails.load(Instant::now());
        assert!(
            after >= FAILURE_RTT.as_nanos() as f64 * 0.99,
            "{before} -> {after}"
        );

        let mut hang = StandIn::new("h", Duration::ZERO);
        hang.hang = true;
        let hangs = Member::new("h".into(), hang);
        // The review's deadline cuts the call off before the replica answers.
        let cut = tokio::time::timeout(
            Duration::from_millis(300),
            hangs.call(Arc::default(), Instant::now() + Duration::from_secs(60)),
        )
        .await;
        assert!(cut.is_err());
        assert_eq!(hangs.in_flight.load(Relaxed), 0);
        let load = hangs.load(Instant::now());
        assert!(
            load >= Duration::from_millis(300).as_nanos() as f64 * 0.99,
            "{load}"
        );

        // And the balancer then prefers a replica that answers.
        let slow_fail = StandIn::new("sf", Duration::ZERO).failing();
        let ok = StandIn::new("ok", Duration::from_millis(20));
        let (b, _tx) = balancer_of(&[slow_fail.clone(), ok.clone()]);
        for _ in 0..20 {
            b.review(call(Duration::from_secs(5))).await.unwrap();
        }
        assert!(slow_fail.calls() <= 1, "{}", slow_fail.calls());
    }
}
