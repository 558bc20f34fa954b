//! Keyed fingerprints of tokens: the only form in which a token is ever used as a key.
//!
//! The fingerprint is HMAC-SHA256 over the length-prefixed token and the length-prefixed
//! audience list, the same construction kube-apiserver uses for its own token cache. Length
//! prefixes make the encoding unambiguous (token "ab" + audience "c" never collides with
//! token "a" + audience "bc"); the key prevents precomputation, so a leaked cache does not
//! reveal tokens.
//!
//! The key is a ring: one current key (`cache.hmac_key_file`) that every new fingerprint
//! is made under, and previous keys (`cache.previous_hmac_key_files`) kept while a rotation
//! is under way. Cached verdicts need no previous key (a verdict under another key is a
//! miss, and the sources answer again), but revocations do: a deny-list entry is a keyed
//! id that cannot be recomputed under a new key without the token, so a revocation is
//! written under every key of the ring and checked under every key of the ring.

use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// A 32-byte keyed hash of a token (and its audiences).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The same key in another namespace (the pipeline's digest): entries written under one
    /// are never found under another. A keyed hash XOR a public value is still unguessable.
    pub fn within(&self, namespace: &[u8; 32]) -> Fingerprint {
        let mut out = self.0;
        for (b, n) in out.iter_mut().zip(namespace) {
            *b ^= n;
        }
        Fingerprint(out)
    }

    /// A short, non-reversible id for log lines (first 8 bytes of the fingerprint).
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({})", self.short())
    }
}

/// Computes fingerprints under the current secret key, and keyed ids under the previous
/// keys of the ring for the deny-list.
///
/// The keyed HMAC state is built once and cloned per call, so the hot path does not redo
/// the key schedule.
#[derive(Clone)]
pub struct Fingerprinter {
    keyed: HmacSha256,
    /// Keys being rotated out, newest first; empty outside a rotation, and then nothing
    /// on any path computes more than it did before key rings existed.
    previous: Arc<[Fingerprinter]>,
}

impl Fingerprinter {
    pub fn new(key: &[u8]) -> Self {
        Self::with_previous::<&[u8]>(key, &[])
    }

    /// A ring: `current` makes every fingerprint, `previous` are only checked.
    pub fn with_previous<K: AsRef<[u8]>>(current: &[u8], previous: &[K]) -> Self {
        // HMAC accepts keys of any length; this cannot fail.
        let keyed =
            <HmacSha256 as Mac>::new_from_slice(current).expect("HMAC takes any key length");
        let previous = previous
            .iter()
            .map(|k| Self::new(k.as_ref()))
            .collect::<Vec<_>>()
            .into();
        Self { keyed, previous }
    }

    /// The previous keys of the ring, each as a one-key fingerprinter.
    pub fn previous(&self) -> &[Fingerprinter] {
        &self.previous
    }

    /// Every key of the ring, current first, each as a fingerprinter whose single-key
    /// methods (`token_id`, `username`, `credential`) hash under that key.
    pub fn ring(&self) -> impl Iterator<Item = &Fingerprinter> {
        std::iter::once(self).chain(self.previous.iter())
    }

    /// A short public name of the current key (not a secret: a keyed hash of a constant),
    /// so logs and the rotation runbook can say which key a replica uses.
    pub fn key_id(&self) -> String {
        let mut mac = self.keyed.clone();
        mac.update(b"key-id\0");
        hex::encode(&mac.finalize().into_bytes()[..4])
    }

    /// A fingerprinter with a random key, for a single process without a shared cache.
    pub fn random() -> Self {
        let key: [u8; 32] = rand::random();
        Self::new(&key)
    }

    pub fn token(&self, token: &str, audiences: &[String]) -> Fingerprint {
        let mut mac = self.keyed.clone();
        write_prefixed(&mut mac, token.as_bytes());
        mac.update(&(audiences.len() as u64).to_be_bytes());
        for aud in audiences {
            write_prefixed(&mut mac, aud.as_bytes());
        }
        Fingerprint(mac.finalize().into_bytes().into())
    }

    /// A keyed hash of the token alone (domain-separated from `token`), grouping every
    /// cached verdict of one token whatever the audiences, so it can be revoked as one.
    pub fn token_id(&self, token: &str) -> Fingerprint {
        let mut mac = self.keyed.clone();
        mac.update(b"token-id\0");
        write_prefixed(&mut mac, token.as_bytes());
        Fingerprint(mac.finalize().into_bytes().into())
    }

    /// A keyed hash of a source's credential id (PostgreSQL's token id), for revocation by id.
    pub fn credential(&self, id: &str) -> Fingerprint {
        let mut mac = self.keyed.clone();
        mac.update(b"credential\0");
        write_prefixed(&mut mac, id.as_bytes());
        Fingerprint(mac.finalize().into_bytes().into())
    }

    /// A keyed hash of a username, so revocation indexes do not store names in the clear
    /// under a guessable key.
    pub fn username(&self, username: &str) -> Fingerprint {
        let mut mac = self.keyed.clone();
        mac.update(b"user\0");
        write_prefixed(&mut mac, username.as_bytes());
        Fingerprint(mac.finalize().into_bytes().into())
    }

    /// A 32-byte key for another purpose, derived from the fingerprint key under `label`
    /// (domain-separated from every fingerprint), so replicas sharing the HMAC key file
    /// share it too, and no second secret needs distributing.
    pub fn derive_key(&self, label: &str) -> [u8; 32] {
        let mut mac = self.keyed.clone();
        mac.update(b"derived-key\0");
        write_prefixed(&mut mac, label.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

fn write_prefixed(mac: &mut HmacSha256, bytes: &[u8]) {
    mac.update(&(bytes.len() as u64).to_be_bytes());
    mac.update(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_prefixing_separates_token_and_audiences() {
        let f = Fingerprinter::new(b"k");
        assert_ne!(f.token("ab", &["c".into()]), f.token("a", &["bc".into()]));
        assert_ne!(f.token("a", &[]), f.token("a", &["".into()]));
    }

    #[test]
    fn keyed() {
        let a = Fingerprinter::new(b"one");
        let b = Fingerprinter::new(b"two");
        assert_ne!(a.token("t", &[]), b.token("t", &[]));
        assert_eq!(a.token("t", &[]), a.clone().token("t", &[]));
    }

    #[test]
    fn domains_are_separate() {
        let f = Fingerprinter::new(b"k");
        assert_ne!(f.token_id("t"), f.token("t", &[]));
        assert_ne!(f.token_id("t"), f.username("t"));
        assert_ne!(f.derive_key("t"), f.username("t").0);
        assert_ne!(f.derive_key("t"), f.derive_key("u"));
        assert_ne!(f.credential("t"), f.username("t"));
        assert_ne!(f.credential("t"), f.token_id("t"));
    }

    #[test]
    fn a_ring_hashes_under_its_current_key_and_lists_the_previous_ones() {
        let ring = Fingerprinter::with_previous(b"new", &[b"old".as_slice()]);
        let old = Fingerprinter::new(b"old");
        let new = Fingerprinter::new(b"new");
        assert_eq!(ring.token_id("t"), new.token_id("t"));
        assert_eq!(ring.derive_key("l"), new.derive_key("l"));
        let ids: Vec<_> = ring.ring().map(|f| f.username("u")).collect();
        assert_eq!(ids, [new.username("u"), old.username("u")]);
        assert_eq!(ring.key_id(), new.key_id());
        assert_ne!(new.key_id(), old.key_id());
        assert!(new.previous().is_empty());
    }
}
