//! Benchmark: many idle sessions on one listener. Prints the user-space memory per idle session
//! (RSS delta / sessions, from /proc), the CPU used while idle, and the time to open them all.
//!
//! ```text
//! cargo run --release -p holdwire-smol --example idle_sessions -- [--sessions N] [--idle SECS] [--hold H]
//! ```
//! The listener runs in this process; the clients run in a child process (this binary with
//! `--clients ADDR N`), so each figure belongs to one side. The listener grants `H` held
//! requests per session (`ServerConfig::max_hold`, default 1): each idle session then keeps one
//! request held on one connection. The idle window defaults to the server's `max_wait` plus 2 s,
//! so that every held request is answered and renewed once inside it.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use holdwire_smol::{ClientOptions, Listener, ServerConfig, Stream};

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    raise_nofile();
    if args.first().map(String::as_str) == Some("--clients") {
        let addr: SocketAddr = args[1].parse().expect("listener address");
        let n: usize = args[2].parse().expect("session count");
        return clients(addr, n);
    }
    let flag = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.parse().expect("a number"))
            .unwrap_or(default)
    };
    let sessions = flag("--sessions", 10_000) as usize;
    let hold = flag("--hold", 1) as u8;
    let config = ServerConfig {
        max_hold: hold,
        max_sessions: sessions + 16,
        ..ServerConfig::default()
    };
    let idle = Duration::from_secs(flag("--idle", config.max_wait.as_secs() + 2));
    let report = listen(sessions, config, idle)?;
    println!("{report}");
    Ok(())
}

/// The listener side: opens the sessions from a child process and measures.
fn listen(sessions: usize, config: ServerConfig, idle: Duration) -> std::io::Result<String> {
    smol::block_on(async {
        let listener = Listener::bind("127.0.0.1:0", config.clone()).await?;
        let addr = listener.local_addr()?;
        let base = Proc::current();
        let start = Instant::now();
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--clients", &addr.to_string(), &sessions.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()?;
        let child_pid = child.id();
        let mut streams: Vec<Stream> = Vec::with_capacity(sessions);
        let limit = Duration::from_secs(300);
        while streams.len() < sessions {
            let next = smol::future::or(async { Some(listener.accept().await) }, async {
                smol::Timer::after(Duration::from_secs(5)).await;
                None
            })
            .await;
            match next {
                Some(Ok((s, _))) => streams.push(s),
                Some(Err(e)) => return Err(e),
                None => {}
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                panic!(
                    "only {} of {sessions} sessions after {limit:?}",
                    streams.len()
                );
            }
        }
        // Every session is idle once each has its held request.
        loop {
            let held = streams
                .iter()
                .filter(|s| s.held_requests().unwrap_or(0) > 0)
                .count();
            if held == sessions {
                break;
            }
            assert!(
                start.elapsed() < limit,
                "{held} of {sessions} sessions hold a request"
            );
            smol::Timer::after(Duration::from_millis(20)).await;
        }
        let opened = start.elapsed();
        let connections = listener.connection_count();
        let after_open = Proc::current();
        let child_after_open = Proc::of(child_pid);
        smol::Timer::after(idle).await;
        let after_idle = Proc::current();
        let child_after_idle = Proc::of(child_pid);
        let held = streams
            .iter()
            .filter(|s| s.held_requests().unwrap_or(0) > 0)
            .count();
        let alive = listener.session_count();
        let _ = child.kill();
        let _ = child.wait();

        let per = |rss: u64| (rss.saturating_sub(base.rss_kib)) as f64 * 1024.0 / sessions as f64;
        let cpu = |a: &Proc, b: &Proc| {
            (b.cpu_ticks.saturating_sub(a.cpu_ticks)) as f64
                / ticks_per_second()
                / idle.as_secs_f64()
                * 100.0
        };
        let mut out = String::new();
        use std::fmt::Write as _;
        let _ = writeln!(out, "sessions: {sessions} on one listener, {connections} HTTP connections, max_hold {}, max_wait {:?}", config.max_hold, config.max_wait);
        let _ = writeln!(
            out,
            "time to open all (accepted, each holding a request): {:.2} s",
            opened.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "listener RSS: {} KiB before, {} KiB after opening, {} KiB after idling",
            base.rss_kib, after_open.rss_kib, after_idle.rss_kib
        );
        let _ = writeln!(out, "listener memory per idle session: {:.0} bytes after opening, {:.0} bytes after {:?} idle", per(after_open.rss_kib), per(after_idle.rss_kib), idle);
        let _ = writeln!(
            out,
            "listener CPU while idle over {:?}: {:.2} % of one core",
            idle,
            cpu(&after_open, &after_idle)
        );
        let _ = writeln!(out, "client process (all {sessions} clients): RSS {} KiB ({:.0} bytes per session incl. runtime), CPU while idle {:.2} % of one core", child_after_idle.rss_kib, child_after_idle.rss_kib as f64 * 1024.0 / sessions as f64, cpu(&child_after_open, &child_after_idle));
        let _ = write!(
            out,
            "after idling: {held} of {sessions} sessions hold a request, {alive} alive"
        );
        Ok(out)
    })
}

/// The client side: opens `n` sessions, at most 256 being opened at once, then idles.
fn clients(addr: SocketAddr, n: usize) -> std::io::Result<()> {
    smol::block_on(async {
        let start = Instant::now();
        let options = ClientOptions::new(&format!("http://{addr}/")).expect("server URL");
        let gate = std::sync::Arc::new(smol::lock::Semaphore::new(256));
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let options = options.clone();
                let gate = gate.clone();
                smol::spawn(async move {
                    let _permit = gate.acquire().await;
                    Stream::connect(options).await
                })
            })
            .collect();
        let mut streams = Vec::with_capacity(n);
        for t in tasks {
            streams.push(t.await?);
        }
        eprintln!(
            "clients: {n} sessions open in {:.2} s",
            start.elapsed().as_secs_f64()
        );
        let _ = std::io::stderr().flush();
        // Idle until killed, or until the parent goes away (stdin closes).
        smol::unblock(|| {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        })
        .await;
        drop(streams);
        Ok(())
    })
}

/// RSS and CPU time of a process, from /proc.
struct Proc {
    rss_kib: u64,
    cpu_ticks: u64,
}

impl Proc {
    fn current() -> Proc {
        Self::read("self")
    }

    fn of(pid: u32) -> Proc {
        Self::read(&pid.to_string())
    }

    fn read(who: &str) -> Proc {
        let status = std::fs::read_to_string(format!("/proc/{who}/status")).unwrap_or_default();
        let rss_kib = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let stat = std::fs::read_to_string(format!("/proc/{who}/stat")).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        let tick = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Proc {
            rss_kib,
            cpu_ticks: tick(11) + tick(12),
        }
    }
}

/// Clock ticks per second for /proc/*/stat (`getconf CLK_TCK`; 100 on Linux).
fn ticks_per_second() -> f64 {
    100.0
}

/// Raises the soft open-files limit to the hard one.
fn raise_nofile() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if let Some(max) = limit.maximum {
        limit.current = Some(max);
        let _ = setrlimit(Resource::Nofile, limit);
    }
}
