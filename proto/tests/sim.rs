//! Properties of the core over a simulated network: exact delivery, liveness under faults,
//! failure under partition, bounded buffers, and no blind resending when nothing is lost.

use std::time::Duration;

use holdwire_proto::sim::{check_stream, payload, Faults, Sim, SimConfig, Workload};
use holdwire_proto::{ClientConfig, Instant, ServerConfig, SessionError, Token};
use proptest::prelude::*;

fn client_config() -> ClientConfig {
    ClientConfig {
        max_failures: 1000,
        close_attempts: 1000,
        silence_timeout: Duration::from_secs(120),
        open_timeout: Duration::from_secs(120),
        ..ClientConfig::default()
    }
}

fn server_config() -> ServerConfig {
    ServerConfig {
        idle_timeout: Duration::from_secs(120),
        ..ServerConfig::default()
    }
}

fn workload(up: usize, down: usize, seed: u64) -> Workload {
    Workload {
        client_sends: payload(seed, up),
        server_sends: payload(seed ^ 0x55, down),
        ..Workload::default()
    }
}

/// Runs and checks exact delivery both ways and a clean close at both ends.
fn assert_clean_transfer(sim: &mut Sim) {
    sim.run().unwrap_or_else(|e| panic!("{e}: {sim:?}"));
    let w = sim.workload.clone();
    for (i, c) in sim.clients.iter().enumerate() {
        check_stream("server received", &w.client_sends, &c.server_app.received)
            .unwrap_or_else(|e| panic!("client {i}: {e}"));
        check_stream("client received", &w.server_sends, &c.app.received)
            .unwrap_or_else(|e| panic!("client {i}: {e}"));
        assert!(
            c.app.eof && c.server_app.eof,
            "client {i}: both ends read EOF"
        );
        assert_eq!(c.app.end, Some(Ok(())), "client {i}: client closed cleanly");
        assert_eq!(
            c.server_app.end,
            Some(Ok(())),
            "client {i}: server closed cleanly"
        );
        assert_eq!(c.app.events_after_end, 0);
        assert_eq!(c.server_app.events_after_end, 0);
    }
}

#[test]
fn lossless_bulk_both_ways_resends_nothing() {
    let mut sim = Sim::new(
        SimConfig {
            latency: Duration::from_millis(20),
            ..SimConfig::default()
        },
        client_config(),
        server_config(),
        workload(3 << 20, 3 << 20, 1),
        1,
    );
    assert_clean_transfer(&mut sim);
    let stats = sim.clients[0].core.stats();
    assert_eq!(stats.messages_resent, 0, "{stats:?}");
    assert_eq!(stats.failed_exchanges, 0, "{stats:?}");
    assert_eq!(sim.server.stats().duplicate_requests, 0);
}

#[test]
fn lossless_interactive_traffic_always_finds_a_held_request() {
    // Small writes spread out: each server write must find a parked request.
    let mut sim = Sim::new(
        SimConfig {
            latency: Duration::from_millis(10),
            ..SimConfig::default()
        },
        client_config(),
        server_config(),
        Workload {
            write_chunk: 100,
            ..workload(20_000, 20_000, 2)
        },
        1,
    );
    assert_clean_transfer(&mut sim);
    // The first write may come before the client parked anything; none after it may.
    assert!(
        sim.writes_without_held_request <= 1,
        "{}",
        sim.writes_without_held_request
    );
    assert_eq!(sim.clients[0].core.stats().messages_resent, 0);
}

#[test]
fn tinyproxy_style_close_after_every_response() {
    // The proxy closes every connection after its response without saying so: the client loses
    // the keep-alive race at most twice, then uses a fresh connection per request.
    let mut sim = Sim::new(
        SimConfig {
            faults: Faults {
                close_after_response: true,
                ..Faults::default()
            },
            ..SimConfig::default()
        },
        client_config(),
        server_config(),
        workload(4 << 20, 4 << 20, 3),
        1,
    );
    // Such a proxy connects to the server per request head: once the path is known, requests
    // are pre-opened (head first, body when there is one).
    let mut preopened = 0;
    for step in 1..=400 {
        sim.config.max_time = Duration::from_millis(step * 5);
        sim.run().unwrap();
        preopened = preopened.max(sim.clients[0].core.preopened_requests());
    }
    assert!(preopened > 0, "no request was pre-opened");
    assert!(preopened <= usize::from(client_config().preopen));
    sim.config.max_time = SimConfig::default().max_time;
    assert_clean_transfer(&mut sim);
    let c = &sim.clients[0].core;
    assert!(c.uses_fresh_connections());
    let stats = c.stats();
    assert!(stats.failed_exchanges <= 2, "{stats:?}");
    // At most the two raced bundles are resent (16 messages of 64 KiB each).
    assert!(stats.messages_resent <= 32, "{stats:?}");
}

