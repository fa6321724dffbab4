//! Throughput on simulated long fat paths, in virtual time (deterministic, so exact bounds):
//! bulk transfers must come close to the ideal time for the path's RTT and rate, with nothing
//! resent when nothing is lost.

use std::time::Duration;

use holdwire_proto::sim::{check_stream, payload, Faults, Sim, SimConfig, Workload};
use holdwire_proto::{ClientConfig, ServerConfig};

struct Run {
    seconds: f64,
    ideal: f64,
    resent: u64,
    /// Application bytes the client sent more than once.
    bytes_resent_up: u64,
    /// Exchanges the client saw fail.
    failed: u64,
}

fn bulk(rtt_ms: u64, mbit: u64, up: usize, down: usize) -> Run {
    bulk_with(rtt_ms, mbit, up, down, Faults::default(), 1)
}

fn bulk_with(rtt_ms: u64, mbit: u64, up: usize, down: usize, faults: Faults, seed: u64) -> Run {
    let rate = mbit * 1_000_000 / 8;
    let mut sim = Sim::new(
        SimConfig {
            seed,
            latency: Duration::from_millis(rtt_ms / 2),
            rate,
            faults,
            ..SimConfig::default()
        },
        ClientConfig::default(),
        ServerConfig::default(),
        Workload {
            client_sends: payload(1, up),
            server_sends: payload(2, down),
            ..Workload::default()
        },
        1,
    );
    sim.run().unwrap();
    let c = &sim.clients[0];
    check_stream("up", &sim.workload.client_sends, &c.server_app.received).unwrap();
    check_stream("down", &sim.workload.server_sends, &c.app.received).unwrap();
    let end = c.app.end_at.unwrap().max(c.server_app.end_at.unwrap());
    Run {
        seconds: end.as_micros() as f64 / 1e6,
        // Serialisation of the larger direction plus one round trip to open.
        ideal: up.max(down) as f64 / rate as f64 + rtt_ms as f64 / 1000.0,
        resent: c.core.stats().messages_resent,
        bytes_resent_up: c.core.stats().bytes_sent - up as u64,
        failed: c.core.stats().failed_exchanges,
    }
}

fn assert_within(run: Run, factor: f64, what: &str) {
    let ratio = run.seconds / run.ideal;
    println!(
        "{what}: {:.3} s, ideal {:.3} s, ratio {ratio:.3}",
        run.seconds, run.ideal
    );
    assert!(ratio <= factor, "{what}: ratio {ratio:.3} above {factor}");
    assert_eq!(run.resent, 0, "{what}: nothing lost, nothing resent");
}

#[test]
fn wan80_one_way_within_15_percent_of_ideal() {
    assert_within(bulk(80, 50, 0, 16 << 20), 1.15, "wan80 down");
    assert_within(bulk(80, 50, 16 << 20, 0), 1.15, "wan80 up");
}

#[test]
fn wan20_one_way_within_10_percent_of_ideal() {
    assert_within(bulk(20, 200, 0, 32 << 20), 1.10, "wan20 down");
    assert_within(bulk(20, 200, 32 << 20, 0), 1.10, "wan20 up");
}

#[test]
fn wan80_both_ways_at_once() {
    assert_within(bulk(80, 50, 16 << 20, 16 << 20), 1.15, "wan80 both ways");
}

