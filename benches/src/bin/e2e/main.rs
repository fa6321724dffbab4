//! `e2e`: the end-to-end side-by-side benchmark. Raw TCP, holdwire (both drivers, direct and
//! through proxies) and GNU httptunnel carry the same verified transfers on loopback, in the
//! same run, rows interleaved. See docs/BENCHMARKS.md.
//!
//! ```text
//! cargo run --release -p holdwire-benches --bin e2e -- [--quick] [--runs N] [--mib N]
//!     [--rows raw,std,smol,...] [--tests up,down,bidi,ping,streams,loss] [--out FILE]
//! ```

mod forward;
mod load;
mod pattern;
mod report;
mod tunnel;

use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use load::{Far, FarEnd, Outcome};
use report::Measurement;
use tunnel::{Env, Row, Tunnel, Usage};

/// A test: what the load generator does through each row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Test {
    /// Bulk upload.
    Up,
    /// Bulk download.
    Down,
    /// Both ways at once.
    Bidi,
    /// 64-byte ping-pong.
    Ping,
    /// Concurrent uploads.
    Streams,
    /// Both ways at once through the lossy relay dropping this percentage of HTTP messages.
    Loss(u8),
}

impl Test {
    /// The name in the results.
    pub fn key(self) -> String {
        match self {
            Test::Up => "up".into(),
            Test::Down => "down".into(),
            Test::Bidi => "bidi".into(),
            Test::Ping => "ping".into(),
            Test::Streams => "streams".into(),
            Test::Loss(p) => format!("loss-{p}"),
        }
    }

    /// Whether `row` takes part. The loss sweep runs holdwire direct only: the relay forwards
    /// whole HTTP messages, so it needs HTTP between the endpoints, and it stalls httptunnel
    /// (which streams its data inside long messages) even when it drops nothing.
    fn applies_to(self, row: Row) -> bool {
        match self {
            Test::Loss(_) => matches!(row, Row::Std | Row::Smol),
            _ => true,
        }
    }
}

/// The command line.
#[derive(Debug)]
pub struct Options {
    /// Small sizes, for CI.
    pub quick: bool,
    /// Runs over which medians are taken.
    pub runs: u32,
    /// MiB of the bulk transfers (each way for bidi; in total for the streams test).
    pub mib: u64,
    /// Rows to run.
    pub rows: Vec<Row>,
    /// Tests to run.
    pub tests: Vec<Test>,
    /// JSON lines output.
    pub out: std::path::PathBuf,
    /// Seconds without progress before a transfer fails.
    pub stall: Duration,
    /// Ping-pong warm-up and measured round trips.
    pub pings: (usize, usize),
    /// Concurrent streams.
    pub streams: u32,
    /// MiB each way of the loss sweep's transfers.
    pub loss_mib: u64,
}

const USAGE: &str = "usage: e2e [--quick] [--runs N] [--mib N] [--rows LIST] [--tests LIST] \
[--out FILE] [--stall SECS]
  rows:  raw,std,smol,smol-tinyproxy,smol-squid,ht,ht-16m,ht-tinyproxy,ht-16m-tinyproxy (default all)
  tests: up,down,bidi,ping,streams,loss (default all; loss = 0,1,2,5 %, --quick 0,2,5 %)";

