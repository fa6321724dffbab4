//! The handshake of the direct-TCP path (tried before HTTP when the client has a direct address).
//!
//! Raw TCP carries the byte stream itself, but it first proves that the far end is a holdwire
//! server (a middlebox that accepts every connection, as some networks have, is not), and with a
//! token, that both ends know it, so that the direct port cannot bypass authentication:
//!
//! 1. client: `"HWD1"`, flags (bit 0: authenticated), a 16-byte client nonce (21 bytes);
//! 2. server: `"HWD1"`, status (0 accepted, 1 token required, 2 token unexpected, 3 refused), a
//!    16-byte server nonce, a 16-byte proof (`HMAC(token, "holdwire-v1 direct server" | client
//!    nonce | server nonce)`, zeros without a token) (37 bytes);
//! 3. client, with a token: its proof, `HMAC(token, "holdwire-v1 direct client" | client nonce |
//!    server nonce)` (16 bytes). The server closes the connection if it does not verify.
//!
//! Then both directions carry the application's bytes unchanged. The functions here are pure;
//! drivers do the reading and writing, with their own timeout.

use core::fmt;
use core::time::Duration;

use crate::auth::{Key, Token};
use crate::wire::NONCE_LEN;

/// The handshake's magic, and its version.
pub const MAGIC: &[u8; 4] = b"HWD1";
/// Length of the client's hello.
pub const CLIENT_HELLO_LEN: usize = 4 + 1 + NONCE_LEN;
/// Length of the server's hello.
pub const SERVER_HELLO_LEN: usize = 4 + 1 + NONCE_LEN + PROOF_LEN;
/// Length of a proof.
pub const PROOF_LEN: usize = 16;
/// How long a server gives an accepted direct client to complete its side of the handshake.
pub const ACCEPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a direct handshake failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirectError {
    /// The peer is not a holdwire endpoint (wrong magic or length).
    NotHoldwire,
    /// The server requires a token and the client has none.
    TokenRequired,
    /// The client sent a token proof but the server has no token.
    TokenUnexpected,
    /// The server refused the connection.
    Refused,
    /// A proof did not verify: the tokens differ.
    BadProof,
}

impl fmt::Display for DirectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DirectError::NotHoldwire => "the direct peer is not a holdwire server",
            DirectError::TokenRequired => "the server requires a token",
            DirectError::TokenUnexpected => "the server has no token",
            DirectError::Refused => "the server refused the direct connection",
            DirectError::BadProof => "token mismatch on the direct path",
        })
    }
}

impl core::error::Error for DirectError {}

const STATUS_OK: u8 = 0;
const STATUS_TOKEN_REQUIRED: u8 = 1;
const STATUS_TOKEN_UNEXPECTED: u8 = 2;
const STATUS_REFUSED: u8 = 3;

fn proof(
    token: &Token,
    label: &[u8],
    cn: &[u8; NONCE_LEN],
    sn: &[u8; NONCE_LEN],
) -> [u8; PROOF_LEN] {
    let mut data = [0u8; 32 + 2 * NONCE_LEN];
    let n = label.len().min(32);
    data[..n].copy_from_slice(&label[..n]);
    data[32..32 + NONCE_LEN].copy_from_slice(cn);
    data[32 + NONCE_LEN..].copy_from_slice(sn);
    let mut out = [0u8; PROOF_LEN];
    Key::from_token(token).sign(&data, &mut out);
    out
}

/// The client's hello.
pub fn client_hello(client_nonce: &[u8; NONCE_LEN], authenticated: bool) -> [u8; CLIENT_HELLO_LEN] {
    let mut out = [0u8; CLIENT_HELLO_LEN];
    out[..4].copy_from_slice(MAGIC);
    out[4] = u8::from(authenticated);
    out[5..].copy_from_slice(client_nonce);
    out
}

/// The server's answer to a client hello: the bytes to send, and whether the connection goes
/// on (`Ok`) or is to be closed after sending them (`Err`).
pub fn server_hello(
    token: Option<&Token>,
    hello: &[u8],
    server_nonce: &[u8; NONCE_LEN],
    accept: bool,
) -> (Result<[u8; NONCE_LEN], DirectError>, [u8; SERVER_HELLO_LEN]) {
    let mut out = [0u8; SERVER_HELLO_LEN];
    out[..4].copy_from_slice(MAGIC);
    out[5..5 + NONCE_LEN].copy_from_slice(server_nonce);
    if hello.len() != CLIENT_HELLO_LEN || &hello[..4] != MAGIC || hello[4] > 1 {
        out[4] = STATUS_REFUSED;
        return (Err(DirectError::NotHoldwire), out);
    }
    let mut cn = [0u8; NONCE_LEN];
    cn.copy_from_slice(&hello[5..]);
    let client_auth = hello[4] == 1;
    let (status, result) = match (token, client_auth) {
        _ if !accept => (STATUS_REFUSED, Err(DirectError::Refused)),
        (Some(_), false) => (STATUS_TOKEN_REQUIRED, Err(DirectError::TokenRequired)),
        (None, true) => (STATUS_TOKEN_UNEXPECTED, Err(DirectError::TokenUnexpected)),
        _ => (STATUS_OK, Ok(cn)),
    };
    out[4] = status;
    if let (Some(token), Ok(_)) = (token, &result) {
        out[5 + NONCE_LEN..].copy_from_slice(&proof(
            token,
            b"holdwire-v1 direct server",
            &cn,
            server_nonce,
        ));
    }
    (result, out)
}

