//! The one interface through which the edge reaches authd: a tower `Service` from
//! `AuthenticateRequest` to `AuthenticateResponse`. In split mode it is the balanced set of
//! authd replicas (`balance.rs`); in the all-in-one binary it is authd's own service,
//! called in-process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use authd_proto::v1::{AuthenticateRequest, AuthenticateResponse};
use tower::util::BoxCloneSyncService;

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

pub type Backend = BoxCloneSyncService<AuthenticateRequest, AuthenticateResponse, BackendError>;

/// Whether authd is reachable (at least one healthy replica), for `/readyz`.
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
