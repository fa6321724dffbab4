//! Fault injection end to end with holdwire-std's `Stream` and `Listener`, through
//! `holdwire_testkit::FaultRelay` (drops, cuts, delays, stalls, flipped bytes, proxy error pages
//! and replays, all mixed): 64 MiB each way at once through an echo service, every byte checked
//! in order; and GNU httptunnel's leak (an aborted busy session's bytes must not reach the next
//! session); each fault kind alone (64 MiB each way per kind); and a path cut off for good.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use holdwire_std::{ClientOptions, Listener, ServerConfig, Stream};
use holdwire_testkit::{Fault, FaultRelay, Plan};

const LEN: u64 = 64 << 20;

fn server_config() -> ServerConfig {
    ServerConfig {
        max_wait: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(30),
        ..ServerConfig::default()
    }
}

/// Short retransmission timeouts, so that lost exchanges are retried quickly.
fn client_options(relay: &FaultRelay) -> ClientOptions {
    let mut o = ClientOptions::new(&format!("http://{}/", relay.addr())).unwrap();
    o.protocol.initial_rto = Duration::from_millis(300);
    o.protocol.max_rto = Duration::from_secs(2);
    o.protocol.max_failures = 40;
    o.protocol.silence_timeout = Duration::from_secs(30);
    o.protocol.open_timeout = Duration::from_secs(30);
    o
}

/// Runs `f` on a thread and fails the test if it takes longer than `limit`.
fn bounded<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let worker = thread::spawn(f);
    let until = Instant::now() + limit;
    while !worker.is_finished() {
        assert!(Instant::now() < until, "exceeded its {limit:?} budget");
        thread::sleep(Duration::from_millis(20));
    }
    worker.join().expect("the worker panicked")
}

#[test]
fn all_faults_mixed_64_mib_each_way() {
    let _heavy = heavy();
    let listener = Listener::bind("127.0.0.1:0", server_config()).unwrap();
    let relay = FaultRelay::start(
        listener.local_addr().unwrap(),
        Plan::mixed(0x57D, 0.03).rotating(8),
    )
    .expect("relay");
    let _echo = serve_echo(listener);
    let options = client_options(&relay);
    let transfer = bounded(Duration::from_secs(180), move || {
        let stream = Stream::connect(options).map_err(|e| e.to_string())?;
        bulk_echo(stream, LEN, 0xB0B)
    });
    eprintln!(
        "mixed (holdwire-std): {transfer:?}; relay: {}",
        relay.summary()
    );
    let transfer = transfer.expect("64 MiB each way through the faults");
    assert_eq!(transfer.checksum, pattern_checksum(0xB0B, LEN));
    for f in Fault::ALL {
        assert!(
            relay.count(f) > 0,
            "never applied {f:?}: {}",
            relay.summary()
        );
    }
}

/// Each fault kind alone, 64 MiB each way per kind.
#[test]
fn each_fault_kind_alone() {
    const KIND_LEN: u64 = LEN;
    let _heavy = heavy();
    let listener = Listener::bind("127.0.0.1:0", server_config()).unwrap();
    let upstream = listener.local_addr().unwrap();
    let _echo = serve_echo(listener);
    for (i, fault) in Fault::ALL.into_iter().enumerate() {
        let rate = if fault == Fault::Delay { 0.3 } else { 0.05 };
        let plan = Plan::new(0xCAFE + i as u64).with(fault, rate).rotating(8);
        let relay = FaultRelay::start(upstream, plan).expect("relay");
        let options = client_options(&relay);
        let seed = 0x100 + i as u64;
        let transfer = bounded(Duration::from_secs(120), move || {
            let stream = Stream::connect(options).map_err(|e| e.to_string())?;
            bulk_echo(stream, KIND_LEN, seed)
        });
        eprintln!(
            "{fault:?} (holdwire-std): {transfer:?}; relay: {}",
            relay.summary()
        );
        let transfer = transfer.unwrap_or_else(|e| panic!("{fault:?}: {e}"));
        assert_eq!(
            transfer.checksum,
            pattern_checksum(seed, KIND_LEN),
            "{fault:?}"
        );
        assert!(
            relay.count(fault) > 0,
            "{fault:?} never applied: {}",
            relay.summary()
        );
    }
}