fn parse(args: &[String]) -> Result<Options, String> {
    let mut quick = false;
    let mut runs = None;
    let mut mib = None;
    let mut rows = Row::ALL.to_vec();
    let mut tests = None;
    let mut out = None;
    let mut stall = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--quick" => quick = true,
            "--runs" => runs = Some(value()?.parse::<u32>().map_err(|e| e.to_string())?),
            "--mib" => mib = Some(value()?.parse::<u64>().map_err(|e| e.to_string())?),
            "--stall" => stall = Some(value()?.parse::<f64>().map_err(|e| e.to_string())?),
            "--out" => out = Some(value()?.into()),
            "--rows" => {
                rows = Vec::new();
                for key in value()?.split(',') {
                    let row = Row::ALL
                        .into_iter()
                        .find(|r| r.key() == key)
                        .ok_or_else(|| format!("unknown row {key:?}"))?;
                    rows.push(row);
                }
            }
            "--tests" => tests = Some(value()?),
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let loss_points: &[u8] = if quick { &[0, 2, 5] } else { &[0, 1, 2, 5] };
    let mut selected = Vec::new();
    for key in tests
        .as_deref()
        .unwrap_or("up,down,bidi,ping,streams,loss")
        .split(',')
    {
        match key {
            "up" => selected.push(Test::Up),
            "down" => selected.push(Test::Down),
            "bidi" => selected.push(Test::Bidi),
            "ping" => selected.push(Test::Ping),
            "streams" => selected.push(Test::Streams),
            "loss" => selected.extend(loss_points.iter().map(|&p| Test::Loss(p))),
            other => return Err(format!("unknown test {other:?}")),
        }
    }
    let mib = mib.unwrap_or(if quick { 8 } else { 1024 });
    // Longer than the protocol's longest wait (a held request is answered within 20 s), so a
    // session that only recovers when a timer fires is slow, not failed.
    let stall = stall.unwrap_or(30.0);
    if mib == 0 || !(stall > 0.0 && stall < 3600.0) {
        return Err("--mib and --stall must be positive".into());
    }
    let runs = runs.unwrap_or(if quick { 1 } else { 3 }).max(1);
    Ok(Options {
        quick,
        runs,
        mib,
        rows,
        tests: selected,
        out: out.unwrap_or_else(|| std::env::temp_dir().join("holdwire-e2e.jsonl")),
        stall: Duration::from_secs_f64(stall),
        pings: if quick { (20, 200) } else { (200, 2000) },
        streams: if quick { 10 } else { 100 },
        loss_mib: (mib / 4).max(4),
    })
}

