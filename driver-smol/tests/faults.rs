//! Fault injection end to end: holdwire-smol's `Stream` and `Listener` through
//! `holdwire_testkit::FaultRelay`, which drops connections, cuts requests and responses,
//! delays and stalls, flips body bytes, answers with proxy error pages and replays old
//! requests. A checksummed transfer runs both ways at once under each fault kind alone and
//! under all of them mixed: every byte arrives exactly once and in order, or both ends fail
//! with an error; nothing hangs (each run has a deadline). Each run also asserts that the relay
//! really applied its fault.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use holdwire_smol::{ClientOptions, ServerConfig, Stream};
use holdwire_testkit::{Fault, FaultRelay, Plan};

/// Bytes each way in every transfer.
const LEN: u64 = 64 << 20;
/// Deadline of one run.
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// One transfer at a time: the machine's two cores are shared.
fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Short timeouts, so that the lost exchanges the relay causes are retried quickly; the silence
/// timeout stays far above the longest stall.
fn client_options(relay: &FaultRelay) -> ClientOptions {
    let mut o = options(relay.addr(), None);
    o.protocol.initial_rto = Duration::from_millis(300);
    o.protocol.max_rto = Duration::from_secs(2);
    o.protocol.max_failures = 40;
    o.protocol.silence_timeout = Duration::from_secs(30);
    o.protocol.open_timeout = Duration::from_secs(30);
    o
}

fn server_config() -> ServerConfig {
    ServerConfig {
        max_wait: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(30),
        ..ServerConfig::default()
    }
}

/// `len` bytes each way at once through a relay applying `plan`; panics unless both ends
/// received exactly what the other sent, and unless every fault in `expected` was applied at
/// least once. (The rates used here are ones the protocol must recover from; the path that
/// breaks for good is `cut_off_mid_transfer_fails_on_both_ends`.)
fn transfer(name: &str, plan: Plan, len: u64, expected: &[Fault]) {
    let _one_at_a_time = heavy();
    run(RUN_LIMIT, async {
        let listener = listener(server_config()).await;
        let relay = FaultRelay::start(listener.local_addr().unwrap(), plan).expect("relay");
        let server = smol::spawn(async move {
            let (stream, _) = listener.accept().await?;
            let result = exchange(stream, 2, len).await;
            // The listener drives the session: keep it until the session is done.
            drop(listener);
            result
        });
        let start = Instant::now();
        let client = async {
            let stream = Stream::connect(client_options(&relay)).await?;
            exchange(stream, 1, len).await
        }
        .await;
        let server = within(Duration::from_secs(60), server)
            .await
            .unwrap_or_else(|e| panic!("{name}: the server end hung after the client: {e}"));
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "{name}: {} MiB each way in {secs:.1} s; client {}, server {}; relay: {}",
            len >> 20,
            outcome(&client),
            outcome(&server),
            relay.summary()
        );
        match (&client, &server) {
            (Ok((c_sent, c_recv)), Ok((s_sent, s_recv))) => {
                assert_eq!(*c_sent, expected_digest(1, len), "{name}: client sent");
                assert_eq!(*s_sent, expected_digest(2, len), "{name}: server sent");
                assert_eq!(*c_recv, expected_digest(2, len), "{name}: client received");
                assert_eq!(*s_recv, expected_digest(1, len), "{name}: server received");
            }
            _ => panic!("{name}: client {client:?}, server {server:?}"),
        }
        for &f in expected {
            assert!(
                relay.count(f) > 0,
                "{name}: the relay never applied {f:?}: {}",
                relay.summary()
            );
        }
    });
}

fn outcome(r: &std::io::Result<(Digest, Digest)>) -> String {
    match r {
        Ok((_, received)) => format!("received {} bytes", received.len),
        Err(e) => format!("failed: {e}"),
    }
}

fn one_kind(fault: Fault, rate: f64) {
    let plan = Plan::new(0x5EED ^ fault as u64)
        .with(fault, rate)
        .rotating(8);
    transfer(&format!("{fault:?}"), plan, LEN, &[fault]);
}

#[test]
fn dropped_connections() {
    one_kind(Fault::Drop, 0.05);
}

#[test]
fn cut_requests() {
    one_kind(Fault::CutRequest, 0.05);
}

#[test]
fn cut_responses() {
    one_kind(Fault::CutResponse, 0.05);
}

#[test]
fn delays() {
    one_kind(Fault::Delay, 0.3);
}

#[test]
fn stalls() {
    one_kind(Fault::Stall, 0.05);
}

#[test]
fn flipped_request_bytes() {
    one_kind(Fault::FlipRequest, 0.05);
}

#[test]
fn flipped_response_bytes() {
    one_kind(Fault::FlipResponse, 0.08);
}

#[test]
fn proxy_error_pages() {
    one_kind(Fault::ErrorPage, 0.05);
}

#[test]
fn replayed_requests() {
    one_kind(Fault::Replay, 0.1);
}

/// Every fault kind at once, 64 MiB each way.
#[test]
fn all_faults_mixed() {
    transfer(
        "mixed",
        Plan::mixed(0xFA17, 0.03).rotating(8),
        LEN,
        &Fault::ALL,
    );
}

