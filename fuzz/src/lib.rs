//! Shared pieces of the holdwire fuzz targets (see `README.md`).
//!
//! - [`spec`]: structured inputs (`arbitrary`) for bundles, HTTP requests and HTTP responses,
//!   and the builders that turn them into bytes.
//! - [`http_split`]: the input layout and the driving of the two HTTP parser targets (whole,
//!   split at chosen points, byte by byte).
//! - [`check`]: checks on what the cores emit (every transmit is one well-formed HTTP message
//!   carrying a decodable bundle).
//! - [`server_target`], [`client_target`]: the inputs and the runs of `server_endpoint` and
//!   `client_session`.
//! - [`world`]: a server endpoint with genuine clients on zero-latency in-memory links, whose
//!   deliveries the fuzzer schedules, and the "still serves a well-behaved session" check.
//!
//! These checks would belong in a `proto` module shared with proptest and benches (STYLE.md
//! section 5); they live here because the fuzz crate may not change `proto`.
#![forbid(unsafe_code)]

/// Prints a line to stderr when `HOLDWIRE_FUZZ_TRACE` is set (for triaging a crash with
/// `cargo fuzz run TARGET ARTIFACT`).
macro_rules! trace {
    ($($arg:tt)*) => {
        if $crate::check::tracing() {
            eprintln!($($arg)*);
        }
    };
}

pub mod check;
pub mod client_target;
pub mod http_split;
pub mod server_target;
pub mod spec;
pub mod world;

/// A deterministic byte pattern: `len` bytes starting at `seed`, for application data.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 251) as u8).wrapping_mul(31))
        .collect()
}
