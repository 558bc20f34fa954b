//! The one interface through which the edge reaches authd, and the one place its
//! cross-cutting behaviour is composed ([`Backend::layered`]).
//!
//! A review is first **admitted** ([`Backend::admit`], `layer/admission.rs`): load shed at
//! `max_in_flight_reviews` and the `max_buffered_body_bytes` budget, before its body is
//! read; the admission is the proof [`Backend::review`] asks for. It then goes, in order,
//! through its **deadline** (`layer/deadline.rs`), **fail fast** when no authd is
//! reachable (`layer/fail_fast.rs`), and the inner backend: in split mode the balanced
//! authd replicas (`balance.rs`: p2c and retry once), in the all-in-one binary authd's own
//! service, called in-process ([`Inner::in_process`]). Both get the same admission and
//! layers, so both answer overload with the same fast retryable 500.
//!
//! The layers are small tower services with hand-written futures (no buffer task, no
//! boxing per layer: the benchmark measured those at a quarter of the edge's CPU per
//! review); the inner backend's future is the one boxed future of a review.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use authd_proto::v1::{AuthenticateRequest, AuthenticateResponse};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

use crate::config::Config;
use crate::layer::admission::ConnectionBytes;
use crate::layer::{Admission, Admitted, Deadline, DeadlineLayer, FailFast, FailFastLayer};

/// Why authd gave no verdict. Every variant becomes the retryable HTTP 500.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error("authd is unavailable: {0}")]
    Unavailable(String),
    #[error("authd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("authd refused the request: {0}")]
    Refused(String),
    /// Over capacity, at the edge or at authd: answered at once, never queued.
    #[error("overloaded: {0}")]
    Overloaded(String),
}

/// authd's in-process service cannot fail; this lets it stand where a backend error may be.
impl From<std::convert::Infallible> for BackendError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

/// One review on its way to authd: the request, and the instant by which it must be
/// answered (the handler counts it from the request's arrival).
pub struct Call {
    pub request: AuthenticateRequest,
    pub deadline: Instant,
}

/// What a backend answers.
pub type Verdict = Result<AuthenticateResponse, BackendError>;

/// The inner backend's future: the one boxed future of a review.
pub type BoxVerdict = Pin<Box<dyn Future<Output = Verdict> + Send>>;

/// The backend under the layers: the balancer or authd in-process, behind one shared
/// function (cloning it is one atomic increment, not an allocation).
#[derive(Clone)]
pub struct Inner(Arc<dyn Fn(Call) -> BoxVerdict + Send + Sync>);

impl Inner {
    /// A backend from a function that starts one review.
    pub fn from_fn(f: impl Fn(Call) -> BoxVerdict + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// authd's own `tower::Service`, called in-process (the all-in-one binary). It gets no
    /// deadline of its own: the deadline layer answers for it when time is up.
    pub fn in_process<S>(service: S) -> Self
    where
        S: Service<AuthenticateRequest, Response = AuthenticateResponse>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send,
        S::Error: Into<BackendError>,
    {
        Self::from_fn(move |call: Call| {
            let ready = service.clone().oneshot(call.request);
            Box::pin(async move { ready.await.map_err(Into::into) })
        })
    }
}

impl Service<Call> for Inner {
    type Response = AuthenticateResponse;
    type Error = BackendError;
    type Future = BoxVerdict;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BackendError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> BoxVerdict {
        (self.0)(call)
    }
}

/// The limits the layers enforce, from the edge's configuration.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The review deadline (`review_timeout`), for the timeout's message.
    pub review_timeout: Duration,
    /// Reviews in progress at once (`max_in_flight_reviews`).
    pub max_in_flight: usize,
    /// Request bytes held by the reviews in progress (`max_buffered_body_bytes`).
    pub max_buffered_bytes: usize,
    /// Request bytes the reviews of one connection hold together
    /// (`admission::connection_share`).
    pub max_connection_bytes: usize,
}

impl From<&Config> for Limits {
    fn from(c: &Config) -> Self {
        Self {
            review_timeout: c.review_timeout,
            max_in_flight: c.max_in_flight_reviews,
            max_buffered_bytes: c.max_buffered_body_bytes,
            max_connection_bytes: crate::layer::admission::connection_share(
                c.max_buffered_body_bytes,
                c.max_body_bytes,
            ),
        }
    }
}

