//! `holdwire`: TCP port forwarding through HTTP request/response exchanges.
//!
//! - `holdwire server --listen ADDR --target HOST:PORT` serves the tunnel endpoint and connects
//!   each session to the target.
//! - `holdwire client --listen ADDR --server URL` carries each local TCP connection through a
//!   session of its own; `--stdio` carries stdin/stdout (for `ssh -o ProxyCommand=...`).
//! - HTTPS: `server --tls-cert FILE --tls-key FILE`; clients take `https://` URLs and verify
//!   the server against the system roots plus `--ca FILE`, through a proxy's `CONNECT` tunnel
//!   when there is a proxy.
//! - `holdwire demo` runs an echo target, a server and a client in one process and measures them.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error (reported before
//! anything starts), 3 authentication refused, 4 the demo found corrupted or missing data.
#![forbid(unsafe_code)]

mod demo;
mod forward;
mod serve;
mod token;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Exit code: usage or configuration error.
pub const EXIT_CONFIG: u8 = 2;
/// Exit code: the server refused our token.
pub const EXIT_AUTH: u8 = 3;
/// Exit code: the demo lost or corrupted data.
pub const EXIT_INTEGRITY: u8 = 4;

/// A reliable byte stream over plain HTTP: TCP port forwarding through web proxies.
#[derive(Parser, Debug)]
#[command(name = "holdwire", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Less log output (-q warnings and errors only, -qq errors only).
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "verbose")]
    quiet: u8,
}

/// Logs go to stderr, at info by default; `RUST_LOG` (tracing-subscriber's filter syntax) wins
/// over `-v`/`-q` when set.
fn init_logging(verbose: u8, quiet: u8) {
    let level = match (verbose, quiet) {
        (0, 0) => "info",
        (1, _) => "debug",
        (v, _) if v > 1 => "trace",
        (_, 1) => "warn",
        _ => "error",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the tunnel endpoint and connect each session to a TCP target.
    Server(ServerArgs),
    /// Carry local TCP connections (or stdin/stdout) through sessions to a server.
    Client(ClientArgs),
    /// Run an echo target, a server and a client on loopback and measure them.
    Demo(DemoArgs),
}

/// The shared token options.
#[derive(Args, Debug, Clone)]
pub struct TokenArgs {
    /// Shared token authenticating every bundle. Without --token, --token-file or --no-auth,
    /// the environment variable HOLDWIRE_TOKEN is used (any of the three overrides it).
    #[arg(long, conflicts_with = "token_file")]
    pub token: Option<String>,
    /// Read the token from this file (its first line).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// Run without authentication: anyone who learns a session id can inject data.
    #[arg(long, conflicts_with_all = ["token", "token_file"])]
    pub no_auth: bool,
}

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Address to serve HTTP on, e.g. 0.0.0.0:8080.
    #[arg(long, value_name = "ADDR")]
    pub listen: String,
    /// TCP target each session is connected to, e.g. 127.0.0.1:22.
    #[arg(long, value_name = "HOST:PORT")]
    pub target: String,
    /// Also accept direct TCP (for clients with --direct) on this address.
    #[arg(long, value_name = "ADDR")]
    pub direct_listen: Option<String>,
    /// Serve HTTPS with this PEM certificate chain (leaf first); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key (PKCS#8, RSA or EC) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// URL path prefix of the endpoint, for serving behind a reverse proxy.
    #[arg(long, value_name = "PREFIX", default_value = "/")]
    pub path: String,
    #[command(flatten)]
    pub token: TokenArgs,
    /// Most sessions at once.
    #[arg(long, default_value_t = 10_000)]
    pub max_sessions: usize,
    /// Most bytes buffered per session and direction.
    #[arg(long, value_name = "BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_buffer: usize,
    /// Most requests held per session.
    #[arg(long, default_value_t = 16)]
    pub hold: u8,
    /// Seconds a request is held at most (keep below every proxy's idle timeout).
    #[arg(long, value_name = "SECS", default_value_t = 20.0)]
    pub max_wait: f64,
    /// Seconds without a request before a session fails.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    pub idle_timeout: f64,
    /// Seconds a connection may take to deliver a whole request (and a new connection to
    /// start its first one); slower ones get 408 and are closed.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub request_timeout: f64,
    /// Seconds an idle keep-alive connection is kept open.
    #[arg(long, value_name = "SECS", default_value_t = 120.0)]
    pub keep_alive_timeout: f64,
    /// Most HTTP connections at once; further connections are closed at once.
    #[arg(long, default_value_t = 40_000)]
    pub max_connections: usize,
    /// Seconds to let sessions finish on SIGINT/SIGTERM before aborting them.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub grace: f64,
}

#[derive(Args, Debug)]
pub struct ClientArgs {
    /// Local address to accept TCP connections on, e.g. 127.0.0.1:2222.
    #[arg(
        long,
        value_name = "ADDR",
        required_unless_present = "stdio",
        conflicts_with = "stdio"
    )]
    pub listen: Option<String>,
    /// Carry stdin/stdout through one session, then exit.
    #[arg(long)]
    pub stdio: bool,
    #[arg(
        long,
        value_name = "URL",
        help = "The server endpoint, e.g. http://server.example:8080/ or https://server.example/"
    )]
    pub server: String,
    #[arg(
        long,
        value_name = "URL",
        help = "Forward proxy, http://[user:pass@]host:port (default: HTTP_PROXY or http_proxy for http:// servers, HTTPS_PROXY or https_proxy for https:// ones, then ALL_PROXY, as curl reads them; NO_PROXY is honoured)"
    )]
    pub proxy: Option<String>,
    /// Try direct TCP to this address first, then fall back to HTTP.
    #[arg(long, value_name = "HOST:PORT")]
    pub direct: Option<String>,
    /// Seconds the direct attempt may take (a firewall that drops it delays the fallback
    /// this long).
    #[arg(long, value_name = "SECS", default_value_t = 1.5)]
    pub direct_timeout: f64,
    /// Also trust the root certificate(s) in this PEM file for https:// servers (the system's
    /// roots are always trusted).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub token: TokenArgs,
    /// Seconds without a valid response before a session fails.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    pub silence_timeout: f64,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Drop this percentage of HTTP requests and responses between client and server.
    #[arg(long, value_name = "PERCENT", default_value_t = 0.0)]
    pub loss: f64,
    /// MiB pushed through the tunnel (and echoed back).
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    pub mib: u64,
    /// Round trips of the ping-pong.
    #[arg(long, default_value_t = 1000)]
    pub pings: u32,
}

/// Seconds from the command line as a Duration, or a configuration error.
pub fn seconds(what: &str, secs: f64) -> Result<Duration, String> {
    if secs.is_finite() && secs > 0.0 && secs < 1e9 {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(format!(
            "{what} must be a positive number of seconds, not {secs}"
        ))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    let result = match cli.command {
        Command::Server(args) => serve::run(args),
        Command::Client(args) => forward::run(args),
        Command::Demo(args) => demo::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            tracing::error!("{message}");
            ExitCode::from(code)
        }
    }
}
