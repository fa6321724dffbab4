//! Many sessions at once on one listener, all intact.

mod common;

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::bulk_echo;
use holdwire_std::{ClientOptions, Listener, ServerConfig, Stream};

const SESSIONS: usize = 100;
const BYTES: u64 = 1024 * 1024;

#[test]
fn hundred_concurrent_sessions_on_one_listener() {
    let start = Instant::now();
    let listener = Listener::bind("127.0.0.1:0", ServerConfig::default()).unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let listener = Arc::new(listener);
    // The echo service, with a handle kept to check the session count.
    let acceptor = {
        let l = listener.clone();
        thread::spawn(move || {
            for _ in 0..SESSIONS {
                let (s, _) = l.accept_timeout(Duration::from_secs(60)).expect("accept");
                thread::spawn(move || common::echo(s));
            }
        })
    };
    // All sessions open first, then all transfer at once.
    let barrier = Arc::new(Barrier::new(SESSIONS));
    let clients: Vec<_> = (0..SESSIONS)
        .map(|i| {
            let url = url.clone();
            let barrier = barrier.clone();
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || -> Result<(Stream, u64), String> {
                    let stream = Stream::connect(ClientOptions::new(&url).unwrap())
                        .map_err(|e| format!("session {i}: connect: {e}"))?;
                    let probe = stream.try_clone().map_err(|e| e.to_string())?;
                    barrier.wait();
                    let t = bulk_echo(stream, BYTES + i as u64, i as u64)
                        .map_err(|e| format!("session {i}: {e}"))?;
                    Ok((probe, t.checksum))
                })
                .unwrap()
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    let (mut failed, mut resent, mut sent) = (0, 0, 0);
    for (i, c) in clients.into_iter().enumerate() {
        let (probe, checksum) = c.join().unwrap().unwrap();
        assert_eq!(
            checksum,
            common::pattern_checksum(i as u64, BYTES + i as u64)
        );
        assert!(
            ids.insert(probe.session_id().unwrap()),
            "session ids are unique"
        );
        let stats = probe.stats().unwrap();
        failed += stats.failed_exchanges;
        resent += stats.messages_resent;
        sent += stats.messages_sent;
    }
    acceptor.join().unwrap();
    assert_eq!(listener.stats().unwrap().sessions_opened, SESSIONS as u64);
    println!(
        "{SESSIONS} sessions, {} KiB each way each, intact in {:.2?}; \
         failed exchanges {failed}, messages resent {resent}/{sent}",
        BYTES >> 10,
        start.elapsed()
    );
}