/// The path is cut off for good in the middle of a transfer (every request is cut from then
/// on): both ends fail with a timeout instead of hanging or reporting a clean end.
#[test]
fn cut_off_mid_transfer_fails_on_both_ends() {
    let _heavy = heavy();
    let config = ServerConfig {
        max_wait: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(6),
        ..ServerConfig::default()
    };
    let listener = Listener::bind("127.0.0.1:0", config).unwrap();
    let relay = FaultRelay::start(listener.local_addr().unwrap(), Plan::new(9)).expect("relay");
    let server = thread::spawn(move || -> std::io::Result<u64> {
        let (stream, _) = listener.accept()?;
        echo(stream)
    });
    let mut options = client_options(&relay);
    options.protocol.silence_timeout = Duration::from_secs(5);
    let client = thread::spawn(move || {
        let stream = Stream::connect(options).map_err(|e| e.to_string())?;
        bulk_echo(stream, LEN, 0x3333)
    });
    let until = Instant::now() + Duration::from_secs(30);
    while relay.exchanges() < 20 {
        assert!(Instant::now() < until, "no exchanges: {}", relay.summary());
        thread::sleep(Duration::from_millis(5));
    }
    relay.set_plan(Plan::new(9).with(Fault::CutRequest, 1.0));
    let cut = Instant::now();
    let client = bounded(Duration::from_secs(30), move || client.join().unwrap());
    let client_after = cut.elapsed();
    let server = bounded(Duration::from_secs(30), move || server.join().unwrap());
    let server_after = cut.elapsed();
    eprintln!(
        "cut off (holdwire-std): client {client:?} after {client_after:?}, server {server:?} \
         after {server_after:?}; relay: {}",
        relay.summary()
    );
    let client_err = client.expect_err("the client cannot have received everything");
    assert!(client_err.contains("TimedOut"), "client: {client_err}");
    let server_err = server.expect_err("the server cannot have received everything");
    assert_eq!(
        server_err.kind(),
        std::io::ErrorKind::TimedOut,
        "server: {server_err}"
    );
    assert!(relay.count(Fault::CutRequest) > 0);
}

/// GNU httptunnel's leak: a busy session (bytes flowing both ways) is aborted and a new one
/// opened at once through a relay that replays old requests; the new session's echo carries
/// exactly its own pattern, none of the old session's bytes.
#[test]
fn aborted_session_leaks_nothing_into_the_next() {
    let _heavy = heavy();
    let listener = Listener::bind("127.0.0.1:0", server_config()).unwrap();
    let relay = FaultRelay::start(
        listener.local_addr().unwrap(),
        Plan::new(0x1EA7).with(Fault::Replay, 0.2),
    )
    .expect("relay");
    let _echo = serve_echo(listener);

    let old = Stream::connect(client_options(&relay)).expect("connect");
    old.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut writer = old.try_clone().unwrap();
    // The old session: an endless stream of 0xEE bytes, echoed back.
    let pump = thread::spawn(move || -> Result<u64, String> {
        let chunk = vec![0xEEu8; 64 * 1024];
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            writer.write_all(&chunk).map_err(|e| e.to_string())?;
        }
        Ok(0)
    });
    let mut reader = old.try_clone().unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut echoed = 0u64;
    while echoed < 4 << 20 {
        let n = reader.read(&mut buf).expect("the old session echoes");
        assert!(n > 0, "early EOF");
        assert!(buf[..n].iter().all(|&b| b == 0xEE));
        echoed += n as u64;
    }
    old.abort().expect("abort");
    let new_len = 8 << 20;
    let options = client_options(&relay);
    let transfer = bounded(Duration::from_secs(120), move || {
        let stream = Stream::connect(options).map_err(|e| e.to_string())?;
        bulk_echo(stream, new_len, 0x2222)
    })
    .expect("the new session's echo is exactly its own pattern");
    assert_eq!(transfer.checksum, pattern_checksum(0x2222, new_len));
    let pumped = bounded(Duration::from_secs(60), move || pump.join().unwrap());
    assert!(
        pumped.is_err(),
        "writing to the aborted session kept working"
    );
    // Whatever the aborted session still had buffered, it ends in an error, not a clean EOF.
    let mut ended = false;
    for _ in 0..10_000 {
        match reader.read(&mut buf) {
            Ok(0) => panic!("the aborted session ended with a clean EOF"),
            Ok(_) => {}
            Err(_) => {
                ended = true;
                break;
            }
        }
    }
    assert!(ended, "the aborted session kept delivering");
    let _ = old.shutdown(Shutdown::Both);
    eprintln!("leak test (holdwire-std): relay: {}", relay.summary());
    assert!(relay.count(Fault::Replay) > 0);
}
