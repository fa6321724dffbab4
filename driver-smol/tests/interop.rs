//! Interop between the drivers: a blocking (holdwire-std) client with an async (holdwire-smol)
//! server and the reverse, each with data both ways at once through tinyproxy, every byte
//! checked. Both drivers only drive holdwire-proto, so they must agree on everything.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::thread;
use std::time::Duration;

use common::Pattern;
use holdwire_smol::{ClientOptions, ServerConfig};

const LEN: usize = 16 << 20;

fn pattern(seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; LEN];
    Pattern::new(seed).fill(&mut v);
    v
}

fn proxied(server: std::net::SocketAddr, proxy: std::net::SocketAddr) -> ClientOptions {
    ClientOptions::new(&format!("http://{server}/"))
        .unwrap()
        .proxy(&format!("http://{proxy}"))
        .unwrap()
}

/// Sends `data` and receives the peer's bytes on a blocking stream, both at once.
fn std_exchange(stream: holdwire_std::Stream, data: Vec<u8>) -> Vec<u8> {
    let writer = stream.try_clone().unwrap();
    let send = thread::spawn(move || {
        let mut w = writer;
        w.write_all(&data).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::with_capacity(LEN);
    let mut r = stream;
    r.read_to_end(&mut got).unwrap();
    send.join().unwrap();
    got
}

/// The same on an async stream.
async fn smol_exchange(stream: holdwire_smol::Stream, data: Vec<u8>) -> Vec<u8> {
    use smol::io::{AsyncReadExt, AsyncWriteExt};
    let (mut r, mut w) = stream.split();
    let send = smol::spawn(async move {
        w.write_all(&data).await.unwrap();
        w.close().await.unwrap();
    });
    let mut got = Vec::with_capacity(LEN);
    r.read_to_end(&mut got).await.unwrap();
    send.await;
    got
}

#[test]
fn std_client_with_smol_server_through_tinyproxy() {
    let Some((_proxy, proxy_addr)) = common::tinyproxy() else {
        return;
    };
    common::run(Duration::from_secs(120), async move {
        let listener = common::listener(ServerConfig::default()).await;
        let server_addr = listener.local_addr().unwrap();
        let client = thread::spawn(move || {
            let stream = holdwire_std::Stream::connect(proxied(server_addr, proxy_addr)).unwrap();
            std_exchange(stream, pattern(1))
        });
        let (stream, _) = listener.accept().await.unwrap();
        let got_by_server = smol_exchange(stream, pattern(2)).await;
        let got_by_client = smol::unblock(move || client.join().unwrap()).await;
        assert!(
            got_by_server == pattern(1),
            "server received the client's bytes intact"
        );
        assert!(
            got_by_client == pattern(2),
            "client received the server's bytes intact"
        );
    });
}

#[test]
fn smol_client_with_std_server_through_tinyproxy() {
    let Some((_proxy, proxy_addr)) = common::tinyproxy() else {
        return;
    };
    let listener = holdwire_std::Listener::bind("127.0.0.1:0", ServerConfig::default()).unwrap();
    let server_addr = listener.local_addr().unwrap();
    let server = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        std_exchange(stream, pattern(4))
    });
    let got_by_client = common::run(Duration::from_secs(120), async move {
        let stream = holdwire_smol::connect(proxied(server_addr, proxy_addr))
            .await
            .unwrap();
        smol_exchange(stream, pattern(3)).await
    });
    let got_by_server = server.join().unwrap();
    assert!(
        got_by_server == pattern(3),
        "server received the client's bytes intact"
    );
    assert!(
        got_by_client == pattern(4),
        "client received the server's bytes intact"
    );
}
