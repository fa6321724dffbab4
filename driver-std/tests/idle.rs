//! An idle session costs about zero CPU: one held request, renewed every `max_wait`, and no
//! polling anywhere. Alone in its test binary so that the process CPU time is its own.

mod common;

use std::thread;
use std::time::Duration;

use holdwire_std::{ClientOptions, Listener, ServerConfig, Stream};

#[test]
fn idle_session_costs_no_cpu() {
    let config = ServerConfig {
        // Renew the held request often, so the measurement covers renewals too.
        max_wait: Duration::from_millis(500),
        ..ServerConfig::default()
    };
    let listener = Listener::bind("127.0.0.1:0", config).unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let client = Stream::connect(ClientOptions::new(&url).unwrap()).unwrap();
    let (server, _) = listener.accept_timeout(Duration::from_secs(10)).unwrap();
    thread::sleep(Duration::from_millis(500));

    let idle = Duration::from_secs(3);
    let before = common::process_cpu_time();
    let exchanges_before = client.stats().unwrap().exchanges;
    thread::sleep(idle);
    let used = common::process_cpu_time() - before;
    let exchanges = client.stats().unwrap().exchanges - exchanges_before;
    println!("idle session for {idle:?}: {used:?} CPU, {exchanges} exchanges (max_wait 500 ms)");
    assert!(exchanges >= 3, "the held request is renewed every max_wait");
    assert!(used <= Duration::from_millis(100), "idle CPU {used:?}");
    drop(server);
}
