//! Sealed shared-cache values: AES-256-GCM under a key derived from the cache HMAC key,
//! with the value's Redis key as associated data and a fresh random nonce per write.
//!
//! Someone who can read Redis learns no user, group, source or deadline; someone who can
//! write it can neither forge nor edit an entry, nor move one to another key (another
//! token's): it fails to open, and the shared level treats it as a miss. Only shared-level
//! reads and writes pay for this; the in-process level holds verdicts as they are.
//!
//! Wire form: version byte, 12-byte nonce, ciphertext, 16-byte tag. Random 96-bit nonces
//! stay safe for far more writes than one key will see (NIST SP 800-38D bounds them at
//! 2^32 per key); rotating the HMAC key file rotates this key.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

use crate::fingerprint::Fingerprinter;

/// Bumped if the construction ever changes; older values then fail to open (misses).
const VERSION: u8 = 1;
/// The derivation label of the sealing key.
const LABEL: &str = "shared cache values v1";

pub struct Sealer {
    key: LessSafeKey,
}

impl Sealer {
    pub fn new(fingerprinter: &Fingerprinter) -> Self {
        let key = fingerprinter.derive_key(LABEL);
        // AES-256 takes exactly the 32 bytes derive_key returns: this cannot fail.
        let key = UnboundKey::new(&AES_256_GCM, &key).expect("a 32-byte AES-256 key");
        Self {
            key: LessSafeKey::new(key),
        }
    }

    /// Encrypts and authenticates `plain`, bound to `aad` (the Redis key). `None` only for
    /// inputs beyond GCM's limit (64 GiB); a verdict is a few hundred bytes.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Option<Vec<u8>> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut out = Vec::with_capacity(1 + NONCE_LEN + plain.len() + AES_256_GCM.tag_len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .ok()?;
        out.extend_from_slice(&body);
        Some(out)
    }

    /// The plaintext, if `sealed` was sealed by this key for this `aad` and not changed.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let (&version, rest) = sealed.split_first()?;
        if version != VERSION || rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut body)
            .ok()?;
        let len = plain.len();
        body.truncate(len);
        Some(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(key: &[u8]) -> Sealer {
        Sealer::new(&Fingerprinter::new(key))
    }

    #[test]
    fn opens_only_what_it_sealed_for_that_key() {
        let s = sealer(b"the shared key 0123456789abcdef0123");
        let sealed = s.seal(b"v:aa", b"alice").unwrap();
        assert_eq!(s.open(b"v:aa", &sealed).as_deref(), Some(&b"alice"[..]));
        // Another Redis key (an entry copied elsewhere), another HMAC key, any changed byte.
        assert_eq!(s.open(b"v:bb", &sealed), None);
        assert_eq!(sealer(b"another key").open(b"v:aa", &sealed), None);
        for i in 0..sealed.len() {
            let mut edited = sealed.clone();
            edited[i] ^= 1;
            assert_eq!(s.open(b"v:aa", &edited), None, "byte {i}");
        }
        assert_eq!(s.open(b"v:aa", &sealed[..sealed.len() - 1]), None);
        assert_eq!(s.open(b"v:aa", b""), None);
        assert_eq!(s.open(b"v:aa", b"{\"s\":\"x\"}"), None);
    }

    #[test]
    fn every_write_has_a_fresh_nonce_and_hides_the_plaintext() {
        let s = sealer(b"k");
        let seal = || s.seal(b"v", b"alice alice").unwrap();
        let (a, b) = (seal(), seal());
        assert_ne!(a, b);
        assert!(!a.windows(5).any(|w| w == b"alice"));
    }
}
