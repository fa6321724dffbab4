//! Echo and a checksummed 64 MiB transfer each way at once, over the four paths: direct
//! HTTP, through tinyproxy, through squid, and through an nginx reverse proxy in front of the
//! listener. Each test prints its throughput.

mod common;

use std::time::Instant;

use common::{bulk_echo, heavy, ping_pong, serve_echo, Daemon};
use holdwire_std::{ClientOptions, Listener, ServerConfig, Stream};

/// Bytes each way in the bulk transfer (`HOLDWIRE_BULK_MIB` overrides, for measurements).
fn bulk_len() -> u64 {
    let mib = std::env::var("HOLDWIRE_BULK_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(64);
    mib << 20
}

fn listener() -> Listener {
    let config = ServerConfig {
        path_prefix: "/hw".into(),
        ..ServerConfig::default()
    };
    Listener::bind("127.0.0.1:0", config).expect("bind")
}

/// Connects with `options`, runs the echo and the bulk transfer, prints the figures.
fn exercise(path: &str, options: ClientOptions, proxy: Option<&Daemon>) {
    let _serial = heavy();
    let start = Instant::now();
    let stream = Stream::connect(options).unwrap_or_else(|e| {
        panic!(
            "{path}: connect: {e}\n{}",
            proxy.map(Daemon::log_tail).unwrap_or_default()
        )
    });
    assert!(!stream.is_direct());
    let rtt = ping_pong(&stream, 20).unwrap_or_else(|e| panic!("{path}: echo: {e}"));
    let len = bulk_len();
    let probe = stream.try_clone().unwrap();
    let t = bulk_echo(stream, len, 0x5eed_0000 ^ len).unwrap_or_else(|e| {
        panic!(
            "{path}: bulk: {e}\n{}",
            proxy.map(Daemon::log_tail).unwrap_or_default()
        )
    });
    let stats = probe.stats().unwrap();
    drop(probe);
    assert_eq!(t.checksum, common::pattern_checksum(0x5eed_0000 ^ len, len));
    println!(
        "{path}: echo round trip {rtt:?}; {} MiB each way at once in {:.2?} = {:.1} MB/s each way \
         (checksum {:016x}); exchanges {}, failed {}, messages resent {}/{}; test {:.2?}",
        len >> 20,
        t.elapsed,
        t.mb_per_s(),
        t.checksum,
        stats.exchanges,
        stats.failed_exchanges,
        stats.messages_resent,
        stats.messages_sent,
        start.elapsed()
    );
}

#[test]
fn direct_http() {
    let l = listener();
    let url = format!("http://{}/hw", l.local_addr().unwrap());
    serve_echo(l);
    exercise("direct", ClientOptions::new(&url).unwrap(), None);
}

#[test]
fn through_tinyproxy() {
    let Some(proxy) = common::tinyproxy(None) else {
        return;
    };
    let l = listener();
    let url = format!("http://{}/hw", l.local_addr().unwrap());
    serve_echo(l);
    let options = ClientOptions::new(&url)
        .unwrap()
        .proxy(&proxy.url())
        .unwrap();
    exercise("tinyproxy", options, Some(&proxy));
}

#[test]
fn through_tinyproxy_fresh_connection_per_request() {
    let Some(proxy) = common::tinyproxy(None) else {
        return;
    };
    let l = listener();
    let url = format!("http://{}/hw", l.local_addr().unwrap());
    serve_echo(l);
    let mut options = ClientOptions::new(&url)
        .unwrap()
        .proxy(&proxy.url())
        .unwrap();
    options.close_each_request = true;
    exercise("tinyproxy, close_each_request", options, Some(&proxy));
}

#[test]
fn through_tinyproxy_with_basic_auth() {
    let Some(proxy) = common::tinyproxy(Some(("holdwire", "s3cret"))) else {
        return;
    };
    let l = listener();
    let url = format!("http://{}/hw", l.local_addr().unwrap());
    serve_echo(l);
    let with = |userinfo: &str| {
        let proxy_url = format!("http://{userinfo}@{}", proxy.addr);
        let mut options = ClientOptions::new(&url).unwrap().proxy(&proxy_url).unwrap();
        options.protocol.max_failures = 3;
        Stream::connect(options)
    };
    let err = with("holdwire:wrong").expect_err("wrong password must be refused");
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    let stream = with("holdwire:s3cret").unwrap_or_else(|e| panic!("{e}\n{}", proxy.log_tail()));
    ping_pong(&stream, 5).unwrap();
    stream.close().unwrap();
}

#[test]
fn through_squid() {
    let Some(proxy) = common::squid() else {
        return;
    };
    let l = listener();
    let url = format!("http://{}/hw", l.local_addr().unwrap());
    serve_echo(l);
    let options = ClientOptions::new(&url)
        .unwrap()
        .proxy(&proxy.url())
        .unwrap();
    exercise("squid", options, Some(&proxy));
}

#[test]
fn through_nginx_reverse_proxy() {
    let l = listener();
    let Some(proxy) = common::nginx_reverse(l.local_addr().unwrap()) else {
        return;
    };
    serve_echo(l);
    let url = format!("http://{}/hw", proxy.addr);
    exercise("nginx", ClientOptions::new(&url).unwrap(), Some(&proxy));
}

#[test]
fn proxy_from_environment_variables() {
    let Some(proxy) = common::tinyproxy(None) else {
        return;
    };
    let l = listener();
    let url = format!("http://{}/hw", l.local_addr().unwrap());
    serve_echo(l);
    // The environment is read through the closure: no process-wide set_var in tests.
    let env = |k: &str| (k == "http_proxy").then(|| proxy.url());
    let options = ClientOptions::new(&url)
        .unwrap()
        .proxy_from_env(env)
        .unwrap();
    let stream = Stream::connect(options).unwrap();
    assert_eq!(
        stream.peer().unwrap(),
        holdwire_std::Peer::HttpServer {
            url: url.clone(),
            proxy: Some(proxy.url())
        }
    );
    assert_eq!(stream.peer_addr().unwrap(), proxy.addr);
    ping_pong(&stream, 5).unwrap();
    stream.close().unwrap();
    // NO_PROXY covering the server: straight to it.
    let env = |k: &str| match k {
        "http_proxy" => Some(proxy.url()),
        "no_proxy" => Some("127.0.0.1".into()),
        _ => None,
    };
    let options = ClientOptions::new(&url)
        .unwrap()
        .proxy_from_env(env)
        .unwrap();
    assert!(options.proxy.is_none());
}
