//! `holdwire server`: the tunnel endpoint, connecting each session to a TCP target.

use std::collections::HashMap;
use std::net::ToSocketAddrs;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_lite::{AsyncWriteExt, StreamExt};
use holdwire_smol::{copy_bidirectional, Listener, ServerConfig, Stream};
use smol::net::TcpStream;

use crate::{seconds, token, ServerArgs, EXIT_CONFIG};

/// How long connecting to the target may take.
const TARGET_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type Sessions = Arc<Mutex<HashMap<u64, Stream>>>;

pub fn run(args: ServerArgs) -> Result<(), (u8, String)> {
    let config_error = |m: String| (EXIT_CONFIG, m);
    let token = token::resolve(&args.token).map_err(config_error)?;
    let max_wait = seconds("--max-wait", args.max_wait).map_err(config_error)?;
    let idle_timeout = seconds("--idle-timeout", args.idle_timeout).map_err(config_error)?;
    let grace = seconds("--grace", args.grace).map_err(config_error)?;
    let request_timeout =
        seconds("--request-timeout", args.request_timeout).map_err(config_error)?;
    let keep_alive_timeout =
        seconds("--keep-alive-timeout", args.keep_alive_timeout).map_err(config_error)?;
    if idle_timeout <= max_wait {
        return Err(config_error("--idle-timeout must exceed --max-wait".into()));
    }
    if !args.path.starts_with('/') {
        return Err(config_error(format!(
            "--path must start with '/', not {:?}",
            args.path
        )));
    }
    check_host_port("--target", &args.target).map_err(config_error)?;
    check_host_port("--listen", &args.listen).map_err(config_error)?;
    if let Some(direct) = &args.direct_listen {
        check_host_port("--direct-listen", direct).map_err(config_error)?;
    }
    if args.max_buffer < 64 * 1024 {
        return Err(config_error("--max-buffer must be at least 65536".into()));
    }
    // Certificate and key are read now, so that a bad file is reported before anything starts.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            holdwire_smol::tls::server_config_from_pem(cert, key)
                .map_err(|e| config_error(format!("--tls-cert/--tls-key: {e}")))?,
        ),
        _ => None,
    };
    let mut config = ServerConfig {
        token,
        path_prefix: args.path.clone(),
        max_sessions: args.max_sessions.max(1),
        max_hold: args.hold.max(1),
        max_wait,
        idle_timeout,
        request_timeout,
        keep_alive_timeout,
        max_connections: args.max_connections.max(1),
        ..ServerConfig::default()
    };
    config.session.send_buffer = args.max_buffer;
    config.session.recv_buffer = args.max_buffer;

    smol::block_on(async move {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let listener = match (&args.direct_listen, tls) {
            (Some(direct), Some(tls)) => {
                Listener::bind_tls_with_direct(&args.listen, direct, config, tls).await
            }
            (Some(direct), None) => Listener::bind_with_direct(&args.listen, direct, config).await,
            (None, Some(tls)) => Listener::bind_tls(&args.listen, config, tls).await,
            (None, None) => Listener::bind(&args.listen, config).await,
        }
        .map_err(|e| (1, format!("cannot listen on {}: {e}", args.listen)))?;
        // (Addresses were checked before; what fails here is binding them.)
        let addr = listener.local_addr().map_err(|e| (1, e.to_string()))?;
        listener.log_refusals(true);
        tracing::info!(
            "serving {scheme}://{addr}{} -> {}{}",
            args.path,
            args.target,
            listener
                .direct_addr()
                .map(|d| format!(" (direct TCP on {d})"))
                .unwrap_or_default()
        );
        let sessions: Sessions = Arc::default();
        let mut signals =
            async_signal::Signals::new([async_signal::Signal::Term, async_signal::Signal::Int])
                .map_err(|e| (1, format!("cannot handle signals: {e}")))?;
        let mut next_id = 0u64;
        loop {
            let accepted = async { Some(listener.accept().await) };
            let signalled = async {
                signals.next().await;
                None
            };
            match smol::future::or(accepted, signalled).await {
                Some(Ok((stream, peer))) => {
                    next_id += 1;
                    let id = next_id;
                    sessions
                        .lock()
                        .expect("not poisoned")
                        .insert(id, stream.clone());
                    let target = args.target.clone();
                    let registry = sessions.clone();
                    smol::spawn(async move {
                        let log = SessionLog::opened(&stream, &format!("session from {peer}"));
                        let result = serve_session(stream.clone(), &target).await;
                        log.closed(&stream, &result.map(|(down, up)| (down, Some(up))));
                        registry.lock().expect("not poisoned").remove(&id);
                    })
                    .detach();
                }
                Some(Err(e)) => tracing::warn!("accept failed: {e}"),
                None => break,
            }
        }
        shut_down(listener, &sessions, grace).await;
        Ok(())
    })
}

