//! Admission: load shed and the memory budget, decided before a request's body is read.
//! At most `max_in_flight_reviews` reviews are in progress, and together they hold at most
//! `max_buffered_body_bytes` of request headers and body; a review over either limit is
//! answered at once with `Overloaded` (the handler's retryable 500 without Retry-After:
//! kube-apiserver multiplies retries of 429 and of anything with Retry-After; see
//! docs/configuration.md, "Overload"). Never a queue: room is taken or refused at
//! once, never awaited.
//!
//! Admission comes before the body because reading it is where a client spends the edge's
//! memory: with the limit applied after the read, every HTTP/2 stream of every connection
//! buffered its body first (issue 13: +216 MB from one connection).

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::backend::BackendError;

/// The edge's two process-wide limits, shared by every connection. Plain counters, not
/// semaphores: nothing ever waits for room, and giving back is one atomic subtraction (a
/// tokio semaphore takes its waiters' lock on every release).
pub struct Admission {
    /// Reviews in progress.
    reviews: Limit,
    /// Bytes of request data the reviews in progress hold (headers, then each body as it
    /// is read).
    bytes: Limit,
}

/// A count that may not pass its maximum.
struct Limit {
    max: usize,
    used: AtomicUsize,
}

impl Limit {
    fn new(max: usize) -> Self {
        Self {
            max,
            used: AtomicUsize::new(0),
        }
    }

    /// Takes `n` if that stays within the maximum.
    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= self.max)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

impl Admission {
    pub fn new(max_in_flight: usize, max_bytes: usize) -> Self {
        Self {
            reviews: Limit::new(max_in_flight),
            bytes: Limit::new(max_bytes),
        }
    }

    /// Admits one review that already holds `bytes` (its headers), or refuses it at once.
    pub fn admit(&self, bytes: usize) -> Result<Admitted<'_>, BackendError> {
        if !self.reviews.take(1) {
            return Err(BackendError::Overloaded(
                "the edge has max_in_flight_reviews reviews in progress".into(),
            ));
        }
        let mut admitted = Admitted {
            admission: self,
            held: 0,
        };
        if !admitted.hold(bytes) {
            return Err(over_budget());
        }
        Ok(admitted)
    }
}

/// The refusal when the byte budget has no room.
pub fn over_budget() -> BackendError {
    BackendError::Overloaded(
        "the edge holds max_buffered_body_bytes of request data in progress".into(),
    )
}

/// One admitted review: its place among the reviews in progress and the bytes it holds,
/// given back on drop.
pub struct Admitted<'a> {
    admission: &'a Admission,
    held: usize,
}

impl Admitted<'_> {
    /// The bytes of the budget this review holds.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Makes sure this review holds at least `total` bytes of the budget; `false` (and
    /// nothing more held) when the budget has no room for the difference.
    pub fn hold(&mut self, total: usize) -> bool {
        let more = total.saturating_sub(self.held);
        if more == 0 {
            return true;
        }
        if !self.admission.bytes.take(more) {
            return false;
        }
        self.held = total;
        true
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.admission.bytes.give(self.held);
        self.admission.reviews.give(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_above_either_limit_and_gives_everything_back() {
        let a = Admission::new(2, 100);
        let mut first = a.admit(10).unwrap();
        let second = a.admit(10).unwrap();
        let e = a.admit(0).err().unwrap();
        assert!(e.to_string().contains("max_in_flight_reviews"), "{e}");
        assert!(first.hold(90), "the whole budget can be held");
        assert!(!first.hold(91), "one byte more is refused");
        drop(second);
        let e = a.admit(11).err().unwrap();
        assert!(e.to_string().contains("max_buffered_body_bytes"), "{e}");
        drop(first);
        let mut all = a.admit(100).unwrap();
        assert!(all.hold(50), "holding less than held is a no-op");
        assert!(a.admit(0).is_ok(), "a review holding nothing is admitted");
    }
}
