//! Scale: one listener holds 10,000 concurrent idle sessions, each with its held request. The
//! clients run in a child process (the `idle_sessions` example in client mode), so that each
//! process stays within this machine's open-files limit (20,000, not raisable here).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use holdwire_smol::{ServerConfig, Stream};

const SESSIONS: usize = 10_000;

#[test]
fn ten_thousand_idle_sessions() {
    let Some(bin) = example("idle_sessions") else {
        return;
    };
    let nofile = raise_nofile();
    let needed = SESSIONS as u64 + 1000;
    if nofile < needed {
        let why = format!("open-files limit {nofile} < {needed} (ulimit -n)");
        assert!(!ci(), "{why}");
        eprintln!("SKIPPED: {why}");
        return;
    }
    // One held request per session: the listener grants hold 1 whatever the clients ask.
    let config = ServerConfig {
        max_hold: 1,
        max_sessions: SESSIONS + 16,
        ..ServerConfig::default()
    };
    run(Duration::from_secs(120), async {
        let listener = listener(config).await;
        let addr = listener.local_addr().unwrap();
        let start = Instant::now();
        let child = Command::new(&bin)
            .args(["--clients", &addr.to_string(), &SESSIONS.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the clients");
        let _guard = ChildGuard {
            child,
            name: "idle_sessions --clients".into(),
            dir: None,
            shm_prefix: None,
        };
        let mut streams: Vec<Stream> = Vec::with_capacity(SESSIONS);
        while streams.len() < SESSIONS {
            let (s, _) = within(Duration::from_secs(30), listener.accept())
                .await
                .unwrap_or_else(|e| panic!("after {} sessions: {e}", streams.len()))
                .expect("accept");
            streams.push(s);
        }
        let accepted = start.elapsed();
        let mut held = 0;
        while start.elapsed() < Duration::from_secs(60) {
            held = streams
                .iter()
                .filter(|s| s.held_requests().unwrap_or(0) > 0)
                .count();
            if held == SESSIONS {
                break;
            }
            smol::Timer::after(Duration::from_millis(50)).await;
        }
        eprintln!(
            "{SESSIONS} sessions accepted in {accepted:?}, all holding a request after {:?}; \
             {} connections, {} sessions in the core",
            start.elapsed(),
            listener.connection_count(),
            listener.session_count()
        );
        assert_eq!(held, SESSIONS, "sessions holding a request");
        assert_eq!(listener.session_count(), SESSIONS);
    });
}