/// Runs `test` once through `row`.
fn measure(env: &Env, opts: &Options, run: u32, row: Row, test: Test) -> Measurement {
    let mib = 1024 * 1024;
    let (mode, bytes) = match test {
        Test::Up => (Far::Sink(opts.mib * mib), opts.mib * mib),
        Test::Down => (Far::Source(opts.mib * mib), opts.mib * mib),
        Test::Bidi => (Far::Both(opts.mib * mib), 2 * opts.mib * mib),
        Test::Ping => (Far::Echo, 0),
        Test::Streams => {
            let each = opts.mib * mib / u64::from(opts.streams);
            (Far::Sink(each), each * u64::from(opts.streams))
        }
        Test::Loss(_) => (Far::Both(opts.loss_mib * mib), 2 * opts.loss_mib * mib),
    };
    // Generous, yet bounded: 30 s plus 1 MB/s.
    let deadline = Instant::now() + Duration::from_secs(30 + bytes / 1_000_000);
    let mut m = Measurement::new(run, row, test);
    if let Some(why) = env.missing(row) {
        m.missing = Some(why);
        return m;
    }
    let far = match FarEnd::start(mode, opts.stall, deadline) {
        Ok(far) => far,
        Err(e) => {
            m.result = Err(format!("far end: {e}"));
            return m;
        }
    };
    let loss = match test {
        Test::Loss(p) => Some(f64::from(p) / 100.0),
        _ => None,
    };
    // Ports are picked free then bound by the child: another program may take one in
    // between, so setup is tried up to three times.
    let mut tunnel = Tunnel::start(env, row, far.addr, loss);
    for _ in 0..2 {
        match &tunnel {
            Err(e) => {
                eprintln!("e2e: {} setup failed, retrying: {e}", row.key());
                tunnel = Tunnel::start(env, row, far.addr, loss);
            }
            Ok(_) => break,
        }
    }
    let tunnel = match tunnel {
        Ok(t) => t,
        Err(e) => {
            m.result = Err(format!("setup: {e}"));
            return m;
        }
    };
    let usage = Usage::start(tunnel.pids());
    let stall = opts.stall;
    let entry = tunnel.entry;
    let result: Result<Outcome, String> = match test {
        Test::Up => load::bulk_up(entry, &far, opts.mib * mib, stall, deadline),
        Test::Down => load::bulk_down(entry, &far, opts.mib * mib, stall, deadline),
        Test::Bidi => load::bidi(entry, &far, opts.mib * mib, stall, deadline),
        Test::Loss(_) => load::bidi(entry, &far, opts.loss_mib * mib, stall, deadline),
        Test::Ping => load::ping_pong(entry, &far, opts.pings.0, opts.pings.1, stall, deadline),
        Test::Streams => load::streams(
            entry,
            &far,
            opts.streams,
            opts.mib * mib / u64::from(opts.streams),
            stall,
            deadline,
        ),
    };
    let (cpu, rss) = usage.finish();
    m.cpu_seconds = (!tunnel.children.is_empty()).then_some(cpu);
    m.peak_rss_kib = (!tunnel.children.is_empty()).then_some(rss);
    if let Some(relay) = &tunnel.relay {
        let s = relay.stats();
        m.relay = Some((
            s.forwarded.load(std::sync::atomic::Ordering::Relaxed),
            s.dropped.load(std::sync::atomic::Ordering::Relaxed),
        ));
    }
    // A failing holdwire row says what its endpoints logged.
    let result = match result {
        Err(e) if row.is_holdwire() => {
            thread::sleep(Duration::from_millis(200));
            Err(format!("{e} [endpoint logs: {}]", tunnel.log_tails()))
        }
        r => r,
    };
    drop(tunnel);
    drop(far);
    m.result = result;
    m
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The std rows' endpoints: this binary in a hidden mode.
    match args.first().map(String::as_str) {
        Some("__std-server") => return exit_of(forward::server(&args[1..])),
        Some("__std-client") => return exit_of(forward::client(&args[1..])),
        _ => {}
    }
    let opts = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("e2e: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    tunnel::stop_children_on_signals();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let env = match Env::new(&opts.rows) {
        Ok(env) => env,
        Err(e) => {
            eprintln!("e2e: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = match std::fs::File::create(&opts.out) {
        Ok(f) => std::io::BufWriter::new(f),
        Err(e) => {
            eprintln!("e2e: {}: {e}", opts.out.display());
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let mut all = Vec::new();
    // Rows interleaved within each run, so drift hits every row alike.
    for run in 1..=opts.runs {
        for &test in &opts.tests {
            for &row in &opts.rows {
                if !test.applies_to(row) {
                    continue;
                }
                let m = measure(&env, &opts, run, row, test);
                eprintln!(
                    "[{:>5.1}s] run {run}/{} {:<8} {:<17} {}",
                    started.elapsed().as_secs_f64(),
                    opts.runs,
                    test.key(),
                    row.key(),
                    m.summary()
                );
                use std::io::Write as _;
                let _ = writeln!(out, "{}", m.json());
                all.push(m);
            }
        }
    }
    {
        use std::io::Write as _;
        let _ = out.flush();
    }
    drop(env);
    tunnel::remove_squid_shm();
    print!("{}", report::markdown(&opts, &all, started.elapsed()));
    println!(
        "\nResults (one JSON object per measurement): {}",
        opts.out.display()
    );
    let holdwire_failed = all
        .iter()
        .any(|m| m.row.is_holdwire() && m.missing.is_none() && m.result.is_err());
    let missing = all.iter().any(|m| m.missing.is_some());
    if holdwire_failed {
        eprintln!("e2e: a holdwire row lost or corrupted data, or failed (see the table)");
        return ExitCode::FAILURE;
    }
    if missing && ci {
        eprintln!("e2e: CI=true and a row's software is missing");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn exit_of(r: std::io::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("e2e endpoint: {e}");
            ExitCode::FAILURE
        }
    }
}
