//! Load shed: at most `max_in_flight_reviews` reviews in progress; one more is answered at
//! once with `Overloaded` (the handler's retryable 500 without Retry-After: kube-apiserver
//! multiplies retries of 429 and of anything with Retry-After; see docs/configuration.md,
//! "Overload"). Never a queue: the permit is taken with `try_acquire`, not awaited.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use authd_proto::v1::AuthenticateResponse;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use crate::backend::{BackendError, Call};

/// Builds [`Shed`] services sharing one limit.
#[derive(Clone)]
pub struct ShedLayer {
    permits: Arc<Semaphore>,
}

impl ShedLayer {
    pub fn new(max_in_flight: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_in_flight)),
        }
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Shed<S> {
        Shed {
            inner,
            permits: self.permits.clone(),
        }
    }
}

/// Sheds a review when every permit is taken; otherwise holds one until it is answered.
#[derive(Clone)]
pub struct Shed<S> {
    inner: S,
    /// One per review in progress, shared by every clone of the service.
    permits: Arc<Semaphore>,
}

impl<S> Service<Call> for Shed<S>
where
    S: Service<Call, Response = AuthenticateResponse, Error = BackendError>,
{
    type Response = AuthenticateResponse;
    type Error = BackendError;
    type Future = ShedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BackendError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => ShedFuture::Admitted {
                inner: self.inner.call(call),
                _permit: permit,
            },
            Err(_) => ShedFuture::Shed,
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner future holding its permit, or the overload answer.
    #[project = ShedProj]
    pub enum ShedFuture<F> {
        Admitted { #[pin] inner: F, _permit: OwnedSemaphorePermit },
        Shed,
    }
}

impl<F> Future for ShedFuture<F>
where
    F: Future<Output = Result<AuthenticateResponse, BackendError>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.project() {
            ShedProj::Admitted { inner, .. } => inner.poll(cx),
            ShedProj::Shed => Poll::Ready(Err(BackendError::Overloaded(
                "the edge has max_in_flight_reviews reviews in progress".into(),
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::Instant;
    use tower::ServiceExt;

    fn call() -> Call {
        Call {
            request: Default::default(),
            deadline: Instant::now() + Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn sheds_above_the_limit_and_gives_permits_back() {
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let wait = Arc::new(tokio::sync::Mutex::new(Some(wait)));
        let inner = tower::service_fn(move |_c: Call| {
            let wait = wait.clone();
            async move {
                if let Some(w) = wait.lock().await.take() {
                    let _ = w.await;
                }
                Ok::<_, BackendError>(AuthenticateResponse::default())
            }
        });
        let shed = ShedLayer::new(1).layer(inner);
        let mut held = Box::pin(shed.clone().oneshot(call()));
        assert!(futures::poll!(held.as_mut()).is_pending());
        let e = shed.clone().oneshot(call()).await;
        assert!(matches!(e, Err(BackendError::Overloaded(_))), "{e:?}");
        let _ = go.send(());
        assert!(held.await.is_ok());
        assert!(shed.oneshot(call()).await.is_ok(), "the permit came back");
    }
}