#[test]
fn wan80_with_lost_exchanges_resends_only_what_was_lost() {
    // 3 % of requests and 3 % of responses vanish (their connections close). Every byte must
    // still arrive, the transfer must not stall on a loss, and the client may resend at most
    // the data of the exchanges that failed (one bundle each), never the whole window.
    let faults = Faults {
        drop_request: 0.03,
        drop_response: 0.03,
        ..Faults::default()
    };
    let max_bundle = ClientConfig::default().session.max_bundle_len as u64;
    for seed in 1..=8 {
        let run = bulk_with(80, 50, 16 << 20, 16 << 20, faults.clone(), seed);
        let ratio = run.seconds / run.ideal;
        println!(
            "wan80, 3 % of exchanges lost, seed {seed}: {:.3} s, ideal {:.3} s, ratio {ratio:.3}, \
             {} failed exchanges, {} bytes resent up",
            run.seconds, run.ideal, run.failed, run.bytes_resent_up
        );
        assert!(ratio <= 1.4, "seed {seed}: ratio {ratio:.3} above 1.4");
        assert!(
            run.bytes_resent_up <= run.failed * max_bundle,
            "seed {seed}: {} bytes resent for {} failed exchanges",
            run.bytes_resent_up,
            run.failed
        );
    }
}

#[test]
fn held_requests_grow_with_the_path_and_settle() {
    // 1 Gbit/s at 80 ms needs many parked requests; the count must grow, stay within its cap,
    // and come back down once the transfer is over.
    let config = ClientConfig::default();
    let mut sim = Sim::new(
        SimConfig {
            latency: Duration::from_millis(40),
            rate: 125_000_000,
            ..SimConfig::default()
        },
        config.clone(),
        ServerConfig::default(),
        Workload {
            server_sends: payload(3, 32 << 20),
            finish: false,
            ..Workload::default()
        },
        1,
    );
    let mut peak = 0;
    let mut changes = 0;
    let mut last = sim.clients[0].core.hold_target();
    for step in 1..=200 {
        sim.config.max_time = Duration::from_millis(step * 50);
        sim.run().unwrap();
        let h = sim.clients[0].core.hold_target();
        peak = peak.max(h);
        changes += u32::from(h != last);
        last = h;
    }
    assert!(sim.clients[0].app.received.len() == 32 << 20);
    assert!(peak > config.hold && peak <= config.max_hold, "peak {peak}");
    assert!(
        changes <= 2 * u32::from(config.max_hold),
        "{changes} changes"
    );
    assert_eq!(last, config.hold, "back to the idle count once quiet");
}

#[test]
fn send_window_converges_to_the_path_and_stays_there() {
    // 80 ms at 50 Mbit/s: a bandwidth-delay product of 500 kB. Uploading 64 MiB, the client's
    // send window must settle near two of them within a bounded number of round trips, and
    // then not swing beyond a bound.
    let bdp = 50_000_000 / 8 * 80 / 1000;
    let mut sim = Sim::new(
        SimConfig {
            latency: Duration::from_millis(40),
            rate: 50_000_000 / 8,
            ..SimConfig::default()
        },
        ClientConfig::default(),
        ServerConfig::default(),
        Workload {
            client_sends: payload(4, 64 << 20),
            finish: false,
            ..Workload::default()
        },
        1,
    );
    let mut windows = Vec::new();
    // One sample per round trip for 100 round trips (8 s of the ~11 s transfer).
    for rtt in 1..=100u64 {
        sim.config.max_time = Duration::from_millis(rtt * 80);
        sim.run().unwrap();
        windows.push(sim.clients[0].core.send_window());
    }
    let settled = &windows[20..];
    let (lo, hi) = (
        *settled.iter().min().unwrap(),
        *settled.iter().max().unwrap(),
    );
    println!("send window after 20 round trips: {lo}..{hi} bytes (bdp {bdp})");
    // Two products from the estimate, and up to two growth steps of a quarter each while the
    // window limits the sender (a probe for paths whose acknowledgements lag, see
    // `SendWindow`): at most about 2 * 1.25^2 = 3.1 products, plus estimation noise.
    assert!(
        lo >= bdp && hi <= 6 * bdp,
        "window {lo}..{hi} outside 1..6 bandwidth-delay products ({bdp})"
    );
    assert!(hi <= 2 * lo, "window swings {lo}..{hi}");
    let (up_max, _) = sim.max_client_buffered;
    assert!(up_max <= ClientConfig::default().session.send_buffer);
}
