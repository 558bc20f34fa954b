//! The split-mode backend: the authd replicas behind one tower stack. Every cross-cutting
//! concern is a layer, composed in [`backend`] (outermost first):
//!
//! 1. **load shed** — over capacity a review is answered at once, never queued (the
//!    handler turns it into a 500 without Retry-After: kube-apiserver multiplies retries
//!    of 429 and of anything with Retry-After; see docs/configuration.md, "Overload");
//! 2. **concurrency limit** — `max_in_flight_reviews` reviews in progress at once;
//! 3. **deadline** — the review's absolute deadline is stamped on the call, so a retry
//!    only gets the time that is left, and each attempt sends it as the gRPC timeout;
//! 4. **fail fast** — no replica in rotation: the retryable error at once;
//! 5. **retry once** — a transport failure (the replica was ejected by it) is tried again
//!    on another replica, if the deadline allows;
//! 6. **buffer** — a bounded queue in front of the balancer (it is not `Clone`);
//! 7. **p2c balance** — power of two choices over the replicas in rotation, by peak EWMA
//!    latency (`discovery.rs` feeds the rotation).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use authd_proto::v1::{AuthenticateRequest, AuthenticateResponse};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;
use tower::balance::p2c::Balance;
use tower::load::{CompleteOnResponse, PeakEwmaDiscover};
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceBuilder};

use crate::backend::{Backend, BackendError, Reachability};
use crate::discovery::{Call, ReplicaSet};

/// Limits of the stack.
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

/// Builds the backend over `replicas`.
pub fn backend(replicas: ReplicaSet, limits: Limits) -> Backend {
    let discover =
        UnboundedReceiverStream::new(replicas.changes).map(Ok::<_, std::convert::Infallible>);
    let balancer = Balance::new(PeakEwmaDiscover::new(
        discover,
        DEFAULT_RTT,
        EWMA_DECAY,
        CompleteOnResponse::default(),
    ));
    let deadline = limits.deadline;
    let stack = ServiceBuilder::new()
        .map_err(into_backend_error)
        .load_shed()
        .concurrency_limit(limits.max_in_flight)
        .map_request(move |request: AuthenticateRequest| Call {
            request,
            deadline: tokio::time::Instant::now() + deadline,
        })
        .layer_fn(|inner| FailFast {
            inner,
            reachability: replicas.reachability.clone(),
        })
        .retry(RetryOnce { retried: false })
        .buffer(limits.max_in_flight)
        .service(balancer);
    BoxCloneSyncService::new(stack)
}

fn into_backend_error(e: BoxError) -> BackendError {
    if e.is::<tower::load_shed::error::Overloaded>() {
        return BackendError::Overloaded(
            "the edge has max_in_flight_reviews reviews in progress".into(),
        );
    }
    match e.downcast::<BackendError>() {
        Ok(b) => *b,
        Err(other) => BackendError::Unavailable(other.to_string()),
    }
}

/// Retries a call once after a transport failure, while its deadline has not passed.
#[derive(Clone)]
struct RetryOnce {
    retried: bool,
}

impl tower::retry::Policy<Call, AuthenticateResponse, BoxError> for RetryOnce {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        call: &mut Call,
        result: &mut Result<AuthenticateResponse, BoxError>,
    ) -> Option<Self::Future> {
        let Err(e) = result else {
            return None;
        };
        let transport = matches!(
            e.downcast_ref::<BackendError>(),
            Some(BackendError::Unavailable(_))
        );
        if self.retried || !transport || tokio::time::Instant::now() >= call.deadline {
            return None;
        }
        tracing::debug!(request_id = %call.request.request_id, error = %e, "retrying on another authd replica");
        self.retried = true;
        Some(std::future::ready(()))
    }

    fn clone_request(&mut self, call: &Call) -> Option<Call> {
        Some(call.clone())
    }
}

/// Answers at once when no replica is in rotation, instead of waiting in the queue for
/// one until the deadline.
#[derive(Clone)]
struct FailFast<S> {
    inner: S,
    reachability: Reachability,
}

impl<S> tower::Service<Call> for FailFast<S>
where
    S: tower::Service<Call, Response = AuthenticateResponse, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = AuthenticateResponse;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<AuthenticateResponse, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        if !self.reachability.get() {
            return Box::pin(std::future::ready(Err(BackendError::Unavailable(
                "no healthy authd replica".into(),
            )
            .into())));
        }
        Box::pin(self.inner.call(call))
    }
}