/// Connects a session to the target and copies both ways, half-closes included: the bytes
/// received from the tunnel and sent into it.
pub async fn serve_session(stream: Stream, target: &str) -> std::io::Result<(u64, u64)> {
    let connect = TcpStream::connect(target);
    let timeout = async {
        smol::Timer::after(TARGET_CONNECT_TIMEOUT).await;
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "target connect timed out",
        ))
    };
    let tcp = match smol::future::or(connect, timeout).await {
        Ok(tcp) => tcp,
        Err(e) => {
            stream.abort(&format!("target unreachable: {e}"));
            return Err(e);
        }
    };
    let _ = tcp.set_nodelay(true);
    copy_bidirectional(stream, tcp).await
}

/// The log lines of one session: one when it opens, one when it closes with its counters.
pub struct SessionLog {
    id: String,
    started: Instant,
}

impl SessionLog {
    /// Logs the opening of `stream` (from or to `peer`).
    pub fn opened(stream: &Stream, peer: &str) -> SessionLog {
        // A prefix of the id is enough to match the two ends' lines, and does not hand the
        // whole id to whoever reads the logs.
        let id = match stream.session_id() {
            Some(id) if !stream.is_direct() => format!("HTTP session {}", &id.to_string()[..8]),
            _ => "direct TCP connection".to_string(),
        };
        tracing::info!("{peer}: {id} opened");
        SessionLog {
            id,
            started: Instant::now(),
        }
    }

    /// Logs the end of the session from the result of copying it (bytes received from the
    /// tunnel, bytes sent into it; `None` if not counted): requests, failures, resends, the
    /// round-trip time where measured, and why it ended.
    pub fn closed(&self, stream: &Stream, result: &std::io::Result<(u64, Option<u64>)>) {
        let counters = match stream.stats() {
            Some(s) => format!(
                ", {} requests ({} failed), {} of {} messages resent{}",
                s.exchanges,
                s.failed_exchanges,
                s.messages_resent,
                s.messages_sent,
                s.srtt
                    .map(|rtt| format!(", rtt {:.1} ms", rtt.as_secs_f64() * 1e3))
                    .unwrap_or_default()
            ),
            None => String::new(),
        };
        let secs = self.started.elapsed().as_secs_f64();
        match result {
            Ok((received, sent)) => tracing::info!(
                "{} closed cleanly after {secs:.1} s: {}{received} bytes received{counters}",
                self.id,
                sent.map(|n| format!("{n} bytes sent, "))
                    .unwrap_or_default()
            ),
            Err(e) => tracing::warn!("{} failed after {secs:.1} s: {e}{counters}", self.id),
        }
    }
}

/// SIGINT/SIGTERM: stop accepting, end every session's stream cleanly (clients read EOF after
/// the data), and give them `grace` to finish before exiting.
async fn shut_down(listener: Listener, sessions: &Sessions, grace: Duration) {
    // New sessions are refused from now on (503 ABORT SHUTDOWN), so no client is left waiting.
    listener.shutdown();
    let open: Vec<Stream> = sessions
        .lock()
        .expect("not poisoned")
        .values()
        .cloned()
        .collect();
    tracing::info!("shutting down: ending {} session(s)", open.len());
    for mut stream in open {
        let _ = stream.close().await;
    }
    let until = Instant::now() + grace;
    while Instant::now() < until && !sessions.lock().expect("not poisoned").is_empty() {
        smol::Timer::after(Duration::from_millis(50)).await;
    }
    let left: Vec<Stream> = sessions
        .lock()
        .expect("not poisoned")
        .values()
        .cloned()
        .collect();
    for stream in &left {
        stream.abort("server shutting down");
    }
    if !left.is_empty() {
        // Let the aborts go out.
        smol::Timer::after(Duration::from_millis(200)).await;
    }
    drop(listener);
}

/// Checks `HOST:PORT` now, so a typo is a configuration error (port 0 only for `--*listen`).
pub fn check_host_port(flag: &str, value: &str) -> Result<(), String> {
    match value.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty()
                && port
                    .parse::<u16>()
                    .is_ok_and(|p| p > 0 || flag.ends_with("listen")) =>
        {
            // Resolve once now, so a typo is reported before anything starts.
            value
                .to_socket_addrs()
                .map(|_| ())
                .map_err(|e| format!("{flag} {value}: {e}"))
        }
        _ => Err(format!("{flag} must be HOST:PORT, not {value:?}")),
    }
}
