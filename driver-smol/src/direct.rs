//! The direct-TCP path's handshake (`holdwire_proto::direct`), on both sides: it proves the far
//! end is a holdwire endpoint and, with a token, that both ends know it.

use std::io;
use std::time::Duration;

use holdwire_proto::direct::{self, DirectError};
use holdwire_proto::Token;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::net::TcpStream;
use smol::Timer;

use crate::driver;

fn error(e: DirectError) -> io::Error {
    let kind = match e {
        DirectError::NotHoldwire | DirectError::Refused => io::ErrorKind::InvalidData,
        _ => io::ErrorKind::PermissionDenied,
    };
    io::Error::new(kind, e)
}

/// Runs `work` within `timeout`.
pub(crate) async fn within<T>(
    timeout: Duration,
    work: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    let expired = async {
        Timer::after(timeout).await;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "direct handshake timed out",
        ))
    };
    smol::future::or(work, expired).await
}

/// The client's side. An end that is not holdwire is `InvalidData` (fall back to HTTP); a token
/// mismatch is `PermissionDenied`.
pub(crate) async fn client(tcp: &mut TcpStream, token: Option<&Token>) -> io::Result<()> {
    let mut nonce = [0u8; 16];
    driver::random(&mut nonce);
    tcp.write_all(&direct::client_hello(&nonce, token.is_some()))
        .await?;
    let mut hello = [0u8; direct::SERVER_HELLO_LEN];
    tcp.read_exact(&mut hello)
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => error(DirectError::NotHoldwire),
            _ => e,
        })?;
    let server_nonce = direct::check_server_hello(token, &nonce, &hello).map_err(error)?;
    if let Some(token) = token {
        tcp.write_all(&direct::client_proof(token, &nonce, &server_nonce))
            .await?;
    }
    Ok(())
}

/// The server's side: the connection may be handed to the application only if this succeeds.
pub(crate) async fn server(tcp: &mut TcpStream, token: Option<&Token>) -> io::Result<()> {
    let mut hello = [0u8; direct::CLIENT_HELLO_LEN];
    tcp.read_exact(&mut hello).await?;
    let mut server_nonce = [0u8; 16];
    driver::random(&mut server_nonce);
    let (verdict, reply) = direct::server_hello(token, &hello, &server_nonce, true);
    tcp.write_all(&reply).await?;
    let client_nonce = verdict.map_err(error)?;
    if let Some(token) = token {
        let mut proof = [0u8; direct::PROOF_LEN];
        tcp.read_exact(&mut proof).await?;
        direct::check_client_proof(token, &client_nonce, &server_nonce, &proof).map_err(error)?;
    }
    Ok(())
}