/// The backend the handler calls: the inner backend wrapped in the edge's layers.
#[derive(Clone)]
pub struct Backend {
    admission: Arc<Admission>,
    stack: Deadline<FailFast<Inner>>,
}

impl Backend {
    /// Admission in front of `inner` wrapped in deadline and fail fast, in that order
    /// (outermost first).
    pub fn layered(inner: Inner, limits: Limits, reachability: Reachability) -> Self {
        let stack = ServiceBuilder::new()
            .layer(DeadlineLayer::new(limits.review_timeout))
            .layer(FailFastLayer::new(reachability))
            .service(inner);
        Self {
            admission: Arc::new(Admission::new(
                limits.max_in_flight,
                limits.max_buffered_bytes,
                limits.max_connection_bytes,
            )),
            stack,
        }
    }

    /// Admits one review of `connection` holding `bytes` of request data so far, or
    /// refuses it at once (`Overloaded`). Taken before the body is read; held until the
    /// review is answered.
    pub fn admit<'a>(
        &'a self,
        connection: &'a ConnectionBytes,
        bytes: usize,
    ) -> Result<Admitted<'a>, BackendError> {
        self.admission.admit(connection, bytes)
    }

    /// Starts one admitted review. Every layer is always ready (capacity was decided at
    /// admission), so there is nothing to wait for before calling.
    pub fn review(
        &self,
        _admitted: &Admitted<'_>,
        call: Call,
    ) -> impl Future<Output = Verdict> + Send + 'static {
        self.stack.clone().call(call)
    }
}

/// Whether authd is reachable (at least one healthy replica), for `/readyz` and fail fast.
#[derive(Clone)]
pub struct Reachability(Arc<AtomicBool>);

impl Reachability {
    pub fn always() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }
    pub fn never() -> Self {
        Self(Arc::new(AtomicBool::new(false)))
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    pub fn set(&self, up: bool) {
        self.0.store(up, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> Call {
        Call {
            request: AuthenticateRequest::default(),
            deadline: Instant::now() + Duration::from_secs(5),
        }
    }

    /// The in-process backend sheds load like the balancer: above the limit a review is
    /// refused at admission, and the inner service never sees it.
    #[tokio::test]
    async fn in_process_backend_sheds_above_the_limit() {
        let (release, hold) = tokio::sync::watch::channel(false);
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = calls.clone();
        let slow = tower::service_fn(move |_r: AuthenticateRequest| {
            seen.fetch_add(1, Ordering::SeqCst);
            let mut hold = hold.clone();
            async move {
                let _ = hold.wait_for(|go| *go).await;
                Ok::<_, std::convert::Infallible>(AuthenticateResponse::default())
            }
        });
        let backend = Backend::layered(
            Inner::in_process(slow),
            Limits {
                review_timeout: Duration::from_secs(5),
                max_in_flight: 2,
                max_buffered_bytes: 1024,
                max_connection_bytes: 1024,
            },
            Reachability::always(),
        );
        let conn = ConnectionBytes::default();
        let admitted: Vec<_> = (0..2).map(|_| backend.admit(&conn, 0).unwrap()).collect();
        let held: Vec<_> = admitted
            .iter()
            .map(|a| tokio::spawn(backend.review(a, call())))
            .collect();
        tokio::task::yield_now().await;
        while calls.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        let shed = backend.admit(&conn, 0).map(|_| ());
        assert!(matches!(shed, Err(BackendError::Overloaded(_))), "{shed:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let _ = release.send(true);
        for h in held {
            assert!(h.await.unwrap().is_ok());
        }
        drop(admitted);
        let a = backend.admit(&conn, 0).expect("permits come back");
        assert!(backend.review(&a, call()).await.is_ok());
    }

    /// Unreachable authd is the retryable error at once, before the inner backend.
    #[tokio::test]
    async fn unreachable_fails_fast() {
        let inner = Inner::from_fn(|_| panic!("the inner backend must not be called"));
        let backend = Backend::layered(
            inner,
            Limits {
                review_timeout: Duration::from_secs(5),
                max_in_flight: 1,
                max_buffered_bytes: 1024,
                max_connection_bytes: 1024,
            },
            Reachability::never(),
        );
        let conn = ConnectionBytes::default();
        let a = backend.admit(&conn, 0).unwrap();
        let e = backend.review(&a, call()).await;
        assert!(matches!(e, Err(BackendError::Unavailable(_))), "{e:?}");
    }
}
