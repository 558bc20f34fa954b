//! The benchmark's tokens and what each review should answer.
//!
//! Every token has the seed's `user:password` shape, so one token set serves every server:
//! the static token file lists the valid ones literally, the Basic-auth server checks the
//! password, and the seed splits on `:`. User `bu{i}` has password `{secret}.{i}`; every
//! tenth user presents a wrong password, so each run also checks denials.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::{BufMut, Bytes, BytesMut};

/// The audience kube-apiserver sends on a default cluster.
pub const AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// Body before and after the token, exactly as kube-apiserver (v1) encodes a TokenReview.
const BODY_HEAD: &str = r#"{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1","metadata":{"creationTimestamp":null},"spec":{"token":""#;
const BODY_TAIL: &str =
    r#"","audiences":["https://kubernetes.default.svc.cluster.local"]},"status":{"user":{}}}"#;

/// The group every valid user has, in the token file and in the seed's answer.
pub const GROUP: &str = "system:masters";

/// One review to send: the token and the verdict the answer must carry.
#[derive(Clone, Debug)]
pub struct Item {
    pub token: String,
    /// None: any definitive answer is right (fixed-answer ceilings).
    pub expect: Option<bool>,
}

impl Item {
    /// The JSON body kube-apiserver would POST for this token.
    pub fn body(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(BODY_HEAD.len() + self.token.len() + BODY_TAIL.len());
        b.put_slice(BODY_HEAD.as_bytes());
        // Tokens are [a-z0-9.:-]: nothing to escape.
        b.put_slice(self.token.as_bytes());
        b.put_slice(BODY_TAIL.as_bytes());
        b.freeze()
    }
}

/// The token universe of one suite run.
#[derive(Clone, Debug)]
pub struct Universe {
    pub secret: String,
    pub hot: usize,
    pub cold: usize,
}

impl Universe {
    pub fn new(hot: usize, cold: usize) -> Self {
        let secret = format!("{:016x}", rand::random::<u64>());
        Self { secret, hot, cold }
    }

    fn valid(i: usize) -> bool {
        i % 10 != 9
    }

    pub fn user(i: usize) -> String {
        format!("bu{i}")
    }

    pub fn item(&self, i: usize) -> Item {
        let pw = if Self::valid(i) {
            format!("{}.{i}", self.secret)
        } else {
            "wrong".to_owned()
        };
        Item {
            token: format!("{}:{pw}", Self::user(i)),
            expect: Some(Self::valid(i)),
        }
    }

    /// Hot tokens are users 0..hot; cold ones follow.
    pub fn hot_items(&self) -> Vec<Item> {
        (0..self.hot).map(|i| self.item(i)).collect()
    }

    pub fn cold_items(&self) -> Vec<Item> {
        (self.hot..self.hot + self.cold)
            .map(|i| self.item(i))
            .collect()
    }

    /// kube-apiserver's `--token-auth-file` CSV listing every valid token.
    pub fn write_token_file(&self, path: &Path) -> std::io::Result<()> {
        let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
        for i in (0..self.hot + self.cold).filter(|i| Self::valid(*i)) {
            let item = self.item(i);
            writeln!(w, "{},{},{i},\"{GROUP}\"", item.token, Self::user(i))?;
        }
        w.flush()
    }
}

/// The Basic-auth server's check: user `bu{i}`, password `{secret}.{i}`, except every tenth.
pub fn password_ok(secret: &str, user: &str, password: &str) -> bool {
    let Some(i) = user
        .strip_prefix("bu")
        .and_then(|n| n.parse::<usize>().ok())
    else {
        return false;
    };
    let Some((s, n)) = password.split_once('.') else {
        return false;
    };
    Universe::valid(i) && s == secret && n.parse::<usize>().ok() == Some(i)
}

/// What a run sends: a share of hot tokens, the rest taken once each from the cold list.
pub struct Workload {
    hot: Vec<Item>,
    cold: Vec<Item>,
    /// Out of 1000 reviews, how many use a hot token.
    hot_permille: u64,
    n: AtomicU64,
    next_cold: AtomicUsize,
}

impl Workload {
    pub fn new(hot: Vec<Item>, cold: Vec<Item>, hot_permille: u64) -> Self {
        Self {
            hot,
            cold,
            hot_permille,
            n: AtomicU64::new(0),
            next_cold: AtomicUsize::new(0),
        }
    }

    /// The next review, or None once every cold token has been used (a cold run must not
    /// wrap around into tokens the server has cached). While `warming`, hot tokens only: the
    /// warm-up readies connections without using up the cold set (a fast build used it all
    /// before the measurement began).
    pub fn next(&self, warming: bool) -> Option<&Item> {
        let n = self.n.fetch_add(1, Ordering::Relaxed);
        if (warming || n % 1000 < self.hot_permille) && !self.hot.is_empty() {
            return self.hot.get((n as usize) % self.hot.len());
        }
        let i = self.next_cold.fetch_add(1, Ordering::Relaxed);
        self.cold.get(i)
    }

    pub fn cold_used(&self) -> usize {
        self.next_cold.load(Ordering::Relaxed).min(self.cold.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_check_out() {
        let u = Universe::new(10, 10);
        for i in 0..20 {
            let item = u.item(i);
            let (user, pw) = item.token.split_once(':').unwrap();
            assert_eq!(password_ok(&u.secret, user, pw), item.expect == Some(true));
        }
        assert!(!password_ok(&u.secret, "bu1", "x.1"));
        assert!(!password_ok(&u.secret, "bu1", &format!("{}.2", u.secret)));
    }

    #[test]
    fn workload_mixes_and_exhausts() {
        let u = Universe::new(10, 5);
        let w = Workload::new(u.hot_items(), u.cold_items(), 0);
        // A warm-up, however long, uses no cold token.
        for _ in 0..100 {
            assert!(w.next(true).is_some());
        }
        assert_eq!(w.cold_used(), 0);
        assert_eq!(w.next(false).unwrap().token, u.item(10).token);
        for _ in 0..4 {
            assert!(w.next(false).is_some());
        }
        assert!(w.next(false).is_none());
        let body = u.item(0).body();
        assert!(std::str::from_utf8(&body)
            .unwrap()
            .contains(r#""token":"bu0:"#));
    }
}