#[test]
fn many_sessions_on_one_server() {
    let mut sim = Sim::new(
        SimConfig {
            jitter: Duration::from_millis(3),
            ..SimConfig::default()
        },
        client_config(),
        server_config(),
        workload(50_000, 70_000, 4),
        40,
    );
    assert_clean_transfer(&mut sim);
    assert_eq!(sim.server.stats().sessions_opened, 40);
}

#[test]
fn slow_reader_keeps_buffers_within_caps() {
    let mut cc = client_config();
    cc.session.send_buffer = 256 * 1024;
    cc.session.recv_buffer = 128 * 1024;
    let mut sc = server_config();
    sc.session.send_buffer = 256 * 1024;
    sc.session.recv_buffer = 128 * 1024;
    let mut sim = Sim::new(
        SimConfig::default(),
        cc.clone(),
        sc.clone(),
        Workload {
            read_chunk: 7000,
            read_pause: Duration::from_millis(1),
            ..workload(2 << 20, 2 << 20, 5)
        },
        1,
    );
    assert_clean_transfer(&mut sim);
    assert!(sim.max_client_buffered.0 <= cc.session.send_buffer);
    assert!(sim.max_client_buffered.1 <= cc.session.recv_buffer);
    assert!(sim.max_server_buffered.0 <= sc.session.send_buffer);
    assert!(sim.max_server_buffered.1 <= sc.session.recv_buffer);
}

#[test]
fn half_close_client_finishes_first() {
    let mut sim = Sim::new(
        SimConfig::default(),
        client_config(),
        server_config(),
        workload(0, 500_000, 6),
        1,
    );
    assert_clean_transfer(&mut sim);
}

#[test]
fn client_abort_fails_both_ends() {
    let mut sim = Sim::new(
        SimConfig::default(),
        client_config(),
        server_config(),
        Workload {
            client_abort_after: Some(100_000),
            ..workload(1 << 20, 1 << 20, 7)
        },
        1,
    );
    sim.run().unwrap();
    let c = &sim.clients[0];
    assert_eq!(c.app.end, Some(Err(SessionError::LocallyAborted)));
    assert!(
        matches!(c.server_app.end, Some(Err(SessionError::Aborted { .. }))),
        "{:?}",
        c.server_app.end
    );
}

#[test]
fn permanent_partition_fails_both_ends_within_bounds() {
    let cc = ClientConfig {
        silence_timeout: Duration::from_secs(30),
        ..ClientConfig::default()
    };
    let sc = ServerConfig {
        idle_timeout: Duration::from_secs(40),
        ..ServerConfig::default()
    };
    let partition = Instant::from_micros(2_000_000);
    let mut sim = Sim::new(
        SimConfig {
            partition_at: Some(partition),
            ..SimConfig::default()
        },
        cc.clone(),
        sc.clone(),
        Workload {
            finish: false,
            ..workload(10 << 20, 10 << 20, 8)
        },
        1,
    );
    sim.run().unwrap();
    let c = &sim.clients[0];
    assert_eq!(c.app.end, Some(Err(SessionError::TimedOut)));
    assert_eq!(c.server_app.end, Some(Err(SessionError::TimedOut)));
    let bound = |t: Duration| partition + t + Duration::from_secs(1);
    assert!(c.app.end_at.unwrap() <= bound(cc.silence_timeout));
    assert!(c.server_app.end_at.unwrap() <= bound(sc.idle_timeout));
}

fn with_tokens(client: Option<&[u8]>, server: Option<&[u8]>) -> Sim {
    let mut cc = client_config();
    cc.token = client.map(Token::new);
    let mut sc = server_config();
    sc.token = server.map(Token::new);
    Sim::new(
        SimConfig::default(),
        cc,
        sc,
        workload(100_000, 100_000, 9),
        1,
    )
}

#[test]
fn authenticated_session_transfers_and_closes() {
    let mut sim = with_tokens(Some(b"s3cret"), Some(b"s3cret"));
    assert_clean_transfer(&mut sim);
    assert_eq!(sim.server.stats().requests_refused, 0);
}

#[test]
fn wrong_token_is_refused_with_403() {
    let mut sim = with_tokens(Some(b"guess"), Some(b"s3cret"));
    sim.run().unwrap();
    let c = &sim.clients[0];
    assert_eq!(c.app.end, Some(Err(SessionError::Rejected { status: 403 })));
    assert_eq!(
        c.server_app.end, None,
        "the server never announced the session"
    );
    assert_eq!(sim.server.session_count(), 0);
    assert!(sim.server.stats().requests_refused >= 1);
}

