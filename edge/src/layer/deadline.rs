//! Deadline: a review not answered by its deadline (`review_timeout` after it arrived) is
//! answered with `Timeout`, whatever the backend is doing. The balancer also sends what is
//! left of it as each attempt's gRPC timeout, so a retry only gets the time that remains.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use authd_proto::v1::AuthenticateResponse;
use tower::{Layer, Service};

use crate::backend::{BackendError, Call};

/// Builds [`Deadline`] services.
#[derive(Clone, Copy)]
pub struct DeadlineLayer {
    review_timeout: Duration,
}

impl DeadlineLayer {
    /// `review_timeout` only names the limit in the error; the instant is the call's own.
    pub fn new(review_timeout: Duration) -> Self {
        Self { review_timeout }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            inner,
            review_timeout: self.review_timeout,
        }
    }
}

/// Ends a review at its deadline.
#[derive(Clone)]
pub struct Deadline<S> {
    inner: S,
    review_timeout: Duration,
}

impl<S> Service<Call> for Deadline<S>
where
    S: Service<Call, Response = AuthenticateResponse, Error = BackendError>,
{
    type Response = AuthenticateResponse;
    type Error = BackendError;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BackendError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let deadline = call.deadline;
        DeadlineFuture {
            inner: tokio::time::timeout_at(deadline, self.inner.call(call)),
            review_timeout: self.review_timeout,
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner future under a timer.
    pub struct DeadlineFuture<F> {
        #[pin]
        inner: tokio::time::Timeout<F>,
        review_timeout: Duration,
    }
}

impl<F> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<AuthenticateResponse, BackendError>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        match this.inner.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(verdict)) => Poll::Ready(verdict),
            Poll::Ready(Err(_elapsed)) => {
                Poll::Ready(Err(BackendError::Timeout(*this.review_timeout)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;
    use tower::ServiceExt;

    #[tokio::test]
    async fn answers_timeout_at_the_deadline() {
        let never = tower::service_fn(|_c: Call| {
            std::future::pending::<Result<AuthenticateResponse, BackendError>>()
        });
        let svc = DeadlineLayer::new(Duration::from_millis(200)).layer(never);
        let started = Instant::now();
        let e = svc
            .oneshot(Call {
                request: Default::default(),
                deadline: started + Duration::from_millis(200),
            })
            .await;
        assert!(
            matches!(e, Err(BackendError::Timeout(d)) if d == Duration::from_millis(200)),
            "{e:?}"
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn passes_an_answer_in_time_through() {
        let quick = tower::service_fn(|_c: Call| async {
            Ok::<_, BackendError>(AuthenticateResponse {
                authenticated: true,
                ..Default::default()
            })
        });
        let svc = DeadlineLayer::new(Duration::from_secs(3)).layer(quick);
        let v = svc
            .oneshot(Call {
                request: Default::default(),
                deadline: Instant::now() + Duration::from_secs(3),
            })
            .await
            .unwrap();
        assert!(v.authenticated);
    }
}