/// The path breaks for good mid-transfer (every request cut from then on): both ends fail
/// with an error within their timeouts, and neither delivered a wrong byte before that.
#[test]
fn cut_off_mid_transfer_fails_on_both_ends() {
    let _one_at_a_time = heavy();
    run(RUN_LIMIT, async {
        let config = ServerConfig {
            max_wait: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(6),
            ..ServerConfig::default()
        };
        let listener = listener(config).await;
        let relay = FaultRelay::start(listener.local_addr().unwrap(), Plan::new(9)).unwrap();
        let server = smol::spawn(async move {
            let (stream, _) = listener.accept().await?;
            let result = exchange(stream, 2, LEN).await;
            drop(listener);
            result
        });
        let mut o = client_options(&relay);
        o.protocol.silence_timeout = Duration::from_secs(5);
        let client = smol::spawn(async move {
            let stream = Stream::connect(o).await?;
            exchange(stream, 1, LEN).await
        });
        let until = Instant::now() + Duration::from_secs(30);
        while relay.exchanges() < 20 {
            assert!(Instant::now() < until, "no exchanges: {}", relay.summary());
            smol::Timer::after(Duration::from_millis(5)).await;
        }
        relay.set_plan(Plan::new(9).with(Fault::CutRequest, 1.0));
        let cut = Instant::now();
        let client = within(Duration::from_secs(30), client)
            .await
            .expect("the client end must not hang");
        let client_after = cut.elapsed();
        let server = within(Duration::from_secs(30), server)
            .await
            .expect("the server end must not hang");
        let server_after = cut.elapsed();
        eprintln!(
            "cut off: client {} after {client_after:?}, server {} after {server_after:?}; relay: {}",
            outcome(&client),
            outcome(&server),
            relay.summary()
        );
        let client_err = client.expect_err("the client cannot have received everything");
        let server_err = server.expect_err("the server cannot have received everything");
        assert_eq!(
            client_err.kind(),
            std::io::ErrorKind::TimedOut,
            "{client_err}"
        );
        assert!(relay.count(Fault::CutRequest) > 0);
        assert_eq!(
            server_err.kind(),
            std::io::ErrorKind::TimedOut,
            "{server_err}"
        );
    });
}

/// GNU httptunnel's leak: a busy session (bytes flowing both ways) is aborted, and a new one is
/// opened to the same server at once, through a relay that replays old requests (so the old
/// session's bundles keep arriving). The new session carries exactly its own bytes, none of the
/// old one's (the patterns differ), in both directions.
#[test]
fn aborted_session_leaks_nothing_into_the_next() {
    let _one_at_a_time = heavy();
    const NEW_LEN: u64 = 8 << 20;
    run(RUN_LIMIT, async {
        let listener = listener(server_config()).await;
        let relay = FaultRelay::start(
            listener.local_addr().unwrap(),
            Plan::new(0x1EA7).with(Fault::Replay, 0.2),
        )
        .unwrap();
        let (results, reports) = smol::channel::unbounded();
        let server = smol::spawn(async move {
            // The first session is the busy one (endless), the second the new one.
            for (seed, len) in [(12, 1u64 << 40), (22, NEW_LEN)] {
                let (stream, _) = listener.accept().await.expect("accept");
                let results = results.clone();
                smol::spawn(async move {
                    let _ = results
                        .send((seed, exchange(stream, seed, len).await))
                        .await;
                })
                .detach();
            }
            // Keep the listener (which drives the sessions) until the test ends.
            smol::Timer::after(RUN_LIMIT).await;
            drop(listener);
        });

        let old = Stream::connect(client_options(&relay))
            .await
            .expect("connect");
        let handle = old.clone();
        let old_task = smol::spawn(exchange(old, 11, 1 << 40));
        // Let it get busy both ways, then abort it.
        let until = Instant::now() + Duration::from_secs(30);
        while handle.stats().map_or(0, |s| s.bytes_received) < 4 << 20 {
            assert!(Instant::now() < until, "the old session never got busy");
            smol::Timer::after(Duration::from_millis(5)).await;
        }
        handle.abort("test: abort a busy session");
        let new = Stream::connect(client_options(&relay))
            .await
            .expect("connect again");
        let (sent, received) = exchange(new, 21, NEW_LEN).await.expect("the new session");
        assert_eq!(sent, expected_digest(21, NEW_LEN));
        assert_eq!(
            received,
            expected_digest(22, NEW_LEN),
            "the new client received"
        );

        let old_result = within(Duration::from_secs(30), old_task)
            .await
            .expect("the aborted session must end");
        assert!(old_result.is_err(), "the aborted session ended cleanly?");
        let mut server_new = None;
        let mut server_old = None;
        for _ in 0..2 {
            let (seed, result) = within(Duration::from_secs(60), reports.recv())
                .await
                .expect("the server ends must report")
                .expect("a report");
            if seed == 22 {
                server_new = Some(result);
            } else {
                server_old = Some(result);
            }
        }
        let (server_sent, server_received) = server_new.unwrap().expect("the server's new session");
        assert_eq!(server_sent, expected_digest(22, NEW_LEN));
        assert_eq!(
            server_received,
            expected_digest(21, NEW_LEN),
            "the server's new session received"
        );
        assert!(
            server_old.unwrap().is_err(),
            "the server's old session ended cleanly?"
        );
        eprintln!("leak test: relay: {}", relay.summary());
        assert!(relay.count(Fault::Replay) > 0);
        drop(server);
    });
}
