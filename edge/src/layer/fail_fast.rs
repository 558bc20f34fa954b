//! Fail fast: with no authd reachable (no replica in rotation) a review gets the retryable
//! error at once instead of waiting for its deadline; `/readyz` reads the same flag.

use std::future::{ready, Ready};
use std::task::{Context, Poll};

use authd_proto::v1::AuthenticateResponse;
use futures::future::Either;
use tower::{Layer, Service};

use crate::backend::{BackendError, Call, Reachability};

/// Builds [`FailFast`] services.
#[derive(Clone)]
pub struct FailFastLayer {
    reachability: Reachability,
}

impl FailFastLayer {
    pub fn new(reachability: Reachability) -> Self {
        Self { reachability }
    }
}

impl<S> Layer<S> for FailFastLayer {
    type Service = FailFast<S>;

    fn layer(&self, inner: S) -> FailFast<S> {
        FailFast {
            inner,
            reachability: self.reachability.clone(),
        }
    }
}

/// Answers at once while authd is unreachable.
#[derive(Clone)]
pub struct FailFast<S> {
    inner: S,
    reachability: Reachability,
}

impl<S> Service<Call> for FailFast<S>
where
    S: Service<Call, Response = AuthenticateResponse, Error = BackendError>,
{
    type Response = AuthenticateResponse;
    type Error = BackendError;
    type Future = Either<Ready<Result<AuthenticateResponse, BackendError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BackendError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        if self.reachability.get() {
            Either::Right(self.inner.call(call))
        } else {
            Either::Left(ready(Err(BackendError::Unavailable(
                "no healthy authd replica".into(),
            ))))
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
    async fn fails_at_once_while_unreachable_and_passes_through_when_reachable() {
        let reachability = Reachability::never();
        let inner = tower::service_fn(|_c: Call| async {
            Ok::<_, BackendError>(AuthenticateResponse::default())
        });
        let svc = FailFastLayer::new(reachability.clone()).layer(inner);
        let e = svc.clone().oneshot(call()).await;
        assert!(matches!(e, Err(BackendError::Unavailable(_))), "{e:?}");
        reachability.set(true);
        assert!(svc.oneshot(call()).await.is_ok());
    }
}
