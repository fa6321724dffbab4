//! Per-bundle authentication from a shared token (optional).
//!
//! With a token configured on both ends, every bundle carries a 16-byte tag: HMAC-SHA256,
//! truncated, over every byte of the bundle before the tag (so it covers the session id, the
//! request id, acknowledgements and all frames). Keys are per session and per direction:
//! - `open = HMAC(token, "holdwire-v1 open" | session id | client nonce)` tags the client's opening
//!   requests; it proves the client knows the token, but a replay of them opens nothing useful:
//!   they carry no data and the server reports the session only once it is proven fresh;
//! - `session = HMAC(token, "holdwire-v1 session" | session id | client nonce | server nonce)`,
//!   then `c2s = HMAC(session, "c2s")` and `s2c = HMAC(session, "s2c")` tag everything after.
//!
//! The token never crosses the wire. Whoever learns a session id (from a proxy log) cannot forge a
//! tag, and a replayed request is recognised by its request id and changes nothing.

use alloc::vec::Vec;
use core::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::wire::{SessionId, NONCE_LEN};

/// Bytes of tag carried by each authenticated bundle.
pub const TAG_LEN: u8 = 16;

type HmacSha256 = Hmac<Sha256>;

/// A shared secret. Its `Debug` output never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Vec<u8>);

impl Token {
    /// A token from its bytes (e.g. a passphrase's UTF-8, trimmed of a trailing newline).
    pub fn new(secret: &[u8]) -> Self {
        Token(secret.to_vec())
    }

    /// Whether the token is empty (which authenticates nothing and should be refused).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// A 256-bit key for one purpose.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Key([u8; 32]);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

impl Key {
    /// Key for the client's opening requests.
    pub(crate) fn open(token: &Token, session: SessionId, client_nonce: &[u8; NONCE_LEN]) -> Key {
        Key(hmac(
            &token.0,
            &[b"holdwire-v1 open", &session.0, client_nonce],
        ))
    }

    /// The token itself as a key (for one-shot proofs such as the direct handshake's).
    pub(crate) fn from_token(token: &Token) -> Key {
        Key(hmac(&token.0, &[b"holdwire-v1 proof key"]))
    }

    /// Fills `out` (up to 32 bytes) with the tag of `data`.
    pub(crate) fn sign(&self, data: &[u8], out: &mut [u8]) {
        let full = hmac(&self.0, &[data]);
        let n = out.len().min(full.len());
        out[..n].copy_from_slice(&full[..n]);
    }

    /// Checks a (truncated) tag in constant time.
    pub(crate) fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        if tag.len() != usize::from(TAG_LEN) {
            return false;
        }
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(data);
        mac.verify_truncated_left(tag).is_ok()
    }
}

/// The two directional keys of an established session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SessionKeys {
    /// Tags client-to-server bundles.
    pub(crate) c2s: Key,
    /// Tags server-to-client bundles.
    pub(crate) s2c: Key,
}

impl SessionKeys {
    pub(crate) fn derive(
        token: &Token,
        session: SessionId,
        client_nonce: &[u8; NONCE_LEN],
        server_nonce: &[u8; NONCE_LEN],
    ) -> SessionKeys {
        let master = hmac(
            &token.0,
            &[
                b"holdwire-v1 session",
                &session.0,
                client_nonce,
                server_nonce,
            ],
        );
        SessionKeys {
            c2s: Key(hmac(&master, &[b"c2s"])),
            s2c: Key(hmac(&master, &[b"s2c"])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_by_every_input_and_direction() {
        let t = Token::new(b"secret");
        let s = SessionId([1; 16]);
        let k = SessionKeys::derive(&t, s, &[2; 16], &[3; 16]);
        assert_ne!(k.c2s, k.s2c);
        assert_ne!(
            k,
            SessionKeys::derive(&Token::new(b"secret2"), s, &[2; 16], &[3; 16])
        );
        assert_ne!(
            k,
            SessionKeys::derive(&t, SessionId([9; 16]), &[2; 16], &[3; 16])
        );
        assert_ne!(k, SessionKeys::derive(&t, s, &[4; 16], &[3; 16]));
        assert_ne!(k, SessionKeys::derive(&t, s, &[2; 16], &[4; 16]));
        assert_ne!(Key::open(&t, s, &[2; 16]), k.c2s);
    }

    #[test]
    fn sign_and_verify() {
        let k = Key::open(&Token::new(b"x"), SessionId([1; 16]), &[0; 16]);
        let mut tag = [0u8; TAG_LEN as usize];
        k.sign(b"bundle bytes", &mut tag);
        assert!(k.verify(b"bundle bytes", &tag));
        assert!(!k.verify(b"bundle bytez", &tag));
        tag[0] ^= 1;
        assert!(!k.verify(b"bundle bytes", &tag));
        assert!(!k.verify(b"bundle bytes", &tag[..8]));
        assert_eq!(format!("{:?}", Token::new(b"pw")), "Token(<redacted>)");
    }
}