#[test]
fn client_without_token_is_refused_and_server_without_token_is_detected() {
    let mut sim = with_tokens(None, Some(b"s3cret"));
    sim.run().unwrap();
    assert_eq!(
        sim.clients[0].app.end,
        Some(Err(SessionError::Rejected { status: 403 }))
    );
    let mut sim = with_tokens(Some(b"s3cret"), None);
    sim.run().unwrap();
    assert!(
        matches!(sim.clients[0].app.end, Some(Err(SessionError::Protocol(_)))),
        "{:?}",
        sim.clients[0].app.end
    );
}

fn fault_strategy() -> impl Strategy<Value = Faults> {
    let p = || prop_oneof![Just(0.0), 0.0..0.08f64];
    (
        (p(), p(), p(), p(), p(), p()),
        (p(), p(), p(), p(), p(), any::<bool>()),
    )
        .prop_map(|((a, b, c, d, e, f), (g, h, i, j, k, close))| Faults {
            drop_request: a,
            drop_response: b,
            hang_request: c / 2.0,
            hang_response: d / 2.0,
            duplicate_request: e,
            corrupt_request: f,
            corrupt_response: g,
            cut_request: h,
            cut_response: i,
            error_page: j + k * 0.0,
            close_after_response: close,
        })
}

/// Cases per property: `PROPTEST_CASES` (CI raises it), else a quick local default.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Under any fair schedule (faults below 100 %), both streams arrive exactly once, in order,
    /// and both ends close cleanly; buffers stay within their caps.
    #[test]
    fn faulty_network_delivers_exactly_once(
        seed in any::<u64>(),
        faults in fault_strategy(),
        up in 0usize..300_000,
        down in 0usize..300_000,
        write_chunk in 1usize..70_000,
        read_chunk in 1usize..100_000,
        read_pause_us in prop_oneof![Just(0u64), 0u64..2000],
        latency_ms in 0u64..50,
        jitter_ms in 0u64..20,
        hold in 1u8..4,
        max_in_flight in 2usize..8,
        authenticated in any::<bool>(),
    ) {
        let mut cc = client_config();
        let mut sc = server_config();
        if authenticated {
            cc.token = Some(Token::new(b"correct horse"));
            sc.token = Some(Token::new(b"correct horse"));
        }
        cc.hold = hold;
        cc.max_in_flight = max_in_flight;
        cc.session.send_buffer = 512 * 1024;
        cc.session.recv_buffer = 256 * 1024;
        let mut sim = Sim::new(
            SimConfig {
                seed,
                latency: Duration::from_millis(latency_ms),
                jitter: Duration::from_millis(jitter_ms),
                faults,
                ..SimConfig::default()
            },
            cc.clone(),
            sc.clone(),
            Workload {
                write_chunk,
                read_chunk,
                read_pause: Duration::from_micros(read_pause_us),
                ..workload(up, down, seed)
            },
            1,
        );
        sim.run().map_err(|e| TestCaseError::fail(format!("{e}: {sim:?}")))?;
        let c = &sim.clients[0];
        let w = &sim.workload;
        prop_assert_eq!(&c.app.end, &Some(Ok(())), "client end; server end {:?}", c.server_app.end);
        prop_assert_eq!(&c.server_app.end, &Some(Ok(())));
        check_stream("server received", &w.client_sends, &c.server_app.received).map_err(TestCaseError::fail)?;
        check_stream("client received", &w.server_sends, &c.app.received).map_err(TestCaseError::fail)?;
        prop_assert!(sim.max_client_buffered.0 <= cc.session.send_buffer);
        prop_assert!(sim.max_client_buffered.1 <= cc.session.recv_buffer);
        prop_assert!(sim.max_server_buffered.0 <= sc.session.send_buffer);
        prop_assert!(sim.max_server_buffered.1 <= sc.session.recv_buffer);
    }

    /// Without faults, nothing is ever sent twice, whatever the timing and application pattern.
    #[test]
    fn lossless_never_resends(
        seed in any::<u64>(),
        up in 0usize..400_000,
        down in 0usize..400_000,
        write_chunk in 1usize..70_000,
        read_chunk in 1usize..100_000,
        latency_ms in 0u64..80,
        jitter_ms in 0u64..5,
    ) {
        let mut sim = Sim::new(
            SimConfig {
                seed,
                latency: Duration::from_millis(latency_ms),
                jitter: Duration::from_millis(jitter_ms),
                ..SimConfig::default()
            },
            client_config(),
            server_config(),
            Workload { write_chunk, read_chunk, ..workload(up, down, seed) },
            1,
        );
        sim.run().map_err(|e| TestCaseError::fail(format!("{e}: {sim:?}")))?;
        let c = &sim.clients[0];
        prop_assert_eq!(&c.app.end, &Some(Ok(())));
        prop_assert_eq!(&c.server_app.end, &Some(Ok(())));
        prop_assert_eq!(c.core.stats().messages_resent, 0);
        prop_assert_eq!(sim.server.session_stats(c.core.session_id()).map_or(0, |s| s.messages_resent), 0);
    }
}
