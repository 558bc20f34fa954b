//! Admission: load shed and the memory budget, decided before a request's body is read.
//! At most `max_in_flight_reviews` reviews are in progress, and together they hold at most
//! `max_buffered_body_bytes` of request headers and body; a review over either limit is
//! answered at once with `Overloaded` (the handler's retryable 500 without Retry-After:
//! kube-apiserver multiplies retries of 429 and of anything with Retry-After; see
//! docs/configuration.md, "Overload"). Never a queue: permits are taken with `try_acquire`,
//! not awaited.
//!
//! Admission comes before the body because reading it is where a client spends the edge's
//! memory: with the limit applied after the read, every HTTP/2 stream of every connection
//! buffered its body first (issue 13: +216 MB from one connection).

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::backend::BackendError;

/// The edge's two process-wide limits, shared by every connection.
pub struct Admission {
    /// One permit per review in progress.
    reviews: Semaphore,
    /// One permit per byte of request data a review holds (headers, then its body as it
    /// is read).
    bytes: Semaphore,
}

impl Admission {
    pub fn new(max_in_flight: usize, max_bytes: usize) -> Self {
        Self {
            reviews: Semaphore::new(max_in_flight),
            bytes: Semaphore::new(max_bytes),
        }
    }

    /// Admits one review that already holds `bytes` (its headers), or refuses it at once.
    pub fn admit(&self, bytes: usize) -> Result<Admitted<'_>, BackendError> {
        let review = self.reviews.try_acquire().map_err(|_| {
            BackendError::Overloaded(
                "the edge has max_in_flight_reviews reviews in progress".into(),
            )
        })?;
        let mut admitted = Admitted {
            _review: review,
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

/// One admitted review: its in-flight permit and the bytes it holds, given back on drop.
pub struct Admitted<'a> {
    _review: SemaphorePermit<'a>,
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
        let Some(more) = total.checked_sub(self.held).filter(|m| *m > 0) else {
            return true;
        };
        let Ok(more) = u32::try_from(more) else {
            return false;
        };
        match self.admission.bytes.try_acquire_many(more) {
            Ok(permit) => {
                // Given back as one sum on drop, however many steps it was taken in.
                permit.forget();
                self.held = total;
                true
            }
            Err(_) => false,
        }
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.admission.bytes.add_permits(self.held);
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
