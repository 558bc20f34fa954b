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
//!
//! One connection's reviews together hold at most an eighth of the byte budget (at least
//! one body of `max_body_bytes`): a client that declares large bodies on many streams and
//! stalls is refused on its own connection before kube-apiserver's reviews, on theirs, find
//! the budget full (issue 13: reviews by a legitimate caller failed during a stream flood).

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::backend::BackendError;

/// The edge's two process-wide limits, shared by every connection, and the share of the
/// bytes one connection may hold. Plain counters, not semaphores: nothing ever waits for
/// room, and giving back is one atomic subtraction (a tokio semaphore takes its waiters'
/// lock on every release).
pub struct Admission {
    /// Reviews in progress.
    reviews: Limit,
    /// Bytes of request data the reviews in progress hold (headers, then each body as it
    /// is read).
    bytes: Limit,
    /// Most bytes the reviews of one connection hold together.
    per_connection: usize,
}

/// The request bytes one connection's reviews hold: each connection has one, and its
/// reviews are admitted against it as well as against the process-wide budget.
#[derive(Debug, Default)]
pub struct ConnectionBytes(AtomicUsize);

/// One connection's share of `max_buffered_bytes`: an eighth, but room for at least one
/// body of `max_body_bytes` (and never more than the whole budget).
pub fn connection_share(max_buffered_bytes: usize, max_body_bytes: usize) -> usize {
    (max_buffered_bytes / 8)
        .max(max_body_bytes)
        .min(max_buffered_bytes)
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
        take(&self.used, n, self.max)
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Adds `n` to `used` if that stays within `max`.
fn take(used: &AtomicUsize, n: usize, max: usize) -> bool {
    used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
        used.checked_add(n).filter(|total| *total <= max)
    })
    .is_ok()
}

impl Admission {
    pub fn new(max_in_flight: usize, max_bytes: usize, per_connection: usize) -> Self {
        Self {
            reviews: Limit::new(max_in_flight),
            bytes: Limit::new(max_bytes),
            per_connection,
        }
    }

    /// Admits one review of `connection` that already holds `bytes` (its headers), or
    /// refuses it at once.
    pub fn admit<'a>(
        &'a self,
        connection: &'a ConnectionBytes,
        bytes: usize,
    ) -> Result<Admitted<'a>, BackendError> {
        if !self.reviews.take(1) {
            return Err(BackendError::Overloaded(
                "the edge has max_in_flight_reviews reviews in progress".into(),
            ));
        }
        let mut admitted = Admitted {
            admission: self,
            connection,
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

/// One admitted review: its place among the reviews in progress and the bytes it holds
/// (of its connection's share and of the budget), given back on drop.
pub struct Admitted<'a> {
    admission: &'a Admission,
    connection: &'a ConnectionBytes,
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
        if !take(&self.connection.0, more, self.admission.per_connection) {
            return false;
        }
        if !self.admission.bytes.take(more) {
            self.connection.0.fetch_sub(more, Ordering::AcqRel);
            return false;
        }
        self.held = total;
        true
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.admission.bytes.give(self.held);
        self.connection.0.fetch_sub(self.held, Ordering::AcqRel);
        self.admission.reviews.give(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_above_either_limit_and_gives_everything_back() {
        let a = Admission::new(2, 100, 100);
        let c = ConnectionBytes::default();
        let mut first = a.admit(&c, 10).unwrap();
        let second = a.admit(&c, 10).unwrap();
        let e = a.admit(&c, 0).err().unwrap();
        assert!(e.to_string().contains("max_in_flight_reviews"), "{e}");
        assert!(first.hold(90), "the whole budget can be held");
        assert!(!first.hold(91), "one byte more is refused");
        drop(second);
        let e = a.admit(&c, 11).err().unwrap();
        assert!(e.to_string().contains("max_buffered_body_bytes"), "{e}");
        drop(first);
        let mut all = a.admit(&c, 100).unwrap();
        assert!(all.hold(50), "holding less than held is a no-op");
        assert!(
            a.admit(&c, 0).is_ok(),
            "a review holding nothing is admitted"
        );
    }

    /// One connection's reviews fill at most its share; another connection still finds
    /// room, and everything comes back on both counts.
    #[test]
    fn one_connection_cannot_take_the_whole_budget() {
        assert_eq!(connection_share(64 << 20, 1 << 20), 8 << 20);
        assert_eq!(connection_share(2 << 20, 1 << 20), 1 << 20);
        assert_eq!(connection_share(100, 1000), 100);
        let a = Admission::new(10, 100, 30);
        let (flood, apiserver) = (ConnectionBytes::default(), ConnectionBytes::default());
        let mut held: Vec<_> = (0..3).map(|_| a.admit(&flood, 10).unwrap()).collect();
        assert!(a.admit(&flood, 1).is_err(), "past its share");
        assert!(!held[0].hold(11), "past its share");
        let mut legit = a.admit(&apiserver, 10).unwrap();
        assert!(legit.hold(30));
        held.clear();
        legit.hold(30);
        drop(legit);
        assert_eq!(flood.0.load(Ordering::SeqCst), 0);
        assert_eq!(apiserver.0.load(Ordering::SeqCst), 0);
        assert!(a.admit(&flood, 30).is_ok(), "everything came back");
    }
}
