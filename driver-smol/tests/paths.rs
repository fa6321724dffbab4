//! Echo and a checksummed 64 MiB transfer each way at once, over four paths: straight to the
//! listener, through tinyproxy, through squid, and through an nginx reverse proxy.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use holdwire_smol::{ClientOptions, Listener, ServerConfig, Stream};
use smol::channel::Receiver;
use smol::io::{AsyncReadExt as _, AsyncWriteExt as _};

const BULK: u64 = 64 << 20;

type Report = Receiver<std::io::Result<(Digest, Digest)>>;

/// Serves every accepted session: the first byte says what to do (`e`cho or `b`ulk). Bulk
/// results go to the returned channel, for the test to check.
fn serve(listener: Listener) -> (smol::Task<()>, Report) {
    let (tx, rx) = smol::channel::bounded(4);
    let task = smol::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            smol::spawn(async move {
                let mut mode = [0u8; 1];
                if (&stream).read_exact(&mut mode).await.is_err() {
                    return;
                }
                match &mode {
                    b"e" => {
                        let _ = echo(stream).await;
                    }
                    _ => {
                        let _ = tx.send(exchange(stream, 2, BULK).await).await;
                    }
                }
            })
            .detach();
        }
    });
    (task, rx)
}

fn check_path(name: &str, options: ClientOptions, report: Report) {
    run(Duration::from_secs(60), async {
        let start = Instant::now();
        // Echo.
        let mut stream = Stream::connect(options.clone()).await.expect("connect");
        assert!(!stream.is_direct());
        let message = b"ehello through holdwire";
        stream.write_all(message).await.unwrap();
        stream.close().await.unwrap();
        let mut back = Vec::new();
        stream.read_to_end(&mut back).await.unwrap();
        assert_eq!(&back[..], &message[1..], "{name}: echo");
        eprintln!("{name}: echo in {:?}", start.elapsed());

        // Bulk, both ways at once.
        let start = Instant::now();
        let mut stream = Stream::connect(options).await.expect("connect");
        stream.write_all(b"b").await.unwrap();
        let (sent, received) = exchange(stream, 1, BULK).await.expect("client side");
        assert_eq!(sent, expected_digest(1, BULK));
        assert_eq!(
            received,
            expected_digest(2, BULK),
            "{name}: client received"
        );
        let (server_sent, server_received) = report.recv().await.unwrap().expect("server side");
        assert_eq!(server_sent, expected_digest(2, BULK));
        assert_eq!(
            server_received,
            expected_digest(1, BULK),
            "{name}: server received"
        );
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "{name}: 64 MiB each way in {secs:.2} s ({:.1} MB/s each way)",
            BULK as f64 / secs / 1e6
        );
    });
}

fn local_listener() -> (Listener, SocketAddr) {
    smol::block_on(async {
        let l = listener(ServerConfig::default()).await;
        let addr = l.local_addr().unwrap();
        (l, addr)
    })
}

#[test]
fn direct_http() {
    let (l, addr) = local_listener();
    let (_server, report) = serve(l);
    check_path("direct", options(addr, None), report);
}

#[test]
fn through_tinyproxy() {
    let Some((_proxy, proxy)) = tinyproxy() else {
        return;
    };
    let (l, addr) = local_listener();
    let (_server, report) = serve(l);
    check_path("tinyproxy", options(addr, Some(proxy)), report);
}

#[test]
fn through_squid() {
    let Some((_proxy, proxy)) = squid() else {
        return;
    };
    let (l, addr) = local_listener();
    let (_server, report) = serve(l);
    check_path("squid", options(addr, Some(proxy)), report);
}

#[test]
fn through_nginx_reverse_proxy() {
    let (l, addr) = local_listener();
    let Some((_nginx, front)) = nginx(addr) else {
        return;
    };
    let (_server, report) = serve(l);
    check_path("nginx", options(front, None), report);
}

/// The proxy comes from the environment (as curl reads it) and needs basic auth.
#[test]
fn proxy_from_env_with_basic_auth() {
    let Some((_proxy, proxy)) = tinyproxy_with("BasicAuth holdwire s3cret") else {
        return;
    };
    let (l, addr) = local_listener();
    let (_server, _report) = serve(l);
    let server_url = format!("http://{addr}/");
    let env = |proxy_url: String| {
        move |k: &str| match k {
            "http_proxy" => Some(proxy_url.clone()),
            "no_proxy" => Some("example.invalid".to_string()),
            _ => None,
        }
    };
    run(Duration::from_secs(30), async {
        let good = ClientOptions::new(&server_url)
            .unwrap()
            .proxy_from_env(env(format!("http://holdwire:s3cret@{proxy}")))
            .unwrap();
        assert!(good.proxy.is_some(), "proxy taken from the environment");
        let mut stream = Stream::connect(good)
            .await
            .expect("connect with credentials");
        stream.write_all(b"eauth").await.unwrap();
        stream.close().await.unwrap();
        let mut back = Vec::new();
        stream.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"auth");

        let mut bad = ClientOptions::new(&server_url)
            .unwrap()
            .proxy_from_env(env(format!("http://holdwire:wrong@{proxy}")))
            .unwrap();
        bad.protocol.max_failures = 3;
        let err = Stream::connect(bad).await.expect_err("wrong password");
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    });
}