/// Checks the server's hello. Returns the server nonce; with a token, the caller then sends
/// [`client_proof`].
pub fn check_server_hello(
    token: Option<&Token>,
    client_nonce: &[u8; NONCE_LEN],
    hello: &[u8],
) -> Result<[u8; NONCE_LEN], DirectError> {
    if hello.len() != SERVER_HELLO_LEN || &hello[..4] != MAGIC {
        return Err(DirectError::NotHoldwire);
    }
    match hello[4] {
        STATUS_OK => {}
        STATUS_TOKEN_REQUIRED => return Err(DirectError::TokenRequired),
        STATUS_TOKEN_UNEXPECTED => return Err(DirectError::TokenUnexpected),
        STATUS_REFUSED => return Err(DirectError::Refused),
        _ => return Err(DirectError::NotHoldwire),
    }
    let mut sn = [0u8; NONCE_LEN];
    sn.copy_from_slice(&hello[5..5 + NONCE_LEN]);
    if let Some(token) = token {
        let expected = proof(token, b"holdwire-v1 direct server", client_nonce, &sn);
        if !constant_time_eq(&expected, &hello[5 + NONCE_LEN..]) {
            return Err(DirectError::BadProof);
        }
    }
    Ok(sn)
}

/// The client's proof (sent after a verified server hello, with a token).
pub fn client_proof(
    token: &Token,
    client_nonce: &[u8; NONCE_LEN],
    server_nonce: &[u8; NONCE_LEN],
) -> [u8; PROOF_LEN] {
    proof(
        token,
        b"holdwire-v1 direct client",
        client_nonce,
        server_nonce,
    )
}

/// Checks the client's proof.
pub fn check_client_proof(
    token: &Token,
    client_nonce: &[u8; NONCE_LEN],
    server_nonce: &[u8; NONCE_LEN],
    proof_bytes: &[u8],
) -> Result<(), DirectError> {
    let expected = client_proof(token, client_nonce, server_nonce);
    if constant_time_eq(&expected, proof_bytes) {
        Ok(())
    } else {
        Err(DirectError::BadProof)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authenticated_handshake_and_failures() {
        let t = Token::new(b"tok");
        let cn = [1; NONCE_LEN];
        let sn = [2; NONCE_LEN];
        let hello = client_hello(&cn, true);
        let (ok, reply) = server_hello(Some(&t), &hello, &sn, true);
        assert_eq!(ok, Ok(cn));
        assert_eq!(check_server_hello(Some(&t), &cn, &reply), Ok(sn));
        let p = client_proof(&t, &cn, &sn);
        assert_eq!(check_client_proof(&t, &cn, &sn, &p), Ok(()));
        let wrong = Token::new(b"other");
        assert_eq!(
            check_server_hello(Some(&wrong), &cn, &reply),
            Err(DirectError::BadProof)
        );
        assert_eq!(
            check_client_proof(&t, &cn, &sn, &client_proof(&wrong, &cn, &sn)),
            Err(DirectError::BadProof)
        );
        // Token on one side only.
        let (r, reply) = server_hello(Some(&t), &client_hello(&cn, false), &sn, true);
        assert_eq!(r, Err(DirectError::TokenRequired));
        assert_eq!(
            check_server_hello(None, &cn, &reply),
            Err(DirectError::TokenRequired)
        );
        let (r, _) = server_hello(None, &hello, &sn, true);
        assert_eq!(r, Err(DirectError::TokenUnexpected));
        // Not holdwire on either side.
        assert_eq!(
            check_server_hello(None, &cn, b"HTTP/1.1 404 Not Found\r\n\r\n12345678901"),
            Err(DirectError::NotHoldwire)
        );
        assert_eq!(
            server_hello(None, b"GET / HTTP/1.1\r\n\r\n", &sn, true).0,
            Err(DirectError::NotHoldwire)
        );
        // Refused.
        let (r, reply) = server_hello(None, &client_hello(&cn, false), &sn, false);
        assert_eq!(r, Err(DirectError::Refused));
        assert_eq!(
            check_server_hello(None, &cn, &reply),
            Err(DirectError::Refused)
        );
        // Unauthenticated success.
        let (r, reply) = server_hello(None, &client_hello(&cn, false), &sn, true);
        assert_eq!(r, Ok(cn));
        assert_eq!(check_server_hello(None, &cn, &reply), Ok(sn));
    }
}
